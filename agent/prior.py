"""A learned action prior: a small diffusion policy over action chunks (diffusers schedulers).

It proposes plans for the world-model MPC (whose world model and reward then check
them) and, alone, is a baseline: does planning in imagination add anything to what
imitation of the collected rollouts already does?

- **Conditioning** (observations only): the 64x64 frame through a small CNN ending in
  a spatial softmax (keypoint x, y per channel, good at "where is the cube"), the
  proprio vector ``(4,)`` (eef xyz, gripper opening; normalized with data statistics
  kept in the model), and the instruction id -- unless ``instruction_input=False``: the
  **play prior**, trained on the pooled rollouts of every instruction of a task, proposes
  plausible manipulations of either cube and leaves the instruction to the planner's reward.
- **Output**: ``steps`` control actions ``(steps, 4)`` in [-1, 1]. Trained with
  diffusers' :class:`~diffusers.DDPMScheduler` (epsilon prediction, cosine
  schedule); sampled with :class:`~diffusers.DDIMScheduler` in ``sample_steps``
  denoising steps.
- **Data**: every step of the rollout files (optionally only successful episodes);
  the target chunk is ``actions[t : t + steps]``, padded past the episode end with
  its last action. Frames get a random +-``shift`` pixel translation in training.
  ``balance="instruction"`` draws rows so that every instruction present is equally
  likely (a 3-task set otherwise shows the green cube in ~13% of rows).
  ``colour_swap`` = p recolours a "lift the red/green cube" row with probability p: the
  red cube's pixels (simulator segmentation) take the green cube's colour and vice versa,
  and the instruction swaps with them -- same physics, same actions, the other colour.

Verbs: :func:`train_prior` (resumable, the shared loop of :mod:`worldmodel.training`),
:meth:`ActionPrior.sample`, :meth:`ActionPrior.from_checkpoint`, and the agents
:class:`PriorAgent` (the prior as a policy, or a random pick among its samples).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from agent.base import Lazy
from agent.choose import PlanningAgent, Proposer
from envs.robosuite_env import LABELS
from envs.rollouts import RolloutFileError, demo_keys, open_rollouts
from envs.vocab import COLOURS, INSTRUCTIONS, instruction_id, instruction_text

KIND = "action_prior"


@dataclass
class PriorConfig:
    steps: int = 16                          # control actions per chunk
    image_size: int = 64
    channels: tuple = (32, 64, 64)           # CNN widths (each conv halves the resolution)
    keypoints: int = 32                      # spatial-softmax channels -> 2 * keypoints features
    cond_dim: int = 128
    hidden: int = 512
    blocks: int = 3                          # residual FiLM blocks of the denoiser
    n_instructions: int = len(INSTRUCTIONS)
    diffusion_steps: int = 100               # DDPM training timesteps
    sample_steps: int = 10                   # DDIM denoising steps when sampling
    instruction_film: bool = False           # the instruction scales/shifts the CNN's last
                                             # features, so keypoints can follow the named cube
    instruction_input: bool = True           # False: a play prior, blind to the instruction

    def __post_init__(self):
        if self.instruction_film and not self.instruction_input:
            raise ValueError("instruction_film needs instruction_input=True (a play prior reads no instruction)")

    @classmethod
    def from_dict(cls, d: dict) -> "PriorConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PriorConfig keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        return cls(**d)


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], -1)


class SpatialSoftmax(nn.Module):
    """``(B, C, H, W)`` feature maps -> ``(B, 2C)`` expected (x, y) in [-1, 1] per channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = x.float().flatten(2).softmax(-1).view(b, c, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device)
        xs = torch.linspace(-1, 1, w, device=x.device)
        return torch.cat([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], -1)


