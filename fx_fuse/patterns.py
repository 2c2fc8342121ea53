"""What counts as a convolution, a ReLU and an addition in each IR the pass meets.

Three IRs reach the pass: ``symbolic_trace`` graphs (``call_module`` to ``nn.Conv2d``,
``torch``/``F`` functions, tensor methods), Dynamo graphs (torch functions with modules
inlined, ``example_value`` metadata) and ATen graphs (``torch.ops.aten`` overloads, ``val``
metadata). Each ``match_*`` function turns one node into a small record with its arguments
bound by name, or returns None.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from torch._ops import OpOverload, OpOverloadPacket

aten = torch.ops.aten

Argument = Any  # an fx.Node or a Python constant


def _bind(node: fx.Node, names: Sequence[str], defaults: Dict[str, Any]) -> Dict[str, Any]:
    """Arguments of a call bound to parameter names (positional first, then keywords)."""
    bound = dict(defaults)
    bound.update(zip(names, node.args))
    bound.update(node.kwargs)
    return bound


def _owner(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    if node.op != "call_module":
        return None
    try:
        return gm.get_submodule(node.target)
    except AttributeError:
        return None


def _with_packets(table):
    """``table`` (a dict or tuple keyed by ATen overloads) also keyed by their overload
    packets: user code that calls ``torch.ops.aten.relu(x)`` records the packet."""
    if isinstance(table, dict):
        extra = {k.overloadpacket: v for k, v in table.items() if isinstance(k, OpOverload)}
        return {**table, **extra}
    return tuple(table) + tuple({k.overloadpacket for k in table if isinstance(k, OpOverload)})


# ---------------------------------------------------------------------------------------
# Convolutions


@dataclass
class Conv:
    """A convolution call with its arguments bound."""

    node: fx.Node
    spelling: str
    input: Argument
    weight: Argument  # a Node, or the qualified name of a module's parameter
    bias: Argument
    stride: Any
    padding: Any  # ints, or "same" / "valid"
    dilation: Any
    groups: Any
    ndim: Optional[int]  # spatial dimensions; None when unknown from the call alone
    transposed: bool = False
    padding_mode: str = "zeros"
    module: Optional[nn.Module] = None


_CONV_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_CONVOLUTION_NAMES = (
    "input", "weight", "bias", "stride", "padding", "dilation", "transposed",
    "output_padding", "groups",
)

_CONV_FUNCTIONS = {
    torch.conv1d: 1,
    torch.conv2d: 2,  # also F.conv2d
    torch.conv3d: 3,
    aten.conv1d.default: 1,
    aten.conv1d.padding: 1,
    aten.conv2d.default: 2,
    aten.conv2d.padding: 2,
    aten.conv3d.default: 3,
    aten.conv3d.padding: 3,
}
_CONV_FUNCTIONS = _with_packets(_CONV_FUNCTIONS)
_CONV_TRANSPOSE_FUNCTIONS = {
    torch.conv_transpose1d: 1,
    torch.conv_transpose2d: 2,  # also F.conv_transpose2d
    torch.conv_transpose3d: 3,
    aten.conv_transpose1d.default: 1,
    aten.conv_transpose2d.input: 2,  # what torch.export records for ConvTranspose2d
    aten.conv_transpose3d.input: 3,
}
_CONV_TRANSPOSE_FUNCTIONS = _with_packets(_CONV_TRANSPOSE_FUNCTIONS)
_CONVOLUTION_OVERLOADS = (aten.convolution.default, aten._convolution.default)
_CONVOLUTION_OVERLOADS = _with_packets(_CONVOLUTION_OVERLOADS)
_CONV_MODULES = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_CONV_TRANSPOSE_MODULES = {nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}


def _spelling(target) -> str:
    if isinstance(target, (OpOverload, OpOverloadPacket)):
        return str(target)
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None) or "torch"
    return f"{module}.{getattr(target, '__name__', target)}".replace("torch._C._VariableFunctions", "torch")


def match_conv(gm: fx.GraphModule, node: fx.Node) -> Optional[Conv]:
    if node.op == "call_function" and node.target in _CONV_FUNCTIONS:
        args = _bind(node, _CONV_NAMES, _CONV_DEFAULTS)
        return Conv(node, _spelling(node.target), ndim=_CONV_FUNCTIONS[node.target], **args)
    if node.op == "call_function" and node.target in _CONV_TRANSPOSE_FUNCTIONS:
        return Conv(
            node, _spelling(node.target), node.args[0], node.args[1], None, 1, 0, 1, 1,
            ndim=_CONV_TRANSPOSE_FUNCTIONS[node.target], transposed=True,
        )
    if node.op == "call_function" and node.target in _CONVOLUTION_OVERLOADS:
        args = _bind(node, _CONVOLUTION_NAMES, {})
        output_padding = args.pop("output_padding")
        transposed = bool(args.pop("transposed")) or any(p != 0 for p in output_padding)
        return Conv(
            node, _spelling(node.target), ndim=len(args["stride"]), transposed=transposed,
            **{k: args[k] for k in _CONV_NAMES},
        )
    module = _owner(gm, node)
    if module is None:
        return None
    for cls, ndim in {**_CONV_MODULES, **_CONV_TRANSPOSE_MODULES}.items():
        if isinstance(module, cls):
            return Conv(
                node,
                f"{type(module).__module__}.{type(module).__name__}",
                input=node.args[0] if node.args else node.kwargs.get("input"),
                weight=f"{node.target}.weight",
                bias=f"{node.target}.bias" if module.bias is not None else None,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=module.groups,
                ndim=ndim,
                transposed=cls in _CONV_TRANSPOSE_MODULES,
                padding_mode=module.padding_mode,
                module=module,
            )
    return None


def overrides_forward(module: nn.Module) -> bool:
    """A Conv2d subclass whose forward differs from nn.Conv2d's computes something else."""
    cls = type(module)
    return (
        cls.forward is not nn.Conv2d.forward
        or cls._conv_forward is not nn.Conv2d._conv_forward
    )


