"""Rule-based degradations of real clips for the judge benchmark.

Each function takes a clip (format :mod:`worldmodel.judge`; ``frames`` (T+1, 64, 64, 3)
uint8, plus ``seg`` (T+1, 64, 64) simulator labels for the object edits) and a numpy
``Generator`` and returns a NEW clip dict in which only what it claims changed
(``frames``, ``instruction`` or ``actions``); ``None`` when it does not apply (e.g.
no cube visible to teleport). The start frame (frame 0) is kept unless stated.

| degradation | what changes | primary dim | secondary dims | held out |
|---|---|---|---|---|
| shuffle | frames 1..T permuted (never the identity) | TC | AOC, PA | |
| freeze | frames k..k+L-1 repeat frame k-1 (L = 3..4), then the video resumes | TC | AOC, PA | |
| reverse | all frames in reverse order | TC | AOC, IF | |
| truncate | the video stops at frame k: frames k+1..T repeat frame k | AOC | TC, IF | yes |
| flicker | brightness jumps (+-25..45) and pixel noise (std 12) on 2-4 frames | TC | PA | |
| teleport | from frame k on, one cube is cut out and pasted 7..12 px away | PA | CR, AOC | |
| vanish | from frame k on, one cube is painted over with background | PA | AOC, TC | yes |
| wrong_instruction | the opposite instruction: the other cube ("green" for red), the other stacking order | IF | MS | |
| swap_actions | actions replaced by another clip's (same task, other episode) | AOC | TC | yes |

HELD OUT (:data:`HELD_OUT`): not looked at while designing the teacher's checks;
evaluated only at the end (BENCHMARKS.md, "Judge teacher sanity").
"""
from __future__ import annotations

import numpy as np

from envs.robosuite_env import LABELS
from envs.vocab import opposite_instruction, target_colour

DEGRADATIONS: tuple[str, ...] = ("shuffle", "freeze", "reverse", "truncate", "flicker", "teleport",
                                 "vanish", "wrong_instruction", "swap_actions")
HELD_OUT: tuple[str, ...] = ("truncate", "vanish", "swap_actions")
#: degradation -> (primary dimension, secondary dimensions) by short name.
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "shuffle": ("TC", ("AOC", "PA")), "freeze": ("TC", ("AOC", "PA")), "reverse": ("TC", ("AOC", "IF")),
    "truncate": ("AOC", ("TC", "IF")), "flicker": ("TC", ("PA",)), "teleport": ("PA", ("CR", "AOC")),
    "vanish": ("PA", ("AOC", "TC")), "wrong_instruction": ("IF", ("MS",)), "swap_actions": ("AOC", ("TC",)),
}


def _with(clip: dict, **changes) -> dict:
    out = dict(clip)
    out.update(changes)
    return out


def shuffle(clip, rng):
    n = len(clip["frames"])
    perm = np.arange(1, n)
    while np.array_equal(perm, np.arange(1, n)):
        perm = rng.permutation(np.arange(1, n))
    idx = np.concatenate([[0], perm])
    return _with(clip, frames=clip["frames"][idx], seg=clip["seg"][idx] if "seg" in clip else None)


def freeze(clip, rng):
    n = len(clip["frames"])
    length = int(rng.integers(3, 5))
    k = int(rng.integers(1, n - length))
    idx = np.arange(n)
    idx[k:k + length] = k - 1
    return _with(clip, frames=clip["frames"][idx], seg=clip["seg"][idx] if "seg" in clip else None)


def reverse(clip, rng):
    return _with(clip, frames=clip["frames"][::-1].copy(),
                 seg=clip["seg"][::-1].copy() if "seg" in clip else None)


def truncate(clip, rng):
    n = len(clip["frames"])
    k = int(rng.integers(2, n - 2))
    idx = np.minimum(np.arange(n), k)
    return _with(clip, frames=clip["frames"][idx], seg=clip["seg"][idx] if "seg" in clip else None)


