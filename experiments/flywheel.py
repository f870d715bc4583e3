"""The data flywheel: the MPC agent's own rollouts fine-tune and re-align the world model,
round after round, and each round is scored by closed-loop success.

    python experiments/flywheel.py                              # Lift, 2 rounds on the main job's models
    python experiments/flywheel.py flywheel.rounds=3 flywheel.episodes=30 workers=2
    python experiments/flywheel.py flywheel.rounds=1 flywheel.episodes=200 flywheel.collector=prior_random
    python experiments/flywheel.py preset=tiny                  # tests: seconds per stage

Uses the main job's config (``experiments/conf/closed_loop.yaml``: env, agent, planner,
preset, ``pipeline``) plus its ``flywheel`` section. Round 0 is the main job's model
stack (built by :mod:`experiments.pipeline` when missing). Round ``r``:

1. **collect** ``flywheel.episodes`` episodes of the main agent (``agent``, default
   ``mpc_prior``) planning with round ``r-1``'s aligned world model -- or of
   ``flywheel.collector``, e.g. ``prior_random``, ~20x faster to collect -- on TRAIN seeds
   (offset ``flywheel.seed_start + (r-1) * episodes``; never test seeds), recorded in
   the rollout format of :mod:`envs.rollouts` with segmentation -- a cached stage
   ``flycollect-<key>`` keyed on the models that acted;
2. **fine-tune** round ``r-1``'s pre-trained world model (``init_ckpt``) on the noisy
   rollouts plus every flywheel rollout so far (``flywheel.worldmodel`` overrides);
3. **re-align** the fine-tuned model with GRPO and the same student reward
   (``flywheel.align`` overrides), contexts from all training rollouts;
4. **evaluate** the main agent with round ``r``'s aligned model on the main job's
   held-out test seeds (same seeds every round: paired McNemar tests vs round 0).

Every stage is cached (re-running resumes; finished episodes are skipped). Round 0's
evaluation is the main job's own (``<out_dir>/<agent>/``, reused when its identity
matches). Writes ``<out_dir>/flywheel/``: ``results.md`` (success per round with a 95%
interval, McNemar vs round 0, the collected episodes' success, the fine-tuned model's
val CE, the imagined-vs-real gap), ``flywheel.json``, ``success.png`` and per round
``round_<r>/<agent>/`` (episodes, videos).
"""
from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from agent.collect import collect
from agent.evaluate import mcnemar
from envs.splits import split_seeds
from experiments import pipeline
from experiments.closed_loop import (
    evaluate_method,
    make_method,
    method_identity,
    method_spec,
    methods,
    plot_success,
    stages_for,
    world_model_stage,
)
from experiments.common import resolve, save_results, setup_torch


def collector(cfg: DictConfig) -> str:
    """The method whose episodes a round collects: ``flywheel.collector``, or the main agent
    when it is null. A cheaper collector (e.g. ``prior_random``: the action prior's samples
    picked at random, no imagination) gives many more episodes per round of the same
    proposals the MPC chooses among."""
    name = cfg.flywheel.get("collector") or cfg.agent.name
    if method_spec(name).builder == "sac":
        raise ValueError(f"flywheel.collector={name}: an SB3 agent is trained on the fly, not a collector; "
                         f"use the main agent (null), prior_random, prior, scripted or noisy")
    return name


def collect_stage(cfg: DictConfig, stages: dict, rnd: int) -> pipeline.StageResult:
    """Round ``rnd``'s rollouts of the collector (:func:`collector`) acting with ``stages``'
    models (cached)."""
    fly, method = cfg.flywheel, collector(cfg)
    n, start = int(fly.episodes), int(fly.seed_start) + (rnd - 1) * int(fly.episodes)
    after = int(fly.get("after_success", 0))      # steps recorded past each success (collect.yaml)
    config = {"round": rnd, "episodes": n, "seed_start": start, "env": cfg.env.id,
              "agent": method_identity(method, cfg, stages), **({"after_success": after} if after else {})}

    def build(out: Path) -> dict:
        agent = make_method(method, cfg, stages)
        return collect(cfg.env.id, agent, n, out / "rollouts.hdf5", split="train", start=start,
                       workers=cfg.workers, env_kwargs=OmegaConf.to_container(cfg.env.kwargs),
                       after_success=after)
    return pipeline.run_stage("flycollect", config, {}, build, artifacts=cfg.artifacts)


def _row(rnd: int, summary: dict, base: dict, extra: dict) -> dict:
    t = mcnemar(summary["success_per_seed"], base["success_per_seed"]) if rnd else None
    return {"round": rnd, "successes": summary["successes"], "episodes": summary["episodes"],
            "success_rate": summary["success_rate"], "success_ci95": summary["success_ci95"],
            "mcnemar_vs_round0": t, "imagination_gap": summary.get("imagination_gap"), **extra}


