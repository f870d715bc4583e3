"""The plan-ranking metrics (benchmarks/plan_ranking.py) separate good from bad rankers."""
import numpy as np
import pytest

from benchmarks.plan_ranking import budget_regret, fit_weights, ranking_metrics


def test_ranking_metrics_perfect_reversed_and_constant_scores():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(20, 8)) * 3
    best = ranking_metrics(values, values * 2 + 1, tol=0.1)       # any increasing map of the value
    assert best["pair_acc"] == 1.0 and best["regret"] == 0.0 and best["spearman"] > 0.999
    worst = ranking_metrics(values, -values, tol=0.1)
    assert worst["pair_acc"] == 0.0 and worst["spearman"] < -0.999
    assert np.isclose(worst["regret"], np.mean((values.max(1) - values.min(1)) / (values.max(1) - values.mean(1))))
    flat = ranking_metrics(values, np.zeros_like(values), tol=0.1)   # a tie everywhere = a random pick
    assert flat["pair_acc"] == 0.5 and np.isclose(flat["regret"], 1.0)
    assert best["pairs"] == worst["pairs"] > 0


def test_ranking_metrics_leave_out_value_ties():
    values = np.array([[1.0, 1.0, 1.0, 5.0]])
    m = ranking_metrics(values, np.array([[3.0, 2.0, 1.0, 4.0]]), tol=0.5)
    assert m["pairs"] == 3 and m["pair_acc"] == 1.0 and m["regret"] == 0.0


def test_fit_weights_recovers_a_within_state_linear_value():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(30, 16, 3))
    values = feats @ np.array([2.0, 0.0, -1.0]) + rng.normal(size=(30, 1)) * 10   # a per-state offset is irrelevant
    assert np.allclose(fit_weights(values, feats), [2.0, 0.0, -1.0], atol=1e-6)


def test_budget_regret_trades_candidates_for_imagined_futures():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(40, 8)) * 3
    exact = np.repeat(values[:, :, None, None], 4, 2)                 # every future shows the value
    assert budget_regret(values, exact, lambda f: f[:, 0], 8, 1, 0.1, rng) == 0.0
    fewer = budget_regret(values, exact, lambda f: f[:, 0], 2, 4, 0.1, rng)   # best of 2 random candidates
    assert 0.3 < fewer < 1.0
    noisy = exact + rng.normal(size=exact.shape) * 20                 # one draw says little, four say more
    one = budget_regret(values, noisy, lambda f: f[:, 0], 8, 1, 0.1, np.random.default_rng(0), reps=100)
    four = budget_regret(values, noisy, lambda f: f[:, 0], 8, 4, 0.1, np.random.default_rng(0), reps=100)
    assert four < one
    flat = budget_regret(values, np.zeros_like(exact), lambda f: f[:, 0], 8, 1, 0.1, rng)
    assert np.isclose(flat, 1.0)                                      # all tied: a random pick


def test_paired_difference_finds_a_better_ranker_and_not_an_equal_one():
    from benchmarks.plan_ranking import paired_difference

    rng = np.random.default_rng(2)
    values = rng.normal(size=(40, 8))
    noisy = values + rng.normal(size=values.shape) * 2.0
    good = values + rng.normal(size=values.shape) * 0.3
    d, lo, hi = paired_difference(values, noisy, good, 0.1, "pair_acc", rng, reps=100)
    assert d > 0.1 and lo > 0                      # the better ranker's gain is resolved
    d, lo, hi = paired_difference(values, noisy, noisy.copy(), 0.1, "pair_acc", rng, reps=100)
    assert d == 0 and lo == hi == 0                 # the same scores: exactly no difference


def test_compare_puts_world_models_side_by_side_and_refuses_other_states():
    import pytest

    from benchmarks.plan_ranking import TERMS, compare

    rng = np.random.default_rng(3)
    values = rng.normal(size=(20, 6))
    t = np.arange(20) * 4

    def cache(progress):
        f = np.zeros((20, 6, len(TERMS)))
        f[..., 8] = progress
        return {"value": values, "weights": np.ones(len(TERMS)), "t": t, "student_true": f, "teacher_true": f,
                "student_imagined": f, "teacher_imagined": f}

    good, bad = cache(values), cache(-values)
    table = compare([("bad", bad), ("good", good)], tol=0.1, seed=0, reps=20)
    assert "| student_imagined | progress | 0.000 / " in table and "| student_true | progress |" in table and "1.000 / 0.00 | +1.000 [+1.000, +1.000]" in table
    with pytest.raises(SystemExit, match="same states|states and candidates"):
        compare([("bad", bad), ("other", {**good, "value": values + 1})], tol=0.1, seed=0, reps=5)


def test_per_state_counts_add_up_to_ranking_metrics():
    from benchmarks.plan_ranking import _per_state

    rng = np.random.default_rng(4)
    values, scores = rng.normal(size=(15, 7)), rng.normal(size=(15, 7)).round(1)
    st, m = _per_state(values, scores, 0.2), ranking_metrics(values, scores, 0.2)
    assert np.isclose(st[:, 0].sum() / st[:, 1].sum(), m["pair_acc"]) and np.isclose(np.nanmean(st[:, 2]), m["regret"])


def test_top_pick_optimism_counts_false_stages_of_the_argmax():
    from benchmarks.plan_ranking import TERMS, top_pick_optimism

    true = np.zeros((2, 4, len(TERMS)))
    imag = true.copy()
    imag[0, 1, 0] = 1.0          # state 0: candidate 1 imagined as done (IF 3/3), truly nothing
    c = {"teacher_true": true, "teacher_imagined": imag}
    scores = np.array([[0, 5, 1, 2], [3, 1, 0, 0.0]])
    assert top_pick_optimism(c, scores) == (0.5, 1 / 8)          # state 0's argmax is the false lift
    assert top_pick_optimism(c, -scores)[0] == 0.0


