"""Make a ``torch.export`` graph trainable: train()/eval() that really switch modes.

``ExportedProgram.module()`` bakes the mode it was traced in into the graph
(``aten.batch_norm(..., training=False, ...)``, ``aten.dropout(..., train=False)``)
and its ``train()`` raises. :func:`make_trainable` replaces ``train``/``eval``
on such a GraphModule with methods that flip those flags in the graph and
recompile, so BatchNorm updates its running statistics while fine-tuning and
uses them while evaluating. Plain ``nn.Module``s are returned unchanged.
"""

from __future__ import annotations

import operator
import types

import torch
from torch import fx

aten = torch.ops.aten

# op -> index of its "training" positional argument
_MODE_ARG = {
    aten.batch_norm.default: 5,
    aten.dropout.default: 2,
    aten.feature_dropout.default: 2,
    aten.alpha_dropout.default: 2,
}


def set_graph_mode(gm: fx.GraphModule, training: bool) -> int:
    """Set the training flag of every batch_norm/dropout node; returns how many changed."""
    changed = 0
    for node in gm.graph.nodes:
        idx = _MODE_ARG.get(node.target) if node.op == "call_function" else None
        if idx is None:
            continue
        args = list(node.args)
        if idx < len(args):
            if args[idx] != training:
                args[idx] = training
                node.args = tuple(args)
                changed += 1
        elif node.kwargs.get("training", node.kwargs.get("train")) != training:
            key = "training" if node.target is aten.batch_norm.default else "train"
            node.kwargs = {**node.kwargs, key: training}
            changed += 1
    if changed:
        gm.recompile()
    return changed


def to_trainable_batch_norm(gm: fx.GraphModule) -> int:
    """Rewrite ``_native_batch_norm_legit_no_training`` (what decomposed eval-mode exports hold)
    into ``aten.batch_norm`` so its training flag can be flipped; returns how many were rewritten.

    ``(out, _, _) = _native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)``
    becomes ``out = batch_norm(x, w, b, mean, var, False, momentum, eps, True)``; a node whose
    saved statistics (outputs 1, 2) are used is left alone.
    """
    old = aten._native_batch_norm_legit_no_training.default
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not old:
            continue
        users = list(node.users)
        if not all(u.target is operator.getitem and u.args[1] == 0 for u in users):
            continue
        x, w, b, mean, var, momentum, eps = node.args
        with gm.graph.inserting_before(node):
            bn = gm.graph.call_function(aten.batch_norm.default, (x, w, b, mean, var, False, momentum, eps, True))
        bn.meta.update({k: v for k, v in (users[0].meta if users else node.meta).items() if k != "val"})
        if users and "val" in users[0].meta:
            bn.meta["val"] = users[0].meta["val"]
        for u in users:
            u.replace_all_uses_with(bn)
            gm.graph.erase_node(u)
        gm.graph.erase_node(node)
        n += 1
    if n:
        gm.graph.lint()
        gm.recompile()
    return n


def _train(self: fx.GraphModule, mode: bool = True) -> fx.GraphModule:
    set_graph_mode(self, mode)
    torch.nn.Module.train(self, mode)  # sets .training on submodules, never calls our override again
    return self


def _eval(self: fx.GraphModule) -> fx.GraphModule:
    return _train(self, False)


def make_trainable(model: torch.nn.Module) -> torch.nn.Module:
    """Return ``model`` with working ``train()``/``eval()`` (in place for fx GraphModules)."""
    if isinstance(model, fx.GraphModule):
        to_trainable_batch_norm(model)
        model.train = types.MethodType(_train, model)  # type: ignore[method-assign]
        model.eval = types.MethodType(_eval, model)  # type: ignore[method-assign]
    return model
