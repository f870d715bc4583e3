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
from functools import lru_cache
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from agent.choose import UNSCORED_PICKS
from agent.collect import make_agent
from agent.evaluate import evaluate, paired_table, results_table
from envs.rollouts import atomic_path
from envs.splits import split_seeds
from experiments import pipeline
from experiments.common import resolve, save_results, setup_torch
from experiments.pipeline import CONF_DIR
from experiments.results import write_outcomes

#: The method registry: one ``experiments/conf/method/<name>.yaml`` per method.
METHOD_DIR = CONF_DIR / "method"
#: What a method file may say (``builder: planning`` files; see experiments/conf/method/).
#: Proposers: ``gaussian`` (the planner's own), ``prior`` (the instruction-conditioned action
#: prior), ``play`` (the play prior: the same diffusion prior blind to the instruction).
PROPOSERS, SCORERS, CADENCES = ("gaussian", "prior", "play"), \
    ("worldmodel", "simulator", "rendered_student", "random", None), ("planner", "prior_agent")
#: The pipeline stage whose action prior each learned proposer samples.
PRIOR_STAGES = {"prior": "prior", "play": "play_prior"}


def methods() -> list[str]:
    """Every registered method name."""
    return sorted(p.stem for p in METHOD_DIR.glob("*.yaml"))


@lru_cache(maxsize=None)
def method_spec(method: str) -> DictConfig:
    """A method's registry entry (``experiments/conf/method/<method>.yaml``), checked."""
    path = METHOD_DIR / f"{method}.yaml"
    if not path.exists():
        raise KeyError(f"unknown method {method!r}; known: {methods()} (add one as {METHOD_DIR}/<name>.yaml)")
    spec = OmegaConf.load(path)
    if spec.get("builder") == "planning" and "cadence" not in spec:
        spec.cadence = "planner"             # the planner section's execute and samples
    builder = spec.get("builder")
    if builder not in ("planning", "plain", "sac"):
        raise ValueError(f"{path}: builder must be planning, plain or sac, got {builder!r}")
    if builder == "planning":
        bad = [k for k, v, ok in (("proposer", spec.get("proposer"), PROPOSERS),
                                  ("scorer", spec.get("scorer"), SCORERS),
                                  ("cadence", spec.cadence, CADENCES)) if v not in ok]
        if bad:
            raise ValueError(f"{path}: bad {bad}; proposer in {PROPOSERS}, scorer in {SCORERS}, cadence in {CADENCES}")
        if spec.scorer == "worldmodel" and spec.get("world_model") not in ("aligned", "worldmodel"):
            raise ValueError(f"{path}: a worldmodel scorer needs world_model: aligned or worldmodel")
        if spec.scorer is None and spec.get("pick") not in UNSCORED_PICKS:
            raise ValueError(f"{path}: without a scorer, pick must be one of {UNSCORED_PICKS}")
    OmegaConf.set_readonly(spec, True)
    return spec


def world_model_stage(method: str) -> str | None:
    """The pipeline stage whose world model ``method`` imagines with (``None``: it imagines nothing)."""
    spec = method_spec(method)
    return spec.get("world_model") if spec.builder == "planning" and spec.scorer == "worldmodel" else None


def prior_stage(method: str) -> str | None:
    """The pipeline stage of the action prior ``method`` samples (``None``: it samples none)."""
    spec = method_spec(method)
    return PRIOR_STAGES.get(spec.proposer) if spec.builder == "planning" else None


def uses_prior(method: str) -> bool:
    return prior_stage(method) is not None


def stages_for(method: str) -> list[str]:
    """The pipeline stages a method's agent needs."""
    spec = method_spec(method)
    if spec.builder != "planning":
        return []
    need = [world_model_stage(method), "student"] if spec.scorer == "worldmodel" else []
    need += ["student"] if spec.scorer == "rendered_student" else []
    return need + ([prior_stage(method)] if uses_prior(method) else [])