def test_pessimism_rows_show_a_lucky_draw_losing_its_pick():
    from benchmarks.plan_ranking import TERMS, pessimism_rows

    # one state, 3 candidates x 2 draws. Candidate 0 is truly best and imagined steadily well;
    # candidate 1 is truly worst but one of its draws imagines a lift (IF 3/3, objective 10)
    obj = np.array([[[3.0, 3.0], [10.0, 0.0], [1.0, 1.0]]])
    sf = np.zeros((1, 3, 2, len(TERMS)))
    sf[..., 8] = obj
    tf = np.zeros_like(sf)
    tf[0, 1, 0, 0] = 1.0
    c = {"value": np.array([[5.0, 0.0, 2.0]]), "weights": np.eye(len(TERMS))[8], "student_futures": sf,
         "teacher_futures": tf, "teacher_true": np.zeros((1, 3, len(TERMS)))}
    rows = {tuple(x.strip() for x in r.split("|")[1:3]): r for r in pessimism_rows(c, 0.1)}
    assert rows[("2", "mean")].endswith("| 0.333 | 1.88 | 0.50 |")        # the lucky draw wins: the worst pick
    assert rows[("2", "mean - 1 x spread")].endswith("| 1.000 | 0.00 | 0.00 |")   # the steady candidate wins
    assert ("4", "mean") not in rows                                    # only k <= the draws held


def test_rescore_with_actions_reads_the_candidates(tmp_path):
    import torch

    from benchmarks.plan_ranking import TERMS, rescore, scored_actions
    from worldmodel.judge.student import StudentConfig, StudentReward

    rng = np.random.default_rng(0)
    n_s, n_c = 2, 3
    clips = rng.integers(0, 256, (n_s, n_c, 9, 64, 64, 3), dtype=np.uint8)
    cands = rng.uniform(-1, 1, (n_s, n_c, 16, 4)).astype(np.float32)
    torch.manual_seed(0)
    s = StudentReward(StudentConfig(channels=8, hidden=32, embed=8, actions=True))
    torch.nn.init.normal_(s.act_proj.weight)            # zero-initialised: make actions matter
    s.save(tmp_path / "student.pt")
    base = {"clips_true": clips, "clips_imagined": clips, "candidates": cands, "instruction": np.zeros(n_s, int),
            "student_futures": np.zeros((n_s, n_c, 1, len(TERMS)))}
    video, acted = dict(base), dict(base)
    rescore(video, str(tmp_path / "student.pt"))
    rescore(acted, str(tmp_path / "student.pt"), score_actions=True)
    assert video["student_imagined"].shape == (n_s, n_c, len(TERMS)) and not scored_actions(video)
    assert scored_actions(acted) and "student_futures" not in acted
    assert not np.allclose(video["student_imagined"], acted["student_imagined"])
    # each clip is scored with its own candidate's actions: reordering both reorders the scores,
    # pairing the clips with other candidates' actions changes them
    both = {**base, "clips_true": clips[:, ::-1].copy(), "clips_imagined": clips[:, ::-1].copy(),
            "candidates": cands[:, ::-1].copy()}
    rescore(both, str(tmp_path / "student.pt"), score_actions=True)
    assert np.allclose(both["student_imagined"], acted["student_imagined"][:, ::-1], atol=1e-4)
    mismatched = {**base, "candidates": cands[:, ::-1].copy()}
    rescore(mismatched, str(tmp_path / "student.pt"), score_actions=True)
    assert not np.allclose(mismatched["student_imagined"], acted["student_imagined"])
    with pytest.raises(SystemExit, match="does not read actions"):
        StudentReward(StudentConfig(channels=8, hidden=32, embed=8)).save(tmp_path / "video.pt")
        rescore(dict(base), str(tmp_path / "video.pt"), score_actions=True)


def test_proprio_rows_add_the_imagined_lift_and_count_its_false_lifts_at_the_top_pick():
    from benchmarks.plan_ranking import TERMS, proprio_rows

    # one state, 3 candidates: candidate 0 truly lifts (teacher IF 3/3 on its true clip) and its
    # imagined proprio ends held and raised; candidate 1 imagines the same hold but truly fails;
    # candidate 2 is shut on nothing. The student's objective prefers candidate 2.
    held = np.tile([0.0, 0.0, 0.9, 0.05], (5, 1))
    empty = held.copy()
    empty[:, 3] = 0.001
    sv = np.zeros((1, 3, len(TERMS)))
    sv[0, :, 8] = [0.0, 0.1, 1.0]
    tt = np.zeros((1, 3, len(TERMS)))
    tt[0, 0, 0] = 1.0
    cands = np.ones((1, 3, 16, 4))
    c = {"value": np.array([[5.0, 1.0, 0.0]]), "weights": np.eye(len(TERMS))[8], "student_imagined": sv,
         "teacher_true": tt, "teacher_imagined": tt, "candidates": cands,
         "proprio_imagined": np.stack([held, held, empty])[None]}
    rows = {r.split("|")[1].strip(): r for r in proprio_rows(c, 0.1, weights=(10.0,))}
    assert rows["MPC objective"].endswith("| 0.000 | 1.67 | 0.00 | 0.00 |")         # picks the empty close
    # alone, the lift ties candidates 0 and 1 (one true, one false lift): half a false lift at the top
    assert rows["proprio lift alone"].endswith("| 0.833 | 0.67 | 0.50 | 0.00 |")
    # added with weight 10, the student breaks the tie toward candidate 1: the false lift
    assert rows["MPC objective + 10 x proprio lift"].endswith("| 0.667 | 1.33 | 1.00 | 0.00 |")
