"""Does a learned value WITHOUT a world model choose among the action prior's samples better than chance?

    python benchmarks/value_pick.py --prior artifacts/stages/prior-177f0a460611/prior.pt \\
        --train artifacts/counterfactual/lift_train_600000_40.npz [more train .npz] \\
        --val artifacts/counterfactual/oracle_lift_val_200_12.npz [--episodes 50] [--workers 2]

A :class:`agent.value.FrameActionValue` (the no-imagination control of
``benchmarks/outcome_head.py``: the start frame at 16x16 pixels + the candidate's actions,
MSE + within-state ranking loss) is fitted on counterfactual candidates of train states
(``experiments/collect_counterfactual.py``), measured on held-out states' candidates
(``worldmodel.outcome.choice_metrics``), saved to ``<out>/value.pt``, and then chooses in the
closed loop: ``prior_value`` (the prior's samples, the highest value executed, at the MPC's
cadence) against ``prior_random`` (a uniform pick among the same samples), on the same held-out
test seeds, paired by McNemar. It is the model-free baseline for the world model's outcome head:
the same data and choice, no imagination. Episodes are saved per seed under ``<out>`` (resumable).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import add_section_args, publish  # noqa: E402
from experiments.common import resolve, setup_torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", required=True, help="the action prior checkpoint whose samples are chosen among")
    ap.add_argument("--train", nargs="+", required=True, help="counterfactual .npz files of train states")
    ap.add_argument("--val", nargs="+", required=True, help="counterfactual .npz files of held-out states")
    ap.add_argument("--env", default="roboalign/Lift-v0")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed-start", type=int, default=0, help="offset into the test split")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--execute", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--oracle-noise", type=float, nargs="*", default=[],
                    help="also report how oracle-P's summed value plus Gaussian noise of each given size chooses "
                         "on the held-out states (5 noise draws; files with values): what +oracle_noise=S does")
    ap.add_argument("--out", default="artifacts/value_pick")
    add_section_args(ap, "Closed loop: a learned value without a world model picks among the prior's samples (Lift)")
    args = ap.parse_args()
    setup_torch(args.threads)

    import numpy as np

    from agent.counterfactual import candidate_labels, load_counterfactuals
    from agent.evaluate import evaluate, paired_table, results_table
    from agent.prior import PriorAgent
    from agent.value import FrameActionValue, candidate_features, fit_value
    from envs.splits import split_seeds
    from worldmodel.outcome import choice_metrics
    from worldmodel.tokens import file_hash

    out = resolve(args.out)
    train = [load_counterfactuals(resolve(p)) for p in args.train]
    val = [load_counterfactuals(resolve(p)) for p in args.val]
    t0 = time.time()
    value = fit_value(train, seed=args.seed)
    fit_s = time.time() - t0
    va = candidate_features(val)
    import torch

    with torch.no_grad():
        m = choice_metrics(value(va["features"]).squeeze(-1), va["rewards"], va["group"])
    value.save(out / "value.pt", metrics={"choice_val": m})
    noisy = []
    for sigma in args.oracle_noise:
        total = torch.from_numpy(np.concatenate([candidate_labels(d, "values")[0].sum(-1).reshape(-1) for d in val]))
        draws = [choice_metrics((total + torch.randn(len(total), generator=torch.Generator().manual_seed(k))
                                 * sigma)[:, None], va["rewards"], va["group"]) for k in range(5)]
        mean = {key: float(np.mean([d[key] for d in draws])) for key in ("pairwise", "value_gain", "decisive_gain")}
        noisy.append(f"- oracle-P's summed value + noise of std {sigma:g} (5 draws): pairwise {mean['pairwise']:.3f}, "
                     f"value gain {mean['value_gain']:.2f} ({mean['decisive_gain']:.2f} where a candidate succeeds)")
    states = sum(len(d["seed"]) for d in train)
    seeds = split_seeds("test", args.episodes, args.seed_start)
    prior = str(resolve(args.prior))
    summaries = []
    for pick in ("value", "random"):
        agent = PriorAgent(prior, execute=args.execute, samples=args.samples, pick=pick, threads=1,
                           value=str(out / "value.pt") if pick == "value" else None)
        identity = {"agent": agent.name, "prior": file_hash(prior), "samples": args.samples, "execute": args.execute,
                    **({"value": file_hash(out / "value.pt")} if pick == "value" else {})}
        summaries.append(evaluate(args.env, agent, seeds, out_dir=out / agent.name, workers=args.workers,
                                  identity=identity))
    body = "\n".join([
        f"The value: {states} train states x {train[0]['actions'].shape[1]} prior candidates "
        f"({', '.join(Path(p).name for p in args.train)}), fitted in {fit_s:.0f} s. On "
        f"{m['starts']} held-out states ({', '.join(Path(p).name for p in args.val)}): within-state pairwise "
        f"{m['pairwise']:.3f}, value gain {m['value_gain']:.2f} ({m['decisive_gain']:.2f} on the {m['decisive']} states "
        f"where a candidate succeeds), top pick reaches success {m['pick_success']:.3f} vs random "
        f"{m['random_success']:.3f} (best {m['best_success']:.3f}).", *([""] + noisy if noisy else []), "",
        f"Closed loop: {args.env}, {len(seeds)} held-out test seeds ({seeds[0]}..{seeds[-1]}), prior "
        f"`{Path(prior).parent.name}`, {args.samples} samples, a new pick every {args.execute} control steps.", "",
        results_table(summaries), "", "Paired on the same seeds (exact McNemar test):", "",
        paired_table(summaries[0], summaries[1:])])
    publish(args, body)


if __name__ == "__main__":
    main()
