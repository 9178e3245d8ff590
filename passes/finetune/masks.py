"""2:4 masks that survive training.

A :class:`MaskSet` holds one boolean mask per 2:4 weight. The training loop
calls :meth:`MaskSet.mask_grads` before each optimiser step (so momentum and
Adam moments never build up on a pruned weight) and :meth:`MaskSet.apply`
after it (so weight decay and any numerical drift cannot revive one). Masks
come from the IR (``sparsec.sparsity`` metadata on ``get_attr`` weights, as
``sparsify-2-4`` leaves them) or, for a plain ``nn.Module``, from the
weights' current zero pattern.

:func:`magnitude_24_mask` is the textbook mask (keep the 2 largest of every
4 consecutive weights along ``dim``); :func:`sparsify_24` applies it when the
registered ``sparsify-2-4`` pass is not available.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from sparsec.ir import meta as M

log = logging.getLogger("sparsec.finetune")


def magnitude_24_mask(w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Keep the 2 largest-magnitude of every 4 consecutive elements along ``dim``."""
    moved = w.detach().movedim(dim, -1)
    if moved.shape[-1] % 4:
        raise ValueError(f"dim {dim} of size {moved.shape[-1]} is not a multiple of 4")
    groups = moved.reshape(-1, 4).abs()
    top = groups.topk(2, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(moved.shape).movedim(-1, dim)


def is_24(w: torch.Tensor, dim: int = 1) -> bool:
    moved = w.detach().movedim(dim, -1)
    return moved.shape[-1] % 4 == 0 and bool(((moved.reshape(-1, 4) != 0).sum(-1) <= 2).all())


@dataclasses.dataclass
class MaskSet:
    """``name -> (parameter, keep-mask)``; the masks live on the parameters' device."""

    masks: dict[str, tuple[torch.nn.Parameter, torch.Tensor]] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.masks)

    @classmethod
    def from_module(cls, model: torch.nn.Module, mod=None) -> "MaskSet":
        """Masks of every 2:4 weight: from ``mod``'s metadata when given, else none."""
        out = cls()
        if mod is None:
            return out
        params = dict(model.named_parameters())
        for node in mod.nodes("get_attr"):
            sp = M.get(node, M.Sparsity24)
            if sp is None:
                continue
            p = params.get(node.target)
            if p is None:
                continue
            moved = p.detach().movedim(sp.dim, -1)
            keep = (moved.reshape(-1, 4) != 0)
            if (keep.sum(-1) > 2).any():
                # marked but not (yet) 2:4: take the magnitude mask, never more non-zeros
                keep = magnitude_24_mask(p, sp.dim).movedim(sp.dim, -1).reshape(-1, 4)
            out.masks[node.target] = (p, keep.reshape(moved.shape).movedim(-1, sp.dim).contiguous())
        return out

    @classmethod
    def from_names(cls, model: torch.nn.Module, names: dict[str, int]) -> "MaskSet":
        """Masks for the named parameters (``name -> dim``) from their current zeros."""
        params = dict(model.named_parameters())
        out = cls()
        for name, dim in names.items():
            p = params[name]
            keep = p.detach() != 0
            if not is_24(p, dim):
                keep = magnitude_24_mask(p, dim)
            out.masks[name] = (p, keep)
        return out

    def to(self, device) -> "MaskSet":
        for name, (p, m) in self.masks.items():
            self.masks[name] = (p, m.to(device))
        return self

    def rebind(self, model: torch.nn.Module) -> "MaskSet":
        """Point the masks at ``model``'s parameters of the same names (after .to(), DDP...)."""
        params = dict(model.named_parameters())
        for name, (_, m) in self.masks.items():
            p = params[name]
            self.masks[name] = (p, m.to(p.device))
        return self

    @torch.no_grad()
    def apply(self) -> None:
        for p, m in self.masks.values():
            p.mul_(m)

    @torch.no_grad()
    def mask_grads(self) -> None:
        for p, m in self.masks.values():
            if p.grad is not None:
                p.grad.mul_(m)

    def violations(self) -> int:
        """Masked weights that are non-zero (0 after every :meth:`apply`)."""
        return int(sum(int((p.detach()[~m] != 0).sum()) for p, m in self.masks.values()))


def sparsify_24(mod, *, min_k: int = 64, pipeline: str | None = None) -> tuple[str, int]:
    """Make ``mod``'s conv/linear weights 2:4 along the input-channel dim.

    Uses the registered ``sparsify-2-4`` pass when there is one (``pipeline``,
    default ``sparsify-2-4{cost-model=shape,min-k=<min_k>}``: every layer that
    can hold 2:4, whatever the kernels' speed, for accuracy); otherwise a
    magnitude 2:4 mask on every conv/linear weight whose input-channel dim is
    a multiple of 4 and whose reduction (in-channels x kernel) is at least
    ``min_k`` (depthwise, the 3-channel stem and tiny layers stay dense), and
    marks each with ``sparsec.sparsity``. Returns (how, number of weights).
    """
    from sparsec.registry import registry

    why = "sparsify-2-4 pass not registered"
    if "sparsify-2-4" in registry().names("pass"):
        from sparsec.passes.manager import PassManager

        try:
            text = pipeline or f"sparsify-2-4{{cost-model=shape,min-k={min_k}}}"
            PassManager.parse(text).run(mod)
            n = sum(1 for node in mod.nodes("get_attr") if M.get(node, M.Sparsity24) is not None)
            return f"{text} pass", n
        except Exception as exc:  # a pass still being written must not stop an experiment
            why = f"sparsify-2-4 pass failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("sparsify_24: %s; using magnitude 2:4 masks instead", why)
    aten = torch.ops.aten
    n = 0
    for node in mod.nodes("call_function", (aten.conv2d.default, aten.linear.default)):
        w = node.args[1]
        if w.op != "get_attr":
            continue
        groups = node.args[6] if node.target is aten.conv2d.default and len(node.args) > 6 else 1
        t = mod.get_param(w.target)
        if groups != 1 or t.shape[1] % 4 or t[0].numel() < min_k:
            continue
        mask = magnitude_24_mask(t, 1)
        with torch.no_grad():
            t.mul_(mask)
        M.put(w, M.Sparsity24(dim=1))
        n += 1
    log.info("sparsify_24: %s; applied magnitude 2:4 masks to %d weights", why, n)
    return f"magnitude 2:4 fallback ({why})", n
