"""The fused ops: ``torch.library`` custom ops in the ``sparsec`` namespace.

Each op has a reference implementation in plain ATen, registered under
``CompositeExplicitAutograd`` (so it runs on every device, and
``torch.export`` keeps it as one node instead of decomposing it), and a fake
implementation for shape propagation. The reference calls the same ATen ops
the unfused graph called, in the same order, so a fused graph computes
bit-for-bit what the unfused one did. A backend that has a real kernel
registers it for its device key on the same op, e.g.
``torch.library.register_kernel("sparsec::fused_conv2d", "cuda", fn)``; the
graph does not change.

On CUDA, ``fused_conv2d`` has one such kernel here (:func:`fused_conv2d_cuda`): a conv whose epilogue is
bias + ReLU, with or without a residual add before the ReLU, runs as one cuDNN call
(``aten.cudnn_convolution_relu`` / ``aten.cudnn_convolution_add_relu``, cuDNN's fused conv-bias-add-act
graph) instead of cuDNN's conv followed by PyTorch's bias add, add and ReLU, each a full pass over the
output. That is every conv a GPU backend leaves to cuDNN in a ResNet (the 7x7 stem, and the 3x3 convs
under ``SPARSEC_CUTLASS_KXK=none``). It rounds once, after the epilogue, where the reference rounds
after the conv and after each add: equal within the dtype's tolerance, not bit for bit.
``SPARSEC_CUDNN_FUSED=0`` runs the reference instead. Where cuDNN has no fused engine for a shape,
PyTorch itself falls back to the separate kernels.

Semantics (the contract a backend kernel must meet)::

    fused_conv2d(x, w, bias, residual, stride, padding, dilation, groups, act, act2)
        = act2(act(conv2d(x, w, bias, stride, padding, dilation, groups)) + residual)
    fused_linear(x, w, bias, residual, act, act2)
        = act2(act(linear(x, w, bias)) + residual)
    conv2d_pool(x, w, bias, stride, padding, dilation, groups, act, pool, kernel_size,
                pool_stride, pool_padding, pool_dilation, ceil_mode, count_include_pad, divisor_override)
        = max_pool2d(act(conv2d(...)), kernel_size, pool_stride, pool_padding, pool_dilation, ceil_mode)
          if pool == "max", else
          avg_pool2d(act(conv2d(...)), kernel_size, pool_stride, pool_padding, ceil_mode,
                     count_include_pad, divisor_override)

- ``residual`` is ``None`` (then nothing is added) or a tensor of exactly the
  output's shape and dtype: the fusion passes never fuse a broadcasting add.
  ``act2`` is applied after the residual add, or after ``act`` when there is
  no residual.
- ``act`` and ``act2`` are names from :data:`ACTIVATIONS`: ``none``,
  ``relu``, ``relu6`` (``hardtanh(0, 6)``), ``silu``, ``gelu`` (erf),
  ``gelu_tanh``, ``hardswish``, ``sigmoid``.
- Tensors are NCHW (``x``: N x Cin x H x W, ``w``: Cout x Cin/groups x kh x
  kw, as ``aten.conv2d``) and linear weights are ``out x in`` (as
  ``aten.linear``); ``fused_linear`` takes any leading dims. The layout a
  kernel computes in (NHWC for tensor cores) is the backend's concern: it sees
  the strides of the tensors it is given and returns a tensor with the
  reference's shape.
- ``squeeze_excite(x, w1, b1, w2, b2, act, gate, squeeze)``, a squeeze-and-excitation block
  (MobileNetV3, EfficientNet)::

      s = squeeze(x)                                 adaptive_avg_pool2d(x, [1, 1]), or mean(x, [2, 3], keepdim)
      y = x * gate(conv2d(act(conv2d(s, w1, b1)), w2, b2))

  with ``w1`` [R, C, 1, 1], ``w2`` [C, R, 1, 1]; ``squeeze`` is ``"pool"`` or ``"mean"`` (whichever
  op the unfused graph had), ``gate`` an activation name (``sigmoid`` in the models above).
- ``pool_stride=[]`` means the pool's stride equals its kernel size, as in
  ``aten.max_pool2d``.
- Gradients (for fine-tuning a fused graph) come from recomputing the
  reference under autograd in the backward: correct, not fast.
"""

from __future__ import annotations

import torch

from sparsec import knobs

aten = torch.ops.aten

NAMESPACE = "sparsec"


