"""The judge benchmark set (RobotWorldBench analog): clips cut from rollouts, their
degradations and world-model generations, labelled by the teacher.

Built by ``python experiments/build_bench.py`` (config ``experiments/conf/build_bench.yaml``,
``bench=default|tiny``): the teacher is calibrated on real TRAIN clips first; then per
shard of ``shard_episodes`` episodes of one rollout file: real clips, ``degradations_per_clip``
random degradations of each (all nine types), and world-model generations (``wm_starts``
starts per file x ``wm_temperatures``, plus ``wm_action_noise`` perturbed-action variants of
each start; with ``wm_opposite`` each generation once more under the task's opposite
instruction, degradation name ``<name>:opposite``; with ``wm_relabel`` once more under each
listed instruction the scene answers, ``<name>:relabel``) when a checkpoint exists. Output:
``artifacts/judge/<bench.name>/bench.h5`` plus ``summary.md``; ``perception.npz`` and
``teacher.json`` beside it are the fitted teacher (:func:`worldmodel.judge.teacher.default_teacher`).

Clips: 8 model frames = 16 control steps at stride 2, i.e. 9 frames with the start
frame (:data:`N_FRAMES`, :data:`STRIDE`). Windows per source episode
(:func:`cut_windows`): one ending at the episode's last step (success or final
failure state shown), one centred on the first grasp/lift of the instructed cube
(or, if it never moves, the closest approach), and random others.

Splits are by SOURCE EPISODE: episodes of ``*_train_*`` rollout files go to ``train``
or ``val`` (a deterministic hash of ``file:demo`` sends ``val_fraction`` of them to
``val``); episodes of ``*_val_*`` rollout files (their own seed range) go to ``test``.
Every degradation and generation inherits the split of its source clip; the
``swap_actions`` partner is drawn from the same split.

File format (one HDF5 file, written atomically with :func:`envs.rollouts.atomic_path`)::

    /                       attrs: format_version, n_frames, stride, dimensions (JSON list),
                                   config (JSON: bench config, seed, teacher calibration and
                                   teacher_version, world-model path)
      frames       (N, 9, 64, 64, 3) uint8   gzip
      instruction  (N,)   int64              id into envs.vocab.INSTRUCTIONS
      scores       (N, 6) float32            teacher scores, order DIMENSIONS
      shaping      (N, 3) float32            [target_rise, grip_dist, progress] (see teacher);
                                             progress is NaN on degraded clips (their frames
                                             were altered apart from the actions' outcome)
      true_stage   (N, 2) int64              (IF, MS) of the simulator replay
      source       (N,)   str                real | degraded | generated
      degradation  (N,)   str                "" | a name in degrade.DEGRADATIONS | "wm_t<temp>"
      episode      (N,)   str                "<rollout file stem>:<demo key>"
      env_id       (N,)   str
      split        (N,)   str                train | val | test
      start_step   (N,)   int64              control step of the clip start in the episode
      start_state  (N, S_max) float64        zero-padded; state_len (N,) int64 gives S
      state_len    (N,)   int64
      actions      (N, 16, 4) float32        the clip's control actions
      success      (N,)   uint8              source episode succeeded
      reasons      (N,)   str                teacher reasons joined by ";"

:func:`load_bench` reads it back as a dict of numpy arrays (strings decoded).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from envs import ENV_IDS
from envs.rollouts import atomic_path, demo_keys, env_args, open_rollouts
from envs.tasks import get_task
from envs.vocab import instruction_spec, opposite_instruction, target_colour

N_FRAMES = 9
STRIDE = 2
SPAN = (N_FRAMES - 1) * STRIDE
FORMAT_VERSION = 1
STR_KEYS = ("source", "degradation", "episode", "env_id", "split", "reasons")


def episode_split(file_stem: str, demo: str, val_fraction: float = 0.2) -> str:
    """Split of a source episode (see module docstring)."""
    if "_val_" in file_stem or "_test_" in file_stem:
        return "test"
    h = int(hashlib.sha1(f"{file_stem}:{demo}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


def source_episode(episode: dict, env_id: str, key: str, split: str, success: bool, instruction: int,
                   post_success: int = 0) -> dict:
    """One episode in the layout of :func:`envs.rollouts.read_episode` /
    :func:`envs.rollouts.episode_from_steps` (``actions``, ``states``, ``obs``,
    ``next_obs`` with image, segmentation, eef_pos, gripper_opening, <colour>_cube_pose)
    -> the dict the bench cuts clips from (see :func:`load_source_episodes`).
    ``post_success``: steps recorded after the success step (the rollout attr); their
    frames count as successful while the instructed cube stays lifted (Stack: all)."""
    ob, nx = episode["obs"], episode["next_obs"]
    cat = lambda k: np.concatenate([np.asarray(ob[k]), np.asarray(nx[k])[-1:]])  # noqa: E731
    cubes = {c: cat(f"{c}_cube_pose")[:, :3].astype(np.float64)
             for c in ("red", "green") if f"{c}_cube_pose" in ob}
    n = len(episode["actions"])
    succ = np.zeros(n + 1, bool)
    succ[n - int(post_success):] = bool(success)
    if post_success and success:
        from worldmodel.judge.teacher import TABLE_Z

        task = get_task(ENV_IDS[env_id])
        spec = instruction_spec(instruction)
        target = spec.target_colour({c: v[0] for c, v in cubes.items()})
        if spec.verb == "lift" and target in cubes:   # success = the cube is up
            succ[n - int(post_success):] &= cubes[target][n - int(post_success):, 2] > TABLE_Z + task.lift_margin
    return {"frames": cat("image"), "seg": cat("segmentation"), "actions": np.asarray(episode["actions"]),
            "states": np.asarray(episode["states"]), "eef": cat("eef_pos").astype(np.float64),
            "cubes": cubes, "opening": cat("gripper_opening").astype(np.float64).reshape(-1),
            "success": succ, "ep_success": bool(success), "instruction": int(instruction),
            "env_id": env_id, "key": key, "split": split}


def load_source_episodes(paths, max_episodes: int | None = None) -> list[dict]:
    """Episodes with everything a clip needs: frames (N+1, 64, 64, 3), seg (N+1, 64, 64),
    actions (N, 4), states (N, S), eef (N+1, 3), cubes colour -> (N+1, 3), opening (N+1,),
    success (N+1,) bool (episodes end at their first success, or go on ``post_success``
    steps past it), instruction, env_id, key, split."""
    out = []
    for path in paths:
        path = Path(path)
        env_id = env_args(path)["env_id"]
        with open_rollouts(path) as f:
            for key in demo_keys(f)[:max_episodes]:
                g = f["data"][key]
                keys = ("image", "segmentation", "eef_pos", "gripper_opening", "red_cube_pose", "green_cube_pose")
                ep = {"actions": g["actions"][()], "states": g["states"][()],
                      "obs": {k: g["obs"][k][()] for k in keys if k in g["obs"]},
                      "next_obs": {k: g["next_obs"][k][-1:] for k in keys if k in g["next_obs"]}}
                out.append(source_episode(ep, env_id, f"{path.stem}:{key}", episode_split(path.stem, key),
                                          bool(g.attrs["success"]), int(g.attrs["instruction_id"]),
                                          int(g.attrs.get("post_success", 0))))
    return out


def cut_windows(ep: dict, n_windows: int, rng: np.random.Generator) -> list[int]:
    """Start steps of up to ``n_windows`` distinct clips in one episode (see module doc)."""
    n = len(ep["actions"])
    if n < SPAN:
        return []
    last = n - SPAN
    starts = [last]
    cube = ep["cubes"].get(target_colour(ep["instruction"], {c: v[0] for c, v in ep["cubes"].items()}))
    if cube is not None:
        rise = cube[:, 2] - cube[0, 2]
        moved = np.linalg.norm(cube - cube[0], axis=1) > 0.01
        if (rise > 0.01).any():
            t = int(np.argmax(rise > 0.01))
        elif moved.any():
            t = int(np.argmax(moved))
        else:
            t = int(np.argmin(np.linalg.norm(ep["eef"] - cube, axis=1)))
        starts.append(int(np.clip(t - SPAN // 2, 0, last)))
        starts.append(int(np.clip(t - SPAN + 2, 0, last)))  # ends just after the grasp/lift
    tries = 0
    while len(set(starts)) < n_windows and tries < 50:
        starts.append(int(rng.integers(0, last + 1)))
        tries += 1
    seen, uniq = set(), []
    for s in starts:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq[:n_windows]


def make_clip(ep: dict, start: int) -> dict:
    """The clip (format :mod:`worldmodel.judge`) starting at control step ``start``, plus
    its recorded trajectory under ``"record"`` (for :meth:`Teacher.prime_replay`)."""
    idx = start + STRIDE * np.arange(N_FRAMES)
    return {"frames": ep["frames"][idx], "seg": ep["seg"][idx], "actions": ep["actions"][start:start + SPAN].astype(np.float32),
            "stride": STRIDE, "start_state": ep["states"][start], "env_id": ep["env_id"],
            "instruction": ep["instruction"], "episode": ep["key"], "split": ep["split"],
            "start_step": int(start), "ep_success": ep["ep_success"],
            "record": {"eef": ep["eef"][idx], "cubes": {c: v[idx] for c, v in ep["cubes"].items()},
                       "opening": ep["opening"][idx], "success": ep["success"][idx]}}


def prime(teacher, clip: dict) -> None:
    """Seed the teacher's replay cache with the clip's recorded trajectory."""
    r = clip["record"]
    teacher.prime_replay(clip["env_id"], clip["start_state"], clip["actions"], clip["stride"],
                         r["eef"], r["cubes"], r["opening"], r["success"])


# ---------------------------------------------------------------------- file io
def write_bench(path: str | os.PathLike, rows: dict, attrs: dict | None = None) -> None:
    """Write ``rows`` (dict of per-clip arrays / string lists, keys as in the module doc)."""
    n = len(rows["frames"])
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["n_frames"], f.attrs["stride"] = N_FRAMES, STRIDE
            for k, v in (attrs or {}).items():
                f.attrs[k] = v if isinstance(v, (int, float, str)) else json.dumps(v)
            for k, v in rows.items():
                if k in STR_KEYS:
                    f.create_dataset(k, data=np.array([str(s) for s in v], dtype=h5py.string_dtype()))
                elif k == "frames":
                    f.create_dataset(k, data=np.asarray(v, np.uint8), compression="gzip", compression_opts=4,
                                     chunks=(min(n, 16), N_FRAMES, 64, 64, 3))
                else:
                    f.create_dataset(k, data=np.asarray(v))


def load_bench(path: str | os.PathLike, split: str | None = None, keys=None) -> dict:
    """The bench file as a dict of numpy arrays (strings as ``str`` object arrays),
    optionally only one ``split`` (train | val | test) and only ``keys``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no bench file at {path}; build it with `python experiments/build_bench.py`")
    with h5py.File(path, "r") as f:
        sel = slice(None)
        if split is not None:
            s = f["split"].asstr()[()]
            if split not in set(s):
                raise KeyError(f"split {split!r} not in {path} (has {sorted(set(s))})")
            sel = np.nonzero(s == split)[0]
        out = {}
        for k in (keys or list(f.keys())):
            d = f[k]
            out[k] = np.array(d.asstr()[()], dtype=object)[sel] if k in STR_KEYS else d[()][sel]
        out["attrs"] = {k: (v if not isinstance(v, bytes) else v.decode()) for k, v in f.attrs.items()}
    return out


