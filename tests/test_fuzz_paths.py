"""scripts/fuzz_paths.py: its cases are valid op arguments of every kind it names, and its
comparison fails the outputs it must fail."""

from __future__ import annotations

import random

import pytest
import torch

from fx_fuse import ops
from repo_scripts import load_script


@pytest.fixture(scope="module")
def fuzz():
    return load_script("scripts/fuzz_paths.py")


def test_cases_pass_the_op_checks_and_cover_every_kind(fuzz):
    rng = random.Random(0)
    cases = [fuzz.draw(rng, i) for i in range(300)]
    for case in cases:
        args = fuzz.tensors(case, device="cpu")
        ops.check_args(*args)  # raises on an invalid case
        assert args[0].dim() == (3 if case.n is None else 4)
        if case.layout == "cl":
            assert args[0].is_contiguous(memory_format=torch.channels_last)
        else:
            assert args[0].is_contiguous() == (case.layout != "strided")
        assert (args[2] is None) == (not case.bias)
    assert {c.policy for c in cases} == set(fuzz.POLICIES)
    assert {c.other for c in cases} == set(fuzz.OTHER_KINDS)
    assert {c.layout for c in cases} == {"nchw", "cl", "strided", "weight_cl"}
    assert any(c.groups == c.c > 1 for c in cases) and any(1 < c.groups < c.c for c in cases)
    assert any(c.n is None for c in cases)


def test_a_case_is_drawn_again_from_its_seed(fuzz):
    case = fuzz.draw(random.Random(5), 0)
    first, again = fuzz.tensors(case, device="cpu"), fuzz.tensors(case, device="cpu")
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_the_comparison_fails_wrong_outputs(fuzz):
    case = fuzz.Case(index=0, policy="tf32", n=2, c=8, h=9, w=9, cout=16, kernel=(3, 3),
                     stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1, layout="nchw",
                     bias=True, other="c11", seed=1)
    args = fuzz.tensors(case, device="cpu")
    ref, scale = fuzz.reference64(*args)
    assert fuzz.mismatch(ref.float(), ref, scale, "tf32") is None
    assert "shape" in fuzz.mismatch(ref[:1].float(), ref, scale, "tf32")
    nan = ref.float().clone()
    nan[1, 3, 4, 4] = float("nan")
    assert "NaN" in fuzz.mismatch(nan, ref, scale, "tf32")
    assert "relative error" in fuzz.mismatch(ref.float() * 1.1, ref, scale, "tf32")


def test_the_comparison_fails_one_element_the_norm_does_not_show(fuzz):
    case = fuzz.Case(index=0, policy="fp32", n=8, c=8, h=16, w=16, cout=64, kernel=(3, 3),
                     stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1, layout="nchw",
                     bias=True, other="c11", seed=2)
    ref, scale = fuzz.reference64(*fuzz.tensors(case, device="cpu"))
    out = ref.clone()
    out[3, 5, 7, 7] += 1e-3 * max(ref.abs().max(), scale.max())
    assert "element" in fuzz.mismatch(out, ref, scale, "fp32")
