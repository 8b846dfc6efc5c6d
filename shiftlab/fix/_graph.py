"""What follows a strided layer in the data flow, read from a torch.fx trace. Private.

Used by the conversion to put the blur after the nonlinearity (Zhang 2019) and to find strided layers
that run in parallel (a residual block's main branch and shortcut). Modules without children and norm
layers are leaves; if the model cannot be traced, :func:`trace` returns None and the conversion falls back
to placing the subsampling right after each strided layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

__all__ = ["Flow", "trace", "ACTIVATIONS", "CLAMPING_ACTIVATIONS"]

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardtanh, nn.ELU, nn.Mish,
               nn.PReLU, nn.SELU, nn.CELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardsigmoid)
#: activations f with f(blur(f(x))) == blur(f(x)): applying them twice changes nothing, and a blur (a
#: convex combination, padding included) of their output stays in their range.
CLAMPING_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
_FUNCTIONAL_RELU = {torch.relu, torch.nn.functional.relu, torch.relu_, torch.nn.functional.relu6}
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d)
_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm, nn.SyncBatchNorm)


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORMS) or type(module).__name__.endswith(("Norm2d", "NormAct2d", "Norm"))


def inner_activation(module: nn.Module) -> nn.Module | None:
    """The activation inside a norm+activation layer (timm's BatchNormAct2d), if any."""
    act = getattr(module, "act", None)
    return act if isinstance(act, nn.Module) and not isinstance(act, nn.Identity) else None


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return next(iter(m.children()), None) is None or is_norm(m) or super().is_leaf_module(m, qualname)


@dataclass
class Link:
    """Where the subsampling after a strided layer goes.

    ``module``: name of the module whose output is subsampled; ``activation``: an activation module to
    apply first (a clamping one that the model applies again, harmlessly); ``position``: a description.
    """

    module: str
    activation: nn.Module | None
    position: str


class Flow:
    """The traced graph of a model, with use counts of modules."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.graph = graph
        self.nodes: dict[str, list[fx.Node]] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                self.nodes.setdefault(node.target, []).append(node)

    def uses(self, name: str) -> int:
        return len(self.nodes.get(name, ()))

    def _activation_of(self, node: fx.Node):
        """(module or None, is_activation, is_clamping) for a node."""
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, ACTIVATIONS):
                return m, True, isinstance(m, CLAMPING_ACTIVATIONS)
            return m, False, False
        if node.op == "call_function" and node.target in _FUNCTIONAL_RELU:
            return None, True, True
        if node.op == "call_method" and node.target in ("relu", "relu_"):
            return None, True, True
        return None, False, False

    def link_after(self, name: str) -> Link:
        """Where to subsample the output of strided layer ``name``: after its activation where possible."""
        if self.uses(name) != 1:
            return Link(name, None, "after the layer (used more than once)")
        node = self.nodes[name][0]
        last = name  # the last single-use module of the chain conv -> [norm] -> [dropout/identity]
        while True:
            users = list(node.users)
            if len(users) != 1:
                return Link(last, None, f"after {last} (its output branches)")
            user = users[0]
            module, is_act, clamps = self._activation_of(user)
            if is_act:
                if module is not None and self.uses(user.target) == 1:
                    return Link(user.target, None, f"after {user.target} (the activation)")
                if clamps:
                    # in place: the chain's output has this single use, and no backward pass needs it
                    if module is not None:
                        act, act_name = type(module)(inplace=True), user.target
                    else:
                        six = user.target is torch.nn.functional.relu6
                        act = nn.ReLU6(inplace=True) if six else nn.ReLU(inplace=True)
                        act_name = getattr(user.target, "__name__", "relu")
                    return Link(last, act, f"after {last}, with {act_name} applied first (the shared activation "
                                "re-applies it, which changes nothing)")
                return Link(last, None, f"after {last}, before the activation (shared, not idempotent)")
            if module is None or self.uses(user.target) != 1:
                return Link(last, None, f"after {last}")
            if is_norm(module):
                last = user.target
                if inner_activation(module) is not None:
                    return Link(last, None, f"after {last} (norm and activation)")
            elif isinstance(module, _PASS_THROUGH) or type(module).__name__ in ("DropBlock2d", "DropPath"):
                last = user.target
            else:
                return Link(last, None, f"after {last}")
            node = user

    def functional_subsampling(self) -> list[str]:
        """Subsampling written as functions in a forward, read from the graph without running it: calls of
        ``F.max_pool2d`` / ``F.avg_pool2d`` / ``F.lp_pool2d`` (stride other than 1), ``F.conv2d`` with a stride,
        ``F.interpolate`` with a scale factor below 1 and slicing with a step along the last two axes. Used when the
        model cannot be run to find them (:func:`shiftlab.inspect` finds them at run time)."""
        found = []
        for node in self.graph.nodes:
            label = _subsampling_call(node)
            if label is not None:
                found.append(f"{label} (graph node {node.name})")
        return found

    def strided_ancestors(self, strided: set[str]) -> dict[str, set[str]]:
        """For each strided layer, the strided layers upstream of it in the data flow."""
        upstream: dict[fx.Node, set[str]] = {}
        for node in self.graph.nodes:  # topological order
            seen: set[str] = set()
            for parent in node.all_input_nodes:
                seen |= upstream[parent]
                if parent.op == "call_module" and parent.target in strided:
                    seen.add(parent.target)
            upstream[node] = seen
        return {name: upstream[nodes[0]] for name, nodes in self.nodes.items() if name in strided}


def _static(value, index: int, key: str, args, kwargs):
    value = kwargs.get(key, args[index] if len(args) > index else value)
    return None if isinstance(value, fx.Node) else value


def _not_one(stride) -> bool:
    values = stride if isinstance(stride, (tuple, list)) else (stride,)
    return any(isinstance(v, (int, float)) and v != 1 for v in values)


def _subsampling_call(node: fx.Node) -> str | None:
    """A label for a graph node that subsamples a map by a function, or None."""
    name = getattr(node.target, "__name__", str(node.target)) if node.op in ("call_function", "call_method") else ""
    args, kwargs = node.args, node.kwargs
    if name in ("max_pool2d", "avg_pool2d", "lp_pool2d", "max_pool2d_with_indices"):
        stride = _static(None, 2, "stride", args, kwargs)
        stride = stride if stride not in (None, [], ()) else _static(1, 1, "kernel_size", args, kwargs)
        return f"F.{name}" if _not_one(stride) else None
    if name == "conv2d":
        return "F.conv2d (strided)" if _not_one(_static(1, 3, "stride", args, kwargs)) else None
    if name == "interpolate":
        scale = _static(None, 2, "scale_factor", args, kwargs)
        values = scale if isinstance(scale, (tuple, list)) else (scale,)
        return "F.interpolate (down)" if any(isinstance(v, (int, float)) and v < 1 for v in values) else None
    if name == "getitem" and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        steps = [i.step for i in index if isinstance(i, slice)]
        if index and isinstance(index[-1], slice) and any(isinstance(s, int) and s > 1 for s in steps[-2:]):
            return "slicing with a step"
    return None


def trace(model: nn.Module) -> Flow | None:
    """Trace ``model`` with torch.fx (norm layers and childless modules as leaves); None if it fails."""
    try:
        graph = _Tracer().trace(model)
    except Exception:  # any model fx cannot trace: the caller falls back to a simpler placement
        return None
    return Flow(model, graph)
