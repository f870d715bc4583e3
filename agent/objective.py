"""The planning objective: how a candidate plan's scored clip becomes one number.

A reward model's ``score`` returns per-clip judge dimensions ``dims`` ``(B, 6)`` (IF, MS,
AOC, TC, CR, PA: see :data:`worldmodel.judge.DIMENSIONS`) and, from a student with shaping
outputs, ``shaping`` ``(B, 3)``: the instructed cube's rise, the gripper's distance to it and
the clip's estimated progress (the true value of its actions). The objective is the weighted
sum :func:`plan_objective`; every planner that scores clips (the world-model MPC and the
student oracle) uses it. Change the weights with ``mpc.weights.<key>=...`` on the command line.
"""
from __future__ import annotations

import numpy as np
import torch

DIM_KEYS = ("IF", "MS", "AOC", "TC", "CR", "PA")   # order of worldmodel.judge.DIMENSIONS
#: Task dimensions weigh most, realism terms act as plausibility checks; ``progress`` is off
#: by default (the results page measures it on and off).
DEFAULT_WEIGHTS = {"IF": 1.0, "MS": 0.5, "AOC": 0.2, "TC": 0.1, "CR": 0.1, "PA": 0.1,
                   "target_rise": 1.0, "grip_dist": 1.0, "progress": 0.0}


def objective_weights(weights: dict | None = None) -> dict:
    """:data:`DEFAULT_WEIGHTS` updated by ``weights``; an unknown key is an error."""
    unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown objective weights {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
    return {**DEFAULT_WEIGHTS, **(weights or {})}


def plan_objective(out: dict, weights: dict) -> torch.Tensor:
    """The planning objective ``(B,)`` from a reward's ``score`` output: weighted
    dimensions ``(B, 6)`` + ``target_rise`` * shaping[:, 0] - ``grip_dist`` * shaping[:, 1]
    + ``progress`` * shaping[:, 2] (the student's estimate of the actions' true value)."""
    dims = torch.as_tensor(out["dims"], dtype=torch.float32)
    w = torch.tensor([weights[k] for k in DIM_KEYS], dtype=torch.float32)
    obj = (dims * w).sum(-1)
    shaping = out.get("shaping")
    if shaping is not None:
        shaping = torch.as_tensor(shaping, dtype=torch.float32)
        obj = obj + weights["target_rise"] * shaping[:, 0] - weights["grip_dist"] * shaping[:, 1]
        if weights.get("progress", 0.0):
            obj = obj + weights["progress"] * shaping[:, 2]
    return obj


def aggregate_futures(obj: np.ndarray, pessimism: float = 0.0) -> np.ndarray:
    """A candidate's objective from its ``k`` imagined draws ``(N, k)``: the mean minus
    ``pessimism`` x the (population) standard deviation ``(N,)``; with ``k = 2`` and 1.0 it
    is the worse of the two draws."""
    return obj.mean(1) - pessimism * obj.std(1) if pessimism else obj.mean(1)


__all__ = ["DIM_KEYS", "DEFAULT_WEIGHTS", "objective_weights", "plan_objective", "aggregate_futures"]
