"""The closed loop: statistics, the hydra entry points, result files and videos."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from agent.base import Agent
from agent.collect import EpisodeResult, make_agent
from agent.evaluate import (
    FAILURES,
    instruction_table,
    results_table,
    success_by_instruction,
    summarize,
    wilson_interval,
)
from envs.rollouts import read_episode
from envs.splits import split_of, split_seeds
from envs.video import read_video_frame_count, write_video
from tests.conftest import CONF_DIR, LIFT


def _compose(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


# ----------------------------------------------------------------------------- statistics
def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=5e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=5e-4)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=5e-4) and hi == pytest.approx(0.7634, abs=5e-4)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=5e-4) and hi == pytest.approx(0.5962, abs=5e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # narrower with more episodes, always containing the point estimate
    assert np.diff(wilson_interval(30, 100)) < np.diff(wilson_interval(3, 10))
    for k, n in [(1, 7), (6, 7), (3, 50)]:
        lo, hi = wilson_interval(k, n)
        assert 0.0 <= lo < k / n < hi <= 1.0


def _result(seed, success, failure, length, wrong=False):
    return EpisodeResult(seed=seed, success=success, wrong_object=wrong, length=length,
                         instruction="lift the red cube", failure=failure)


def test_summarize_counts():
    results = [_result(0, True, "none", 40), _result(1, False, "missed_grasp", 100),
               _result(2, False, "wrong_object", 100, wrong=True), _result(3, True, "none", 60),
               _result(4, False, "drop", 100)]
    s = summarize(results)
    assert s["episodes"] == 5 and s["successes"] == 2
    assert s["success_rate"] == pytest.approx(0.4)
    assert s["success_ci95"] == pytest.approx(list(wilson_interval(2, 5)))
    assert s["wrong_object_rate"] == pytest.approx(0.2)
    assert s["failures"] == {"none": 2, "missed_grasp": 1, "drop": 1, "wrong_object": 1, "timeout": 0}
    assert set(s["failures"]) == set(FAILURES)
    assert s["length_mean"] == pytest.approx(80.0)
    assert s["length_std"] == pytest.approx(np.std([40, 100, 100, 60, 100]))
    json.dumps(s)  # JSON-serialisable
    empty = summarize([])
    assert empty["episodes"] == 0 and empty["success_rate"] == 0.0 and empty["success_ci95"] == [0.0, 1.0]
    table = results_table([{"env_id": "roboalign/Lift-v0", "agent": "x", **s}])
    assert "| roboalign/Lift-v0 | x | 5 | 0.40 |" in table
    assert s["success_by_instruction"] == {"lift the red cube": [2, 5]}
    assert instruction_table([{"agent": "x", **s}]) is None        # one instruction: no table


def test_success_by_instruction_table():
    green = EpisodeResult(seed=9, success=True, wrong_object=False, length=30,
                          instruction="lift the green cube", failure="none")
    a = summarize([_result(0, True, "none", 40), _result(1, False, "drop", 100), green])
    b = {"agent": "b", "success_by_instruction": success_by_instruction(
        [{"instruction": "lift the red cube", "success": False}])}   # JSON episode records work too
    assert a["success_by_instruction"] == {"lift the green cube": [1, 1], "lift the red cube": [1, 2]}
    table = instruction_table([{"agent": "a", **a}, b])
    assert "| a | 1/1 | 1/2 |" in table and "| b | - | 0/1 |" in table


# ----------------------------------------------------------------------------- closed loop
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The main job end to end with tiny models: every stage built, MPC + a baseline run."""
    from experiments.closed_loop import run

    artifacts = tmp_path_factory.mktemp("artifacts")
    cfg = _compose("closed_loop", ["preset=tiny", f"artifacts={artifacts}"])
    assert cfg.episodes == 1 and cfg.videos == 1 and cfg.split == "test"
    return artifacts, cfg, run(cfg)


