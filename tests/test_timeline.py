"""scripts/timeline.py: the timing build applies to the kernel sources as they are, and its
summary reads the stamps it prints."""

from __future__ import annotations

import pytest

from repo_scripts import ROOT, load_script


def _timeline():
    return load_script("scripts/timeline.py")


def test_build_stamps_a_copy_of_the_kernel_sources(tmp_path):
    timeline = _timeline()
    timeline.build(tmp_path / "tl")
    conv = (tmp_path / "tl" / "kernels" / "patch_conv.cuh").read_text()
    for event in range(15):
        stamp = "TLC" if event < 9 else "TLP"
        assert f"{stamp}({event})" in conv, event
    assert "printf" not in conv.split("static __global__ void fx_tl_dump()")[1].split("\n}\n", 1)[1]
    launch = (tmp_path / "tl" / "kernels" / "launch.cuh").read_text()
    assert "fx_tl_dump<<<1, 1, 0, stream>>>();" in launch
    assert "TLC(" not in (ROOT / "kernels" / "patch_conv.cuh").read_text()  # the tree is untouched
    assert (tmp_path / "tl" / "fx_fuse" / "__init__.py").is_file()


def test_build_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "something").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        _timeline().build(tmp_path)


def test_an_anchor_the_source_lost_is_named(tmp_path):
    timeline = _timeline()
    timeline.build(tmp_path / "tl")  # already stamped: the anchors now read differently
    with pytest.raises(ValueError, match="expected one occurrence"):
        timeline.stamp_sources(tmp_path / "tl" / "kernels")


def _printout():
    """Eight tiles of one consumer thread and sixteen units of the patch warps, clock 2 GHz
    (TLCAL: 1,000 ns took 2,000 clocks): multiplies 2,000 clocks (1 us) with a 200-clock
    wait for the second unit, barrier 20, epilogue 1,000, next-tile wait 80."""
    lines = ["warm-up launch's stamps", "=== RECORDED", "TLCAL 1000 2000"]
    t = 0
    for _ in range(8):
        lines += [f"TLC 0 {t}", f"TLC 5 {t + 900}", f"TLC 6 {t + 1100}", f"TLC 1 {t + 2200}",
                  f"TLC 2 {t + 2220}", f"TLC 3 {t + 3220}", f"TLC 4 {t + 3300}"]
        t += 3400
    t = 0
    for _ in range(16):
        for event, step in zip(range(9, 15), (0, 100, 300, 400, 600, 1000)):
            lines.append(f"TLP {event} {t + step}")
        t += 1700
    return "\n".join(lines)


def test_summary_reads_the_steps():
    out = "\n".join(_timeline().summary(_printout()))
    assert "clock 2.000 GHz" in out
    for label, us in (("tile", 1.70), ("multiplies", 1.00), ("unit wait", 0.10), ("barrier", 0.01),
                      ("epilogue", 0.50), ("next wait", 0.04), ("slot wait", 0.05),
                      ("write-out", 0.10), ("issue", 0.05), ("landing", 0.10), ("rearrange", 0.20)):
        assert f"  {label:12s} {us:6.2f}" in out, (label, out)


def test_summary_needs_a_timing_build():
    with pytest.raises(ValueError, match="TLCAL"):
        _timeline().summary("=== RECORDED\nnothing here\n")