def _relu6(x: torch.Tensor) -> torch.Tensor:
    return aten.hardtanh.default(x, 0.0, 6.0)


# name -> the ATen call of the unfused graph (the order of this table is the printed order).
ACTIVATIONS = {
    "none": lambda x: x,
    "relu": aten.relu.default,
    "relu6": _relu6,
    "silu": aten.silu.default,
    "gelu": lambda x: aten.gelu.default(x, approximate="none"),
    "gelu_tanh": lambda x: aten.gelu.default(x, approximate="tanh"),
    "hardswish": aten.hardswish.default,
    "sigmoid": aten.sigmoid.default,
}
POOLS = ("max", "avg")

_lib = torch.library.Library(NAMESPACE, "FRAGMENT")  # noqa: TOR901 - the namespace is shared with other sparsec ops

_lib.define(
    "fused_conv2d(Tensor x, Tensor weight, Tensor? bias=None, Tensor? residual=None, int[2] stride=1, "
    "int[2] padding=0, int[2] dilation=1, int groups=1, str act=\"none\", str act2=\"none\") -> Tensor"
)
_lib.define(
    "fused_linear(Tensor x, Tensor weight, Tensor? bias=None, Tensor? residual=None, "
    "str act=\"none\", str act2=\"none\") -> Tensor"
)
_lib.define(
    "conv2d_pool(Tensor x, Tensor weight, Tensor? bias=None, int[2] stride=1, int[2] padding=0, "
    "int[2] dilation=1, int groups=1, str act=\"none\", str pool=\"max\", int[2] kernel_size=2, "
    "int[2] pool_stride=[], int[2] pool_padding=0, int[2] pool_dilation=1, bool ceil_mode=False, "
    "bool count_include_pad=True, int? divisor_override=None) -> Tensor"
)

_lib.define(
    "squeeze_excite(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, str act=\"none\", "
    "str gate=\"sigmoid\", str squeeze=\"pool\") -> Tensor"
)
SQUEEZES = ("pool", "mean")


def _act(name: str) -> object:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"sparsec fused op: unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


def _epilogue(y: torch.Tensor, residual: torch.Tensor | None, act: str, act2: str) -> torch.Tensor:
    y = _act(act)(y)
    if residual is not None:
        if residual.shape != y.shape:
            raise ValueError(f"sparsec fused op: residual shape {tuple(residual.shape)} != output {tuple(y.shape)}")
        y = aten.add.Tensor(y, residual)
    return _act(act2)(y)


def fused_conv2d_ref(x, weight, bias=None, residual=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                     groups=1, act="none", act2="none"):
    """Reference: ``act2(act(conv2d(x, weight, bias, ...)) + residual)``."""
    y = aten.conv2d.default(x, weight, bias, list(stride), list(padding), list(dilation), groups)
    return _epilogue(y, residual, act, act2)


def fused_linear_ref(x, weight, bias=None, residual=None, act="none", act2="none"):
    """Reference: ``act2(act(linear(x, weight, bias)) + residual)``."""
    return _epilogue(aten.linear.default(x, weight, bias), residual, act, act2)


