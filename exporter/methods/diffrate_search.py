# SPDX-License-Identifier: Apache-2.0
"""DiffRate's own search: per-block prune and merge counts learned by gradient descent, the model frozen.

Chen et al., "DiffRate", ICCV 2023 (arXiv 2305.17997), section 3 ("differentiable discrete proxy"); the authors'
training path is `DiffRate/ddp.py` and the `self.training` branch of `DiffRate/patch/deit.py`. What it does:
- every block but the first has two `Rate`s (pruning, merging): a softmax over candidate kept patch counts
  (all patches down to `granularity`, in steps of `granularity`); the count a forward uses is the expectation
  rounded up (straight-through: the gradient of the expectation passes the ceiling), plus the class token;
- the forward keeps all tokens, sorted every block by class attention, with the kept ones first; tokens a block
  drops or merges away stay in the sequence behind a key mask of attention (`masked_attention`), so every kept
  token computes exactly what the real forward (`diffrate.DiffRateViT`, the project's reduction ops) computes;
- the mask is straight-through too: its value is 0/1, its gradient that of P(count > position), so the task
  loss reaches the distribution of the counts through the tokens each count would drop;
- the cost (the counted FLOPs; any per-block `BlockCost` would do) is a differentiable function of the counts, and the
  loss is distillation against the dense model plus `penalty * (cost / target - 1)^2`.
Only the rates' logits train (AdamW, cosine schedule). The relative penalty replaces the authors' absolute
(GFLOPs - target)^2 with lambda = 5, which for DeiT-S at 2.9 GFLOPs is a relative lambda of 5 * 2.9^2 = 42.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..ops.reference import apply_diffrate_reduce, choose_diffrate_reduce, gather_tokens, log_size, top_indices
from .base import attn_residual, check_vit, mlp_residual
from .diffrate import plan


class Rate(nn.Module):
    """A learnable distribution over the candidate kept patch counts of one reduction (DiffRate's DDP)."""

    def __init__(self, patches: int, granularity: int):
        super().__init__()
        self.register_buffer("candidates", torch.arange(patches, 0, -granularity, dtype=torch.float32))
        self.logits = nn.Parameter(torch.zeros(len(self.candidates)))

    def start_at(self, tokens: int) -> None:
        """Logits of the maximum-entropy distribution over the candidates whose expected kept tokens (class token
        included) are `tokens`: logits = beta * candidate, beta by bisection (the mean grows with beta). beta = 0 is
        the authors' zero logits, whose mean is half the patches."""
        scaled = self.candidates / self.candidates.max()
        goal = min(max(float(tokens) - 1, float(self.candidates.min())), float(self.candidates.max())) - 0.25  # ceil: tokens
        low, high = -200.0, 200.0
        for _ in range(60):
            beta = (low + high) / 2
            low, high = (beta, high) if float(self.candidates @ (beta * scaled).softmax(-1)) < goal else (low, beta)
        self.logits.data = (low + high) / 2 * scaled

    def tokens(self) -> torch.Tensor:
        """Kept tokens, class token included: ceil(E[count]) + 1, with the expectation's gradient."""
        expected = self.candidates @ self.logits.softmax(-1)
        return expected + (expected.ceil() - expected).detach() + 1

    def mask(self, kept: int, before: int, length: int) -> torch.Tensor:
        """[length] straight-through mask: 0 at positions kept..before-1 (the tokens this reduction removes), 1
        elsewhere; its gradient is that of P(kept tokens > position)."""
        positions = torch.arange(length, device=self.logits.device, dtype=torch.float32)
        survive = ((self.candidates[None, :] + 1) > positions[:, None]).float() @ self.logits.softmax(-1)
        hard = torch.ones(length, device=survive.device)
        hard[kept:before] = 0
        return hard + (survive - survive.detach())


@dataclass(frozen=True)
class BlockCost:
    """What one block costs as a function of its token counts: the tokens entering (attention), the tokens
    kept by class attention and the tokens leaving (MLP). `fn(n_in, keep, out)` works on floats and tensors."""

    fn: Callable
    unit: str  # e.g. "GMACs"

    def __call__(self, n_in, keep, out):
        return self.fn(n_in, keep, out)


def flops_cost(vit: nn.Module) -> tuple[BlockCost, float]:
    """GMACs of one block (the matrix products `exporter.methods.flops` counts in the real forward), and of
    everything outside the blocks, counted on the dense model: (block cost, constant). Reductions add the class-attention row (n * D), and merges the
    tail-by-head similarities and the one-hot MatMuls that move tokens and sizes ((keep - out) * out * (2C + 1))."""
    blk = vit.blocks[0]
    C, D, H = vit.embed_dim, blk.attn.qkv.out_features // 3, blk.mlp.fc1.out_features

    def attention(n):
        return n * C * 3 * D + 2 * n * n * D + n * D * C

    def fn(n_in, keep, out):
        reduces = 1.0 if out < n_in else 0.0
        merged = (keep - out) * out * (2 * C + 1)
        return (attention(n_in) + reduces * n_in * D + merged + out * 2 * C * H) / 1e9

    from .flops import count_gmacs

    n = vit.patch_embed.num_patches + 1
    return BlockCost(fn, "GMACs"), count_gmacs(vit, tuple(vit.patch_embed.img_size)) - len(vit.blocks) * fn(n, n, n)


@dataclass
class Counts:
    """The integer schedule a forward used, and its cost as a differentiable tensor."""

    prune_kept: list[int]
    merge_kept: list[int]
    cost: torch.Tensor


class SearchViT(nn.Module):
    """A frozen timm ViT with a `Rate` pair per block (block 0 never reduces, as in the authors' code): the
    masked forward of the module docstring. `forward(images)` -> (logits, Counts)."""

    def __init__(self, vit: nn.Module, cost: BlockCost, constant: float, granularity: int):
        super().__init__()
        check_vit(vit)
        self.vit = vit.eval().requires_grad_(False)
        patches = vit.patch_embed.num_patches
        self.tokens = patches + 1
        depth = len(vit.blocks)
        self.prune = nn.ModuleList(Rate(patches, granularity) for _ in range(depth - 1))
        self.merge = nn.ModuleList(Rate(patches, granularity) for _ in range(depth - 1))
        self.cost = cost
        self.constant = constant

    def rate_parameters(self) -> list[nn.Parameter]:
        return [p for r in (*self.prune, *self.merge) for p in r.parameters()]

    def schedule(self) -> tuple[list[int], list[int]]:
        """The counts the rates currently give (class token included; block 0 keeps every token)."""
        with torch.no_grad():
            prune = [self.tokens] + [int(r.tokens()) for r in self.prune]
            merge = [self.tokens] + [int(r.tokens()) for r in self.merge]
        return prune, merge

    def cost_of(self, prune: Sequence[int], merge: Sequence[int]) -> float:
        """The cost of integer counts (one per block, class token included), as the real forward reduces."""
        _, leaving = plan(self.tokens, prune, merge)
        total, n = self.constant + self.cost(self.tokens, self.tokens, self.tokens), self.tokens
        for p, out in zip(prune[1:], leaving[1:]):
            total += self.cost(n, min(n, p), out)
            n = out
        return float(total)

    def start_uniform(self, target: float) -> None:
        """Every rate's distribution centred (maximum entropy, `Rate.start_at`) on the uniform schedule of cost
        `target` (`uniform`): the search starts from a schedule that meets the budget and removes tokens in every
        block, instead of one that removes half of them in block 1 (the authors' zero logits)."""
        prune, merge = uniform(self.tokens, len(self.vit.blocks), self.cost_of, target)
        for rate, count in zip((*self.prune, *self.merge), (*prune[1:], *merge[1:])):
            rate.start_at(count)

    def expected_cost(self) -> torch.Tensor:
        """The cost of the current counts, differentiable in the rates (the authors' FLOPs recursion: tokens
        leaving a block are min(entering, prune, merge), the min's gradient going to both counts)."""
        n = torch.tensor(float(self.tokens))
        total = self.cost(n, n, n) + self.constant
        for prune, merge in zip(self.prune, self.merge):
            p, m = prune.tokens(), merge.tokens()
            keep = _ste_min(n, p)
            out = _ste_min(keep, m) + (p - p.detach())
            total = total + self.cost(n, keep, out)
            n = out
        return total

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, Counts]:
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        B, N, _ = x.shape
        size = torch.ones(B, N, device=x.device)
        mask = torch.ones(B, N, device=x.device)
        n = N
        prune_kept, merge_kept = [N], [N]
        for i, block in enumerate(vit.blocks):
            out, cls_row = masked_attention(block.attn, block.norm1(x), log_size(size), mask)
            x = x + attn_residual(block, out)
            if i > 0:
                rates = self.prune[i - 1], self.merge[i - 1]
                counts = [int(r.tokens().detach()) for r in rates]
                prune_kept.append(counts[0])
                merge_kept.append(counts[1])
                x, size, mask, n = _reduce(x, size, mask, n, cls_row, rates, *counts)
            x = x + mlp_residual(block, x)
        x = vit.norm(x)
        logits = vit.head(vit.head_drop(vit.fc_norm(_pool(vit, x, size, n))))
        return logits, Counts(prune_kept, merge_kept, self.expected_cost())


