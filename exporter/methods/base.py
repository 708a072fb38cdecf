# SPDX-License-Identifier: Apache-2.0
"""What every token-reduction method shares: its registry entry, parameter checking, and the
forward pass of a reduced timm VisionTransformer.

A method never edits the caller's model. `ReducedViT` holds the timm model and re-implements
only the block loop; patch embedding, final norm and head are the timm modules themselves, so
weights are shared and LayerScale, q/k-norm and the like keep working.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from .. import ops
from ..errors import ExporterError


@dataclass(frozen=True)
class Param:
    """One method parameter: its Python name, how to parse it from the command line, its default."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Method:
    """A registered method: `apply(model, **params)` returns the reduced `nn.Module`."""

    name: str
    summary: str
    params: tuple[Param, ...]
    apply: Callable[..., nn.Module]
    # resolved params -> the same reduction without what binds it to the model's weights (DiffRate's searched
    # schedule -> its counts): a model rebuilt with other weights, e.g. bench's timing model, keeps every token count
    unbind: Callable[[dict[str, Any]], dict[str, Any]] = lambda params: params

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, unknown names rejected with the list of valid ones."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            valid = ", ".join(p.flag for p in self.params) or "no parameters"
            raise ExporterError(
                f"{', '.join('--' + u.replace('_', '-') for u in unknown)} is not a parameter of method '{self.name}'.",
                f"'{self.name}' takes {valid} (see `python -m exporter methods`).",
            )
        return {name: params.get(name, p.default) for name, p in known.items()}


REGISTRY: dict[str, Method] = {}


def register(name: str, summary: str, params: Sequence[Param] = (), unbind: Optional[Callable[[dict], dict]] = None):
    """Decorator for a method's `apply(model, **params)` function (`unbind`: see `Method`)."""

    def wrap(fn):
        REGISTRY[name] = Method(name, summary, tuple(params), fn, *([unbind] if unbind else []))
        return fn

    return wrap


# ---- parsers shared by the methods' command-line parameters ---------------------------------

def int_list(text: str) -> tuple[int, ...]:
    """'3,6,9' -> (3, 6, 9); also accepts a JSON-style '[3, 6, 9]'."""
    text = text.strip().strip("[]()")
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ExporterError(f"'{text}' is not a comma-separated list of integers.", "Write it as e.g. 3,6,9.") from None


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ExporterError(f"'{text}' is not a boolean.", "Use true or false.")


# ---- the model shape every method needs -----------------------------------------------------

def check_vit(model: nn.Module) -> None:
    """Fail with a clear message unless `model` is a timm VisionTransformer with one class token."""
    from timm.models.vision_transformer import Block, VisionTransformer
    from timm.layers import Attention

    if not isinstance(model, VisionTransformer):
        raise ExporterError(
            f"Token reduction needs a timm VisionTransformer, got {type(model).__name__}.",
            "Use a ViT/DeiT model such as deit_small_patch16_224 (timm.list_models('deit*') lists them).",
        )
    if model.cls_token is None or model.num_prefix_tokens != 1:
        raise ExporterError(
            f"Token reduction scores tokens by their class-token attention; this model has "
            f"{'no class token' if model.cls_token is None else f'{model.num_prefix_tokens} prefix tokens'}.",
            "Use a ViT with exactly one class token and no distillation/register tokens (e.g. deit_small_patch16_224).",
        )
    if model.attn_pool is not None or model.global_pool not in ("token", "avg"):
        raise ExporterError(
            f"Pooling '{model.global_pool}' is not supported by token reduction.",
            "Use a model that pools by the class token ('token') or by averaging ('avg').",
        )
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention:
            raise ExporterError(
                f"Block {i} is a {type(blk).__name__} with {type(getattr(blk, 'attn', None)).__name__}; "
                "token reduction patches only timm's standard Block/Attention.",
                "Use a plain ViT/DeiT model.",
            )


def to_fraction(value: float, name: str) -> float:
    if not (0.0 < float(value) <= 1.0):
        raise ExporterError(f"{name} must be in (0, 1], got {value}.", f"Pass --{name.replace('_', '-')} between 0 and 1, e.g. 0.7.")
    return float(value)


def check_blocks(values: Sequence[int], depth: int, name: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in values)
    bad = [v for v in values if not 0 <= v < depth]
    if bad:
        raise ExporterError(
            f"{name} {bad} lie outside the model's blocks 0..{depth - 1}.",
            f"Pass --{name.replace('_', '-')} with block indices below {depth}.",
        )
    return values


