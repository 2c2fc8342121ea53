"""The pass: find conv2d -> relu -> add sites, check the guards, replace each safe site
with one call to ``fx_fuse::conv2d_relu_add``.

Every guard is a named predicate that returns True when the site must be refused; its
name is the reason ``explain`` shows, its docstring the explanation.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import fx, nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from . import ops
from .patterns import (
    Add,
    Conv,
    Relu,
    alias_root,
    match_add,
    match_cast,
    match_conv,
    match_relu,
    mutated_argument,
    overrides_forward,
)

FUSED_OP = torch.ops.fx_fuse.conv2d_relu_add.default


@dataclass
class Site:
    """One conv -> relu -> add candidate and what the pass decided about it."""

    location: str
    conv: str
    relu: str
    add: str
    stride: Any
    padding: Any
    dilation: Any
    groups: Any
    input_shape: Optional[List]
    weight_shape: Optional[List]
    other: str
    dtype: str
    fused: bool
    reason: str = ""  # the name of the guard that refused it
    detail: str = ""  # what that guard means, or a note on a fused site


@dataclass
class _Candidate:
    gm: fx.GraphModule
    conv: Conv
    relu: Relu
    add: Add
    other: Any
    order: Dict[fx.Node, int]
    chain: List[fx.Node]  # conv, relu and any dtype conversions around the relu
    operand: fx.Node  # the chain node the add reads
    relu_values: List[fx.Node]  # nodes that hold what the add reads (aliases in place)

    @property
    def converts(self) -> bool:
        """The chain converts dtypes: explicit casts, or an autocast conv."""
        conv, inp = _value(self.gm, self.conv.node), _value(self.gm, self.conv.input)
        autocast = _is_tensor_like(conv) and _is_tensor_like(inp) and conv.dtype != inp.dtype
        return autocast or len(self.chain) > 2


# ---------------------------------------------------------------------------------------
# Metadata


def _value(gm: fx.GraphModule, arg) -> Any:
    """What is known of an argument's value: a (fake) tensor, tensor metadata, a
    parameter, a Python number, or None."""
    if not isinstance(arg, fx.Node):
        return arg
    for key in ("val", "example_value", "tensor_meta"):
        value = arg.meta.get(key)
        if _is_tensor_like(value):
            return value
    if arg.op == "get_attr":
        try:
            return _get_attr(gm, arg.target)
        except AttributeError:
            return None
    return None


def _get_attr(gm: fx.GraphModule, target: str):
    value = gm
    for atom in target.split("."):
        value = getattr(value, atom)
    return value


def _is_tensor_like(value) -> bool:
    return value is not None and hasattr(value, "shape") and hasattr(value, "dtype")


def _recorded(gm: fx.GraphModule, arg) -> Any:
    """What the graph records of an argument, numbers included: a (fake) tensor, tensor
    metadata, a parameter, an int / float / SymInt / SymFloat, or None when unknown."""
    value = _value(gm, arg)
    if value is not None or not isinstance(arg, fx.Node):
        return value
    for key in ("val", "example_value"):
        if arg.meta.get(key) is not None:
            return arg.meta[key]
    return None


def _is_real_number(value) -> bool:
    return isinstance(value, (int, float, torch.SymInt, torch.SymFloat)) and not isinstance(
        value, bool
    )


def _weight_value(c: _Candidate):
    if isinstance(c.conv.weight, str):
        return c.conv.module.weight
    return _value(c.gm, c.conv.weight)


def _same(a, b) -> bool:
    """a == b, proven without adding guards on symbolic sizes."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return statically_known_true(a == b)


def _same_shape(a, b) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------
# Normalised conv arguments


def _pair(value) -> Optional[List]:
    if isinstance(value, (list, tuple)):
        value = list(value)
        return value * 2 if len(value) == 1 else value
    return [value, value]