def flicker(clip, rng):
    frames = clip["frames"].astype(np.int16).copy()
    n = len(frames)
    which = rng.choice(np.arange(1, n), size=int(rng.integers(2, 5)), replace=False)
    for i in which:
        shift = rng.choice([-1, 1]) * rng.uniform(25, 45)
        frames[i] = frames[i] + shift + rng.normal(0, 12, frames[i].shape)
    return _with(clip, frames=np.clip(frames, 0, 255).astype(np.uint8))


def _cube_colour(clip, rng) -> str | None:
    seg = clip["seg"]
    present = [c for c in ("red", "green") if (seg[0] == LABELS[f"{c}_cube"]).sum() >= 10]
    if not present:
        return None
    try:
        t = target_colour(int(clip["instruction"]))
    except KeyError:
        t = None
    return t if t in present else present[int(rng.integers(len(present)))]


def _fill_background(frame: np.ndarray, mask: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Paint ``mask`` with the median colour of background pixels in a ring around it."""
    from scipy import ndimage

    ring = ndimage.binary_dilation(mask, iterations=3) & ~mask & (seg == 0)
    colour = np.median(frame[ring], axis=0) if ring.sum() >= 5 else np.median(frame[seg == 0], axis=0)
    out = frame.copy()
    out[mask] = colour.astype(np.uint8)
    return out


def _edit_cube(clip, rng, make_edit):
    """Edit one random cube in every frame from a random frame k >= 1 on.

    ``make_edit(rng) -> edit(frame, mask, seg) -> frame`` is made after k is drawn;
    frames where the cube is not visible are left alone."""
    colour = _cube_colour(clip, rng)
    if colour is None:
        return None
    lab = LABELS[f"{colour}_cube"]
    n = len(clip["frames"])
    k = int(rng.integers(1, n - 1))
    edit = make_edit(rng)
    frames = clip["frames"].copy()
    for i in range(k, n):
        m = clip["seg"][i] == lab
        if m.any():
            frames[i] = edit(frames[i], m, clip["seg"][i])
    return _with(clip, frames=frames)


def teleport(clip, rng):
    def make_edit(rng):
        ang = rng.uniform(0, 2 * np.pi)
        r = rng.uniform(7, 12)
        dy, dx = int(round(r * np.sin(ang))), int(round(r * np.cos(ang)))

        def edit(frame, m, seg):
            out = _fill_background(frame, m, seg)
            ys, xs = np.nonzero(m)
            out[np.clip(ys + dy, 0, 63), np.clip(xs + dx, 0, 63)] = frame[ys, xs]
            return out
        return edit
    return _edit_cube(clip, rng, make_edit)


def vanish(clip, rng):
    return _edit_cube(clip, rng, lambda rng: _fill_background)


def wrong_instruction(clip, rng):
    return _with(clip, instruction=opposite_instruction(int(clip["instruction"])))


def swap_actions(clip, rng, partner: dict | None = None):
    if partner is None or partner["env_id"] != clip["env_id"] or partner.get("episode") == clip.get("episode"):
        return None
    if np.allclose(partner["actions"], clip["actions"]):
        return None
    return _with(clip, actions=np.asarray(partner["actions"], np.float32).copy())


FUNCTIONS = {"shuffle": shuffle, "freeze": freeze, "reverse": reverse, "truncate": truncate,
             "flicker": flicker, "teleport": teleport, "vanish": vanish,
             "wrong_instruction": wrong_instruction, "swap_actions": swap_actions}


def degrade(clip: dict, name: str, rng: np.random.Generator, partner: dict | None = None) -> dict | None:
    """Apply degradation ``name`` (one of :data:`DEGRADATIONS`); ``partner`` is the
    other clip for ``swap_actions``. Returns the new clip or ``None`` if it does not apply."""
    if name not in FUNCTIONS:
        raise KeyError(f"unknown degradation {name!r}; known: {list(DEGRADATIONS)}")
    out = FUNCTIONS[name](clip, rng, partner) if name == "swap_actions" else FUNCTIONS[name](clip, rng)
    if out is not None:
        out.pop("record", None) if name == "swap_actions" else None
        if out.get("seg") is None:
            out.pop("seg", None)
    return out
