"""A plan's value without a world model: the start frame and the candidate's actions.

The control of ``benchmarks/outcome_head.py`` and a learned chooser among the action prior's
samples (``agent.prior.PriorAgent(pick="value")``): does a value fitted on counterfactual
candidates (:mod:`agent.counterfactual`) choose better than a random pick, with no
imagination at all? Public verbs: :func:`frame_action_features`, :class:`FrameActionValue`
(``score``, ``save``, ``load``), :func:`candidate_features`, :func:`fit_value`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

KIND = "frame_action_value"


def frame_action_features(image: np.ndarray, actions: np.ndarray, repeat: int = 2, size: int = 16) -> torch.Tensor:
    """Per model step, the start frame at ``size`` x ``size`` pixels, all of the candidate's
    actions and the step's one-hot: ``image (S, H, W, 3)`` uint8, ``actions (S, N, steps, 4)``
    -> ``(S * N, steps / repeat, 3 size^2 + 4 steps + steps / repeat)`` float32."""
    s, n, steps, a = actions.shape
    if image.shape[0] != s or image.ndim != 4 or a != 4 or steps % repeat:
        raise ValueError(f"expected image (S, H, W, 3) and actions (S, N, steps, 4) with steps a multiple of "
                         f"{repeat}; got {image.shape} and {actions.shape}")
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(0, 3, 1, 2).float().div(255)
    px = F.interpolate(img, size=(size, size), mode="area").flatten(1)
    t = steps // repeat
    acts = torch.from_numpy(np.ascontiguousarray(actions, dtype=np.float32)).reshape(s, n, -1)
    base = torch.cat([px[:, None].expand(s, n, -1), acts], -1).reshape(s * n, 1, -1).expand(-1, t, -1)
    return torch.cat([base, torch.eye(t)[None].expand(s * n, -1, -1)], -1).contiguous()


class FrameActionValue(torch.nn.Module):
    """An MLP on :func:`frame_action_features`: the env's reward after each model step ``(B, T)``."""

    def __init__(self, steps: int = 16, repeat: int = 2, size: int = 16, hidden: int = 128):
        super().__init__()
        self.config = {"steps": int(steps), "repeat": int(repeat), "size": int(size), "hidden": int(hidden)}
        dim = 3 * size * size + 4 * steps + steps // repeat
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` features -> ``(..., 1)`` predicted reward."""
        return self.net(feats)

    @torch.no_grad()
    def score(self, image: np.ndarray, chunks: np.ndarray) -> np.ndarray:
        """Mean predicted reward ``(N,)`` of candidate plans ``chunks (N, steps, 4)`` from one
        observation's ``image (H, W, 3)`` uint8."""
        c = self.config
        chunks = np.clip(np.asarray(chunks, np.float32), -1.0, 1.0)
        if chunks.ndim != 3 or chunks.shape[1:] != (c["steps"], 4):
            raise ValueError(f"expected chunks (N, {c['steps']}, 4), got {chunks.shape}")
        feats = frame_action_features(np.asarray(image)[None], chunks[None], c["repeat"], c["size"])
        return self(feats).squeeze(-1).mean(-1).numpy()

    def save(self, path: str | os.PathLike, metrics: dict | None = None) -> None:
        from envs.rollouts import atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"kind": KIND, "config": self.config, "state_dict": self.state_dict(),
                        "metrics": metrics or {}}, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FrameActionValue":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"value checkpoint {path} not found; fit one with benchmarks/value_pick.py")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
            raise ValueError(f"{path} is not a {KIND} checkpoint")
        out = cls(**ckpt["config"])
        out.load_state_dict(ckpt["state_dict"])
        return out.eval()


def candidate_features(data: list[dict], repeat: int = 2, size: int = 16, label: str = "rewards") -> dict:
    """Counterfactual dicts (:func:`agent.counterfactual.load_counterfactuals`) as one
    ``{"features" (M, T, D), "rewards" (M, T) (the ``label`` after each model step), "group" (M,)}``."""
    from agent.counterfactual import candidate_labels
    from worldmodel.outcome import concat_features

    parts = []
    for d in data:
        s, n = d["actions"].shape[:2]
        r = torch.from_numpy(candidate_labels(d, label)[0][:, :, repeat - 1::repeat].copy()).reshape(s * n, -1)
        parts.append({"features": frame_action_features(d["image"], d["actions"], repeat, size), "rewards": r,
                      "group": torch.arange(s).repeat_interleave(n), "window": torch.arange(s * n)})
    return concat_features(parts)


def fit_value(train: list[dict], *, repeat: int = 2, size: int = 16, hidden: int = 128, steps: int = 3000,
              rank_weight: float = 1.0, seed: int = 0, label: str = "rewards",
              progress: bool = False) -> FrameActionValue:
    """A :class:`FrameActionValue` fitted on counterfactual dicts by MSE on ``label`` (the env's
    reward, or oracle-P's values) + the within-state ranking loss (``worldmodel.outcome.train_head``)."""
    from worldmodel.outcome import train_head

    data = candidate_features(train, repeat, size, label)
    torch.manual_seed(seed)
    value = FrameActionValue(train[0]["actions"].shape[2], repeat, size, hidden)
    train_head(value, data, steps=steps, seed=seed, rank_weight=rank_weight, progress=progress)
    return value.eval()


__all__ = ["frame_action_features", "candidate_features", "FrameActionValue", "fit_value"]