def table(rows: list[dict]) -> str:
    """Markdown: one row per round."""
    out = ["| round | success | 95% CI | vs round 0 (only this / only round 0, p) | collected (success) | "
           "flywheel episodes in training | world model val CE | imagined != real | round wall s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["mcnemar_vs_round0"]
        vs = "-" if t is None else f"{t['a_only']} / {t['b_only']}, p = {t['p']:.3f}"
        col = "-" if r.get("collected") is None else f"{r['collected']} ({r['collected_success']:.2f})"
        ce = "-" if r.get("val_ce") is None else f"{r['val_ce']:.3f}"
        g = r.get("imagination_gap")
        gap = "-" if not g else f"{g['disagree_rate']:.2f} ({g['optimistic_rate']:.2f} optimistic)"
        out.append(f"| {r['round']} | {r['successes']}/{r['episodes']} = {r['success_rate']:.2f} | "
                   f"[{r['success_ci95'][0]:.2f}, {r['success_ci95'][1]:.2f}] | {vs} | {col} | "
                   f"{r.get('flywheel_episodes', 0)} | {ce} | {gap} | {r.get('wall_s', 0):.0f} |")
    return "\n".join(out)


def run(cfg: DictConfig) -> dict:
    """The importable flywheel; returns ``{"rounds": [...], "wall_s": ...}``."""
    setup_torch(cfg.threads)
    method, fly = cfg.agent.name, cfg.flywheel
    if world_model_stage(method) != "aligned":
        raise ValueError(f"the flywheel re-trains the aligned world model; agent={method} does not plan with it "
                         f"(use one of {[m for m in methods() if world_model_stage(m) == 'aligned']})")
    if int(fly.rounds) < 1 or int(fly.episodes) < 1:
        raise ValueError(f"flywheel.rounds and flywheel.episodes must be >= 1, got {fly.rounds}, {fly.episodes}")
    collecting = collector(cfg)
    t0 = time.time()
    stages = pipeline.build(cfg.pipeline, sorted({*stages_for(method), *stages_for(collecting), "aligned"}),
                            artifacts=cfg.artifacts)
    rollouts = pipeline.collected_rollouts(stages["collect"])
    inputs = {f"collect{i}": r.key for i, r in enumerate(stages["collect"])}
    seeds = split_seeds(cfg.split, cfg.episodes, cfg.seed_start)
    out = resolve(cfg.out_dir)
    base = evaluate_method(method, cfg, stages, seeds, out / method)   # round 0 = the main job's episodes
    rows = [_row(0, base, base, {"val_ce": stages["worldmodel"].manifest.get("metrics", {}).get("ce"),
                                 "wall_s": time.time() - t0, "world_model": str(stages["aligned"].dir)})]
    summaries, flown = [{**base, "agent": "round 0"}], []
    for rnd in range(1, int(fly.rounds) + 1):
        tr = time.time()
        got = collect_stage(cfg, stages, rnd)
        flown.append(got.dir / "rollouts.hdf5")
        inputs = {**inputs, f"flycollect{rnd}": got.key}
        train = rollouts["train"] + flown
        data = {"data.train": pipeline.path_list(train), "data.val": pipeline.path_list(rollouts["val"])}
        wm = pipeline.worldmodel_stage(cfg.pipeline, stages["tokenizer"], inputs, data, extra=list(fly.worldmodel),
                                       init=stages["worldmodel"], artifacts=cfg.artifacts)
        stages = {**stages, "worldmodel": wm}
        stages["aligned"] = pipeline.aligned_stage(cfg.pipeline, stages, inputs, train, extra=list(fly.align),
                                                   artifacts=cfg.artifacts)
        s = evaluate_method(method, cfg, stages, seeds, out / "flywheel" / f"round_{rnd}" / method)
        m = got.manifest.get("metrics", {})
        rows.append(_row(rnd, s, base, {"collected": m.get("episodes"), "collected_success": m.get("success_rate", 0.0),
                                        "flywheel_episodes": len(flown) * int(fly.episodes),
                                        "val_ce": wm.manifest.get("metrics", {}).get("ce"),
                                        "wall_s": time.time() - tr, "world_model": str(stages["aligned"].dir)}))
        summaries.append({**s, "agent": f"round {rnd}"})
        print(table(rows), flush=True)
    wall = time.time() - t0
    report = {"env_id": cfg.env.id, "agent": method, "collector": collecting, "seeds": seeds, "rounds": rows, "wall_s": wall,
              "flywheel": OmegaConf.to_container(fly)}
    save_results(out / "flywheel", report,
                 f"# Data flywheel: {cfg.env.id}, {method}, {len(seeds)} held-out seeds per round\n\n"
                 f"{table(rows)}\n\nEach round collects {fly.episodes} episodes of `{collecting}` on train seeds, "
                 f"fine-tunes the world model on all rollouts so far and re-aligns it. Wall time {wall:.0f} s.",
                 json_name="flywheel.json")
    plot_success(summaries, out / "flywheel" / "success.png", f"{cfg.env.id}: {method} per flywheel round")
    print(f"wall time {wall:.1f} s; results in {out / 'flywheel'}")
    return report


@hydra.main(config_path="conf", config_name="closed_loop", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