def test_closed_loop_tiny_builds_every_stage_and_runs_each_method(tiny_run):
    artifacts, cfg, report = tiny_run
    assert set(report["stages"]) == {"collect", "tokenizer", "worldmodel", "bench", "student", "aligned", "prior",
                                     "play_prior", "sac"}
    for name, dirs in report["stages"].items():
        for d in dirs if isinstance(dirs, list) else [dirs]:
            assert json.loads((Path(d) / "stage.json").read_text())["stage"] == name
    by_agent = {s["agent"]: s for s in report["summaries"]}
    assert list(by_agent) == ["mpc_prior", "scripted", "prior_random", "mpc", "sac", "mpc_play", "play_random",
                              "play", "oracle_p_play"]
    for s in by_agent.values():
        assert s["episodes"] == 1 and s["seeds"] == split_seeds("test", 1)
        assert split_of(s["seeds"][0]) == "test"
    assert by_agent["scripted"]["success_rate"] == 1.0
    assert by_agent["mpc"]["act_s_mean"] > 0 and by_agent["mpc_prior"]["act_s_mean"] > 0
    assert report["wall_s"] >= report["build_s"] > 0


def test_closed_loop_tiny_files(tiny_run):
    artifacts, cfg, report = tiny_run
    root = artifacts / "closed_loop" / "lift"
    for name in ("results.md", "run.json", "success.png"):
        assert (root / name).is_file(), name
    assert "| roboalign/Lift-v0 | mpc |" in (root / "results.md").read_text()
    for method in ("mpc", "scripted"):
        out = root / method
        for name in ("results.md", "summary.json", "episodes.jsonl"):
            assert (out / name).is_file(), name
        rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
        assert len(rows) == 1 and "frames" not in rows[0] and "extras" not in rows[0]
        videos = sorted(out.rglob("*.mp4"))
        assert len(videos) == 1, videos
        assert read_video_frame_count(videos[0]) == rows[0]["length"] + 1   # reset frame + one per step
    assert not list(artifacts.rglob("*.tmp*"))


def test_closed_loop_tiny_rerun_reuses_every_stage(tiny_run, capsys):
    from experiments.closed_loop import run

    artifacts, cfg, report = tiny_run
    again = run(cfg)
    out = capsys.readouterr().out
    assert ": building in" not in out and out.count(": reusing") == 10   # 2 collections + 8 stages
    assert again["stages"] == report["stages"]
    assert again["summaries"] == report["summaries"]              # finished seeds are not re-run


def test_closed_loop_tiny_measures_the_imagination_gap(tiny_run):
    artifacts, cfg, report = tiny_run
    by_agent = {s["agent"]: s for s in report["summaries"]}
    for method in ("mpc", "mpc_prior"):           # world-model methods: every executed plan checked
        g = by_agent[method]["imagination_gap"]
        assert g["episodes"] == 1 and g["replans"] >= 1
        assert 0 <= g["optimistic_rate"] <= g["disagree_rate"] <= 1
        assert g["disagree_rate"] == pytest.approx(g["optimistic_rate"] + g["pessimistic_rate"])
        assert 0 <= g["aoc_mean"] <= 1
    assert by_agent["scripted"]["imagination_gap"] is None      # nothing imagined, nothing measured
    assert "imagined != real" in (artifacts / "closed_loop" / "lift" / "results.md").read_text()


