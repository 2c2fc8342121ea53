"""The ``torch.compile`` backend: rewrite the graph, then hand it to an inner compiler.

Registered through the ``torch_dynamo_backends`` entry point (see pyproject.toml), so
``torch.compile(model, backend="fx_fuse")`` works without ``import fx_fuse``::

    torch.compile(model, backend="fx_fuse", options={"inner": "aot_eager"})

``options["inner"]`` is ``"inductor"``, ``"aot_eager"`` or ``"eager"``; every other option
is passed to Inductor as a config patch, and ``mode=`` is Inductor's mode. Without them,
Inductor compiles the graph unless nothing but fused ops is left in it: then the graph runs
as it is (Inductor would only add its call overhead, ~100 us, around the ops).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
from torch import fx
from torch._dynamo.utils import counters

from .rewrite import FUSED_OP, rewrite

INNER_COMPILERS = ("inductor", "aot_eager", "eager")


def _inductor(gm, example_inputs, mode: Optional[str], config: Dict[str, Any]):
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    patches = {**list_mode_options(mode), **config} if mode else dict(config)
    return compile_fx(gm, example_inputs, config_patches=patches)


def _aot_eager(gm, example_inputs, mode, config):
    from torch._dynamo.backends.registry import lookup_backend

    return lookup_backend("aot_eager")(gm, example_inputs)


def _eager(gm, example_inputs, mode, config):
    return gm.forward


_COMPILERS = {"inductor": _inductor, "aot_eager": _aot_eager, "eager": _eager}


def _only_fused_ops(gm: fx.GraphModule) -> bool:
    """Whether every computation left in ``gm`` is a fused op (nothing for Inductor)."""
    return all(
        node.op in ("placeholder", "get_attr", "output") or node.target is FUSED_OP
        for node in gm.graph.nodes
    )


def fx_fuse_backend(
    gm: fx.GraphModule,
    example_inputs: List[torch.Tensor],
    *,
    mode: Optional[str] = None,
    options: Optional[Dict[str, Any]] = None,
) -> Callable:
    """Fuse conv2d -> relu -> add in ``gm``, count the sites in
    ``torch._dynamo.utils.counters["fx_fuse"]``, and compile the rest with the inner
    compiler."""
    config = dict(options or {})
    inner = config.pop("inner", None)
    if inner not in _COMPILERS and inner is not None:
        raise ValueError(
            f"fx_fuse backend: expected options['inner'] in {INNER_COMPILERS}, got {inner!r}"
        )
    if config and inner not in (None, "inductor"):
        raise ValueError(
            f"fx_fuse backend: options {sorted(config)} are Inductor config and need "
            f"inner='inductor', got inner={inner!r}"
        )
    sites = rewrite(gm)
    if inner is None:
        plain = not config and mode is None and _only_fused_ops(gm)
        inner = "eager" if plain else "inductor"
    # Count after the inner compiler succeeds: when it asks Dynamo to restart the
    # compile (AOTAutograd's TensorifyScalarRestartAnalysis), this graph comes back.
    compiled = _COMPILERS[inner](gm, example_inputs, mode, config)
    fused = sum(site.fused for site in sites)
    counters["fx_fuse"]["fused"] += fused
    counters["fx_fuse"]["refused"] += len(sites) - fused
    return compiled
