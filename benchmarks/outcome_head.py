"""Does the world model's outcome head see a lift that the imagined video loses?

    python benchmarks/outcome_head.py --worldmodel artifacts/outcome/noisy_prior/worldmodel.pt \\
        --run artifacts/closed_loop/weak_p0/run.json --rollouts artifacts/heldout/prior_random_val_40.hdf5 \\
        [--worldmodel ANOTHER --counterfactual artifacts/counterfactual/lift_val_200_12.npz]

Held-out clips (``--window`` model steps every ``--stride`` control steps of every episode in
``--rollouts``) are imagined ``--draws`` times from their real first frame under their real
actions. On the SAME imagined draws, each planning signal is asked whether the clip ends in
success (the env's reward at its last step is the success reward), as a ROC AUC:

- ``outcome (last step)`` / ``outcome (mean)``: the world model's outcome head (the mean over
  steps is the MPC's ``outcome`` objective term);
- ``student objective``: the MPC's default objective from the student's reading of the
  imagined video (``agent.mpc.DEFAULT_WEIGHTS``); ``student IF`` and ``student progress``:
  its Instruction Following dimension and its progress output.

``undecided`` clips are those whose first step is not yet a success: the decisions a
planner still has to make (clips that start lifted are easy for every signal).

Those clips come one per start, so they measure how outcomes differ BETWEEN starts. With
``--counterfactual`` (files of ``experiments/collect_counterfactual.py``: many prior
candidates per held-out state, each replayed in the simulator) the same signals choose among
one state's candidates, as the planner does: within-state pairwise accuracy against the mean
true reward, how often the top-scored candidate reaches success against a random pick, the
top pick's mean true reward against a random and the best pick's, and the value gain (the
fraction of the best pick's gain over a random pick that the top pick gets)
(``worldmodel.outcome.choice_metrics``; ``--label values``: judged by oracle-P's privileged
value instead of the env's reward, for files that recorded it). ``--control-train`` (counterfactual files of TRAIN
states) adds a control without imagination: the same head shape and loss (MSE + the
within-state ranking loss, as ``head.rank_weight=1``) on the raw start frame (16x16 pixels)
and the candidate's actions alone. If it chooses as well, the imagination adds nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import add_section_args, publish  # noqa: E402
from experiments.common import resolve, setup_torch  # noqa: E402

SIGNALS = ("outcome (last step)", "outcome (mean)", "student objective", "student IF", "student progress")


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC of ``score`` for boolean ``label`` (ties count half; NaN if a class is empty)."""
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def no_imagination_control(train: list[dict], val: list[dict], repeat: int, success: float, seed: int,
                           label: str = "rewards") -> dict:
    """Fit the control (:func:`agent.value.fit_value`) on ``train`` counterfactuals, return its choice on ``val`` ones."""
    import torch

    from agent.value import candidate_features, fit_value
    from worldmodel.outcome import choice_metrics

    value = fit_value(train, repeat=repeat, seed=seed, label=label)
    va = candidate_features(val, repeat, label=label)
    with torch.no_grad():
        return choice_metrics(value(va["features"]).squeeze(-1), va["rewards"], va["group"], success)


LABEL_NAMES = {"rewards": "env reward", "values": "oracle-P value"}