def test_flywheel_tiny_round_trains_on_the_agents_own_rollouts(tiny_run, capsys):
    """One flywheel round on the tiny main job's models: the MPC's own rollouts (train
    seeds) fine-tune the world model, which is re-aligned and evaluated on the test seeds."""
    import torch

    from envs.rollouts import open_rollouts
    from experiments.flywheel import run as flywheel
    from worldmodel.world_model import WorldModel

    artifacts, cfg, report = tiny_run
    fly = flywheel(cfg)
    assert [r["round"] for r in fly["rounds"]] == [0, 1]
    r0, r1 = fly["rounds"]
    assert r0["successes"] == {s["agent"]: s for s in report["summaries"]}["mpc_prior"]["successes"]  # reused
    assert r1["collected"] == 1 and r1["flywheel_episodes"] == 1 and r1["mcnemar_vs_round0"] is not None
    stages = sorted((artifacts / "stages").glob("flycollect-*"))
    assert len(stages) == 1
    with open_rollouts(stages[0] / "rollouts.hdf5") as f:   # the same format as every rollout
        seeds = [int(f["data"][k].attrs["seed"]) for k in f["data"]]
        assert f["data"].attrs["env_args"] and "mpc_prior" in f["data"].attrs["env_args"]
    assert seeds == [cfg.flywheel.seed_start] and split_of(seeds[0]) == "train"
    # the round's world model was fine-tuned from round 0's: same architecture, new weights
    wm0 = WorldModel.from_checkpoint(report["stages"]["worldmodel"] + "/worldmodel.pt")
    fine = [d for d in (artifacts / "stages").glob("worldmodel-*") if str(d) != report["stages"]["worldmodel"]]
    assert len(fine) == 1
    wm1 = WorldModel.from_checkpoint(fine[0] / "worldmodel.pt")
    diffs = [not torch.equal(a, b) for a, b in zip(wm0.dynamics.state_dict().values(),
                                                    wm1.dynamics.state_dict().values())]
    assert any(diffs)
    key0 = json.loads((Path(report["stages"]["worldmodel"]) / "stage.json").read_text())["key"]
    inputs = json.loads((fine[0] / "stage.json").read_text())["inputs"]
    assert inputs["init"] == key0 and "flycollect1" in inputs
    root = artifacts / "closed_loop" / "lift" / "flywheel"
    for name in ("results.md", "flywheel.json", "success.png"):
        assert (root / name).is_file(), name
    assert (root / "round_1" / "mpc_prior" / "summary.json").is_file()
    capsys.readouterr()
    again = flywheel(cfg)                    # resumes: every stage and episode reused
    assert ": building in" not in capsys.readouterr().out
    assert [r["successes"] for r in again["rounds"]] == [r["successes"] for r in fly["rounds"]]


def test_flywheel_collector_collects_another_methods_episodes(tiny_run):
    """`flywheel.collector=prior_random`: a round's rollouts come from that method (its own
    cached stage, keyed on it), not from the main agent; an SB3 collector is refused."""
    from omegaconf import OmegaConf

    from envs.rollouts import open_rollouts
    from experiments import pipeline
    from experiments.flywheel import collect_stage, collector

    artifacts, cfg, report = tiny_run
    assert collector(cfg) == cfg.agent.name                       # null: the main agent
    cfg2 = OmegaConf.merge(cfg, {"flywheel": {"collector": "prior_random"}})
    assert collector(cfg2) == "prior_random"
    stages = pipeline.build(cfg2.pipeline, ["aligned", "prior", "student"], artifacts=cfg2.artifacts)
    got = collect_stage(cfg2, stages, 1)
    assert got.manifest["config"]["agent"]["method"] == "prior_random"
    with open_rollouts(got.dir / "rollouts.hdf5") as f:
        args = f["data"].attrs["env_args"]
        assert "prior_random" in args and "mpc_prior" not in args
        seeds = [int(f["data"][k].attrs["seed"]) for k in f["data"]]
    assert seeds == [cfg.flywheel.seed_start] and split_of(seeds[0]) == "train"
    with pytest.raises(ValueError, match="collector=sac"):
        collector(OmegaConf.merge(cfg, {"flywheel": {"collector": "sac"}}))