class _FiLMBlock(nn.Module):
    def __init__(self, hidden: int, cond: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.film = nn.Linear(cond, 2 * hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x, c):
        scale, shift = self.film(c).chunk(2, -1)
        h = self.norm(x) * (1 + scale) + shift
        return x + self.fc2(F.silu(self.fc1(F.silu(h))))


class ActionPrior(nn.Module):
    """``ActionPrior(PriorConfig)``; ``forward(batch) -> loss`` (training), ``sample(...)``."""

    def __init__(self, config: PriorConfig | None = None):
        super().__init__()
        self.config = cfg = config or PriorConfig()
        layers, c_in = [], 3
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 4, 2, 1), nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        layers += [nn.Conv2d(c_in, cfg.keypoints, 1)]
        self.cnn = nn.Sequential(*layers)
        self.keypoints = SpatialSoftmax()
        n_instr = 16 if cfg.instruction_input else 0
        if cfg.instruction_input:
            self.instruction = nn.Embedding(cfg.n_instructions, n_instr)
        if cfg.instruction_film:  # zero init: starts as the unconditioned encoder
            self.feature_film = nn.Embedding(cfg.n_instructions, 2 * c_in)
            nn.init.zeros_(self.feature_film.weight)
        self.cond = nn.Sequential(nn.Linear(2 * cfg.keypoints + 4 + n_instr, cfg.cond_dim), nn.SiLU(),
                                  nn.Linear(cfg.cond_dim, cfg.cond_dim))
        self.time = nn.Sequential(nn.Linear(cfg.cond_dim, cfg.cond_dim), nn.SiLU(),
                                  nn.Linear(cfg.cond_dim, cfg.cond_dim))
        act_dim = cfg.steps * 4
        self.inp = nn.Linear(act_dim, cfg.hidden)
        self.blocks = nn.ModuleList(_FiLMBlock(cfg.hidden, cfg.cond_dim) for _ in range(cfg.blocks))
        self.out = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, act_dim))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)
        self.register_buffer("proprio_mean", torch.zeros(4))
        self.register_buffer("proprio_std", torch.ones(4))

    # ------------------------------------------------------------------ pieces
    def set_proprio_stats(self, proprio: np.ndarray) -> None:
        p = torch.as_tensor(np.asarray(proprio, np.float32))
        self.proprio_mean.copy_(p.mean(0))
        self.proprio_std.copy_(p.std(0).clamp_min(1e-3))

    def scheduler(self, sampling: bool = False):
        from diffusers import DDIMScheduler, DDPMScheduler

        kw = dict(num_train_timesteps=self.config.diffusion_steps, beta_schedule="squaredcos_cap_v2",
                  clip_sample=True, prediction_type="epsilon")
        return DDIMScheduler(**kw) if sampling else DDPMScheduler(**kw)

    def encode(self, image: torch.Tensor, proprio: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        """image ``(B, 3, H, W)`` float [0, 1], proprio ``(B, 4)``, instruction ``(B,)`` -> ``(B, cond_dim)``
        (a play prior ignores ``instruction``)."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        if self.config.instruction_film:
            h = self.cnn[:-1](image * 2 - 1)
            scale, shift = self.feature_film(instruction.long()).chunk(2, -1)
            kp = self.keypoints(self.cnn[-1](h * (1 + scale[..., None, None]) + shift[..., None, None]))
        else:
            kp = self.keypoints(self.cnn(image * 2 - 1))
        prop = (proprio.float() - self.proprio_mean) / self.proprio_std
        parts = [kp, prop] + ([self.instruction(instruction.long())] if self.config.instruction_input else [])
        return self.cond(torch.cat(parts, -1))

    def denoise(self, noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted noise ``(B, steps, 4)`` of noisy chunks ``(B, steps, 4)`` at timesteps ``t (B,)``."""
        c = cond + self.time(_timestep_embedding(t, self.config.cond_dim))
        h = self.inp(noisy.flatten(1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).view_as(noisy)

    # ------------------------------------------------------------------ verbs
    def forward(self, batch: dict) -> torch.Tensor:
        """The DDPM loss (MSE on the noise) of a batch ``{"image" (B, 3, H, W) float,
        "proprio" (B, 4), "instruction" (B,), "actions" (B, steps, 4)}``."""
        actions = batch["actions"]
        if actions.shape[1:] != (self.config.steps, 4):
            raise ValueError(f"actions must be (B, {self.config.steps}, 4), got {tuple(actions.shape)}")
        cond = self.encode(batch["image"], batch["proprio"], batch["instruction"])
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.config.diffusion_steps, (len(actions),), device=actions.device)
        noisy = self.scheduler().add_noise(actions, noise, t)
        return F.mse_loss(self.denoise(noisy, t, cond).float(), noise)

    @torch.no_grad()
    def sample(self, image, proprio, instruction, n: int = 1, generator: torch.Generator | None = None
               ) -> np.ndarray:
        """``n`` action chunks ``(n, steps, 4)`` in [-1, 1] for ONE observation: image
        ``(H, W, 3)`` uint8, proprio ``(4,)``, instruction id."""
        device = self.proprio_mean.device
        img = torch.as_tensor(np.ascontiguousarray(image), device=device)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"image must be (H, W, 3) uint8, got {tuple(img.shape)}")
        img = img.permute(2, 0, 1)[None].float().div(255.0)
        prop = torch.as_tensor(np.asarray(proprio, np.float32), device=device)[None]
        instr = torch.as_tensor([int(instruction)], device=device)
        cond = self.encode(img, prop, instr).expand(n, -1)
        sched = self.scheduler(sampling=True)
        sched.set_timesteps(self.config.sample_steps)
        x = torch.randn((n, self.config.steps, 4), generator=generator).to(device)
        for t in sched.timesteps:
            eps = self.denoise(x, t.expand(n).to(device), cond)
            x = sched.step(eps, t, x).prev_sample
        return x.clamp(-1, 1).cpu().numpy().astype(np.float32)

    def save(self, path: str | os.PathLike, **kw) -> Path:
        from worldmodel.training import save_checkpoint

        return save_checkpoint(path, kind=KIND, config={"model": asdict(self.config)}, model=self,
                               step=kw.pop("step", 0), **kw)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location="cpu") -> "ActionPrior":
        from worldmodel.training import load_model

        return load_model(path, kind=KIND, config_cls=PriorConfig, build=cls, map_location=map_location)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------- data