def bench_clip(b: dict, i: int) -> dict:
    """Row ``i`` of a loaded bench as a teacher clip dict."""
    return {"frames": b["frames"][i], "actions": b["actions"][i], "stride": STRIDE,
            "start_state": b["start_state"][i][:int(b["state_len"][i])], "env_id": str(b["env_id"][i]),
            "instruction": int(b["instruction"][i])}


# ---------------------------------------------------------------------- building
def _shaping_rows(shaping: np.ndarray, source: str) -> np.ndarray:
    """The teacher's ``(N, 3)`` shaping with ``progress`` (the replay's value, column 2) set
    to NaN on degraded clips: a degradation changes the frames, not what the actions did,
    so the frames no longer show the outcome the label describes (the student leaves NaN
    targets out)."""
    out = np.asarray(shaping, np.float32).copy()
    if source == "degraded":
        out[:, 2] = np.nan
    return out


def label_clips(teacher, clips: list[dict], source: str, degradation_names: list[str]) -> dict:
    """Score ``clips`` with the teacher (priming replays from recorded trajectories where the
    clip still carries its ``record``) and return bench rows (see module doc)."""
    for c in clips:
        if "record" in c:
            prime(teacher, c)
    out = teacher.score_clips(clips)
    s_max = max(len(c["start_state"]) for c in clips)
    states = np.zeros((len(clips), s_max))
    for i, c in enumerate(clips):
        states[i, :len(c["start_state"])] = c["start_state"]
    return {
        "frames": np.stack([c["frames"] for c in clips]).astype(np.uint8),
        "instruction": np.array([c["instruction"] for c in clips], np.int64),
        "scores": out["scores"].astype(np.float32), "shaping": _shaping_rows(out["shaping"], source),
        "true_stage": out["true_stage"].astype(np.int64),
        "source": [source] * len(clips), "degradation": list(degradation_names),
        "episode": [c["episode"] for c in clips], "env_id": [c["env_id"] for c in clips],
        "split": [c["split"] for c in clips], "start_step": np.array([c["start_step"] for c in clips], np.int64),
        "start_state": states, "state_len": np.array([len(c["start_state"]) for c in clips], np.int64),
        "actions": np.stack([c["actions"] for c in clips]).astype(np.float32),
        "success": np.array([c["ep_success"] for c in clips], np.uint8),
        "reasons": [";".join(r) for r in out["reasons"]],
    }


