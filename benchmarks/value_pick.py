"""Does a learned value WITHOUT a world model choose among the action prior's samples better than chance?

    python benchmarks/value_pick.py --prior artifacts/stages/prior-177f0a460611/prior.pt \\
        --train artifacts/counterfactual/lift_train_600000_40.npz [more train .npz] \\
        --val artifacts/counterfactual/oracle_lift_val_200_12.npz [--episodes 50] [--workers 2]

A :class:`agent.value.PlanValue` (the no-imagination control of
``benchmarks/outcome_head.py``: the start frame at 16x16 pixels, or with ``--inputs state`` the
observation's state parts, + the candidate's actions; MSE + within-state ranking loss) is fitted
on counterfactual candidates of train states
(``experiments/collect_counterfactual.py``), measured on held-out states' candidates
(``worldmodel.outcome.choice_metrics``), saved to ``<out>/value.pt``, and then chooses in the
closed loop: ``prior_value`` (the prior's samples, the highest value executed, at the MPC's
cadence) against ``prior_random`` (a uniform pick among the same samples), on the same held-out
test seeds, paired by McNemar. It is the model-free baseline for the world model's outcome head:
the same data and choice, no imagination. Episodes are saved per seed under ``<out>`` (resumable;
``--random-dir`` shares prior_random's episodes between runs). ``--value <value.pt>`` measures
an existing value instead of fitting one (e.g. on the states it visits itself:
``experiments/collect_counterfactual.py value_ckpt=...``); each ``--val`` file gets its own row.
``--episodes 0`` stops after the offline measurement.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import add_section_args, publish  # noqa: E402
from experiments.common import resolve, setup_torch  # noqa: E402


def executed_dz(files: list[dict], scores, execute: int) -> dict:
    """Mean z command of the first ``execute`` actions of the top-``scores`` candidate per state
    (``scores (S * N,)`` in the files' order), of the highest summed env reward's and of all
    candidates: ``{"pick", "exact", "random"}`` (does the chooser push down where the exact one does not?)."""
    import numpy as np

    acts = np.concatenate([d["actions"] for d in files])                    # (S, N, steps, 4)
    rewards = np.concatenate([d["rewards"] for d in files]).sum(-1)         # (S, N)
    dz = acts[:, :, :execute, 2].mean(-1)
    rows = np.arange(len(dz))
    top = np.asarray(scores).reshape(dz.shape).argmax(1)
    return {"pick": float(dz[rows, top].mean()), "exact": float(dz[rows, rewards.argmax(1)].mean()),
            "random": float(dz.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", required=True, help="the action prior checkpoint whose samples are chosen among")
    ap.add_argument("--train", nargs="+", default=[], help="counterfactual .npz files of train states")
    ap.add_argument("--inputs", default="frame", choices=["frame", "state"],
                    help="what the fitted value sees of the start: the 16x16 frame, or the observation's state "
                         "parts (perfect perception; the files need 'state')")
    ap.add_argument("--label", default="rewards", choices=["rewards", "values", "success"],
                    help="what the value is fitted on: the env's reward, oracle-P's shaped value "
                         "(files with values), or success alone (the reward without its shaping)")
    ap.add_argument("--rank-focus", action="store_true",
                    help="aim the ranking loss at the states where the choice matters (worldmodel.outcome.train_head)")
    ap.add_argument("--rank-loss", default="logistic", choices=["logistic", "advantage"],
                    help="the within-state loss (worldmodel.outcome.train_head): logistic pairs, or the gaps "
                         "regressed at their true size")
    ap.add_argument("--rank-weight", type=float, default=1.0, help="its weight next to the MSE")
    ap.add_argument("--gate", type=float, nargs="+", default=None,
                    help="one prior_value agent per value: choose by the value only where its best sample beats "
                         "the samples' mean by this much, else pick at random (PriorAgent(gate=))")
    ap.add_argument("--gate-on", default="gain", choices=["gain", "best"],
                    help="what --gate compares: the best sample's lead over the mean, or its own score")
    ap.add_argument("--warm-start", action="store_true",
                    help="the executed plan, shifted, stays a candidate (as in the MPC's planner): prior_value_w")
    ap.add_argument("--hidden", type=int, default=128, help="the value MLP's hidden units")
    ap.add_argument("--steps", type=int, default=3000, help="fit steps (batches of 256 candidates)")
    ap.add_argument("--members", type=int, default=1,
                    help="fit this many values (seeds --seed, --seed + 1, ...) and choose by their ensemble "
                         "(agent.value.ValueEnsemble)")
    ap.add_argument("--pessimism", type=float, nargs="+", default=None,
                    help="an ensemble's lower-bound weights: one prior_value agent per value (score = members' "
                         "mean - pessimism x std)")
    ap.add_argument("--value", default=None, help="an existing value.pt to measure and run (no fit; not with --train)")
    ap.add_argument("--val", nargs="+", required=True, help="counterfactual .npz files of held-out states")
    ap.add_argument("--env", default="roboalign/Lift-v0")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed-start", type=int, default=0, help="offset into the test split")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--execute", type=int, default=2)
    ap.add_argument("--temperature", type=float, nargs="+", default=[0.0],
                    help="one prior_value agent per value: 0 executes the highest value (the argmax), T > 0 draws "
                         "a sample with softmax weights at temperature T in units of the scores' spread "
                         "(agent.planner.softmax_weights); all are paired with prior_random")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--oracle-noise", type=float, nargs="*", default=[],
                    help="also report how oracle-P's summed value plus Gaussian noise of each given size chooses "
                         "on the held-out states (5 noise draws; files with values): what +oracle_noise=S does")
    ap.add_argument("--out", default="artifacts/value_pick")
    ap.add_argument("--random-dir", default=None, help="prior_random's episodes (default <out>/prior_random)")
    add_section_args(ap, "Closed loop: a learned value without a world model picks among the prior's samples (Lift)")
    args = ap.parse_args()
    setup_torch(args.threads)

    import numpy as np

    from agent.counterfactual import candidate_labels, load_counterfactuals
    from agent.evaluate import evaluate, paired_table, results_table
    from agent.prior import PriorAgent
    from agent.value import ValueEnsemble, candidate_features, fit_value, load_value
    from envs.splits import split_seeds
    from worldmodel.outcome import choice_metrics
    from worldmodel.tokens import file_hash

    if bool(args.train) == bool(args.value):
        ap.error("give --train (fit a value) or --value (use a fitted one), not both or neither")
    if min(args.temperature) < 0 or args.members < 1:
        ap.error("--temperature values must be >= 0 and --members >= 1")
    out = resolve(args.out)
    train = [load_counterfactuals(resolve(p)) for p in args.train]
    val = [load_counterfactuals(resolve(p)) for p in args.val]
    t0 = time.time()
    if args.value:
        value_path = resolve(args.value)
        value = load_value(value_path)
    else:
        fits = [fit_value(train, seed=args.seed + k, inputs=args.inputs, rank_focus=args.rank_focus,
                          label=args.label, rank_loss=args.rank_loss, rank_weight=args.rank_weight,
                          hidden=args.hidden, steps=args.steps)
                for k in range(args.members)]
        value, value_path = fits[0] if args.members == 1 else ValueEnsemble(fits), out / "value.pt"
    fit_s = time.time() - t0
    import torch

    rows = []
    sets = [(Path(p).name, [d]) for p, d in zip(args.val, val)] + ([("all", val)] if len(val) > 1 else [])
    motion = []
    for name, files in sets:
        va = candidate_features(files, inputs=value.config["inputs"])
        with torch.no_grad():
            pred = value(va["features"]).squeeze(-1)
        rows.append((name, choice_metrics(pred, va["rewards"], va["group"])))
        motion.append((name, executed_dz(files, pred.mean(-1).numpy(), args.execute)))
    m = rows[-1][1]
    if not args.value:
        value.save(value_path, metrics={"choice_val": m})
    va = candidate_features(val, inputs=value.config["inputs"]) if args.oracle_noise else None
    noisy = []
    for sigma in args.oracle_noise:
        total = torch.from_numpy(np.concatenate([candidate_labels(d, "values")[0].sum(-1).reshape(-1) for d in val]))
        draws = [choice_metrics((total + torch.randn(len(total), generator=torch.Generator().manual_seed(k))
                                 * sigma)[:, None], va["rewards"], va["group"]) for k in range(5)]
        mean = {key: float(np.mean([d[key] for d in draws]))
                for key in ("pairwise", "value_gain", "decisive_gain", "spread_corr")}
        noisy.append(f"- oracle-P's summed value + noise of std {sigma:g} (5 draws): pairwise {mean['pairwise']:.3f}, "
                     f"value gain {mean['value_gain']:.2f} ({mean['decisive_gain']:.2f} where a candidate succeeds), "
                     f"spread corr {mean['spread_corr']:+.2f}")
    options = (f"{value.config['inputs']} + actions{', rank_focus' if args.rank_focus else ''}, fitted on {args.label}"
               f" with the {args.rank_loss} within-state loss at weight {args.rank_weight:g}, {args.hidden} hidden units, "
               f"{args.steps} steps"
               + (f", an ensemble of {args.members} seeds" if args.members > 1 else ""))
    saved = value.metrics.get("choice_val", {}) if args.value else {}
    what = (f"The value ({options}): {sum(len(d['seed']) for d in train)} train states x "
            f"{train[0]['actions'].shape[1]} prior candidates ({', '.join(Path(p).name for p in args.train)}), "
            f"fitted in {fit_s:.0f} s" if train else
            f"The value: `{args.value}` (fitted before; pairwise {saved.get('pairwise', float('nan')):.3f} and value "
            f"gain {saved.get('value_gain', float('nan')):.2f} on the held-out states it was saved with)")
    table = ["| held-out states | states | pairwise | value gain | decisive states | decisive gain | spread corr "
             "| pick optimism | top pick succeeds | random pick | best |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {name} | {r['starts']} | {r['pairwise']:.3f} | {r['value_gain']:.2f} | {r['decisive']} | "
              f"{r['decisive_gain']:.2f} | {r['spread_corr']:+.2f} | {r['pick_optimism']:+.3f} | "
              f"{r['pick_success']:.3f} | {r['random_success']:.3f} | {r['best_success']:.3f} |" for name, r in rows]
    body = [f"{what}. Its choice among each held-out state's candidates (`worldmodel.outcome.choice_metrics`):",
            "", *table, *([""] + noisy if noisy else []), "",
            f"Which way the picks move: the mean z command (-1 down, +1 up) over the first {args.execute} control steps "
            "(the executed part) of the value's top pick, of the exact chooser's (the highest summed env reward) "
            "and of all candidates (a random pick):", "",
            "| held-out states | value's pick | exact pick | random pick |", "|---|---|---|---|",
            *[f"| {name} | {d['pick']:+.2f} | {d['exact']:+.2f} | {d['random']:+.2f} |" for name, d in motion]]
    if args.episodes > 0:
        seeds = split_seeds("test", args.episodes, args.seed_start)
        prior = str(resolve(args.prior))
        summaries = []
        pess, gates = args.pessimism or [None], args.gate or [None]
        for pick, temp, lcb, gate in [("value", t, b, g) for g in gates for b in pess for t in args.temperature] + \
                [("random", 0.0, None, None)]:
            name = "prior_value" + (f"_t{temp:g}" if temp else "") + ("" if lcb is None else f"_p{lcb:g}") + \
                ("" if gate is None else f"_{'b' if args.gate_on == 'best' else 'g'}{gate:g}") + \
                ("_w" if args.warm_start else "")
            agent = PriorAgent(prior, execute=args.execute, samples=args.samples, pick=pick, threads=1,
                               value=str(value_path) if pick == "value" else None, temperature=temp or None,
                               pessimism=lcb, name=name if pick == "value" else None,
                               warm_start=args.warm_start and pick == "value", gate=gate, gate_on=args.gate_on)
            identity = {"agent": agent.name, "prior": file_hash(prior), "samples": args.samples,
                        "execute": args.execute, **({"value": file_hash(value_path)} if pick == "value" else {}),
                        **({"temperature": temp} if temp else {}), **({"pessimism": lcb} if lcb is not None else {}),
                        **({"warm_start": True} if args.warm_start and pick == "value" else {}),
                        **({"gate": gate} if gate is not None else {}),
                        **({"gate_on": args.gate_on} if gate is not None and args.gate_on != "gain" else {})}
            where = out / agent.name if pick == "value" or not args.random_dir else resolve(args.random_dir)
            summaries.append(evaluate(args.env, agent, seeds, out_dir=where, workers=args.workers,
                                      identity=identity))
        body += ["", f"Closed loop: {args.env}, {len(seeds)} held-out test seeds ({seeds[0]}..{seeds[-1]}), prior "
                 f"`{Path(prior).parent.name}`, {args.samples} samples, a new pick every {args.execute} control "
                 "steps" + (" (`prior_value_tT`: a softmax draw at temperature T, `agent.planner.softmax_weights`)"
                            if any(args.temperature) else "")
                 + (" (`_pB`: the ensemble's mean - B x std)" if args.pessimism else "")
                 + (" (`_gG`: the value decides only where its best beats the mean by G; `_bG`: only where its "
                    "best scores G)" if args.gate else "") + ".", "", results_table(summaries), "",
                 "Paired on the same seeds (exact McNemar test):", "", paired_table(summaries[0], summaries[1:])]
    publish(args, "\n".join(body))


if __name__ == "__main__":
    main()
