"""Sampling-based MPC optimizers (CEM, MPPI) over compact action chunks.

A plan covers ``horizon`` model steps of ``repeat`` control steps each (the world
model's step is 2 control steps), i.e. ``horizon * repeat`` control actions
``[dx, dy, dz, grip]`` in [-1, 1]. :class:`ChunkParam` maps a small parameter array
``(knots, 4)`` to those actions:

- ``knots = horizon`` (or ``None``): one action per model step, held for ``repeat``
  control steps ("per-step" parametrization);
- ``knots < horizon``: ``knots`` key actions spread evenly over the horizon, linearly
  interpolated between them per model step (smooth motions, fewer dimensions).

Both optimizers share one interface::

    planner = make_planner({"name": "cem", "horizon": 8, ...})
    result = planner.plan(score_fn, warm_start=prev_actions_shifted, rng=rng)
    result.actions      # (horizon * repeat, 4) control actions of the chosen plan

where ``score_fn(candidates (N, horizon * repeat, 4) float32) -> (N,)`` scores
(higher is better). The planner never sees observations or ``info``: whoever builds
``score_fn`` decides what it may look at. ``warm_start`` is an action sequence (the
previous plan shifted by the executed steps, see :func:`shift_actions`); it becomes
the initial mean and is always one of the first iteration's candidates.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

ScoreFn = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------- parametrization
class ChunkParam:
    """``(knots, 4)`` parameters <-> ``(horizon * repeat, 4)`` control actions."""

    def __init__(self, horizon: int = 8, repeat: int = 2, knots: int | None = None):
        self.horizon, self.repeat = int(horizon), int(repeat)
        self.knots = int(knots or horizon)
        if self.horizon < 1 or self.repeat < 1 or not 1 <= self.knots <= self.horizon:
            raise ValueError(f"need horizon >= 1, repeat >= 1, 1 <= knots <= horizon; got "
                             f"horizon={horizon}, repeat={repeat}, knots={knots}")
        # (horizon, knots) linear interpolation weights; identity for per-step plans
        if self.knots == self.horizon:
            w = np.eye(self.horizon)
        elif self.knots == 1:
            w = np.ones((self.horizon, 1))
        else:
            pos = np.linspace(0, self.knots - 1, self.horizon)
            lo = np.minimum(np.floor(pos).astype(int), self.knots - 2)
            frac = pos - lo
            w = np.zeros((self.horizon, self.knots))
            w[np.arange(self.horizon), lo] = 1 - frac
            w[np.arange(self.horizon), lo + 1] = frac
        self.weights = w
        self._pinv = np.linalg.pinv(w)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.knots, 4)

    @property
    def steps(self) -> int:
        """Control steps a plan covers."""
        return self.horizon * self.repeat

    def decode(self, params: np.ndarray) -> np.ndarray:
        """params ``(N, knots, 4)`` -> control actions ``(N, horizon * repeat, 4)`` in [-1, 1]."""
        per_step = np.einsum("hk,nka->nha", self.weights, np.asarray(params, np.float64))
        return np.clip(np.repeat(per_step, self.repeat, axis=1), -1.0, 1.0).astype(np.float32)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Control actions ``(horizon * repeat, 4)`` -> the least-squares params ``(knots, 4)``."""
        a = np.asarray(actions, np.float64)
        if a.shape != (self.steps, 4):
            raise ValueError(f"actions must be ({self.steps}, 4), got {a.shape}")
        per_step = a.reshape(self.horizon, self.repeat, 4).mean(1)
        return np.clip(self._pinv @ per_step, -1.0, 1.0)


def shift_actions(actions: np.ndarray, n: int) -> np.ndarray:
    """Drop the first ``n`` control actions and pad at the end with the last one
    (the warm start for the next replan after executing ``n`` steps)."""
    a = np.asarray(actions, np.float32)
    if n <= 0:
        return a.copy()
    n = min(n, len(a))
    return np.concatenate([a[n:], np.repeat(a[-1:], n, axis=0)])


# ---------------------------------------------------------------------- optimizers
@dataclass
class PlanResult:
    actions: np.ndarray            # (horizon * repeat, 4) chosen control actions
    params: np.ndarray             # (knots, 4)
    score: float                   # score of the chosen plan (nan if it was never scored)
    best_score: float              # best score of any candidate
    evaluations: int               # candidates scored
    seconds: float                 # wall time inside plan(), score_fn included
    history: list = field(default_factory=list)  # per iteration: mean / max / elite-mean score