def concat_rows(parts: list[dict]) -> dict:
    """Concatenate row dicts (padding ``start_state`` to the widest)."""
    parts = [p for p in parts if p and len(p["frames"])]
    s_max = max(p["start_state"].shape[1] for p in parts)
    out = {}
    for k in parts[0]:
        if k in STR_KEYS:
            out[k] = [s for p in parts for s in p[k]]
        elif k == "start_state":
            out[k] = np.concatenate([np.pad(p[k], ((0, 0), (0, s_max - p[k].shape[1]))) for p in parts])
        else:
            out[k] = np.concatenate([np.asarray(p[k]) for p in parts])
    return out


def degraded_clips(real: list[dict], names, per_clip: int, rng: np.random.Generator) -> tuple[list, list]:
    """``per_clip`` random degradations (from ``names``) of each real clip; the
    swap partner is a clip of the same env and split from another episode."""
    out, labels = [], []
    by_group: dict = {}
    for c in real:
        by_group.setdefault((c["env_id"], c["split"]), []).append(c)
    names = list(names)
    from worldmodel.judge.degrade import degrade
    for c in real:
        chosen = rng.choice(names, size=min(per_clip, len(names)), replace=False)
        for name in chosen:
            partner = None
            if name == "swap_actions":
                pool = [p for p in by_group[(c["env_id"], c["split"])] if p["episode"] != c["episode"]]
                partner = pool[int(rng.integers(len(pool)))] if pool else None
            d = degrade(c, str(name), rng, partner)
            if d is not None:
                out.append(d)
                labels.append(str(name))
    return out, labels


