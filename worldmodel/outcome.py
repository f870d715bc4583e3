"""The world model's outcome head: the env's reward, read from the model's own imagination.

The student judges imagined *video*. Where the dynamics imagines a lift as "grasped, not
lifted" the video has lost the outcome, however well the student reads it
(BENCHMARKS.md 'Imagination: the weak prior's held-out grasps ...': the tokenizer keeps
95% of lifts, the imagined video 45%). The outcome head reads the dynamics' pooled hidden
state of each imagined step instead (:attr:`worldmodel.world_model.Rollout.features`).

It is fitted on what the frozen world model imagines under a real clip's actions (a
rollout from the clip's first frame, the same mode as the planner's, sampled ``draws``
times), regressed on the env's recorded reward after each step. So it learns the real
outcome of the actions from the imagination the planner will see, including its
systematic errors. Public verbs: :func:`imagine_features`, :func:`fit_outcome`,
:func:`outcome_metrics`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from worldmodel.data import RolloutWindows
from worldmodel.training import autocast
from worldmodel.world_model import WorldModel


@torch.no_grad()
def imagine_features(wm: WorldModel, windows: RolloutWindows, *, draws: int = 1, batch_size: int = 32,
                     mode: str = "swr", temperature: float = 1.0, seed: int = 0, amp: bool = True,
                     progress: bool = True) -> dict:
    """Imagine every window ``draws`` times under its real actions, from its real first frame.

    Returns ``{"features": (N * draws, T, d) float32, "rewards": (N * draws, T) float32,
    "window": (N * draws,) int64}`` (the draws of a window are adjacent)."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if windows.rewards is None:
        raise ValueError("the rollout files hold no rewards; the outcome head regresses the env's "
                         "reward -- collect them with experiments/collect.py")
    wm.eval()
    device = next(wm.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    feats, rewards, index = [], [], []
    loader = DataLoader(windows, batch_size=batch_size, shuffle=False, num_workers=0)
    n = 0
    for item in tqdm(loader, desc="imagine", disable=not progress, unit="batch"):
        frames = item["frames"][:, 0].float().div(255.0).repeat_interleave(draws, 0).to(device)
        actions = item["actions"].repeat_interleave(draws, 0).to(device)
        with autocast(device, amp):
            roll = wm.rollout(frames, actions, mode=mode, temperature=temperature, generator=gen)
        feats.append(roll.features.float().cpu())
        rewards.append(item["rewards"].repeat_interleave(draws, 0).float())
        index.append(torch.arange(n, n + len(item["actions"])).repeat_interleave(draws))
        n += len(item["actions"])
    return {"features": torch.cat(feats), "rewards": torch.cat(rewards), "window": torch.cat(index)}


def outcome_metrics(pred: torch.Tensor, rewards: torch.Tensor, success: float = 1.0) -> dict:
    """Fit of predictions ``(N, T)`` to the real rewards ``(N, T)``: ``mse``, ``mse_const`` (the
    best constant, i.e. the variance: a head must beat it), ``r2``, and ``auc_final``: how
    well the last step's prediction separates windows whose last reward reaches ``success``
    (the env's success reward) from the others (0.5 = chance; NaN when one class is empty)."""
    from torchmetrics.functional.classification import binary_auroc

    pred, rewards = pred.float(), rewards.float()
    mse = float(F.mse_loss(pred, rewards))
    var = float(rewards.var(unbiased=False))
    label = (rewards[:, -1] >= success - 1e-6).long()
    both = 0 < int(label.sum()) < len(label)
    auc = float(binary_auroc(pred[:, -1], label)) if both else float("nan")
    return {"mse": mse, "mse_const": var, "r2": 1.0 - mse / var if var > 0 else float("nan"),
            "auc_final": auc, "windows": len(rewards), "success_windows": int(label.sum())}


def fit_outcome(wm: WorldModel, train: dict, val: dict | None = None, *, hidden: int = 128, steps: int = 2000,
                lr: float = 1e-3, batch_size: int = 256, weight_decay: float = 1e-4, seed: int = 0,
                success: float = 1.0, progress: bool = True) -> tuple[WorldModel, dict]:
    """A copy of ``wm`` with an outcome head (``hidden`` units) fitted by MSE on ``train``
    (from :func:`imagine_features` of the same ``wm``); every other weight is unchanged.
    Returns the new world model and its metrics (``train`` / ``val``, see :func:`outcome_metrics`)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out = wm.with_outcome_head(hidden)
    head = out.dynamics.outcome
    torch.manual_seed(seed)
    for m in head.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0.0, 0.02)
            torch.nn.init.zeros_(m.bias)
    x, y = train["features"], train["rewards"]
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    head.train()
    bar = tqdm(range(steps), desc="outcome head", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        loss = F.mse_loss(head(x[idx]).squeeze(-1), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{float(loss.detach()):.4f}")
    head.eval()
    with torch.no_grad():
        metrics = {"train": outcome_metrics(out.dynamics.predict_outcome(x), y, success)}
        if val is not None:
            metrics["val"] = outcome_metrics(out.dynamics.predict_outcome(val["features"]), val["rewards"], success)
    return out.eval(), metrics


__all__ = ["imagine_features", "fit_outcome", "outcome_metrics"]
