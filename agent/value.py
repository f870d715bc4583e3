"""A plan's value without a world model: what the chooser sees at the start + the candidate's actions.

The control of ``benchmarks/outcome_head.py`` and a learned chooser among the action prior's
samples (``agent.prior.PriorAgent(pick="value")``): does a value fitted on counterfactual
candidates (:mod:`agent.counterfactual`) choose better than a random pick, with no
imagination at all? What it sees of the start (``inputs``): ``"frame"``, the observed image at
16x16 pixels, or ``"state"``, the observation's state parts (proprio, cube centres, instruction:
``envs.robosuite_env.state_vector``), i.e. a chooser with perfect perception. Public verbs:
:func:`frame_action_features`, :func:`start_features`, :class:`PlanValue` (``score``, ``save``,
``load``), :class:`ValueEnsemble` (several fitted values; a pessimistic score),
:func:`load_value`, :func:`candidate_features`, :func:`fit_value`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

KIND = "plan_value"
ENSEMBLE_KIND = "plan_value_ensemble"
INPUTS = ("frame", "state")


def _plan_features(start: torch.Tensor, actions: np.ndarray, repeat: int) -> torch.Tensor:
    """``start (S, D)``, ``actions (S, N, steps, 4)`` -> ``(S * N, steps / repeat, D + 4 steps + steps / repeat)``."""
    s, n, steps, a = actions.shape
    if start.shape[0] != s or a != 4 or steps % repeat:
        raise ValueError(f"expected {start.shape[0]} starts and actions (S, N, steps, 4) with steps a multiple of "
                         f"{repeat}; got actions {actions.shape}")
    t = steps // repeat
    acts = torch.from_numpy(np.ascontiguousarray(actions, dtype=np.float32)).reshape(s, n, -1)
    base = torch.cat([start[:, None].expand(s, n, -1), acts], -1).reshape(s * n, 1, -1).expand(-1, t, -1)
    return torch.cat([base, torch.eye(t)[None].expand(s * n, -1, -1)], -1).contiguous()


def frame_action_features(image: np.ndarray, actions: np.ndarray, repeat: int = 2, size: int = 16) -> torch.Tensor:
    """Per model step, the start frame at ``size`` x ``size`` pixels, all of the candidate's
    actions and the step's one-hot: ``image (S, H, W, 3)`` uint8, ``actions (S, N, steps, 4)``
    -> ``(S * N, steps / repeat, 3 size^2 + 4 steps + steps / repeat)`` float32."""
    if image.ndim != 4 or image.shape[0] != actions.shape[0]:
        raise ValueError(f"expected image (S, H, W, 3) and actions (S, N, steps, 4); got {image.shape} and "
                         f"{actions.shape}")
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(0, 3, 1, 2).float().div(255)
    return _plan_features(F.interpolate(img, size=(size, size), mode="area").flatten(1), actions, repeat)


def start_features(data: dict, actions: np.ndarray, inputs: str = "frame", repeat: int = 2,
                   size: int = 16) -> torch.Tensor:
    """:func:`frame_action_features` (``inputs="frame"``: ``data["image"] (S, H, W, 3)``) or the
    same with ``data["state"] (S, D)`` in place of the pixels (``inputs="state"``)."""
    if inputs == "frame":
        return frame_action_features(data["image"], actions, repeat, size)
    if inputs != "state":
        raise ValueError(f"unknown value inputs {inputs!r}; known: {INPUTS}")
    if "state" not in data:
        raise ValueError("these counterfactuals have no 'state' (collected before it was recorded); add it with "
                         "agent.counterfactual.add_states or collect again with experiments/collect_counterfactual.py")
    return _plan_features(torch.as_tensor(np.asarray(data["state"], np.float32)), actions, repeat)


class PlanValue(torch.nn.Module):
    """An MLP on :func:`start_features`: the label (the env's reward, or oracle-P's value) after
    each model step ``(B, T)``. ``state_dim``: the length of the state vector (``inputs="state"``)."""

    def __init__(self, steps: int = 16, repeat: int = 2, size: int = 16, hidden: int = 128, inputs: str = "frame",
                 state_dim: int = 0):
        super().__init__()
        if inputs not in INPUTS or (inputs == "state") != (state_dim > 0):
            raise ValueError(f"inputs must be one of {INPUTS}, with state_dim > 0 exactly for 'state'; got "
                             f"{inputs!r}, state_dim={state_dim}")
        self.config = {"steps": int(steps), "repeat": int(repeat), "size": int(size), "hidden": int(hidden),
                       "inputs": inputs, "state_dim": int(state_dim)}
        dim = (3 * size * size if inputs == "frame" else state_dim) + 4 * steps + steps // repeat
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` features -> ``(..., 1)`` predicted reward."""
        return self.net(feats)

    @torch.no_grad()
    def score(self, obs: dict, chunks: np.ndarray) -> np.ndarray:
        """Mean predicted label ``(N,)`` of candidate plans ``chunks (N, steps, 4)`` from one
        observation (``obs["image"] (H, W, 3)`` uint8, or its proprio / objects / instruction)."""
        from envs.robosuite_env import state_vector

        c = self.config
        chunks = np.clip(np.asarray(chunks, np.float32), -1.0, 1.0)
        if chunks.ndim != 3 or chunks.shape[1:] != (c["steps"], 4):
            raise ValueError(f"expected chunks (N, {c['steps']}, 4), got {chunks.shape}")
        start = ({"image": np.asarray(obs["image"])[None]} if c["inputs"] == "frame" else
                 {"state": state_vector(obs["proprio"], obs["objects"], obs["instruction"])[None]})
        if c["inputs"] == "state" and start["state"].shape[1] != c["state_dim"]:
            raise ValueError(f"this value reads a state of {c['state_dim']} numbers, the observation gives "
                             f"{start['state'].shape[1]} (another task?)")
        feats = start_features(start, chunks[None], c["inputs"], c["repeat"], c["size"])
        return self(feats).squeeze(-1).mean(-1).numpy()

    def save(self, path: str | os.PathLike, metrics: dict | None = None) -> None:
        _write(path, {"kind": KIND, "config": self.config, "state_dict": self.state_dict(), "metrics": metrics or {}})

    @classmethod
    def from_state(cls, config: dict, state_dict: dict, metrics: dict | None = None) -> "PlanValue":
        """A value in eval mode from its saved ``config`` and weights."""
        out = cls(**config)
        out.load_state_dict(state_dict)
        out.metrics = metrics or {}     # as measured when it was saved
        return out.eval()

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PlanValue":
        value = load_value(path)
        if not isinstance(value, cls):
            raise ValueError(f"{path} is not a {KIND} checkpoint (an ensemble? use agent.value.load_value)")
        return value