def summary_table(rows: dict) -> str:
    """Markdown table of mean (std) teacher scores per source / degradation."""
    from worldmodel.judge import MAX_SCORES, SHORT
    src = np.asarray(rows["source"], dtype=object)
    deg = np.asarray(rows["degradation"], dtype=object)
    groups = [(s if not d else f"{s}:{d}") for s, d in zip(src, deg)]
    lines = ["| source | n | " + " | ".join(f"{n} (/{m:g})" for n, m in zip(SHORT, MAX_SCORES)) + " | total (/10) |",
             "|---" * (len(SHORT) + 3) + "|"]
    S = np.asarray(rows["scores"])
    for g in sorted(set(groups), key=lambda x: (x.split(":")[0] != "real", x)):
        m = np.array([x == g for x in groups])
        cells = [f"{S[m, k].mean():.2f} ({S[m, k].std():.2f})" for k in range(S.shape[1])]
        lines.append(f"| {g} | {m.sum()} | " + " | ".join(cells) + f" | {S[m].sum(1).mean():.2f} |")
    return "\n".join(lines)


def calibrated_teacher(train_paths, out_dir: str | os.PathLike, calib_episodes: int, windows: int,
                       seed: int = 0, recalibrate: bool = False, perception_episodes: int = 40):
    """Fit perception (on train rollouts' segmentation) and calibrate the teacher on real
    TRAIN-split clips of ``train_paths``; both saved in ``out_dir`` (reused unless
    ``recalibrate``). Returns ``(teacher, calibration stats or None)``."""
    from worldmodel.judge.perception import Perception, load_frames_and_seg, pixel_accuracy
    from worldmodel.judge.teacher import Teacher

    out_dir = Path(out_dir)
    p_path, t_path = out_dir / "perception.npz", out_dir / "teacher.json"
    if t_path.exists() and p_path.exists() and not recalibrate:
        from worldmodel.judge.teacher import TEACHER_VERSION
        if json.loads(t_path.read_text()).get("version") == TEACHER_VERSION:
            return Teacher.load(t_path), None
    frames, seg = load_frames_and_seg(train_paths, max_episodes=perception_episodes, every=2)
    perception = Perception.fit(frames, seg)
    perception.save(p_path)
    teacher = Teacher(perception)
    rng = np.random.default_rng(seed)
    eps = [e for e in load_source_episodes(train_paths, calib_episodes) if e["split"] == "train"]
    clips = [make_clip(e, s) for e in eps for s in cut_windows(e, windows, rng)]
    for c in clips:
        prime(teacher, c)
    stats = teacher.calibrate(clips)
    stats["perception_fit_frames"] = int(len(frames))
    stats["perception_train_accuracy"] = pixel_accuracy(perception, frames[::4], seg[::4])
    teacher.save(t_path)
    return teacher, stats


