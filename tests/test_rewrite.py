"""The rewrite pass: every spelling of conv2d -> relu -> add fuses, every unsafe site is
refused with its reason, through the three front ends users reach it by:

* ``fuse``    — ``fx_fuse.fuse(model, *inputs)`` on a ``symbolic_trace`` graph,
* ``compile`` — ``torch.compile(model, backend="fx_fuse")`` (a Dynamo graph),
* ``export``  — ``fx_fuse.fuse(torch.export.export(model, inputs).module())`` (ATen).

A case is a small model built from named pieces (a conv, a relu, an add, an ``other`` and
the shape of the forward) plus what the pass must decide about it. Every case checks the
output against eager; fused cases also check the number of op nodes, that nothing of the
site is left, that a second pass changes nothing and that the graph lints.
"""

from __future__ import annotations

import copy
import importlib
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

import fx_fuse

rw = importlib.import_module("fx_fuse.rewrite")
backend_module = importlib.import_module("fx_fuse.backend")

FUSED = torch.ops.fx_fuse.conv2d_relu_add.default

# The even-kernel padding="same" cases are refused on purpose; PyTorch warns about them.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

# Odd sizes, so that a mix-up of H and W or of channels shows.
N, C_IN, C_OUT, H, W = 2, 3, 6, 9, 11


# ---------------------------------------------------------------------------------------
# Pieces of a model


class Functional(nn.Module):
    """A convolution written as a function call on the module's own parameters."""

    def __init__(self, call, weight_shape, bias=True, out_channels=C_OUT):
        super().__init__()
        self.call = call
        self.weight = nn.Parameter(torch.randn(weight_shape) * 0.2)
        self.bias = nn.Parameter(torch.randn(out_channels)) if bias else None

    def forward(self, x):
        return self.call(x, self.weight, self.bias)


