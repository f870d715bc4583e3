"""The stage cache: build each missing artifact of the pipeline, reuse every one that matches.

A stage (collect, tokenizer, worldmodel, bench, student, aligned, prior) is one of the stage
scripts' ``run(cfg)`` functions, called with a config composed from its Hydra file
(``experiments/conf/<script>.yaml``) plus the overrides the main job's preset gives.
Its **key** is a hash of the stage name, its semantic config (paths, thread counts
and progress flags left out) and the keys of the stages it reads, so a change anywhere
upstream changes every key downstream. Its artifacts live in::

    <artifacts>/stages/<stage>-<key[:12]>/      # e.g. artifacts/stages/tokenizer-3f2a.../last.pt
        stage.json                              # written last, atomically: the "finished" mark

A stage whose folder has a ``stage.json`` with its key, and files of the size and hash it
recorded, is reused; otherwise it runs (an interrupted stage resumes: the stage scripts
resume from their own checkpoints in the same folder; a finished stage whose files changed
is rebuilt from nothing, with a warning) and ``stage.json`` is written when it returns.
Runs that share an artifacts folder build each stage once: the builder holds an OS file
lock (``<artifacts>/stages/.<stage>-<key>.lock``), a second run waits for it and then
reuses the result.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

import envs
from envs.rollouts import find_rollouts
from experiments.common import ROOT, resolve

CONF_DIR = ROOT / "experiments" / "conf"
#: Config keys that do not change what a stage produces.
NON_SEMANTIC = {"artifacts", "out", "out_dir", "threads", "workers", "progress", "hydra"}
#: Options added after artifacts were built, at the value that reproduces the old behaviour
#: exactly (dotted path in the stage config -> value): left out of the key at that value,
#: so adding an option does not invalidate every finished stage.
NEUTRAL_DEFAULTS = {"prior.train.balance": "none", "prior.train.colour_swap": 0.0,
                    "prior.model.instruction_film": False, "student.model.members": 1,
                    "tokenizer.model.pixel_context": False, "student.model.depth": 0,
                    "student.model.colour": False, "student.model.action_path": False,
                    "student.model.tracks": False, "student.train.shaping_rank_weight": 0.0,
                    "bench.wm_action_noise": [], "bench.wm_opposite": False, "prior.model.instruction_input": True,
                    "dynamics.model.proprio_bins": 0, "bench.wm_relabel": []}

#: The instruction vocabulary's key (:data:`envs.vocab.VOCAB_KEY`) when stage keys began to
#: read it: stages keyed before then were built under exactly this vocabulary.
NEUTRAL_VOCAB = "c5047f2438ef6998"


@dataclass
class StageResult:
    name: str
    key: str
    dir: Path
    reused: bool
    manifest: dict = field(default_factory=dict)


@contextmanager
def _hydra_ready():
    """Compose configs whether or not a Hydra app is already running."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            yield


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """A stage script's config (``experiments/conf/<config_name>.yaml``) with overrides."""
    from hydra import compose as hydra_compose

    if not (CONF_DIR / f"{config_name}.yaml").exists():
        raise FileNotFoundError(f"no stage config {CONF_DIR / config_name}.yaml")
    with _hydra_ready():
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def drop_neutral(x, neutral: dict, skip=frozenset(), path: str = ""):
    """``x`` (nested dicts and lists) without the keys in ``skip`` and the dotted paths whose
    value is their ``neutral`` one: options added later, at the value that reproduces the old
    behaviour, leave a key (or an identity) as it was before they existed."""
    if isinstance(x, dict):
        return {k: drop_neutral(v, neutral, skip, f"{path}{k}.") for k, v in sorted(x.items()) if k not in skip
                and not (f"{path}{k}" in neutral and v == neutral[f"{path}{k}"])}
    if isinstance(x, list):
        return [drop_neutral(v, neutral, skip, path) for v in x]
    return x


def semantic(cfg: DictConfig | dict) -> dict:
    """The part of a config that decides the artifact (see :data:`NON_SEMANTIC` and
    :data:`NEUTRAL_DEFAULTS`)."""
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return drop_neutral(d, NEUTRAL_DEFAULTS, NON_SEMANTIC)