class PriorChunks:
    """Every step of the rollout files as (frame, proprio, instruction, next ``steps``
    actions). Arrays: ``image (N, H, W, 3) uint8``, ``proprio (N, 4)``,
    ``instruction (N,)``, ``actions (N, steps, 4)``."""

    def __init__(self, paths: str | os.PathLike | Sequence, steps: int = 16, only_success: bool = True,
                 segmentation: bool = False):
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        imgs, props, instrs, chunks, segs, self.episodes = [], [], [], [], [], 0
        for path in paths:
            with open_rollouts(path) as f:
                for key in demo_keys(f):
                    g = f["data"][key]
                    if only_success and not bool(g.attrs.get("success", False)):
                        continue
                    if "proprio" not in g["obs"]:
                        raise RolloutFileError(f"{path}:{g.name} has no obs/proprio (needed by the action prior)")
                    acts = g["actions"][()].astype(np.float32)
                    if acts.shape[1] != 4:
                        raise RolloutFileError(f"{path}: actions have {acts.shape[1]} dims, the prior needs 4")
                    n = len(acts)
                    padded = np.concatenate([acts, np.repeat(acts[-1:], steps - 1, 0)])
                    idx = np.arange(n)[:, None] + np.arange(steps)[None]
                    chunks.append(padded[idx])
                    imgs.append(g["obs"]["image"][()])
                    props.append(g["obs"]["proprio"][()].astype(np.float32))
                    instrs.append(g["obs"]["instruction"][()].astype(np.int64))
                    if segmentation:
                        if "segmentation" not in g["obs"]:
                            raise RolloutFileError(f"{path}:{g.name} has no obs/segmentation (needed by colour_swap)")
                        segs.append(g["obs"]["segmentation"][()])
                    self.episodes += 1
        if not chunks:
            raise RolloutFileError(f"no {'successful ' if only_success else ''}episodes in {paths} "
                                   "to train the action prior on")
        self.image, self.proprio = np.concatenate(imgs), np.concatenate(props)
        self.instruction, self.actions = np.concatenate(instrs), np.concatenate(chunks)
        self.segmentation = np.concatenate(segs) if segmentation else None
        self._gains = self._row_p = None     # lazily: colour-swap gains, balanced row probabilities

    def __len__(self) -> int:
        return len(self.actions)

    def sample_rows(self, n: int, rng: np.random.Generator, balance: str = "none") -> np.ndarray:
        """``n`` row indices: uniform over rows (``"none"``), or uniform over the
        instructions present and then over that instruction's rows (``"instruction"``)."""
        if balance == "none":
            return rng.integers(0, len(self), n)
        if balance != "instruction":
            raise ValueError(f"balance must be 'none' or 'instruction', got {balance!r}")
        if self._row_p is None:
            ids, inverse, counts = np.unique(self.instruction, return_inverse=True, return_counts=True)
            self._row_p = 1.0 / (len(ids) * counts[inverse])
        return rng.choice(len(self), n, p=self._row_p)

    def colour_gains(self) -> np.ndarray:
        """``(2, 3)`` per-channel gains: row 0 turns red-cube pixels green, row 1 green ones red
        (ratios of the two cubes' mean colours over every segmented frame)."""
        if self.segmentation is None:
            raise ValueError("colour swapping needs PriorChunks(..., segmentation=True)")
        if self._gains is None:
            step = max(1, len(self) // 2000)
            seg, img = self.segmentation[::step], self.image[::step].astype(np.float64)
            means = []
            for colour in COLOURS:
                mask = seg == LABELS[f"{colour}_cube"]
                if not mask.any():
                    raise ValueError(f"no {colour}-cube pixels in the data: cannot learn the colour swap")
                means.append(img[mask].mean(0) + 1.0)
            red, green = means
            self._gains = np.stack([green / red, red / green]).astype(np.float32)
        return self._gains

    def batch(self, idx: np.ndarray, shift: int = 0, rng: np.random.Generator | None = None,
              colour_swap: float = 0.0) -> dict:
        """Tensors for rows ``idx``; ``shift`` > 0 translates each frame by up to that many
        pixels; ``colour_swap`` > 0 swaps the cubes' colours and instruction of that fraction
        of the single-cube-lift rows (see the module doc)."""
        img = torch.from_numpy(self.image[idx]).permute(0, 3, 1, 2).float().div(255.0)
        instr = self.instruction[idx].copy()
        if colour_swap:
            rng = rng or np.random.default_rng()
            lift = np.array([instruction_id(f"lift the {c} cube") for c in COLOURS])
            swap = np.isin(instr, lift) & (rng.random(len(idx)) < colour_swap)
            if swap.any():
                gains = torch.from_numpy(self.colour_gains())
                seg = torch.from_numpy(self.segmentation[idx[swap]])
                sub = img[swap]
                for k, colour in enumerate(COLOURS):
                    mask = (seg == LABELS[f"{colour}_cube"])[:, None]
                    sub = torch.where(mask, (sub * gains[k][None, :, None, None]).clamp(0, 1), sub)
                img[swap] = sub
                instr[swap] = np.where(instr[swap] == lift[0], lift[1], lift[0])
        if shift:
            rng = rng or np.random.default_rng()
            h, w = img.shape[-2:]
            pad = F.pad(img, (shift,) * 4, mode="replicate")
            dx, dy = rng.integers(0, 2 * shift + 1, (2, len(idx)))
            img = torch.stack([pad[i, :, y:y + h, x:x + w] for i, (x, y) in enumerate(zip(dx, dy))])
        return {"image": img, "proprio": torch.from_numpy(self.proprio[idx]),
                "instruction": torch.from_numpy(instr), "actions": torch.from_numpy(self.actions[idx])}


def train_prior(train_paths, val_paths, out_dir: str | os.PathLike, *, config: PriorConfig | None = None,
                steps: int = 3000, batch_size: int = 64, lr: float = 3e-4, shift: int = 4,
                only_success: bool = True, balance: str = "none", colour_swap: float = 0.0, seed: int = 0,
                amp: bool = True, progress: bool = True, eval_every: int = 500) -> tuple[ActionPrior, dict]:
    """Train (or resume) the prior on rollout files; writes ``out_dir/{last.pt, prior.pt,
    metrics.jsonl}``. Returns the model and ``{"val_loss", "val_first_action_mae", ...}``."""
    from worldmodel.training import train

    config = config or PriorConfig()
    data = PriorChunks(train_paths, config.steps, only_success, segmentation=colour_swap > 0)
    data.sample_rows(1, np.random.default_rng(0), balance)   # a bad `balance` fails before training
    if colour_swap:
        data.colour_gains()                                  # ... and so do data without both cubes
    val = PriorChunks(val_paths, config.steps, only_success=False) if val_paths else None
    torch.manual_seed(seed)
    model = ActionPrior(config)
    model.set_proprio_stats(data.proprio)
    hyper = {"steps": steps, "batch_size": batch_size, "lr": lr, "shift": shift, "only_success": only_success,
             "balance": balance, "colour_swap": colour_swap, "seed": seed, "train_rows": len(data),
             "train_episodes": data.episodes,
             "train_rows_per_instruction": {instruction_text(i): int(c) for i, c in
                                            enumerate(np.bincount(data.instruction)) if c}}

    def make_batches(start: int):
        step = start
        while True:
            rng = np.random.default_rng((seed, step))
            yield data.batch(data.sample_rows(batch_size, rng, balance), shift, rng, colour_swap)
            step += 1

    def evaluate(m: ActionPrior) -> dict:
        if val is None:
            return {}
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(val), min(256, len(val)), replace=False)
        b = val.batch(idx)
        torch.manual_seed(seed)
        out = {"loss": float(m(b).detach())}
        gen = torch.Generator().manual_seed(seed)
        first = [m.sample(val.image[i], val.proprio[i], val.instruction[i], 1, gen)[0, 0] for i in idx[:64]]
        out["first_action_mae"] = float(np.abs(np.stack(first) - val.actions[idx[:64], 0]).mean())
        return out

    model = train(model, make_batches, lambda net, b: (net(b), {}), steps=steps, lr=lr, out_dir=out_dir,
                  kind=KIND, config={"model": asdict(config), **hyper}, eval_fn=evaluate,
                  eval_every=eval_every, ckpt_every=eval_every, amp=amp, progress=progress, warmup=100,
                  weight_decay=1e-4)
    metrics = {f"val_{k}": v for k, v in (evaluate(model) if val is not None else {}).items()}
    metrics.update(params=model.n_params(), **hyper)
    model.save(Path(out_dir) / "prior.pt", step=steps, metrics=metrics)
    return model, metrics


