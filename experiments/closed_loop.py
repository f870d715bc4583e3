"""Main job: build what is missing, then run agents for N held-out episodes in the real simulator.

    python experiments/closed_loop.py                       # MPC on Lift, ~10 episodes, builds every stage
    python experiments/closed_loop.py preset=quick          # ~15 min from scratch
    python experiments/closed_loop.py agent=scripted baselines=[]     # no models needed
    python experiments/closed_loop.py preset=full env=stack            # sharded/resumable per episode

Every upstream artifact (rollouts, tokenizer, world model, benchmark set, student
reward, aligned world model) is built by :mod:`experiments.pipeline` when missing and
reused when its config and inputs match. Then the main agent and each baseline run on
the same held-out test seeds. Writes under ``<artifacts>/closed_loop/<env>/``: per
method ``<method>/{summary.json,episodes.jsonl,results.md,episodes/,videos/}`` (MPC
videos show the real episode next to the imagined future of the plan being executed),
``results.md`` (all methods, one table), ``success.png`` and ``run.json`` (wall time,
stage folders).
"""
from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from agent.collect import make_agent
from agent.evaluate import evaluate, paired_table, results_table
from envs.rollouts import atomic_path
from envs.splits import split_seeds
from experiments import pipeline
from experiments.common import resolve, save_results, setup_torch
from experiments.results import write_outcomes

#: Methods that plan with a world model, and the pipeline stage whose model they use.
WORLD_MODEL_METHODS = {
    "mpc": ("aligned", {}),                          # the aligned model, SWR rollouts
    "mpc_pretrained": ("worldmodel", {}),            # the same planner on the pre-trained model
    "mpc_noswr": ("aligned", {"rollout_mode": "full"}),   # plain autoregression (horizon > W)
    "mpc_prior": ("aligned", {}),                    # first iteration proposed by the action prior
    "mpc_prior_pretrained": ("worldmodel", {}),      # ... choosing with the pre-trained model
    "mpc_prior_noswr": ("aligned", {"rollout_mode": "full"}),  # ... imagining without SWR
}
#: Methods that use the learned action prior (agent/prior.py).
PRIOR_METHODS = ("mpc_prior", "mpc_prior_pretrained", "mpc_prior_noswr", "prior", "prior_random", "oracle_s_prior",
                 "oracle_p_prior")
#: Oracle-P variants: the planner in the true simulator with the privileged reward
#: (``oracle_p_prior``: the prior proposes, as in mpc_prior -- how well any choice among its
#: samples can do: the ceiling of the world model + student's choice).
PRIVILEGED_ORACLES = ("oracle_p", "oracle_p_prior")
#: Oracle-S variants: the planner in the true simulator, rendered candidates scored by the student.
STUDENT_ORACLES = ("oracle_s", "oracle_s_prior")
#: SB3 SAC on state observations (agent/sb3.py), trained on the evaluated env: at the world
#: model's data budget (`sac`) and a longer reference run (`sac_ref`).
SAC_METHODS = ("sac", "sac_ref")


def world_model_stage(method: str) -> str:
    """The pipeline stage whose world model ``method`` imagines with."""
    return WORLD_MODEL_METHODS[method][0]


def stages_for(method: str, cfg: DictConfig | None = None) -> list[str]:
    """The pipeline stages a method's agent needs (``cfg``: the closed-loop config, unused
    by the built-in methods)."""
    need = [world_model_stage(method), "student"] if method in WORLD_MODEL_METHODS else []
    need += ["student"] if method in STUDENT_ORACLES else []
    return need + (["prior"] if method in PRIOR_METHODS else [])


