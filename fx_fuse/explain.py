"""``fx_fuse.explain(model, *inputs)``: what was fused, what was refused, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from tabulate import tabulate
from torch import fx

from .rewrite import Site, _doc, GUARDS, rewrite

_REASONS = {guard.__name__: _doc(guard) for guard in GUARDS}


@dataclass
class Report:
    """Every conv -> relu -> add candidate of a model, fused or refused, and the rewritten
    graphs. ``str(report)`` is a table; ``report.code`` is the rewritten graphs' code."""

    sites: List[Site] = field(default_factory=list)
    graphs: List[fx.GraphModule] = field(default_factory=list)

    @property
    def fused(self) -> int:
        return sum(site.fused for site in self.sites)

    @property
    def refused(self) -> int:
        return len(self.sites) - self.fused

    @property
    def code(self) -> str:
        """The Python code of every rewritten graph, in the order Dynamo captured them."""
        return "\n".join(
            f"# graph {i}\n{gm.code.strip()}\n" for i, gm in enumerate(self.graphs)
        )

    def table(self) -> str:
        rows = [
            [
                i,
                site.location,
                site.conv,
                _short(site.stride),
                _short(site.padding),
                _short(site.dilation),
                site.groups,
                _short(site.input_shape),
                _short(site.weight_shape),
                site.other,
                site.dtype,
                "fused" if site.fused else "refused",
                site.reason or site.detail,
            ]
            for i, site in enumerate(self.sites)
        ]
        headers = ["#", "where", "conv", "stride", "padding", "dilation", "groups", "input",
                   "weight", "other", "dtype", "result", "reason"]
        return tabulate(rows, headers=headers)

    def __str__(self) -> str:
        graphs = f"{len(self.graphs)} graph" + ("s" if len(self.graphs) != 1 else "")
        summary = f"fx_fuse: {self.fused} fused, {self.refused} refused ({graphs})"
        if not self.sites:
            return summary + "\nno conv2d -> relu -> add site found"
        lines = [summary, self.table()]
        reasons = sorted({site.reason for site in self.sites if site.reason})
        if reasons:
            lines.append("reasons:")
            lines.extend(f"  {name}: {_REASONS.get(name, '')}" for name in reasons)
        return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value) if value else "-"
    return "?" if value is None else str(value)


def explain(model: torch.nn.Module, *example_inputs, **example_kwargs) -> Report:
    """Run ``model`` once under Dynamo, as ``torch.compile(backend="fx_fuse")`` would see
    it, and report every candidate site: where it is, its conv parameters and shapes,
    and whether it was fused or which rule refused it.

    The model runs for real (without gradients): graph breaks and data-dependent code
    take the same path as in your program.
    """
    report = Report()

    def record(gm: fx.GraphModule, inputs):
        report.sites.extend(rewrite(gm))
        report.graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=record, dynamic=False)
    with torch.no_grad():
        compiled(*example_inputs, **example_kwargs)
    return report