def _is_constant(value) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _same_padding(c: _Candidate) -> Optional[List[int]]:
    """The symmetric padding that padding='same' stands for, or None when the kernel size
    is unknown or the padding would be asymmetric."""
    weight = _weight_value(c)
    if not _is_tensor_like(weight) or len(weight.shape) != 4:
        return None
    dilation = _pair(c.conv.dilation)
    totals = [dilation[i] * (weight.shape[2 + i] - 1) for i in range(2)]
    if not all(isinstance(t, int) and t % 2 == 0 for t in totals):
        return None
    return [t // 2 for t in totals]


def _padding(c: _Candidate) -> Optional[List[int]]:
    padding = c.conv.padding
    if padding == "valid":
        return [0, 0]
    if padding == "same":
        return _same_padding(c)
    return _pair(padding)


# ---------------------------------------------------------------------------------------
# Guards: each returns True when the site must be refused.


def conv_is_not_2d(c: _Candidate) -> bool:
    """Only 2-d convolutions are fused (conv1d and conv3d are not)."""
    return c.conv.ndim not in (None, 2)


def conv_is_transposed(c: _Candidate) -> bool:
    """Transposed convolutions are not fused."""
    return c.conv.transposed


def conv_module_overrides_forward(c: _Candidate) -> bool:
    """The Conv2d subclass defines its own forward, so it may compute something else."""
    return c.conv.module is not None and overrides_forward(c.conv.module)


def conv_module_has_hooks(c: _Candidate) -> bool:
    """The Conv2d module runs forward hooks (spectral_norm, a user's hook) that the fused
    op, which reads the module's weight directly, would skip."""
    module = c.conv.module
    return module is not None and bool(
        module._forward_pre_hooks
        or module._forward_hooks
        or nn.modules.module._global_forward_pre_hooks
        or nn.modules.module._global_forward_hooks
    )


def padding_mode_is_not_zeros(c: _Candidate) -> bool:
    """padding_mode other than 'zeros' (reflect, replicate, circular) is not fused."""
    return c.conv.padding_mode != "zeros"


def conv_arguments_are_not_constants(c: _Candidate) -> bool:
    """stride, dilation and groups must be constants in the graph."""
    return not all(
        _is_constant(v) for v in (c.conv.stride, c.conv.dilation, c.conv.groups)
    ) or (c.conv.padding not in ("same", "valid") and not _is_constant(c.conv.padding))


def same_padding_is_asymmetric(c: _Candidate) -> bool:
    """padding='same' needs an odd dilated kernel to be symmetric (or a known weight)."""
    return c.conv.padding == "same" and _same_padding(c) is None


def add_alpha_is_not_one(c: _Candidate) -> bool:
    """add(..., alpha=a) with a != 1 scales `other`; only alpha == 1 is fused."""
    return not (isinstance(c.add.alpha, (int, float)) and c.add.alpha == 1)


def add_writes_to_out(c: _Candidate) -> bool:
    """add(..., out=t) writes into an existing tensor."""
    return c.add.has_out


def add_writes_into_other(c: _Candidate) -> bool:
    """An in-place add into `other` (other += relu(conv(x))) mutates `other`."""
    return c.add.inplace and c.add.lhs is c.other


def other_is_the_relu_output(c: _Candidate) -> bool:
    """relu(conv(x)) + relu(conv(x)) of the same node reads the intermediate twice."""
    return c.other in c.chain


def intermediate_is_graph_output(c: _Candidate) -> bool:
    """The conv or relu output is returned from the graph, so it must be materialised."""
    return any(user.op == "output" for user in _readers_of_intermediate(c))


def intermediate_has_other_users(c: _Candidate) -> bool:
    """The conv or relu output is read by another node, so it must be materialised."""
    return bool(_readers_of_intermediate(c))


def conversion_dtype_is_unknown(c: _Candidate) -> bool:
    """The chain converts dtypes (autocast or casts around the relu) but the graph records
    no dtypes to say which one the result has; give fuse() example inputs."""
    return c.converts and _result_dtype(c) is None


def input_is_not_floating_point(c: _Candidate) -> bool:
    """Only floating-point convolutions are fused."""
    inp = _value(c.gm, c.conv.input)
    return _is_tensor_like(inp) and not inp.dtype.is_floating_point


def other_changes_shape(c: _Candidate) -> bool:
    """`other` broadcasts the conv output to a larger shape."""
    out, res, other = _relu_value(c), _value(c.gm, c.add.node), _value(c.gm, c.other)
    if _is_tensor_like(out) and _is_tensor_like(res):
        return not _same_shape(out.shape, res.shape)
    if _is_tensor_like(out) and _is_tensor_like(other):
        return not ops.broadcasts_to(other.shape, out.shape, same=_same)
    return False


def other_changes_dtype(c: _Candidate) -> bool:
    """`other` promotes the output to another dtype (type promotion)."""
    out, res, other = _relu_value(c), _value(c.gm, c.add.node), _value(c.gm, c.other)
    if isinstance(other, complex):
        return True
    if c.converts:  # the op computes in the add's result dtype; it must be floating
        return res.dtype not in ops._FLOAT_DTYPES
    if _is_tensor_like(out) and _is_tensor_like(res):
        return out.dtype != res.dtype
    if _is_tensor_like(out) and _is_tensor_like(other):
        return ops.add_result_dtype(out.dtype, len(other.shape), other.dtype) != out.dtype
    return False


def other_is_not_a_tensor_or_number(c: _Candidate) -> bool:
    """`other` is neither a tensor nor a real Python number."""
    value = _recorded(c.gm, c.other)
    if isinstance(c.other, fx.Node) and (value is None or _is_tensor_like(value)):
        return False
    return not _is_real_number(value)


def conv_input_mutated_before_add(c: _Candidate) -> bool:
    """The conv's input, weight or bias is modified in place between the conv and the
    add, so the fused op (which runs where the add was) would read the new values."""
    roots = {_root_key(alias_root(a)) for a in _conv_operands(c)}
    start, end = c.order[c.conv.node], c.order[c.add.node]
    for node in c.gm.graph.nodes:
        if not start < c.order[node] < end or node in c.chain:
            continue
        written = mutated_argument(c.gm, node)
        if written is not None and _root_key(alias_root(written)) in roots:
            return True
    return False


GUARDS: Sequence[Callable[[_Candidate], bool]] = (
    conv_is_not_2d,
    conv_is_transposed,
    conv_module_overrides_forward,
    conv_module_has_hooks,
    padding_mode_is_not_zeros,
    conv_arguments_are_not_constants,
    same_padding_is_asymmetric,
    input_is_not_floating_point,
    conversion_dtype_is_unknown,
    add_alpha_is_not_one,
    add_writes_to_out,
    add_writes_into_other,
    other_is_the_relu_output,
    other_is_not_a_tensor_or_number,
    intermediate_is_graph_output,
    intermediate_has_other_users,
    other_changes_shape,
    other_changes_dtype,
    conv_input_mutated_before_add,
)


def _relu_value(c: _Candidate):
    """What the add reads from the chain."""
    for node in (c.operand, c.relu.node, c.conv.node):
        value = _value(c.gm, node)
        if _is_tensor_like(value):
            return value
    return None


def _result_dtype(c: _Candidate) -> Optional[torch.dtype]:
    """The dtype the op computes and returns: the add's result dtype, where recorded."""
    res = _value(c.gm, c.add.node)
    if _is_tensor_like(res):
        return res.dtype
    if not c.converts:
        inp = _value(c.gm, c.conv.input)
        return inp.dtype if _is_tensor_like(inp) else None
    return None


def _add_updates_relu_output(c: _Candidate) -> bool:
    return c.add.inplace and c.add.lhs in c.relu_values


def _extra_readers(c: _Candidate) -> List[fx.Node]:
    """Readers of the chain's intermediates other than the chain itself, the add and
    export's metadata assertions (which only check a dtype or a device)."""
    ours = set(c.chain) | {c.add.node}
    return [
        user
        for node in c.chain
        for user in node.users
        if user not in ours and not _is_metadata_assertion(user)
    ]


def _is_metadata_assertion(node: fx.Node) -> bool:
    return node.target in _METADATA_ASSERTIONS


_METADATA_ASSERTIONS = tuple(
    getattr(torch.ops.aten, name).default
    for name in ("_assert_tensor_metadata",)
    if hasattr(torch.ops.aten, name)
)


def _readers_of_intermediate(c: _Candidate) -> List[fx.Node]:
    """Extra readers that see the conv or relu output itself. After
    ``y = relu(conv(x)); y.add_(other)`` the variable holds the sum, so readers after the
    add (``return y`` included) read the op's result, not the intermediate."""
    extra = _extra_readers(c)
    if _add_updates_relu_output(c):
        extra = [n for n in extra if c.order[n] < c.order[c.add.node]]
    return extra


def _conv_operands(c: _Candidate) -> List:
    operands = [c.conv.input, c.conv.weight, c.conv.bias]
    return [a for a in operands if isinstance(a, (fx.Node, str))]


def _root_key(root):
    if isinstance(root, str):
        return ("attr", root)
    if isinstance(root, fx.Node) and root.op == "get_attr":
        return ("attr", root.target)
    return root


# ---------------------------------------------------------------------------------------
# Finding candidates


def _inplace_relu_reading(gm: fx.GraphModule, node: fx.Node, add_node: fx.Node):
    """``c = conv(x); c.relu_(); c + other``: the add reads the node relu_ wrote to."""
    for user in node.users:
        relu = match_relu(gm, user)
        if relu is not None and relu.inplace and relu.input is node and user is not add_node:
            return relu
    return None


def _walk_casts(gm: fx.GraphModule, node, stop):
    """Follow dtype conversions back from ``node`` to the first node where ``stop`` gives
    a record; return (record, the conversions in graph order) or None."""
    casts = []
    while isinstance(node, fx.Node):
        found = stop(node)
        if found is not None:
            return found, casts
        cast = match_cast(gm, node)
        if cast is None:
            return None
        casts.insert(0, node)
        node = cast.input
    return None


def _chain_of(gm: fx.GraphModule, operand, add_node: fx.Node):
    """(conv, relu, chain) when ``operand`` holds relu(conv(...)), allowing dtype
    conversions between the conv and the relu and between the relu and the add."""
    found = _walk_casts(
        gm,
        operand,
        lambda n: match_relu(gm, n) or _inplace_relu_reading(gm, n, add_node),
    )
    if found is None:
        return None
    relu, after = found
    found = _walk_casts(gm, relu.input, lambda n: match_conv(gm, n))
    if found is None:
        return None
    conv, before = found
    chain = [conv.node, *before, relu.node, *after]
    return conv, relu, list(dict.fromkeys(chain))


def _candidates(gm: fx.GraphModule) -> Dict[fx.Node, List[_Candidate]]:
    """For each add that reads relu(conv(...)), the readings of it as a site: one per
    operand that is such a chain (``relu(conv1(x)) + relu(conv2(x))`` has two)."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    found: Dict[fx.Node, List[_Candidate]] = {}
    for node in gm.graph.nodes:
        add = match_add(gm, node)
        if add is None:
            continue
        for mine, other in ((add.lhs, add.rhs), (add.rhs, add.lhs)):
            match = _chain_of(gm, mine, node)
            if match is None:
                continue
            conv, relu, chain = match
            if relu.inplace and order[relu.node] > order[node]:
                continue
            if mine is relu.node or mine is relu.input:
                values = [relu.node] + ([relu.input] if relu.inplace else [])
            else:
                values = [mine]
            found.setdefault(node, []).append(
                _Candidate(gm, conv, relu, add, other, order, chain, mine, values)
            )
    return found


# ---------------------------------------------------------------------------------------
# Rewriting


def _shape(value) -> Optional[List]:
    return list(value.shape) if _is_tensor_like(value) else None


def _describe_other(c: _Candidate) -> str:
    value = _value(c.gm, c.other)
    if isinstance(value, (int, float, complex)):
        return f"scalar {value}"
    if _is_tensor_like(value):
        return f"{list(value.shape)} {str(value.dtype).replace('torch.', '')}"
    return "tensor (shape unknown)"


def _location(c: _Candidate) -> str:
    """The conv's module path and the user's source line, where the graph records them."""
    node = c.conv.node
    path = node.target if node.op == "call_module" else ""
    stack = node.meta.get("nn_module_stack")
    if not path and stack:
        path = _clean_module_path(list(stack.values())[-1][0])
    where = path or c.add.node.name
    line = _user_source_line(c.add.node.meta.get("stack_trace") or "")
    return f"{where} ({line})" if line else where


def _clean_module_path(path: str) -> str:
    """``L['self'].block._modules['conv']`` -> ``block.conv``."""
    path = re.sub(r"^L\['[^']*'\]\.?", "", path)
    return re.sub(r"\._modules\['([^']*)'\]|\['([^']*)'\]", r".\1\2", path).lstrip(".")


def _user_source_line(stack_trace: str) -> str:
    """``file.py:12`` of the innermost frame outside torch itself."""
    for file, line in reversed(re.findall(r'File "([^"]+)", line (\d+)', stack_trace)):
        if f"{os.sep}torch{os.sep}" not in file:
            return f"{os.path.basename(file)}:{line}"
    return ""


def _site(c: _Candidate, reason: str, detail: str) -> Site:
    inp, weight = _value(c.gm, c.conv.input), _weight_value(c)
    dtype = _result_dtype(c) or (inp.dtype if _is_tensor_like(inp) else None)
    return Site(
        location=_location(c),
        conv=c.conv.spelling,
        relu=c.relu.spelling,
        add=c.add.spelling,
        stride=_pair(c.conv.stride),
        padding=c.conv.padding if isinstance(c.conv.padding, str) else _pair(c.conv.padding),
        dilation=_pair(c.conv.dilation),
        groups=c.conv.groups,
        input_shape=_shape(inp),
        weight_shape=_shape(weight),
        other=_describe_other(c),
        dtype=str(dtype).replace("torch.", "") if dtype is not None else "?",
        fused=not reason,
        reason=reason,
        detail=detail,
    )


def _refusal(c: _Candidate) -> Optional[Callable]:
    for guard in GUARDS:
        if guard(c):
            return guard
    return None


def _operand_node(c: _Candidate, arg) -> Optional[fx.Node]:
    if arg is None or isinstance(arg, fx.Node):
        return arg
    return c.gm.graph.get_attr(arg)


def _other_as_tensor(other):
    """``other`` as the op takes it, for graphs that do not record whether it is a tensor
    or a number (a ``symbolic_trace`` graph fused without example inputs)."""
    return other if isinstance(other, torch.Tensor) else ops.scalar_other(other)


def _other_node(c: _Candidate) -> fx.Node:
    """The op's ``other``: a tensor node as it is; a number (a constant or a node that
    holds an int / float, such as a SymInt graph input) as a 0-dim float64 tensor, which
    adds like the number itself."""
    graph, value = c.gm.graph, _recorded(c.gm, c.other)
    if isinstance(c.other, fx.Node) and _is_tensor_like(value):
        return c.other
    if value is None:
        return graph.call_function(_other_as_tensor, (c.other,))
    inp = _value(c.gm, c.conv.input)
    device = inp.device if _is_tensor_like(inp) and hasattr(inp, "device") else None
    aten_graph = _is_aten(c.conv.node)
    make = torch.ops.aten.scalar_tensor.default if aten_graph else torch.scalar_tensor
    number = c.other if isinstance(c.other, fx.Node) else float(c.other)
    return graph.call_function(make, (number,), {"dtype": torch.float64, "device": device})


def _is_aten(node: fx.Node) -> bool:
    return isinstance(node.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))


def _converted(c: _Candidate, node: Optional[fx.Node]) -> Optional[fx.Node]:
    """``node`` cast to the op's dtype where the chain converts dtypes (autocast or casts
    around the relu): the op computes in the add's result dtype."""
    dtype, value = _result_dtype(c), _value(c.gm, node)
    if node is None or not c.converts or not _is_tensor_like(value) or value.dtype == dtype:
        return node
    if _is_aten(c.conv.node):  # an ATen graph
        return c.gm.graph.call_function(torch.ops.aten._to_copy.default, (node,), {"dtype": dtype})
    return c.gm.graph.call_method("to", (node, dtype))


