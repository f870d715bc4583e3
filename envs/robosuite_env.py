"""robosuite tasks as gymnasium environments.

``RoboAlignEnv`` wraps a robosuite ``Lift`` or ``Stack`` scene with a Panda arm under
an OSC_POSITION controller:

- action: ``(4,)`` float in [-1, 1]: ``[dx, dy, dz, grip]`` (grip > 0 closes);
- observation (``obs_mode="image"``): a Dict with
  ``image`` ``(S, S, 3)`` uint8, upright, from the added oblique camera ``roboalign``;
  ``proprio`` ``(4,)`` float32 ``[eef_x, eef_y, eef_z, gripper_opening]`` (metres);
  ``instruction`` Discrete id into :data:`envs.vocab.INSTRUCTIONS`;
  ``objects`` ``(3 * n_cubes,)`` float32, privileged cube centres in colour order
  (red, green) -- scripted agents use it, learned agents should not;
- observation (``obs_mode="state"``): one flat float32 vector (proprio, cube centres,
  eef-to-cube offsets, one-hot instruction) for SB3;
- ``info``: ``success``, ``wrong_object`` (lift: another cube was lifted; stack: the other
  stack was made, also ``wrong_order``), ``instruction`` (text), ``target`` (the colour of
  the cube the instruction names, resolved when the episode begins), ``sim_state``
  (see :meth:`RoboAlignEnv.get_sim_state`), ``eef_pos``, ``gripper_opening``,
  ``object_poses`` (colour -> ``(7,)`` pos + wxyz quat) and, with
  ``segmentation=True``, ``segmentation`` ``(S, S)`` uint8 labels (:data:`LABELS`).

Exact replay: ``env.reset(options={"sim_state": s})`` (or ``env.unwrapped.reset_to(s)``)
restores a state from ``info["sim_state"]``; the same actions then give the same
frames.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import atexit  # noqa: E402
import weakref  # noqa: E402

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from envs import RENDER_VERSION  # noqa: E402,F401  (re-exported)
from envs.tasks import TaskSpec, get_task  # noqa: E402
from envs.vocab import COLOURS, INSTRUCTIONS, SIDE_AXIS, instruction_id, instruction_spec, instruction_text  # noqa: E402

#: Segmentation labels written by ``segmentation=True`` and stored in rollout files.
LABELS: dict[str, int] = {"background": 0, "red_cube": 1, "green_cube": 2, "gripper": 3}
CAMERA_NAME = "roboalign"
#: The gripper's colour in every frame (a blue no cube has; see ``_paint_robot``).
GRIPPER_RGBA = (0.1, 0.3, 0.9, 1.0)
#: MSAA samples per pixel of the RGB renders (render version 3): edges are area-averaged
#: as a camera's pixels are, instead of the aliased staircase a 64x64 frame gets without.
#: Segmentation renders have none -- a blended edge pixel would decode to a wrong geom id.
RGB_SAMPLES = 4
# appended to the MuJoCo state: [gripper command (2), colours_swapped, instruction_id, wrong_seen]
N_TASK_VARS = 5


@dataclass(frozen=True)
class CameraSpec:
    """A fixed camera looking from ``pos`` at ``target`` (world frame, metres)."""

    pos: tuple[float, float, float] = (0.45, 0.12, 1.20)
    target: tuple[float, float, float] = (-0.04, -0.01, 0.90)
    fovy: float = 32.0

    def xyaxes(self) -> np.ndarray:
        forward = np.asarray(self.target, float) - np.asarray(self.pos, float)
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        return np.concatenate([right, up])


def _robosuite_class(base_name: str, camera: CameraSpec):
    """A subclass of robosuite's ``base_name`` env whose model gets our camera."""
    import robosuite  # noqa: F401  (registers the envs)
    from robosuite.environments.base import REGISTERED_ENVS

    base = REGISTERED_ENVS[base_name]

    def _load_model(self):
        base._load_model(self)
        self.model.worldbody.append(ET.Element("camera", {
            "name": CAMERA_NAME, "mode": "fixed", "fovy": f"{camera.fovy}",
            "pos": " ".join(f"{v:.5f}" for v in camera.pos),
            "xyaxes": " ".join(f"{v:.5f}" for v in camera.xyaxes()),
        }))

    # robosuite's metaclass registers every subclass by name; keep the name ours.
    return type(f"RoboAlign{base_name}", (base,), {"_load_model": _load_model})