# ---- shared forward pieces ------------------------------------------------------------------

@dataclass
class Attended:
    """What a block's attention produced: the output, keys (for ToMe) and the fp32 CLS row."""

    out: torch.Tensor
    k: torch.Tensor
    cls_row: Optional[torch.Tensor]  # [B, heads, N] fp32 softmax row of the class token, or None


def attend(attn: nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor] = None, cls_row: bool = False) -> Attended:
    """timm `Attention.forward`, with an optional additive per-key bias and the class-token row.

    The main attention stays `scaled_dot_product_attention` (exported as scale-Q/K, MatMul,
    Softmax, MatMul, which TensorRT fuses; with a bias on a GPU, PyTorch runs `ops.biased_attention`'s
    fused kernel instead, see there); the class-token row is recomputed on its own in fp32
    (exact: softmax is row-wise), so an fp16 graph keeps the same tokens as the fp32 one.
    `bias` is [B, N], e.g. log(token size) for proportional attention.
    """
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = ops.biased_attention(q, k, v, bias)
    out = attn.norm(out.transpose(1, 2).reshape(B, N, attn.attn_dim))
    if attn.gate is not None:
        out = out * attn.gate(x).sigmoid()
    out = attn.proj_drop(attn.proj(out))
    return Attended(out, k, cls_attention(q, k, attn.scale, bias) if cls_row else None)


