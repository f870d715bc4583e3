"""Student reward: score() shapes, ranges, determinism and input checks; weighted totals;
checkpoints; the Huber weighting; distillation on synthetic clips whose labels are a
known function of the pixels; pairwise ranking accuracy; the online refresh hook; the
Hydra entry point on a synthetic bench file."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from envs.vocab import INSTRUCTIONS
from worldmodel.judge import MAX_SCORES
from worldmodel.judge.distill import (
    _rank,
    data_from_clips,
    distill,
    distill_loss,
    evaluate,
    from_bench,
    make_data,
    pairwise_accuracy,
    refresh,
    spearman,
    subset,
    track_loss,
)
from worldmodel.judge.student import StudentConfig, StudentReward, to_unit_frames
from worldmodel.training import CheckpointError

TINY = StudentConfig(channels=8, hidden=32, embed=8)
MAX = np.asarray(MAX_SCORES, np.float32)


# one torch thread (conftest); module-scoped fixtures below depend on it explicitly, since
# pytest sets up wider-scoped fixtures before function-scoped ones
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_clips(n: int, t1: int = 4, seed: int = 0) -> dict:
    """Clips with a known pixel -> label map: background brightness ``b`` and how far a
    white square rises over the clip ``r`` (both uniform in [0, 1]) set the labels."""
    rng = np.random.default_rng(seed)
    b, r = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    frames = np.zeros((n, t1, 64, 64, 3), np.uint8)
    x0 = rng.integers(8, 44, n)
    for i in range(n):
        frames[i] = np.uint8(40 + 120 * b[i])
        for t in range(t1):
            y = int(44 - 28 * r[i] * t / (t1 - 1))
            frames[i, t, y:y + 12, x0[i]:x0[i] + 12] = 255
    norm = np.stack([r, b, (r + b) / 2, 1 - b, r, 1 - r * b], axis=1).astype(np.float32)
    return {"frames": frames, "instruction": rng.integers(0, len(INSTRUCTIONS), n),
            "scores": norm * MAX, "shaping": np.stack([r, 1 - b, (r + b) / 2], 1).astype(np.float32),
            "group": np.arange(n) // 4}


@pytest.fixture(scope="module")
def student(one_torch_thread):
    torch.manual_seed(0)
    return StudentReward(TINY).eval()


# ----------------------------------------------------------------------------- score()
def test_score_shapes_ranges_and_determinism(student):
    clips = synthetic_clips(5, t1=9)
    out = student.score(clips["frames"], clips["instruction"])
    assert out["dims"].shape == (5, 6) and out["shaping"].shape == (5, 3) and out["total"].shape == (5,)
    assert ((out["dims"] >= 0) & (out["dims"] <= 1)).all()
    assert ((out["total"] >= 0) & (out["total"] <= 10)).all()
    again = student.score(clips["frames"], clips["instruction"])
    assert torch.equal(out["dims"], again["dims"]) and torch.equal(out["total"], again["total"])
    # float (B, T+1, 3, 64, 64) in [0, 1] is the same clip as uint8 (B, T+1, 64, 64, 3)
    f32 = student.score(to_unit_frames(clips["frames"]), clips["instruction"], amp=False)
    u8 = student.score(clips["frames"], clips["instruction"], amp=False)
    assert torch.allclose(f32["dims"], u8["dims"], atol=1e-5)
    # any T >= 1; texts as instructions; batching does not change results
    assert student.score(clips["frames"][:, :2], INSTRUCTIONS[0])["dims"].shape == (5, 6)
    small = student.score(clips["frames"], clips["instruction"], batch_size=2, amp=False)
    assert torch.allclose(small["dims"], u8["dims"], atol=1e-5)


def test_optional_actions(student):
    clips = synthetic_clips(5, t1=9)
    acts = np.random.default_rng(0).uniform(-1, 1, (5, 16, 4)).astype(np.float32)   # T=8 steps, stride 2
    torch.manual_seed(1)
    s = StudentReward(StudentConfig(**{**TINY.__dict__, "actions": True}))
    torch.nn.init.normal_(s.act_proj.weight)            # zero-initialised: make actions matter
    a = s.score(clips["frames"], clips["instruction"], actions=acts)["dims"]
    b = s.score(clips["frames"], clips["instruction"])["dims"]
    assert a.shape == (5, 6) and not torch.allclose(a, b)
    assert torch.equal(a, s.score(clips["frames"], clips["instruction"], actions=torch.as_tensor(acts))["dims"])
    f = s.action_features(torch.as_tensor(acts), 5, 9, "cpu")
    assert torch.allclose(f[:, 1, :3], torch.as_tensor(acts[:, :2, :3].sum(1))) and (f[:, 0, :5] == 0).all()
    assert (f[:, :, 5] == 1).all() and (s.action_features(None, 5, 9, "cpu") == 0).all()
    with pytest.raises(ValueError, match="actions must be"):
        s.score(clips["frames"], clips["instruction"], actions=acts[:, :15])
    # action_path: the commanded path so far (cumulative displacement from the start frame)
    p = StudentReward(StudentConfig(**{**TINY.__dict__, "actions": True, "action_path": True}))
    fp = p.action_features(torch.as_tensor(acts), 5, 9, "cpu")
    assert fp.shape == (5, 9, 9) and torch.equal(fp[..., :6], f) and (fp[:, 0, 6:] == 0).all()
    assert torch.allclose(fp[:, 4, 6:], torch.as_tensor(acts[:, :8, :3].sum(1)), atol=1e-5)
    assert p.score(clips["frames"], clips["instruction"], actions=acts)["dims"].shape == (5, 6)
    with pytest.raises(ValueError, match="needs actions=True"):
        StudentConfig(action_path=True)
    # video-only students (the default) ignore actions
    v = StudentReward(TINY)
    assert v.act_proj is None
    assert torch.equal(v.score(clips["frames"], clips["instruction"], actions=acts)["dims"],
                       v.score(clips["frames"], clips["instruction"])["dims"])


def test_total_uses_weights(student):
    clips = synthetic_clips(3)
    out = student.score(clips["frames"], clips["instruction"])
    dims = out["dims"]
    assert torch.allclose(out["total"], (dims * torch.tensor(MAX_SCORES)).sum(1), atol=1e-5)
    w = (0.0, 0.0, 2.0, 1.0, 0.5, 3.0)
    wt = student.score(clips["frames"], clips["instruction"], weights=w)["total"]
    assert torch.allclose(wt, (dims * torch.tensor(MAX_SCORES) * torch.tensor(w)).sum(1), atol=1e-5)
    # the config's default weights are used when none are passed
    s2 = StudentReward(StudentConfig(**{**TINY.__dict__, "weights": w}))
    s2.load_state_dict(student.state_dict())
    assert torch.allclose(s2.score(clips["frames"], clips["instruction"])["total"], wt, atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        student.score(clips["frames"], clips["instruction"], weights=(1, 2))


def test_input_errors(student):
    clips = synthetic_clips(2)
    with pytest.raises(ValueError, match="64"):
        student.score(np.zeros((2, 4, 32, 32, 3), np.uint8), [0, 0])
    with pytest.raises(ValueError, match="T\\+1 >= 2"):
        student.score(clips["frames"][:, :1], [0, 0])
    with pytest.raises(ValueError, match="5-D"):
        student.score(clips["frames"][0], [0])
    with pytest.raises(KeyError, match="unknown instruction"):
        student.score(clips["frames"], ["lift the blue cube"] * 2)
    with pytest.raises(KeyError, match="outside"):
        student.score(clips["frames"], [0, 7])
    with pytest.raises(ValueError, match="instructions for"):
        student.score(clips["frames"], [0, 1, 2])


def test_save_load_roundtrip(student, tmp_path):
    clips = synthetic_clips(3)
    path = student.save(tmp_path / "student.pt", metrics={"x": 1.0})
    again = StudentReward.from_checkpoint(path)
    assert again.config == student.config
    a = student.score(clips["frames"], clips["instruction"])
    b = again.score(clips["frames"], clips["instruction"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="another config"):
        StudentReward.from_checkpoint(path, config=StudentConfig())
    with pytest.raises(CheckpointError, match="does not exist"):
        StudentReward.from_checkpoint(tmp_path / "missing.pt")
    # a student trained before the `progress` output (2 shaping outputs) is refused by name
    ckpt = torch.load(path, weights_only=False)
    for k in ("head.weight", "head.bias"):
        ckpt["model"][k] = ckpt["model"][k][:-1]
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="another number of shaping outputs.*progress.*build_bench"):
        StudentReward.from_checkpoint(tmp_path / "old.pt")
    # score_clips reads judge clip dicts, mixed lengths included
    dicts = [{"frames": clips["frames"][i, : 2 + i], "instruction": int(clips["instruction"][i])} for i in range(3)]
    out = again.score_clips(dicts)
    assert out["scores"].shape == (3, 6) and np.allclose(out["scores"], out["dims"] * MAX)


# ----------------------------------------------------------------------------- loss
def test_huber_weighting():
    target = torch.tensor([[3.0, 2.0, 1.0, 1.0, 1.0, 2.0]])
    dims = torch.ones(1, 6)
    dims[0, 0] = 0.0                       # error only on IF (normalized error 1)
    shaping = torch.zeros(1, 2)
    l_all, m = distill_loss(dims, shaping, target, None, delta=0.2)
    huber_if = 0.2 * (1.0 - 0.5 * 0.2)     # Huber(1) with delta 0.2
    assert float(m["huber_IF"]) == pytest.approx(huber_if) and float(m["huber_MS"]) == 0.0
    assert float(l_all) == pytest.approx(huber_if / 6)
    l_if, _ = distill_loss(dims, shaping, target, None, dim_weights=[1, 0, 0, 0, 0, 0], delta=0.2)
    assert float(l_if) == pytest.approx(huber_if)
    l_none, _ = distill_loss(dims, shaping, target, None, dim_weights=[0, 1, 1, 1, 1, 1], delta=0.2)
    assert float(l_none) == 0.0
    # shaping: NaN targets are ignored, others added with shaping_weight
    ts = torch.tensor([[float("nan"), 0.1]])
    l_sh, m = distill_loss(torch.ones(1, 6), torch.zeros(1, 2), target, ts, shaping_weight=2.0, delta=0.2)
    assert float(l_sh) == pytest.approx(2.0 * 0.5 * 0.1 ** 2)
    with pytest.raises(ValueError, match="dim_weights"):
        distill_loss(dims, shaping, target, None, dim_weights=[0] * 6)


# ----------------------------------------------------------------------------- metrics
def test_pairwise_accuracy_and_spearman():
    true = [1, 2, 3, 5, 5, 0]
    groups = [0, 0, 0, 1, 1, -1]
    # group 0: pairs (1,2) (1,3) (2,3); group 1's only pair is a teacher tie -> left out
    assert pairwise_accuracy([0.1, 0.2, 0.3, 9, 1, 4], true, groups) == 1.0
    acc, pairs = pairwise_accuracy([0.3, 0.2, 0.1, 0, 0, 0], true, groups, return_pairs=True)
    assert (acc, pairs) == (0.0, 3)
    assert pairwise_accuracy([0.1, 0.3, 0.2, 0, 0, 0], true, groups) == pytest.approx(2 / 3)
    assert pairwise_accuracy([0.1, 0.1, 0.3, 0, 0, 0], true, groups) == pytest.approx(2.5 / 3)  # pred tie: half
    # teacher gaps in group 0: (1,2) 1, (2,3) 1, (1,3) 2 -> band (1.5, 3] keeps only (1,3)
    assert pairwise_accuracy([0.1, 0.3, 0.2, 0, 0, 0], true, groups, band=(1.5, 3), return_pairs=True) == (1.0, 1)
    assert pairwise_accuracy([0.1, 0.3, 0.2, 0, 0, 0], true, groups, band=(0, 1), return_pairs=True) == (0.5, 2)
    assert np.isnan(pairwise_accuracy([1, 2], [1, 1], [0, 0]))
    assert pairwise_accuracy([1, 2, 3], [1, 2, 3], ["a", "b", "a"]) == 1.0
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert np.allclose(_rank(np.array([3.0, 1.0, 3.0, 2.0])), [2.5, 0, 2.5, 1])


# ----------------------------------------------------------------------------- distill + refresh
@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    torch.manual_seed(0)
    st = StudentReward(TINY)
    train = make_data(**synthetic_clips(192, seed=1))
    val = make_data(**synthetic_clips(64, seed=2))
    before = evaluate(st, val)
    out = tmp_path_factory.mktemp("distill")
    st, metrics = distill(st, train, val, steps=160, batch_size=32, lr=4e-3, warmup=10, out_dir=out,
                          eval_every=160, ckpt_every=100, log_every=25, progress=False)
    return st, train, val, before, metrics, out


def test_distill_learns_known_function(trained):
    st, _, val, before, metrics, out = trained
    assert metrics["mae_norm"] < 0.6 * before["mae_norm"]
    assert metrics["spearman_total"] > 0.8, metrics
    assert min(metrics[f"spearman_{s}"] for s in ("IF", "MS", "TC")) > 0.7, metrics
    assert metrics["pairwise_acc"] > 0.8 and metrics["pairs"] > 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in logged if "train/loss" in r]
    assert losses[-1] < losses[0]
    # the training loop's checkpoint is a student checkpoint too
    again = StudentReward.from_checkpoint(out / "last.pt")
    assert torch.equal(again.score(val["frames"][:4], val["instruction"][:4])["dims"],
                       st.score(val["frames"][:4], val["instruction"][:4])["dims"])


def test_refresh_labels_new_clips_and_closes_the_gap(trained):
    _, train, _, _, _, _ = trained
    student = StudentReward(TINY)                    # a copy: the fixture's student stays as trained
    student.load_state_dict(trained[0].state_dict())
    # new clips whose labels the student has never seen: IF now follows the background
    new = synthetic_clips(24, seed=5)
    calls = []

    def label_fn(clips):
        calls.append(len(clips))
        idx = [c["i"] for c in clips]
        scores = new["scores"][idx].copy()
        scores[:, 0] = 3.0 * (1.0 - new["scores"][idx, 0] / 3.0)
        return {"scores": scores, "shaping": new["shaping"][idx], "reasons": [[] for _ in idx]}

    clips = [{"frames": new["frames"][i], "instruction": int(new["instruction"][i]), "i": i} for i in range(24)]
    rng_before = torch.get_rng_state()
    student, data, m = refresh(student, label_fn, clips, train, steps=40, batch_size=32, lr=3e-3)
    assert calls == [24]
    assert torch.equal(torch.get_rng_state(), rng_before)        # caller's RNG untouched
    assert len(data["frames"]) == len(train["frames"]) + 24
    assert m["after/mae_norm"] < m["before/mae_norm"], m
    assert m["train_s"] < 30
    # max_rows keeps the newest rows
    _, data2, _ = refresh(student, label_fn, clips[:4], data, steps=1, batch_size=8, max_rows=50)
    assert len(data2["frames"]) == 50
    assert torch.equal(data2["frames"][-4:], torch.as_tensor(new["frames"][:4]))


def test_from_bench_and_subset():
    clips = synthetic_clips(8)
    bench = {**clips, "split": np.array(["train"] * 6 + ["test"] * 2), "source": np.array(["real"] * 8),
             "start_id": np.array(["a", "a", "b", "b", "c", "c", "d", "d"])}
    bench.pop("group")
    data = from_bench(bench)
    assert data["group"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    test = subset(data, data["split"] == "test")
    assert len(test["frames"]) == 2 and list(test["source"]) == ["real", "real"]
    d2 = data_from_clips([{"frames": clips["frames"][0], "instruction": 1}],
                         {"scores": clips["scores"][:1]})
    assert torch.isnan(d2["shaping"]).all() and "actions" not in d2
    with pytest.raises(ValueError, match=r"shaping must be \(8, 3\).*build_bench"):
        from_bench({**bench, "shaping": clips["shaping"][:, :2]})       # a bench of an older teacher
    d3 = data_from_clips([{"frames": clips["frames"][0], "instruction": 1, "actions": np.zeros((6, 4))}],
                         {"scores": clips["scores"][:1]})
    assert d3["actions"].shape == (1, 6, 4)


def test_distill_reward_entry_point(tmp_path):
    from hydra import compose, initialize_config_dir

    from experiments.distill_reward import run
    from tests.conftest import CONF_DIR
    from worldmodel.judge.bench import write_bench

    clips = synthetic_clips(24, t1=9)
    n = 24
    rows = {"frames": clips["frames"], "instruction": clips["instruction"], "scores": clips["scores"],
            "shaping": clips["shaping"], "split": ["train"] * 12 + ["val"] * 6 + ["test"] * 6,
            "source": ["real", "generated", "generated", "degraded"] * 6, "degradation": [""] * n,
            "episode": [f"ep{i // 4}" for i in range(n)], "start_step": np.zeros(n, np.int64),
            "actions": np.zeros((n, 16, 4), np.float32)}
    bench = tmp_path / "bench.h5"
    write_bench(bench, rows)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("distill_reward", overrides=["student=tiny", f"bench_file={bench}",
                                                   f"out_dir={tmp_path / 'student'}", "progress=false"])
    metrics = run(cfg)
    assert metrics["rows"] == {"train": 12, "val": 6, "test": 6}
    # an action-reading student (the default) is also scored without its actions (as the planner uses it)
    video_only = {"video_only"} if cfg.student.model.actions else set()
    assert set(metrics["test"]) == {"all", "real", "generated", "degraded"} | video_only
    assert metrics["test"]["generated"]["pairs"] > 0
    st = StudentReward.from_checkpoint(tmp_path / "student" / "student.pt")
    assert st.config.channels == 8
    assert json.loads((tmp_path / "student" / "metrics.json").read_text())["bench_hash"]
    assert run(cfg)["rows"]["train"] == 12            # finished run: resumes and returns at once
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        missing = compose("distill_reward", overrides=["student=tiny", f"bench_file={tmp_path / 'nope.h5'}"])
    with pytest.raises(FileNotFoundError, match="build_bench.py"):
        run(missing)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        colour = compose("distill_reward", overrides=["student=tiny", f"bench_file={bench}", "student.model.colour=true",
                                                      f"out_dir={tmp_path / 'colour'}", "progress=false"])
    with pytest.raises(FileNotFoundError, match="perception.npz is missing"):
        run(colour)                 # a colour student needs the teacher's perception beside the bench


def test_online_refresher_carries_data_and_works_under_no_grad():
    from worldmodel.judge.distill import OnlineRefresher

    torch.manual_seed(0)
    student = StudentReward(TINY)
    new = synthetic_clips(6, seed=7)
    clips = [{"frames": new["frames"][i], "instruction": int(new["instruction"][i])} for i in range(6)]
    label = lambda cs: {"scores": new["scores"][: len(cs)], "shaping": new["shaping"][: len(cs)]}  # noqa: E731
    hook = OnlineRefresher(student, label, None, steps=2, batch_size=4)
    with torch.no_grad():
        m1 = hook(clips[:3], None)
        m2 = hook(clips[3:], None)
    assert m1["n_data"] == 3 and m2["n_data"] == 6 and len(hook.history) == 2
    assert all(isinstance(v, (int, float)) for v in m2.values())


def test_paired_batches_and_ranking_loss():
    from worldmodel.judge.distill import _stream, ranking_loss

    clips = synthetic_clips(40)
    clips["scores"][:, 0] = clips["group"]              # tag each row with its group
    data = make_data(**clips)
    b = next(_stream(data, 16, 0, "cpu", pairs=True))
    assert torch.equal(b["scores"][:8, 0], b["scores"][8:, 0])        # partners share the start
    scores = torch.tensor([[3.0, 2, 1, 1, 1, 2], [0.0, 0, 0, 0, 0, 0]])
    good = torch.tensor([[1.0] * 6, [0.0] * 6])
    bad = good.flip(0)
    assert float(ranking_loss(good, scores)) < float(ranking_loss(bad, scores))
    assert float(ranking_loss(good, scores[[0, 0]])) == 0.0               # teacher tie: left out


def test_shaping_ranking_loss_orders_each_shaping_term_and_leaves_ties_out():
    from worldmodel.judge.distill import shaping_ranking_loss

    target = torch.tensor([[0.8, 0.1], [0.0, 0.6]])          # row 0: rose more, gripper closer
    good = torch.tensor([[0.5, 0.2], [0.1, 0.4]])
    bad = torch.tensor([[0.1, 0.4], [0.5, 0.2]])
    assert float(shaping_ranking_loss(good, target)) < float(shaping_ranking_loss(bad, target))
    assert float(shaping_ranking_loss(good, target[[0, 0]])) == 0.0       # tied targets: left out
    g = good.clone().requires_grad_()
    shaping_ranking_loss(g, target).backward()
    assert g.grad[0, 0] < 0 < g.grad[1, 0]     # descent raises row 0's rise and lowers row 1's


def test_ensemble_members_train_independently_and_average(tmp_path):
    torch.manual_seed(0)
    ens = StudentReward(StudentConfig(**{**TINY.__dict__, "members": 3}))
    clips = synthetic_clips(6, t1=5)
    frames, ids = torch.as_tensor(clips["frames"]), torch.as_tensor(clips["instruction"])
    dims, shaping = ens(frames, ids, members=True)
    assert dims.shape == (3, 6, 6) and shaping.shape == (3, 6, 3)
    assert not torch.allclose(dims[0], dims[1])                 # independently initialised
    mean_dims, mean_shaping = ens(frames, ids)
    assert torch.allclose(mean_dims, dims.mean(0)) and torch.allclose(mean_shaping, shaping.mean(0))
    assert ens.n_params() == 3 * StudentReward(TINY).n_params()
    # every member is fitted to the labels (not only their mean): each one alone ends closer
    train = make_data(**synthetic_clips(96, seed=1))
    val = make_data(**synthetic_clips(32, seed=2))
    before = [evaluate(m, val)["mae_norm"] for m in ens.members_as_students()]
    ens, metrics = distill(ens, train, val, steps=120, batch_size=16, lr=4e-3, warmup=5, out_dir=tmp_path / "d",
                           eval_every=120, ckpt_every=120, log_every=20, progress=False)
    after = [evaluate(m, val)["mae_norm"] for m in ens.members_as_students()]
    assert all(a < 0.75 * b for a, b in zip(after, before)), (before, after)
    # a checkpoint of the ensemble restores every member
    again = StudentReward.from_checkpoint(ens.save(tmp_path / "ens.pt"))
    assert again.config.members == 3
    assert torch.equal(again.score(frames, ids)["total"], ens.score(frames, ids)["total"])
    with pytest.raises(ValueError, match="members"):
        StudentConfig(members=0)


def tracked_clips(n: int, seed: int = 0) -> dict:
    """Clips of a white square that moves by its actions' commanded dz (one model step = 2
    actions), with the teacher-style tracks: ``x_track`` where the square is in each frame
    (gripper slot), ``r_track`` where the actions put it (here, where it is: a faithful clip
    except in every fourth clip, whose square stays put)."""
    rng = np.random.default_rng(seed)
    t1 = 5
    acts = np.zeros((n, 2 * (t1 - 1), 4), np.float32)
    acts[:, :, 2] = rng.uniform(0, 1, (n, 1))                  # a steady lift per clip
    frames = np.full((n, t1, 64, 64, 3), 60, np.uint8)
    x_track = np.full((n, t1, 3, 2), np.nan, np.float32)
    x0 = rng.integers(8, 44, n)
    rise = np.concatenate([np.zeros((n, 1)), 4 * acts[:, :, 2].reshape(n, t1 - 1, 2).sum(2).cumsum(1)], 1)
    stuck = np.arange(n) % 4 == 3
    for i in range(n):
        for t in range(t1):
            y = int(46 - (0 if stuck[i] else rise[i, t]))
            frames[i, t, y:y + 12, x0[i]:x0[i] + 12] = 255
            x_track[i, t, 0] = (x0[i] + 6, y + 6)
    r_track = x_track.copy()
    r_track[:, :, 0, 1] = 52 - rise
    scores = np.tile(np.asarray(MAX_SCORES, np.float32), (n, 1))
    scores[stuck, 2] = 0.0                                     # AOC: the outcome ignores the actions
    return {"frames": frames, "instruction": rng.integers(0, len(INSTRUCTIONS), n), "scores": scores,
            "actions": acts, "x_track": x_track, "r_track": r_track}


def test_track_heads_learn_where_objects_are_and_where_the_actions_put_them(tmp_path):
    with pytest.raises(ValueError, match="needs actions=True"):
        StudentConfig(tracks=True)
    torch.manual_seed(0)
    st = StudentReward(StudentConfig(**{**TINY.__dict__, "actions": True, "tracks": True, "members": 2}))
    raw = tracked_clips(128, seed=1)
    cols = {k: raw.pop(k) for k in ("x_track", "r_track")}
    train = make_data(**raw)
    with pytest.raises(ValueError, match="bench_tracks.py"):
        distill(st, train, steps=1, progress=False)
    train.update({k: torch.as_tensor(v) for k, v in cols.items()})
    val = tracked_clips(32, seed=2)
    frames, ids, acts = (torch.as_tensor(val[k]) for k in ("frames", "instruction", "actions"))
    dims, shaping, seen, expected, has = st(frames, ids, acts, members=True, tracks=True)
    assert dims.shape == (2, 32, 6) and seen.shape == expected.shape == (2, 32, 5, 3, 2) and has.shape == (2, 32)
    with pytest.raises(ValueError, match="members=True"):
        st(frames, ids, acts, tracks=True)

    def losses(model):
        model.eval()
        with torch.no_grad():
            _, _, s, e, h = model(frames, ids, acts, members=True, tracks=True)
        out = [track_loss(s[k], e[k], h[k], torch.as_tensor(val["x_track"]), torch.as_tensor(val["r_track"]))[1]
               for k in range(2)]
        return {n: float(np.mean([o[n] for o in out])) for n in ("track_seen", "track_expected")}

    before = losses(st)
    st, _ = distill(st, train, steps=150, batch_size=32, lr=4e-3, warmup=5, out_dir=tmp_path / "d",
                    eval_every=150, ckpt_every=150, log_every=50, progress=False)
    after = losses(st)
    # both heads learn: the seen positions from the frames, the expected ones from the actions alone
    assert after["track_seen"] < 0.5 * before["track_seen"], (before, after)
    assert after["track_expected"] < 0.5 * before["track_expected"], (before, after)
    # scoring needs no tracks; without actions the difference features are off; checkpoints round-trip
    again = StudentReward.from_checkpoint(st.save(tmp_path / "t.pt"))
    assert again.config.tracks
    assert torch.equal(again.score(frames, ids, actions=acts)["total"], st.score(frames, ids, actions=acts)["total"])
    assert st.score(frames, ids)["dims"].shape == (32, 6)
    # without actions the track heads are skipped: the same output as running them with no actions
    st.eval()
    with torch.no_grad():
        full = st(frames, ids, None, members=True, tracks=True)[0].mean(0)
    assert torch.allclose(st.score(frames, ids, amp=False)["dims"], full, atol=1e-6)


def test_track_order_features_reproduce_the_teachers_order_check():
    with pytest.raises(ValueError, match="needs tracks=True"):
        StudentConfig(actions=True, track_order=True)
    torch.manual_seed(0)
    st = StudentReward(StudentConfig(**{**TINY.__dict__, "actions": True, "tracks": True, "track_order": True}))
    path = torch.linspace(-0.8, 0.8, 9)[None, :, None].repeat(1, 1, 6)         # every object moves steadily
    present = torch.ones(1, 3, dtype=torch.bool)
    same = st.order_features(path, path, present)[0]
    assert same.shape == (9, 3) and (same[:, :2] == 0).all() and (same[:, 2] == 1).all()
    back = st.order_features(path.flip(1), path, present)[0]           # the clip plays the path backwards
    assert (back[:, 2] == 0).all() and torch.allclose(back[:, 0], torch.linspace(1, -1, 9))
    assert torch.allclose(back[:, 1], torch.full((9,), 8 / 36))         # each frame in 8 of the 36 inverted pairs
    swap = path.clone()
    swap[0, [3, 4]] = path[0, [4, 3]]                                  # two neighbouring frames swapped
    one = st.order_features(swap, path, present)[0]
    assert torch.isclose(one[0, 2], torch.tensor(1 - 1 / 36)) and (one[[3, 4], 1] > 0).all() and one[0, 1] == 0
    # an object that is not in the scene does not count; nor do steps below order_px
    ghost = path.clone()
    ghost[..., 4:] = ghost[..., 4:].flip(1)
    assert (st.order_features(ghost, path, torch.tensor([[True, True, False]]))[0, :, 2] == 1).all()
    still = torch.zeros(1, 9, 6)
    assert (st.order_features(still.flip(1), still, present)[0, :, 2] == 1).all()
    # forward: the presence logits come out for the auxiliary loss, which fits them to the replay's objects
    clips = tracked_clips(4)
    out = st(torch.as_tensor(clips["frames"]), torch.as_tensor(clips["instruction"]),
             torch.as_tensor(clips["actions"]), members=True, tracks=True)
    assert len(out) == 6 and out[5].shape == (1, 4, 3)
    r = torch.as_tensor(clips["r_track"])
    _, m = track_loss(out[2][0], out[3][0], out[4][0], torch.as_tensor(clips["x_track"]), r, present=out[5][0])
    _, m_sure = track_loss(out[2][0], out[3][0], out[4][0], torch.as_tensor(clips["x_track"]), r,
                           present=torch.tensor([[20.0, -20.0, -20.0]]).expand(4, 3))
    assert m_sure["track_present"] < 1e-6 < m["track_present"]


def test_students_trained_apart_join_as_one_ensemble(tmp_path):
    torch.manual_seed(0)
    singles = [StudentReward(TINY).eval() for _ in range(3)]
    clips = synthetic_clips(6, t1=5)
    frames, ids = torch.as_tensor(clips["frames"]), torch.as_tensor(clips["instruction"])
    paths = [s.save(tmp_path / f"s{i}.pt") for i, s in enumerate(singles)]
    ens = StudentReward.from_members([singles[0], *paths[1:]])       # modules and checkpoints mix
    assert ens.config.members == 3 and not ens.training
    mean = sum(s.score(frames, ids, amp=False)["total"] for s in singles) / 3
    assert torch.allclose(ens.score(frames, ids, amp=False)["total"], mean, atol=1e-5)
    for a, b in zip(ens.members_as_students(), singles):             # the round trip gives the members back
        assert torch.equal(a.score(frames, ids, amp=False)["total"], b.score(frames, ids, amp=False)["total"])
    with pytest.raises(ValueError, match="architecture.*channels"):
        StudentReward.from_members([singles[0], StudentReward(replace(TINY, channels=TINY.channels + 4))])
    with pytest.raises(ValueError, match="already an ensemble"):
        StudentReward.from_members([ens])
    # the ranking benchmark joins students of different architectures by their mean output
    from benchmarks.student_ranking import MixedEnsemble, load_student

    wide = StudentReward(replace(TINY, channels=TINY.channels + 4)).eval()
    wide_path = wide.save(tmp_path / "wide.pt")
    mixed = load_student([paths[1], wide_path])
    assert isinstance(mixed, MixedEnsemble) and mixed.config.members == 2
    assert mixed.n_params() == singles[1].n_params() + wide.n_params()
    want = (singles[1].score(frames, ids, amp=False)["total"] + wide.score(frames, ids, amp=False)["total"]) / 2
    assert torch.allclose(mixed.score(frames, ids, amp=False)["total"], want, atol=1e-5)
    assert isinstance(load_student(paths[:2]), StudentReward)        # one architecture: a true ensemble
    with pytest.raises(ValueError, match="at least one"):
        StudentReward.from_members([])


def test_depth_adds_residual_convs_and_round_trips(tmp_path):
    """``depth`` extra residual convs change the output, keep shapes, survive save/load;
    a negative depth is refused."""
    clips = synthetic_clips(3)
    torch.manual_seed(0)
    base = StudentReward(TINY).eval()
    torch.manual_seed(0)
    deep = StudentReward(StudentConfig(channels=8, hidden=32, embed=8, depth=2)).eval()
    assert len(deep.convs) == 2 and deep.n_params() == base.n_params() + 2 * (8 * 8 * 9 + 8)
    missing, unexpected = deep.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["convs.0.bias", "convs.0.weight", "convs.1.bias", "convs.1.weight"]
    with torch.no_grad():
        for conv in deep.convs:      # zero residual convs: the base network exactly
            conv.weight.zero_()
            conv.bias.zero_()
    a = base.score(clips["frames"], clips["instruction"], amp=False)
    assert torch.allclose(deep.score(clips["frames"], clips["instruction"], amp=False)["total"], a["total"])
    with torch.no_grad():
        deep.convs[1].bias.fill_(0.5)
    b = deep.score(clips["frames"], clips["instruction"])
    assert b["dims"].shape == (3, 6) and not torch.allclose(b["total"], a["total"])
    again = StudentReward.from_checkpoint(deep.save(tmp_path / "deep.pt"))
    assert again.config.depth == 2
    assert torch.equal(again.score(clips["frames"], clips["instruction"])["total"], b["total"])
    with pytest.raises(ValueError, match="depth"):
        StudentConfig(depth=-1)


def _colour_table(bins: int = 32) -> np.ndarray:
    """A (bins,)*3 + (4,) posterior table: strongly red colours are class 1 (red cube),
    everything else background."""
    table = np.zeros((bins,) * 3 + (4,), np.float32)
    table[..., 0] = 1.0
    r = np.arange(bins)
    red = (r[:, None, None] >= bins // 2) & (r[None, :, None] < bins // 4) & (r[None, None, :] < bins // 4)
    table[red] = (0.0, 1.0, 0.0, 0.0)
    return table


def test_colour_input_reads_the_table_and_round_trips(tmp_path):
    """``colour=True``: per-pixel posteriors come from the installed table (uint8 and float
    frames alike); the per-frame features locate the red blob; the table travels in the
    checkpoint; an empty table, a wrong-shaped table or a student without colour input
    give clear errors."""
    from worldmodel.judge.student import colour_features

    cfg = StudentConfig(channels=8, hidden=32, embed=8, colour=True)
    torch.manual_seed(0)
    st = StudentReward(cfg).eval()
    frames = np.full((2, 3, 64, 64, 3), 90, np.uint8)
    frames[:, :, 40:48, 8:16] = (220, 10, 10)                   # a red square, lower left
    with pytest.raises(RuntimeError, match="set_colour_table"):
        st.score(frames, 0)
    with pytest.raises(ValueError, match="colour table must be"):
        st.set_colour_table(np.zeros((16, 16, 16, 4)))
    with pytest.raises(ValueError, match="no colour input"):
        StudentReward(TINY).set_colour_table(_colour_table())
    st.set_colour_table(_colour_table())
    x = st.prepare_frames(torch.from_numpy(frames))
    post = st.colour_posteriors(x)                                # (N, 3, 64, 64)
    assert post.shape == (6, 3, 64, 64)
    assert post[:, 0, 40:48, 8:16].min() == 1 and post[:, 0].sum() == 6 * 64 and post[:, 1:].sum() == 0
    f = colour_features(torch.nn.functional.avg_pool2d(post, 4))  # (N, 12): area, cx, cy, spread per class
    assert f.shape == (6, 12)
    assert (f[:, 0] > 0.4).all() and (f[:, 1:3] == 0).all()       # red area; no green / gripper
    assert (f[:, 3] < -0.3).all() and (f[:, 6] > 0.1).all()       # red centroid: left (x < 0), low (y > 0)
    as_float = st.prepare_frames(to_unit_frames(frames))
    assert torch.equal(st.colour_posteriors(as_float), post)
    a = st.score(frames, 0, amp=False)["total"]
    assert torch.allclose(st.score(to_unit_frames(frames), 0, amp=False)["total"], a, atol=1e-5)
    moved = frames.copy()
    moved[:, :, 40:48, 8:16] = 90
    moved[:, :, 8:16, 40:48] = (220, 10, 10)                      # the same square, upper right
    assert not torch.allclose(st.score(moved, 0, amp=False)["total"], a)
    again = StudentReward.from_checkpoint(st.save(tmp_path / "colour.pt"))
    assert again.config.colour and torch.equal(again.colour_table, st.colour_table)
    assert torch.equal(again.score(frames, 0, amp=False)["total"], a)
    ens = StudentReward(StudentConfig(channels=8, hidden=32, embed=8, colour=True, members=2)).eval()
    ens.set_colour_table(_colour_table())
    members = ens.members_as_students()
    assert all(bool(m.colour_table.any()) for m in members)
    # the ensemble looks the colours up once and gives every member the same posteriors
    mean = sum(m.score(frames, 0, amp=False)["total"] for m in members) / 2
    assert torch.allclose(ens.score(frames, 0, amp=False)["total"], mean, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny", "quick", "default", "full", "ranking", "tracks"])
def test_every_student_preset_builds_a_student(preset):
    from omegaconf import OmegaConf

    from experiments.pipeline import compose

    cfg = compose("distill_reward", [f"student={preset}"])
    config = StudentConfig.from_dict(OmegaConf.to_container(cfg.student.model))
    assert cfg.student.name == preset and cfg.student.train.steps > 0
    assert StudentReward(config).n_params() > 0
