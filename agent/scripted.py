"""Scripted experts and their deliberately imperfect variants.

The expert is a phase script over the observation (``proprio`` and the
privileged ``objects`` entry, never ``info``): approach above the target cube,
descend, close, lift; for Stack then carry the red cube over the green one,
lower, release and retreat. ``NoisyExpert`` perturbs it so that collected data
covers what a planner will later try: misses, offset grasps, early/late closes,
gripper toggles, wandering with the cube, drops, random segments, wrong targets.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from agent.base import Agent
from envs.vocab import COLOURS, instruction_spec

TABLE_Z = 0.8  # table top height of the robosuite scenes (m)


@dataclass(frozen=True)
class ScriptParams:
    hover: float = 0.08          # approach height above the cube centre (m)
    grasp_offset: tuple[float, float] = (0.0, 0.0)  # xy offset of the grasp point (m)
    close_dz: float = 0.0        # height above the cube centre at which to close (m)
    close_steps: int = 8         # steps with the gripper closing before lifting
    hesitate: int = 0            # extra steps hovering before the descent
    lift_z: float = 0.14         # lift to this height above the table (m)
    target: str | None = None    # "other": grasp the cube the instruction did not name
    retry: bool = True           # go back to the approach after a missed grasp
    gain: float = 12.0


class ScriptedExpert(Agent):
    """Closed-loop phase script; solves Lift, PickColor and Stack from the start pose."""

    name = "scripted"

    def __init__(self, params: ScriptParams | None = None):
        self.params = params or ScriptParams()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.phase, self.t_phase, self._half, self._target = "approach", 0, None, None

    # -- helpers ---------------------------------------------------------------
    def _goto(self, eef: np.ndarray, goal: np.ndarray, grip: float) -> np.ndarray:
        return np.concatenate([np.clip(self.params.gain * (goal - eef), -1.0, 1.0), [grip]])

    def _set(self, phase: str) -> None:
        self.phase, self.t_phase = phase, 0

    def _cubes(self, obs: dict) -> tuple[np.ndarray, np.ndarray | None, str]:
        """(grasp cube, other cube or None, task kind) from the observation."""
        spec = instruction_spec(int(obs["instruction"]))
        cubes = np.asarray(obs["objects"], float).reshape(-1, 3)
        if self._target is None:   # resolved once per episode, like the env (a side is read at the start)
            self._target = spec.target_colour(dict(zip(COLOURS, cubes)))
        i = COLOURS.index(self._target)
        if self.params.target == "other" and len(cubes) > 1:  # go for the cube not named
            return cubes[1 - i], cubes[i], "lift"
        other = cubes[1 - i] if len(cubes) > 1 else None
        return cubes[i], other, spec.verb

    # -- policy ----------------------------------------------------------------
    def act(self, obs: dict) -> np.ndarray:
        p = self.params
        eef, opening = np.asarray(obs["proprio"][:3], float), float(obs["proprio"][3])
        cube, other, kind = self._cubes(obs)
        if self._half is None:  # resting heights give the cube half-sizes
            self._half = {"cube": cube[2] - TABLE_Z, "other": (other[2] - TABLE_Z) if other is not None else 0}
        self.t_phase += 1
        grasp_pt = cube + np.array([*p.grasp_offset, 0.0])

        if self.phase == "approach":
            goal = grasp_pt + [0, 0, p.hover]
            err = goal - eef
            if np.linalg.norm(err[:2]) < 0.01 and abs(err[2]) < 0.02 and self.t_phase > p.hesitate:
                self._set("descend")
            return self._goto(eef, goal, -1.0)
        if self.phase == "descend":
            goal = grasp_pt + [0, 0, p.close_dz]
            if abs(goal[2] - eef[2]) < 0.008 or self.t_phase > 30:
                self._set("close")
            return self._goto(eef, goal, -1.0)
        if self.phase == "close":
            if self.t_phase >= p.close_steps:
                self._set("lift")
            return np.array([0.0, 0.0, 0.0, 1.0])
        if self.phase == "lift":
            missed = opening < 0.004 or (eef[2] - cube[2] > 0.04)
            if p.retry and missed and self.t_phase > 3:
                self._set("approach")
                return self._goto(eef, eef + [0, 0, 0.05], -1.0)
            goal = np.array([eef[0], eef[1], TABLE_Z + p.lift_z])
            if kind == "stack" and cube[2] - self._half["cube"] > other[2] + self._half["other"] + 0.02:
                self._set("transfer")
            return self._goto(eef, goal, 1.0)
        # Stack only: carry the grasped cube over the other one, lower, release, retreat.
        stack_z = other[2] + self._half["other"] + self._half["cube"]
        if self.phase == "transfer":
            want = np.array([other[0], other[1], stack_z + 0.03])
            if np.linalg.norm((want - cube)[:2]) < 0.006:
                self._set("place")
            return self._goto(eef, eef + (want - cube), 1.0)
        if self.phase == "place":
            want = np.array([other[0], other[1], stack_z + 0.003])
            if abs(want[2] - cube[2]) < 0.005 or self.t_phase > 25:
                self._set("release")
            return self._goto(eef, eef + (want - cube), 1.0)
        if self.phase == "release":
            if self.t_phase >= 8:
                self._set("retreat")
            return np.array([0.0, 0.0, 0.0, -1.0])
        return self._goto(eef, eef + [0, 0, 0.05], -1.0)  # retreat


PERTURBATIONS: tuple[str, ...] = (
    "offset_grasp", "early_close", "short_close", "hesitate", "gripper_toggle",
    "wander", "drop", "random_segment", "wrong_target", "miss",
)


class NoisyExpert(ScriptedExpert):
    """The expert with action noise and, with probability ``fail_prob`` per episode,
    one or two perturbations drawn from :data:`PERTURBATIONS` (then it retries a
    missed grasp in only half of the episodes).

    ``fail_prob`` is the knob for how often it fails; ``noise`` is the std of the
    Gaussian noise on the xyz action every step.
    """

    name = "noisy"

    def __init__(self, fail_prob: float = 0.5, noise: float = 0.1, perturbations=PERTURBATIONS):
        if not 0.0 <= fail_prob <= 1.0:
            raise ValueError(f"fail_prob must lie in [0, 1], got {fail_prob}")
        unknown = set(perturbations) - set(PERTURBATIONS)
        if unknown:
            raise ValueError(f"unknown perturbations {sorted(unknown)}; known: {PERTURBATIONS}")
        self.fail_prob, self.noise, self.perturbations = fail_prob, noise, tuple(perturbations)
        super().__init__()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        rng = self._rng = np.random.default_rng(seed)
        self.t, self.active = 0, ()
        if rng.random() < self.fail_prob and self.perturbations:
            k = 1 + int(rng.random() < 0.3)
            self.active = tuple(rng.choice(self.perturbations, size=k, replace=False))
        # perturbed episodes retry a missed grasp only half the time: recoveries are data too
        p = ScriptParams(retry=not self.active or rng.random() < 0.5)
        angle = rng.uniform(0, 2 * np.pi)
        if "offset_grasp" in self.active:
            r = rng.uniform(0.015, 0.04)
            p = replace(p, grasp_offset=(r * np.cos(angle), r * np.sin(angle)))
        if "miss" in self.active:
            r = rng.uniform(0.05, 0.1)
            p = replace(p, grasp_offset=(r * np.cos(angle), r * np.sin(angle)))
        if "early_close" in self.active:
            p = replace(p, close_dz=rng.uniform(0.025, 0.07))
        if "short_close" in self.active:
            p = replace(p, close_steps=int(rng.integers(1, 4)))
        if "hesitate" in self.active:  # late close: linger before the descent
            p = replace(p, hesitate=int(rng.integers(5, 25)), close_steps=int(rng.integers(8, 20)))
        if "wrong_target" in self.active:
            p = replace(p, target="other")
        self.params = p
        self._toggle_at = set(rng.integers(15, 90, size=3).tolist()) if "gripper_toggle" in self.active else set()
        self._drop_after = int(rng.integers(2, 15)) if "drop" in self.active else None
        self._wander = int(rng.integers(10, 35)) if "wander" in self.active else 0
        self._wander_goal = rng.uniform([-0.15, -0.15, 0.86], [0.15, 0.15, 1.05])
        self._segment = (int(rng.integers(0, 60)), int(rng.integers(5, 20))) if "random_segment" in self.active else None

    def act(self, obs: dict) -> np.ndarray:
        self.t += 1
        rng = self._rng
        if self._segment and self._segment[0] <= self.t < sum(self._segment):
            return rng.uniform(-1, 1, 4)
        action = super().act(obs)
        if self.phase in ("lift", "transfer", "place"):
            if self._wander > 0:
                self._wander -= 1
                eef = np.asarray(obs["proprio"][:3], float)
                action = self._goto(eef, self._wander_goal, 1.0)
            if self._drop_after is not None:
                self._drop_after -= 1
                if self._drop_after < 0:
                    action[3] = -1.0
            if self.t in self._toggle_at or (self.t - 1) in self._toggle_at:
                action[3] = -action[3]
        action[:3] += rng.normal(0.0, self.noise, 3)
        return np.clip(action, -1.0, 1.0)
