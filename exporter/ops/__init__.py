# SPDX-License-Identifier: Apache-2.0
"""Token operations: one op per reduction step of a block, what every method is built from, and LITv2's
HiLo window attention (`hilo_attention`, the Hi-Fi branch: window partition, padding and attention).

Each op is a `torch.library` custom op (`torch.ops.exporter.<name>`) with
- its reference maths (`reference.py`, the CPU implementation and what everything is held to),
- a shape function read from its plugin contract (`plugins/<name>/contract.json`),
- a fused kernel on CUDA devices (`kernels/`, Triton), and
- two ONNX lowerings chosen at export time (`lowering`): `decompose` traces the reference maths into
  standard ops (TopK, Gather, MatMul: the portable default), `plugin` emits one custom node per op
  per block that TensorRT resolves to the plugin of the same name (see `plugin_nodes.py`).

A reducing op is a decision and a movement (see `reference`): `choose_<op>(...) -> choice` and
`apply_<op>(x, ..., choice)`, which methods call in that order through `methods.base.Choices`. Where nothing
has to see the choice in PyTorch, `Choices` leaves it to the op (`Deferred`) and `apply_<op>` runs the
custom op when a plugin graph is being exported or the tensors are on a GPU (one plugin node, one fused
kernel: decision and movement together), or the reference maths inline (so a decomposed graph is exactly
the reference). Where verification needs the choice (replaying another run's indices, or reading every
choice's scores for the margins), it is made by the reference in PyTorch and applied by the reference:
verification replays and scores on the CPU.

Beside the token ops, `biased_attention` (ToMe's and DiffRate's attention with the log-size bias) takes a fused
flash-style kernel on a GPU (`torch.ops.exporter.biased_attention`, no plugin); elsewhere it is SDPA with a mask.
"""
from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

import torch
from torch import Tensor

from . import reference
from .reference import Choice, Kept, Matching, Reduction
from .reference import choose_diffrate_reduce, choose_evovit_select, choose_tome_merge, choose_topk_prune
from .contracts import load as load_contract

OPS = ("topk_prune", "evovit_select", "evovit_restore", "tome_merge", "diffrate_reduce", "hilo_attention")
LOWERINGS = ("decompose", "plugin")

# Process-wide switches, set only through the context managers below (plain globals, which torch.compile
# reads as constants, where a ContextVar would break its graph).
_state = {"lowering": "decompose", "fused": True}


@contextlib.contextmanager
def _setting(key: str, value) -> Iterator[None]:
    before, _state[key] = _state[key], value
    try:
        yield
    finally:
        _state[key] = before


@contextlib.contextmanager
def lowering(mode: str) -> Iterator[None]:
    """Export token ops as standard ops (`decompose`) or as plugin nodes (`plugin`) inside this block."""
    if mode not in LOWERINGS:
        raise ValueError(f"lowering must be one of {LOWERINGS}, got {mode!r}")
    with _setting("lowering", mode):
        yield


@contextlib.contextmanager
def fused_kernels(enabled: bool) -> Iterator[None]:
    """On a GPU, run token ops as their fused kernels (the default) or as the reference's standard ops
    (what a decomposed graph computes; benchmarks compare the two)."""
    with _setting("fused", bool(enabled)):
        yield