def _choice_row(name: str, signal: str, m: dict) -> str:
    return (f"| {name} | {signal} | {m['pairwise']:.3f} ({m['pairs']} pairs) | {m['pick_success']:.3f} | "
            f"{m['random_success']:.3f} | {m['best_success']:.3f} | {m['pick_value']:.3f} | {m['random_value']:.3f} | "
            f"{m['best_value']:.3f} | {m['value_gain']:.2f} | {m['decisive_gain']:.2f} ({m['decisive']}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worldmodel", action="append", required=True,
                    help="a world model with an outcome head (train_outcome.py); repeat to compare several")
    ap.add_argument("--run", default="artifacts/closed_loop/lift/run.json",
                    help="a main-job run.json naming the student stage")
    ap.add_argument("--student", default=None, help="default: the run's student stage")
    ap.add_argument("--rollouts", nargs="+", required=True, help="held-out rollout files")
    ap.add_argument("--counterfactual", nargs="*", default=[], help="held-out counterfactual .npz files")
    ap.add_argument("--control-train", nargs="+", action="append", default=[],
                    help="counterfactual .npz files of train states: fit the no-imagination control on them "
                         "(repeat for one control row per set of files)")
    ap.add_argument("--label", default="rewards", choices=("rewards", "values"),
                    help="what a counterfactual candidate's choice is judged (and the control fitted) by: the "
                         "env's reward or oracle-P's privileged value (files collected with values)")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--success", type=float, default=1.0, help="the env's reward at success")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    add_section_args(ap, "Outcome head: does the world model see the lift that its imagined video loses? (Lift)")
    args = ap.parse_args()
    setup_torch(args.threads)

    import torch

    from agent.mpc import DEFAULT_WEIGHTS, plan_objective
    from worldmodel.data import RolloutWindows
    from worldmodel.judge.student import StudentReward
    from agent.counterfactual import LABELS, candidate_labels, load_counterfactuals
    from worldmodel.outcome import CandidateClips, choice_metrics, concat_features, imagine_features
    from worldmodel.world_model import WorldModel

    student_path = resolve(args.student) if args.student else \
        resolve(json.loads(resolve(args.run).read_text())["stages"]["student"]) / "student.pt"
    student = StudentReward.from_checkpoint(student_path)
    models = []
    for path in args.worldmodel:
        wm = WorldModel.from_checkpoint(resolve(path))
        if wm.dynamics.outcome is None:
            raise SystemExit(f"{path} has no outcome head; fit one with experiments/train_outcome.py")
        models.append((resolve(path), wm))
    windows = RolloutWindows([resolve(p) for p in args.rollouts], window=args.window,
                             action_repeat=models[0][1].action_repeat, stride=args.stride)
    cands = [load_counterfactuals(resolve(p)) for p in args.counterfactual]

    def score(clips, actions):
        instr = torch.zeros(len(clips), dtype=torch.long)      # Lift: "lift the red cube"
        out = student.score(clips.cpu(), instr)
        return {"student objective": plan_objective(out, DEFAULT_WEIGHTS), "student IF": out["dims"][:, 0],
                "student progress": torch.as_tensor(out["shaping"])[:, 2]}

    rows = ["| world model | signal | AUC, all clips | AUC, undecided clips |", "|---|---|---|---|"]
    choice = ["| world model | signal | within-state pairwise | top pick reaches success | random pick | "
              "best candidate | top pick's true value | random pick's | best | value gain | value gain where a "
              "candidate succeeds (states) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    cf_success = LABELS[args.label]
    trunks, label, undecided, cf = [], None, None, None
    for path, wm in models:
        name = f"`{path.parent.name}`"
        trunk = {k: v for k, v in wm.state_dict().items() if not k.startswith("dynamics.outcome.")}
        # heads on one trunk imagine the same clips (same seed): the student's rows once per trunk
        new_trunk = not any(trunk.keys() == t.keys() and all(torch.equal(trunk[k], t[k]) for k in t) for t in trunks)
        trunks.append(trunk)
        res = imagine_features(wm, windows, draws=args.draws, seed=args.seed, score=score if new_trunk else None)
        rewards = res["rewards"].numpy()
        label = rewards[:, -1] >= args.success - 1e-6
        undecided = rewards[:, 0] < args.success - 1e-6
        signals = {"outcome (last step)": res["outcome"][:, -1].numpy(), "outcome (mean)": res["outcome"].mean(1).numpy(),
                   **{k: v.numpy() for k, v in res.get("scores", {}).items()}}
        for sig in (k for k in SIGNALS if k in signals):
            v = signals[sig]
            rows.append(f"| {name} | {sig} | {auc(v, label):.3f} | {auc(v[undecided], label[undecided]):.3f} |")
        if cands:
            parts = [imagine_features(wm, CandidateClips(d["image"], d["actions"], candidate_labels(d, args.label)[0],
                                                         wm.action_repeat),
                                      draws=1, seed=args.seed, score=score if new_trunk else None) for d in cands]
            cf = concat_features(parts)
            sig = {"outcome (mean)": torch.cat([p["outcome"] for p in parts]),
                   **{k: torch.cat([p["scores"][k] for p in parts])[:, None] for k in parts[0].get("scores", {})}}
            for k in ("outcome (mean)", "student objective", "student IF", "student progress"):
                if k in sig:
                    m = choice_metrics(sig[k], cf["rewards"], cf["group"], cf_success)
                    choice.append(_choice_row(name, k, m))
    for files in args.control_train if cands else []:
        train = [load_counterfactuals(resolve(p)) for p in files]
        m = no_imagination_control(train, cands, models[0][1].action_repeat, cf_success, args.seed, args.label)
        states = sum(len(d["seed"]) for d in train)
        choice.append(_choice_row("none (control)", f"start frame + actions ({states} train states)", m))
    n = len(windows)
    body = "\n".join([
        f"World models (with outcome heads) {', '.join(f'`{p.parent.name}/{p.name}`' for p, _ in models)}, student "
        f"`{student_path.parent.name}` (its rows once per distinct world-model trunk: heads on one trunk imagine the "
        f"same clips). Between starts: {n} held-out clips of {args.window} model steps (stride {args.stride} control "
        f"steps) from {len(windows.frames)} episodes of {', '.join(Path(p).name for p in args.rollouts)}, "
        f"{args.draws} imagined draws each ({len(label)} imagined clips); {int(label.sum())} end in success; "
        f"undecided clips (first step not yet a success): {int(undecided.sum())}, of which "
        f"{int((label & undecided).sum())} end in success.", "", *rows,
        *(["", f"Within a state: choosing among one held-out state's candidates ({int(cf['group'].max()) + 1} states "
               f"of {', '.join(Path(p).name for p in args.counterfactual)}, one imagined draw per candidate; pairs "
               f"ordered against the candidates' mean true {LABEL_NAMES[args.label]}, success = the success reward "
               "within the plan):", "", *choice] if cf is not None else [])])
    publish(args, body)


if __name__ == "__main__":
    main()