def _fn(call, kernel=(3, 3), groups=1, bias=True):
    return lambda: Functional(call, (C_OUT, C_IN // groups, *kernel), bias)


class ForwardOverride(nn.Conv2d):
    """A Conv2d subclass whose forward computes something else than a convolution."""

    def forward(self, x):
        return F.conv2d(x, self.weight.flip(-1), self.bias, self.stride, self.padding)


CONVS: Dict[str, Callable[[], nn.Module]] = {
    "Conv2d": lambda: nn.Conv2d(C_IN, C_OUT, 3, padding=1),
    "Conv2d-bias=False": lambda: nn.Conv2d(C_IN, C_OUT, 3, padding=1, bias=False),
    "Conv2d-int-args": lambda: nn.Conv2d(C_IN, C_OUT, 5, 2, 1, 2),
    "Conv2d-tuple-args": lambda: nn.Conv2d(C_IN, C_OUT, (5, 3), (2, 1), (1, 0), (1, 2)),
    "Conv2d-kwargs": lambda: nn.Conv2d(
        in_channels=C_IN, out_channels=C_OUT, kernel_size=3, stride=2, padding=2,
        dilation=2, groups=3, bias=True,
    ),
    "Conv2d-groups": lambda: nn.Conv2d(C_IN, C_OUT, 3, padding=1, groups=C_IN),
    "Conv2d-1x1": lambda: nn.Conv2d(C_IN, C_OUT, 1),
    "Conv2d-same": lambda: nn.Conv2d(C_IN, C_OUT, 3, padding="same"),
    "Conv2d-same-5x3-dilated": lambda: nn.Conv2d(C_IN, C_OUT, (5, 3), padding="same",
                                                 dilation=(1, 2)),
    "Conv2d-valid": lambda: nn.Conv2d(C_IN, C_OUT, 3, padding="valid"),
    "Conv2d-in-Sequential": lambda: nn.Sequential(nn.Conv2d(C_IN, C_OUT, 3, padding=1)),
    "F.conv2d": _fn(lambda x, w, b: F.conv2d(x, w, b)),
    "F.conv2d-positional": _fn(lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 1)),
    "F.conv2d-kwargs": _fn(
        lambda x, w, b: F.conv2d(x, weight=w, bias=b, stride=(2, 1), padding=(0, 1),
                                 dilation=(2, 1), groups=1)
    ),
    "F.conv2d-bias=None": _fn(lambda x, w, b: F.conv2d(x, w, None, padding=1), bias=False),
    "F.conv2d-groups": _fn(lambda x, w, b: F.conv2d(x, w, b, groups=3, padding=1), groups=3),
    "F.conv2d-same": _fn(lambda x, w, b: F.conv2d(x, w, b, padding="same")),
    "F.conv2d-valid": _fn(lambda x, w, b: F.conv2d(x, w, b, padding="valid")),
    "torch.conv2d": _fn(lambda x, w, b: torch.conv2d(x, w, b, 1, 1)),
    "torch.conv2d-kwargs": _fn(
        lambda x, w, b: torch.conv2d(input=x, weight=w, bias=b, stride=1, padding="same",
                                     dilation=2)
    ),
    "aten.conv2d-packet": _fn(lambda x, w, b: torch.ops.aten.conv2d(x, w, b, [1, 1], [1, 1])),
    # Refused spellings.
    "Conv2d-spectral_norm": lambda: nn.utils.spectral_norm(nn.Conv2d(C_IN, C_OUT, 3, padding=1)),
    "Conv2d-reflect": lambda: nn.Conv2d(C_IN, C_OUT, 3, padding=1, padding_mode="reflect"),
    "Conv2d-circular": lambda: nn.Conv2d(C_IN, C_OUT, 3, padding=1,
                                         padding_mode="circular"),
    "Conv2d-same-even-kernel": lambda: nn.Conv2d(C_IN, C_OUT, 4, padding="same"),
    "F.conv2d-same-even-kernel": _fn(lambda x, w, b: F.conv2d(x, w, b, padding="same"),
                                     kernel=(2, 3)),
    "Conv1d": lambda: nn.Conv1d(C_IN, C_OUT, 3, padding=1),
    "F.conv1d": lambda: Functional(lambda x, w, b: F.conv1d(x, w, b), (C_OUT, C_IN, 3)),
    "Conv3d": lambda: nn.Conv3d(C_IN, C_OUT, 3, padding=1),
    "F.conv3d": lambda: Functional(lambda x, w, b: F.conv3d(x, w, b), (C_OUT, C_IN, 1, 3, 3)),
    "ConvTranspose2d": lambda: nn.ConvTranspose2d(C_IN, C_OUT, 3),
    "F.conv_transpose2d": lambda: Functional(lambda x, w, b: F.conv_transpose2d(x, w, b, 2),
                                             (C_IN, C_OUT, 3, 3)),
    "Conv2d-forward-override": lambda: ForwardOverride(C_IN, C_OUT, 3, padding=1),
}

_INPUT_RANK = {"Conv1d": 3, "F.conv1d": 3, "Conv3d": 5, "F.conv3d": 5}


def _relu_method_inplace(t):
    return t.relu_()


RELUS: Dict[str, Callable[[], Callable]] = {
    "torch.relu": lambda: torch.relu,
    "aten.relu-packet": lambda: torch.ops.aten.relu,
    "F.relu": lambda: F.relu,
    "nn.ReLU": lambda: nn.ReLU(),
    "nn.ReLU-inplace": lambda: nn.ReLU(inplace=True),
    "F.relu-inplace": lambda: lambda t: F.relu(t, inplace=True),
    "F.relu-inplace-positional": lambda: lambda t: F.relu(t, True),
    "Tensor.relu": lambda: lambda t: t.relu(),
    "Tensor.relu_": lambda: _relu_method_inplace,
    "torch.relu_": lambda: torch.relu_,
    "torch.Tensor.relu-unbound": lambda: torch.Tensor.relu,
    "Tensor.clamp-min=0": lambda: lambda t: t.clamp(min=0),
    "torch.clamp-min=0": lambda: lambda t: torch.clamp(t, min=0),
    "torch.clamp-0-positional": lambda: lambda t: torch.clamp(t, 0),
    "Tensor.clamp_min": lambda: lambda t: t.clamp_min(0),
    "torch.clamp_min": lambda: lambda t: torch.clamp_min(t, 0.0),
    "Tensor.clip-0": lambda: lambda t: t.clip(0),
    "F.threshold-0-0": lambda: lambda t: F.threshold(t, 0.0, 0.0),
    "nn.Threshold-0-0": lambda: nn.Threshold(0, 0),
}


def _iadd(a, b):
    a += b
    return a


ADDS: Dict[str, Callable] = {
    "+": lambda a, b: a + b,
    "+-other-first": lambda a, b: b + a,
    "torch.add": lambda a, b: torch.add(a, b),
    "aten.add-packet": lambda a, b: torch.ops.aten.add(a, b),
    "torch.add-other-first": lambda a, b: torch.add(b, a),
    "torch.add-kwargs": lambda a, b: torch.add(input=a, other=b),
    "torch.add-alpha=1": lambda a, b: torch.add(a, b, alpha=1),
    "Tensor.add": lambda a, b: a.add(b),
    "Tensor.add-other-first": lambda a, b: b.add(a),
    "Tensor.add-alpha=1": lambda a, b: a.add(b, alpha=1),
    "Tensor.add_": lambda a, b: a.add_(b),
    "+=": _iadd,
    "torch.Tensor.add-unbound": lambda a, b: torch.Tensor.add(a, b),
    "Tensor.__add__": lambda a, b: a.__add__(b),
    # Refused spellings.
    "torch.add-alpha=2": lambda a, b: torch.add(a, b, alpha=2),
    "Tensor.add-alpha=0.5": lambda a, b: a.add(b, alpha=0.5),
    "+=-into-other": lambda a, b: _iadd(b, a),
    "Tensor.add_-into-other": lambda a, b: b.add_(a),
}


class Other:
    """How ``other`` is read: from the forward's inputs (``y``, or ``x`` itself), from the
    model (a parameter, a second conv), or a Python constant."""

    @staticmethod
    def y(model, x, y):
        return y

    @staticmethod
    def parameter(model, x, y):
        return model.other

    @staticmethod
    def x(model, x, y):
        return x

    @staticmethod
    def second_site(model, x, y):
        return model.relu2(model.conv2(x))

    @staticmethod
    def int(model, x, y):
        return 2

    @staticmethod
    def float(model, x, y):
        return -0.5


def _tensor(shape_of, dtype=None):
    return lambda out, default: torch.randn(shape_of(out), dtype=dtype or default)


# name -> (how the forward reads other, how ``y`` or the parameter is made from the conv
# output's shape and the case's dtype)
OTHERS: Dict[str, Tuple[Callable, Callable]] = {
    "residual": (Other.y, _tensor(lambda out: out)),
    "per-channel-(C,1,1)": (Other.parameter, _tensor(lambda out: (out[-3], 1, 1))),
    "per-channel-(1,C,1,1)": (Other.parameter, _tensor(lambda out: (1, out[-3], 1, 1))),
    "per-channel-int64": (Other.y, lambda out, dt: torch.arange(out[-3]).view(-1, 1, 1)),
    "bool-mask": (Other.y, lambda out, dt: torch.rand(out) > 0.5),
    "row-(W,)": (Other.y, _tensor(lambda out: (out[-1],))),
    "0-dim": (Other.y, _tensor(lambda out: ())),
    "conv-input": (Other.x, None),
    "second-site": (Other.second_site, None),
    "int": (Other.int, None),
    "float": (Other.float, None),
    "int-input": (Other.y, lambda out, dt: 3),
    "float-input": (Other.y, lambda out, dt: 0.25),
    # Refused: the sum is larger than the conv output.
    "broadcast-to-larger": (Other.y, _tensor(lambda out: (3, *out[1:]))),
}


# Bodies: the forward's shape around the three calls.


def chain(m, x, y):
    return m.add(m.relu(m.conv(x)), m.other_of(x, y))


def relu_statement(m, x, y):
    """``c = conv(x); c.relu_(); return c + y``: the add reads the conv's variable (with
    any in-place relu spelling)."""
    c = m.conv(x)
    m.relu(c)
    return m.add(c, m.other_of(x, y))


def iadd_statement(m, x, y):
    """``out = relu(conv(x)); out += y; return out``."""
    out = m.relu(m.conv(x))
    out += m.other_of(x, y)
    return out


def add_inplace_statement(m, x, y):
    """``out = relu(conv(x)); out.add_(y); return out, out * 2``: readers after the add
    read the sum."""
    out = m.relu(m.conv(x))
    out.add_(m.other_of(x, y))
    return out, out * 2


def conv_read_again(m, x, y):
    c = m.conv(x)
    return m.add(m.relu(c), m.other_of(x, y)) * c


def relu_read_again(m, x, y):
    r = m.relu(m.conv(x))
    return m.add(r, m.other_of(x, y)) * r


def relu_read_by_two_adds(m, x, y):
    r = m.relu(m.conv(x))
    return m.add(r, m.other_of(x, y)) * m.add(r, 1)


def relu_added_to_itself(m, x, y):
    r = m.relu(m.conv(x))
    return m.add(r, r)


def relu_inplace_added_to_itself(m, x, y):
    c = m.conv(x)
    c.relu_()
    return m.add(c, c)


def relu_returned(m, x, y):
    r = m.relu(m.conv(x))
    return m.add(r, m.other_of(x, y)), r


def conv_returned(m, x, y):
    c = m.conv(x)
    return m.add(m.relu(c), m.other_of(x, y)), c


def relu_inplace_returned(m, x, y):
    c = m.conv(x)
    c.relu_()
    return m.add(c, m.other_of(x, y)), c


def input_mutated(m, x, y):
    r = m.relu(m.conv(x))
    x.mul_(2)
    return m.add(r, m.other_of(x, y))


def input_view_mutated(m, x, y):
    r = m.relu(m.conv(x))
    x[:, :1].mul_(2)
    return m.add(r, m.other_of(x, y))


def input_data_mutated(m, x, y):
    r = m.relu(m.conv(x))
    x.data.mul_(2)
    return m.add(r, m.other_of(x, y))


def input_mT_mutated(m, x, y):
    r = m.relu(m.conv(x))
    x.mT.mul_(2)
    return m.add(r, m.other_of(x, y))


def bias_mutated(m, x, y):
    r = m.relu(m.conv(x))
    m.conv.bias.data.zero_()
    return m.add(r, m.other_of(x, y))


def complex_other(m, x, y):
    return m.add(m.relu(m.conv(x)), 1j)


def bool_other(m, x, y):
    return m.add(m.relu(m.conv(x)), True)


def conv_shape_read(m, x, y):
    """The conv output's shape is read to reshape ``other``."""
    c = m.conv(x)
    return m.add(m.relu(c), y.reshape(c.shape[0], -1, c.shape[2], c.shape[3]))


def input_setitem(m, x, y):
    r = m.relu(m.conv(x))
    x[0] = 0
    return m.add(r, m.other_of(x, y))


def input_relu_inplace_positional(m, x, y):
    r = m.relu(m.conv(x))
    F.relu(x, True)
    return m.add(r, m.other_of(x, y))


def two_sites(m, x, y):
    """Two sites in one graph, the second in a nested block."""
    first = m.add(m.relu(m.conv(x)), m.other_of(x, y))
    return m.block(first)


def three_blocks(m, x, y):
    """A stack of residual blocks, as in a ResNet stage."""
    return m.stack(m.conv(x))


def graph_break_between_sites(m, x, y):
    first = m.add(m.relu(m.conv(x)), m.other_of(x, y))
    torch._dynamo.graph_break()
    return m.block(first)


class Block(nn.Module):
    """A nested residual block: ``relu(conv(x)) + x``."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Conv2d(C_OUT, C_OUT, 3, padding=1))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.inner(x)) + x


class _Call(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, t):
        return self.fn(t)


class Model(nn.Module):
    def __init__(self, conv, relu, add, other, body, other_value):
        super().__init__()
        self.conv = conv
        self.relu = relu if isinstance(relu, nn.Module) else _Call(relu)
        self.add = add
        self._other_of = other
        self.body = body
        if other is Other.parameter:
            self.other = nn.Parameter(other_value)
        if other is Other.second_site:
            self.conv2 = nn.Conv2d(C_IN, C_OUT, 3, padding=1)
            self.relu2 = nn.ReLU()
        if body in (two_sites, graph_break_between_sites):
            self.block = Block()
        if body is three_blocks:
            self.stack = nn.Sequential(*(Block() for _ in range(3)))

    def other_of(self, x, y):
        return self._other_of(self, x, y)

    def forward(self, x, y):
        return self.body(self, x, y)


# ---------------------------------------------------------------------------------------
# Cases

# The front ends. "trace" is ``fuse(model)`` without example inputs: the graph records no
# shapes, so shape and dtype checks fall to the op when it runs.
FRONTS = ("trace", "fuse", "compile", "export")
TRACED = ("trace", "fuse")


@dataclass
class Case:
    id: str
    conv: str = "Conv2d"
    relu: str = "torch.relu"
    add: str = "+"
    other: str = "residual"
    body: Callable = chain
    fused: int = 1  # op nodes expected in the rewritten graph(s)
    left: int = 0  # conv / relu / add nodes expected to remain
    reasons: Sequence[str] = ()  # the refusal reasons, in graph order
    raises: str = ""  # the argument the op's run-time error names
    fronts: Sequence[str] = FRONTS
    by_front: Dict[str, "Case"] = field(default_factory=dict)  # front-specific outcomes
    dtype: torch.dtype = torch.float32
    other_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    batch: int = N

    def at(self, front: str) -> "Case":
        return self.by_front.get(front, self)

    def build(self, seed: int = 0):
        """The model and its inputs ``(x, y)``."""
        torch.manual_seed(seed)
        conv = CONVS[self.conv]().to(self.dtype)
        rank = _INPUT_RANK.get(self.conv, 4)
        x_shape = (self.batch, C_IN, H, W, 5)[:rank] if self.batch else (C_IN, H, W)
        if self.other == "conv-input":  # relu(conv(x)) + x needs as many channels out as in
            conv = nn.Conv2d(C_IN, C_IN, 3, padding=1).to(self.dtype)
        x = torch.randn(x_shape, dtype=self.dtype)
        if self.channels_last:
            x = x.to(memory_format=torch.channels_last)
            conv = conv.to(memory_format=torch.channels_last)
        with torch.no_grad():
            out_shape = tuple(conv(x).shape)
        read, make = OTHERS[self.other]
        y = make(out_shape, self.other_dtype or self.dtype) if make else None
        if self.channels_last and isinstance(y, torch.Tensor) and y.dim() == 4:
            y = y.to(memory_format=torch.channels_last)
        model = Model(conv, RELUS[self.relu](), ADDS[self.add], read, self.body, y)
        if self.other == "second-site":
            model.to(self.dtype)
        if y is None or read is Other.parameter:
            y = torch.randn(out_shape, dtype=self.dtype)  # unused by the forward
        return model.eval(), (x, y)


def _fused(id, **kw) -> Case:
    return Case(id, **kw)


def _refused(id, *reasons, **kw) -> Case:
    return Case(id, fused=0, reasons=reasons, **kw)


def _fails_at_run_time(case: Case, argument: str = "other") -> Dict[str, Case]:
    """Without example inputs a symbolic_trace graph has no shapes or dtypes: the site
    fuses, and the op refuses ``other`` when it runs."""
    return {"trace": replace(case, fused=1, reasons=(), raises=argument, by_front={})}


FUSED_CONVS = [
    "Conv2d", "Conv2d-bias=False", "Conv2d-int-args", "Conv2d-tuple-args", "Conv2d-kwargs",
    "Conv2d-groups", "Conv2d-1x1", "Conv2d-same", "Conv2d-same-5x3-dilated", "Conv2d-valid",
    "Conv2d-in-Sequential", "F.conv2d", "F.conv2d-positional", "F.conv2d-kwargs",
    "F.conv2d-bias=None", "F.conv2d-groups", "F.conv2d-same", "F.conv2d-valid",
    "torch.conv2d", "torch.conv2d-kwargs", "aten.conv2d-packet",
    # The default tracer, Dynamo and export all trace through a user's Conv2d subclass:
    # what they see is the F.conv2d its forward calls (on a flipped weight), which fuses.
    "Conv2d-forward-override",
]
FUSED_ADDS = [
    "+", "+-other-first", "torch.add", "torch.add-other-first", "torch.add-kwargs",
    "torch.add-alpha=1", "Tensor.add", "Tensor.add-other-first", "Tensor.add-alpha=1",
    "Tensor.add_", "+=", "torch.Tensor.add-unbound", "Tensor.__add__", "aten.add-packet",
]
FUSED_OTHERS = {
    # other -> conv / relu / add nodes left
    "residual": 0,
    "per-channel-(C,1,1)": 0,
    "per-channel-(1,C,1,1)": 0,
    "per-channel-int64": 0,  # float32 + int64 is float32
    "bool-mask": 0,
    "row-(W,)": 0,
    "0-dim": 0,
    "conv-input": 0,  # ResNet's relu(conv(x)) + x
    "second-site": 2,  # relu(conv1(x)) + relu(conv2(x)): one site, the other feeds it
    "int": 0,
    "float": 0,
    "int-input": 0,  # a Python number passed to forward
    "float-input": 0,
}

# symbolic_trace cannot call an unbound Tensor method on its proxies.
INPLACE_RELUS = ["Tensor.relu_", "torch.relu_", "F.relu-inplace", "nn.ReLU-inplace"]
_UNTRACEABLE = {"torch.Tensor.relu-unbound", "torch.Tensor.add-unbound"}


def _fronts(spelling: str) -> Sequence[str]:
    return ("compile", "export") if spelling in _UNTRACEABLE else FRONTS


FUSED_CASES: List[Case] = (
    [_fused(f"conv:{c}", conv=c) for c in FUSED_CONVS]
    + [_fused(f"relu:{r}", relu=r, fronts=_fronts(r)) for r in RELUS]
    + [_fused(f"add:{a}", add=a, fronts=_fronts(a)) for a in FUSED_ADDS]
    + [_fused(f"other:{o}", other=o, left=left) for o, left in FUSED_OTHERS.items()]
    + [
        # relu and add spellings together, with other on the left and a scalar.
        _fused("Tensor.relu_+torch.add-other-first-int", relu="Tensor.relu_",
               add="torch.add-other-first", other="int"),
        _fused("nn.ReLU-inplace+=per-channel", relu="nn.ReLU-inplace", add="+=",
               other="per-channel-(C,1,1)"),
        _fused("clamp_min+Tensor.add_-float", relu="Tensor.clamp_min", add="Tensor.add_",
               other="float"),
        _fused("F.conv2d+F.relu-inplace+radd-conv-input", conv="F.conv2d", other="conv-input",
               relu="F.relu-inplace", add="+-other-first"),
        _fused("torch.conv2d+clamp+torch.add-alpha=1-int-input", conv="torch.conv2d",
               relu="torch.clamp-min=0", add="torch.add-alpha=1", other="int-input"),
        # Statements rather than one expression.
        *[_fused(f"c=conv(x);{r}(c);c+y", body=relu_statement, relu=r) for r in INPLACE_RELUS],
        _fused("c.relu_();y+c", body=relu_statement, relu="Tensor.relu_", add="+-other-first"),
        _fused("c.relu_();c+scalar", body=relu_statement, relu="Tensor.relu_", other="int",
               conv="F.conv2d"),
        _fused("c.relu_();c.add_(y)", body=relu_statement, relu="Tensor.relu_",
               add="Tensor.add_"),
        _fused("out=relu(conv);out+=y", body=iadd_statement),
        _fused("out=relu_(conv);out+=per-channel", body=iadd_statement, relu="torch.relu_",
               other="per-channel-(1,C,1,1)"),
        _fused("out=relu(conv);out.add_(y);return out,out*2", body=add_inplace_statement),
        # Several sites, nesting, layouts and dtypes.
        _fused("two-sites-nested", body=two_sites, fused=2),
        _fused("two-sites-nested-second-site", body=two_sites, other="second-site", fused=2,
               left=2),
        _fused("channels_last", channels_last=True),
        _fused("channels_last-per-channel", channels_last=True, other="per-channel-(C,1,1)",
               conv="Conv2d-groups"),
        _fused("float64", dtype=torch.float64),
        _fused("float64-other-float32", dtype=torch.float64, other_dtype=torch.float32),
        _fused("float32-0-dim-float64-other", other="0-dim", other_dtype=torch.float64),
        _fused("float16", dtype=torch.float16),
        _fused("float16-scalar", dtype=torch.float16, other="float"),
        _fused("batch-1", batch=1),
        _fused("unbatched-(C,H,W)", batch=0),
        _fused("unbatched-per-channel", batch=0, other="per-channel-(C,1,1)"),
        _fused("three-blocks", body=three_blocks, fused=3, left=1),  # the stem conv
    ]
)

_shape_refusal = _refused("other-broadcasts-to-larger", "other_changes_shape",
                          other="broadcast-to-larger", batch=1)
_dtype_refusals = [
    _refused("float32-conv-float64-other", "other_changes_dtype", other_dtype=torch.float64),
    _refused("float16-conv-float32-other", "other_changes_dtype", dtype=torch.float16,
             other_dtype=torch.float32),
    _refused("float32-conv-float64-row", "other_changes_dtype", other="row-(W,)",
             other_dtype=torch.float64),
]
# padding_mode is a property of the module: Dynamo and export see F.pad then a conv2d
# with zero padding, which is a plain conv of the padded input and fuses.
_padded = {"compile": Case("padded-conv"), "export": Case("padded-conv")}

REFUSED_CASES: List[Case] = [
    _refused("conv-read-again", "intermediate_has_other_users", body=conv_read_again),
    _refused("relu-read-again", "intermediate_has_other_users", body=relu_read_again),
    _refused("relu_-read-again", "intermediate_has_other_users", body=relu_read_again,
             relu="Tensor.relu_"),
    _refused("relu-read-by-two-adds", "intermediate_has_other_users",
             "intermediate_has_other_users", body=relu_read_by_two_adds),
    _refused("relu-returned", "intermediate_is_graph_output", body=relu_returned),
    _refused("conv-returned", "intermediate_is_graph_output", body=conv_returned),
    _refused("c.relu_()-returned", "intermediate_is_graph_output", body=relu_inplace_returned),
    _refused("r+r", "other_is_the_relu_output", body=relu_added_to_itself),
    _refused("c.relu_();c+c", "other_is_the_relu_output", body=relu_inplace_added_to_itself),
    replace(_shape_refusal, by_front=_fails_at_run_time(_shape_refusal)),
    *[replace(c, by_front=_fails_at_run_time(c)) for c in _dtype_refusals],
    *[
        _refused(f"padding_mode-{mode}", "padding_mode_is_not_zeros", conv=f"Conv2d-{mode}",
                 by_front={k: replace(v, conv=f"Conv2d-{mode}") for k, v in _padded.items()})
        for mode in ("reflect", "circular")
    ],
    # The module's forward hook recomputes its weight: the module call must stay whole.
    # Dynamo and export trace the hook, and the conv after it fuses.
    _refused("spectral_norm", "conv_module_has_hooks", conv="Conv2d-spectral_norm",
             by_front={k: replace(v, conv="Conv2d-spectral_norm") for k, v in _padded.items()}),
    *[_refused(c, "conv_is_not_2d", conv=c) for c in ("Conv1d", "F.conv1d", "Conv3d",
                                                        "F.conv3d")],
    *[_refused(c, "conv_is_transposed", conv=c) for c in ("ConvTranspose2d",
                                                           "F.conv_transpose2d")],
    *[_refused(c, "same_padding_is_asymmetric", conv=c)
      for c in ("Conv2d-same-even-kernel", "F.conv2d-same-even-kernel")],
    *[_refused(a, "add_alpha_is_not_one", add=a)
      for a in ("torch.add-alpha=2", "Tensor.add-alpha=0.5")],
    # symbolic_trace records ``y += t`` as ``y = y + t`` (its graph never writes to y),
    # so there the site is an ordinary add and fuses.
    _refused("y+=relu(conv(x))", "add_writes_into_other", add="+=-into-other",
             by_front={f: Case("y=y+relu(conv(x))", add="+=-into-other") for f in TRACED}),
    _refused("y.add_(relu(conv(x)))", "add_writes_into_other", add="Tensor.add_-into-other"),
    *[
        _refused(body.__name__, "conv_input_mutated_before_add", body=body)
        for body in (input_mutated, input_view_mutated, input_relu_inplace_positional,
                     input_mT_mutated)
    ],
    # torch.export cannot trace ``x.data``.
    _refused("x.data.mul_", "conv_input_mutated_before_add", body=input_data_mutated,
             fronts=("trace", "fuse", "compile")),
    _refused("conv.bias.data.zero_", "conv_input_mutated_before_add", body=bias_mutated,
             fronts=("trace", "fuse", "compile")),
    _refused("complex-scalar", "other_is_not_a_tensor_or_number", body=complex_other),
    # A bool other would add 1 or 0; rare enough to leave unfused.
    _refused("bool-scalar", "other_is_not_a_tensor_or_number", body=bool_other),
    # Known limitation: a symbolic_trace graph reads ``c.shape`` through a getattr node,
    # which counts as a user of the conv output. Dynamo and export resolve it statically.
    _refused("conv-shape-read", "intermediate_has_other_users", body=conv_shape_read,
             by_front={f: Case("conv-shape-read", body=conv_shape_read)
                       for f in ("compile", "export")}),
    # symbolic_trace cannot record item assignment.
    _refused("x[0]=0", "conv_input_mutated_before_add", body=input_setitem,
             fronts=("compile", "export")),
]


def _params(cases: List[Case]):
    return [
        pytest.param(case, front, id=f"{case.id}-{front}")
        for case in cases
        for front in case.fronts
    ]


# ---------------------------------------------------------------------------------------
# Front ends


_SITE_NAMES = re.compile(r"conv|relu|clamp|threshold|add")


def _target_name(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__.lower()
    if node.op == "call_method":
        return node.target
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target)).lower()
    return ""


def fused_nodes(gm: fx.GraphModule) -> List[fx.Node]:
    return [n for n in gm.graph.nodes if n.target is FUSED]


def site_nodes(gm: fx.GraphModule) -> List[fx.Node]:
    """conv / relu / add nodes (any spelling) other than the op."""
    return [
        n for n in gm.graph.nodes
        if n.target is not FUSED and _SITE_NAMES.search(_target_name(gm, n))
    ]


@dataclass
class Run:
    """What one front end made of a model."""

    graphs: List[fx.GraphModule]  # the rewritten graphs
    sites: List  # every Site the pass returned, in order
    output: object = None


_real_rewrite = rw.rewrite  # taken before ``record_sites`` patches it


@pytest.fixture
def record_sites(monkeypatch):
    """Every Site ``rewrite`` returns, whoever calls it (``fuse`` or the backend)."""
    recorded: List = []

    def recording(gm):
        sites = _real_rewrite(gm)
        recorded.extend(sites)
        return sites

    monkeypatch.setattr(rw, "rewrite", recording)
    monkeypatch.setattr(backend_module, "rewrite", recording)
    return recorded


def _clone(inputs):
    return tuple(i.clone() if isinstance(i, torch.Tensor) else i for i in inputs)


def capturing_backend(graphs: List[fx.GraphModule], **options):
    """The registered fx_fuse backend (looked up by name, as torch.compile does), keeping
    the graphs it rewrote."""
    fx_fuse_backend = lookup_backend("fx_fuse")

    def capture(gm, example_inputs):
        compiled = fx_fuse_backend(gm, example_inputs, options={"inner": "eager", **options})
        graphs.append(gm)
        return compiled

    return capture


def transform(front: str, model: nn.Module, inputs, **compile_kw):
    """(callable, graphs): the model as the front end leaves it."""
    model = copy.deepcopy(model)
    if front == "trace":
        gm = fx_fuse.fuse(model)
        return gm, [gm]
    if front == "fuse":
        gm = fx_fuse.fuse(model, *_clone(inputs))
        return gm, [gm]
    if front == "export":
        gm = fx_fuse.fuse(torch.export.export(model, _clone(inputs)).module())
        return gm, [gm]
    if front == "compile":
        graphs: List[fx.GraphModule] = []
        return torch.compile(model, backend=capturing_backend(graphs), **compile_kw), graphs
    raise ValueError(front)


def run_front(front: str, model: nn.Module, inputs, recorded: List, **compile_kw) -> Run:
    fn, graphs = transform(front, model, inputs, **compile_kw)
    out = fn(*_clone(inputs))
    return Run(graphs, list(recorded), out)


def _eager(model, inputs):
    return copy.deepcopy(model)(*_clone(inputs))


def _assert_same(out, expected):
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def _assert_second_pass_changes_nothing(gm: fx.GraphModule):
    code = gm.code
    again = _real_rewrite(gm)
    assert not any(s.fused for s in again)
    assert gm.code == code
    gm.graph.lint()


def _check_graphs(case: Case, run: Run):
    assert sum(len(fused_nodes(g)) for g in run.graphs) == case.fused
    assert sum(s.fused for s in run.sites) == case.fused
    assert [s.reason for s in run.sites if not s.fused] == list(case.reasons)
    for site in run.sites:
        assert site.fused == (not site.reason)
        if site.reason:
            assert site.reason in {g.__name__ for g in rw.GUARDS}
            assert site.detail == rw._doc(getattr(rw, site.reason))
            assert site.detail.endswith("."), site.detail  # the whole explanation
    for gm in run.graphs:
        gm.graph.lint()
        _assert_second_pass_changes_nothing(gm)


# ---------------------------------------------------------------------------------------
# Fused and refused cases, through every front end


@pytest.mark.parametrize("case, front", _params(FUSED_CASES))
@torch.no_grad()
def test_fuses(case: Case, front: str, record_sites):
    case = case.at(front)
    model, inputs = case.build()
    expected = _eager(model, inputs)
    run = run_front(front, model, inputs, record_sites)

    _assert_same(run.output, expected)
    _check_graphs(case, run)
    left = [n.format_node() for g in run.graphs for n in site_nodes(g)]
    assert len(left) == case.left, left
    if front == "compile":
        assert dict(counters["fx_fuse"]) == {"fused": case.fused, "refused": 0}


@pytest.mark.parametrize("case, front", _params(REFUSED_CASES))
@torch.no_grad()
def test_refuses(case: Case, front: str, record_sites):
    case = case.at(front)
    model, inputs = case.build()
    expected = _eager(model, inputs) if not case.raises else None
    fn, graphs = transform(front, model, inputs)
    if case.raises:
        # Fused blind; the op names itself and the argument it refuses when it runs.
        with pytest.raises(RuntimeError, match=rf"fx_fuse::conv2d_relu_add.*`{case.raises}`"):
            fn(*_clone(inputs))
    else:
        _assert_same(fn(*_clone(inputs)), expected)
    _check_graphs(case, Run(graphs, list(record_sites)))
    if front == "compile":
        refused = len(case.reasons)
        assert dict(counters["fx_fuse"]) == {"fused": case.fused, "refused": refused}


# ---------------------------------------------------------------------------------------
# Dynamic shapes, numbers as inputs, graph breaks, inner compilers


_DYNAMIC = ["other:residual", "other:per-channel-(C,1,1)", "other:conv-input",
            "other:int-input", "other:float-input", "conv:Conv2d-same", "channels_last",
            "out=relu(conv);out+=y"]


@pytest.mark.parametrize(
    "case", [c for c in FUSED_CASES + REFUSED_CASES
             if c.id in _DYNAMIC or c.id in ("other-broadcasts-to-larger",
                                             "float32-conv-float64-other")],
    ids=lambda c: c.id,
)
@torch.no_grad()
def test_dynamic_shapes(case: Case, record_sites):
    """Sizes (and numbers passed to forward) are symbolic: the guards decide without
    specialising them."""
    model, inputs = case.build()
    run = run_front("compile", model, inputs, record_sites, dynamic=True)
    _assert_same(run.output, _eager(model, inputs))
    _check_graphs(case.at("compile"), run)
    symbolic = [n for g in run.graphs for n in g.graph.nodes
                if n.op == "placeholder"
                and isinstance(n.meta.get("example_value"), (torch.SymInt, torch.SymFloat))]
    assert symbolic, "the graph should have symbolic inputs"


@pytest.mark.parametrize("values", [(2, 3, 4), (0.5, 1.5, -2.0)], ids=["int", "float"])
@torch.no_grad()
def test_number_input_recompiles(values, record_sites):
    """A number passed to forward is baked in on the first call and becomes a SymInt /
    SymFloat graph input when it changes; both graphs fuse."""
    model, (x, _) = Case("number", other="int-input").build()
    compiled, graphs = transform("compile", model, (x, values[0]))
    for value in values:
        _assert_same(compiled(x, value), model(x, value))
    assert all(len(fused_nodes(g)) == 1 for g in graphs)
    assert counters["fx_fuse"]["fused"] == len(graphs) >= 1
    assert counters["fx_fuse"]["refused"] == 0


@torch.no_grad()
def test_sites_across_a_graph_break(record_sites):
    model, inputs = Case("break", body=graph_break_between_sites).build()
    run = run_front("compile", model, inputs, record_sites)
    _assert_same(run.output, _eager(model, inputs))
    assert [len(fused_nodes(g)) for g in run.graphs] == [1, 1]
    assert dict(counters["fx_fuse"]) == {"fused": 2, "refused": 0}


@pytest.mark.parametrize("inner", ["eager", "aot_eager", "inductor"])
@torch.no_grad()
def test_backend_by_name(inner):
    """``backend="fx_fuse"`` as users write it, with each inner compiler."""
    model, inputs = Case("two-sites", body=two_sites, fused=2).build()
    compiled = torch.compile(model, backend="fx_fuse", options={"inner": inner},
                             fullgraph=True)
    _assert_same(compiled(*_clone(inputs)), _eager(model, inputs))
    assert dict(counters["fx_fuse"]) == {"fused": 2, "refused": 0}


def test_backend_trains_through_the_op():
    """The fused graph has the autograd of the unfused one (aot_eager traces the op's
    backward)."""
    model, (x, y) = Case("train", other="per-channel-(C,1,1)").build()
    reference = copy.deepcopy(model)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled = torch.compile(model, backend="fx_fuse", options={"inner": "aot_eager"})
    compiled(x1, y).square().sum().backward()
    reference(x2, y).square().sum().backward()
    assert counters["fx_fuse"]["fused"] == 1
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=name)


# ---------------------------------------------------------------------------------------
# Conv2d subclasses kept as leaves by a custom tracer


class _ConvLeafTracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, qualname)


class Renamed(nn.Conv2d):
    """A Conv2d subclass that keeps nn.Conv2d's forward."""


@pytest.mark.parametrize(
    "conv_class, reasons",
    [(ForwardOverride, ["conv_module_overrides_forward"]), (Renamed, [])],
    ids=["overrides-forward", "keeps-forward"],
)
@torch.no_grad()
def test_conv2d_subclass_as_leaf(conv_class, reasons, record_sites):
    """A subclass that overrides forward may compute anything: refused. One that keeps
    nn.Conv2d's forward is a Conv2d: fused."""
    model, inputs = Case("leaf").build()
    model.conv = conv_class(C_IN, C_OUT, 3, padding=1)
    gm = fx.GraphModule(model, _ConvLeafTracer().trace(model))
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["conv"]
    expected = _eager(model, inputs)
    fused = fx_fuse.fuse(gm, *_clone(inputs))
    _assert_same(fused(*_clone(inputs)), expected)
    assert [s.reason for s in record_sites] == [r or "" for r in reasons or [""]]
    assert len(fused_nodes(fused)) == (0 if reasons else 1)


# ---------------------------------------------------------------------------------------
# The pass's contract on its own


def test_fuse_rewrites_a_graph_module_in_place_and_returns_it():
    model, inputs = Case("in-place").build()
    gm = fx.symbolic_trace(model)
    assert fx_fuse.fuse(gm) is gm
    assert len(fused_nodes(gm)) == 1
    _assert_same(gm(*_clone(inputs)), _eager(model, inputs))


def test_user_inplace_calls_outside_the_site_survive():
    """Only the nodes a rewrite made dead are erased, not the user's own unused in-place
    calls (``y.add_(1)``'s result is unused but its write is not)."""

    def body(m, x, y):
        out = m.add(m.relu(m.conv(x)), 1.0)
        y.add_(1)
        return out + y

    model, inputs = Case("keep", body=body).build()
    for front in ("trace", "compile"):
        fn, graphs = transform(front, model, inputs)
        _assert_same(fn(*_clone(inputs)), _eager(model, inputs))
        assert [len(fused_nodes(g)) for g in graphs] == [1]
        assert any(n.target == "add_" or getattr(n.target, "__name__", "") == "add_"
                   for n in graphs[0].graph.nodes)