def make_method(method: str, cfg: DictConfig, stages: dict):
    """An agent for a method name: a world-model MPC variant, ``oracle_p``, the action
    prior (``prior``, ``prior_random``), or a plain agent of ``agent/collect.py``'s
    registry (scripted, noisy, random), SB3 SAC (``sac``, ``sac_ref``), or the oracles
    (``oracle_p``, ``oracle_p_prior``: true simulator + privileged reward; ``oracle_s``: true simulator,
    rendered candidates scored by the student)."""
    planner = OmegaConf.to_container(cfg.planner)
    if method in WORLD_MODEL_METHODS:
        from agent.mpc import WorldModelMPC

        stage, extra = world_model_stage(method), WORLD_MODEL_METHODS[method][1]
        kwargs = {**OmegaConf.to_container(cfg.mpc), **extra}
        kwargs.pop("student", None)
        kwargs.pop("worldmodel", None)
        if method in PRIOR_METHODS:
            kwargs["prior"] = str(pipeline.model_path(stages, "prior"))
        return WorldModelMPC(planning_world_model(cfg, stages, stage), planning_student(cfg, stages),
                             planner=planner, name=method, **kwargs)
    if method in SAC_METHODS:
        from agent.sb3 import SACAgent

        return SACAgent(str(pipeline.model_path(stages, method)), name=method)
    if method in ("prior", "prior_random"):
        from agent.prior import PriorAgent

        path = str(pipeline.model_path(stages, "prior"))
        if method == "prior":       # the prior alone, as a diffusion policy
            return PriorAgent(path, **OmegaConf.to_container(cfg.prior_agent))
        # the MPC's proposal set (same cadence, same number of samples) with a random pick
        return PriorAgent(path, execute=planner.get("execute", 2), samples=planner["samples"], pick="random",
                          threads=cfg.prior_agent.get("threads"))
    if method in PRIVILEGED_ORACLES:
        from agent.oracle import OracleP

        prior = str(pipeline.model_path(stages, "prior")) if method in PRIOR_METHODS else None
        return OracleP(planner=planner, prior=prior)
    if method in STUDENT_ORACLES:
        from agent.oracle import OracleS

        prior = str(pipeline.model_path(stages, "prior")) if method in PRIOR_METHODS else None
        return OracleS(planning_student(cfg, stages), planner=planner, prior=prior,
                       weights=OmegaConf.to_container(cfg.mpc.weights), threads=cfg.mpc.get("threads"))
    kwargs = OmegaConf.to_container(cfg.agent.kwargs) if method == cfg.agent.name else {}
    return make_agent(method, **kwargs)


def _override(cfg: DictConfig, key: str, default, what: str) -> str:
    """``mpc.<key>=PATH`` if given (it must exist), else the pipeline's ``default`` path."""
    path = cfg.mpc.get(key)
    if not path:
        return str(default)
    p = resolve(path)
    if not p.exists():
        raise FileNotFoundError(f"mpc.{key}={path}: no such {what} checkpoint ({p})")
    return str(p)


def planning_student(cfg: DictConfig, stages: dict) -> str:
    """The student checkpoint the planners score with: the pipeline's student stage, or
    ``mpc.student=PATH`` (e.g. another student with the same world model; the aligned
    model is still the one GRPO-trained against the pipeline's student)."""
    return _override(cfg, "student", pipeline.model_path(stages, "student"), "student")


def planning_world_model(cfg: DictConfig, stages: dict, stage: str) -> str:
    """The world model a world-model method imagines with: its pipeline stage (aligned or
    pre-trained), or ``mpc.worldmodel=PATH`` for every world-model method of the run (e.g.
    a model trained on more rollouts than the pipeline collects; the path is part of the
    method's identity, so its episodes are kept apart)."""
    return _override(cfg, "worldmodel", pipeline.model_path(stages, stage), "world-model")


#: ``mpc`` options at the value that reproduces the planner as it was before they were
#: declared: left out of a method's identity there, so finished episodes stay reusable.
MPC_NEUTRAL = {"pessimism": 0.0, "student": None, "worldmodel": None}


def mpc_identity(cfg: DictConfig) -> dict:
    """The ``mpc`` settings that define a world-model method's episodes (see :data:`MPC_NEUTRAL`)."""
    return {k: v for k, v in OmegaConf.to_container(cfg.mpc).items() if not (k in MPC_NEUTRAL and v == MPC_NEUTRAL[k])}


def method_identity(method: str, cfg: DictConfig, stages: dict) -> dict:
    """What defines a method's episodes: its settings and the keys of the models it uses
    (saved episodes of another identity are not reused)."""
    ident = {"method": method, "env": OmegaConf.to_container(cfg.env)}
    if method in WORLD_MODEL_METHODS or method in ("prior_random", *PRIVILEGED_ORACLES, *STUDENT_ORACLES):
        ident["planner"] = OmegaConf.to_container(cfg.planner)
    if method in STUDENT_ORACLES:
        ident.update(weights=OmegaConf.to_container(cfg.mpc.weights), student=stages["student"].key)
    if method in PRIOR_METHODS:
        ident["prior"] = stages["prior"].key
    if method == "prior":
        ident["prior_agent"] = OmegaConf.to_container(cfg.prior_agent)
    if method in SAC_METHODS:
        ident["sac"] = stages[method].key
    if method in WORLD_MODEL_METHODS:
        stage = world_model_stage(method)
        ident.update(mpc=mpc_identity(cfg), world_model=stages[stage].key,
                     student=stages["student"].key)
    elif method == cfg.agent.name:    # a plain agent of the registry: its own kwargs
        ident["kwargs"] = OmegaConf.to_container(cfg.agent.kwargs)
    return ident