def test_imagination_stages_compares_world_models_on_the_same_clips(tiny_run, monkeypatch, capsys):
    """benchmarks/imagination_stages.py with two world models and two draws: one real row,
    one row per model with twice the real clips, and the false-lift column."""
    import sys

    from benchmarks import imagination_stages

    artifacts, cfg, report = tiny_run
    run_json = artifacts / "closed_loop" / "lift" / "run.json"
    models = [str(Path(report["stages"][s]) / "worldmodel.pt") for s in ("aligned", "worldmodel")]
    monkeypatch.setattr(sys, "argv", ["imagination_stages.py", "--run", str(run_json), "--worldmodel", models[0],
                                      "--worldmodel", models[1], "--temperatures", "1.0", "--draws", "2",
                                      "--episodes", "1", "--windows", "2", "--threads", "1", "--no-write"])
    imagination_stages.main()
    out = capsys.readouterr().out
    summary = out.split("Confusion")[0]
    rows = {r.split("|")[1].strip(): r for r in summary.splitlines() if r.startswith("| ") and "true stage 3" not in r}
    n_real = int(rows["real"].split("|")[2])
    assert n_real >= 1
    for s in ("aligned", "worldmodel"):
        name = f"wm_t1 {Path(report['stages'][s]).name}"
        assert int(rows[name].split("|")[2]) == 2 * n_real          # two imagined futures per clip
    assert "read 3 when true < 3 (false lift)" in out and "2 imagined futures per clip" in out


def test_collect_method_writes_held_out_episodes_of_a_closed_loop_method(tiny_run, tmp_path):
    """benchmarks/collect_method.py: episodes of `prior_random` with the run's prior, on
    the asked split and seeds; nonsense input is refused."""
    from benchmarks.collect_method import main as collect_method
    from envs.rollouts import open_rollouts

    artifacts, cfg, report = tiny_run
    out = tmp_path / "held.hdf5"
    summary = collect_method(["prior_random", "--episodes", "1", "--split", "val", "--start", "7", "--out", str(out),
                              "preset=tiny", f"artifacts={artifacts}"])
    assert summary["episodes"] == 1 and out.is_file()
    with open_rollouts(out) as f:
        assert "prior_random" in f["data"].attrs["env_args"]
        seeds = [int(f["data"][k].attrs["seed"]) for k in f["data"]]
    assert seeds == split_seeds("val", 1, 7)
    for bad, msg in ((["prior_random", "--episodes", "0", "--out", str(out)], "episodes must be"),
                     (["sac", "--episodes", "1", "--out", str(out)], "SB3")):
        with pytest.raises(SystemExit, match=msg):
            collect_method(bad)


def test_world_model_extra_episodes_train_the_world_model_only(tiny_run, capsys):
    """`pipeline.collect.worldmodel_extra=N`: N more train episodes (seeds after the main
    collection) join the world model's training data; the stages before it are reused."""
    from omegaconf import OmegaConf

    from envs.rollouts import open_rollouts
    from experiments import pipeline

    artifacts, cfg, report = tiny_run
    pcfg = OmegaConf.merge(cfg.pipeline, {"collect": {"worldmodel_extra": 1}})
    done = pipeline.build(pcfg, "worldmodel", artifacts=str(artifacts))
    assert str(done["tokenizer"].dir) == report["stages"]["tokenizer"] and done["tokenizer"].reused
    assert str(done["worldmodel"].dir) != report["stages"]["worldmodel"]      # another model, kept apart
    (extra,) = done["collect_extra"]
    with open_rollouts(pipeline.find_rollouts(extra.dir)[0]) as f:
        seeds = [int(f["data"][k].attrs["seed"]) for k in f["data"]]
    n_train = int(cfg.pipeline.collect.episodes.train)
    assert seeds == split_seeds("train", n_train + 1)[n_train:]            # after the main collection's seeds
    manifest = json.loads((done["worldmodel"].dir / "stage.json").read_text())
    assert manifest["inputs"]["extra0"] == extra.key
    capsys.readouterr()
    assert pipeline.build(cfg.pipeline, "worldmodel", artifacts=str(artifacts))["worldmodel"].reused   # 0: as before
    assert "collect_extra" not in pipeline.build(cfg.pipeline, "worldmodel", artifacts=str(artifacts))