def _pool(vit: nn.Module, x: torch.Tensor, size: torch.Tensor, n: int) -> torch.Tensor:
    """`ReducedViT.pool` over the n kept tokens (the rest are masked)."""
    if vit.global_pool == "token":
        return x[:, 0]
    w = size[:, 1:n, None].to(x.dtype)
    return (x[:, 1:n] * w).sum(dim=1) / w.sum(dim=1)


def _ste_min(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min(a, b) whose gradient goes to `b` (the count of this reduction), as the authors' STE_Min."""
    low = torch.minimum(a, b).detach()
    return low + (b - b.detach())


def masked_attention(attn: nn.Module, x: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor):
    """timm Attention with a per-key bias (log size) and a key mask [B, N] that multiplies the exponentials
    (the authors' softmax_with_policy without its epsilon: the class token is never masked, so no row is empty).
    Returns (output, the class token's fp32 attention row [B, heads, N]). Masked keys get exactly zero weight,
    so the kept tokens compute what they would compute with the masked ones gone."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1) + bias[:, None, None, :]
    weights = (logits - logits.amax(-1, keepdim=True).detach()).exp() * mask[:, None, None, :]
    weights = weights / weights.sum(-1, keepdim=True)
    out = attn.norm((weights @ v).transpose(1, 2).reshape(B, N, attn.attn_dim))
    if attn.gate is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out)), weights[:, :, 0].float()


def _reduce(x, size, mask, n: int, cls_row, rates: Sequence[Rate], prune: int, merge: int):
    """One block's reduction on the full sequence: the n kept tokens are the prefix; they are ranked by class
    attention (the prefix's patches only, as the real forward ranks them), reordered best first, and the
    DiffRate reduction computes the new prefix; removed tokens stay behind it, masked."""
    (steps, schedule) = plan(n, [prune], [merge])
    step = steps[0]
    if step is None:
        return x, size, mask, n
    keep, out = step.keep, schedule[0]
    score = cls_row[:, :, 1:n].mean(dim=1)
    ranked = torch.sort(score, dim=-1, descending=True, stable=True).indices + 1
    if step.merge is not None:
        choice = choose_diffrate_reduce(x[:, :n], score, keep, out)
        head, head_size, idx, _ = apply_diffrate_reduce(x[:, :n], size[:, :n], choice)
    else:
        idx = top_indices(score, keep - 1) + 1  # what choose_topk_prune keeps, ties to the lower position
    rest = _rest(ranked, idx)  # the prefix's patches not kept, best first
    order = torch.cat([torch.zeros_like(idx[:, :1]), idx, rest], dim=1)  # the prefix, kept tokens first
    sorted_x, sorted_size = gather_tokens(x[:, :n], order), torch.gather(size[:, :n], 1, order)
    if step.merge is not None:
        sorted_x = torch.cat([head, sorted_x[:, out:]], dim=1)
        sorted_size = torch.cat([head_size, sorted_size[:, out:]], dim=1)
    x = torch.cat([sorted_x, x[:, n:]], dim=1)
    size = torch.cat([sorted_size, size[:, n:]], dim=1)
    mask = torch.cat([torch.gather(mask[:, :n], 1, order), mask[:, n:]], dim=1)
    length = x.shape[1]
    if keep < n:
        mask = mask * rates[0].mask(keep, n, length)
    if out < keep:
        mask = mask * rates[1].mask(out, keep, length)
    return x, size, mask, out


def _rest(ranked: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The positions of `ranked` (best first) that are not in `idx`, in ranked order."""
    taken = (ranked[:, :, None] == idx[:, None, :]).any(-1)
    order = torch.sort(taken.to(torch.int8), dim=-1, stable=True).indices[:, : ranked.shape[1] - idx.shape[1]]
    return torch.gather(ranked, 1, order)


def distillation(logits: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy of the reduced model's logits against the dense model's probabilities."""
    return -(dense.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()


def penalty_loss(cost: torch.Tensor, target: float, weight: float) -> torch.Tensor:
    return weight * (cost / target - 1) ** 2


def cosine_lr(step: int, steps: int, lr: float, min_lr: float) -> float:
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(step, steps) / max(steps, 1)))


@dataclass(frozen=True)
class Settings:
    """What a search depends on besides the model and the images (recorded in the schedule file)."""

    target: float  # in the cost's unit
    unit: str  # the cost's, e.g. "GMACs"
    epochs: int = 6
    batch: int = 16
    lr: float = 0.1  # the authors' --arch-lr is 0.01, for 3,750 steps (docs/search.md)
    min_lr: float = 0.01  # theirs 0.001
    penalty: float = 50.0  # weight of (cost / target - 1)^2
    granularity: int = 1  # candidate counts step (the authors used 4 on ImageNet's 196 patches)
    seed: int = 0
    start: str = "uniform"  # the rates' start: "uniform" (`SearchViT.start_uniform`) or "zero" (the authors' logits)


@dataclass
class Progress:
    """One step's numbers, for the progress bar."""

    step: int
    steps: int
    loss: float
    cost: float
    top1: float  # running top-1 (against the labels) of the reduced model this epoch


def search(model: SearchViT, images: torch.Tensor, labels: torch.Tensor, settings: Settings,
           checkpoint: Optional[Path] = None, report: Callable[[Progress], None] = lambda p: None
           ) -> tuple[list[int], list[int], float]:
    """Train `model`'s rates on `images` (preprocessed [M, 3, H, W]) for `settings.epochs`: distillation against
    the dense model plus the cost penalty. With `checkpoint`, the rates and optimizer are saved there after every
    epoch, and a search with the same settings resumes from it. The batches of epoch e come from a generator
    seeded with (seed, e), so a resumed search is the same as an uninterrupted one. Returns (prune_kept,
    merge_kept, cost of those counts)."""
    params = model.rate_parameters()
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        start = _resume(model, optimizer, checkpoint, settings)
    elif settings.start == "uniform":
        model.start_uniform(settings.target)
    with torch.no_grad():
        dense = torch.cat([model.vit(chunk) for chunk in images.split(256)])
    per_epoch = -(-len(images) // settings.batch)
    steps = settings.epochs * per_epoch
    for epoch in range(start, settings.epochs):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(settings.seed * 100003 + epoch))
        correct = seen = 0
        for i in range(per_epoch):
            step = epoch * per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, steps, settings.lr, settings.min_lr)
            rows = order[i * settings.batch:(i + 1) * settings.batch]
            logits, counts = model(images[rows])
            loss = distillation(logits, dense[rows]) + penalty_loss(counts.cost, settings.target, settings.penalty)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(-1) == labels[rows]).sum())
            seen += len(rows)
            report(Progress(step + 1, steps, loss.item(), counts.cost.item(), correct / seen))
        if checkpoint is not None:
            _save(model, optimizer, checkpoint, settings, epoch + 1)
    prune, merge = model.schedule()
    with torch.no_grad():
        cost = float(model.expected_cost())
    return prune, merge, cost


