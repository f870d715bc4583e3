"""Results that regenerate: outcome records, the generated table and its paired tests."""
from __future__ import annotations

import json

import pytest

from agent.evaluate import mcnemar, wilson_interval
from experiments import results


def _record(main=(1, 1, 1, 0, 1, 0), other=(0, 1, 0, 0, 0, 0), date="2026-12-07 10:00 UTC"):
    seeds = list(range(len(main)))

    def rows(succ):
        return [{"seed": s, "success": bool(x), "failure": "none" if x else "missed_grasp", "wrong_object": False,
                 "length": 30 if x else 100, "plan_s_per_step": 0.5, "instruction": "lift the red cube"}
                for s, x in zip(seeds, succ)]
    return {"format": results.FORMAT, "env_id": "roboalign/Lift-v0", "preset": None, "episodes": len(seeds),
            "seeds": seeds, "main": "mpc_prior", "methods": {"mpc_prior": rows(main), "prior_random": rows(other)},
            "stages": {"prior": "prior-abc"}, "wall_s": 600.0, "build_s": 300.0, "command": "python x.py",
            "machine": "test machine", "commit": "abc123", "date": date}


def test_run_table_counts_intervals_and_paired_tests():
    rec = _record()
    table = results.run_table(rec)
    lo, hi = wilson_interval(4, 6)
    assert f"| mpc_prior | 4/6 | [{lo:.2f}, {hi:.2f}] | 0 |" in table
    t = mcnemar([True, True, True, False, True, False], [False, True, False, False, False, False])
    assert (t["a_only"], t["b_only"]) == (3, 0)
    assert "| prior_random | 1/6 |" in table and f"| 3 / 0 | {t['p']:.3f} |" in table
    assert "| 53.3 | 0.500 |" in table        # mean length (4 x 30 + 2 x 100) / 6, planning s/step


def test_records_are_checked_and_rendered_newest_first(tmp_path):
    bad = _record()
    bad["methods"]["prior_random"] = bad["methods"]["prior_random"][:-1]
    with pytest.raises(ValueError, match="same seeds"):
        results.check_record(bad)
    with pytest.raises(ValueError, match="not an outcome file"):
        results.check_record({"env_id": "x"})
    for date in ("2026-12-01 10:00 UTC", "2026-12-05 10:00 UTC"):
        (tmp_path / "src.json").write_text(json.dumps(_record(date=date)))
        results.add(tmp_path / "src.json", name=f"{date[:10]}.json", folder=tmp_path / "results")
    recs = results.load_records(tmp_path / "results")
    assert [name for name, _ in recs] == ["2026-12-05.json", "2026-12-01.json"]
    text = results.render(recs)
    assert text.index("2026-12-05") < text.index("2026-12-01") and "`results/2026-12-05.json`" in text
    assert [n for n, _ in results.newest_per_task(recs)] == ["2026-12-05.json"]      # the README's view


def test_pages_regenerate_between_the_markers_and_check_detects_staleness(tmp_path):
    page = tmp_path / "PAGE.md"
    page.write_text(f"# Title\n\n{results.BEGIN}\nold table\n{results.END}\n\nkept text\n")
    recs = [("run.json", _record())]
    assert results.write_pages(recs, pages=[(page, False)], check=True) == [page]       # stale, nothing written
    assert "old table" in page.read_text()
    assert results.write_pages(recs, pages=[(page, False)]) == [page]
    text = page.read_text()
    assert "old table" not in text and "| mpc_prior | 4/6 |" in text and text.endswith("kept text\n")
    assert results.write_pages(recs, pages=[(page, False)], check=True) == []           # now current
    page.write_text("no markers")
    with pytest.raises(ValueError, match="no generated-results block"):
        results.write_pages(recs, pages=[(page, False)])


def test_committed_pages_are_current():
    """BENCHMARKS.md and the README show exactly what results/ regenerates."""
    assert results.write_pages(results.load_records(), check=True) == []
