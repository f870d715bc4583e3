"""GRPO post-training of the world model against a (distilled) video reward.

For a batch of contexts (real start frame + real action sequence, failures
included) the current model imagines a group of ``G`` rollouts per context; each
clip (start frame prepended) is scored by a reward, ``R = sum_k w_k s_k`` over the
six normalized judge dimensions of :mod:`worldmodel.judge`; advantages are
normalized within each group; the dynamics transformer (tokenizer frozen) is
updated with a PPO-style clipped importance ratio on the sampled tokens'
log-probabilities plus a KL penalty to the frozen pre-trained model.

Everything the trainer needs from outside is a callable:

- ``reward_fn(frames (N, T+1, 3, H, W) float [0, 1], instruction (N,) long) -> (N, 6)``
  normalized dims (or a dict with ``"dims"``, e.g. ``StudentReward.score``); a reward_fn
  with an ``actions`` parameter also gets the control actions ``(N, T * repeat, 4)``;
- ``teacher_fn(clips) -> (N, 6)`` normalized teacher dims (optional, slow);
- ``refresh_fn(clips, teacher_dims) -> dict`` online distillation of the student
  (optional; called every ``refresh_every`` updates with fresh rollouts).

Beware optimism: on contexts whose real actions fail, a reward that pays for shown
success (IF, MS) teaches the model to imagine success anyway. The default weights
(``"faithful"``) therefore favour Action-Outcome Consistency, Temporal
Consistency, Contact Realism and Physics Adherence; ``"all_six"`` (the paper's
total) is the ablation.
"""
from __future__ import annotations

import copy
import inspect
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from worldmodel.judge import MAX_SCORES, SHORT
from worldmodel.training import autocast, load_checkpoint, save_checkpoint
from worldmodel.world_model import Rollout, Segment, WorldModel

KIND = "align"

#: Reward weights over the normalized dims (IF, MS, AOC, TC, CR, PA).
WEIGHT_PRESETS: dict[str, tuple[float, ...]] = {
    # faithfulness first: AOC is the dimension that punishes imagined success the actions do not produce
    "faithful": (0.05, 0.05, 0.35, 0.20, 0.15, 0.20),
    # the paper's total out of 10, scaled to [0, 1]: raw-score weights = MAX_SCORES
    "all_six": tuple(m / sum(MAX_SCORES) for m in MAX_SCORES),
}
REWARDS = ("student", "neg_mse", "ssim")   # student dims, or one low-level metric vs the real frames


@dataclass
class GRPOConfig:
    group_size: int = 8            # G rollouts per context
    clip: float = 0.2              # PPO ratio clip
    kl_weight: float = 0.1         # beta: per-token KL(pi || pi_ref) penalty
    kl_estimator: str = "exact"    # "exact" (full token distribution) or "k3" (sampled tokens)
    lr: float = 1e-5
    temperature: float = 1.0       # sampling temperature; ratios use the tempered distributions
    epochs: int = 2                # optimisation passes over each batch of rollouts
    minibatches: int = 1           # per pass (split along rollouts)
    grad_clip: float = 1.0
    adv_eps: float = 1e-4          # advantages = (R - mean) / (std + eps)
    reward: str = "student"        # one of REWARDS
    weights: str | tuple = "faithful"   # a WEIGHT_PRESETS name or six floats
    mode: str = "swr"              # rollout mode (see WorldModel.rollout)
    refresh_every: int = 10        # K: teacher labels fresh rollouts, student refreshed (0: never)
    refresh_clips: int = 16        # fresh rollouts per refresh
    hack_window: int = 3           # probe points over which reward hacking is judged
    hack_z: float = 2.0            # ... and how many standard errors (across probe clips) a slope needs
    amp: bool = True               # bf16 autocast
    seed: int = 0

    def __post_init__(self):
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.kl_estimator not in ("exact", "k3"):
            raise ValueError(f"kl_estimator must be 'exact' or 'k3', got {self.kl_estimator!r}")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (advantages are relative within a group)")
        self.weight_vector()

    def weight_vector(self) -> torch.Tensor:
        w = WEIGHT_PRESETS.get(self.weights) if isinstance(self.weights, str) else self.weights
        if w is None or len(w) != len(SHORT):
            raise ValueError(f"weights must be one of {sorted(WEIGHT_PRESETS)} or {len(SHORT)} floats "
                             f"({', '.join(SHORT)}), got {self.weights!r}")
        return torch.tensor([float(x) for x in w])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = d["weights"] if isinstance(d["weights"], str) else list(d["weights"])
        return d


