"""The distilled student reward: a compact video + instruction encoder with a linear
head over the six judge dimensions (plus three dense shaping outputs for the planner).

It needs no simulator: it reads the clip's pixels and the instruction id only, and is
trained (``worldmodel.judge.distill``) to reproduce the privileged teacher's scores.

Architecture (per clip of ``T+1`` frames, 64x64):

- every frame enters with its difference to the previous frame (6 channels; zeros for
  the start frame), is patchified 4x4 -> 16x16 (``patch``) and goes through one 3x3 conv
  (plus ``depth`` residual 3x3 convs);
- optionally (``colour``) every pixel's class posteriors P(red cube | green cube | gripper)
  from the teacher's fitted colour table (``set_colour_table``; stored in the checkpoint)
  are averaged per patch into the stem (1x1 conv), and each class's area, centroid and
  vertical spread join the per-frame features (measured: no ranking gain, half the speed);
- the instruction modulates the 16x16 feature map (FiLM, per channel) so "red" and
  "green" instructions attend to different cubes;
- the map is read out by a spatial soft-argmax (one (x, y) keypoint per channel: where
  the cubes and the gripper are) plus mean and max pooling (what is there);
- optionally the clip's control actions (per model step: commanded displacement and grip)
  are added to the per-frame vectors; trained with action dropout, so the student scores
  clips with or without actions (without, action-outcome consistency can only be judged
  from visual plausibility);
- per-frame vectors and their frame-to-frame differences pass two temporal convolutions
  (any ``T >= 1``), are pooled over time (mean, max, first, last) and concatenated with
  the instruction embedding; an MLP trunk ends in one **linear** layer whose first six
  outputs (through a sigmoid) are the normalized dimensions ``score / MAX_SCORES`` in
  ``[0, 1]`` and the last three are the shaping outputs (``SHAPING``: target_rise,
  grip_dist, progress; unbounded, in the teacher's normalized units).
- ``members = K > 1``: K such networks, independently initialised and each fitted to the
  labels (``worldmodel.judge.distill``); the outputs are their mean. One small student's
  within-start ranking varies from seed to seed; the mean of K ranks better.

Public verbs::

    out = student.score(frames, instruction)   # dims (B,6) in [0,1], shaping (B,3), total (B,)
    out = student.score(frames, instruction, actions=actions)   # (B, T*stride, 4), optional
    out = student.score(frames, instruction, weights=(0, 0, 2, 2, 2, 1))
    out = student.score_clips(clips)            # judge clip dicts; scores in raw units too
    student.save(path); StudentReward.from_checkpoint(path)

``frames`` is float ``(B, T+1, 3, 64, 64)`` in ``[0, 1]`` or uint8 ``(B, T+1, 64, 64, 3)``
(as stored in clips and the bench; divided by 255 and moved channels-first).
``total = sum_k w_k * dims_k * MAX_SCORES[k]`` (all weights 1: the teacher's total, out of 10).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.vocab import INSTRUCTIONS, instruction_id
from worldmodel.judge import DIMENSIONS, MAX_SCORES
from worldmodel.training import autocast, load_model, save_checkpoint

KIND = "student_reward"
#: shaping outputs, in head order (``worldmodel.judge.teacher`` defines each)
SHAPING: tuple[str, ...] = ("target_rise", "grip_dist", "progress")
N_DIMS, N_SHAPING = len(DIMENSIONS), len(SHAPING)
N_ACT_FEATS = 6
N_COLOUR = 3          # colour-posterior classes: red cube, green cube, gripper
N_COLOUR_FEATS = 4 * N_COLOUR   # per class: area fraction, centroid (x, y), vertical spread
N_TRACK = 3           # tracked objects (worldmodel.judge.teacher.TRACK_SLOTS: gripper, red, green)
N_ORDER_FEATS = 3     # per frame: matched expected frame - own frame, inversions it is part of, clip's order score


@dataclass
class StudentConfig:
    image_size: int = 64
    patch: int = 4                 # patchify stride: 64x64 -> 16x16
    channels: int = 16             # conv width at 16x16 (also the number of keypoints)
    hidden: int = 64               # temporal / trunk width
    embed: int = 16                # instruction embedding size
    temporal_kernel: int = 3
    n_instructions: int = len(INSTRUCTIONS)
    weights: tuple[float, ...] = (1.0,) * N_DIMS   # default per-dimension weights of `total`
    actions: bool = False          # optional action input (see `forward`); False: video only
    action_dropout: float = 0.3    # training: fraction of clips whose actions are hidden
    action_path: bool = False      # with `actions`: also the commanded path so far (cumulative
                                   # dx, dy, dz from the start frame), so a frame's keypoints can be
                                   # compared with where the actions should have taken the arm
    tracks: bool = False           # with `actions`: two auxiliary heads, trained on the teacher's
                                   # object tracks (experiments/bench_tracks.py): where the gripper
                                   # and cubes are in each frame (from the frame) and where the
                                   # actions put them (a GRU over the actions from the start
                                   # frame: a learned forward model); their difference joins
                                   # the per-frame features (see `member_forward`)
    track_order: bool = False      # with `tracks`: also the teacher's replay-order check computed on
                                   # the two track heads' outputs (each frame matched to the nearest
                                   # expected frame; see `order_features`), as per-frame inputs
    order_px: float = 3.0          # expected states this far apart (px) count for the order check
                                   # (the teacher's `order_px`)
    members: int = 1               # an ensemble of this many independently initialised
                                   # networks; outputs are their mean (see `forward`)
    depth: int = 0                 # extra residual 3x3 convs at the feature resolution
                                   # (0: the stem and one conv, the original student)
    colour: bool = False           # colour-posterior input: per pixel P(red | green | gripper)
                                   # from a fitted colour table (the teacher's perception,
                                   # `set_colour_table`), patch-averaged into the stem (1x1 conv),
                                   # plus per-frame area / centroid / spread of each class
    colour_bins: int = 32          # the colour table's levels per RGB channel

    def __post_init__(self):
        self.weights = tuple(float(w) for w in self.weights)
        if len(self.weights) != N_DIMS:
            raise ValueError(f"weights needs {N_DIMS} entries ({', '.join(DIMENSIONS)}), got {len(self.weights)}")
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if self.action_path and not self.actions:
            raise ValueError("action_path adds to the action input: it needs actions=True")
        if self.tracks and not self.actions:
            raise ValueError("tracks compares the frames with where the actions put the objects: it needs actions=True")
        if self.track_order and not self.tracks:
            raise ValueError("track_order reads the track heads: it needs tracks=True")
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        if self.colour_bins < 2 or 256 % self.colour_bins:
            raise ValueError(f"colour_bins must divide 256, got {self.colour_bins}")
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch}")

    @classmethod
    def from_dict(cls, d: dict) -> StudentConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown student config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def _spatial_softargmax(m: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(N, H*W, C)`` maps (row-major) -> ``(N, 2C)``: per channel the expected (x, y) in
    [-1, 1] under a softmax over positions (where each channel's feature sits)."""
    h, w = hw
    p = torch.softmax(m, dim=1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=m.device),
                            torch.linspace(-1, 1, w, device=m.device), indexing="ij")
    coords = torch.stack([xs.flatten(), ys.flatten()], dim=1).to(m.dtype)      # (H*W, 2)
    return (p.transpose(1, 2) @ coords).transpose(1, 2).flatten(1)              # (N, 2C): x..., y...