def clip_proprio(clip: dict) -> np.ndarray:
    """A real clip's recorded proprio at its frames (T + 1, 4): [eef_x, eef_y, eef_z, gripper_opening]."""
    rec = clip["record"]
    return np.concatenate([rec["eef"], np.asarray(rec["opening"])[:, None]], 1).astype(np.float32)


def generate_clips(wm, real: list[dict], temperatures, batch: int = 16, seed: int = 0) -> tuple[list, list]:
    """World-model generations from each real clip's start frame and actions, one per
    temperature. The replay of the same actions is the clip's recorded trajectory, so
    the clips keep their ``record``. A world model with proprio tokens starts from the
    clip's recorded proprio and leaves its imagined proprio (T + 1, 4) in ``"proprio"``."""
    import torch

    from worldmodel.world_model import group_actions

    out, labels = [], []
    g = torch.Generator().manual_seed(seed)
    for temp in temperatures:
        for i in range(0, len(real), batch):
            chunk = real[i:i + batch]
            x = torch.from_numpy(np.stack([c["frames"][0] for c in chunk])).float().div(255).permute(0, 3, 1, 2)
            a = group_actions(torch.from_numpy(np.stack([c["actions"] for c in chunk])), wm.action_repeat)
            p0 = np.stack([clip_proprio(c)[0] for c in chunk]) if wm.reads_proprio else None
            with torch.no_grad():
                roll = wm.rollout(x, a, temperature=float(temp), generator=g,
                                  proprio=None if p0 is None else torch.from_numpy(p0))
            fr = (roll.frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
            for j, (c, f) in enumerate(zip(chunk, fr)):
                d = dict(c)
                d["frames"] = np.concatenate([c["frames"][:1], f])
                d.pop("seg", None)
                if p0 is not None:    # the imagined proprio, real start first (T + 1, 4)
                    d["proprio"] = np.concatenate([p0[j:j + 1], roll.proprio[j].numpy()]).astype(np.float32)
                out.append(d)
                labels.append(f"wm_t{temp:g}")
    return out, labels


def opposite_clips(clips: list[dict], labels: list[str]) -> tuple[list, list]:
    """The same clips (frames, actions, start) under the opposite instruction
    (:func:`envs.vocab.opposite_instruction`) where the clip's task draws that instruction:
    the teacher judges the same pixels for the other cube or the other order."""
    import envs
    from envs.tasks import get_task

    out, names = [], []
    for c, name in zip(clips, labels):
        other = opposite_instruction(c["instruction"])
        if other in get_task(envs.ENV_IDS[c["env_id"]]).instruction_ids:
            out.append({**c, "instruction": other})
            names.append(f"{name}:opposite")
    return out, names


def relabel_clips(clips: list[dict], labels: list[str], instructions) -> tuple[list, list]:
    """The same clips (frames, actions, start) under each of ``instructions`` (texts; e.g. the
    evaluation-only side instructions that no rollout was collected under) where the clip's
    scene can answer it: the cubes it names are in the scene and, for a side, the two cubes
    stand at least the drawing task's ``side_margin`` apart along :data:`envs.vocab.SIDE_AXIS`
    at the clip's start (closer is too close to call, and such a scene is never drawn for it).
    Only the label changes: the teacher judges the same pixels for the cube the instruction
    selects. Degradation name ``<name>:relabel``."""
    from envs.tasks import TASKS
    from envs.vocab import SIDE_AXIS, instruction_id

    specs = []
    for text in instructions:
        spec = instruction_spec(text)
        margin = max((t.side_margin for t in TASKS.values() if text in t.instructions), default=0.0)
        sided = any(sel is not None and sel.needs_positions for sel in (spec.target, spec.reference))
        if sided and margin <= 0:
            raise ValueError(f"{text!r} selects a cube by side, but no task draws it with a side_margin")
        colours = {sel.colour for sel in (spec.target, spec.reference) if sel is not None} - {None}
        specs.append((instruction_id(text), colours, sided, margin))
    out, names = [], []
    for c, name in zip(clips, labels):
        start = {col: np.asarray(p[0]) for col, p in c["record"]["cubes"].items()}
        for idx, colours, sided, margin in specs:
            if idx == c["instruction"] or not colours <= set(start) or (sided and len(start) < 2):
                continue
            if sided and abs(float(np.diff([p[SIDE_AXIS] for p in start.values()])[0])) < margin:
                continue
            out.append({**c, "instruction": idx})
            names.append(f"{name}:relabel")
    return out, names


def perturbed_action_clips(real: list[dict], noise_stds, rng: np.random.Generator) -> tuple[list, list]:
    """For each real clip and each std in ``noise_stds``: a copy whose control actions are
    ``clip(actions + N(0, std), -1, 1)`` (one draw per copy), labelled ``"wm_a<std>"``.
    The copies keep the start frame and state but lose the recorded trajectory and masks,
    so the teacher replays their own actions; imagined by :func:`generate_clips`, they give
    a start several futures that differ by their ACTIONS, as a planner's candidates do."""
    out, labels = [], []
    for c in real:
        for std in noise_stds:
            d = {k: v for k, v in c.items() if k not in ("record", "seg")}
            d["actions"] = np.clip(c["actions"] + rng.normal(0.0, float(std), c["actions"].shape), -1, 1).astype(np.float32)
            out.append(d)
            labels.append(f"wm_a{float(std):g}")
    return out, labels


def build_shard(path, teacher, *, max_episodes, windows: int, degradations_per_clip: int,
                wm=None, wm_starts: int = 0, wm_temperatures=(), wm_batch: int = 16, seed: int = 0,
                episodes: tuple[int, int] | None = None, wm_action_noise=(), wm_opposite: bool = False,
                wm_relabel=()) -> dict:
    """All bench rows from one rollout file (episodes ``[start, stop)`` of it if given):
    real clips, degradations, generations (real actions at each of ``wm_temperatures``;
    perturbed actions at temperature 1 for each std of ``wm_action_noise``; each of them again
    under the opposite instruction with ``wm_opposite`` and under each of ``wm_relabel``'s
    instructions where the scene answers it: :func:`relabel_clips`)."""
    from worldmodel.judge.degrade import DEGRADATIONS

    tag = f"{Path(path).stem}:{episodes}"
    rng = np.random.default_rng([seed, int(hashlib.sha1(tag.encode()).hexdigest()[:6], 16)])
    eps = load_source_episodes([path], max_episodes)
    if episodes is not None:
        eps = eps[episodes[0]:episodes[1]]
    real = [make_clip(e, s) for e in eps for s in cut_windows(e, windows, rng)]
    if not real:
        return {}
    parts = [label_clips(teacher, real, "real", [""] * len(real))]
    deg, names = degraded_clips(real, DEGRADATIONS, degradations_per_clip, rng)
    if deg:
        parts.append(label_clips(teacher, deg, "degraded", names))
    if wm is not None and wm_starts > 0 and len(wm_temperatures):
        pick = rng.choice(len(real), size=min(wm_starts, len(real)), replace=False)
        starts = [real[i] for i in sorted(pick)]
        gen, labels = generate_clips(wm, starts, wm_temperatures, wm_batch, seed)
        if len(wm_action_noise):
            varied, names = perturbed_action_clips(starts, wm_action_noise, rng)
            gen += generate_clips(wm, varied, [1.0], wm_batch, seed + 1)[0]
            labels += names
        parts.append(label_clips(teacher, gen, "generated", labels))
        if wm_opposite:
            opp, names = opposite_clips(gen, labels)
            if opp:
                parts.append(label_clips(teacher, opp, "generated", names))
        if len(wm_relabel):
            rel, names = relabel_clips(gen, labels, wm_relabel)
            if rel:
                parts.append(label_clips(teacher, rel, "generated", names))
    teacher.clear_cache()
    return concat_rows(parts)


def read_rows(path) -> dict:
    b = load_bench(path)
    b.pop("attrs")
    return {k: (list(v) if k in STR_KEYS else v) for k, v in b.items()}


# ---------------------------------------------------------------------- object tracks
TRACKS_CHUNK = 500


def tracks_path(bench_path: str | os.PathLike) -> Path:
    """Where :func:`build_tracks` writes a bench's object tracks: ``<bench>.tracks.npz`` beside it."""
    p = Path(bench_path)
    return p.with_name(p.stem + ".tracks.npz")


def bench_fingerprint(bench_path: str | os.PathLike) -> str:
    """12 hex digits naming a bench file's rows (its row count, labels and actions), so a
    tracks file from another build of the bench is refused."""
    with h5py.File(bench_path, "r") as f:
        h = hashlib.sha1(str(len(f["scores"])).encode())
        h.update(np.ascontiguousarray(f["scores"][()]).tobytes())
        h.update(np.ascontiguousarray(f["actions"][()]).tobytes())
    return h.hexdigest()[:12]


def _tracks_chunk(args) -> tuple[int, np.ndarray, np.ndarray]:
    bench_path, teacher_path, lo, hi = args
    from worldmodel.judge.teacher import Teacher

    teacher = Teacher.load(teacher_path)
    b = {}
    with h5py.File(bench_path, "r") as f:
        for k in ("frames", "actions", "start_state", "state_len", "instruction"):
            b[k] = f[k][lo:hi]
        b["env_id"] = f["env_id"].asstr()[lo:hi]
    xs, rs = [], []
    for i in range(hi - lo):
        t = teacher.tracks(bench_clip(b, i))
        xs.append(t["x"])
        rs.append(t["r"])
    teacher.close()
    return lo, np.stack(xs), np.stack(rs)


def build_tracks(bench_path: str | os.PathLike, teacher_path: str | os.PathLike | None = None, *,
                 workers: int = 1, progress: bool = True) -> Path:
    """The teacher's object tracks (:meth:`Teacher.tracks`) for every row of a bench, written
    to :func:`tracks_path` as ``x``, ``r`` float32 ``(N, T+1, 3, 2)`` plus ``fingerprint``
    (:func:`bench_fingerprint`). ~0.1 s per clip per core (replay + perception). Chunks of
    :data:`TRACKS_CHUNK` rows are kept beside it until the end, so an interrupted run
    resumes; ``workers`` processes share the chunks. A finished file that belongs to this
    build of the bench is returned as it is. ``teacher_path``: the bench's own
    ``teacher.json`` by default."""
    import multiprocessing as mp

    bench_path = Path(bench_path)
    if not bench_path.exists():
        raise FileNotFoundError(f"no bench file at {bench_path}; build it with `python experiments/build_bench.py`")
    teacher_path = Path(teacher_path or bench_path.parent / "teacher.json")
    if not teacher_path.exists():
        raise FileNotFoundError(f"no teacher at {teacher_path}: pass the teacher.json the bench was labelled with")
    out = tracks_path(bench_path)
    fp = bench_fingerprint(bench_path)
    if out.exists():
        with np.load(out) as z:
            if str(z["fingerprint"]) == fp:
                return out
    with h5py.File(bench_path, "r") as f:
        n = len(f["scores"])
    parts_dir = out.with_name(out.stem + f".parts-{fp}")
    parts_dir.mkdir(exist_ok=True)
    todo = [(str(bench_path), str(teacher_path), lo, min(n, lo + TRACKS_CHUNK)) for lo in range(0, n, TRACKS_CHUNK)
            if not (parts_dir / f"{lo:07d}.npz").exists()]

    def save(res):
        lo, x, r = res
        with atomic_path(parts_dir / f"{lo:07d}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x, r=r)

    from tqdm import tqdm
    bar = tqdm(total=len(todo), desc="tracks (chunks)", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            for res in pool.imap_unordered(_tracks_chunk, todo):
                save(res)
                bar.update()
    else:
        for job in todo:
            save(_tracks_chunk(job))
            bar.update()
    bar.close()
    xs, rs = [], []
    for lo in range(0, n, TRACKS_CHUNK):
        with np.load(parts_dir / f"{lo:07d}.npz") as z:
            xs.append(z["x"])
            rs.append(z["r"])
    x, r = np.concatenate(xs), np.concatenate(rs)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, x=x, r=r, fingerprint=np.array(fp))
    for p in parts_dir.iterdir():
        p.unlink()
    parts_dir.rmdir()
    return out


def load_tracks(bench_path: str | os.PathLike, split_rows=None) -> dict:
    """A bench's tracks (:func:`build_tracks`): ``{"x", "r"}`` float32 ``(N, T+1, 3, 2)``,
    optionally only the rows ``split_rows`` (an index or mask). Raises ``FileNotFoundError``
    (with the command that builds them) when missing and ``ValueError`` when they belong to
    another build of the bench."""
    p = tracks_path(bench_path)
    if not p.exists():
        raise FileNotFoundError(f"no object tracks for {bench_path} (expected {p}); build them with "
                                f"`python experiments/bench_tracks.py {bench_path}`")
    with np.load(p) as z:
        fp = str(z["fingerprint"])
        if fp != bench_fingerprint(bench_path):
            raise ValueError(f"{p} was built for another version of {bench_path} (fingerprint {fp}); rebuild it "
                             f"with `python experiments/bench_tracks.py {bench_path}`")
        x, r = z["x"], z["r"]
    if split_rows is not None:
        x, r = x[split_rows], r[split_rows]
    return {"x": x, "r": r}
