"""See why a plan won: a per-replan record of the candidates, their imagined futures and scores.

An opt-in :class:`PlanRecorder` (``inspect.enabled=true`` in the closed loop, or
``WorldModelMPC(..., inspect={...})``) keeps, for every replan of a world-model method:

- the real frame the replan started from (and so, from the next replan, what really happened);
- every candidate's objective, judge dimensions ``(6,)`` and shaping outputs ``(3,)``, for
  every planner iteration;
- the whole imagined clip and the actions of the ``top_k`` best-scored candidates and of
  ``random`` others (drawn from a stream of the recorder's own: recording never changes what
  the agent does);
- which candidate was executed (iteration, index; ``-1`` when the executed plan was not a
  candidate, e.g. MPPI's mean) and its imagined future.

:func:`contact_sheet` turns an episode's records into one PNG (a row per replan: the real
frame, the executed plan's imagined end, the kept candidates' imagined ends sorted by score,
the real frame after the executed steps) and :func:`write_rrd` into a rerun recording (opened
with the rerun viewer; needs ``rerun-sdk``). Shapes: frames ``(H, W, 3)`` uint8, clips
``(T + 1, H, W, 3)`` uint8.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DIMENSIONS = ("IF", "MS", "AOC", "TC", "CR", "PA")


def to_uint8(clips) -> np.ndarray:
    """Clips ``(..., 3, H, W)`` float in [0, 1] (a tensor or array) -> ``(..., H, W, 3)`` uint8."""
    a = clips.detach().cpu().float().numpy() if hasattr(clips, "detach") else np.asarray(clips, np.float32)
    return (np.moveaxis(a, -3, -1).clip(0, 1) * 255).round().astype(np.uint8)


@dataclass
class Replan:
    """One replan: per planner iteration the candidates' scores and what was kept of them."""

    step: int
    real: np.ndarray                                   # (H, W, 3) the frame the replan started from
    iterations: list[dict] = field(default_factory=list)
    chosen: tuple[int, int] = (-1, -1)                 # (iteration, index) of the executed plan
    executed_clip: np.ndarray | None = None            # (T + 1, H, W, 3) its imagined future
    executed_actions: np.ndarray | None = None         # (steps, 4)


class PlanRecorder:
    """Collects :class:`Replan` records (``top_k`` best and ``random`` other clips per iteration)."""

    def __init__(self, top_k: int = 4, random: int = 2, seed: int = 0):
        if int(top_k) < 1 or int(random) < 0:
            raise ValueError(f"inspect needs top_k >= 1 and random >= 0, got {top_k}, {random}")
        self.top_k, self.random, self.seed = int(top_k), int(random), int(seed)
        self.reset()

    def reset(self) -> None:
        self.replans: list[Replan] = []
        self._rng = np.random.default_rng(self.seed)   # which "random others" are kept; the agent's streams are untouched

    def begin(self, step: int, image: np.ndarray) -> None:
        self.replans.append(Replan(int(step), np.asarray(image, np.uint8).copy()))

    def add(self, candidates: np.ndarray, objective: np.ndarray, dims, shaping, clips) -> None:
        """One planner iteration: ``candidates (N, steps, 4)``, ``objective (N,)``, ``dims (N, 6)``,
        ``shaping (N, 3)`` or None, imagined ``clips (N, T + 1, 3, H, W)`` float in [0, 1]."""
        objective = np.asarray(objective, np.float64)
        order = np.argsort(-objective, kind="stable")
        top = order[: self.top_k]
        rest = order[self.top_k:]
        others = np.sort(self._rng.choice(rest, min(self.random, len(rest)), replace=False)) if len(rest) else rest
        keep = np.concatenate([top, others]).astype(int)
        self.replans[-1].iterations.append({
            "objective": objective, "dims": np.asarray(dims, np.float32),
            "shaping": None if shaping is None else np.asarray(shaping, np.float32),
            "kept": keep, "kept_clips": to_uint8(clips[keep]),
            "kept_actions": np.asarray(candidates, np.float32)[keep], "candidates": np.asarray(candidates, np.float32)})

    def end(self, actions: np.ndarray, clip) -> None:
        """The executed plan ``actions (steps, 4)`` and its imagined ``clip (T + 1, H, W, 3)`` uint8."""
        rp = self.replans[-1]
        rp.executed_actions, rp.executed_clip = np.asarray(actions, np.float32), np.asarray(clip, np.uint8)
        for it in range(len(rp.iterations) - 1, -1, -1):        # the latest iteration that proposed it
            same = np.flatnonzero(np.all(np.isclose(rp.iterations[it]["candidates"], rp.executed_actions,
                                                    atol=1e-6), axis=(1, 2)))
            if len(same):
                rp.chosen = (it, int(same[0]))
                break
        for it in rp.iterations:                                 # all candidates' actions: only while matching
            del it["candidates"]

    def episode_log(self) -> dict:
        return {"inspect": list(self.replans)}