def make_method(method: str, cfg: DictConfig, stages: dict):
    """An agent for a registered method (:func:`method_spec`): a configuration of the
    propose-and-choose agent (:mod:`agent.choose`) -- its proposer (Gaussian or the action
    prior) and scorer (world model + student, the true simulator + privileged value, the true
    simulator + student, or none: a first/random pick among the proposals) -- a plain agent
    of ``agent/collect.py``'s registry (scripted, noisy, random), or SB3 SAC."""
    spec = method_spec(method)
    if spec.builder == "sac":
        from agent.sb3 import SACAgent

        return SACAgent(str(pipeline.model_path(stages, method)), name=method)
    if spec.builder == "plain":
        kwargs = OmegaConf.to_container(cfg.agent.kwargs) if method == cfg.agent.name else {}
        return make_agent(method, **kwargs)
    planner = OmegaConf.to_container(cfg.planner)
    prior = str(pipeline.model_path(stages, prior_stage(method))) if uses_prior(method) else None
    if spec.scorer == "worldmodel":
        from agent.mpc import WorldModelMPC

        kwargs = {**OmegaConf.to_container(cfg.mpc), **OmegaConf.to_container(spec.mpc)}
        kwargs.pop("student", None)
        kwargs.pop("worldmodel", None)
        inspect = {"top_k": cfg.inspect.top_k, "random": cfg.inspect.random} if cfg.inspect.enabled else None
        if kwargs.get("reader_weight"):      # the colour perception fitted with the bench's teacher
            kwargs["reader"] = str(stages["bench"].dir / "perception.npz")
        return WorldModelMPC(planning_world_model(cfg, stages, world_model_stage(method)),
                             planning_student(cfg, stages), planner=planner, name=method, prior=prior,
                             inspect=inspect, **kwargs)
    if spec.scorer == "simulator":
        from agent.oracle import OracleP

        return OracleP(planner=planner, prior=prior)
    if spec.scorer == "rendered_student":
        from agent.oracle import OracleS

        return OracleS(planning_student(cfg, stages), planner=planner, prior=prior,
                       weights=OmegaConf.to_container(cfg.mpc.weights), threads=cfg.mpc.get("threads"))
    if spec.scorer == "random":
        from agent.choose import GaussianProposer, PlanningAgent, RandomScorer
        from agent.prior import PriorProposer

        return PlanningAgent(PriorProposer(prior) if prior else GaussianProposer(), RandomScorer(), planner=planner,
                             name=method, threads=cfg.mpc.get("threads"))
    from agent.prior import PriorAgent

    if spec.cadence == "prior_agent":     # the prior alone, as a diffusion policy
        return PriorAgent(prior, pick=spec.pick, **OmegaConf.to_container(cfg.prior_agent))
    # the MPC's proposal set (same cadence, same number of samples)
    return PriorAgent(prior, execute=planner.get("execute", 2), samples=planner["samples"], pick=spec.pick,
                      threads=cfg.prior_agent.get("threads"))


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


#: ``mpc`` and ``planner`` options at the value that reproduces the planner as it was before
#: they were declared: left out of a method's identity there, so finished episodes stay reusable.
IDENTITY_NEUTRAL = {"mpc.pessimism": 0.0, "mpc.student": None, "mpc.worldmodel": None,
                    "planner.pick_temperature": 1.0, "planner.pick_k": 1, "planner.switch_cost": 0.0,
                    "mpc.reader_weight": 0.0, "mpc.proprio_weight": 0.0}