def test_unknown_config_key_fails_at_compose():
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match="nonexistent_key"):
        _compose("closed_loop", ["nonexistent_key=3"])
    with pytest.raises(HydraException):
        _compose("closed_loop", ["preset=huge"])
    with pytest.raises(HydraException):
        _compose("collect", ["env=moon"])


def test_configs_compose():
    for env in ("lift", "pick_color", "stack"):
        for agent in ("scripted", "noisy", "random"):
            cfg = _compose("closed_loop", [f"env={env}", f"agent={agent}", "artifacts=/x"])
            assert cfg.env.name == env and cfg.agent.name == agent
            assert cfg.out_dir == f"/x/closed_loop/{env}"
            make_agent(cfg.agent.name, **cfg.agent.kwargs)  # every agent config is valid
    from experiments.closed_loop import make_method, method_spec, methods, world_model_stage
    from experiments.pipeline import STAGES
    assert _compose("closed_loop", []).agent.name == "mpc_prior"    # the main job plans with the world model
    for method in methods():                                          # every registry entry is valid
        spec = method_spec(method)
        assert world_model_stage(method) in (*STAGES, None), method
        if spec.builder == "plain":
            assert make_method(method, _compose("closed_loop", []), {}).name == method
    assert len(methods()) == 22 and world_model_stage("mpc_prior_pretrained") == "worldmodel"
    with pytest.raises(KeyError, match="unknown method 'mpc_priors'.*mpc_prior"):
        method_spec("mpc_priors")
    from experiments.closed_loop import stages_for
    assert stages_for("mpc_prior") == ["aligned", "student", "prior"] and stages_for("prior") == ["prior"]
    assert stages_for("scripted") == []
    assert stages_for("mpc_play") == ["aligned", "student", "play_prior"] and stages_for("play_random") == ["play_prior"]
    from experiments.pipeline import needed
    assert needed("aligned") == {"collect", "tokenizer", "worldmodel", "bench", "student", "aligned"}
    for preset, n in (("tiny", 1), ("quick", 5), ("default", 10), ("full", 50)):
        assert _compose("closed_loop", [f"preset={preset}"]).episodes == n
    # the preset is applied after _self_, so it sets episodes; an explicit override still wins
    assert _compose("closed_loop", ["preset=tiny", "episodes=3"]).episodes == 3


def test_a_fixed_instruction_must_be_the_tasks_and_enters_the_identity():
    from experiments.closed_loop import check_instruction, method_identity

    cfg = _compose("closed_loop", ["env=pick_color", "instruction='lift the green cube'", "agent=scripted"])
    check_instruction(cfg)
    assert method_identity("scripted", cfg, {})["instruction"] == "lift the green cube"
    assert "instruction" not in method_identity("scripted", _compose("closed_loop", ["agent=scripted"]), {})
    with pytest.raises(ValueError, match="not one of task Lift"):
        check_instruction(_compose("closed_loop", ["instruction='lift the green cube'"]))


def test_unknown_agent_name():
    with pytest.raises(KeyError, match="scripted"):
        make_agent("planner_that_does_not_exist")


# ----------------------------------------------------------------------------- videos
def test_write_video_keeps_every_frame(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (33, 35, 3), dtype=np.uint8) for _ in range(7)]  # odd sizes
    path = write_video(frames, tmp_path / "v" / "x.mp4", fps=20,
                       captions=[["caption", f"step {i}"] for i in range(7)])
    assert path == tmp_path / "v" / "x.mp4" and path.stat().st_size > 0
    assert read_video_frame_count(path) == 7
    assert [p.name for p in path.parent.iterdir()] == ["x.mp4"]
    path = write_video(frames[:1], tmp_path / "one.mp4")
    assert read_video_frame_count(path) == 1


def test_write_video_errors(tmp_path):
    frame = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError):
        write_video([], tmp_path / "x.mp4")
    with pytest.raises(ValueError):
        write_video([frame, frame], tmp_path / "x.mp4", captions=[["only one"]])
    assert not (tmp_path / "x.mp4").exists()