def stage_key(name: str, config: dict, inputs: dict[str, str]) -> str:
    blob = json.dumps({"stage": name, "config": config, "inputs": dict(sorted(inputs.items()))},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_table(folder: Path) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` of every file a finished stage vouches for:
    everything in ``folder`` but ``stage.json`` and hidden (temporary) files."""
    return {str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": _sha256(path)}
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != "stage.json"
            and not any(part.startswith(".") for part in path.relative_to(folder).parts)}


def _changed_files(folder: Path, table: dict[str, dict]) -> list[str]:
    """The vouched-for files that are missing or differ now (size first: no hashing when one is off)."""
    bad = [rel for rel, want in table.items()
           if not (folder / rel).is_file() or (folder / rel).stat().st_size != want["size"]]
    return bad or [rel for rel, want in table.items() if _sha256(folder / rel) != want["sha256"]]


def _finished(name: str, key: str, out: Path, artifacts, log) -> StageResult | None:
    """The finished stage in ``out`` if its ``stage.json`` has ``key`` and its files are as
    it recorded them (a stage.json written before files were recorded is trusted as is)."""
    mark = out / "stage.json"
    if not mark.exists():
        return None
    try:
        manifest = json.loads(mark.read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {}
    if manifest.get("key") != key:
        log(f"[pipeline] {name}: {mark} is unreadable or stale; rebuilding")
        return None
    changed = _changed_files(out, manifest["files"]) if "files" in manifest else []
    if changed:
        warnings.warn(f"stage {name} in {out}: {len(changed)} file(s) changed since it finished "
                      f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); rebuilding it", stacklevel=3)
        return None
    log(f"[pipeline] {name}: reusing {out.relative_to(resolve(artifacts))} "
        f"(built {manifest.get('finished_at', '?')}, {manifest.get('wall_s', 0):.0f} s)")
    return StageResult(name, key, out, True, manifest)


@contextmanager
def stage_lock(out: Path, name: str, log: Callable[[str], None] = print):
    """Hold the build lock of the stage folder ``out``: one builder per stage key across
    processes and machines sharing the folder (an OS file lock, released by the OS when its
    holder dies, so a killed run never blocks the next). A run that has to wait is told who
    holds it."""
    from filelock import FileLock, Timeout

    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out.parent / f".{out.name}.lock"))
    holder = out.parent / f".{out.name}.holder"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            who = json.loads(holder.read_text())
            who = f"pid {who['pid']} on {who['host']} since {who['since']}"
        except (OSError, ValueError, KeyError):
            who = "another run"
        log(f"[pipeline] {name}: being built by {who}; waiting for it")
        lock.acquire()
    try:
        holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield
    finally:
        lock.release()


def run_stage(name: str, config: dict, inputs: dict[str, str], build: Callable[[Path], dict | None], *,
              artifacts: str | os.PathLike = "artifacts", log: Callable[[str], None] = print) -> StageResult:
    """Reuse ``<artifacts>/stages/<name>-<key>`` if finished, else ``build(dir)`` it.

    ``config`` is the stage's semantic config, ``inputs`` maps upstream stage names to
    their keys; ``build`` gets the stage folder and returns metrics to record. One run builds
    a stage at a time (:func:`stage_lock`); a run that waited reuses what the other built.
    ``stage.json`` records each file's size and hash; a finished stage whose files changed
    since is rebuilt from an empty folder, with a warning.
    """
    key = stage_key(name, config, inputs)
    out = resolve(artifacts) / "stages" / f"{name}-{key[:12]}"
    done = _finished(name, key, out, artifacts, log)
    if done is not None:
        return done
    with stage_lock(out, name, log):
        done = _finished(name, key, out, artifacts, lambda _: None)   # built while this run waited?
        if done is not None:
            log(f"[pipeline] {name}: reusing {out.relative_to(resolve(artifacts))} (built by another run)")
            return done
        mark = out / "stage.json"
        if mark.exists():        # finished once, but its files changed: start from nothing
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        log(f"[pipeline] {name}: building in {out}")
        t0 = time.time()
        metrics = build(out) or {}
        manifest = {"stage": name, "key": key, "config": config, "inputs": inputs,
                    "metrics": _jsonable(metrics), "wall_s": time.time() - t0,
                    "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "files": file_table(out)}
        tmp = mark.with_name(f".stage.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, mark)
    log(f"[pipeline] {name}: done in {manifest['wall_s']:.0f} s")
    return StageResult(name, key, out, False, manifest)


def _jsonable(x):
    try:
        return json.loads(json.dumps(x, default=float))
    except (TypeError, ValueError):
        return str(x)


def run_script_stage(name: str, script: str, overrides: list[str], inputs: dict[str, str],
                     paths: dict[str, str], *, artifacts: str | os.PathLike = "artifacts",
                     log: Callable[[str], None] = print) -> StageResult:
    """Run ``experiments/<script>.py``'s ``run(cfg)`` as a cached stage.

    ``overrides`` choose the stage's config (hashed); ``paths`` are extra overrides
    naming input files (not hashed: their content is covered by ``inputs``); the
    stage's own output folder is passed as ``out_dir`` (and ``out``, when the config
    has one, as ``<dir>/<basename of out>``).
    """
    import importlib

    base = compose(script, [*overrides, f"artifacts={artifacts}"])
    config = semantic(base)
    for dotted in paths:  # input paths are not part of the key: `inputs` covers their content
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    module = importlib.import_module(f"experiments.{script}")

    def build(out: Path):
        extra = [f"{k}={v}" for k, v in paths.items()]
        if "out_dir" in base:
            extra.append(f"out_dir={out}")
        if "out" in base:   # a file name keeps its name inside the stage folder; null -> the folder
            extra.append(f"out={out if base.out is None else out / Path(str(base.out)).name}")
        return module.run(compose(script, [*overrides, f"artifacts={artifacts}", *extra]))
    return run_stage(name, config, inputs, build, artifacts=artifacts, log=log)


def path_list(paths) -> str:
    """A Hydra override value for a list of paths."""
    return "[" + ",".join(str(p) for p in paths) + "]"


#: Stages in build order, and the stages each one reads. ``prior`` is the instruction-conditioned
#: action prior, ``play_prior`` the same diffusion prior blind to the instruction (its overrides
#: say so), trained on the same pooled rollouts.
STAGES = ("collect", "tokenizer", "worldmodel", "bench", "student", "aligned", "prior", "play_prior")
DEPENDS = {"collect": (), "tokenizer": ("collect",), "worldmodel": ("tokenizer",), "bench": ("worldmodel",),
           "student": ("bench",), "aligned": ("worldmodel", "student"), "prior": ("collect",),
           "play_prior": ("collect",)}


def needed(stages) -> set[str]:
    """The stages (one name or several) together with everything they read."""
    todo, need = [stages] if isinstance(stages, str) else list(stages), set()
    while todo:
        s = todo.pop()
        if s not in DEPENDS:
            raise KeyError(f"unknown stage {s!r}; stages: {STAGES}")
        if s not in need:
            need.add(s)
            todo += DEPENDS[s]
    return need


def build(pcfg: DictConfig, stages, *, artifacts: str | os.PathLike = "artifacts",
          log: Callable[[str], None] = print) -> dict[str, StageResult | list[StageResult]]:
    """Build (or reuse) ``stages`` (a name or several) and all they read; returns them by name.

    ``pcfg`` is the main job's ``pipeline`` config: ``envs`` (tasks whose rollouts
    train the models), ``collect`` (agent, episodes per split) and, per later stage,
    the overrides of its script's config.
    """
    need = needed(stages)
    done: dict = {}

    def collect(env: str, split: str, n: int, seed_start: int = 0) -> StageResult:
        return run_script_stage(
            "collect", "collect",
            [f"env={env}", f"agent={pcfg.collect.agent}", f"episodes={n}", f"split={split}",
             *([f"seed_start={seed_start}"] if seed_start else []), *pcfg.collect.get("overrides", [])],
            collect_inputs(), {}, artifacts=artifacts, log=log)

    collected = [collect(env, split, int(pcfg.collect.episodes[split])) for env in pcfg.envs for split in ("train", "val")]
    done["collect"] = collected
    rollouts = collected_rollouts(collected)
    coll_keys = {f"collect{i}": r.key for i, r in enumerate(collected)}
    data = {"data.train": path_list(rollouts["train"]), "data.val": path_list(rollouts["val"])}
    if "tokenizer" in need:
        done["tokenizer"] = run_script_stage("tokenizer", "train_tokenizer", list(pcfg.tokenizer),
                                             coll_keys, data, artifacts=artifacts, log=log)
    if "worldmodel" in need:
        # `collect.worldmodel_extra`: more episodes of the same agent, on the train seeds after the
        # main collection, that only the world model trains on (the other stages keep their keys)
        wm_keys, wm_data = coll_keys, data
        n_extra = int(pcfg.collect.get("worldmodel_extra") or 0)
        if n_extra:
            extra = [collect(env, "train", n_extra, int(pcfg.collect.episodes.train)) for env in pcfg.envs]
            done["collect_extra"] = extra
            wm_keys = {**coll_keys, **{f"extra{i}": r.key for i, r in enumerate(extra)}}
            wm_data = {**data, "data.train": path_list(rollouts["train"] + collected_rollouts(extra)["train"])}
        done["worldmodel"] = worldmodel_stage(pcfg, done["tokenizer"], wm_keys, wm_data, artifacts=artifacts, log=log)
    if "bench" in need:
        from worldmodel.judge.teacher import TEACHER_VERSION  # a rule change rebuilds the bench

        wm = done["worldmodel"]
        done["bench"] = run_script_stage(
            "bench", "build_bench", list(pcfg.bench),
            {**coll_keys, "worldmodel": wm.key, "teacher": str(TEACHER_VERSION)},
            {"rollouts": path_list(rollouts["train"] + rollouts["val"]), "worldmodel": wm.dir / "worldmodel.pt"},
            artifacts=artifacts, log=log)
    if "student" in need:
        bench = done["bench"]
        done["student"] = run_script_stage("student", "distill_reward", list(pcfg.student), {"bench": bench.key},
                                           {"bench_file": bench.dir / "bench.h5"}, artifacts=artifacts, log=log)
    if "aligned" in need:
        done["aligned"] = aligned_stage(pcfg, done, coll_keys, rollouts["train"], artifacts=artifacts, log=log)
    for name in ("prior", "play_prior"):
        if name in need:
            done[name] = run_script_stage(name, "train_prior", list(pcfg.get(name, [])), coll_keys, data,
                                          artifacts=artifacts, log=log)
    return done


def collect_inputs() -> dict[str, str]:
    """What a collect stage's key reads besides its config: the render version and the
    instruction vocabulary (:data:`envs.vocab.VOCAB_KEY`; left out at :data:`NEUTRAL_VOCAB`,
    the vocabulary the first stages were keyed under, so those stay reusable)."""
    from envs.vocab import VOCAB_KEY

    return {"render": str(envs.RENDER_VERSION), **({} if VOCAB_KEY == NEUTRAL_VOCAB else {"vocab": VOCAB_KEY})}


def collected_rollouts(collected: list[StageResult]) -> dict[str, list[Path]]:
    """The rollout files of built collect stages, by split (``train``, ``val``)."""
    out: dict[str, list[Path]] = {"train": [], "val": []}
    for res in collected:
        out[res.manifest["config"]["split"]] += find_rollouts(res.dir)
    return out


def worldmodel_stage(pcfg: DictConfig, tokenizer: StageResult, inputs: dict[str, str], data: dict[str, str], *,
                     extra: list[str] = (), init: StageResult | None = None,
                     artifacts: str | os.PathLike = "artifacts", log: Callable[[str], None] = print) -> StageResult:
    """The dynamics pre-training stage on ``data`` (``data.train`` / ``data.val`` overrides);
    with ``init`` (a built world-model stage) it fine-tunes that model's dynamics instead
    of starting from scratch (the flywheel), ``extra`` overrides on top of the preset's."""
    keys = {**inputs, "tokenizer": tokenizer.key, **({"init": init.key} if init else {})}
    paths = {**data, "tokenizer_ckpt": tokenizer.dir / "last.pt",
             **({"init_ckpt": init.dir / MODEL_FILES["worldmodel"]} if init else {})}
    return run_script_stage("worldmodel", "train_worldmodel", [*pcfg.worldmodel, *extra], keys, paths,
                            artifacts=artifacts, log=log)


def aligned_stage(pcfg: DictConfig, done: dict, inputs: dict[str, str], train_rollouts: list[Path], *,
                  extra: list[str] = (), artifacts: str | os.PathLike = "artifacts",
                  log: Callable[[str], None] = print) -> StageResult:
    """GRPO alignment of ``done["worldmodel"]`` with ``done["student"]`` (the bench stage's
    teacher refreshes it), contexts from ``train_rollouts``; ``extra`` overrides on top."""
    wm, student, bench = done["worldmodel"], done["student"], done["bench"]
    return run_script_stage(
        "aligned", "align", [*pcfg.align, *extra], {**inputs, "worldmodel": wm.key, "student": student.key},
        {"worldmodel_ckpt": wm.dir / "worldmodel.pt", "student_ckpt": student.dir / "student.pt",
         "data.train": path_list(train_rollouts), "refresh.old_data": bench.dir / "bench.h5",
         "teacher": bench.dir / "teacher.json"},
        artifacts=artifacts, log=log)


#: The file each model stage leaves in its folder.
MODEL_FILES = {"tokenizer": "last.pt", "worldmodel": "worldmodel.pt", "bench": "bench.h5",
               "student": "student.pt", "aligned": "worldmodel.pt", "prior": "prior.pt", "play_prior": "prior.pt",
               "sac": "sac.zip",
               "sac_ref": "sac.zip"}


def model_path(stages: dict, name: str) -> Path:
    """The artifact file of a built stage, with a clear error when it was not built."""
    if name not in stages:
        raise KeyError(f"stage {name!r} was not built (built: {sorted(stages)})")
    path = stages[name].dir / MODEL_FILES[name]
    if not path.exists():
        raise FileNotFoundError(f"stage {name!r} finished but {path} is missing; delete "
                                f"{stages[name].dir} and re-run to rebuild it")
    return path
