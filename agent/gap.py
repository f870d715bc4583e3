"""The imagined-vs-real gap at replanning time: does what the planner imagined for the
plan it executed agree with what the simulator says that plan does?

At every replan the MPC agent keeps the imagined future of the plan it chose
(``(T+1, 64, 64, 3)`` frames, the real start frame first) and the plan's actions. After
the episode, each (start state, plan, imagined clip) is handed to the privileged
teacher (:class:`worldmodel.judge.teacher.Teacher`), which reads the task stage *shown*
in the imagined clip (Instruction Following 0-3: nothing, reached, grasped, done) and
replays the same actions from the same simulator state for the *true* stage. This is
evaluation-side: the planner never sees it.

Per episode: ``replans``, ``disagree`` (imagined stage != true stage), ``optimistic``
(imagined stage > true: the model promised more than the plan does), ``pessimistic``,
the mean Action-Outcome Consistency of the imagined clips (the teacher's gripper
and cube tracks of the imagined clip against the replay's, 0-1) and ``confusion``
``[true stage][imagined stage]`` counts (4 x 4).
"""
from __future__ import annotations

import numpy as np

#: Instruction Following stages: 0 nothing, 1 reached, 2 grasped, 3 done.
N_STAGES = 4
_TEACHERS: dict = {}


def load_teacher(path: str):
    """A calibrated teacher (``teacher.json`` with ``perception.npz`` beside it), cached per process."""
    if path not in _TEACHERS:
        from worldmodel.judge.teacher import Teacher

        _TEACHERS[path] = Teacher.load(path)
    return _TEACHERS[path]


def imagination_gap(teacher, env_id: str, instruction: int, states: list, imagined: list, plans: list,
                    repeat: int) -> dict:
    """Gap counts of one episode.

    ``states[t]``: the simulator state at control step t (``info["sim_state"]``);
    ``imagined``: ``[(replan step s, clip (T+1, H, W, 3) uint8)]``; ``plans``: the
    matching plans ``(T * repeat, 4)``; ``repeat``: control steps per imagined frame.
    """
    if len(imagined) != len(plans):
        raise ValueError(f"{len(imagined)} imagined clips but {len(plans)} plans")
    if not imagined:
        return {"replans": 0, "disagree": 0, "optimistic": 0, "pessimistic": 0, "aoc_sum": 0.0,
                "confusion": np.zeros((N_STAGES, N_STAGES), int).tolist()}
    out = score_executed(teacher, env_id, instruction, states, imagined, plans, repeat)
    m = stage_confusion(out)
    return {"replans": len(imagined), "disagree": int(m.sum() - np.trace(m)), "optimistic": int(np.triu(m, 1).sum()),
            "pessimistic": int(np.tril(m, -1).sum()), "aoc_sum": float(out["scores"][:, 2].sum()),
            "confusion": m.tolist()}


def score_executed(teacher, env_id: str, instruction: int, states: list, imagined: list, plans: list,
                   repeat: int) -> dict:
    """The teacher's ``score_clips`` output for each executed plan's imagined clip, replayed
    from its start state: ``scores[:, 0]`` the stage shown, ``true_stage[:, 0]`` the real one
    (arguments as in :func:`imagination_gap`)."""
    if len(imagined) != len(plans):
        raise ValueError(f"{len(imagined)} imagined clips but {len(plans)} plans")
    clips = [{"frames": clip, "actions": np.asarray(plan, np.float32), "stride": int(repeat),
              "start_state": np.asarray(states[s], np.float64), "env_id": env_id, "instruction": int(instruction)}
             for (s, clip), plan in zip(imagined, plans)]
    return teacher.score_clips(clips)


def stage_confusion(scored: dict) -> np.ndarray:
    """``[true stage][stage shown]`` counts ``(4, 4)`` from a ``Teacher.score_clips`` output
    (shown: its Instruction Following score; true: the replay's ``true_stage``)."""
    m = np.zeros((N_STAGES, N_STAGES), int)
    np.add.at(m, (scored["true_stage"][:, 0], scored["scores"][:, 0].round().astype(int)), 1)
    return m


def summarize_gap(per_episode: list[dict]) -> dict | None:
    """Pooled over every replan of every episode: rates of disagreement, optimism,
    pessimism and the mean AOC (``None`` when no episode measured the gap)."""
    eps = [g for g in per_episode if g and g.get("replans")]
    if not eps:
        return None
    n = sum(g["replans"] for g in eps)
    conf = sum(np.asarray(g["confusion"]) for g in eps if "confusion" in g)
    return {"episodes": len(eps), "replans": n,
            "confusion": np.asarray(conf).tolist() if np.ndim(conf) == 2 else None,
            "disagree_rate": sum(g["disagree"] for g in eps) / n,
            "optimistic_rate": sum(g["optimistic"] for g in eps) / n,
            "pessimistic_rate": sum(g["pessimistic"] for g in eps) / n,
            "aoc_mean": sum(g["aoc_sum"] for g in eps) / n}


__all__ = ["imagination_gap", "score_executed", "stage_confusion", "summarize_gap", "load_teacher"]
