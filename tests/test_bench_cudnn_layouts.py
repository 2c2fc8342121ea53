"""benchmarks/bench_cudnn_layouts.py: its layers are the ones its names say the planner's
rule sends through channels-last data (or leaves NCHW), and its kernel column names the
kernels it shows."""

from __future__ import annotations

import pytest
import torch

from repo_scripts import load_script


@pytest.fixture(scope="module")
def layouts():
    return load_script("benchmarks/bench_cudnn_layouts.py")


def test_each_layer_is_where_its_name_says_the_rule_puts_it(layouts, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    answers = []
    for name, x_shape, cout, k, stride, padding, dtype in layouts.LAYERS:
        answers.append(layouts.rule_reads_channels_last(x_shape, cout, k, stride, padding, dtype))
        assert answers[-1] == ("(NCHW" not in name), name
    assert 0 < sum(answers) < len(answers)  # both kinds of layer


def test_kernel_split_names_the_kernels_of_a_microsecond_or_more(layouts):
    kernels = [("void fx_fuse::(anonymous namespace)::transpose_kernel<float, false>(...)", 14.8),
               ("void fx_fuse::(anonymous namespace)::filter_transpose_kernel<unsigned int>(...)", 3.4),
               ("at::native::elementwise_kernel<...>", 3.6),
               ("sm90_xmma_fprop_implicit_gemm_bf16bf16_...", 77.5),
               ("void cudnn::engines_precompiled::nhwcToNchwKernel<...>", 26.2),
               ("Memset (Device)", 0.9)]
    assert layouts.kernel_split(kernels) == "ours 14.8; weights 3.4; copy 3.6; conv 77.5; to NCHW 26.2"