def cls_attention(q: torch.Tensor, k: torch.Tensor, scale: float, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q_cls·Kᵀ·scale + bias) in fp32: [B, heads, N], the class token's attention row.

    On a GPU, half-precision q and k go into the product as they are, with fp32 accumulation and output
    (`bmm(..., out_dtype=float32)`, one head at a time on strided views: no fp32 or contiguous copy of k,
    which is most of this row's cost); the products of fp16 values are exact in fp32, so this differs from
    the fp32 route below only in summation order and in scaling after the sum. Elsewhere (the CPU, export)
    q_cls and k are cast to fp32, which is what the ONNX graphs hold. (The meta device takes the GPU's
    route, so exporter.ops.perf prices what a GPU runs.)
    """
    if k.device.type in ("cuda", "meta") and k.dtype in (torch.float16, torch.bfloat16) and q.dtype == k.dtype:
        logits = torch.stack([torch.bmm(q[:, h, :1], k[:, h].transpose(-2, -1), out_dtype=torch.float32)
                              for h in range(k.shape[1])], dim=1) * scale
    else:
        logits = (q[:, :, :1].float() * scale) @ k.float().transpose(-2, -1)
    if bias is not None:
        logits = logits + bias.float()[:, None, None, :]
    return logits.softmax(dim=-1)[:, :, 0]


def attn_residual(block: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """The increment a timm Block adds after attention (LayerScale and drop-path included)."""
    return block.drop_path1(block.ls1(out))


def mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The increment a timm Block adds through its MLP."""
    return block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


class Choices:
    """The token choices of one forward pass, passed down the block loop (never kept on a module).

    Every reduction `choose`s through it, then `add`s the indices its op returned, in order; the traced
    forward returns them. Given `replay` (another run's choices, in the same order), each choice is built
    from that run's indices instead of made: PyTorch then computes what that run computed after a near-tie
    went the other way. `traced` asks for choices comparable across runtimes (EViT then follows token
    identities, which costs a gather per reduction). Given a `decisions` list, every choice's scores are
    appended to it as (reduction, what, fp32 scores, chosen indices): how far each was from tipping, for
    verification (`checks.margins`).
    """

    def __init__(self, replay: Optional[Sequence[torch.Tensor]] = None, traced: bool = False,
                 decisions: Optional[list] = None):
        self.replay: Optional[Iterator[torch.Tensor]] = None if replay is None else iter(replay)
        self.traced = traced or replay is not None
        self.kept: list[torch.Tensor] = []
        self.reductions = 0
        self.decisions = decisions

    def choose(self, choose: Callable[..., ops.Choice], *inputs, records: int = 1,
               located: Optional[Callable] = None):
        """The choice `choose(*inputs)` (an `ops.choose_<op>`) makes, for `ops.apply_<op>`.

        Replaying, it is built from the next `records` replayed index tensors instead (`located` maps them
        to positions in this run's inputs, where the reduction records something else), as `recorded`.
        Collecting decisions, its scores are appended. Otherwise nothing in PyTorch needs the choice, and it
        is left to the op (`ops.Deferred`): one plugin node or fused kernel decides and moves.
        """
        if self.replay is None and self.decisions is None:
            return ops.Deferred(choose, inputs)
        recorded = self._take(records, like=inputs[0])
        if recorded is not None and located is not None:
            recorded = located(recorded)
        choice = choose(*inputs, recorded=recorded)
        if self.decisions is not None:
            self.decisions.extend((self.reductions, *decision) for decision in choice.decisions())
        return choice

    def _take(self, count: int, like: Optional[torch.Tensor] = None):
        """The next `count` replayed index tensors (as a tuple when count > 1), or None when not replaying."""
        if self.replay is None:
            return None
        taken = tuple(next(self.replay).to(device=None if like is None else like.device, dtype=torch.int64) for _ in range(count))
        return taken[0] if count == 1 else taken

    def add(self, *idx: torch.Tensor) -> None:
        """Record one reduction's chosen indices."""
        self.kept.extend(idx)
        self.reductions += 1


class ReducedViT(nn.Module):
    """A timm VisionTransformer whose block loop reduces tokens with the token ops (`exporter.ops`).

    Subclasses implement `forward_blocks(x, choices) -> (x, size)`, where `size` is the [B, N] number
    of original patches each token stands for (None when tokens are only dropped), and record what
    every reduction chose in `choices`. `schedule` lists the tokens (class token included) leaving
    every block; it is fixed at construction, which is what makes the exported graph static.
    `forward_traced` returns the logits and the choices, the debug export that lets two runtimes'
    kept-token sets be compared, and replays given choices.
    """

    method: str = ""

    def __init__(self, vit: nn.Module, schedule: Sequence[int], params: dict[str, Any]):
        super().__init__()
        check_vit(vit)
        self.vit = vit.eval()
        self.schedule: Optional[list[int]] = [int(n) for n in schedule]
        self.params = dict(params)

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block (patches + class token) at the model's image size."""
        return self.vit.patch_embed.num_patches + self.vit.num_prefix_tokens

    def forward_blocks(self, x: torch.Tensor, choices: Choices) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    def pool(self, x: torch.Tensor, size: Optional[torch.Tensor]) -> torch.Tensor:
        """Class token, or the mean of patch tokens weighted by how many patches each stands for."""
        if self.vit.global_pool == "token":
            return x[:, 0]
        if size is None:
            return x[:, 1:].mean(dim=1)
        w = size[:, 1:, None].to(x.dtype)
        return (x[:, 1:] * w).sum(dim=1) / w.sum(dim=1)

    def _forward(self, x: torch.Tensor, choices: Choices) -> torch.Tensor:
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        x, size = self.forward_blocks(x, choices)
        x = vit.norm(x)
        return vit.head(vit.head_drop(vit.fc_norm(self.pool(x, size))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, Choices())

    def forward_traced(self, x: torch.Tensor, replay: Optional[Sequence[torch.Tensor]] = None,
                       decisions: Optional[list] = None) -> tuple:
        """(logits, *indices each reduction chose); with `replay`, the reductions use those instead; a
        `decisions` list receives every choice's scores (see `Choices`)."""
        choices = Choices(replay, traced=True, decisions=decisions)
        return (self._forward(x, choices), *choices.kept)

    def extra_repr(self) -> str:
        return f"method={self.method}, params={self.params}, tokens={self.num_tokens}->{self.schedule}"


class Dense(nn.Module):
    """The dense baseline behind a reduced model's interface: the caller's model, no token choices."""

    method = "none"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.schedule: Optional[list[int]] = None
        self.params: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_traced(self, x: torch.Tensor, replay: Optional[Sequence[torch.Tensor]] = None,
                       decisions: Optional[list] = None) -> tuple:
        return (self.model(x),)


class Traced(nn.Module):
    """A model's `forward_traced` as its forward, for export: (logits, *kept indices per reduction),
    and, given `replay`, the reductions use those indices instead of choosing. With `scores`, every
    token choice's fp32 scores follow (see `Choices`), so a runtime's own score error at a choice
    can be measured rather than estimated (`checks.margins`)."""

    def __init__(self, model: nn.Module, scores: bool = False):
        super().__init__()
        self.model = model
        self.scores = scores

    def forward(self, x: torch.Tensor, replay: Optional[Sequence[torch.Tensor]] = None):
        if not self.scores:
            return self.model.forward_traced(x, replay)
        made: list = []
        outputs = self.model.forward_traced(x, replay, made)
        return (*outputs, *[scores for _, _, scores, _ in made])