def softmax_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``(n,)`` scores -> ``(n,)`` probabilities ``exp((s - max s) / (temperature * std(s)))``,
    normalized; non-finite scores get 0. The temperature is in units of the scores' spread,
    so one setting suits any objective scale: small -> the argmax, large -> uniform.

    Drawing a candidate of a proposal distribution ``pi`` with these weights draws from
    ``pi(a) exp(Q(a) / tau)``, the KL-regularized improvement of ``pi`` under the score ``Q``:
    it trusts a noisy score less than the argmax does (MPPI's weights; ``pick="sample"``)."""
    s = np.asarray(scores, np.float64)
    fin = np.isfinite(s)
    if not fin.any():
        return np.full(len(s), 1.0 / len(s))
    spread = s[fin].std() if fin.sum() > 1 else 0.0
    z = (s - s[fin].max()) / (float(temperature) * spread + 1e-9)
    w = np.where(fin, np.exp(z), 0.0)
    return w / w.sum()


def pick_softmax(scores: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, k: int = 1) -> int:
    """A draw weighted by :func:`softmax_weights` (the KL-regularized pick)."""
    return int(rng.choice(len(scores), p=softmax_weights(scores, temperature)))


def pick_top_k(scores: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, k: int = 1) -> int:
    """A uniform draw among the ``k`` best-scored candidates (``k = 1``: the argmax)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return int(order[rng.integers(min(max(int(k), 1), len(order)))])


#: How the executed candidate is drawn from the last iteration's scores: ``(scores, rng,
#: temperature, k) -> index``. ``best`` (the best candidate of any iteration) and ``mean``
#: (the final mean plan) are the planner's own; these are the drawn ones.
PICK_RULES = {"sample": pick_softmax, "top_k": pick_top_k}


def switch_distance(actions: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``(n,)`` how far each candidate ``(n, steps, 4)`` departs from the previous plan
    ``(steps, 4)`` (shifted to now): the mean over steps of the L2 distance between their
    actions. The switching cost subtracts ``switch_cost`` times this from every score, so
    that replanning keeps to its plan (one cube) unless another scores clearly better."""
    n = min(actions.shape[1], len(previous))
    return np.linalg.norm(actions[:, :n] - np.asarray(previous)[None, :n], axis=-1).mean(-1)


class SamplingPlanner:
    """Gaussian proposals around a mean plan, refined for ``iterations`` rounds."""

    name = "sampling"

    def __init__(self, horizon: int = 8, repeat: int = 2, knots: int | None = None, samples: int = 32,
                 iterations: int = 2, init_std: float = 0.5, min_std: float = 0.05,
                 grip_std: float | None = None, momentum: float = 0.0, pick: str = "best",
                 pick_temperature: float = 1.0, pick_k: int = 1, switch_cost: float = 0.0, **unused):
        unused.pop("name", None)
        unused.pop("execute", None)  # an agent setting that lives next to the planner's
        if unused:
            raise TypeError(f"unknown {type(self).__name__} settings {sorted(unused)}")
        if pick not in ("best", "mean", *PICK_RULES):
            raise ValueError(f"pick must be one of {('best', 'mean', *PICK_RULES)}, got {pick!r}")
        if int(pick_k) < 1:
            raise ValueError(f"pick_k must be >= 1, got {pick_k}")
        if pick_temperature <= 0:
            raise ValueError(f"pick_temperature must be > 0, got {pick_temperature}")
        if switch_cost < 0:
            raise ValueError(f"switch_cost must be >= 0, got {switch_cost}")
        self.param = ChunkParam(horizon, repeat, knots)
        self.samples, self.iterations = int(samples), int(iterations)
        self.init_std, self.min_std, self.momentum = float(init_std), float(min_std), float(momentum)
        self.grip_std = float(init_std if grip_std is None else grip_std)
        self.pick, self.pick_temperature, self.pick_k = pick, float(pick_temperature), int(pick_k)
        self.switch_cost = float(switch_cost)
        if self.samples < 2 or self.iterations < 1:
            raise ValueError(f"need samples >= 2 and iterations >= 1, got {samples}, {iterations}")

    @property
    def budget(self) -> int:
        """Candidates scored per replan."""
        return self.samples * self.iterations

    def _initial(self, warm_start) -> tuple[np.ndarray, np.ndarray]:
        k = self.param.knots
        mean = np.zeros((k, 4)) if warm_start is None else self.param.encode(warm_start)
        std = np.empty((k, 4))
        std[:, :3], std[:, 3] = self.init_std, self.grip_std
        return mean, std

    def _update(self, params, scores, mean, std):  # -> (new mean, new std)
        raise NotImplementedError

    def plan(self, score_fn: ScoreFn, warm_start: np.ndarray | None = None,
             rng: np.random.Generator | None = None, proposals: np.ndarray | None = None) -> PlanResult:
        """Optimize ``score_fn`` over plans; ``warm_start`` ``(horizon * repeat, 4)``.

        ``proposals`` ``(samples, >= horizon * repeat, 4)`` control actions (e.g. a learned
        prior's samples) replace the first iteration's Gaussian candidates (the warm
        start, if any, stays candidate 0); later iterations refine around their elites.
        """
        t0 = time.perf_counter()
        rng = rng if rng is not None else np.random.default_rng()
        mean, std = self._initial(warm_start)
        if proposals is not None:
            proposals = np.asarray(proposals, np.float32)
            if proposals.ndim != 3 or proposals.shape[0] != self.samples or proposals.shape[1] < self.param.steps \
                    or proposals.shape[2] != 4:
                raise ValueError(f"proposals must be ({self.samples}, >= {self.param.steps}, 4), "
                                 f"got {proposals.shape}")
            proposals = np.stack([self.param.encode(p[: self.param.steps]) for p in proposals])
        best_p, best_s, history, n_eval = mean, -np.inf, [], 0
        drawn = None
        for it in range(self.iterations):
            if it == 0 and proposals is not None:
                params = proposals.copy()
                if warm_start is not None:
                    params[0] = mean
            else:
                noise = rng.standard_normal((self.samples, *self.param.shape))
                params = np.clip(mean + std * noise, -1.0, 1.0)
                params[0] = mean                               # the mean is always a candidate
            actions = self.param.decode(params)
            scores = np.asarray(score_fn(actions), np.float64).reshape(-1)
            if scores.shape != (self.samples,):
                raise ValueError(f"score_fn returned shape {scores.shape}, expected ({self.samples},)")
            if self.switch_cost and warm_start is not None:
                scores = scores - self.switch_cost * switch_distance(actions, warm_start)
            scores = np.where(np.isfinite(scores), scores, -np.inf)
            n_eval += self.samples
            i = int(np.argmax(scores))
            if scores[i] > best_s:
                best_p, best_s = params[i].copy(), float(scores[i])
            if self.pick in PICK_RULES and it == self.iterations - 1:
                j = PICK_RULES[self.pick](scores, rng, self.pick_temperature, self.pick_k)
                drawn = params[j].copy(), float(scores[j])
            new_mean, new_std = self._update(params, scores, mean, std)
            mean = self.momentum * mean + (1 - self.momentum) * new_mean
            std = np.maximum(self.momentum * std + (1 - self.momentum) * new_std, self.min_std)
            fin = scores[np.isfinite(scores)]
            history.append({"iteration": it, "mean": float(fin.mean()) if fin.size else float("nan"),
                            "max": float(scores[i]), "std": float(std.mean())})
        if self.pick == "best":
            chosen, chosen_score = best_p, best_s
        elif self.pick in PICK_RULES:
            chosen, chosen_score = drawn
        else:
            chosen, chosen_score = np.clip(mean, -1.0, 1.0), float("nan")
        return PlanResult(self.param.decode(chosen[None])[0], chosen, chosen_score, best_s, n_eval,
                          time.perf_counter() - t0, history)


class CEM(SamplingPlanner):
    """Cross-entropy method: refit mean and std to the top ``elites`` candidates."""

    name = "cem"

    def __init__(self, *, elites: int = 6, **kw):
        super().__init__(**kw)
        self.elites = int(elites)
        if not 1 <= self.elites <= self.samples:
            raise ValueError(f"elites must be in [1, samples={self.samples}], got {elites}")

    def _update(self, params, scores, mean, std):
        elite = params[np.argsort(-scores, kind="stable")[: self.elites]]
        return elite.mean(0), elite.std(0)


class MPPI(SamplingPlanner):
    """Model-predictive path integral: a softmax-weighted mean of all candidates.

    Weights are ``exp((s - max s) / (temperature * std(s)))``: the temperature is in
    units of the candidates' score spread, so one setting suits any objective scale.
    """

    name = "mppi"

    def __init__(self, *, temperature: float = 0.5, adapt_std: bool = True, **kw):
        kw.setdefault("pick", "mean")
        super().__init__(**kw)
        self.temperature, self.adapt_std = float(temperature), bool(adapt_std)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")

    def weights(self, scores: np.ndarray) -> np.ndarray:
        return softmax_weights(scores, self.temperature)

    def _update(self, params, scores, mean, std):
        w = self.weights(scores)[:, None, None]
        new_mean = (w * params).sum(0)
        if not self.adapt_std:
            return new_mean, std
        return new_mean, np.sqrt((w * (params - new_mean) ** 2).sum(0))


PLANNERS = {"cem": CEM, "mppi": MPPI}


def make_planner(cfg) -> SamplingPlanner:
    """A planner from a config mapping (``planner/*.yaml``): ``name`` picks CEM or MPPI,
    every other key is a constructor argument (``execute`` is ignored here)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    cfg = dict(cfg)
    name = cfg.pop("name", "cem")
    if name not in PLANNERS:
        raise KeyError(f"unknown planner {name!r}; known: {sorted(PLANNERS)}")
    return PLANNERS[name](**cfg)


__all__ = ["ChunkParam", "shift_actions", "switch_distance", "softmax_weights", "PICK_RULES", "PlanResult", "SamplingPlanner", "CEM", "MPPI",
           "PLANNERS", "make_planner"]
