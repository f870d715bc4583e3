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
:func:`outcome_metrics`, :func:`choice_metrics`.

Recorded episodes hold one action sequence per start, so a head fitted on them learns how
outcomes differ between starts. :class:`CandidateClips` wraps counterfactual data (many
candidate plans per start, each replayed in the simulator: :mod:`agent.counterfactual`),
from which it can learn which plan from one start succeeds -- the planner's choice.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from worldmodel.data import RolloutWindows
from worldmodel.training import autocast, cosine_with_warmup
from worldmodel.world_model import WorldModel


class CandidateClips(Dataset):
    """Counterfactual candidates as clips for :func:`imagine_features`: ``image (S, H, W, 3)``
    uint8 start frames, ``actions (S, N, steps, 4)`` control actions and ``rewards (S, N, steps)``
    the env's reward after each control step. Item ``i`` is candidate ``i % N`` of start
    ``i // N``: ``frames (1, 3, H, W)`` uint8, ``actions (steps / repeat, repeat * 4)``,
    ``rewards (steps / repeat,)`` (after each model step's last control step), ``group`` (the start)."""

    def __init__(self, image: np.ndarray, actions: np.ndarray, rewards: np.ndarray, action_repeat: int = 2):
        s, n, steps, a = actions.shape
        if image.shape[0] != s or rewards.shape != (s, n, steps) or a != 4 or steps % action_repeat:
            raise ValueError(f"counterfactual arrays disagree: image {image.shape}, actions {actions.shape} "
                             f"(S, N, steps, 4; steps a multiple of {action_repeat}), rewards {rewards.shape}")
        self.image, self.actions, self.rewards = image, actions, rewards
        self.n, self.repeat = n, int(action_repeat)

    def __len__(self) -> int:
        return self.image.shape[0] * self.n

    def __getitem__(self, i: int) -> dict:
        g, c = divmod(int(i), self.n)
        acts = self.actions[g, c]
        return {"frames": torch.from_numpy(np.ascontiguousarray(self.image[g])).permute(2, 0, 1)[None],
                "actions": torch.from_numpy(acts.reshape(len(acts) // self.repeat, self.repeat * 4).copy()),
                "rewards": torch.from_numpy(self.rewards[g, c, self.repeat - 1::self.repeat].copy()), "group": g}


@torch.no_grad()
def imagine_features(wm: WorldModel, windows: Dataset, *, draws: int = 1, batch_size: int = 32,
                     mode: str = "swr", temperature: float = 1.0, seed: int = 0, amp: bool = True,
                     progress: bool = True, score=None) -> dict:
    """Imagine every window ``draws`` times under its real actions, from its real first frame.
    ``windows``: a :class:`worldmodel.data.RolloutWindows` or :class:`CandidateClips` (items
    with ``frames``, ``actions``, ``rewards`` and optionally ``group``).

    Returns ``{"features": (N * draws, T, d) float32, "rewards": (N * draws, T) float32,
    "window": (N * draws,) int64}`` (the draws of a window are adjacent; ``"group"`` too when
    the items name one, as :class:`CandidateClips`'). ``score``: an
    optional ``f(clips (B, T+1, 3, H, W) float [0, 1], real first frame first; actions
    (B, T, A)) -> {name: (B,)}`` (e.g. the student reward's reading); its outputs are
    added as ``"scores": {name: (N * draws,)}`` and ``"outcome"`` (N * draws, T) when the
    world model has an outcome head."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if isinstance(windows, RolloutWindows) and windows.rewards is None:
        raise ValueError("the rollout files hold no rewards; the outcome head regresses the env's "
                         "reward -- collect them with experiments/collect.py")
    wm.eval()
    device = next(wm.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    feats, rewards, index, scores, outcome, groups = [], [], [], {}, [], []
    loader = DataLoader(windows, batch_size=batch_size, shuffle=False, num_workers=0)
    n = 0
    for item in tqdm(loader, desc="imagine", disable=not progress, unit="batch"):
        frames = item["frames"][:, 0].float().div(255.0).repeat_interleave(draws, 0).to(device)
        actions = item["actions"].repeat_interleave(draws, 0).to(device)
        with autocast(device, amp):
            roll = wm.rollout(frames, actions, mode=mode, temperature=temperature, generator=gen)
        feats.append(roll.features.float().cpu())
        if roll.outcome is not None:
            outcome.append(roll.outcome.float().cpu())
        if score is not None:
            clips = torch.cat([frames[:, None], roll.frames.float().clamp(0, 1)], 1)
            for k, v in score(clips, actions).items():
                scores.setdefault(k, []).append(torch.as_tensor(v).float().cpu())
        rewards.append(item["rewards"].repeat_interleave(draws, 0).float())
        if "group" in item:
            groups.append(torch.as_tensor(item["group"]).repeat_interleave(draws, 0))
        index.append(torch.arange(n, n + len(item["actions"])).repeat_interleave(draws))
        n += len(item["actions"])
    out = {"features": torch.cat(feats), "rewards": torch.cat(rewards), "window": torch.cat(index)}
    if outcome:
        out["outcome"] = torch.cat(outcome)
    if groups:
        out["group"] = torch.cat(groups)
    if score is not None:
        out["scores"] = {k: torch.cat(v) for k, v in scores.items()}
    return out


def concat_features(parts: list[dict]) -> dict:
    """One :func:`imagine_features` result from several; ``window`` and ``group`` are made
    unique across parts (offset by the part's largest id + 1)."""
    out: dict = {}
    for key in ("features", "rewards"):
        out[key] = torch.cat([p[key] for p in parts])
    for key in ("window", "group"):
        ids, offset = [], 0
        for p in parts:
            v = p.get(key, p["window"])        # a part without starts: each window its own
            ids.append(v + offset)
            offset += int(v.max()) + 1 if len(v) else 0
        out[key] = torch.cat(ids)
    return out


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


def choice_metrics(pred: torch.Tensor, rewards: torch.Tensor, groups: torch.Tensor, success: float = 1.0,
                   tol: float = 0.02) -> dict:
    """How well predictions ``(M, T)`` choose among the candidates of one start (``groups (M,)``
    names each row's start; a row is a candidate, or one imagined draw of it). ``pairwise``:
    the fraction of within-start candidate pairs whose mean true reward differs by more than
    ``tol`` that the mean prediction orders the same way (0.5 = chance); ``pick_success``: how often the candidate with the highest mean
    prediction reaches the success reward, against ``random_success`` (a uniform pick among
    the same candidates) and ``best_success`` (a start has any candidate that succeeds);
    ``pick_value`` / ``random_value`` / ``best_value``: the same for the candidates' mean true
    reward (continuous, so it also moves where no candidate succeeds), and ``value_gain``: the
    fraction of the best pick's gain over a random pick that the top pick gets
    (``(pick - random) / (best - random)``: 0 = no better than random, 1 = always the best);
    ``decisive_gain``: the same over the starts where some candidate succeeds (``decisive``
    of them), where the choice decides the episode. ``spread_corr``: the correlation over starts
    of the predicted and the true room to choose (best minus mean of a start's candidates):
    does the prediction prefer strongly where the choice matters, or where it does not?
    ``pick_optimism``: the top pick's predicted gain over its start's mean minus its true gain,
    averaged over starts (> 0: the argmax picks plans the prediction over-rates, the winner's curse)."""
    pred, rewards = pred.float().mean(1).numpy(), rewards.float().numpy()
    value, ok = rewards.mean(1), (rewards >= success - 1e-6).any(1)
    groups = np.asarray(groups)
    right = total = 0
    pick, rand, best, vals, gaps = [], [], [], [], []
    for g in np.unique(groups):
        i = np.flatnonzero(groups == g)
        dv = value[i][:, None] - value[i][None, :]
        dp = pred[i][:, None] - pred[i][None, :]
        mask = np.triu(np.abs(dv) > tol, 1)
        right += int(((dv * dp) > 0)[mask].sum())
        total += int(mask.sum())
        top = i[np.argmax(pred[i])]
        pick.append(ok[top])
        rand.append(ok[i].mean())
        best.append(ok[i].any())
        vals.append((value[top], value[i].mean(), value[i].max()))
        # per start: predicted and true room to choose (best - mean), the top pick's predicted - true gain
        gaps.append((pred[i].max() - pred[i].mean(), value[i].max() - value[i].mean(),
                     (pred[top] - pred[i].mean()) - (value[top] - value[i].mean())))
    gaps = np.asarray(gaps).reshape(-1, 3)
    spread_corr = float(np.corrcoef(gaps[:, :2].T)[0, 1]) if len(gaps) > 1 and gaps[:, :2].std(0).min() > 0 \
        else float("nan")
    vals = np.asarray(vals).reshape(-1, 3)
    decisive = np.asarray(best, bool)

    def gain(v):
        v = v.mean(0) if len(v) else np.full(3, np.nan)
        return float((v[0] - v[1]) / max(v[2] - v[1], 1e-12)), v

    dgain, _ = gain(vals[decisive])
    vgain, vals = gain(vals)
    return {"pairwise": right / total if total else float("nan"), "pairs": total, "starts": len(pick),
            "pick_success": float(np.mean(pick)), "random_success": float(np.mean(rand)),
            "best_success": float(np.mean(best)), "pick_value": float(vals[0]), "random_value": float(vals[1]),
            "best_value": float(vals[2]), "value_gain": vgain, "decisive": int(decisive.sum()),
            "decisive_gain": dgain, "spread_corr": spread_corr,
            "pick_optimism": float(gaps[:, 2].mean()) if len(gaps) else float("nan")}


def _rank_loss(head, x, y, groups, tol: float, temperature: float, by_gap: bool = False,
               kind: str = "logistic") -> torch.Tensor:
    """Mean logistic pair loss within each group of row indices (see :func:`train_head`); with
    ``by_gap`` each pair is weighted by its true value gap. ``kind="advantage"``: instead the
    squared error of each row's prediction minus its group's mean prediction against the same
    for the truth (an advantage regression: the within-start gaps at their true size)."""
    if kind == "advantage":
        err = []
        for g in groups:
            p, v = head(x[g]).squeeze(-1).mean(-1), y[g].mean(-1)
            err.append(((p - p.mean()) - (v - v.mean())).pow(2).mean())
        return torch.stack(err).mean() if err else x.new_zeros(())
    total, n = 0.0, 0.0
    for g in groups:
        p, v = head(x[g]).squeeze(-1).mean(-1), y[g].mean(-1)
        dv, dp = v[:, None] - v[None, :], (p[:, None] - p[None, :]) / temperature
        mask = dv > tol
        if mask.any():
            w = dv[mask] if by_gap else torch.ones_like(dv[mask])
            total = total + (w * F.softplus(-dp[mask])).sum()
            n += float(w.sum())
    return total / n if n else x.new_zeros(())


def fit_outcome(wm: WorldModel, train: dict, val: dict | None = None, *, hidden: int = 128, steps: int = 2000,
                lr: float = 1e-3, batch_size: int = 256, weight_decay: float = 1e-4, seed: int = 0,
                success: float = 1.0, rank_weight: float = 0.0, rank_groups: int = 8, rank_tol: float = 0.02,
                rank_temperature: float = 0.05, rank_focus: bool = False,
                progress: bool = True) -> tuple[WorldModel, dict]:
    """A copy of ``wm`` with an outcome head (``hidden`` units) fitted on ``train`` (from
    :func:`imagine_features` of the same ``wm``) by :func:`train_head`; every other weight is
    unchanged. Returns the new world model and its metrics (``train`` / ``val``, see
    :func:`outcome_metrics`)."""
    out = wm.with_outcome_head(hidden)
    train_head(out.dynamics.outcome, train, steps=steps, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
               seed=seed, rank_weight=rank_weight, rank_groups=rank_groups, rank_tol=rank_tol,
               rank_temperature=rank_temperature, rank_focus=rank_focus, progress=progress)
    with torch.no_grad():
        metrics = {"train": outcome_metrics(out.dynamics.predict_outcome(train["features"]), train["rewards"], success)}
        if val is not None:
            metrics["val"] = outcome_metrics(out.dynamics.predict_outcome(val["features"]), val["rewards"], success)
    return out.eval(), metrics


def train_head(head: torch.nn.Module, train: dict, *, steps: int = 2000, lr: float = 1e-3, batch_size: int = 256,
               weight_decay: float = 1e-4, seed: int = 0, rank_weight: float = 0.0, rank_groups: int = 8,
               rank_tol: float = 0.02, rank_temperature: float = 0.05, rank_focus: bool = False,
               rank_loss: str = "logistic", progress: bool = True) -> torch.nn.Module:
    """Fit ``head`` (features ``(..., D)`` -> ``(..., 1)``) in place by MSE of ``train["features"]``
    ``(N, T, D)`` on ``train["rewards"]`` ``(N, T)``; its Linear layers are re-initialized from ``seed``.

    ``rank_weight`` > 0 adds a within-start ranking loss: each step also draws ``rank_groups``
    starts with several rows (``train["group"]``, e.g. counterfactual candidates) and applies a
    logistic loss to every pair of their rows whose mean true reward differs by more than
    ``rank_tol``, on the difference of mean predictions / ``rank_temperature``. ``rank_focus``
    aims it at the starts where the choice matters: starts are drawn in proportion to their best
    row's true value above their rows' mean, and each pair is weighted by its true value gap.
    (Uniformly drawn, the many starts where every plan does about the same dominate the loss;
    BENCHMARKS.md 'Closed loop: what a learned chooser lacks: ...' measures what it changes.)
    ``rank_loss="advantage"`` replaces the logistic pair loss by an advantage regression (each
    row's prediction minus its start's mean, against the same for the truth): the logistic loss
    pushes every pair apart by several ``rank_temperature`` whatever its true gap, so the
    prediction prefers as strongly where the choice hardly matters (``choice_metrics``'
    ``spread_corr``)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rank_loss not in ("logistic", "advantage"):
        raise ValueError(f"rank_loss must be 'logistic' or 'advantage', got {rank_loss!r}")
    members = []
    if rank_weight > 0:
        groups = train.get("group")
        if groups is None:
            raise ValueError("rank_weight > 0 needs rows grouped by start (train['group']): counterfactual data")
        order = torch.argsort(groups, stable=True)
        _, counts = torch.unique_consecutive(groups[order], return_counts=True)
        value = train["rewards"].mean(-1)     # starts whose rows differ (not only draws of one clip)
        members = [m for m in torch.split(order, counts.tolist()) if len(m) > 1 and bool(value[m].std() > 0)]
        if not members:
            raise ValueError("rank_weight > 0 but no start has rows of different outcomes")
        odds = torch.stack([value[m].max() - value[m].mean() for m in members]) if rank_focus else None
    torch.manual_seed(seed)
    for m in head.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0.0, 0.02)
            torch.nn.init.zeros_(m.bias)
    x, y = train["features"], train["rewards"]
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(steps, max(1, steps // 20)))
    gen = torch.Generator().manual_seed(seed)
    head.train()
    bar = tqdm(range(steps), desc="outcome head", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        loss = F.mse_loss(head(x[idx]).squeeze(-1), y[idx])
        if members:
            pick = (torch.randint(len(members), (rank_groups,), generator=gen) if odds is None
                    else torch.multinomial(odds, rank_groups, replacement=True, generator=gen))
            loss = loss + rank_weight * _rank_loss(head, x, y, [members[int(i)] for i in pick], rank_tol,
                                                   rank_temperature, rank_focus, rank_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(mse=f"{float(loss.detach()):.4f}")
    return head.eval()


__all__ = ["CandidateClips", "imagine_features", "concat_features", "fit_outcome", "train_head", "outcome_metrics", "choice_metrics"]