def _replace(c: _Candidate) -> fx.Node:
    graph = c.gm.graph
    with graph.inserting_before(c.add.node):
        args = (
            _converted(c, _operand_node(c, c.conv.input)),
            _converted(c, _operand_node(c, c.conv.weight)),
            _converted(c, _operand_node(c, c.conv.bias)),
            _other_node(c),
            _pair(c.conv.stride),
            _padding(c),
            _pair(c.conv.dilation),
            c.conv.groups,
        )
        fused = graph.call_function(FUSED_OP, args)
    fused.meta.update(c.add.node.meta)
    if _add_updates_relu_output(c):
        for reader in _extra_readers(c):
            for value in c.relu_values:
                reader.replace_input_with(value, fused)
    c.add.node.replace_all_uses_with(fused)
    # Erase exactly the nodes this rewrite made dead. A graph-wide eliminate_dead_code()
    # would also drop the user's own unused in-place calls such as ``x.add_(1)``.
    for node in [c.add.node, *reversed(c.chain)]:
        for user in [u for u in node.users if _is_metadata_assertion(u)]:
            graph.erase_node(user)
        if not node.users:
            graph.erase_node(node)
    return fused


def rewrite(gm: fx.GraphModule) -> List[Site]:
    """Fuse every safe conv2d -> relu -> add site of ``gm`` in place, and of the graphs
    nested in it (the bodies of higher-order ops such as export's autocast regions);
    return a Site for every candidate, fused or refused, in graph order."""
    sites = _rewrite_graph(gm)
    for child in gm.children():
        if isinstance(child, fx.GraphModule):
            sites.extend(rewrite(child))
    return sites


