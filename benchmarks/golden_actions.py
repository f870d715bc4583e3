"""Golden actions: every closed-loop method's first control actions on fixed seeds, with
the tiny preset's models, written to JSON -- run before and after a refactor of the
agents and compare (same artifacts folder, same machine: the models are reused, so any
difference is the code's).

    python -m benchmarks.golden_actions artifacts=/tmp/golden out=/tmp/before.json
    # ... refactor ...
    python -m benchmarks.golden_actions artifacts=/tmp/golden out=/tmp/after.json compare=/tmp/before.json

Extra ``key=value`` arguments are closed-loop config overrides (the preset is ``tiny``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

#: Every method of the closed loop that needs no SAC training.
METHODS = ("mpc", "mpc_pretrained", "mpc_noswr", "mpc_prior", "mpc_prior_pretrained", "mpc_prior_noswr",
           "prior", "prior_random", "oracle_p", "oracle_p_prior", "oracle_s", "oracle_s_prior",
           "scripted", "noisy", "random")


def golden_actions(cfg, methods=METHODS, seeds=(0, 1), steps: int = 6) -> dict[str, list]:
    """``{method: [[seed's first `steps` actions (steps, 4)], ...]}`` on the test split's ``seeds``."""
    import envs
    from envs.splits import split_seeds
    from experiments import pipeline
    from experiments.closed_loop import make_method, stages_for

    needed = sorted({s for m in methods for s in stages_for(m)})
    stages = pipeline.build(cfg.pipeline, needed, artifacts=cfg.artifacts)
    env = envs.make(cfg.env.id)
    out: dict[str, list] = {}
    try:
        for method in methods:
            agent = make_method(method, cfg, stages)
            runs = []
            for seed in split_seeds("test", max(seeds) + 1)[min(seeds):]:
                attach = getattr(agent, "attach_privileged_env", None)
                if attach is not None:
                    attach(env)
                agent.reset(seed=seed)
                obs, _ = env.reset(seed=seed)
                acts = []
                for _ in range(steps):
                    a = np.asarray(agent.act(obs), np.float32)
                    acts.append(a.tolist())
                    obs, _, term, trunc, _ = env.step(a)
                    if term or trunc:
                        break
                runs.append(acts)
            getattr(agent, "close", lambda: None)()
            out[method] = runs
            print(f"{method}: {np.asarray(runs[0]).round(3).tolist()[:2]}", flush=True)
    finally:
        env.close()
    return out


def compare(a: dict, b: dict) -> list[str]:
    """Methods whose actions differ (or are missing) between two golden files."""
    bad = []
    for m in sorted(set(a) | set(b)):
        if m not in a or m not in b:
            bad.append(f"{m}: only in {'first' if m in a else 'second'}")
        elif not all(len(x) == len(y) and np.allclose(x, y, atol=1e-6) for x, y in zip(a[m], b[m])):
            bad.append(f"{m}: actions differ")
    return bad


def main(argv: list[str]) -> int:
    from experiments.pipeline import compose

    opts = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in ("out", "compare"))
    overrides = [a for a in argv if a.split("=", 1)[0] not in ("out", "compare")]
    cfg = compose("closed_loop", ["preset=tiny", *overrides])
    got = golden_actions(cfg)
    if "out" in opts:
        Path(opts["out"]).write_text(json.dumps(got))
    if "compare" in opts:
        bad = compare(json.loads(Path(opts["compare"]).read_text()), got)
        print("\n".join(bad) if bad else f"all {len(got)} methods: identical actions")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