def rate_state(model: SearchViT) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("vit.")}


def _save(model: SearchViT, optimizer, path: Path, settings: Settings, epochs: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"rates": rate_state(model), "optimizer": optimizer.state_dict(), "epochs": epochs,
                "settings": asdict(settings)}, tmp)
    tmp.replace(path)


def _resume(model: SearchViT, optimizer, path: Path, settings: Settings) -> int:
    """Load a checkpoint of the same search; the epochs it has done."""
    from ..errors import ExporterError

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        recorded = saved["settings"]
    except Exception as e:
        raise ExporterError(f"--checkpoint {path} is not a search checkpoint ({type(e).__name__}).",
                            "Pass another --checkpoint path (it is written after every epoch), or delete that file.") from None
    mine = {k: v for k, v in asdict(settings).items() if k != "epochs"}
    theirs = {k: v for k, v in recorded.items() if k != "epochs"}
    if mine != theirs or saved["rates"].keys() != rate_state(model).keys():
        changed = sorted(k for k in mine if mine[k] != theirs.get(k)) or ["the model"]
        raise ExporterError(f"--checkpoint {path} belongs to another search (it differs in {', '.join(changed)}).",
                            "Resume with the same settings, or pass another --checkpoint path.")
    model.load_state_dict(saved["rates"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    return min(int(saved["epochs"]), settings.epochs)


def uniform(tokens: int, depth: int, cost: Callable[[list[int], list[int]], float], target: float
            ) -> tuple[list[int], list[int]]:
    """The schedule that removes the same number of tokens in every block after the first, half by pruning and
    half by merging, whose cost is closest to `target` (`cost(prune_kept, merge_kept)`)."""
    def schedule(r: float):
        prune, merge, n = [tokens], [tokens], tokens
        for block in range(1, depth):
            out = max(2, round(tokens - r * block))
            prune.append(max(out, n - math.ceil((n - out) / 2)))
            merge.append(out)
            n = min(n, out)
        return prune, merge

    low, high = 0.0, tokens / max(depth - 1, 1)
    for _ in range(50):  # cost falls as r grows
        mid = (low + high) / 2
        low, high = (mid, high) if cost(*schedule(mid)) > target else (low, mid)
    candidates = [schedule(low), schedule(high)]
    return min(candidates, key=lambda s: abs(cost(*s) - target))