class ValueEnsemble:
    """Several :class:`PlanValue` s fitted on the same data from different seeds. ``score`` is
    their mean minus ``pessimism`` times their spread (std over members): where the members
    disagree -- plans unlike their training candidates -- the chooser trusts the value less
    (the lower-confidence-bound choice of model-based offline RL)."""

    def __init__(self, members: list, pessimism: float = 0.0):
        if not members:
            raise ValueError("a ValueEnsemble needs at least one member")
        if len({tuple(sorted(m.config.items())) for m in members}) != 1:
            raise ValueError("ensemble members must share one config (inputs, steps, ...)")
        self.members, self.pessimism = list(members), float(pessimism)
        self.config = members[0].config
        self.metrics = {}

    def score(self, obs: dict, chunks: np.ndarray) -> np.ndarray:
        """``(N,)`` members' mean score minus ``pessimism`` x their std (see :meth:`PlanValue.score`)."""
        s = np.stack([m.score(obs, chunks) for m in self.members])
        return s.mean(0) - self.pessimism * s.std(0)

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` features -> ``(..., 1)``: mean minus ``pessimism`` x std over members."""
        out = torch.stack([m(feats) for m in self.members])
        return out.mean(0) - self.pessimism * out.std(0, unbiased=False)

    def save(self, path: str | os.PathLike, metrics: dict | None = None) -> None:
        _write(path, {"kind": ENSEMBLE_KIND, "config": self.config, "pessimism": self.pessimism,
                      "members": [m.state_dict() for m in self.members], "metrics": metrics or {}})


def _write(path: str | os.PathLike, payload: dict) -> None:
    """A checkpoint written atomically (temp file + rename)."""
    from envs.rollouts import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_value(src, pessimism: float | None = None):
    """A fitted value as given (a :class:`PlanValue` / :class:`ValueEnsemble`) or loaded from a
    checkpoint of either kind; ``pessimism`` overrides an ensemble's saved one."""
    value = src
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(f"value checkpoint {path} not found; fit one with benchmarks/value_pick.py")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
        if kind == ENSEMBLE_KIND:
            value = ValueEnsemble([PlanValue.from_state(ckpt["config"], sd) for sd in ckpt["members"]],
                                  ckpt["pessimism"])
            value.metrics = ckpt.get("metrics", {})
        elif kind in (KIND, "frame_action_value"):   # the older name
            value = PlanValue.from_state(ckpt["config"], ckpt["state_dict"], ckpt.get("metrics"))
        else:
            raise ValueError(f"{path} is not a {KIND} or {ENSEMBLE_KIND} checkpoint")
    if pessimism is not None:
        if not isinstance(value, ValueEnsemble):
            raise ValueError("pessimism needs an ensemble of values (benchmarks/value_pick.py --members K)")
        value.pessimism = float(pessimism)
    return value


def candidate_features(data: list[dict], repeat: int = 2, size: int = 16, label: str = "rewards",
                       inputs: str = "frame") -> dict:
    """Counterfactual dicts (:func:`agent.counterfactual.load_counterfactuals`) as one
    ``{"features" (M, T, D), "rewards" (M, T) (the ``label`` after each model step), "group" (M,)}``."""
    from agent.counterfactual import candidate_labels
    from worldmodel.outcome import concat_features

    parts = []
    for d in data:
        s, n = d["actions"].shape[:2]
        r = torch.from_numpy(candidate_labels(d, label)[0][:, :, repeat - 1::repeat].copy()).reshape(s * n, -1)
        parts.append({"features": start_features(d, d["actions"], inputs, repeat, size), "rewards": r,
                      "group": torch.arange(s).repeat_interleave(n), "window": torch.arange(s * n)})
    return concat_features(parts)


def fit_value(train: list[dict], *, repeat: int = 2, size: int = 16, hidden: int = 128, steps: int = 3000,
              rank_weight: float = 1.0, seed: int = 0, label: str = "rewards", inputs: str = "frame",
              rank_focus: bool = False, rank_loss: str = "logistic", progress: bool = False) -> PlanValue:
    """A :class:`PlanValue` fitted on counterfactual dicts by MSE on ``label`` (the env's
    reward, or oracle-P's values) + the within-state ranking loss (``worldmodel.outcome.train_head``,
    aimed at the states where the choice matters with ``rank_focus``; ``rank_loss="advantage"``:
    the within-state gaps regressed at their true size)."""
    from worldmodel.outcome import train_head

    data = candidate_features(train, repeat, size, label, inputs)
    torch.manual_seed(seed)
    value = PlanValue(train[0]["actions"].shape[2], repeat, size, hidden, inputs,
                      train[0]["state"].shape[1] if inputs == "state" else 0)
    train_head(value, data, steps=steps, seed=seed, rank_weight=rank_weight, rank_focus=rank_focus,
               rank_loss=rank_loss, progress=progress)
    return value.eval()


__all__ = ["frame_action_features", "start_features", "candidate_features", "PlanValue", "ValueEnsemble",
           "load_value", "fit_value"]