def colour_features(post: torch.Tensor) -> torch.Tensor:
    """Class posteriors ``(N, K, s, s)`` (patch averages) -> ``(N, 4K)``: per class the square root of its
    area fraction (x4), its posterior-weighted centroid (x, y) in [-1, 1] and its vertical
    spread (a centroid is shrunk towards the centre when a class has few pixels)."""
    post = post.float()
    s_h, s_w = post.shape[-2:]
    ys = torch.linspace(-1, 1, s_h, device=post.device)[:, None]
    xs = torch.linspace(-1, 1, s_w, device=post.device)[None, :]
    mass = post.sum((2, 3))                                                            # (N, K)
    w = post / (mass[..., None, None] + 1.0)
    cx, cy = (w * xs).sum((2, 3)), (w * ys).sum((2, 3))
    spread = ((w * (ys - cy[..., None, None]) ** 2).sum((2, 3)) + 1e-4).sqrt()
    area = (mass / (s_h * s_w)).sqrt() * 4
    return torch.cat([area, cx, cy, spread], dim=1)


def to_unit_frames(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 ``(..., S, S, 3)`` -> float ``(..., 3, S, S)`` in [0, 1] (the student's float layout)."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {frames.dtype}")
    return frames.movedim(-1, -3).float() / 255.0


class StudentReward(nn.Module):
    """Fast learned judge; see the module docstring."""

    def __init__(self, config: StudentConfig | None = None):
        super().__init__()
        self.config = cfg = config or StudentConfig()
        c, h = cfg.channels, cfg.hidden
        # one patchify conv over the raw frame with 2c outputs: c for the frame itself and c
        # for its change (the change of a linear map's output is the map of the change, so
        # the frame difference is taken at 16x16 features, not at 64x64 pixels)
        self.stem = nn.Conv2d(3, 2 * c, kernel_size=cfg.patch, stride=cfg.patch)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        # colour posteriors (3 classes), averaged over each patch, through their own 1x1 conv,
        # added to the stem's output; the table is a persistent buffer, so a checkpoint carries its perception
        self.colour_stem = nn.Conv2d(N_COLOUR, 2 * c, 1, bias=False) if cfg.colour else None
        if cfg.colour:
            self.register_buffer("colour_table", torch.zeros(cfg.colour_bins ** 3, N_COLOUR))
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(cfg.depth))
        self.embed = nn.Embedding(cfg.n_instructions, cfg.embed)
        self.film = nn.Linear(cfg.embed, 2 * c)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        frame_dim = 4 * c                         # keypoints (2c) + mean (c) + max (c)
        frame_dim += N_COLOUR_FEATS if cfg.colour else 0
        self.frame_proj = nn.Linear(frame_dim, h)
        k = cfg.temporal_kernel
        # per model step: commanded displacement (sum of dx, dy, dz over the step), mean and last
        # grip command, and a "have actions" flag; zero-initialised so video features lead
        self.act_proj = nn.Linear(N_ACT_FEATS + 3 * cfg.action_path, h) if cfg.actions else None
        if self.act_proj is not None:
            nn.init.zeros_(self.act_proj.weight)
            nn.init.zeros_(self.act_proj.bias)
        if cfg.tracks:
            # seen: per-frame positions (x, y in [-1, 1]) of the gripper and cubes read from the frame;
            # expected: a GRU over the action features (plus the commanded path so far) started
            # from the start frame's features; their difference (and its size) -> per-frame vector
            self.track_x = nn.Linear(h, 2 * N_TRACK)
            self.track_r0 = nn.Linear(h, h)
            self.track_gru = nn.GRU(N_ACT_FEATS + 3, h, batch_first=True)
            self.track_r = nn.Linear(h, 2 * N_TRACK)
            self.track_present = nn.Linear(h, N_TRACK) if cfg.track_order else None
            self.track_proj = nn.Linear(4 * N_TRACK + N_ORDER_FEATS * cfg.track_order, h)
            nn.init.zeros_(self.track_proj.weight)
            nn.init.zeros_(self.track_proj.bias)
        self.tconv1 = nn.Conv1d(2 * h, h, k, padding=k // 2)
        self.tconv2 = nn.Conv1d(h, h, k, padding=k // 2)
        self.trunk = nn.Sequential(nn.Linear(4 * h + cfg.embed, h), nn.GELU(), nn.Linear(h, h), nn.GELU())
        self.head = nn.Linear(h, N_DIMS + N_SHAPING)     # the linear head
        self.register_buffer("max_scores", torch.tensor(MAX_SCORES), persistent=False)
        self.register_buffer("default_weights", torch.tensor(cfg.weights), persistent=False)
        # ensemble members 2..K (member 1 is this module's own layers, so a one-member
        # student's checkpoint has the same keys as before the option existed)
        self.extra = nn.ModuleList(StudentReward(replace(cfg, members=1)) for _ in range(cfg.members - 1))

    # -- inputs ----------------------------------------------------------------------------
    def prepare_frames(self, frames) -> torch.Tensor:
        """Validate clip frames and move them to this model's device: uint8 ``(B, T+1, S, S, 3)``
        (kept as uint8; :meth:`forward` reads it channels-last and divides by 255 inside the
        stem, which is what :func:`to_unit_frames` does explicitly) or float
        ``(B, T+1, 3, S, S)`` in [0, 1]. Raises ``ValueError``/``TypeError`` for anything else."""
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if not isinstance(frames, torch.Tensor):
            raise TypeError(f"frames must be a tensor or numpy array, got {type(frames).__name__}")
        s = self.config.image_size
        if frames.dim() != 5:
            raise ValueError(f"frames must be 5-D (B, T+1, 3, {s}, {s}) float or (B, T+1, {s}, {s}, 3) "
                             f"uint8, got shape {tuple(frames.shape)}")
        if frames.dtype == torch.uint8:
            if frames.shape[-1] != 3 or frames.shape[2:4] != (s, s):
                raise ValueError(f"uint8 frames must be (B, T+1, {s}, {s}, 3), got {tuple(frames.shape)}")
            frames = frames.to(self.max_scores.device)
        else:
            if not frames.is_floating_point():
                raise TypeError(f"frames must be uint8 or float in [0, 1], got {frames.dtype}")
            if frames.shape[2] != 3 or frames.shape[3:] != (s, s):
                raise ValueError(f"float frames must be (B, T+1, 3, {s}, {s}) in [0, 1], got {tuple(frames.shape)}")
            frames = frames.to(self.max_scores.device)
        if frames.shape[1] < 2:
            raise ValueError(f"a clip needs T+1 >= 2 frames (start frame + >= 1 step), got {frames.shape[1]}")
        return frames

    def prepare_instruction(self, instruction, batch: int) -> torch.Tensor:
        """Ids (int, sequence, array or tensor) or instruction texts -> long ``(B,)``."""
        if isinstance(instruction, str):
            instruction = [instruction]
        if isinstance(instruction, (list, tuple)) and instruction and isinstance(instruction[0], str):
            instruction = [instruction_id(t) for t in instruction]
        ids = torch.as_tensor(np.asarray(instruction) if not isinstance(instruction, torch.Tensor) else instruction)
        ids = ids.reshape(-1).long().to(self.max_scores.device)
        if ids.numel() == 1 and batch > 1:
            ids = ids.expand(batch)
        if ids.numel() != batch:
            raise ValueError(f"{ids.numel()} instructions for {batch} clips")
        bad = (ids < 0) | (ids >= self.config.n_instructions)
        if bad.any():
            raise KeyError(f"instruction id {int(ids[bad][0])} outside 0..{self.config.n_instructions - 1} "
                           f"({list(INSTRUCTIONS)})")
        return ids

    def set_colour_table(self, table) -> None:
        """Install the colour table of ``colour=True`` (every ensemble member): a fitted
        :class:`worldmodel.judge.perception.Perception` or its ``table``
        ``(bins, bins, bins, 4)`` of class posteriors (background, red, green, gripper)."""
        if self.colour_stem is None:
            raise ValueError("this student has no colour input (StudentConfig.colour=False)")
        table = torch.as_tensor(np.asarray(getattr(table, "table", table), np.float32))
        bins = self.config.colour_bins
        if table.shape != (bins, bins, bins, N_COLOUR + 1):
            raise ValueError(f"colour table must be ({bins},)*3 + ({N_COLOUR + 1},) (StudentConfig.colour_bins="
                             f"{bins}), got {tuple(table.shape)}")
        for net in (self, *self.extra):
            net.colour_table.copy_(table.reshape(-1, N_COLOUR + 1)[:, 1:])

    def colour_posteriors(self, frames: torch.Tensor) -> torch.Tensor:
        """Validated clip frames (:meth:`prepare_frames`) -> per-pixel class posteriors
        ``(B*(T+1), 3, S, S)`` float32 (red, green, gripper) by one table lookup per pixel."""
        if not bool(self.colour_table.any()):
            raise RuntimeError("the student's colour table is empty: call set_colour_table(perception) before "
                               "training (experiments/distill_reward.py does, from the bench's perception.npz)")
        if frames.dtype == torch.uint8:
            u = frames.flatten(0, 1).permute(0, 3, 1, 2)                              # (N, 3, S, S)
        else:
            u = (frames.flatten(0, 1).float() * 255).round().clamp(0, 255).to(torch.uint8)
        bins = self.config.colour_bins
        shift = (256 // bins).bit_length() - 1
        q = (u >> shift).to(torch.int32)
        idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]                              # (N, S, S)
        return F.embedding(idx, self.colour_table).permute(0, 3, 1, 2)

    def patch_posteriors(self, frames: torch.Tensor) -> torch.Tensor:
        """:meth:`colour_posteriors` averaged over each ``patch`` x ``patch`` patch:
        ``(B*(T+1), 3, S/patch, S/patch)``, what the colour input reads."""
        return F.avg_pool2d(self.colour_posteriors(frames), self.config.patch)

    # -- model -----------------------------------------------------------------------------
    def action_features(self, actions: torch.Tensor | None, b: int, t1: int, device) -> torch.Tensor:
        """Control actions ``(B, T*stride, 4)`` (or None) -> per-frame features ``(B, T+1, 6)``:
        frame t >= 1 gets the step into it (sum of dx, dy, dz, mean and last grip), every
        frame a 1 flag when actions are given; all zeros without actions. With
        ``config.action_path`` 3 more: the commanded path from the start frame to frame t
        (cumulative dx, dy, dz), ``(B, T+1, 9)``."""
        out = torch.zeros(b, t1, N_ACT_FEATS + 3 * self.config.action_path, device=device)
        if actions is None:
            return out
        actions = torch.as_tensor(actions, dtype=torch.float32, device=device)
        t = t1 - 1
        if actions.dim() != 3 or actions.shape[0] != b or actions.shape[-1] != 4 or actions.shape[1] % t:
            raise ValueError(f"actions must be (B={b}, T*stride, 4) with T={t} model steps, "
                             f"got {tuple(actions.shape)}")
        a = actions.view(b, t, actions.shape[1] // t, 4)
        out[:, 1:, :3] = a[..., :3].sum(2)
        out[:, 1:, 3] = a[..., 3].mean(2)
        out[:, 1:, 4] = a[:, :, -1, 3]
        out[:, :, 5] = 1.0
        if self.config.action_path:
            out[:, 1:, 6:9] = out[:, 1:, :3].cumsum(1)
        return out

    def forward(self, frames: torch.Tensor, instruction: torch.Tensor, actions: torch.Tensor | None = None,
                *, members: bool = False, tracks: bool = False) -> tuple[torch.Tensor, ...]:
        """The ensemble's mean of :meth:`member_forward` over its ``config.members`` networks:
        (normalized dims ``(B, 6)`` in [0, 1], shaping ``(B, 3)``); with ``members=True``
        every member's output, ``(K, B, 6)`` and ``(K, B, 3)`` (training fits each member to
        the labels on its own, so they stay independent; averaging K of them mostly removes
        the seed-to-seed variance of one small student's ranking). ``tracks=True`` (a
        ``config.tracks`` student, with ``members=True``): also the track heads' outputs
        ``(K, B, T+1, 3, 2)`` seen and expected, the have-actions mask ``(K, B)`` and, with
        ``config.track_order``, the objects' presence logits ``(K, B, 3)``."""
        if tracks and not (self.config.tracks and members):
            raise ValueError("tracks=True needs a config.tracks student and members=True")
        if not len(self.extra) and not members:      # one network: its output as it is
            return self.member_forward(frames, instruction, actions)
        post = self.patch_posteriors(frames) if self.colour_stem is not None else None   # once for all members
        outs = [self.member_forward(frames, instruction, actions, post=post, tracks=tracks)]
        outs += [m.member_forward(frames, instruction, actions, post=post, tracks=tracks) for m in self.extra]
        stacked = tuple(torch.stack([o[i] for o in outs]) for i in range(len(outs[0])))
        return stacked if members else (stacked[0].mean(0), stacked[1].mean(0))

    def member_forward(self, frames: torch.Tensor, instruction: torch.Tensor, actions: torch.Tensor | None = None,
                       post: torch.Tensor | None = None, tracks: bool = False) -> tuple[torch.Tensor, ...]:
        """One network's forward: frames as accepted by :meth:`prepare_frames` (validated; uint8
        ``(B, T+1, S, S, 3)`` is converted inside the stem, which is the fast path), long
        ids ``(B,)``, optional control actions ``(B, T*stride, 4)`` -> (normalized dims
        ``(B, 6)`` in [0, 1], shaping ``(B, 3)``), float32. In training mode a fraction
        ``action_dropout`` of the clips have their actions hidden, so the same model
        scores clips with and without actions. ``post``: :meth:`patch_posteriors` of ``frames``
        when the caller has them (an ensemble computes them once for all members).
        ``tracks`` (``config.tracks``): also return the seen and expected object positions
        ``(B, T+1, 3, 2)`` in [-1, 1], the have-actions mask ``(B,)`` and, with ``config.track_order``,
        the presence logits ``(B, 3)`` (for the auxiliary loss)."""
        c, p = self.config.channels, self.config.patch
        b, t1 = frames.shape[:2]
        dev = frames.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.float32
        cl = torch.channels_last
        w = self.stem.weight                                                          # (2c, 3, p, p)
        if frames.dtype == torch.uint8:   # (B, T1, S, S, 3): a channels-last view; /255 in the weights
            x = frames.flatten(0, 1).permute(0, 3, 1, 2).to(dtype)
            w = w / 255.0
        else:
            x = frames.flatten(0, 1).to(dtype).contiguous(memory_format=cl)
        z = F.conv2d(x, w.to(dtype), None, stride=p)                                  # (N, 2c, s, s)
        if self.colour_stem is not None:
            post = self.patch_posteriors(frames) if post is None else post           # (N, 3, s, s)
            z = z + F.conv2d(post.to(dtype), self.colour_stem.weight.to(dtype))
        z = z.view(b, t1, 2 * c, *z.shape[-2:]) if z.is_contiguous() else \
            z.permute(0, 2, 3, 1).reshape(b, t1, *z.shape[-2:], 2 * c).permute(0, 1, 4, 2, 3)
        a, d = z[:, :, :c], z[:, :, c:]
        x = a + d
        x[:, 1:] -= d[:, :-1]             # a_t + (d_t - d_{t-1}); the start frame has no change
        x = x.flatten(0, 1).contiguous(memory_format=cl)
        x = F.gelu(x + self.stem.bias[:c, None, None].to(x.dtype))
        x = F.conv2d(x, self.conv.weight.to(x.dtype), self.conv.bias.to(x.dtype), padding=1)
        for conv in self.convs:           # residual: x + conv(gelu(x))
            x = x + F.conv2d(F.gelu(x), conv.weight.to(x.dtype), conv.bias.to(x.dtype), padding=1)
        e = self.embed(instruction)                                                   # (B, E)
        gb = self.film(e).to(x.dtype).repeat_interleave(t1, dim=0)[:, :, None, None]
        x = F.gelu(torch.addcmul(gb[:, c:], x, 1 + gb[:, :c]))
        m = x.permute(0, 2, 3, 1).flatten(1, 2)                                       # (N, s*s, c)
        feats = [_spatial_softargmax(m, x.shape[-2:]), m.mean(1), m.amax(1)]
        if self.colour_stem is not None:
            feats.append(colour_features(post).to(m.dtype))
        feats = torch.cat(feats, dim=1)
        f = self.frame_proj(feats).view(b, t1, -1)                                     # (B, T1, H)
        af = None
        if self.act_proj is not None and actions is not None:
            af = self.action_features(actions, b, t1, f.device)
            if self.training and self.config.action_dropout > 0:
                keep = torch.rand(b, device=f.device) >= self.config.action_dropout
                af = af * keep[:, None, None]
        track_out = ()
        if self.config.tracks and af is None and not tracks:
            # no actions: the difference features are zero (see below), only the bias remains
            f = f + self.track_proj.bias.to(f.dtype)
        elif self.config.tracks:
            seen, expected = self.track_heads(f, af)
            has = af[:, 0, 5] if af is not None else torch.zeros(b, device=f.device)      # (B,)
            diff = torch.cat([seen - expected, (seen - expected).abs()], 1)               # (B, 12, T1)
            present = None
            if self.track_present is not None:
                present = self.track_present(f[:, 0].float())                              # (B, 3) logits
                order = self.order_features(seen.transpose(1, 2), expected.transpose(1, 2), present > 0)
                diff = torch.cat([diff, order.transpose(1, 2)], 1)
            f = f + self.track_proj((diff * has[:, None, None]).transpose(1, 2)).to(f.dtype)
            track_out = (seen.transpose(1, 2).reshape(b, t1, N_TRACK, 2),
                         expected.transpose(1, 2).reshape(b, t1, N_TRACK, 2), has)
            if tracks and present is not None:
                track_out += (present,)
        if af is not None:
            f = f + self.act_proj(af).to(f.dtype)
        df = torch.cat([torch.zeros_like(f[:, :1]), f[:, 1:] - f[:, :-1]], dim=1)
        y = torch.cat([f, df], dim=2).transpose(1, 2)                                  # (B, 2H, T1)
        y = F.gelu(self.tconv1(y))
        y = F.gelu(self.tconv2(y)) + y
        pooled = torch.cat([y.mean(2), y.amax(2), y[:, :, 0], y[:, :, -1], e.to(y.dtype)], dim=1)
        out = self.head(self.trunk(pooled)).float()
        if tracks:
            return (torch.sigmoid(out[:, :N_DIMS]), out[:, N_DIMS:]) + track_out
        return torch.sigmoid(out[:, :N_DIMS]), out[:, N_DIMS:]

    @torch.no_grad()
    def order_features(self, seen: torch.Tensor, expected: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The teacher's replay-order check on the track heads' outputs: ``seen``, ``expected``
        ``(B, T+1, 6)`` in [-1, 1], ``present`` bool ``(B, 3)`` (objects in the scene) ->
        per-frame ``(B, T+1, 3)``: (index of the expected frame nearest to the seen one -
        own index) / T, the share of judged frame pairs with this frame in an inverted pair,
        and the clip's order score 1 - inverted / judged (pairs whose expected states differ
        by more than ``order_px``; 1 when none). Not differentiable (inputs, not outputs)."""
        b, t1, _ = seen.shape
        seen, expected = seen.float(), expected.float()
        m = present.float().repeat_interleave(2, dim=1)[:, None, None]                    # (B, 1, 1, 6)
        d = (((seen[:, :, None] - expected[:, None]) ** 2) * m).sum(-1)                    # (B, T1, T1)
        match = d.argmin(2).float()                                                        # (B, T1)
        rdist = ((expected[:, :, None] - expected[:, None]).abs() * m).amax(-1)            # (B, T1, T1)
        upper = torch.triu(torch.ones(t1, t1, dtype=torch.bool, device=seen.device), 1)
        judged = (rdist > self.config.order_px / (self.config.image_size / 2)) & upper
        inverted = judged & (match[:, :, None] > match[:, None])
        n_judged = judged.sum((1, 2)).clamp(min=1).float()
        order = 1.0 - inverted.sum((1, 2)).float() / n_judged                              # (B,)
        per_frame = (inverted.sum(2) + inverted.sum(1)).float() / n_judged[:, None]
        steps = torch.arange(t1, device=seen.device, dtype=torch.float32)
        return torch.stack([(match - steps) / max(1, t1 - 1), per_frame, order[:, None].expand(b, t1)], dim=2)

    def track_heads(self, f: torch.Tensor, af: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame vectors ``(B, T+1, H)`` and action features ``(B, T+1, 6)`` (or None) ->
        seen and expected positions ``(B, 6, T+1)`` (x, y of gripper, red, green; [-1, 1]),
        float32: ``seen`` read from each frame's vector, ``expected`` by the GRU over the
        action features plus the commanded path so far, from the start frame's vector."""
        b, t1 = f.shape[:2]
        dev = f.device.type
        with torch.autocast(dev, enabled=False):
            f32 = f.float()
            seen = self.track_x(f32)                                                   # (B, T1, 6)
            a = af.float() if af is not None else torch.zeros(b, t1, N_ACT_FEATS, device=f.device)
            a = torch.cat([a, a[..., :3].cumsum(1)], dim=2)                             # (B, T1, 9)
            h0 = torch.tanh(self.track_r0(f32[:, 0]))[None]                            # (1, B, H)
            r, _ = self.track_gru(a, h0.contiguous())
            expected = self.track_r(r)                                                 # (B, T1, 6)
        return seen.transpose(1, 2), expected.transpose(1, 2)

    def total(self, dims: torch.Tensor, weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
        """``sum_k w_k * dims_k * MAX_SCORES[k]`` for normalized ``dims`` ``(B, 6)``."""
        w = self.default_weights if weights is None else torch.as_tensor(weights, dtype=torch.float32,
                                                                         device=dims.device)
        if w.shape != (N_DIMS,):
            raise ValueError(f"weights needs {N_DIMS} entries ({', '.join(DIMENSIONS)}), got shape {tuple(w.shape)}")
        return (dims.float() * self.max_scores * w).sum(-1)

    @torch.no_grad()
    def score(self, frames, instruction, *, actions=None, weights: Sequence[float] | None = None,
              batch_size: int = 512, amp: bool = True) -> dict[str, torch.Tensor]:
        """Judge clips: ``dims (B, 6)`` normalized to [0, 1] (multiply by MAX_SCORES for the
        teacher's units), ``shaping (B, 3)`` (``SHAPING`` order) and the weighted ``total (B,)``.

        ``frames``: float ``(B, T+1, 3, 64, 64)`` in [0, 1] or uint8 ``(B, T+1, 64, 64, 3)``;
        ``instruction``: ids or texts, one per clip (or one for all); ``actions``: optional
        control actions ``(B, T*stride, 4)`` of the clips (lets a student trained with
        actions check action-outcome consistency; ignored if ``config.actions`` is off). Deterministic (eval
        mode, no sampling); bf16 autocast unless ``amp=False``. Results are float32 on CPU
        when the input came from numpy, else on the model's device.
        """
        was_training = self.training
        self.eval()
        try:
            dims, shaping = [], []
            n = frames.shape[0]
            ids = self.prepare_instruction(instruction, n)
            device = self.max_scores.device
            for i in range(0, n, batch_size):
                x = self.prepare_frames(frames[i:i + batch_size])
                act = None
                if actions is not None and self.act_proj is not None:
                    act = torch.as_tensor(np.asarray(actions[i:i + batch_size]) if isinstance(actions, np.ndarray)
                                          else actions[i:i + batch_size])
                with autocast(device, enabled=amp):
                    d, s = self(x, ids[i:i + batch_size], act)
                dims.append(d)
                shaping.append(s)
            dims_t = torch.cat(dims) if dims else torch.zeros(0, N_DIMS, device=device)
            shaping_t = torch.cat(shaping) if shaping else torch.zeros(0, N_SHAPING, device=device)
            return {"dims": dims_t, "shaping": shaping_t, "total": self.total(dims_t, weights)}
        finally:
            self.train(was_training)

    def score_clips(self, clips: Sequence[dict], *, weights: Sequence[float] | None = None,
                    amp: bool = True, use_actions: bool = True) -> dict[str, np.ndarray]:
        """Judge clip dicts (``worldmodel.judge`` format; ``frames``, ``instruction`` and, if
        present and ``use_actions``, ``actions`` are read) like the teacher's ``score_clips``: numpy ``scores (N, 6)`` in the teacher's
        units, ``dims (N, 6)`` normalized, ``shaping (N, 3)``, ``total (N,)``. Clips of
        different lengths are scored in groups of equal length."""
        n = len(clips)
        out = {"scores": np.zeros((n, N_DIMS), np.float32), "dims": np.zeros((n, N_DIMS), np.float32),
               "shaping": np.zeros((n, N_SHAPING), np.float32), "total": np.zeros(n, np.float32)}
        by_len: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            by_len.setdefault(len(c["frames"]), []).append(i)
        for idx in by_len.values():
            frames = np.stack([np.asarray(clips[i]["frames"]) for i in idx])
            acts = None
            if use_actions and all("actions" in clips[i] for i in idx):
                acts = np.stack([np.asarray(clips[i]["actions"], np.float32) for i in idx])
            r = self.score(frames, [int(clips[i]["instruction"]) for i in idx], actions=acts, weights=weights, amp=amp)
            out["dims"][idx] = r["dims"].cpu().numpy()
            out["shaping"][idx] = r["shaping"].cpu().numpy()
            out["total"][idx] = r["total"].cpu().numpy()
        out["scores"] = out["dims"] * np.asarray(MAX_SCORES, np.float32)
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"model": asdict(self.config)}

    def save(self, path: str | os.PathLike, *, step: int = 0, metrics: dict | None = None,
             extra: dict | None = None):
        """A standalone ``kind="student_reward"`` checkpoint with its config inside."""
        return save_checkpoint(path, kind=KIND, config=self.config_dict(), model=self, step=step,
                               metrics=metrics, extra=extra)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, config: StudentConfig | None = None,
                        map_location="cpu") -> StudentReward:
        """Rebuild from a ``student_reward`` checkpoint (``save`` or the training loop's
        ``last.pt``); if ``config`` is given it must match the stored one."""
        from worldmodel.training import CheckpointError

        try:
            return load_model(path, kind=KIND, config_cls=StudentConfig, build=cls, config=config,
                              map_location=map_location)
        except CheckpointError:
            raise
        except RuntimeError as e:   # a head of another size: a student of an older shaping set
            if "head." not in str(e):
                raise
            raise CheckpointError(
                f"{path} is a student with another number of shaping outputs; this code has "
                f"{N_SHAPING} ({', '.join(SHAPING)}). Retrain it on a bench built by this code "
                "(python experiments/build_bench.py, then experiments/distill_reward.py)") from e

    def members_as_students(self) -> list[StudentReward]:
        """The ensemble's members as one-member students, for scoring each alone (members
        2..K are the modules themselves, member 1 a copy of this module's own layers)."""
        if not len(self.extra):
            return [self]
        first = StudentReward(replace(self.config, members=1)).to(self.max_scores.device)
        first.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("extra.")})
        return [first, *self.extra]

    @classmethod
    def from_members(cls, students: Sequence[StudentReward | str | os.PathLike]) -> StudentReward:
        """The inverse of :meth:`members_as_students`: K one-member students (modules or
        checkpoint paths) of one architecture, trained apart (other seeds, other processes),
        as one K-member ensemble whose output is their mean. Raises ``ValueError`` when a
        student is itself an ensemble or their configs differ in anything but ``members``."""
        nets = [s if isinstance(s, StudentReward) else cls.from_checkpoint(s) for s in students]
        if not nets:
            raise ValueError("from_members needs at least one student")
        for i, net in enumerate(nets):
            if net.config.members != 1:
                raise ValueError(f"student {i} is already an ensemble of {net.config.members}; "
                                 "pass its members (members_as_students())")
            if net.config != nets[0].config:
                diff = {f.name: (getattr(nets[0].config, f.name), getattr(net.config, f.name))
                        for f in fields(StudentConfig)
                        if getattr(nets[0].config, f.name) != getattr(net.config, f.name)}
                raise ValueError(f"student {i} has another architecture than student 0: {diff}")
        ens = cls(replace(nets[0].config, members=len(nets))).to(nets[0].max_scores.device)
        state = dict(nets[0].state_dict())
        for i, net in enumerate(nets[1:]):
            state.update({f"extra.{i}.{k}": v for k, v in net.state_dict().items()})
        ens.load_state_dict(state)
        return ens.train(nets[0].training)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