# ----------------------------------------------------------------------------- the maths
def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """rewards (N_ctx, G) -> advantages (N_ctx, G): zero mean per group, divided by the
    group's std + eps; a group of equal rewards gets zero advantage (no NaN)."""
    r = rewards.float()
    centred = r - r.mean(1, keepdim=True)
    std = r.std(1, keepdim=True, unbiased=False) if r.shape[1] > 1 else torch.zeros_like(r[:, :1])
    return centred / (std + eps)


def clipped_objective(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                      clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate, to be minimised.

    logp_new (N, ...) with grad, logp_old (N, ...) the sampling policy's log-probs,
    adv (N,) one advantage per rollout (broadcast over its tokens). Returns
    ``(loss, clip_fraction)``: the gradient vanishes where the ratio left
    [1 - clip, 1 + clip] in the direction the advantage favours.
    """
    adv = adv.view(adv.shape[0], *([1] * (logp_new.dim() - 1))).to(logp_new.dtype)
    ratio = torch.exp(logp_new - logp_old.detach())
    unclipped, clipped = ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv
    loss = -torch.minimum(unclipped, clipped).mean()
    active = ((adv > 0) & (ratio > 1 + clip)) | ((adv < 0) & (ratio < 1 - clip))
    return loss, active.float().mean().detach()


def kl_to_reference(logp_new: torch.Tensor, logp_ref: torch.Tensor, tokens: torch.Tensor | None = None,
                    estimator: str = "exact") -> torch.Tensor:
    """Mean per-token KL(pi_new || pi_ref).

    ``exact``: logp_new, logp_ref (N, T, Nd, V) log-softmaxed distributions.
    ``k3``: the same, or already gathered (N, T, Nd) log-probs of the sampled tokens
    (``tokens`` (N, T, Nd) selects them from full distributions): exp(r) - r - 1,
    r = logp_ref - logp_new. Zero for identical models either way."""
    if estimator == "exact":
        return (logp_new.exp() * (logp_new - logp_ref)).sum(-1).mean()
    if tokens is not None and logp_new.dim() == tokens.dim() + 1:
        logp_new = logp_new.gather(-1, tokens[..., None]).squeeze(-1)
        logp_ref = logp_ref.gather(-1, tokens[..., None]).squeeze(-1)
    r = logp_ref - logp_new
    return (torch.exp(r) - r - 1).mean()


def rollout_log_probs(dynamics: torch.nn.Module, rollout: Rollout, actions: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-distributions (N, T, Nd, V) of a rollout's tokens under ``dynamics``
    (teacher forced per SWR segment, exactly the conditioning the rollout was sampled
    under), tempered like the sampler; with grad if enabled."""
    out = []
    for seg in rollout.segments:
        logits = dynamics(seg.ctx, seg.prev0, actions[:, seg.start:seg.stop], rollout.tokens[:, seg.start:seg.stop])
        out.append(torch.log_softmax(logits.float() / temperature, -1))
    return torch.cat(out, 1)


def token_log_probs(logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(N, T, Nd, V) distributions, (N, T, Nd) tokens -> (N, T, Nd) log-probs."""
    return logp.gather(-1, tokens[..., None]).squeeze(-1)


def subset_rollout(rollout: Rollout, idx: torch.Tensor) -> Rollout:
    """The rollouts ``idx`` of a batched rollout (segments sliced alike)."""
    segs = [Segment(s.ctx[idx], s.prev0[idx], s.start, s.stop) for s in rollout.segments]
    return Rollout(rollout.frames[idx], rollout.tokens[idx], segs, rollout.peak_cache_len)


def single_metric_reward(pred: torch.Tensor, real: torch.Tensor, metric: str) -> torch.Tensor:
    """Low-level ablation reward: pred, real (N, T, 3, H, W) -> (N,) ``-MSE`` or mean SSIM."""
    if metric == "neg_mse":
        return -((pred.float() - real.float()) ** 2).mean((1, 2, 3, 4))
    from worldmodel.evaluate import ssim_frames

    n, t = pred.shape[:2]
    return ssim_frames(pred.flatten(0, 1).float().clamp(0, 1), real.flatten(0, 1).float()).view(n, t).mean(1)


def make_clips(frames: torch.Tensor, actions: torch.Tensor, instruction: torch.Tensor, meta: list[dict],
               stride: int) -> list[dict]:
    """Judge clips (see :mod:`worldmodel.judge`) from imagined frames (N, T+1, 3, H, W) (start
    first), grouped actions (N, T, stride * 4), instruction (N,) and per-clip ``meta``
    dicts holding ``start_state`` and ``env_id``."""
    u8 = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    acts = actions.reshape(actions.shape[0], -1, 4).float().cpu().numpy()
    return [{"frames": u8[i], "actions": acts[i], "stride": int(stride), "start_state": m["start_state"],
             "env_id": m["env_id"], "instruction": int(instruction[i])} for i, m in enumerate(meta)]


# ----------------------------------------------------------------------------- reward hacking
@dataclass
class HackingMonitor:
    """Reward hacking = the student's reward rises while the teacher's falls.

    Fed (step, student R, teacher R) per clip of the same contexts (a fixed probe set);
    over the last ``window`` points each clip's least-squares slope is taken, and the
    mean slope is compared with its standard error across clips. It flags when the
    student's slope is more than ``z`` standard errors above zero and the teacher's more
    than ``z`` below, so the probe's sampling noise alone does not fire it (fresh samples
    at every probe moved the mean R by ~0.01 between probes of 16 clips in the Lift
    runs). One clip (scalars) never flags: there is no noise estimate."""
    window: int = 3
    z: float = 2.0
    history: list = field(default_factory=list)

    @staticmethod
    def point(step, student, teacher) -> tuple[int, list, list]:
        """A history entry: (step, R per clip, R per clip); scalars become one clip."""
        per_clip = lambda r: np.atleast_1d(np.asarray(r, float)).tolist()  # noqa: E731
        return int(step), per_clip(student), per_clip(teacher)

    def update(self, step: int, student, teacher) -> dict:
        """``student``, ``teacher``: R per probe clip ``(N,)`` (the same clips every call)."""
        point = self.point(step, student, teacher)
        if len(point[1]) != len(point[2]):
            raise ValueError(f"{len(point[1])} student and {len(point[2])} teacher rewards: they must be "
                             f"per clip of the same clips")
        self.history.append(point)
        pts = self.history[-self.window:]
        if len(pts) < max(2, self.window) or len({len(p[1]) for p in pts}) > 1:
            return {"hacking": 0}
        x = np.array([p[0] for p in pts], float)
        x -= x.mean()

        def slope_z(k: int) -> tuple[float, float]:
            y = np.array([p[k] for p in pts], float)                       # (window, N)
            per_clip = (x[:, None] * (y - y.mean(0))).sum(0) / max(float((x ** 2).sum()), 1e-12)
            se = per_clip.std(ddof=1) / np.sqrt(len(per_clip)) if len(per_clip) > 1 else np.inf
            return float(per_clip.mean()), float(per_clip.mean() / se) if se > 0 else 0.0

        (s, zs), (t, zt) = slope_z(1), slope_z(2)
        hacking = zs > self.z and zt < -self.z
        if hacking:
            warnings.warn(f"REWARD HACKING suspected at update {step}: student reward rising "
                          f"({s:+.2e}/update, z {zs:+.1f}) while the teacher's falls ({t:+.2e}/update, "
                          f"z {zt:+.1f}) over updates {pts[0][0]}-{pts[-1][0]}", RuntimeWarning, stacklevel=2)
        return {"hacking": int(hacking), "student_slope": s, "teacher_slope": t,
                "student_slope_z": zs, "teacher_slope_z": zt}


# ----------------------------------------------------------------------------- the trainer
class GRPOTrainer:
    """Group-relative policy optimisation of ``wm.dynamics`` (the tokenizer stays frozen).

    A batch is a dict: ``frames`` (B, 3, H, W) float start frames, ``actions`` (B, T, A)
    grouped real control actions, ``instruction`` (B,) long; optionally ``real``
    (B, T, 3, H, W) the real future frames (single-metric rewards need them) and
    ``meta`` (B dicts with ``start_state``, ``env_id``: needed to build judge clips).
    The reference is a frozen copy of the dynamics as passed in (the pre-trained model).
    """

    def __init__(self, wm: WorldModel, reward_fn: Callable | None, cfg: GRPOConfig | None = None, *,
                 teacher_fn: Callable | None = None, refresh_fn: Callable | None = None):
        cfg = GRPOConfig() if cfg is None else cfg
        if reward_fn is None and cfg.reward == "student":
            raise ValueError("reward='student' needs a reward_fn(frames, instruction) -> (N, 6)")
        self.wm, self.cfg = wm, cfg
        self.reward_fn, self.teacher_fn, self.refresh_fn = reward_fn, teacher_fn, refresh_fn
        self._reward_takes_actions = reward_fn is not None and "actions" in inspect.signature(reward_fn).parameters
        for p in wm.tokenizer.parameters():
            p.requires_grad_(False)
        self.reference = copy.deepcopy(wm.dynamics).eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.params = [p for p in wm.dynamics.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self.weights = cfg.weight_vector()
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.monitor = HackingMonitor(cfg.hack_window, cfg.hack_z)
        self.updates = 0

    @property
    def device(self) -> torch.device:
        return next(self.wm.parameters()).device

    # -------------------------------------------------------------- sampling and scoring
    def _dims(self, frames: torch.Tensor, instruction: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        kw = {"actions": actions.reshape(actions.shape[0], -1, 4)} if self._reward_takes_actions else {}
        out = self.reward_fn(frames, instruction, **kw)
        dims = out["dims"] if isinstance(out, dict) else out
        return torch.as_tensor(dims, dtype=torch.float32).reshape(frames.shape[0], -1).cpu()

    @torch.no_grad()
    def sample(self, batch: dict, group_size: int | None = None, temperature: float | None = None,
               generator: torch.Generator | None = None) -> dict:
        """G rollouts per context; returns rollout, clip frames (N, T+1, 3, H, W), actions,
        instruction, meta, repeated group-wise (N = B * G, rollouts of one context adjacent)."""
        g = group_size or self.cfg.group_size
        dev = self.device
        frames = batch["frames"].to(dev).float().repeat_interleave(g, 0)
        actions = batch["actions"].to(dev).float().repeat_interleave(g, 0)
        instruction = batch["instruction"].to(dev).long().repeat_interleave(g, 0)
        proprio = batch["proprio"].to(dev).float().repeat_interleave(g, 0) \
            if self.wm.reads_proprio and batch.get("proprio") is not None else None
        self.wm.eval()
        with autocast(dev, self.cfg.amp):
            roll = self.wm.rollout(frames, actions, mode=self.cfg.mode, temperature=self.cfg.temperature
                                   if temperature is None else temperature, generator=generator or self.generator,
                                   proprio=proprio)
        clip = torch.cat([frames[:, None], roll.frames.float()], 1)
        meta = [m for m in batch.get("meta") or [] for _ in range(g)] or None
        real = batch["real"].to(dev).float().repeat_interleave(g, 0) if batch.get("real") is not None else None
        return {"rollout": roll, "clip": clip, "actions": actions, "instruction": instruction, "meta": meta,
                "real": real}

    def rewards(self, s: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(R (N,), dims (N, 6) or None) for sampled rollouts."""
        dims = self._dims(s["clip"], s["instruction"], s["actions"]) if self.reward_fn is not None else None
        if self.cfg.reward == "student":
            return dims @ self.weights, dims
        if s["real"] is None:
            raise ValueError(f"reward={self.cfg.reward!r} needs the real future frames: batch['real'] (B, T, 3, H, W)")
        return single_metric_reward(s["clip"][:, 1:], s["real"], self.cfg.reward).cpu(), dims

    # -------------------------------------------------------------- one update
    def step(self, batch: dict) -> dict:
        """Sample, score, and update; returns flat metrics."""
        cfg, t0 = self.cfg, time.perf_counter()
        s = self.sample(batch)
        t_sample = time.perf_counter()
        R, dims = self.rewards(s)
        t_score = time.perf_counter()
        b, g = batch["frames"].shape[0], cfg.group_size
        adv = group_advantages(R.view(b, g), cfg.adv_eps).view(-1).to(self.device)
        roll, actions = s["rollout"], s["actions"]
        with torch.no_grad(), autocast(self.device, cfg.amp):
            lp_old = token_log_probs(rollout_log_probs(self.wm.dynamics, roll, actions, cfg.temperature), roll.tokens)
            ref = rollout_log_probs(self.reference, roll, actions, cfg.temperature)
        stats = {k: 0.0 for k in ("loss", "pg_loss", "kl", "clip_frac", "ratio", "grad_norm")}
        n, count = roll.tokens.shape[0], 0
        self.wm.dynamics.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=self.generator, device=self.device)
            for idx in perm.chunk(cfg.minibatches):
                sub = subset_rollout(roll, idx)
                with autocast(self.device, cfg.amp):
                    logp = rollout_log_probs(self.wm.dynamics, sub, actions[idx], cfg.temperature)
                lp_new = token_log_probs(logp, sub.tokens)
                pg, clip_frac = clipped_objective(lp_new, lp_old[idx], adv[idx], cfg.clip)
                kl = kl_to_reference(logp, ref[idx], sub.tokens, cfg.kl_estimator)
                loss = pg + cfg.kl_weight * kl
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip) if cfg.grad_clip else torch.zeros(())
                self.opt.step()
                for k, v in (("loss", loss), ("pg_loss", pg), ("kl", kl), ("clip_frac", clip_frac),
                             ("ratio", torch.exp(lp_new - lp_old[idx]).mean()), ("grad_norm", gn)):
                    stats[k] += float(v.detach())
                count += 1
        self.wm.dynamics.eval()
        self.updates += 1
        rg = R.view(b, g)
        m = {f"train/{k}": v / count for k, v in stats.items()}
        m.update({"train/reward_mean": float(R.mean()), "train/reward_std": float(R.std(unbiased=False)),
                  "train/reward_group_std": float(rg.std(1, unbiased=False).mean()),
                  "train/flat_groups": float((rg.std(1, unbiased=False) < 1e-6).float().mean()),
                  "time/sample_s": t_sample - t0, "time/score_s": t_score - t_sample,
                  "time/update_s": time.perf_counter() - t_score, "time/step_s": time.perf_counter() - t0})
        if dims is not None:
            for k, name in enumerate(SHORT):
                m[f"reward/{name}_mean"] = float(dims[:, k].mean())
                m[f"reward/{name}_std"] = float(dims[:, k].std(unbiased=False))
        if cfg.refresh_every and self.updates % cfg.refresh_every == 0 and (self.teacher_fn or self.refresh_fn):
            m.update(self.refresh(s, dims))
        return m

    # -------------------------------------------------------------- online distillation
    def refresh(self, s: dict, dims: torch.Tensor | None) -> dict:
        """Teacher labels a sample of fresh rollouts; log the student-teacher gap (before the
        refresh), then ``refresh_fn(clips, teacher_dims)`` updates the student."""
        if s["meta"] is None:
            raise ValueError("refresh needs batch['meta'] (start_state, env_id per context) to build judge clips")
        n = s["clip"].shape[0]
        idx = torch.randperm(n, generator=self.generator, device=self.device)[: self.cfg.refresh_clips]
        idx = idx.sort().values.cpu()
        clips = make_clips(s["clip"][idx], s["actions"][idx], s["instruction"][idx],
                           [s["meta"][i] for i in idx.tolist()], self.wm.action_repeat)
        m, teacher = {}, None
        if self.teacher_fn is not None:
            teacher = torch.as_tensor(np.asarray(self.teacher_fn(clips)), dtype=torch.float32).reshape(len(clips), -1)
            if dims is not None:
                gap = (dims[idx] - teacher).abs()
                m.update({f"distill/gap_{name}": float(gap[:, k].mean()) for k, name in enumerate(SHORT)})
                m["distill/gap"] = float(gap.mean())
                st, tt = float((dims[idx] @ self.weights).mean()), float((teacher @ self.weights).mean())
                m.update({"distill/student_R": st, "distill/teacher_R": tt})
        if self.refresh_fn is not None:
            out = self.refresh_fn(clips, teacher) or {}
            m.update({f"distill/{k}": float(v) if np.isfinite(v) else None
                      for k, v in out.items() if isinstance(v, (int, float))})
        return m

    @torch.no_grad()
    def probe(self, batch: dict, seed: int = 0) -> dict:
        """Student and teacher reward on a fixed probe set (one sample per context, fixed
        seed), and the reward-hacking verdict over the recent probes."""
        s = self.sample(batch, group_size=1, generator=torch.Generator(self.device).manual_seed(seed))
        m = {}
        dims = self._dims(s["clip"], s["instruction"], s["actions"]) if self.reward_fn is not None else None
        if dims is not None:
            student_r = dims @ self.weights                               # (N,) per probe clip
            m["probe/student_R"] = float(student_r.mean())
        if self.teacher_fn is not None and s["meta"] is not None:
            clips = make_clips(s["clip"], s["actions"], s["instruction"], s["meta"], self.wm.action_repeat)
            t = torch.as_tensor(np.asarray(self.teacher_fn(clips)), dtype=torch.float32).reshape(len(clips), -1)
            teacher_r = t @ self.weights
            m["probe/teacher_R"] = float(teacher_r.mean())
            m["probe/teacher_total"] = float((t * torch.tensor(MAX_SCORES)).sum(1).mean())
            m.update({f"probe/teacher_{n}": float(t[:, k].mean()) for k, n in enumerate(SHORT)})
            if dims is not None:
                verdict = self.monitor.update(self.updates, student_r.float().cpu().numpy(),
                                              teacher_r.float().cpu().numpy())
                m.update({f"probe/{k}": v for k, v in verdict.items()})
        return m

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"updates": self.updates, "optimizer": self.opt.state_dict(),
                "generator": self.generator.get_state(), "monitor": list(self.monitor.history)}

    def save(self, path, config: dict | None = None, extra: dict | None = None):
        """Dynamics weights, optimizer, sampler RNG and monitor history (resumable)."""
        st = self.state_dict()
        return save_checkpoint(path, kind=KIND, config=config or {"grpo": self.cfg.to_dict()}, model=self.wm.dynamics,
                               optimizer=self.opt, step=self.updates,
                               extra={"generator": st["generator"], "monitor": st["monitor"], **(extra or {})})

    def load(self, path, config: dict | None = None) -> dict:
        """Restore a :meth:`save` d state (the reference stays the pre-trained model);
        returns the checkpoint (its ``extra`` may hold e.g. the student's state)."""
        ckpt = load_checkpoint(path, kind=KIND, config=config, map_location=self.device)
        self.wm.dynamics.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.generator.set_state(ckpt["extra"]["generator"].cpu())
        self.monitor.history = [HackingMonitor.point(*h) for h in ckpt["extra"].get("monitor", [])]
        self.updates = int(ckpt["step"])
        return ckpt


