"""Dual-branch FSQ video tokenizer for 64x64 frames (iVideoGPT's context/dynamics split).

A *context* frame gets many tokens (``ctx_grid**2``, e.g. 8x8 = 64); every future frame
gets few *dynamics* tokens (``dyn_grid**2``, e.g. 4x4 = 16) that only need to say what
changed, because both the dynamics encoder and decoder see multi-scale features decoded
from the context *tokens* (never the context pixels, so imagination, where only tokens
exist, sees exactly what training saw). Quantization is finite scalar quantization
(``vector_quantize_pytorch.FSQ``): no codebook to collapse.

Layout (S = 64): frames enter space-to-depth at 32x32; the context decoder's features
at 32/16/8 and its reconstruction condition the dynamics encoder (concatenated at every
resolution) and are fused U-Net-style into the dynamics decoder, whose output is a
change on top of the context reconstruction (static background comes from the context
path). A learned background image sits under the context reconstruction. With
``pixel_context`` the change is added to the context frame's own pixels instead (the
features still come from the tokens): what does not move is then exact, not a ~27 dB
reconstruction, and every dynamics verb also takes the context frames. No
convolution runs at 64x64 and GroupNorm is used only at <= 32x32: both are what makes
a step on 16 pairs ~0.14 s on 2 CPU cores under bf16.

Public verbs (frames: float in [0, 1], ``(B, 3, 64, 64)``; tokens: int64)::

    ctx = tok.encode_context(frames)            # (B, ctx_grid**2)
    dyn = tok.encode_dynamics(future, ctx, frames)   # (B, dyn_grid**2); frames only used
    tok.decode(dyn, ctx, frames)                     # (B, 3, 64, 64)  with pixel_context
    tok.decode_context(ctx)                     # (B, 3, 64, 64)
    tok(ctx_frames, frames)                     # training: reconstructions + losses
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import FSQ

from worldmodel.training import load_model, save_checkpoint

KIND = "tokenizer"


@dataclass
class TokenizerConfig:
    image_size: int = 64
    channels: int = 32                    # width at 32x32; doubles at 16x16 and below
    ctx_grid: int = 8                     # context tokens: ctx_grid x ctx_grid
    dyn_grid: int = 4                     # dynamics tokens per future frame: dyn_grid x dyn_grid
    ctx_levels: tuple[int, ...] = (8, 5, 5, 5)   # FSQ levels; codebook = prod(levels)
    dyn_levels: tuple[int, ...] = (8, 5, 5, 5)
    latent_dim: int = 64                  # channels at the token grid (FSQ projects to len(levels))
    res_blocks: int = 1                   # residual blocks per resolution
    norm: bool = True                     # GroupNorm in the residual blocks
    l1_weight: float = 1.0                # loss = MSE + l1_weight * L1, on both branches
    dyn_weight: float = 1.0               # weight of the dynamics branch's loss
    region_weight: float = 0.0            # extra loss weight on object + gripper pixels (training
                                          # passes per-pixel weights 1 + region_weight * mask)
    pixel_context: bool = False           # dynamics frames are a change on top of the context
                                          # frame's own pixels instead of its token reconstruction:
                                          # what does not move stays exact; encoding and decoding
                                          # dynamics tokens then take the context frames too

    def __post_init__(self):
        self.ctx_levels, self.dyn_levels = tuple(self.ctx_levels), tuple(self.dyn_levels)
        for name, grid in (("ctx_grid", self.ctx_grid), ("dyn_grid", self.dyn_grid)):
            n = self.image_size // grid
            if grid < 1 or self.image_size % grid or n & (n - 1) or n < 2:
                raise ValueError(f"{name}={grid}: image_size/{name} must be a power of two >= 2")
        if self.dyn_grid > self.ctx_grid:
            raise ValueError("dyn_grid must not exceed ctx_grid")

    @property
    def ctx_codebook_size(self) -> int:
        return math.prod(self.ctx_levels)

    @property
    def dyn_codebook_size(self) -> int:
        return math.prod(self.dyn_levels)

    @property
    def n_ctx_tokens(self) -> int:
        return self.ctx_grid ** 2

    @property
    def n_dyn_tokens(self) -> int:
        return self.dyn_grid ** 2

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown tokenizer config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


# ----------------------------------------------------------------------------- blocks
def _levels(cfg: TokenizerConfig, grid: int) -> list[int]:
    """Working resolutions from S/2 (frames enter space-to-depth) down to ``grid``."""
    return [cfg.image_size // 2 >> i for i in range(int(math.log2(cfg.image_size // 2 // grid)) + 1)]


def _width(cfg: TokenizerConfig, res: int) -> int:
    """Channels at resolution ``res``: ``channels`` at S/2, twice that below."""
    return cfg.channels if res >= cfg.image_size // 2 else 2 * cfg.channels


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, ch), ch)


class ChannelNorm(nn.Module):
    """LayerNorm over channels at every position of ``(B, C, H, W)``: keeps each latent
    vector O(1) before FSQ's tanh bound (un-normalized latents saturate it and die)."""

    def __init__(self, ch: int):
        super().__init__()
        self.ln = nn.LayerNorm(ch)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """Pre-activation residual block; the zero-initialised last conv makes it start as
    the identity."""

    def __init__(self, ch: int, norm: bool = True):
        super().__init__()
        n = _norm if norm else (lambda c: nn.Identity())
        self.body = nn.Sequential(n(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  n(ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x):
        return x + self.body(x)


class Encoder(nn.Module):
    """``(B, in_ch, S, S)`` -> ``(B, latent_dim, grid, grid)``. Pixels enter space-to-depth
    (2x2 -> channels), so no convolution runs at full resolution (slow on CPU for the
    little it adds). Optionally fuses ``cond[res]`` feature maps at each resolution."""

    def __init__(self, cfg: TokenizerConfig, grid: int, in_ch: int = 3, cond: dict[int, int] | None = None):
        super().__init__()
        self.res, cond = _levels(cfg, grid), cond or {}
        self.stem = nn.Conv2d(4 * in_ch, _width(cfg, self.res[0]), 3, padding=1)
        self.fuse = nn.ModuleDict({str(r): nn.Conv2d(_width(cfg, r) + cond[r], _width(cfg, r), 1)
                                   for r in self.res if r in cond})
        self.blocks = nn.ModuleList(nn.Sequential(*[ResBlock(_width(cfg, r), cfg.norm) for _ in range(cfg.res_blocks)])
                                    for r in self.res)
        self.down = nn.ModuleList(nn.Conv2d(_width(cfg, r), _width(cfg, r // 2), 4, stride=2, padding=1)
                                  for r in self.res[:-1])
        self.out = nn.Sequential(nn.SiLU(), nn.Conv2d(_width(cfg, grid), cfg.latent_dim, 1),
                                 ChannelNorm(cfg.latent_dim))

    def forward(self, x, cond: dict[int, torch.Tensor] | None = None):
        h = self.stem(F.pixel_unshuffle(x, 2))
        for i, r in enumerate(self.res):
            if str(r) in self.fuse:
                h = self.fuse[str(r)](torch.cat([h, cond[r].to(h.dtype)], 1))
            h = self.blocks[i](h)
            if i < len(self.down):
                h = self.down[i](h)
        return self.out(h)


class Decoder(nn.Module):
    """``(B, latent_dim, grid, grid)`` -> ``(B, 3, S, S)`` (in [-1, 1] units, via a final
    depth-to-space) and the feature map at each resolution ``{res: (B, C_res, res, res)}``
    for res = grid .. S/2; optionally fuses ``skip[res]`` (U-Net-like concatenation)."""

    def __init__(self, cfg: TokenizerConfig, grid: int, skip: dict[int, int] | None = None):
        super().__init__()
        self.res, skip = _levels(cfg, grid)[::-1], skip or {}
        self.inp = nn.Conv2d(cfg.latent_dim, _width(cfg, grid), 3, padding=1)
        self.fuse = nn.ModuleDict({str(r): nn.Conv2d(_width(cfg, r) + skip[r], _width(cfg, r), 1)
                                   for r in self.res if r in skip})
        self.blocks = nn.ModuleList(nn.Sequential(*[ResBlock(_width(cfg, r), cfg.norm) for _ in range(cfg.res_blocks)])
                                    for r in self.res)
        self.up = nn.ModuleList(nn.ConvTranspose2d(_width(cfg, r), _width(cfg, 2 * r), 4, stride=2, padding=1)
                                for r in self.res[:-1])
        self.out = nn.Sequential(nn.SiLU(), nn.Conv2d(_width(cfg, self.res[-1]), 12, 3, padding=1))
        self.widths = {r: _width(cfg, r) for r in self.res}

    def forward(self, z, skip: dict[int, torch.Tensor] | None = None, repeat: int = 1):
        """``repeat``: each ``skip`` row serves that many consecutive rows of ``z`` (frames
        that share one context), so ``skip`` maps have batch ``B / repeat``."""
        h, feats = self.inp(z), {}
        for i, r in enumerate(self.res):
            if str(r) in self.fuse:
                h = self._fuse(self.fuse[str(r)], h, skip[r], repeat)
            h = self.blocks[i](h)
            feats[r] = h
            if i < len(self.up):
                h = self.up[i](h)
        return F.pixel_shuffle(self.out(h), 2), feats

    @staticmethod
    def _fuse(conv: nn.Conv2d, h: torch.Tensor, skip: torch.Tensor, repeat: int) -> torch.Tensor:
        """``conv(cat([h, skip]))`` for a 1x1 conv, computed as ``conv_h(h) + conv_s(skip)``
        so that the skip half runs once per context and is broadcast over its ``repeat``
        frames instead of being copied to each (the decoder's hot path when imagining)."""
        ch = h.shape[1]
        out = F.conv2d(h, conv.weight[:, :ch], conv.bias)
        add = F.conv2d(skip.to(out.dtype), conv.weight[:, ch:].to(out.dtype))
        if repeat == 1:
            return out + add
        return (out.unflatten(0, (-1, repeat)) + add[:, None]).flatten(0, 1)


# ----------------------------------------------------------------------------- the model
class DualFSQTokenizer(nn.Module):
    """Context branch (many tokens) + dynamics branch (few tokens, decoded with the
    context's multi-scale features). See the module docstring for the verbs."""

    DECODE_CHUNK = 128   # frames per dynamics-decoder pass in decode_sequence

    def __init__(self, config: TokenizerConfig | None = None):
        super().__init__()
        cfg = self.config = config or TokenizerConfig()
        self.ctx_enc = Encoder(cfg, cfg.ctx_grid)
        self.ctx_fsq = FSQ(list(cfg.ctx_levels), dim=cfg.latent_dim, channel_first=True)
        self.ctx_dec = Decoder(cfg, cfg.ctx_grid)
        ctx_feats = dict(self.ctx_dec.widths)   # {res: channels} of the context decoder
        self.dyn_enc = Encoder(cfg, cfg.dyn_grid, in_ch=6, cond=ctx_feats)   # frame + context recon
        self.dyn_fsq = FSQ(list(cfg.dyn_levels), dim=cfg.latent_dim, channel_first=True)
        self.dyn_dec = Decoder(cfg, cfg.dyn_grid, skip=ctx_feats)
        # a learned static image under the context decoder's output: the fixed scene
        # (table, robot base, walls) costs no tokens and no convolution capacity
        self.background = nn.Parameter(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
        self.ctx_feat_norm = nn.ModuleDict({str(r): _norm(w) for r, w in ctx_feats.items()})
        nn.init.zeros_(self.dyn_dec.out[-1].weight)   # starts as "nothing changed"
        nn.init.zeros_(self.dyn_dec.out[-1].bias)

    # -- checks ------------------------------------------------------------------------
    def _frames(self, frames: torch.Tensor, name: str = "frames") -> torch.Tensor:
        """Validate ``(B, 3, S, S)`` frames; uint8 is converted to float in [0, 1]."""
        s = self.config.image_size
        if not isinstance(frames, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (B,3,{s},{s}), got {type(frames).__name__}")
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (3, s, s):
            hint = " (channels last? use .permute(0, 3, 1, 2))" if frames.ndim == 4 and frames.shape[-1] == 3 else ""
            raise ValueError(f"expected (B,3,{s},{s}) {name}, got {tuple(frames.shape)}{hint}")
        device = next(self.parameters()).device
        if frames.dtype == torch.uint8:
            return frames.to(device).float() / 255.0
        if not frames.is_floating_point():
            raise TypeError(f"{name} must be float in [0, 1] or uint8, got {frames.dtype}")
        if frames.numel() and (frames.max() > 1.5 or frames.min() < -0.5):
            raise ValueError(f"{name} must be in [0, 1] (got range [{float(frames.min()):.1f}, "
                             f"{float(frames.max()):.1f}]); divide 0-255 images by 255")
        return frames.to(device)

    def _tokens(self, tokens: torch.Tensor, branch: str) -> torch.Tensor:
        n, size = ((self.config.n_ctx_tokens, self.config.ctx_codebook_size) if branch == "ctx"
                   else (self.config.n_dyn_tokens, self.config.dyn_codebook_size))
        name = "context" if branch == "ctx" else "dynamics"
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.ndim != 2 \
                or tokens.shape[1] != n:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"expected {name} tokens as an integer tensor (B, {n}), got {got}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= size):
            raise ValueError(f"{name} tokens out of range [0, {size}): "
                             f"min {int(tokens.min())}, max {int(tokens.max())}")
        return tokens.to(next(self.parameters()).device, torch.long)

    # -- internals ---------------------------------------------------------------------
    @staticmethod
    def _quantize(fsq: FSQ, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, D, g, g)`` -> quantized ``(B, D, g, g)``, tokens ``(B, g*g)`` int64."""
        q, idx = fsq(z)
        return q, idx.flatten(1).long()

    @staticmethod
    def _dequantize(fsq: FSQ, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, g*g)`` -> quantized latents ``(B, D, g, g)``."""
        g = math.isqrt(tokens.shape[1])
        return fsq.indices_to_codes(tokens.view(-1, g, g))

    def _context(self, q: torch.Tensor):
        """Quantized context latents -> recon ``(B, 3, S, S)`` in [-1, 1] and the normalized
        ``{res: features}`` that condition the dynamics branch."""
        out, feats = self.ctx_dec(q)
        return out + self.background, {r: self.ctx_feat_norm[str(r)](h) for r, h in feats.items()}

    def _context_features(self, ctx_tokens: torch.Tensor):
        return self._context(self._dequantize(self.ctx_fsq, ctx_tokens))

    def _dyn_encode(self, x: torch.Tensor, ctx_out: torch.Tensor, feats: dict) -> torch.Tensor:
        """Future frame ``(B, 3, S, S)`` in [-1, 1] + context recon and features -> latents."""
        return self.dyn_enc(torch.cat([x, ctx_out.to(x.dtype)], 1), feats)

    def _dyn_decode(self, q: torch.Tensor, ctx_out: torch.Tensor, feats: dict, repeat: int = 1) -> torch.Tensor:
        """Quantized dynamics latents -> frame in [-1, 1]: the context recon plus a change.
        ``repeat``: each context row (``ctx_out``, ``feats``) serves that many consecutive rows of ``q``."""
        change = self.dyn_dec(q, feats, repeat)[0]
        if repeat == 1:
            return ctx_out + change
        return (ctx_out[:, None] + change.unflatten(0, (-1, repeat))).flatten(0, 1)

    def _base(self, ctx_out: torch.Tensor, ctx_frames: torch.Tensor | None) -> torch.Tensor:
        """What the dynamics change is added to, in [-1, 1]: the context reconstruction, or
        with ``pixel_context`` the context frames themselves ``(B, 3, S, S)`` in [0, 1]."""
        if not self.config.pixel_context:
            return ctx_out
        if ctx_frames is None:
            raise ValueError("this tokenizer (pixel_context=True) adds the dynamics change to the context "
                             "frame's pixels: pass ctx_frames (B, 3, S, S), the frames the context tokens encode")
        x = self._frames(ctx_frames, "ctx_frames") * 2 - 1
        if x.shape[0] != ctx_out.shape[0]:
            raise ValueError(f"batch sizes differ: {x.shape[0]} ctx_frames vs {ctx_out.shape[0]} context tokens")
        return x

    @staticmethod
    def _to_unit(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() + 1) / 2).clamp(0, 1)

    # -- public verbs --------------------------------------------------------------------
    def encode_context(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``(B, 3, S, S)`` in [0, 1] -> context tokens ``(B, ctx_grid**2)`` int64."""
        x = self._frames(frames) * 2 - 1
        return self._quantize(self.ctx_fsq, self.ctx_enc(x))[1]

    def encode_dynamics(self, frames: torch.Tensor, ctx_tokens: torch.Tensor,
                        ctx_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Future frames ``(B, 3, S, S)`` + their context tokens ``(B, ctx_grid**2)`` (and, for
        a ``pixel_context`` tokenizer, the context frames ``(B, 3, S, S)``) -> dynamics tokens
        ``(B, dyn_grid**2)`` int64."""
        x = self._frames(frames) * 2 - 1
        ctx_out, feats = self._context_features(self._tokens(ctx_tokens, "ctx"))
        if ctx_out.shape[0] != x.shape[0]:
            raise ValueError(f"batch sizes differ: {x.shape[0]} frames vs {ctx_out.shape[0]} context")
        return self._quantize(self.dyn_fsq, self._dyn_encode(x, self._base(ctx_out, ctx_frames), feats))[1]

    def decode(self, dyn_tokens: torch.Tensor, ctx_tokens: torch.Tensor,
               ctx_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Dynamics tokens ``(B, dyn_grid**2)`` + context tokens ``(B, ctx_grid**2)`` (+ context
        frames ``(B, 3, S, S)`` for ``pixel_context``) -> frames ``(B, 3, S, S)`` float32 in [0, 1]."""
        dyn, ctx = self._tokens(dyn_tokens, "dyn"), self._tokens(ctx_tokens, "ctx")
        if dyn.shape[0] != ctx.shape[0]:
            raise ValueError(f"batch sizes differ: {dyn.shape[0]} dynamics vs {ctx.shape[0]} context")
        ctx_out, feats = self._context_features(ctx)
        return self._to_unit(self._dyn_decode(self._dequantize(self.dyn_fsq, dyn),
                                              self._base(ctx_out, ctx_frames), feats))

    def decode_sequence(self, dyn_tokens: torch.Tensor, ctx_tokens: torch.Tensor,
                        ctx_frames: torch.Tensor | None = None) -> torch.Tensor:
        """Dynamics tokens ``(B, T, dyn_grid**2)`` of T frames that share one context
        ``(B, ctx_grid**2)`` (+ context frames ``(B or 1, 3, S, S)`` for ``pixel_context``) ->
        frames ``(B, T, 3, S, S)`` in [0, 1]. Same result as :meth:`decode` per frame, but the
        context decoder runs once per distinct context (once for all clips when they share
        one), not per frame, and its features are broadcast."""
        if dyn_tokens.ndim != 3:
            raise ValueError(f"expected dynamics tokens (B, T, {self.config.n_dyn_tokens}), "
                             f"got {tuple(dyn_tokens.shape)}")
        b, t = dyn_tokens.shape[:2]
        dyn = self._tokens(dyn_tokens.reshape(b * t, -1), "dyn")
        ctx = self._tokens(ctx_tokens, "ctx")
        if ctx.shape[0] != b:
            raise ValueError(f"batch sizes differ: {b} dynamics vs {ctx.shape[0]} context")
        pix = self.config.pixel_context and ctx_frames is not None
        if pix and ctx_frames.shape[0] == 1:
            ctx_frames = ctx_frames.expand(b, *ctx_frames.shape[1:])
        # one context for all (planning from one frame): its features are computed once
        shared = b > 1 and bool((ctx == ctx[:1]).all()) and (not pix or bool((ctx_frames == ctx_frames[:1]).all()))
        keep = slice(0, 1) if shared else slice(None)
        ctx_out, feats = self._context_features(ctx[keep])
        ctx_out = self._base(ctx_out, ctx_frames[keep] if pix else None)
        q = self._dequantize(self.dyn_fsq, dyn).unflatten(0, (b, t))
        # decode in chunks of ~DECODE_CHUNK frames: a whole 64 x 8 imagination at once keeps
        # ~30 MB activations per layer and runs memory-bound on CPU (~1.5x slower)
        step, out = max(1, self.DECODE_CHUNK // t), []
        for i in range(0, b, step):
            n = min(step, b - i)
            c_out, c_feats = (ctx_out, feats) if shared else \
                (ctx_out[i:i + n], {r: f[i:i + n] for r, f in feats.items()})
            out.append(self._dyn_decode(q[i:i + n].flatten(0, 1), c_out, c_feats, repeat=n * t if shared else t))
        frames = self._to_unit(torch.cat(out))
        return frames.view(b, t, *frames.shape[1:])

    def decode_context(self, ctx_tokens: torch.Tensor) -> torch.Tensor:
        """Context tokens ``(B, ctx_grid**2)`` -> frames ``(B, 3, S, S)`` float32 in [0, 1]."""
        return self._to_unit(self._context_features(self._tokens(ctx_tokens, "ctx"))[0])

    def forward(self, ctx_frames: torch.Tensor, frames: torch.Tensor,
                weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """Training pass on pairs: ``ctx_frames``, ``frames`` ``(B, 3, S, S)`` in [0, 1];
        ``weights``: optional per-pixel loss weights ``(B, S, S)`` of each (context, future),
        e.g. heavier on the small objects that decide the task (a weighted mean per branch).

        Returns ``loss`` (scalar), ``ctx_mse``/``ctx_l1``/``dyn_mse``/``dyn_l1`` (detached),
        ``ctx_recon``/``dyn_recon`` ``(B, 3, S, S)`` in [0, 1] and ``ctx_tokens``/``dyn_tokens``.
        """
        cx, fx = self._frames(ctx_frames, "ctx_frames") * 2 - 1, self._frames(frames) * 2 - 1
        cq, ctx_tokens = self._quantize(self.ctx_fsq, self.ctx_enc(cx))
        ctx_out, feats = self._context(cq)
        base = cx if self.config.pixel_context else ctx_out
        dq, dyn_tokens = self._quantize(self.dyn_fsq, self._dyn_encode(fx, base, feats))
        dyn_out = self._dyn_decode(dq, base, feats)
        cfg, out = self.config, {}
        loss = 0.0
        pix = (None, None) if weights is None else weights
        for name, pred, target, w, pw in (("ctx", ctx_out, cx, 1.0, pix[0]),
                                          ("dyn", dyn_out, fx, cfg.dyn_weight, pix[1])):
            err = pred.float() - target
            mse = err.pow(2).mean() / 4   # / 4: errors measured in [0, 1] units
            l1 = err.abs().mean() / 2
            pw = 1.0 if pw is None else pw.float()[:, None] / pw.float().mean()   # weighted mean (1: plain)
            loss = loss + w * ((err.pow(2) * pw).mean() / 4 + cfg.l1_weight * (err.abs() * pw).mean() / 2)
            out[f"{name}_mse"], out[f"{name}_l1"] = mse.detach(), l1.detach()
        out.update(loss=loss, ctx_recon=self._to_unit(ctx_out.detach()),
                   dyn_recon=self._to_unit(dyn_out.detach()), ctx_tokens=ctx_tokens, dyn_tokens=dyn_tokens)
        return out

    def code_usage(self, tokens: torch.Tensor, branch: str | None = None) -> float:
        """Fraction of the codebook that ``tokens`` ``(B, N)`` use, in (0, 1]. The branch
        ("ctx" or "dyn") is inferred from N when the grids differ."""
        if branch is None:
            n = tokens.shape[-1]
            cfg = self.config
            if cfg.n_ctx_tokens == cfg.n_dyn_tokens:
                raise ValueError("both branches have the same token count; pass branch='ctx' or 'dyn'")
            branch = "ctx" if n == cfg.n_ctx_tokens else "dyn" if n == cfg.n_dyn_tokens else None
            if branch is None:
                raise ValueError(f"{n} tokens per frame match neither branch "
                                 f"({cfg.n_ctx_tokens} context, {cfg.n_dyn_tokens} dynamics)")
        size = self.config.ctx_codebook_size if branch == "ctx" else self.config.dyn_codebook_size
        return torch.unique(tokens).numel() / size

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, step: int = 0, metrics: dict | None = None):
        """A standalone tokenizer checkpoint (training writes the same layout)."""
        return save_checkpoint(path, kind=KIND, config={"model": asdict(self.config)}, model=self,
                               step=step, metrics=metrics)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, config: TokenizerConfig | None = None,
                        map_location="cpu") -> DualFSQTokenizer:
        """Rebuild from a ``kind="tokenizer"`` checkpoint (its ``config["model"]``); if
        ``config`` is given it must match the stored one."""
        return load_model(path, kind=KIND, config_cls=TokenizerConfig, build=cls, config=config,
                          map_location=map_location)
