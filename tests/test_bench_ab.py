"""benchmarks/bench_ab.py: its table of trees against the first, and its arguments."""

from __future__ import annotations

import pytest

from repo_scripts import ROOT, load_script


def _bench_ab():
    return load_script("benchmarks/bench_ab.py")


def test_summary_gives_medians_readings_and_the_change_against_the_first_tree():
    readings = {
        "old": [{"a": 1.0, "b": 0.5}, {"a": 1.2, "b": 0.5}, {"a": 1.1, "b": 0.5}],
        "new": [{"a": 0.99, "b": 0.55}, {"a": 1.045, "b": 0.55}, {"a": 0.9, "b": 0.55}],
    }
    rows = _bench_ab().summarize(readings, ["a", "b"])
    assert rows[0] == ["a", "1.1000 (1.0000 / 1.2000 / 1.1000)", "0.9900 (0.9900 / 1.0450 / 0.9000) -10.0 %"]
    assert rows[1] == ["b", "0.5000 (0.5000 / 0.5000 / 0.5000)", "0.5500 (0.5500 / 0.5500 / 0.5500) +10.0 %"]


def test_one_round_shows_no_readings():
    rows = _bench_ab().summarize({"x": [{"a": 2.0}], "y": [{"a": 1.0}]}, ["a"])
    assert rows == [["a", "2.0000", "1.0000 -50.0 %"]]


def test_trees_are_checked(tmp_path):
    bench_ab = _bench_ab()
    with pytest.raises(SystemExit, match="NAME=PATH"):
        bench_ab.main(["--tree", str(ROOT), "--tree", f"b={ROOT}"])
    with pytest.raises(SystemExit, match="no fx_fuse package"):
        bench_ab.main(["--tree", f"a={ROOT}", "--tree", f"b={tmp_path}"])
    with pytest.raises(SystemExit, match="at least two"):
        bench_ab.main(["--tree", f"a={ROOT}"])
    with pytest.raises(SystemExit, match="unknown layers"):
        bench_ab.main(["--tree", f"a={ROOT}", "--tree", f"b={ROOT}", "--layers", "headline,nope"])