# ----------------------------------------------------------------------------- contexts
class ContextSet:
    """Alignment contexts from recorded rollouts (successes and failures alike): every
    window of ``horizon`` model steps (``horizon * repeat`` control steps) starting each
    ``every`` control steps. :meth:`batch` gives the trainer's batch dict (with ``seg``
    (B, T, H, W) segmentation labels of the real future frames when ``segmentation``)."""

    def __init__(self, paths, horizon: int, repeat: int, every: int, max_episodes: int | None = None,
                 segmentation: bool = False):
        from envs.rollouts import demo_keys, env_args, open_rollouts

        self.horizon, self.repeat, self.episodes = int(horizon), int(repeat), []
        span = self.horizon * self.repeat
        for path in paths:
            env_id = env_args(path).get("env_id")
            with open_rollouts(path) as f:
                for key in demo_keys(f)[:max_episodes]:
                    g = f["data"][key]
                    self.episodes.append({
                        "frames": np.concatenate([g["obs"]["image"][()], g["next_obs"]["image"][-1:]]),
                        "actions": g["actions"][()].astype(np.float32), "states": g["states"][()],
                        "instruction": int(g.attrs["instruction_id"]), "success": bool(g.attrs["success"]),
                        "env_id": env_id})
                    if "proprio" in g["obs"]:
                        self.episodes[-1]["proprio"] = g["obs"]["proprio"][()].astype(np.float32)
                    if segmentation:
                        self.episodes[-1]["seg"] = np.concatenate([g["obs"]["segmentation"][()],
                                                                   g["next_obs"]["segmentation"][-1:]])
        self.items = [(i, s) for i, ep in enumerate(self.episodes)
                      for s in range(0, len(ep["actions"]) - span + 1, every)]
        if not self.items:
            raise ValueError(f"no episode in {list(map(str, paths))} is {span} control steps long")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def success_rate(self) -> float:
        return float(np.mean([self.episodes[i]["success"] for i, _ in self.items]))

    def batch(self, indices) -> dict:
        """frames (B, 3, H, W), actions (B, T, repeat*4), instruction (B,), real (B, T, 3, H, W)
        float in [0, 1], meta (B dicts: start_state, env_id, success); proprio (B, 4) of the
        start frames when the files record it."""
        span, r = self.horizon * self.repeat, self.repeat
        eps = [(self.episodes[self.items[int(j)][0]], self.items[int(j)][1]) for j in indices]
        u8 = torch.from_numpy(np.stack([ep["frames"][s:s + span + 1:r] for ep, s in eps]))
        clip = u8.permute(0, 1, 4, 2, 3).float() / 255.0                     # (B, T+1, 3, H, W)
        acts = torch.from_numpy(np.stack([ep["actions"][s:s + span] for ep, s in eps]))
        out = {"frames": clip[:, 0], "real": clip[:, 1:], "actions": acts.reshape(len(eps), self.horizon, -1),
               "instruction": torch.tensor([ep["instruction"] for ep, _ in eps]),
               "meta": [{"start_state": ep["states"][s], "env_id": ep["env_id"], "success": ep["success"]}
                        for ep, s in eps]}
        if eps and all("proprio" in ep for ep, _ in eps):
            out["proprio"] = torch.from_numpy(np.stack([ep["proprio"][s] for ep, s in eps]))
        if eps and "seg" in eps[0][0]:
            out["seg"] = torch.from_numpy(np.stack([ep["seg"][s + r:s + span + 1:r] for ep, s in eps]))
        return out

    def sample(self, n: int, seed: int) -> dict:
        """A batch of ``n`` contexts drawn (without replacement) by ``seed``: a function of the seed only."""
        g = torch.Generator().manual_seed(seed)
        return self.batch(torch.randperm(len(self), generator=g)[:n].tolist())