def called(fn: Callable, *args) -> collections.Counter:
    """How often `fn(*args)` calls each token op: the plugin nodes a plugin graph of it would hold.

    Runs `fn` once as a plugin export would (every op through `torch.ops.exporter`) and counts the
    ops the dispatcher sees, so it holds for any model, whatever calls the ops.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: collections.Counter = collections.Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "exporter":
                seen[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), lowering("plugin"), Count():
        fn(*args)
    return seen


def _custom(x: Tensor) -> bool:
    """Call the custom op (plugin export, or its fused kernel on a GPU) rather than inline maths."""
    return _state["lowering"] == "plugin" or (x.is_cuda and _state["fused"])


def _ones(x: Tensor) -> Tensor:
    return torch.ones(x.shape[:2], dtype=torch.float32, device=x.device)


# ---- the functions methods call ---------------------------------------------------------------------

@dataclass(frozen=True)
class Deferred:
    """A choice left to the op: the `choose_<op>` that makes it and its arguments. Nothing needs it in
    PyTorch, so the op may make it where it moves the tokens (one plugin node, one fused kernel)."""

    choose: Callable[..., Choice]
    inputs: tuple

    def made(self) -> Choice:
        return self.choose(*self.inputs)


def apply_topk_prune(x: Tensor, choice: Union[Kept, Deferred], fuse: bool):
    """(tokens [B, 1+k+fuse, C], idx [B, k]); see `reference.apply_topk_prune`."""
    if isinstance(choice, Deferred):
        if _custom(x):
            return torch.ops.exporter.topk_prune(x, *choice.inputs, fuse)
        choice = choice.made()
    return reference.apply_topk_prune(x, choice, fuse)


def apply_evovit_select(x: Tensor, choice: Union[Kept, Deferred]):
    """(tokens [B, keep+2, C], idx [B, keep]); see `reference.apply_evovit_select`."""
    if isinstance(choice, Deferred):
        if _custom(x):
            return torch.ops.exporter.evovit_select(x, *choice.inputs)
        choice = choice.made()
    return reference.apply_evovit_select(x, choice)


def evovit_restore(x: Tensor, tokens: Tensor, moved: Tensor, idx: Tensor) -> Tensor:
    """[B, N, C]; see `reference.evovit_restore` (pure movement: the stage's choice is `idx`)."""
    if _custom(x):
        return torch.ops.exporter.evovit_restore(x, tokens, moved, idx)
    return reference.evovit_restore(x, tokens, moved, idx)


def apply_tome_merge(x: Tensor, size: Optional[Tensor], choice: Union[Matching, Deferred]):
    """(tokens [B, N-r, C], size [B, N-r], src [B, r], dst [B, r]); see `reference.apply_tome_merge`."""
    if isinstance(choice, Deferred):
        if _custom(x):
            return torch.ops.exporter.tome_merge(x, _ones(x) if size is None else size, *choice.inputs)
        choice = choice.made()
    return reference.apply_tome_merge(x, size, choice)


def apply_diffrate_reduce(x: Tensor, size: Optional[Tensor], choice: Union[Reduction, Deferred]):
    """(tokens [B, merge, C], size [B, merge], idx [B, keep-1], dst [B, keep-merge]); see
    `reference.apply_diffrate_reduce`."""
    if isinstance(choice, Deferred):
        if _custom(x):  # choose_diffrate_reduce(x, score, keep, merge): the op takes x and size first
            return torch.ops.exporter.diffrate_reduce(x, _ones(x) if size is None else size, *choice.inputs[1:])
        choice = choice.made()
    return reference.apply_diffrate_reduce(x, size, choice)


def hilo_attention(qkv: Tensor, pad: Tensor, height: int, width: int, window: int, heads: int,
                   scale: Optional[float] = None) -> Tensor:
    """[B, H*W, D]; see `reference.hilo_attention`. The op (plugin node, fused kernel) has the default
    scale head_dim ** -0.5 built in, since plugin attributes are integers: an overridden `scale` runs the
    reference in every lowering."""
    head_dim = qkv.shape[-1] // 3 // heads
    if (scale is None or scale == head_dim ** -0.5) and _custom(qkv):
        return torch.ops.exporter.hilo_attention(qkv, pad, height, width, window, heads)
    return reference.hilo_attention(qkv, pad, height, width, window, heads, scale)


def biased_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """`scaled_dot_product_attention(q, k, v)` (q/k/v [B, H, N, d], scale d ** -0.5) with `bias` [B, N] added
    to every query row's logits after the scale: ToMe's and DiffRate's proportional attention (log token sizes).

    With a bias, CUDA tensors take the fused kernel (`torch.ops.exporter.biased_attention`: flash-style, the bias
    in fp32; PyTorch's flash backend takes no mask), unless the token ops run as standard ops
    (`fused_kernels(False)`), a graph is being exported or traced for plugins, or the kernel does not fit (head
    dim > 128, cross-attention). Everywhere else, and in every exported graph, it is what it always was: SDPA
    with the bias as a [B, 1, 1, N] mask in q's dtype.
    """
    if bias is not None and q.is_cuda and _state["fused"] and _state["lowering"] == "decompose" and not _exporting():
        from .kernels.biased_attention import fits

        if fits(q, k, v, bias):
            return torch.ops.exporter.biased_attention(q, k, v, bias.float())
    mask = None if bias is None else bias[:, None, None, :].to(q.dtype)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _exporting() -> bool:
    """A graph is being captured for export (torch.export / the dynamo ONNX exporter, or the TorchScript one)."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


# ---- the custom ops ---------------------------------------------------------------------------------
# The CPU implementation is the reference; CUDA gets the fused kernel (registered below).

@torch.library.custom_op("exporter::topk_prune", mutates_args=())
def _topk_prune(x: Tensor, score: Tensor, k: int, fuse: bool) -> tuple[Tensor, Tensor]:
    return _dense(reference.topk_prune(x, score, k, fuse))


@torch.library.custom_op("exporter::evovit_select", mutates_args=())
def _evovit_select(x: Tensor, g: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    return _dense(reference.evovit_select(x, g, keep))


@torch.library.custom_op("exporter::evovit_restore", mutates_args=())
def _evovit_restore(x: Tensor, tokens: Tensor, moved: Tensor, idx: Tensor) -> Tensor:
    return reference.evovit_restore(x, tokens, moved, idx)


@torch.library.custom_op("exporter::tome_merge", mutates_args=())
def _tome_merge(x: Tensor, size: Tensor, metric: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _dense(reference.tome_merge(x, size, metric, r))


@torch.library.custom_op("exporter::diffrate_reduce", mutates_args=())
def _diffrate_reduce(x: Tensor, size: Tensor, score: Tensor, keep: int, merge: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _dense(reference.diffrate_reduce(x, size, score, keep, merge))


@torch.library.custom_op("exporter::hilo_attention", mutates_args=())
def _hilo_attention(qkv: Tensor, pad: Tensor, height: int, width: int, window: int, heads: int) -> Tensor:
    return reference.hilo_attention(qkv, pad, height, width, window, heads).contiguous()


@torch.library.custom_op("exporter::biased_attention", mutates_args=())
def _biased_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """Not a token op (no plugin, no contract, never in an exported graph): the fused attention's op, so that
    torch.compile and CUDA graphs capture the kernel. Its result is [B, H, N, d] over [B, N, H, d] memory, as
    the kernel writes it (the block's projection reads that layout)."""
    mask = bias[:, None, None, :].to(q.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).contiguous().transpose(1, 2)


@_biased_attention.register_fake
def _biased_attention_shape(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    B, H, N, d = q.shape
    return q.new_empty(B, N, H, d).transpose(1, 2)


@_biased_attention.register_kernel("cuda")
def _biased_attention_kernel(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    from .kernels.biased_attention import biased_attention as fused

    return fused(q, k, v, bias)


def _dense(outputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Contiguous outputs, as a plugin writes them (the reference returns some as views)."""
    return tuple(t.contiguous() for t in outputs)


_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def _fake(name: str):
    """Shape function from the op's contract: inputs (in contract order), then its attributes."""
    contract = load_contract(name)

    def fake(*args):
        tensors, attrs = args[: len(contract.inputs)], args[len(contract.inputs):]
        shapes = contract.output_shapes([tuple(t.shape) for t in tensors], dict(zip(contract.attributes, attrs)))
        x = tensors[0]
        outs = [x.new_empty(shape, dtype=x.dtype if spec.dtype == "T" else _DTYPES[spec.dtype])
                for spec, shape in zip(contract.outputs, shapes)]
        return outs[0] if len(outs) == 1 else tuple(outs)

    return fake


def _fused(name: str):
    """The op's fused Triton kernel (imported on first use, so nothing GPU-only loads before)."""

    def run(*args):
        from . import kernels

        return getattr(kernels, name)(*args)

    return run


for _name in OPS:
    torch.library.register_fake(f"exporter::{_name}")(_fake(_name))
    torch.library.register_kernel(f"exporter::{_name}", "cuda")(_fused(_name))

__all__ = [
    "OPS", "LOWERINGS", "lowering", "fused_kernels", "called", "Deferred",
    "choose_topk_prune", "apply_topk_prune", "choose_evovit_select", "apply_evovit_select", "evovit_restore",
    "choose_tome_merge", "apply_tome_merge", "choose_diffrate_reduce", "apply_diffrate_reduce", "hilo_attention",
    "biased_attention",
]