# ---------------------------------------------------------------------- writers
def _caption(img: np.ndarray, text: str, colour=(255, 255, 255)) -> np.ndarray:
    """``img`` with up to two lines of ``text`` (split at newlines) under it."""
    from PIL import Image, ImageDraw

    h, w = img.shape[:2]
    canvas = Image.new("RGB", (w, h + 24))
    canvas.paste(Image.fromarray(img), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(text.split("\n")[:2]):
        draw.text((1, h + 1 + 11 * i), line[: max(1, w // 6)], fill=colour)
    return np.asarray(canvas)


def _frame(img: np.ndarray, colour=(255, 200, 0), width: int = 2) -> np.ndarray:
    out = img.copy()
    out[:width], out[-width:], out[:, :width], out[:, -width:] = colour, colour, colour, colour
    return out


STAGES = ("nothing", "reached", "grasped", "done")


def contact_sheet(replans: list[Replan], outcome: str = "", values: dict | None = None,
                  stages: dict | None = None) -> np.ndarray:
    """One image of an episode: a row per replan -- the real frame, the executed plan's
    imagined end (framed), the last iteration's kept candidates' imagined ends sorted by
    score (the executed one framed), and the real frame at the next replan. ``values``:
    ``{(replan, kept position): true value}`` from a simulator replay, shown under the score;
    ``stages``: ``{replan: (stage shown, true stage)}`` of the executed plan (the teacher's
    reading of its imagined clip and of its replay), shown under the executed cell."""
    if not replans:
        raise ValueError("no replans recorded: inspect a world-model method (mpc, mpc_prior, ...)")
    rows = []
    blank = np.zeros_like(replans[0].real)
    width = max(len(r.iterations[-1]["kept"]) if r.iterations else 0 for r in replans)
    for i, rp in enumerate(replans):
        it = rp.iterations[-1] if rp.iterations else None
        cells = [_caption(rp.real, f"real\nstep {rp.step}")]
        imagined = rp.executed_clip[-1] if rp.executed_clip is not None else blank
        label = "executed\n(imagined)"
        if stages and i in stages:
            shown, true = stages[i]
            label = f"shows {STAGES[shown][:5]}\nreal {STAGES[true][:5]}"
        cells.append(_caption(_frame(imagined), label, (255, 200, 0) if not stages or i not in stages
                              or stages[i][0] == stages[i][1] else (255, 80, 80)))
        for j in range(width):
            if it is None or j >= len(it["kept"]):
                cells.append(_caption(blank, ""))
                continue
            k = int(it["kept"][j])
            img = it["kept_clips"][j][-1]
            chosen = rp.chosen == (len(rp.iterations) - 1, k)
            text = f"#{k} {it['objective'][k]:+.2f}"
            if values and (i, j) in values:
                text += f"\ntrue {values[(i, j)]:.1f}"
            cells.append(_caption(_frame(img) if chosen else img, text, (255, 200, 0) if chosen else (255, 255, 255)))
        after = replans[i + 1].real if i + 1 < len(replans) else blank
        cells.append(_caption(after, "real after" if i + 1 < len(replans) else outcome.replace(": ", ":\n")))
        rows.append(np.concatenate(cells, 1))
    return np.concatenate(rows, 0)


def write_sheet(replans: list[Replan], path: str | os.PathLike, outcome: str = "", values: dict | None = None,
                stages: dict | None = None) -> Path:
    from PIL import Image

    from envs.rollouts import atomic_path

    sheet = contact_sheet(replans, outcome, values, stages)
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="png")
    return Path(path)


def write_rrd(replans: list[Replan], path: str | os.PathLike, name: str = "roboalign") -> Path | None:
    """The episode as a rerun recording (``None`` when ``rerun-sdk`` is not installed): per
    replan the real frame, the kept candidates' imagined clips (time ``imagined_step``), their
    objective and dimensions as scalars, and which one was executed."""
    try:
        import rerun as rr
    except ImportError:
        return None
    from envs.rollouts import atomic_path

    rec = rr.RecordingStream(name)
    with atomic_path(path) as tmp:
        rec.save(str(tmp))
        for i, rp in enumerate(replans):
            rec.set_time("control_step", sequence=rp.step)
            rec.set_time("imagined_step", sequence=0)
            rec.log("real", rr.Image(rp.real))
            if rp.executed_clip is not None:
                for t, img in enumerate(rp.executed_clip):
                    rec.set_time("imagined_step", sequence=t)
                    rec.log("executed/imagined", rr.Image(img))
            if not rp.iterations:
                continue
            it = rp.iterations[-1]
            rec.set_time("imagined_step", sequence=0)
            rec.log("chosen", rr.TextLog(f"replan {i}: executed candidate {rp.chosen[1]} of iteration {rp.chosen[0]}"))
            for j, k in enumerate(it["kept"]):
                rec.log(f"candidates/{j}/objective", rr.Scalars(float(it["objective"][k])))
                for d, dim in enumerate(DIMENSIONS):
                    rec.log(f"candidates/{j}/dims/{dim}", rr.Scalars(float(it["dims"][k, d])))
                for t, img in enumerate(it["kept_clips"][j]):
                    rec.set_time("imagined_step", sequence=t)
                    rec.log(f"candidates/{j}/imagined", rr.Image(img))
                rec.set_time("imagined_step", sequence=0)
        rec.flush()
    return Path(path)


__all__ = ["PlanRecorder", "Replan", "contact_sheet", "write_sheet", "write_rrd", "to_uint8"]