def conv2d_pool_ref(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, act="none",
                    pool="max", kernel_size=(2, 2), pool_stride=(), pool_padding=(0, 0), pool_dilation=(1, 1),
                    ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Reference: ``max_pool2d|avg_pool2d(act(conv2d(x, weight, bias, ...)), ...)``."""
    y = _act(act)(aten.conv2d.default(x, weight, bias, list(stride), list(padding), list(dilation), groups))
    if pool == "max":
        return aten.max_pool2d.default(y, list(kernel_size), list(pool_stride), list(pool_padding),
                                       list(pool_dilation), ceil_mode)
    if pool == "avg":
        if list(pool_dilation) != [1, 1]:
            raise ValueError("sparsec::conv2d_pool: avg pooling takes no dilation")
        return aten.avg_pool2d.default(y, list(kernel_size), list(pool_stride), list(pool_padding), ceil_mode,
                                       count_include_pad, divisor_override)
    raise ValueError(f"sparsec::conv2d_pool: unknown pool {pool!r}; known: {', '.join(POOLS)}")


def squeeze_excite_ref(x, w1, b1, w2, b2, act="none", gate="sigmoid", squeeze="pool"):
    """Reference: ``x * gate(conv2d(act(conv2d(squeeze(x), w1, b1)), w2, b2))``."""
    if squeeze == "pool":
        s = aten.adaptive_avg_pool2d.default(x, [1, 1])
    elif squeeze == "mean":
        s = aten.mean.dim(x, [2, 3], True)
    else:
        raise ValueError(f"sparsec::squeeze_excite: unknown squeeze {squeeze!r}; known: {', '.join(SQUEEZES)}")
    s = fused_conv2d_ref(s, w1, b1, act=act)
    s = fused_conv2d_ref(s, w2, b2, act=gate)
    return aten.mul.Tensor(s, x)


def cudnn_epilogue(act: str, act2: str, residual: bool) -> str | None:
    """Which of cuDNN's fused convs computes ``act2(act(conv + bias) + residual)``: ``"relu"`` (no residual,
    one ReLU), ``"add_relu"`` (the residual add, then a ReLU), or None."""
    if not residual:
        return "relu" if {act, act2} == {"relu", "none"} or act == act2 == "relu" else None
    return "add_relu" if act == "none" and act2 == "relu" else None


def _cudnn_fusable(x, residual, act: str, act2: str) -> str | None:
    """:func:`cudnn_epilogue` where this call can take it: a 4-D CUDA tensor cuDNN takes, the knob on."""
    if not (x.is_cuda and x.dim() == 4 and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and torch.backends.cudnn.enabled and torch.backends.cudnn.is_available() and knobs.get("cudnn_fused")):
        return None
    if residual is not None and residual.dtype != x.dtype:
        return None
    return cudnn_epilogue(act, act2, residual is not None)


def fused_conv2d_cuda(x, weight, bias=None, residual=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                      groups=1, act="none", act2="none"):
    """CUDA kernel of ``fused_conv2d``: bias + ReLU (after a residual add or not) fused into one cuDNN
    call where that is the whole epilogue; any other epilogue runs the reference."""
    how = _cudnn_fusable(x, residual, act, act2)
    if how is None:
        return fused_conv2d_ref(x, weight, bias, residual, stride, padding, dilation, groups, act, act2)
    args = (list(stride), list(padding), list(dilation), groups)
    if how == "relu":
        return aten.cudnn_convolution_relu.default(x, weight, bias, *args)
    out = (x.shape[0], weight.shape[0], *((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
                                          zip(x.shape[2:], padding, dilation, weight.shape[2:], stride)))
    if tuple(residual.shape) != out:  # the reference's check, before cuDNN's less clear one
        raise ValueError(f"sparsec fused op: residual shape {tuple(residual.shape)} != output {out}")
    return aten.cudnn_convolution_add_relu.default(x, weight, residual, 1.0, bias, *args)


def _autograd(ref):
    """Backward by recomputing the reference under autograd: what the unfused graph would give."""

    def setup_context(ctx, inputs, output):
        ctx.inputs = inputs

    def backward(ctx, grad):
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor) else x
                      for x in ctx.inputs]
            wanted = [x for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad]
            grads = iter(torch.autograd.grad(ref(*leaves), wanted, grad, allow_unused=True))
        return tuple(next(grads) if isinstance(x, torch.Tensor) and x.requires_grad else None for x in leaves)

    return backward, setup_context


for _name, _fn in (("fused_conv2d", fused_conv2d_ref), ("fused_linear", fused_linear_ref),
                   ("conv2d_pool", conv2d_pool_ref), ("squeeze_excite", squeeze_excite_ref)):
    _lib.impl(_name, _fn, "CompositeExplicitAutograd")
    # The reference is plain ATen, which fake tensors propagate through: it is its own fake impl.
    torch.library.register_fake(f"{NAMESPACE}::{_name}", _fn, lib=_lib)
    _backward, _setup = _autograd(_fn)
    torch.library.register_autograd(f"{NAMESPACE}::{_name}", _backward, setup_context=_setup, lib=_lib)

_lib.impl("fused_conv2d", fused_conv2d_cuda, "CUDA")

fused_conv2d = torch.ops.sparsec.fused_conv2d.default
fused_linear = torch.ops.sparsec.fused_linear.default
conv2d_pool = torch.ops.sparsec.conv2d_pool.default
squeeze_excite = torch.ops.sparsec.squeeze_excite.default

FUSED_EPILOGUE_OPS = frozenset({fused_conv2d, fused_linear})
FUSED_OPS = frozenset({fused_conv2d, fused_linear, conv2d_pool, squeeze_excite})