def method_identity(method: str, cfg: DictConfig, stages: dict) -> dict:
    """What defines a method's episodes: its settings and the keys of the models it uses
    (saved episodes of another identity are not reused)."""
    spec = method_spec(method)
    ident = {"method": method, "env": OmegaConf.to_container(cfg.env)}
    planning = spec.builder == "planning"
    if planning and spec.cadence == "planner":
        ident["planner"] = OmegaConf.to_container(cfg.planner)
    if planning and spec.scorer == "rendered_student":
        ident.update(weights=OmegaConf.to_container(cfg.mpc.weights), student=stages["student"].key)
    if uses_prior(method):
        ident["prior"] = stages[prior_stage(method)].key
    if planning and spec.cadence == "prior_agent":
        ident["prior_agent"] = OmegaConf.to_container(cfg.prior_agent)
    if spec.builder == "sac":
        ident["sac"] = stages[method].key
    if cfg.get("instruction"):
        ident["instruction"] = cfg.instruction
    if world_model_stage(method) is not None:
        ident.update(mpc=OmegaConf.to_container(cfg.mpc), world_model=stages[world_model_stage(method)].key,
                     student=stages["student"].key)
    elif method == cfg.agent.name:    # a plain agent of the registry: its own kwargs
        ident["kwargs"] = OmegaConf.to_container(cfg.agent.kwargs)
    return pipeline.drop_neutral(ident, IDENTITY_NEUTRAL)


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
    if world_model_stage(method) is None or not cfg.get("imagination_gap", True) or "bench" not in stages:
        return None
    return str(stages["bench"].dir / "teacher.json")


def evaluate_method(method: str, cfg: DictConfig, stages: dict, seeds: list[int], out: Path) -> dict:
    """Run one method on ``seeds`` in the real simulator; its summary (episodes saved in ``out``)."""
    options = [{"instruction": cfg.instruction}] * len(seeds) if cfg.get("instruction") else None
    return evaluate(cfg.env.id, make_method(method, cfg, stages), seeds, out_dir=out, videos=cfg.videos, options=options,
                    workers=cfg.workers, env_kwargs=OmegaConf.to_container(cfg.env.kwargs), name=method,
                    identity=method_identity(method, cfg, stages), gap=gap_teacher(method, cfg, stages))


def check_instruction(cfg: DictConfig) -> None:
    """A fixed ``instruction`` must be one the evaluated task draws (fails before any build)."""
    if not cfg.get("instruction"):
        return
    import envs
    from envs.tasks import get_task
    from envs.vocab import instruction_id

    task = get_task(envs.ENV_IDS[cfg.env.id])
    if instruction_id(cfg.instruction) not in task.instruction_ids:
        raise ValueError(f"instruction={cfg.instruction!r} is not one of task {task.name}'s: {list(task.instructions)}")


def run(cfg: DictConfig) -> dict:
    """The importable main job; returns ``{"summaries": [...], "wall_s": ..., "stages": {...}}``."""
    setup_torch(cfg.threads)
    t0 = time.time()
    names = list(dict.fromkeys([cfg.agent.name, *cfg.baselines]))
    for name in names:      # an unknown method fails here, before anything is built
        method_spec(name)
    check_instruction(cfg)
    needed = sorted({s for m in names for s in stages_for(m)})
    stages = pipeline.build(cfg.pipeline, needed, artifacts=cfg.artifacts) if needed else {}
    for method in (m for m in names if method_spec(m).builder == "sac"):   # trained on the evaluated env itself
        stages[method] = pipeline.run_script_stage(method, "train_sac", [f"env_id={cfg.env.id}", *cfg.pipeline[method]],
                                                   {}, {}, artifacts=cfg.artifacts)
    t_built = time.time()
    seeds = split_seeds(cfg.split, cfg.episodes, cfg.seed_start)
    out = resolve(cfg.out_dir)
    summaries = []
    for method in names:
        summaries.append(evaluate_method(method, cfg, stages, seeds, out / method))
    table = results_table(summaries)
    if len(summaries) > 1:
        table += "\n\nPaired on the same seeds (exact McNemar test):\n\n" + paired_table(summaries[0], summaries[1:])
    wall = time.time() - t0
    report = {"env_id": cfg.env.id, "episodes": cfg.episodes, "seeds": seeds, "wall_s": wall,
              "build_s": t_built - t0, "preset": cfg.get("preset_name"),
              "config": OmegaConf.to_container(cfg, resolve=True),
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
    # through the package, not this script's globals: a launcher (--multirun) pickles `main`
    # into other processes, where only importable names resolve
    from experiments.closed_loop import run as run_job

    run_job(cfg)


if __name__ == "__main__":
    main()