def _controller_config():
    from robosuite.controllers import load_composite_controller_config, load_part_controller_config

    cfg = load_composite_controller_config(controller="BASIC", robot="Panda")
    arm = load_part_controller_config(default_controller="OSC_POSITION")
    arm["gripper"] = cfg["body_parts"]["right"]["gripper"]
    cfg["body_parts"] = {"right": arm}
    return cfg


def _quiet_robosuite() -> None:
    import logging

    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    try:
        from robosuite.utils.log_utils import ROBOSUITE_DEFAULT_LOGGER

        ROBOSUITE_DEFAULT_LOGGER.setLevel(logging.ERROR)
    except ImportError:  # pragma: no cover - older robosuite
        pass


_LIVE_ENVS: "weakref.WeakSet[RoboAlignEnv]" = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_live_envs() -> None:
    """Free GL contexts before EGL terminates (avoids noisy errors at exit)."""
    for env in list(_LIVE_ENVS):
        env.close()


def _register_atexit_once() -> None:
    # Registered after the first GL context, so it runs before mujoco's eglTerminate.
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        atexit.register(_close_live_envs)
        _ATEXIT_REGISTERED = True


def state_vector(proprio, objects, instruction: int, n_instructions: int = len(INSTRUCTIONS)) -> np.ndarray:
    """The ``obs_mode="state"`` observation from the parts of an image-mode one.

    ``proprio`` ``(4,)`` ``[eef_xyz, gripper_opening]``, ``objects`` ``(3k,)`` cube
    centres, ``instruction`` an id into :data:`envs.vocab.INSTRUCTIONS` ->
    ``(4 + 6k + n_instructions,)`` float32: proprio, cube centres, cube-minus-eef
    offsets, one-hot instruction. Lets a state-trained policy act on image-mode
    observations (``obs["proprio"], obs["objects"], obs["instruction"]``).
    """
    proprio = np.asarray(proprio, np.float32).reshape(-1)
    objects = np.asarray(objects, np.float32).reshape(-1)
    if proprio.shape != (4,):
        raise ValueError(f"proprio must have shape (4,), got {proprio.shape}")
    if objects.size == 0 or objects.size % 3:
        raise ValueError(f"objects must hold 3 coordinates per cube, got shape {objects.shape}")
    instruction = int(instruction)
    if not 0 <= instruction < n_instructions:
        raise ValueError(f"instruction id {instruction} is not in [0, {n_instructions})")
    rel = objects - np.tile(proprio[:3], objects.size // 3)
    onehot = np.zeros(n_instructions, np.float32)
    onehot[instruction] = 1.0
    return np.concatenate([proprio, objects, rel, onehot])


class RoboAlignEnv(gym.Env):
    """One robosuite task (``task`` in :data:`envs.tasks.TASKS`) as a gymnasium env."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str | TaskSpec = "Lift",
        obs_mode: str = "image",
        image_size: int = 64,
        render_mode: str | None = None,
        render_size: int = 256,
        segmentation: bool = False,
        fast_render: bool = True,
        hard_reset: bool = False,
        camera: CameraSpec | dict | None = None,
        control_freq: int = 20,
    ):
        self.task = task if isinstance(task, TaskSpec) else get_task(task)
        if obs_mode not in ("image", "state"):
            raise ValueError(f"obs_mode must be 'image' or 'state', got {obs_mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.obs_mode, self.image_size, self.render_mode = obs_mode, int(image_size), render_mode
        self.render_size, self.segmentation, self.fast_render = int(render_size), segmentation, fast_render
        self.camera = CameraSpec(**camera) if isinstance(camera, dict) else (camera or CameraSpec())
        self.control_freq = control_freq

        _quiet_robosuite()
        cls = _robosuite_class(self.task.robosuite_env, self.camera)
        self._rs = cls(
            robots="Panda", controller_configs=_controller_config(), has_renderer=False,
            has_offscreen_renderer=False, use_camera_obs=False, use_object_obs=False,
            reward_shaping=True, hard_reset=hard_reset, ignore_done=True, horizon=10**7,
            control_freq=control_freq, initialization_noise=None, seed=0,
        )
        self._renderers: dict[tuple[int, bool], mujoco.Renderer] = {}
        # Like robosuite's own renderer, draw visual geoms (group 1) only: the collision
        # geoms (group 0) are flat green/blue shapes that would cover the arm and gripper.
        self._scene_option = mujoco.MjvOption()
        self._scene_option.geomgroup[0] = 0
        _LIVE_ENVS.add(self)
        self._model_ptr = None
        self._swapped, self._instruction = False, self.task.instruction_ids[0]
        self._wrong_seen, self._needs_reset = False, True

        n_obj = len(self.task.colours)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        if obs_mode == "image":
            self.observation_space = gym.spaces.Dict({
                "image": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
                "proprio": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
                "instruction": gym.spaces.Discrete(len(INSTRUCTIONS)),
                "objects": gym.spaces.Box(-np.inf, np.inf, (3 * n_obj,), np.float32),
            })
        else:
            dim = 4 + 6 * n_obj + len(INSTRUCTIONS)
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    # ------------------------------------------------------------------ handles
    @property
    def sim(self):
        return self._rs.sim

    @property
    def _cubes(self) -> dict[str, object]:
        """colour -> robosuite object currently carrying that colour."""
        if self.task.robosuite_env == "Lift":
            return {"red": self._rs.cube}
        a, b = self._rs.cubeA, self._rs.cubeB  # A: small, textured red; B: large, green
        return {"red": b, "green": a} if self._swapped else {"red": a, "green": b}

    def _body_pos(self, obj) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.sim.model.body_name2id(obj.root_body)])

    def _eef_pos(self) -> np.ndarray:
        robot = self._rs.robots[0]
        return np.array(self.sim.data.site_xpos[robot.eef_site_id["right"]])

    def _gripper_opening(self) -> float:
        qpos = [self.sim.data.get_joint_qpos(j) for j in self._gripper.joints]
        return float(qpos[0] - qpos[1])

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"sim_state", "instruction", "swap_colours"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; "
                             "known: sim_state, instruction, swap_colours")
        if "sim_state" in options:
            return self.reset_to(options["sim_state"])

        rng = self.np_random
        instr = options.get("instruction")
        if instr is None:
            instr = self.task.instruction_ids[int(rng.integers(len(self.task.instruction_ids)))]
        instr = instruction_id(instr) if isinstance(instr, str) else int(instr)
        if instr not in self.task.instruction_ids:
            raise ValueError(f"instruction {instruction_text(instr)!r} is not one of task "
                             f"{self.task.name}'s: {list(self.task.instructions)}")
        swap = bool(rng.integers(2)) if self.task.randomize_colours else False
        swap = bool(options.get("swap_colours", swap))
        placement = self._sample_placement(rng)

        self._rs.rng = np.random.default_rng(0)  # a hard reset rebuilds the same model
        self._rs.reset()
        self._after_model_load()
        self._set_task_vars(swap, instr)
        for obj, (xy, yaw) in zip(self._cubes.values(), placement):
            joint = obj.joints[0]
            z = self.sim.data.get_joint_qpos(joint)[2]
            self.sim.data.set_joint_qpos(joint, np.array([*xy, z, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]))
        self.sim.data.qvel[:] = 0
        self.sim.forward()
        return self._begin_episode()

    def reset_to(self, sim_state: np.ndarray):
        """Restore a state from ``info["sim_state"]``; returns ``(obs, info)``."""
        state = np.asarray(sim_state, dtype=np.float64)
        self._rs.reset()  # soft reset (~2 ms): clears robosuite's controller-side state
        self._after_model_load()
        expected = self._mj_state_size() + N_TASK_VARS
        if state.shape != (expected,):
            raise ValueError(f"sim_state must have shape ({expected},) for task {self.task.name}, "
                             f"got {state.shape}; pass info['sim_state'] from this task's env")
        grip_cmd, swapped, instr, wrong = state[-5:-3], state[-3], state[-2], state[-1]
        self._set_task_vars(bool(swapped), int(instr))
        self._gripper.current_action = grip_cmd.copy()
        mujoco.mj_setState(self.sim.model._model, self.sim.data._data, state[:-N_TASK_VARS],
                           mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(self.sim.model._model, self.sim.data._data)
        return self._begin_episode(wrong_seen=bool(wrong))

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,):
            raise ValueError(f"action must have shape (4,) = [dx, dy, dz, grip], got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action has non-finite entries: {action}")
        _, reward, _, _ = self._rs.step(np.clip(action, -1.0, 1.0))
        # robosuite's split stepping leaves derived quantities (body poses) one sub-step
        # old; recompute them so frames and readouts match the state (and a restored state).
        mujoco.mj_forward(self.sim.model._model, self.sim.data._data)
        info = self._info()
        if instruction_spec(self._instruction).verb == "stack":
            reward = self._stack_reward()
        elif self.task.randomize_colours:
            reward = self._pick_reward()
        return self._obs(), float(reward), bool(info["success"]), False, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self._render(self.render_size)

    def close(self):
        for r in self._renderers.values():
            try:
                r.close()
            except Exception:  # EGL teardown at interpreter exit may already be gone
                pass
        self._renderers.clear()

    # ------------------------------------------------------------------ state
    def get_sim_state(self) -> np.ndarray:
        """``(n,)`` float64: MuJoCo's full integration state (``mjSTATE_INTEGRATION``:
        time, qpos, qvel, act, warm-start, controls, applied forces, mocap) followed by
        the task variables ``[gripper command (2), colours_swapped, instruction_id,
        wrong_seen]`` (robosuite's gripper integrates its command across steps)."""
        m, d = self.sim.model._model, self.sim.data._data
        out = np.empty(self._mj_state_size())
        mujoco.mj_getState(m, d, out, mujoco.mjtState.mjSTATE_INTEGRATION)
        grip = np.zeros(2)
        cmd = getattr(self._gripper, "current_action", None)
        if cmd is not None:
            grip[:len(cmd)] = cmd
        return np.concatenate([out, grip, [float(self._swapped), float(self._instruction), float(self._wrong_seen)]])

    @property
    def _gripper(self):
        return self._rs.robots[0].gripper["right"]

    def _mj_state_size(self) -> int:
        return mujoco.mj_stateSize(self.sim.model._model, mujoco.mjtState.mjSTATE_INTEGRATION)

    def _set_task_vars(self, swapped: bool, instr: int) -> None:
        if swapped and not self.task.randomize_colours:
            raise ValueError(f"task {self.task.name} does not swap colours")
        if instr not in self.task.instruction_ids:
            raise ValueError(f"instruction id {instr} is not one of task {self.task.name}'s")
        self._swapped, self._instruction = swapped, instr
        if self.task.robosuite_env == "Stack":  # swap the visual materials of the two cubes
            (ga, gb), (red, green) = self._cube_vis_geoms, self._cube_mats
            m = self.sim.model
            m.geom_matid[ga], m.geom_matid[gb] = (green, red) if swapped else (red, green)
        self._label_lut = self._make_label_lut()

    def _sample_placement(self, rng) -> list[tuple[np.ndarray, float]]:
        h = self.task.placement_half_range
        n = len(self.task.colours)
        for _ in range(1000):
            xy = rng.uniform(-h, h, size=(n, 2))
            if n == 1 or (np.linalg.norm(xy[0] - xy[1]) >= self.task.min_separation
                           and abs(xy[0, SIDE_AXIS] - xy[1, SIDE_AXIS]) >= self.task.side_margin):
                break
        yaw = rng.uniform(-np.pi / 4, np.pi / 4, size=n)
        return [(xy[i], float(yaw[i])) for i in range(n)]

    def _after_model_load(self) -> None:
        m = self.sim.model._model
        if self._model_ptr is not m:  # first load or a hard reset rebuilt the model
            self.close()
            self._model_ptr = m
            if self.task.robosuite_env == "Stack":  # pristine model: A red, B green
                ga = self.sim.model.geom_name2id(self._rs.cubeA.visual_geoms[0])
                gb = self.sim.model.geom_name2id(self._rs.cubeB.visual_geoms[0])
                self._cube_vis_geoms = (ga, gb)
                self._cube_mats = (int(m.geom_matid[ga]), int(m.geom_matid[gb]))
            self._paint_robot(m)
            if self.fast_render:
                m.mat_reflectance[:] = 0.0
        self._needs_reset = False

    def _paint_robot(self, m) -> None:
        """Give the gripper one colour no cube has, and grey out the arm's red/green parts.

        The Panda's own visual hand is white and grey like the arm and the table, so a
        learner (or the teacher's colour perception) could hardly tell it apart; and two
        of its small visual parts are pure red and green -- the cube colours.
        """
        gripper = set(self._gripper_geoms().tolist())
        for g in range(m.ngeom):
            if m.geom_group[g] != 1:  # collision geoms are not drawn
                continue
            if g in gripper:
                m.geom_matid[g], m.geom_rgba[g] = -1, GRIPPER_RGBA
            elif (self.sim.model.geom_id2name(g) or "").startswith("robot") and m.geom_matid[g] >= 0:
                rgb = m.mat_rgba[m.geom_matid[g], :3]
                if rgb.max() - rgb.min() > 0.5:  # a saturated (red / green) part
                    m.geom_matid[g], m.geom_rgba[g] = -1, (0.25, 0.25, 0.25, 1.0)

    def _begin_episode(self, wrong_seen: bool = False):
        # Controllers cache kinematics from robosuite's reset; as after any step, let the
        # first step refresh them from the current (placed or restored) state, so that a
        # restored state continues exactly like the original.
        for controller in self._rs.robots[0].composite_controller.part_controllers.values():
            controller.new_update = True
        self._wrong_seen = wrong_seen
        # the instruction's cubes, resolved once per episode (a side is read from the start)
        spec, positions = instruction_spec(self._instruction), self._cube_positions()
        self._target, self._reference = spec.target_colour(positions), spec.reference_colour(positions)
        info = self._info()
        return self._obs(), info

    # ------------------------------------------------------------------ readouts
    def _lifted(self, colour: str) -> bool:
        table_z = self._rs.model.mujoco_arena.table_offset[2]
        return bool(self._body_pos(self._cubes[colour])[2] > table_z + self.task.lift_margin)

    def _cube_positions(self) -> dict[str, np.ndarray]:
        """Each cube's centre ``(3,)`` by colour: the scene state instruction selectors read."""
        return {c: self._body_pos(self._cubes[c]) for c in self.task.colours}

    def _stacked(self, top: str, bottom: str) -> bool:
        """robosuite Stack's success check for any two cubes: ``top`` lifted, touching
        ``bottom`` and not grasped (``Stack.staged_rewards``' ``r_stack > 0``)."""
        a, b = self._cubes[top], self._cubes[bottom]
        return (self._lifted(top) and self._rs.check_contact(a, b)
                and not self._rs._check_grasp(gripper=self._gripper, object_geoms=a))

    def _stack_reward(self) -> float:
        """robosuite Stack's shaped reward (``reward_shaping=True``) with the instructed top
        and bottom cubes in place of its fixed cubeA and cubeB."""
        top, bottom = self._cubes[self._target], self._cubes[self._reference]
        top_pos, bottom_pos = self._body_pos(top), self._body_pos(bottom)
        r_reach = (1 - np.tanh(10.0 * np.linalg.norm(self._eef_pos() - top_pos))) * 0.25
        r_reach += 0.25 if self._rs._check_grasp(gripper=self._gripper, object_geoms=top) else 0.0
        r_lift = 0.0
        if self._lifted(self._target):
            r_lift = 1.0 + 0.5 * (1 - np.tanh(np.linalg.norm(top_pos[:2] - bottom_pos[:2])))
        r_stack = 2.0 if self._stacked(self._target, self._reference) else 0.0
        return float(max(r_reach, r_lift, r_stack) * self._rs.reward_scale / 2.0)

    def _info(self) -> dict:
        text, spec = instruction_text(self._instruction), instruction_spec(self._instruction)
        target = self._target
        if spec.verb == "stack":
            success = self._stacked(target, self._reference)
            wrong_now = self._stacked(self._reference, target)
        else:
            others = [c for c in self.task.colours if c != target]
            wrong_now = any(self._lifted(c) for c in others)
            success = self._lifted(target) and not wrong_now
        self._wrong_seen |= wrong_now
        wrong = self._wrong_seen
        poses = {}
        for colour, obj in self._cubes.items():
            bid = self.sim.model.body_name2id(obj.root_body)
            poses[colour] = np.concatenate([self.sim.data.body_xpos[bid], self.sim.data.body_xquat[bid]])
        info = {
            "success": success, "wrong_object": wrong, "instruction": text, "target": target,
            "sim_state": self.get_sim_state(), "eef_pos": self._eef_pos(),
            "gripper_opening": self._gripper_opening(), "object_poses": poses,
        }
        if spec.verb == "stack":
            info["wrong_order"] = wrong
        if self.segmentation:
            info["segmentation"] = self._segment(self.image_size)
        return info

    def _obs(self):
        proprio = np.array([*self._eef_pos(), self._gripper_opening()], np.float32)
        cubes = np.concatenate([self._body_pos(self._cubes[c]) for c in self.task.colours]).astype(np.float32)
        if self.obs_mode == "state":
            return state_vector(proprio, cubes, self._instruction)
        return {"image": self._render(self.image_size), "proprio": proprio,
                "instruction": int(self._instruction), "objects": cubes}

    def _renderer(self, size: int, seg: bool) -> mujoco.Renderer:
        key = (size, seg)
        if key not in self._renderers:
            m = self.sim.model._model
            # The offscreen buffer takes its MSAA samples from the model when it is made.
            m.vis.quality.offsamples = 0 if seg else RGB_SAMPLES
            r = mujoco.Renderer(m, size, size)
            _register_atexit_once()
            if seg:
                r.enable_segmentation_rendering()
            self._renderers[key] = r
        return self._renderers[key]

    def _render(self, size: int) -> np.ndarray:
        """``(size, size, 3)`` uint8 upright RGB from the ``roboalign`` camera."""
        r = self._renderer(size, False)
        r.update_scene(self.sim.data._data, camera=CAMERA_NAME, scene_option=self._scene_option)
        return r.render().copy()

    def _make_label_lut(self) -> np.ndarray:
        m = self.sim.model
        lut = np.zeros(m.ngeom + 1, np.uint8)  # index 0 <- background (-1 shifted)
        for colour, obj in self._cubes.items():
            for g in obj.contact_geoms + obj.visual_geoms:
                lut[m.geom_name2id(g) + 1] = LABELS[f"{colour}_cube"]
        lut[self._gripper_geoms() + 1] = LABELS["gripper"]
        return lut

    def _gripper_geoms(self) -> np.ndarray:
        """Ids of every geom on the gripper (its root body and all bodies below it)."""
        m = self.sim.model
        root = m.body_name2id(self._rs.robots[0].gripper["right"].root_body)
        ids = []
        for g in range(m.ngeom):
            b = m.geom_bodyid[g]
            while b not in (0, root):
                b = m.body_parentid[b]
            if b == root:
                ids.append(g)
        return np.asarray(ids, np.int64)

    def _segment(self, size: int) -> np.ndarray:
        """``(size, size)`` uint8 labels (:data:`LABELS`) from the same camera."""
        r = self._renderer(size, True)
        r.update_scene(self.sim.data._data, camera=CAMERA_NAME, scene_option=self._scene_option)
        seg = r.render()
        geom = np.where(seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), seg[..., 0], -1)
        return self._label_lut[geom + 1]

    def _pick_reward(self) -> float:
        """robosuite Lift's shaped reward, on the instructed cube (PickColor)."""
        colour = self._target
        target = self._cubes[colour]
        if self._lifted(colour):
            return 2.25
        dist = np.linalg.norm(self._eef_pos() - self._body_pos(target))
        reward = 1 - np.tanh(10.0 * dist)
        if self._rs._check_grasp(gripper=self._rs.robots[0].gripper, object_geoms=target):
            reward += 0.25
        return float(reward)


__all__ = ["RoboAlignEnv", "state_vector", "CameraSpec", "LABELS", "CAMERA_NAME", "COLOURS", "RENDER_VERSION"]
