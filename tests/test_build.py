"""CI compile check of the fused kernel: builds it with nvcc (no GPU needed), loads the
extension, and reads ptxas's resource report: the main kernels must not spill.

Skips where nvcc or a CUDA build of torch is missing."""

from __future__ import annotations

import re

import pytest
import torch

from fx_fuse import _build

ARCH = "9.0"  # sm_90a: the target of the fast path; the others share the same templates


def _skip_reason():
    if torch.version.cuda is None:
        return "torch is not a CUDA build"
    if _build.nvcc_path() is None:
        return "nvcc not found (set CUDA_HOME)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import os

    cache = tmp_path_factory.mktemp("fx_fuse_cache")
    saved = os.environ.get("FX_FUSE_CACHE_DIR")
    os.environ["FX_FUSE_CACHE_DIR"] = str(cache)
    try:
        module = _build.build(ARCH)
        log = (_build.build_dir_for(ARCH) / "build.log").read_text(errors="replace")
    finally:
        if saved is None:
            os.environ.pop("FX_FUSE_CACHE_DIR")
        else:
            os.environ["FX_FUSE_CACHE_DIR"] = saved
    return module, log


def test_extension_exposes_the_kernel_entry_point(built):
    module, _ = built
    assert callable(module.conv2d_relu_add_out)
    assert callable(module.relu_add_out)  # the cuDNN path's epilogue pass
    # the op's CUDA kernel and its registration with the dispatcher
    assert callable(module.conv2d_relu_add) and callable(module.register_op)


def _ptxas_reports(log: str):
    """(kernel name, spill store bytes, spill load bytes) for every compiled entry."""
    pattern = re.compile(
        r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>[^']+)'.*?"
        r"(?P<st>\d+) bytes spill stores, (?P<ld>\d+) bytes spill loads",
        re.S,
    )
    return [(m["name"], int(m["st"]), int(m["ld"])) for m in pattern.finditer(log)]


def test_main_kernels_do_not_spill(built):
    _, log = built
    reports = [r for r in _ptxas_reports(log) if "conv_relu_add_kernel" in r[0]]
    # 4 arithmetics x {scalar, vector gather} x {128x128, 128x64}, less 3xTF32's 128x128,
    # and the wgmma 128x128 of TF32, fp16 and bf16 x {scalar, vector gather}
    assert len(reports) == 20, f"expected 20 main kernels in the ptxas report, got {len(reports)}"
    assert sum("ELb1EEEv" in name for name, _, _ in reports) == 6  # the wgmma kernels
    patch = [r for r in _ptxas_reports(log) if "conv_relu_add_patch_kernel" in r[0]]
    # 4 arithmetics x 2 layouts x {128, 64}-channel tiles, TF32, fp16, bf16 NCHW with
    # staged output rows, and TF32 NCHW with A read from the patch (with and without staged
    # rows)
    assert len(patch) == 21, f"expected 21 patch kernels, got {len(patch)}"
    epilogue = [r for r in _ptxas_reports(log) if "conv_epilogue" in r[0]]
    # fp32, fp16, bf16 x {general, 16-byte NCHW, 16-byte channels-last}
    assert len(epilogue) == 9, f"expected 9 epilogue kernels, got {len(epilogue)}"
    depthwise = [r for r in _ptxas_reports(log) if "depthwise_conv_kernel" in r[0]]
    # 3 dtypes x (one output channel: 5 compiled sizes and the run-time one; two: 4 and 1;
    # four: 2 and 1)
    assert len(depthwise) == 42, f"expected 42 depthwise kernels, got {len(depthwise)}"
    depthwise_cl = [r for r in _ptxas_reports(log) if "depthwise_cl_kernel" in r[0]]
    # 3 dtypes x 5 compiled sizes
    assert len(depthwise_cl) == 15, f"expected 15 channels-last depthwise kernels, got {len(depthwise_cl)}"
    direct = [r for r in _ptxas_reports(log) if "direct_conv_kernel" in r[0]]
    # 3 dtypes x {3x3 compiled, sizes at run time} x {one output a thread, eight channels}
    assert len(direct) == 12, f"expected 12 direct kernels, got {len(direct)}"
    kernels = reports + patch + epilogue + depthwise + depthwise_cl + direct
    spilling = [r for r in kernels if r[1] or r[2]]
    assert not spilling, f"kernels spilling registers: {spilling}"


def test_wgmma_kernels_are_not_serialized(built):
    # ptxas serializes a kernel's wgmmas (each waits for the one before) where it runs out of
    # registers for them, and says so (C7511, or C7510 for other causes): the kernel stays
    # correct but loses its tensor-core pipeline
    _, log = built
    serialized = re.findall(r"wgmma\.mma_async instructions are serialized[^\n]*'(\w+)'", log)
    assert not serialized, f"kernels whose wgmmas ptxas serialized: {sorted(set(serialized))}"


def test_bad_arch_list_is_rejected():
    with pytest.raises(ValueError, match="conv2d_relu_add"):
        _build._parse_arch_list("7.5")
    assert _build._parse_arch_list("9.0") == ["-gencode=arch=compute_90a,code=sm_90a"]
    assert "-gencode=arch=compute_80,code=compute_80" in _build._parse_arch_list("8.0+PTX")


def test_sources_found():
    root = _build.kernels_dir()
    assert (root / "binding.cpp").is_file() and (root / "conv_relu_add.cuh").is_file()