def plot_success(summaries: list[dict], path: Path, title: str) -> None:
    """Bar chart of success per method with the 95% Wilson interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["agent"] for s in summaries]
    rate = [s["success_rate"] for s in summaries]
    lo = [s["success_rate"] - s["success_ci95"][0] for s in summaries]
    hi = [s["success_ci95"][1] - s["success_rate"] for s in summaries]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.2))
    ax.bar(names, rate, yerr=[lo, hi], capsize=4, color="#4c72b0")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success (95% CI)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def gap_teacher(method: str, cfg: DictConfig, stages: dict) -> str | None:
    """The teacher file that measures a world-model method's imagined-vs-real gap
    (``imagination_gap: true``), else ``None``."""
    if method not in WORLD_MODEL_METHODS or not cfg.get("imagination_gap", True) or "bench" not in stages:
        return None
    return str(stages["bench"].dir / "teacher.json")


def evaluate_method(method: str, cfg: DictConfig, stages: dict, seeds: list[int], out: Path) -> dict:
    """Run one method on ``seeds`` in the real simulator; its summary (episodes saved in ``out``)."""
    return evaluate(cfg.env.id, make_method(method, cfg, stages), seeds, out_dir=out, videos=cfg.videos,
                    workers=cfg.workers, env_kwargs=OmegaConf.to_container(cfg.env.kwargs), name=method,
                    identity=method_identity(method, cfg, stages), gap=gap_teacher(method, cfg, stages))


def run(cfg: DictConfig) -> dict:
    """The importable main job; returns ``{"summaries": [...], "wall_s": ..., "stages": {...}}``."""
    setup_torch(cfg.threads)
    t0 = time.time()
    methods = list(dict.fromkeys([cfg.agent.name, *cfg.baselines]))
    needed = sorted({s for m in methods for s in stages_for(m, cfg)})
    stages = pipeline.build(cfg.pipeline, needed, artifacts=cfg.artifacts) if needed else {}
    for method in (m for m in methods if m in SAC_METHODS):   # trained on the evaluated env itself
        stages[method] = pipeline.run_script_stage(method, "train_sac", [f"env_id={cfg.env.id}", *cfg.pipeline[method]],
                                                   {}, {}, artifacts=cfg.artifacts)
    t_built = time.time()
    seeds = split_seeds(cfg.split, cfg.episodes, cfg.seed_start)
    out = resolve(cfg.out_dir)
    summaries = []
    for method in methods:
        summaries.append(evaluate_method(method, cfg, stages, seeds, out / method))
    table = results_table(summaries)
    if len(summaries) > 1:
        table += "\n\nPaired on the same seeds (exact McNemar test):\n\n" + paired_table(summaries[0], summaries[1:])
    wall = time.time() - t0
    report = {"env_id": cfg.env.id, "episodes": cfg.episodes, "seeds": seeds, "wall_s": wall,
              "build_s": t_built - t0, "preset": cfg.get("preset_name"),
              "stages": {k: [str(r.dir) for r in v] if isinstance(v, list) else str(v.dir)
                         for k, v in stages.items()},
              "summaries": summaries}
    save_results(out, report, f"# Closed loop: {cfg.env.id}, {cfg.episodes} held-out episodes\n\n{table}\n\n"
                 f"wall time {wall:.0f} s (building artifacts {t_built - t0:.0f} s)", json_name="run.json")
    plot_success(summaries, out / "success.png", f"{cfg.env.id}: {cfg.episodes} held-out seeds")
    outcomes = write_outcomes(out, report)
    print(table)
    print(f"wall time {wall:.1f} s (building artifacts {t_built - t0:.1f} s); results in {out}\n"
          f"per-seed outcomes: {outcomes} (python -m experiments.results add {outcomes} records the run)")
    return report


@hydra.main(config_path="conf", config_name="closed_loop", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