def _rewrite_graph(gm: fx.GraphModule) -> List[Site]:
    sites: Dict[fx.Node, Site] = {}
    while True:
        # Look again after each rewrite: it replaces nodes that later sites may read.
        pending = [cs for add, cs in _candidates(gm).items() if add not in sites]
        if not pending:
            break
        refusals = [(c, _refusal(c)) for c in pending[0]]
        safe = [c for c, guard in refusals if guard is None]
        if not safe:
            c, guard = refusals[0]
            sites[c.add.node] = _site(c, guard.__name__, _doc(guard))
            continue
        c = safe[0]
        note = "" if _shapes_known(c) else "shapes unknown: checked when it runs"
        if c.converts:
            note = f"computes in {str(_result_dtype(c)).replace('torch.', '')}, the add's dtype"
        site = _site(c, "", note)
        sites[_replace(c)] = site
    gm.graph.lint()
    gm.recompile()
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    return [sites[n] for n in sorted(sites, key=order.__getitem__)]


def _doc(guard: Callable) -> str:
    """The guard's first docstring paragraph, on one line."""
    paragraph = (guard.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split())


def _shapes_known(c: _Candidate) -> bool:
    return _is_tensor_like(_relu_value(c)) and (
        _is_tensor_like(_value(c.gm, c.add.node)) or not isinstance(c.other, fx.Node)
    )


def _propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    FakeTensorProp(gm, mode).propagate(*example_inputs)


def fuse(module: torch.nn.Module, *example_inputs) -> fx.GraphModule:
    """Replace every safe ``conv2d -> relu -> add`` in ``module`` with one call to
    ``fx_fuse::conv2d_relu_add``.

    ``module`` is an ``nn.Module`` (symbolically traced first) or an ``fx.GraphModule``
    (a Dynamo graph, a ``symbolic_trace`` graph, or an ATen graph such as
    ``torch.export.export(...).module()``), which is rewritten in place. With
    ``example_inputs``, shapes and dtypes are propagated first (with fake tensors, no
    arithmetic), so the shape and dtype guards can decide at rewrite time; without them,
    graphs that carry no metadata are checked by the op when it runs.
    """
    gm = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
    if example_inputs:
        _propagate_shapes(gm, example_inputs)
    rewrite(gm)
    return gm
