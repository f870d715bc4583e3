"""The world model's public verbs: ``encode``, ``rollout``, ``decode``, ``log_prob``.

A rollout also returns each imagined step's pooled hidden features and the outputs of
the dynamics' extra per-step heads, if it has any (``DynamicsConfig.heads``; ``Rollout.heads``).
A world model with proprio tokens (``DynamicsConfig.proprio_bins > 0``) reads the start
frame's proprio (eef xyz, gripper opening) and imagines it with every frame
(``Rollout.proprio``); SWR boundaries carry the imagined proprio over unchanged.

Everything else (planner, aligner, evaluation) talks to :class:`WorldModel` only.
Frames are float in [0, 1], ``(B, 3, H, W)``; actions are grouped per model step,
``(B, T, action_repeat * 4)`` (see :func:`group_actions`).

Rollout modes (same code path):

- ``"swr"`` -- Sliding Window Re-encoding: ceil(T / W) segments; at each boundary the
  last predicted frame is decoded to pixels, re-encoded by the context branch as
  fresh context, and the prompt and KV cache restart (active context O(W));
- ``"full"`` -- plain autoregression over the growing context (one cache for all T);
- ``"naive"`` -- a sliding window that only drops the oldest cached tokens, keeping
  as many as SWR's largest segment holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from worldmodel.dynamics import PROPRIO_DIM, DynamicsConfig, DynamicsModel, sample_tokens
from worldmodel.training import load_checkpoint, save_checkpoint

KIND = "worldmodel"

MODES = ("swr", "full", "naive")


def group_actions(actions: torch.Tensor, repeat: int) -> torch.Tensor:
    """Control actions (B, T * repeat, 4) -> model-step actions (B, T, repeat * 4)."""
    b, n, a = actions.shape
    if n % repeat:
        raise ValueError(f"{n} control steps do not split into model steps of {repeat}")
    return actions.reshape(b, n // repeat, repeat * a)


@dataclass
class Segment:
    ctx: torch.Tensor      # (B, Nc) context tokens the segment was generated under
    prev0: torch.Tensor    # (B, Nd) dynamics tokens of the segment's start frame
    start: int             # first model step of the segment (0-based)
    stop: int              # one past the last
    prop0: torch.Tensor | None = None   # (B, P) proprio tokens of the start frame (proprio models)


@dataclass
class Rollout:
    frames: torch.Tensor           # (B, T, 3, H, W) predicted frames 1..T
    tokens: torch.Tensor           # (B, T, Nd) sampled dynamics tokens
    segments: list[Segment] = field(default_factory=list)
    peak_cache_len: int = 0        # largest number of cached positions (per layer)
    features: torch.Tensor | None = None   # (B, T, d) pooled hidden state of each imagined step
    heads: dict = field(default_factory=dict)  # name -> (B, T, width): the dynamics' extra heads
    proprio_tokens: torch.Tensor | None = None  # (B, T, P) sampled proprio tokens (proprio models)
    proprio: torch.Tensor | None = None         # (B, T, 4) imagined proprio of frames 1..T (bin centres, m)


class WorldModel(nn.Module):
    """Tokenizer + dynamics transformer, with SWR rollouts."""

    def __init__(self, tokenizer: nn.Module, dynamics: DynamicsModel, action_repeat: int = 2, window: int = 6):
        super().__init__()
        self.tokenizer, self.dynamics = tokenizer, dynamics
        self.action_repeat, self.window = int(action_repeat), int(window)
        if dynamics.cfg.action_dim != 4 * self.action_repeat:
            raise ValueError(f"dynamics expects {dynamics.cfg.action_dim}-D step actions; "
                             f"action_repeat {action_repeat} gives {4 * action_repeat}")

    @classmethod
    def build(cls, tokenizer: nn.Module, dyn_cfg: dict, action_repeat: int = 2, window: int = 6) -> "WorldModel":
        tc = tokenizer.config
        cfg = DynamicsConfig(**{**dyn_cfg, "vocab": tc.dyn_codebook_size, "ctx_vocab": tc.ctx_codebook_size,
                                "n_ctx": tc.n_ctx_tokens, "n_dyn": tc.n_dyn_tokens,
                                "action_dim": 4 * action_repeat})
        return cls(tokenizer, DynamicsModel(cfg), action_repeat, window)

    def describe(self) -> dict:
        from dataclasses import asdict

        return {"tokenizer": asdict(self.tokenizer.config), "dynamics": self.dynamics.cfg.to_dict(),
                "action_repeat": self.action_repeat, "window": self.window}

    def save(self, path, *, metrics: dict | None = None, upstream: dict | None = None):
        """One self-describing file: both configs, both weights, upstream hashes."""
        return save_checkpoint(path, kind=KIND, config=self.describe(), model=self, step=0,
                               metrics=metrics, extra={"upstream": dict(upstream or {})})

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu") -> "WorldModel":
        from worldmodel.tokenizer import DualFSQTokenizer, TokenizerConfig

        ckpt = load_checkpoint(path, kind=KIND, map_location=map_location)
        cfg = ckpt["config"]
        model = cls(DualFSQTokenizer(TokenizerConfig.from_dict(cfg["tokenizer"])),
                    DynamicsModel(DynamicsConfig(**cfg["dynamics"])), cfg["action_repeat"], cfg["window"])
        model.load_state_dict(ckpt["model"])
        return model.to(map_location).eval()

    # ------------------------------------------------------------------ verbs
    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, 3, H, W) -> (context tokens (B, Nc), own dynamics tokens (B, Nd))."""
        ctx = self.tokenizer.encode_context(frames)
        return ctx, self.tokenizer.encode_dynamics(frames, ctx, frames)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, ctx: torch.Tensor, ctx_frames: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T, Nd) under context ctx (B, Nc), encoded from ctx_frames (B or 1, 3, H, W)
        (needed by a ``pixel_context`` tokenizer) -> frames (B, T, 3, H, W)."""
        return self.tokenizer.decode_sequence(tokens, ctx, ctx_frames)

    @torch.no_grad()
    def rollout(self, frames: torch.Tensor, actions: torch.Tensor, *, mode: str = "swr",
                window: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None, proprio: torch.Tensor | None = None) -> Rollout:
        """Imagine T frames from start frames (B, 3, H, W) under actions (B, T, A).

        A single start frame (1, 3, H, W) is shared by all B action sequences (planning:
        many candidates from the latest real frame): it is encoded and its context block
        prefilled once. ``proprio`` (B or 1, 4): the start frame's proprio, needed exactly
        when the model has proprio tokens (:attr:`reads_proprio`)."""
        if mode not in MODES:
            raise ValueError(f"unknown rollout mode {mode!r}; known: {MODES}")
        if actions.dim() != 3 or actions.shape[0] != frames.shape[0] and frames.shape[0] != 1 \
                or actions.shape[-1] != self.dynamics.cfg.action_dim:
            raise ValueError(f"actions must be (B, T, {self.dynamics.cfg.action_dim}) ({self.action_repeat} "
                             f"control steps x 4 features per model step; see group_actions) with the "
                             f"frames' batch size {frames.shape[0]}, got {tuple(actions.shape)}")
        w = int(window or self.window)
        b, t = actions.shape[:2]
        dyn = self.dynamics
        pprev = self._start_proprio(proprio, frames.shape[0], b)
        blk = 1 + dyn.cfg.n_dyn
        max_len = dyn.cfg.n_ctx + w * blk if mode == "naive" else None
        seg_len = w if mode == "swr" else t
        out_frames, out_tokens, out_feats, out_props, segments, peak = [], [], [], [], [], 0
        current = frames
        ctx, prev = self.encode(current)
        for s0 in range(0, t, seg_len):
            s1 = min(t, s0 + seg_len)
            if s0 > 0:  # SWR boundary: re-encode the last predicted frame as fresh context
                ctx, prev = self.encode(current)
            if ctx.shape[0] == 1 and b > 1:  # shared start: prefill once, then broadcast
                cache = dyn.start(ctx)
                cache["kv"] = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in cache["kv"]]
                ctx, prev = ctx.expand(b, -1), prev.expand(b, -1)
            else:
                cache = dyn.start(ctx)
            segments.append(Segment(ctx, prev, s0, s1, pprev))
            seg_tokens = []
            for i in range(s0, s1):
                logits = dyn.step(cache, prev, actions[:, i].to(frames.dtype), max_len=max_len, prev_prop=pprev)
                prev = sample_tokens(logits, temperature, top_k, generator)
                if pprev is not None:
                    pprev = sample_tokens(cache["proprio_logits"], temperature, top_k, generator)
                    out_props.append(pprev)
                seg_tokens.append(prev)
                out_feats.append(cache["h"])
                peak = max(peak, cache["kv"][0][0].shape[2])
            seg_tokens = torch.stack(seg_tokens, 1)
            seg_frames = self.decode(seg_tokens, ctx, current)
            out_tokens.append(seg_tokens)
            out_frames.append(seg_frames)
            current = seg_frames[:, -1]
        feats = torch.stack(out_feats, 1)
        heads = {k: v.float() for k, v in dyn.predict_heads(feats).items()}
        ptoks = torch.stack(out_props, 1) if out_props else None
        return Rollout(torch.cat(out_frames, 1), torch.cat(out_tokens, 1), segments, peak, feats, heads,
                       ptoks, None if ptoks is None else dyn.proprio_values(ptoks))

    @property
    def reads_proprio(self) -> bool:
        """Whether rollouts need the start frame's proprio (the model has proprio tokens)."""
        return bool(self.dynamics.cfg.proprio_bins)

    def _start_proprio(self, proprio: torch.Tensor | None, n_frames: int, b: int) -> torch.Tensor | None:
        """The start frames' proprio (n_frames, 4) -> tokens (B, P), or None for a model without."""
        if not self.reads_proprio:
            if proprio is not None:
                raise ValueError("proprio given to a world model without proprio tokens")
            return None
        if proprio is None:
            raise ValueError("this world model reads the robot's proprio with each frame: pass the start "
                             "frame's proprio=(B or 1, 4) [eef_x, eef_y, eef_z, gripper_opening] to rollout()")
        proprio = torch.as_tensor(proprio, dtype=torch.float32, device=self.dynamics.prop_low.device)
        if proprio.dim() != 2 or proprio.shape[0] != n_frames or proprio.shape[1] != PROPRIO_DIM:
            raise ValueError(f"proprio must be ({n_frames}, {PROPRIO_DIM}) like the start frames, "
                             f"got {tuple(proprio.shape)}")
        return self.dynamics.proprio_tokens(proprio).expand(b, -1)

    def log_prob(self, rollout: Rollout, actions: torch.Tensor) -> torch.Tensor:
        """Log-probability (B,) of a rollout's tokens (and proprio tokens) under the current
        dynamics (with grad)."""
        total = 0.0
        for seg in rollout.segments:
            props = () if seg.prop0 is None else (seg.prop0, rollout.proprio_tokens[:, seg.start:seg.stop])
            total = total + self.dynamics.log_prob(seg.ctx, seg.prev0, actions[:, seg.start:seg.stop],
                                                   rollout.tokens[:, seg.start:seg.stop], *props)
        return total