# ---------------------------------------------------------------------- agents
def load_prior(src) -> ActionPrior:
    """An :class:`ActionPrior` as given, or loaded from a checkpoint path."""
    return src if isinstance(src, ActionPrior) else ActionPrior.from_checkpoint(src)


class PriorProposer(Proposer):
    """The prior's samples as candidate plans: ``(n, steps, 4)`` chunks for the observation's
    image, proprio and instruction. ``prior``: an :class:`ActionPrior` (or any object with its
    ``sample``) or a checkpoint path (loaded lazily, so the proposer pickles cheaply)."""

    name = "prior"

    def __init__(self, prior):
        self._prior = Lazy(prior, load_prior)

    @property
    def prior(self) -> ActionPrior:
        return self._prior.get()

    def propose(self, obs: dict, n: int, gen: torch.Generator) -> np.ndarray:
        return self.prior.sample(obs["image"], obs["proprio"], int(obs["instruction"]), n, gen)


class PriorAgent(PlanningAgent):
    """The prior as a policy: every ``execute`` control steps draw ``samples`` chunks
    for the current observation and execute the first ``execute`` actions of one of
    them -- ``pick="first"`` (the prior alone) or ``"random"`` (a uniform pick among
    the samples: the MPC's proposal set without the world model's judgement).
    The :class:`agent.choose.PlanningAgent` with a :class:`PriorProposer` and no scorer.
    ``prior``: an :class:`ActionPrior` or a checkpoint path (loaded lazily)."""

    name = "prior"

    def __init__(self, prior, execute: int = 8, samples: int = 1, pick: str = "first", seed: int = 0,
                 threads: int | None = None, name: str | None = None):
        super().__init__(PriorProposer(prior), None, execute=execute, samples=samples, pick=pick, seed=seed,
                         threads=threads, name=name or {"first": "prior", "random": "prior_random"}.get(pick))

    @property
    def prior(self) -> ActionPrior:
        return self.proposer.prior


__all__ = ["PriorConfig", "ActionPrior", "PriorChunks", "train_prior", "load_prior", "PriorProposer", "PriorAgent",
           "KIND"]