def test_write_video_failure_leaves_no_temporary(tmp_path):
    frames = [np.zeros((16, 16, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)]
    with pytest.raises(ValueError):
        write_video(frames, tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- collect entry
def test_collect_entry_point(tmp_path):
    from experiments.collect import run

    cfg = _compose("collect", ["env=lift", "agent=random", "episodes=1", "workers=1", f"artifacts={tmp_path}"])
    summary = run(cfg)
    path = tmp_path / "rollouts" / "lift_random_train_0_1.hdf5"
    assert path.is_file() and summary["path"] == str(path)
    assert summary["episodes"] == 1 and summary["workers"] == 1
    ep = read_episode(path, 0)
    assert ep["attrs"]["agent"] == "random" and int(ep["attrs"]["seed"]) == 0
    assert len(ep["actions"]) == summary["steps"] > 0
    assert math.isfinite(summary["steps_per_s"])


@pytest.mark.slow
class _Broken(Agent):
    name = "broken"

    def act(self, obs):
        raise RuntimeError("finished episodes must not act again")


def test_evaluate_in_worker_processes_matches_serial(tmp_path):
    """Episodes are a function of the seed: 2 spawned workers give the serial results."""
    from agent.evaluate import evaluate

    seeds = split_seeds("test", 2, start=3)
    serial = evaluate("roboalign/Lift-v0", make_agent("noisy", fail_prob=0.5), seeds, workers=1,
                      progress=False)
    parallel = evaluate("roboalign/Lift-v0", make_agent("noisy", fail_prob=0.5), seeds, workers=2,
                        out_dir=tmp_path, videos=2, progress=False)
    timing = ("act_s_mean",)  # wall-clock, differs run to run
    assert {k: v for k, v in serial.items() if k not in timing} == \
        {k: v for k, v in parallel.items() if k not in timing}
    assert parallel["act_s_mean"] > 0
    # finished seeds are not run again: an agent that cannot act still gets the summary
    resumed = evaluate("roboalign/Lift-v0", _Broken(), seeds, workers=1, out_dir=tmp_path, progress=False,
                       name="noisy")
    assert resumed == parallel
    with pytest.raises(RuntimeError, match="must not act"):   # another agent's episodes are not reused
        evaluate("roboalign/Lift-v0", _Broken(), seeds, workers=1, out_dir=tmp_path, progress=False,
                 name="noisy", identity={"planner": "other"})
    assert json.loads((tmp_path / "identity.json").read_text()) == {"planner": "other"}
    assert not list((tmp_path / "episodes").glob("*.json"))
    parallel = evaluate("roboalign/Lift-v0", make_agent("noisy", fail_prob=0.5), seeds, workers=1,
                        out_dir=tmp_path, videos=2, progress=False)
    (tmp_path / "episodes" / f"seed_{seeds[1]}.json").write_text("{corrupt")
    with pytest.raises(RuntimeError, match="must not act"):
        evaluate("roboalign/Lift-v0", _Broken(), seeds, workers=1, out_dir=tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == seeds
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == [f"noisy_seed{s}.mp4" for s in seeds]
    for v, r in zip(videos, rows):
        assert read_video_frame_count(v) == r["length"] + 1


def test_imagined_track_follows_the_plan_being_executed():
    from agent.evaluate import _side_by_side, imagined_track

    clip = lambda v: np.full((5, 4, 4, 3), v, np.uint8) + np.arange(5, dtype=np.uint8)[:, None, None, None]
    track = imagined_track([(0, clip(0)), (4, clip(100))], repeat=2, n=7)
    assert [s for s, _ in track] == [0, 0, 0, 0, 4, 4, 4, 4]
    # frame j of a plan made at step s shows step s + 2j
    assert [int(im[0, 0, 0]) for _, im in track] == [0, 1, 1, 2, 100, 101, 101, 102]
    assert imagined_track([(3, clip(0))], 2, 3)[0] == (-1, None)
    both = _side_by_side(np.zeros((8, 8, 3), np.uint8), track[1][1])
    assert both.shape == (8, 16, 3) and both[0, 8, 0] == 1


def test_mcnemar_paired_test():
    from agent.evaluate import mcnemar, paired_table

    a = [True] * 10 + [False] * 2
    b = [False] * 10 + [True] * 2
    t = mcnemar(a, b)
    assert (t["a_only"], t["b_only"]) == (10, 2) and t["p"] == pytest.approx(0.0386, abs=1e-3)
    assert mcnemar([True, False], [True, False]) == {"a_only": 0, "b_only": 0, "p": 1.0}
    with pytest.raises(ValueError, match="same seeds"):
        mcnemar([True], [True, False])
    main = {"agent": "m", "seeds": [1, 2], "success_per_seed": [True, True]}
    other = {"agent": "o", "seeds": [1, 2], "success_per_seed": [False, True]}
    assert "| o | 2 | 1 | 0 | 1.000 |" in paired_table(main, [other])
    with pytest.raises(ValueError, match="other seeds"):
        paired_table(main, [{**other, "seeds": [1, 3]}])


def test_worker_start_failure_raises_instead_of_hanging():
    from agent.base import RandomAgent
    from agent.collect import run_episodes

    with pytest.raises(RuntimeError, match="failed to start"):
        list(run_episodes("roboalign/Lift-v0", RandomAgent(), [1, 2], workers=2,
                          env_kwargs={"obs_mode": "pixels"}))


def test_stage_key_ignores_new_options_at_their_neutral_default():
    """An option added later (e.g. the prior's row balancing) must not change the key of
    a stage that does not use it, and must change it when it is used; so must non-semantic
    keys (threads) stay out of it."""
    from experiments.pipeline import NEUTRAL_DEFAULTS, compose, semantic

    base = semantic(compose("train_prior", ["prior=tiny", "artifacts=x"]))
    assert "balance" not in base["prior"]["train"] and "threads" not in base
    assert semantic(compose("train_prior", ["prior=tiny", "artifacts=x", "threads=7"])) == base
    used = semantic(compose("train_prior", ["prior=tiny", "artifacts=x", "prior.train.balance=instruction"]))
    assert used["prior"]["train"]["balance"] == "instruction" and used != base
    assert NEUTRAL_DEFAULTS["prior.train.colour_swap"] == 0.0
    default = semantic(compose("train_prior", ["prior=default", "artifacts=x"]))
    assert default["prior"]["model"]["instruction_film"] is True  # on by default: a new key
    off = semantic(compose("train_prior", ["prior=default", "artifacts=x", "prior.model.instruction_film=false"]))
    assert "instruction_film" not in off["prior"]["model"]  # off: the key of older priors
    # the tokenizer's pixel_context option (default off) kept the quick tokenizer's key
    tok = semantic(compose("train_tokenizer", ["tokenizer=quick", "artifacts=x"]))
    assert "pixel_context" not in tok["tokenizer"]["model"] and "ctx_grid" in tok["tokenizer"]["model"]
    pix = semantic(compose("train_tokenizer", ["tokenizer=quick", "artifacts=x", "tokenizer.model.pixel_context=true"]))
    assert pix["tokenizer"]["model"]["pixel_context"] is True


def test_planning_student_and_world_model_overrides(tmp_path):
    from experiments.closed_loop import method_identity, planning_student, planning_world_model
    from experiments.pipeline import StageResult

    stages = {"prior": StageResult("prior", "p", tmp_path, True)}
    for stage, name in (("student", "student.pt"), ("aligned", "worldmodel.pt")):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / name).write_bytes(b"x")
        stages[stage] = StageResult(stage, "abc", tmp_path / stage, True)
    other = tmp_path / "other.pt"
    other.write_bytes(b"y")
    verbs = {"student": lambda cfg: planning_student(cfg, stages),
             "worldmodel": lambda cfg: planning_world_model(cfg, stages, "aligned")}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="closed_loop")
        assert verbs["student"](cfg) == str(tmp_path / "student" / "student.pt")
        assert verbs["worldmodel"](cfg) == str(tmp_path / "aligned" / "worldmodel.pt")
        base = method_identity("mpc_prior", cfg, stages)
        # declared options at their neutral value leave the identity as before they existed
        assert not {"student", "worldmodel", "pessimism"} & set(base["mpc"])
        for key, verb in verbs.items():
            cfg = compose(config_name="closed_loop", overrides=[f"mpc.{key}={other}"])
            assert verb(cfg) == str(other)
            # another checkpoint is another method identity: saved episodes are not mixed
            assert method_identity("mpc_prior", cfg, stages) != base
            cfg = compose(config_name="closed_loop", overrides=[f"mpc.{key}={tmp_path / 'missing.pt'}"])
            with pytest.raises(FileNotFoundError, match=f"mpc.{key}"):
                verb(cfg)


def test_method_registry_refuses_a_bad_entry(tmp_path, monkeypatch):
    import experiments.closed_loop as cl

    (tmp_path / "teleport.yaml").write_text("builder: planning\nproposer: magic\nscorer: worldmodel\n")
    (tmp_path / "choosy.yaml").write_text("builder: planning\nproposer: prior\nscorer: null\npick: best\n")
    monkeypatch.setattr(cl, "METHOD_DIR", tmp_path)
    cl.method_spec.cache_clear()
    try:
        with pytest.raises(ValueError, match="proposer"):
            cl.method_spec("teleport")
        with pytest.raises(ValueError, match="pick"):
            cl.method_spec("choosy")
        assert cl.methods() == ["choosy", "teleport"]
    finally:
        cl.method_spec.cache_clear()


def test_load_agent_plans_in_ones_own_loop_with_a_finished_runs_models(tiny_run, make_env):
    """The Python entry point: the same models, the same actions as the closed loop's agent."""
    from experiments.api import load_agent

    artifacts, cfg, report = tiny_run
    run_dir = artifacts / "closed_loop" / "lift"
    agent = load_agent("prior_random", run_dir, ["planner.horizon=4", "planner.samples=8"])
    env = make_env(LIFT)
    obs, _ = env.reset(seed=3)
    agent.reset(seed=3)
    actions = [agent.act(obs) for _ in range(3)]
    assert all(a.shape == (4,) and np.abs(a).max() <= 1 for a in actions)
    with pytest.raises(KeyError, match="sac_ref"):
        load_agent("sac_ref", run_dir)
    with pytest.raises(FileNotFoundError, match="closed_loop.py"):
        load_agent("prior", artifacts / "nowhere")


def test_inspect_episode_writes_a_sheet_with_true_values_and_same_actions(tiny_run, capsys):
    """experiments/inspect_episode.py: a finished run's seed re-run with the recorder: the
    sheet (and rerun file with rerun-sdk), the kept candidates' true values, the same actions."""
    from experiments.api import run_config
    from experiments.inspect_episode import main

    artifacts, cfg, report = tiny_run
    run_dir = artifacts / "closed_loop" / "lift"
    assert run_config(run_dir).planner.horizon == cfg.planner.horizon      # the run's own settings
    with pytest.raises(KeyError, match="no key"):
        run_config(run_dir, ["planner.horizn=3"])
    main(["--run", str(run_dir), "--method", "mpc", "--seed", str(report["seeds"][0]), "--values",
          "--compare-off", "--threads", "1"])
    out = capsys.readouterr().out
    assert "actions identical" in out and "planning" in out
    sheets = list((run_dir / "mpc" / "inspect").glob("mpc_seed*.png"))
    assert len(sheets) == 1 and sheets[0].stat().st_size > 1000
