"""Action-conditioned causal transformer over tokenized video.

One sequence per clip::

    [ctx_1 .. ctx_Nc] [a_1, x^0_1 .. x^0_Nd] [a_2, x^1_1 .. x^1_Nd] ... [a_T, x^{T-1}_1 .. x^{T-1}_Nd]
     context block      step block 1            step block 2                step block T

``ctx`` are the context-branch tokens of the start frame, ``a_t`` is an embedded
(continuous) action token and ``x^{t-1}`` are the dynamics tokens of the previous
frame (``x^0``: the start frame's own dynamics tokens). The outputs at the
``Nd`` token positions of block ``t`` predict all dynamics tokens of frame ``t``
in one pass: attention is causal between blocks and free within a block, whose
inputs only hold frames before ``t``. Frame order enters through rotary position
embeddings on the block index, so a KV cache can drop old blocks (naive sliding
window) and relative positions stay right.

With predicted proprioception (``DynamicsConfig.proprio_bins > 0``) each step block also
holds the robot's proprio of the previous frame as ``P = 4`` tokens (end-effector x, y, z
and gripper opening, each quantized into ``proprio_bins`` bins over
``[proprio_low, proprio_high]``)::

    [a_t, x^{t-1}_1 .. x^{t-1}_Nd, p^{t-1}_1 .. p^{t-1}_P]

and the outputs at the ``P`` proprio positions predict frame ``t``'s proprio tokens, so
the model reads the robot's state as context and imagines it with the frame. Why tokens:
the gripper's opening after a close command is bimodal (stopped by the cube at its width,
or shut on nothing), which a regression head would average away.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DynamicsConfig:
    vocab: int = 1000        # dynamics-branch codebook size (what is predicted)
    ctx_vocab: int = 1000    # context-branch codebook size
    n_ctx: int = 64          # context tokens per start frame
    n_dyn: int = 16          # dynamics tokens per frame
    action_dim: int = 8      # action_repeat x 4
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.0
    # extra per-step outputs read from each imagined step's pooled hidden state, name -> width
    # (e.g. predicted proprioception); {} = none, and then the config describes itself
    # exactly as before the hook existed, so the stage keys of headless models stay put
    heads: dict = field(default_factory=dict)
    # predicted proprioception: bins per proprio feature (0 = none: the model and its
    # description are exactly as before the option existed); the quantization range per
    # feature [eef_x, eef_y, eef_z, gripper_opening] (metres), set from the training data
    proprio_bins: int = 0
    proprio_low: tuple = ()
    proprio_high: tuple = ()

    def __post_init__(self):
        if self.proprio_bins < 0:
            raise ValueError(f"proprio_bins must be >= 0, got {self.proprio_bins}")
        if self.proprio_bins:
            lo, hi = tuple(map(float, self.proprio_low)), tuple(map(float, self.proprio_high))
            if len(lo) != PROPRIO_DIM or len(hi) != PROPRIO_DIM or any(a >= b for a, b in zip(lo, hi)):
                raise ValueError(f"proprio_bins > 0 needs proprio_low < proprio_high, {PROPRIO_DIM} values each "
                                 f"([eef_x, eef_y, eef_z, gripper_opening]); got {lo} and {hi}")
            object.__setattr__(self, "proprio_low", lo)
            object.__setattr__(self, "proprio_high", hi)

    @property
    def n_proprio(self) -> int:
        """Proprio tokens per step block (0 without predicted proprioception)."""
        return PROPRIO_DIM if self.proprio_bins else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["heads"]:
            d.pop("heads")
        if not d["proprio_bins"]:
            for k in ("proprio_bins", "proprio_low", "proprio_high"):
                d.pop(k)
        else:
            d["proprio_low"], d["proprio_high"] = list(d["proprio_low"]), list(d["proprio_high"])
        return d


#: Proprio features per frame: end-effector xyz and the gripper opening (envs.robosuite_env).
PROPRIO_DIM = 4


def _rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, L, Dh) by positions ``pos`` (L,) (rotate-half convention)."""
    dh = x.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh))
    ang = pos.to(torch.float32)[:, None] * inv[None]              # (L, Dh/2)
    cos, sin = ang.cos().repeat(1, 2).to(x.dtype), ang.sin().repeat(1, 2).to(x.dtype)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, pos, mask=None, cache=None):
        """x (B, L, d); pos (L,) block indices; mask (L, L) bool (True = may attend) or None;
        cache: (k, v) of earlier positions, each (B, H, Lc, Dh). Returns (x, (k, v))."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = _rope(q, pos), _rope(k, pos)
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, n, d)))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, (k, v)


class DynamicsModel(nn.Module):
    """Predicts dynamics tokens frame by frame given context tokens and actions."""

    def __init__(self, cfg: DynamicsConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if d % cfg.n_heads or (d // cfg.n_heads) % 2:
            raise ValueError("d_model / n_heads must be an even integer (rotary embeddings)")
        self.tok_emb = nn.Embedding(cfg.vocab, d)
        self.ctx_emb = nn.Embedding(cfg.ctx_vocab, d)
        self.ctx_pos = nn.Parameter(torch.randn(cfg.n_ctx, d) * 0.02)
        self.dyn_pos = nn.Parameter(torch.randn(cfg.n_dyn, d) * 0.02)
        self.type_emb = nn.Embedding(3 + bool(cfg.proprio_bins), d)  # 0 context, 1 action, 2 dynamics, 3 proprio
        if cfg.proprio_bins:   # one table for all features (feature j's bins at j * bins), one head
            self.prop_emb = nn.Embedding(PROPRIO_DIM * cfg.proprio_bins, d)
            self.prop_pos = nn.Parameter(torch.randn(PROPRIO_DIM, d) * 0.02)
            self.prop_head = nn.Linear(d, cfg.proprio_bins)
            self.register_buffer("prop_low", torch.tensor(cfg.proprio_low), persistent=False)
            self.register_buffer("prop_high", torch.tensor(cfg.proprio_high), persistent=False)
        self.act_mlp = nn.Sequential(nn.Linear(cfg.action_dim, d), nn.GELU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(_Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab)
        # the extra per-step heads (DynamicsConfig.heads): one small MLP each on the step features
        self.heads = nn.ModuleDict({name: nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, int(width)))
                                    for name, width in sorted(cfg.heads.items())})
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ inputs
    def _check(self, ctx: torch.Tensor, prev0: torch.Tensor, actions: torch.Tensor) -> None:
        c = self.cfg
        if ctx.dim() != 2 or ctx.shape[1] != c.n_ctx:
            raise ValueError(f"context tokens must be (B, {c.n_ctx}), got {tuple(ctx.shape)}")
        if prev0.dim() != 2 or prev0.shape[1] != c.n_dyn:
            raise ValueError(f"dynamics tokens must be (B, {c.n_dyn}), got {tuple(prev0.shape)}")
        if actions.shape[-1] != c.action_dim:
            raise ValueError(f"actions must have {c.action_dim} features (action_repeat x 4), "
                             f"got {tuple(actions.shape)}")

    def proprio_tokens(self, proprio: torch.Tensor) -> torch.Tensor:
        """Proprio (..., 4) in metres -> tokens (..., 4) in [0, proprio_bins) (clamped to the range)."""
        self._need_proprio()
        u = (proprio.float() - self.prop_low) / (self.prop_high - self.prop_low)
        return (u * self.cfg.proprio_bins).floor().long().clamp(0, self.cfg.proprio_bins - 1)

    def proprio_values(self, tokens: torch.Tensor) -> torch.Tensor:
        """Proprio tokens (..., 4) -> the bins' centres (..., 4) in metres."""
        self._need_proprio()
        return self.prop_low + (tokens.float() + 0.5) * (self.prop_high - self.prop_low) / self.cfg.proprio_bins

    def _need_proprio(self) -> None:
        if not self.cfg.proprio_bins:
            raise ValueError("this dynamics model has no proprio tokens (DynamicsConfig.proprio_bins = 0)")

    def _check_proprio(self, prop: torch.Tensor | None, lead: tuple) -> None:
        """``prop`` must be proprio tokens (*lead, 4) exactly when the model has them."""
        if not self.cfg.proprio_bins:
            if prop is not None:
                raise ValueError("proprio given to a dynamics model without proprio tokens "
                                 "(train it with dynamics.model.proprio_bins > 0)")
            return
        if prop is None:
            raise ValueError("this dynamics model reads the robot's proprio (eef xyz, gripper opening) with each "
                             "frame: pass proprio for the start frame (and the frames of teacher-forced steps)")
        if tuple(prop.shape) != (*lead, PROPRIO_DIM):
            raise ValueError(f"proprio tokens must be {(*lead, PROPRIO_DIM)}, got {tuple(prop.shape)}")

    def _ctx_embed(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.ctx_emb(ctx) + self.ctx_pos + self.type_emb.weight[0]

    def _step_embed(self, prev: torch.Tensor, action: torch.Tensor, prev_prop: torch.Tensor | None = None) -> torch.Tensor:
        """prev (B, Nd) tokens of the previous frame, action (B, A), prev_prop (B, P) its proprio
        tokens (with proprio) -> (B, 1 + Nd + P, d)."""
        a = self.act_mlp(action.to(self.ctx_pos.dtype)) + self.type_emb.weight[1]
        x = self.tok_emb(prev) + self.dyn_pos + self.type_emb.weight[2]
        parts = [a[:, None], x]
        if prev_prop is not None:
            offset = torch.arange(PROPRIO_DIM, device=prev_prop.device) * self.cfg.proprio_bins
            parts.append(self.prop_emb(prev_prop + offset) + self.prop_pos + self.type_emb.weight[3])
        return torch.cat(parts, 1)

    def _positions(self, n_steps: int, first_step: int = 1) -> torch.Tensor:
        blk = 1 + self.cfg.n_dyn + self.cfg.n_proprio
        return torch.arange(first_step, first_step + n_steps, device=self.ctx_pos.device).repeat_interleave(blk)

    # ------------------------------------------------------------------ full pass
    def forward(self, ctx: torch.Tensor, prev0: torch.Tensor, actions: torch.Tensor,
                tokens: torch.Tensor, prop0: torch.Tensor | None = None, props: torch.Tensor | None = None):
        """Teacher-forced logits.

        ctx (B, Nc), prev0 (B, Nd) tokens of the start frame; actions (B, T, A);
        tokens (B, T, Nd) dynamics tokens of frames 1..T. Returns (B, T, Nd, vocab).
        With proprio tokens (``proprio_bins > 0``): prop0 (B, P) the start frame's proprio
        tokens, props (B, T, P) frames 1..T's; returns ``(logits, proprio logits (B, T, P, bins))``
        (:func:`split_logits` reads either form)."""
        h = self._hidden(ctx, prev0, actions, tokens, prop0, props)
        nd = self.cfg.n_dyn
        logits = self.head(h[:, :, :nd])
        return (logits, self.prop_head(h[:, :, nd:])) if self.cfg.proprio_bins else logits

    def features(self, ctx, prev0, actions, tokens, prop0=None, props=None) -> torch.Tensor:
        """Teacher-forced step features (B, T, d): each step block's token-position hidden
        states (frame and proprio tokens), pooled -- what :meth:`step` leaves in ``cache["h"]``
        and the extra heads read."""
        return self._hidden(ctx, prev0, actions, tokens, prop0, props).mean(2)

    def predict_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Step features (..., d) -> each extra head's output (..., width), by name ({} without heads)."""
        return {name: head(features) for name, head in self.heads.items()}

    def _hidden(self, ctx, prev0, actions, tokens, prop0=None, props=None) -> torch.Tensor:
        """Final-layer hidden states (B, T, Nd + P, d) at the token positions of each step block."""
        self._check(ctx, prev0, actions)
        b, t = actions.shape[:2]
        c = self.cfg
        self._check_proprio(prop0, (b,))
        self._check_proprio(props, (b, t))
        prevs = torch.cat([prev0[:, None], tokens[:, :-1]], 1)              # (B, T, Nd)
        pprevs = torch.cat([prop0[:, None], props[:, :-1]], 1) if c.proprio_bins else None
        steps = torch.cat([self._step_embed(prevs[:, i], actions[:, i], None if pprevs is None else pprevs[:, i])
                           for i in range(t)], 1)
        x = torch.cat([self._ctx_embed(ctx), steps], 1)
        blk = 1 + c.n_dyn + c.n_proprio
        pos = torch.cat([torch.zeros(c.n_ctx, dtype=torch.long, device=x.device), self._positions(t)])
        mask = pos[:, None] >= pos[None, :]                                  # block-causal
        for block in self.blocks:
            x, _ = block(x, pos, mask)
        return self.ln_f(x[:, c.n_ctx:]).view(b, t, blk, -1)[:, :, 1:]       # token positions

    def loss(self, ctx, prev0, actions, tokens, prop0=None, props=None) -> tuple[torch.Tensor, dict]:
        """Next-frame token cross-entropy (plus the proprio tokens' with proprio; see
        :func:`token_loss`); metrics include accuracy."""
        return token_loss(self(ctx, prev0, actions, tokens, prop0, props), tokens, props)

    def log_prob(self, ctx, prev0, actions, tokens, prop0=None, props=None) -> torch.Tensor:
        """Log-probability of the given tokens (B, T, Nd) (and proprio tokens (B, T, P) with
        proprio) -> (B,) summed over all tokens."""
        logits, plogits = split_logits(self(ctx, prev0, actions, tokens, prop0, props))
        total = _token_logp(logits, tokens)
        return total if plogits is None else total + _token_logp(plogits, props)

    # ------------------------------------------------------------------ incremental
    @torch.no_grad()
    def start(self, ctx: torch.Tensor) -> dict:
        """A KV cache holding the context block. ctx (B, Nc)."""
        x = self._ctx_embed(ctx)
        pos = torch.zeros(self.cfg.n_ctx, dtype=torch.long, device=x.device)
        kv = []
        for block in self.blocks:
            x, layer_kv = block(x, pos)
            kv.append(layer_kv)
        return {"kv": kv, "t": 0}

    @torch.no_grad()
    def step(self, cache: dict, prev: torch.Tensor, action: torch.Tensor, max_len: int | None = None,
             prev_prop: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, Nd, vocab) for the next frame; appends the step block to ``cache``.

        prev (B, Nd) tokens of the latest frame, action (B, A); prev_prop (B, P) its proprio
        tokens, exactly when the model has them (the next frame's proprio logits (B, P, bins)
        are then left in ``cache["proprio_logits"]``). ``max_len`` caps the cached positions
        (oldest dropped first: the naive sliding window). The step's pooled features (B, d)
        (see :meth:`features`) are left in ``cache["h"]``."""
        self._check_proprio(prev_prop, (prev.shape[0],))
        cache["t"] += 1
        x = self._step_embed(prev, action, prev_prop)
        pos = self._positions(1, cache["t"])
        for i, block in enumerate(self.blocks):
            x, cache["kv"][i] = block(x, pos, cache=cache["kv"][i])
            if max_len is not None and cache["kv"][i][0].shape[2] > max_len:
                k, v = cache["kv"][i]
                cache["kv"][i] = (k[:, :, -max_len:], v[:, :, -max_len:])
        h = self.ln_f(x[:, 1:])
        cache["h"] = h.mean(1)
        nd = self.cfg.n_dyn
        if self.cfg.proprio_bins:
            cache["proprio_logits"] = self.prop_head(h[:, nd:])
        return self.head(h[:, :nd])


def split_logits(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A dynamics forward's output -> (frame logits, proprio logits or None)."""
    return (out[0], out[1]) if isinstance(out, tuple) else (out, None)


def _token_logp(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Summed log-probability (B,) of tokens (B, T, K) under logits (B, T, K, V)."""
    logp = torch.log_softmax(logits.float(), -1)
    return logp.gather(-1, tokens[..., None]).squeeze(-1).flatten(1).sum(1)


def token_loss(out, tokens: torch.Tensor, props: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of a forward's output against the frame tokens (B, T, Nd), plus (with
    proprio) the mean cross-entropy of the proprio tokens (B, T, P), weighted 1. Metrics:
    ``ce`` / ``acc`` of the frame tokens (comparable with and without proprio) and
    ``proprio_ce`` / ``proprio_acc``."""
    logits, plogits = split_logits(out)
    ce = F.cross_entropy(logits.float().flatten(0, 2), tokens.flatten())
    metrics = {"ce": float(ce.detach()), "acc": float((logits.argmax(-1) == tokens).float().mean())}
    if plogits is None:
        return ce, metrics
    pce = F.cross_entropy(plogits.float().flatten(0, 2), props.flatten())
    metrics.update(proprio_ce=float(pce.detach()), proprio_acc=float((plogits.argmax(-1) == props).float().mean()))
    return ce + pce, metrics


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample (..., vocab) logits -> (...) tokens; temperature 0 is argmax."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    # inverse-CDF sampling: one uniform draw per token instead of torch.multinomial's one
    # exponential draw per vocabulary entry (~40x faster for 1024 x 1000 logits on CPU,
    # where it was a fifth of a 64-candidate imagination)
    cdf = torch.softmax(logits, -1).cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, device=cdf.device) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