# ---------------------------------------------------------------------------------------
# ReLU


@dataclass
class Relu:
    node: fx.Node
    spelling: str
    input: Argument
    inplace: bool


_RELU_FUNCTIONS = {torch.relu: False, torch.relu_: True, aten.relu.default: False,
                   aten.relu_.default: True}
_RELU_FUNCTIONS = _with_packets(_RELU_FUNCTIONS)
_RELU_METHODS = {"relu": False, "relu_": True}


def _is_zero(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def match_relu(gm: fx.GraphModule, node: fx.Node) -> Optional[Relu]:
    """relu, relu_, F.relu, nn.ReLU, Tensor.relu(_), and the spellings that compute the
    same function, NaN included: clamp(min=0), clamp_min(0), threshold(0, 0)."""
    spelling = _spelling(node.target)
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return Relu(node, spelling, node.args[0], _RELU_FUNCTIONS[node.target])
    if node.op == "call_function" and node.target is F.relu:
        args = _bind(node, ("input", "inplace"), {"inplace": False})
        return Relu(node, spelling, args["input"], bool(args["inplace"]))
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return Relu(node, f"Tensor.{node.target}", node.args[0], _RELU_METHODS[node.target])
    module = _owner(gm, node)
    if type(module) is nn.ReLU:
        return Relu(node, "torch.nn.ReLU", node.args[0], module.inplace)
    if type(module) is nn.Threshold and _is_zero(module.threshold) and _is_zero(module.value):
        return Relu(node, "torch.nn.Threshold", node.args[0], module.inplace)
    return _match_relu_equivalent(node)


_CLAMP_FUNCTIONS = {torch.clamp: False, torch.clip: False, torch.clamp_: True,
                    torch.clip_: True, aten.clamp.default: False, aten.clamp_.default: True,
                    aten.clip.default: False, aten.clip_.default: True}
_CLAMP_FUNCTIONS = _with_packets(_CLAMP_FUNCTIONS)
_CLAMP_METHODS = {"clamp": False, "clip": False, "clamp_": True, "clip_": True}
_CLAMP_MIN = {torch.clamp_min: False, torch.clamp_min_: True, aten.clamp_min.default: False,
              aten.clamp_min_.default: True}
_CLAMP_MIN = _with_packets(_CLAMP_MIN)


# F.threshold in symbolic_trace graphs, torch.threshold(_) in Dynamo graphs, ATen in export.
_THRESHOLD_FUNCTIONS = {F.threshold: False, torch.threshold: False, torch.threshold_: True,
                        aten.threshold.default: False, aten.threshold_.default: True}
_THRESHOLD_FUNCTIONS = _with_packets(_THRESHOLD_FUNCTIONS)


def _match_relu_equivalent(node: fx.Node) -> Optional[Relu]:
    target, spelling = node.target, _spelling(node.target)
    if node.op == "call_method":
        spelling = f"Tensor.{target}"
    clamp_inplace = (
        _CLAMP_FUNCTIONS.get(target) if node.op == "call_function"
        else _CLAMP_METHODS.get(target) if node.op == "call_method" else None
    )
    if clamp_inplace is not None:
        args = _bind(node, ("input", "min", "max"), {"min": None, "max": None})
        if _is_zero(args["min"]) and args["max"] is None:
            return Relu(node, spelling, args["input"], clamp_inplace)
    is_clamp_min = (node.op == "call_function" and target in _CLAMP_MIN) or (
        node.op == "call_method" and target in ("clamp_min", "clamp_min_")
    )
    if is_clamp_min:
        args = _bind(node, ("input", "min"), {})
        if _is_zero(args.get("min")):
            inplace = _CLAMP_MIN.get(target, str(target).endswith("_"))
            return Relu(node, spelling, args["input"], inplace)
    threshold_inplace = _THRESHOLD_FUNCTIONS.get(target) if node.op == "call_function" else None
    if threshold_inplace is not None:
        args = _bind(node, ("input", "threshold", "value", "inplace"), {"inplace": False})
        if _is_zero(args.get("threshold")) and _is_zero(args.get("value")):
            return Relu(node, spelling, args["input"], threshold_inplace or bool(args["inplace"]))
    return None


# ---------------------------------------------------------------------------------------
# Dtype conversions (autocast and explicit casts between the conv, the relu and the add)


@dataclass
class Cast:
    node: fx.Node
    spelling: str
    input: Argument
    dtype: torch.dtype


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CAST_METHODS = {"float": torch.float32, "half": torch.float16, "bfloat16": torch.bfloat16,
                 "double": torch.float64}
_CAST_OVERLOADS = (aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout,
                   torch.ops.prims.convert_element_type.default)
_CAST_OVERLOADS = _with_packets(_CAST_OVERLOADS)


def match_cast(gm: fx.GraphModule, node: fx.Node) -> Optional[Cast]:
    """A conversion to a floating dtype that changes nothing else (no device, no copy to
    another layout): ``.float()``, ``.half()``, ``.to(dtype)``, ``.type(dtype)``,
    ``aten._to_copy(dtype=...)``, ``prims.convert_element_type``."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    rest = list(node.args[1:])
    kwargs = dict(node.kwargs)
    if node.op == "call_method" and node.target in _CAST_METHODS:
        dtype = _CAST_METHODS[node.target]
        kwargs.pop("memory_format", None)
    elif (node.op == "call_method" and node.target in ("to", "type")) or (
        node.op == "call_function" and node.target in _CAST_OVERLOADS
    ):
        dtype = kwargs.pop("dtype", None)
        if dtype is None and rest and isinstance(rest[0], torch.dtype):
            dtype = rest.pop(0)
        for key in ("non_blocking", "copy", "memory_format", "layout"):
            kwargs.pop(key, None)
        if kwargs.pop("device", None) is not None:
            return None
        rest = [a for a in rest if a is not False]  # non_blocking / copy passed by position
    else:
        return None
    if dtype not in _FLOAT_DTYPES or rest or kwargs:
        return None
    spelling = f"Tensor.{node.target}" if node.op == "call_method" else _spelling(node.target)
    return Cast(node, spelling, node.args[0], dtype)


# ---------------------------------------------------------------------------------------
# Addition


@dataclass
class Add:
    node: fx.Node
    spelling: str
    lhs: Argument
    rhs: Argument
    alpha: Any
    inplace: bool  # the result is written into ``lhs``
    has_out: bool = False


_ADD_FUNCTIONS = {
    operator.add: False,
    operator.iadd: True,  # in place on tensors
    torch.add: False,
    aten.add.Tensor: False,
    aten.add.Scalar: False,
    aten.add_.Tensor: True,
    aten.add_.Scalar: True,
}
_ADD_FUNCTIONS = _with_packets(_ADD_FUNCTIONS)
_ADD_METHODS = {"add": False, "__add__": False, "__radd__": False, "add_": True,
                "__iadd__": True}


def match_add(gm: fx.GraphModule, node: fx.Node) -> Optional[Add]:
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        spelling, inplace = _spelling(node.target), _ADD_FUNCTIONS[node.target]
    elif node.op == "call_method" and node.target in _ADD_METHODS:
        spelling, inplace = f"Tensor.{node.target}", _ADD_METHODS[node.target]
    else:
        return None
    args = _bind(node, ("lhs", "rhs", "alpha"), {"alpha": 1})
    for name in ("input", "self"):
        if name in args:
            args["lhs"] = args.pop(name)
    if "other" in args:
        args["rhs"] = args.pop("other")
    if "lhs" not in args or "rhs" not in args:
        return None
    if node.target == "__radd__":
        args["lhs"], args["rhs"] = args["rhs"], args["lhs"]
    return Add(node, spelling, args["lhs"], args["rhs"], args["alpha"], inplace,
               has_out=args.get("out") is not None)


# ---------------------------------------------------------------------------------------
# Mutation and aliasing


_VIEW_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "transpose", "transpose_", "permute", "t",
    "squeeze", "unsqueeze", "expand", "expand_as", "narrow", "select", "flatten",
    "unflatten", "contiguous", "unbind", "split", "chunk", "as_strided", "detach",
    "__getitem__", "movedim", "swapaxes", "unfold", "diagonal", "real", "imag",
    "view_as_real", "view_as_complex", "split_with_sizes", "tensor_split", "to",
    "type_as", "float", "half", "bfloat16", "double", "cuda", "cpu", "clone",
    # These return their input, or a view of it, too.
    "swapdims", "moveaxis", "adjoint", "alias", "conj", "resolve_conj", "resolve_neg",
    "positive", "type", "hsplit", "vsplit", "dsplit", "align_to", "rename", "refine_names",
    "squeeze_", "unsqueeze_", "t_", "as_strided_", "detach_", "requires_grad_",
})
_VIEW_FUNCTIONS = frozenset({
    operator.getitem,
    torch._C._autograd._get_data_attr,  # ``x.data`` in Dynamo graphs
} | {
    getattr(torch, name) for name in _VIEW_METHODS if hasattr(torch, name)
})
# ``x.data``, ``x.mT``... are ``getattr`` calls in symbolic_trace graphs.
_VIEW_ATTRIBUTES = frozenset({"data", "T", "mT", "H", "mH", "real", "imag"})


def _returns_alias(target) -> bool:
    """An ATen op whose output may share its input's storage (per its schema); for an
    overload packet (``torch.ops.aten.mT`` in Dynamo graphs), any of its overloads."""
    if isinstance(target, OpOverloadPacket):
        overloads = [getattr(target, name) for name in target.overloads()]
    elif isinstance(target, OpOverload):
        overloads = [target]
    else:
        return False
    return any(
        o._schema.returns and o._schema.returns[0].alias_info is not None for o in overloads
    )


_INPLACE_OPERATORS = frozenset({
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
    operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior,
    operator.ixor, operator.ilshift, operator.irshift, operator.imatmul,
})


def mutated_argument(gm: fx.GraphModule, node: fx.Node) -> Optional[Argument]:
    """The tensor a node writes to, or None when it writes nothing (as far as we know)."""
    first = node.args[0] if node.args else None
    if node.op == "call_function":
        target = node.target
        if isinstance(target, OpOverload):
            for i, arg in enumerate(target._schema.arguments):
                if arg.alias_info is not None and arg.alias_info.is_write:
                    return node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            return None
        if target in _INPLACE_OPERATORS:
            return first
        name = getattr(target, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            return first
        if node.kwargs.get("out") is not None:
            return node.kwargs["out"]
        if _inplace_flag(target, node):
            return first
        return None
    if node.op == "call_method":
        name = node.target
        if (name.endswith("_") and not name.endswith("__")) or name in (
            "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__",
        ):
            return first
        return None
    module = _owner(gm, node)
    if module is not None and getattr(module, "inplace", False):
        return first
    return None


def _inplace_flag(target, node: fx.Node) -> bool:
    """``inplace=True`` by keyword or by position (``F.relu(x, True)``,
    ``F.dropout(x, 0.5, True, True)``)."""
    if node.kwargs.get("inplace"):
        return True
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a Python signature
        return False
    if "inplace" not in signature.parameters:
        return False
    try:
        bound = signature.bind(*node.args, **node.kwargs)
    except TypeError:
        return False
    return bool(bound.arguments.get("inplace", False))


def alias_root(node: Argument) -> Argument:
    """The tensor whose storage ``node`` may share, following view-like operations."""
    while isinstance(node, fx.Node) and node.args and isinstance(node.args[0], fx.Node):
        target = node.target
        is_view = (
            (node.op == "call_method" and target in _VIEW_METHODS)
            or (node.op == "call_function" and target in _VIEW_FUNCTIONS)
            or (
                node.op == "call_function"
                and target is getattr
                and len(node.args) > 1
                and node.args[1] in _VIEW_ATTRIBUTES
            )
            or _returns_alias(target)
        )
        if not is_view:
            break
        node = node.args[0]
    return node
