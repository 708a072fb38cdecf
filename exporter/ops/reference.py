# SPDX-License-Identifier: Apache-2.0
"""The token operations' reference maths: what every lowering and kernel is held to.

Each op that reduces tokens is a decision and a movement, like ToMe's own `bipartite_soft_matching`, which
returns `merge` and `unmerge` closures: `choose_<op>(scores or metric, counts) -> choice` reads only what the
decision is made from (fp32) and returns a small typed record of it (`Kept`, `Matching`, `Reduction`: the
indices, destinations and weights, and the fp32 scores they were chosen from); `apply_<op>(x, ..., choice)`
moves the tokens. `<op>(...)` is both in one, with the custom op's signature: what a plugin node or fused
kernel computes (`torch.ops.exporter.<op>` runs it on the CPU). `evovit_restore` decides nothing.

Keeping the halves apart is what verification needs without the ops knowing about it. Replaying another run's
choice (a near-tie that went the other way in a graph) passes that run's indices to `choose_<op>` as
`recorded`: the choice is built from them instead of ranked, and everything downstream is computed as that
run did. Measuring how far a choice was from tipping (`checks.margins`) reads `choice.decisions()`: per
choice, (what, scores [B, R, C] fp32, chosen [B, R, k]: the indices into C taken in each of the R rows). The
graphs trace the same functions; the scores of decisions nobody reads are not computed.

Every function is written in export-friendly standard ops (TopK with a constant K, flat Gathers, one-hot
MatMuls), so the `decompose` lowering is these functions traced as they are.

Shapes: B images, N tokens (class token first), C channels. Scores, similarities and sizes are fp32
whatever the token dtype, so fp16 changes which tokens are kept only through the rounding of the
hidden states they are computed from. Indices are int64.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

import torch

Decision = tuple[str, torch.Tensor, torch.Tensor]  # (what, scores [B, R, C] fp32, chosen [B, R, k])


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[b, idx[b, j]] for x [B, N, C] (or [B, N]) and idx [B, K].

    Rows are fetched whole, by one Gather on the [B * N, C] view with flat indices b * N + idx: a
    GatherElements would need the indices expanded to [B, K, C] first (an int64 copy bigger than
    the tokens it gathers), and onnxruntime's GatherND over (batch, token) pairs takes nearly
    twice as long as this Gather for a DeiT-S layer at batch 8.
    """
    if x.dim() == 2:
        return torch.gather(x, 1, idx)
    flat = (idx + x.shape[1] * torch.arange(x.shape[0], device=x.device)[:, None]).flatten()
    return x.flatten(0, 1).index_select(0, flat).unflatten(0, idx.shape)


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores per row, best first: TopK with a constant K, sorted=1."""
    return torch.topk(scores, int(k), dim=-1, largest=True, sorted=True).indices


def scatter_matrix(idx: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, S] indices -> [B, n, S] with M[b, j, s] = 1 where idx[b, s] == j (Equal + Cast), so
    scatter-adds become MatMuls (exact, supported by every TensorRT version, unlike ScatterElements
    with a reduction). Built in this orientation so no transpose is materialised."""
    return (torch.arange(n, device=idx.device)[:, None] == idx[:, None, :]).to(dtype)


def scatter_add_tokens(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dst[b, idx[b, s]] += src[b, s] for dst [B, M, C], idx [B, S], src [B, S, C], as a MatMul."""
    return dst + scatter_matrix(idx, dst.shape[1], src.dtype) @ src


# ---- EViT (and DiffRate's prune-only blocks) and Evo-ViT's selection -----------------------------------

@dataclass(frozen=True)
class Kept:
    """The `k` best-scored positions: EViT's kept patches, Evo-ViT's informative tokens, DiffRate's prune-only
    blocks. The scores also weight what the dropped tokens become (EViT's fused token, Evo-ViT's rep), so the
    movement needs nothing else."""

    idx: torch.Tensor  # [B, k] positions in `scores`, best first
    scores: torch.Tensor  # [B, P] fp32, what was ranked
    what: str = "kept tokens"  # the choice, as verification reports it

    def decisions(self) -> list[Decision]:
        return [(self.what, self.scores[:, None], self.idx[:, None])]


def choose_topk_prune(score: torch.Tensor, k: int, recorded: Optional[torch.Tensor] = None) -> Kept:
    """The `k` patches of highest `score` [B, N-1] fp32 (class attention over the patches, mean over heads),
    best first; ties go to the lower position. `recorded`: the patches another run kept, used as they are."""
    return Kept(top_indices(score, k) if recorded is None else recorded, score)


def apply_topk_prune(x: torch.Tensor, choice: Kept, fuse: bool):
    """Keep the class token and the chosen patches (best first); with `fuse`, append the dropped patches' sum
    weighted by their score.

    x [B, N, C]. Returns (tokens [B, 1 + k + fuse, C], idx [B, k] patch positions, best first).
    """
    patches, idx, score = x[:, 1:], choice.idx, choice.scores
    tokens = [x[:, :1], gather_tokens(patches, idx)]
    if fuse:
        dropped = 1.0 - scatter_matrix(idx, patches.shape[1], score.dtype).sum(dim=-1)  # [B, N-1]: 1 where dropped
        tokens.append((dropped * score).unsqueeze(1).to(x.dtype) @ patches)
    return torch.cat(tokens, dim=1), idx


def topk_prune(x: torch.Tensor, score: torch.Tensor, k: int, fuse: bool):
    """`choose_topk_prune` then `apply_topk_prune`: (tokens [B, 1 + k + fuse, C], idx [B, k])."""
    return apply_topk_prune(x, choose_topk_prune(score, k), fuse)


def choose_evovit_select(g: torch.Tensor, keep: int, recorded: Optional[torch.Tensor] = None) -> Kept:
    """A stage's informative tokens: the `keep` patches of highest global attention g [B, N-1] fp32, best first
    (`choose_topk_prune`'s ranking)."""
    return dataclasses.replace(choose_topk_prune(g, keep, recorded), what="informative tokens")


def apply_evovit_select(x: torch.Tensor, choice: Kept):
    """A stage's slow path: [class, the informative patches (best first), rep], rep being the placeholders'
    mean weighted by g.

    x [B, N, C]. Returns (tokens [B, keep + 2, C], idx [B, keep]).
    """
    idx, g = choice.idx, choice.scores
    patches = x[:, 1:]
    weights = placeholders(idx, g.shape[1], g.dtype) * g
    # clamp: all-zero placeholder attention (fp32 underflow) gives rep = 0 instead of NaN
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    rep = weights.unsqueeze(1).to(x.dtype) @ patches
    return torch.cat([x[:, :1], gather_tokens(patches, idx), rep], dim=1), idx


def evovit_select(x: torch.Tensor, g: torch.Tensor, keep: int):
    """`choose_evovit_select` then `apply_evovit_select`: (tokens [B, keep + 2, C], idx [B, keep])."""
    return apply_evovit_select(x, choose_evovit_select(g, keep))


def evovit_restore(x: torch.Tensor, tokens: torch.Tensor, moved: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """A stage's end: every token back in its place. The informative ones (`tokens`, as `evovit_select`
    laid them out and the blocks updated them) replace theirs; placeholders move by `moved`, the
    representative token's summed increments. Pure movement: the stage's choice is `idx`.

    x [B, N, C] (the stage's input); tokens [B, K + 2, C]; moved [B, 1, C]; idx [B, K]. Returns [B, N, C].
    """
    patches = x[:, 1:]
    waiting = placeholders(idx, patches.shape[1], x.dtype).unsqueeze(-1)
    patches = scatter_add_tokens(waiting * (patches + moved), idx, tokens[:, 1:-1])
    return torch.cat([tokens[:, :1], patches], dim=1)


def placeholders(idx: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, n]: 1 for the tokens not in `idx` (the placeholders), 0 for the chosen ones."""
    return 1.0 - scatter_matrix(idx, n, dtype).sum(dim=-1)


# ---- ToMe ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Matching:
    """ToMe's bipartite matching: which A tokens (even positions, class token first) merge into which B tokens
    (odd positions). What the merges weigh by, the token sizes, belongs to the movement."""

    src: torch.Tensor  # [B, r] merged A positions (A position i is token 2i), best match first
    dst: torch.Tensor  # [B, r] their B partners (B position j is token 2j + 1)
    unmerged: torch.Tensor  # [B, A - r] the other A positions, ascending (class token first)
    best: torch.Tensor  # [B, A] fp32 each A token's best cosine similarity (the class token's -inf): ranks merges
    dots: torch.Tensor  # [B, A, B'] fp32 a · b / |b|: a row's largest is the A token's partner
    metric: torch.Tensor  # [B, N, Cm] fp32 what was matched (|a| makes `dots` cosine similarities)

    def decisions(self) -> list[Decision]:
        """Which A tokens merge, then each one's partner (its row of similarities)."""
        rows = gather_tokens(self.dots / self.metric[:, ::2].norm(dim=-1, keepdim=True), self.src)
        return [("merged tokens", self.best[:, None], self.src[:, None]), ("merge partners", rows, self.dst[..., None])]


def choose_tome_merge(metric: torch.Tensor, r: int,
                      recorded: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> Matching:
    """Bipartite soft matching on `metric` [B, N, Cm] (keys, mean over heads): every A token but the class token
    finds its most cosine-similar B token, and the r best-matched A tokens merge. `recorded`: (src, dst)
    another run merged, used as they are (the A tokens they leave follow from src).
    """
    metric = metric.float()
    a, b = metric[:, ::2], metric[:, 1::2]  # A position i is token 2i; the class token is A's first
    # cosine similarity: b normalised before the MatMul, a after the max (one division per row)
    dots = a @ (b / b.norm(dim=-1, keepdim=True)).transpose(1, 2)
    best, partner = dots.max(dim=-1)
    best = (best / a.norm(dim=-1)).masked_fill(torch.arange(a.shape[1], device=metric.device) == 0, -torch.inf)
    if recorded is None:
        src, unmerged = _tome_split(best, r)
        dst = gather_tokens(partner, src)
    else:
        src, dst = recorded
        unmerged = _tome_rest(src, a.shape[1])
    return Matching(src, dst, unmerged, best, dots, metric)


def apply_tome_merge(x: torch.Tensor, size: Optional[torch.Tensor], choice: Matching):
    """The size-weighted average of the matched tokens, laid out as the authors do: unmerged A tokens
    ascending, then every B token.

    x [B, N, C]; size [B, N] fp32 patches per token (None: all 1). Returns (tokens [B, N - r, C],
    size [B, N - r] fp32, src [B, r], dst [B, r]).

    Works on token positions of x rather than on split copies of it. Every merged A token computes its
    partner's merged value x_p + sum_i s_i (x_i - x_p) / s'_p over the sources i of that partner
    (s'_p = s_p + sum_i s_i, the authors' weighted average rewritten), the sum being an [r, r] MatMul
    over sources that share a partner. The r merged rows are appended to x and one gather lays out the
    output: unmerged A tokens, then every B token, a partner read from an appended row.
    """
    n = x.shape[1]
    src, dst = choice.src, choice.dst
    if size is None:  # all 1: [B, N] fp32, shaped after the metric (any [B, N] would do; the graphs read this one)
        size = torch.ones_like(choice.metric[..., 0])
    same = (dst[:, :, None] == dst[:, None, :]).float()  # [B, r, r]: sources sharing a partner
    src_pos, dst_pos = 2 * src, 2 * dst + 1  # positions in x
    src_size = gather_tokens(size, src_pos)
    merged_size = gather_tokens(size, dst_pos) + (same @ src_size[..., None])[..., 0]  # s'_p, per source
    x_src, x_dst = gather_tokens(x, src_pos).float(), gather_tokens(x, dst_pos).float()
    merged = x_dst + same @ ((src_size / merged_size)[..., None] * (x_src - x_dst))  # [B, r, C]
    # B token j reads x's row 2j + 1, or, if it is a partner, the appended row of a source merged into it
    partnered, source = scatter_matrix(dst, n // 2, torch.float32).max(dim=-1)  # [B, B tokens]
    odd = torch.arange(1, n, 2, device=x.device)
    layout = torch.cat([2 * choice.unmerged, torch.where(partnered > 0, n + source, odd)], dim=1)  # the n - r output tokens
    x = torch.cat([x, merged.to(x.dtype)], dim=1)
    return gather_tokens(x, layout), gather_tokens(torch.cat([size, merged_size], dim=1), layout), src, dst


def tome_merge(x: torch.Tensor, size: Optional[torch.Tensor], metric: torch.Tensor, r: int):
    """`choose_tome_merge` then `apply_tome_merge` (ToMe, r tokens merged): (tokens [B, N - r, C],
    size [B, N - r] fp32, src [B, r] merged A positions best first, dst [B, r] their B partners)."""
    return apply_tome_merge(x, size, choose_tome_merge(metric, r))


def _tome_split(best: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A positions from every A token's best match (the class token's is -inf): the r merged ones,
    best first, and the unmerged ones, ascending (class token first). One TopK ranks all; a second
    sorts the rest by position (its values, smallest first)."""
    ranked = top_indices(best, best.shape[1])
    src, rest = ranked[:, :r], ranked[:, r:]
    unmerged = torch.topk(rest.float(), rest.shape[1], dim=-1, largest=False, sorted=True).values.long()
    return src, unmerged


def _tome_rest(src: torch.Tensor, count: int) -> torch.Tensor:
    """The A positions (of `count`) not in `src`, ascending: a TopK of smallest position + count * merged."""
    merged = scatter_matrix(src, count, torch.float32).sum(dim=-1)
    key = torch.arange(count, device=src.device) + count * merged
    return torch.topk(key, count - src.shape[1], dim=-1, largest=False, sorted=True).indices


# ---- DiffRate --------------------------------------------------------------------------------------

_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class Reduction:
    """DiffRate's choice: the tokens kept by class attention, then, among them, where each tail token (beyond
    the first `merge`) goes: its most cosine-similar head token but the class token, by the tokens themselves.
    `similarity` is the weight the movement scales the tail token's size by."""

    idx: torch.Tensor  # [B, keep - 1] kept positions (patch position + 1), best first
    dst: torch.Tensor  # [B, keep - merge] the head position each tail token goes to
    similarity: torch.Tensor  # [B, keep - merge] fp32 cosine similarity of each tail token and its destination
    score: torch.Tensor  # [B, N - 1] fp32 class attention over the patches: ranks the kept tokens
    head: torch.Tensor  # [B, merge, C] fp32 the first `merge` kept tokens, class token first
    tail: torch.Tensor  # [B, keep - merge, C] fp32 the rest
    dots: torch.Tensor  # [B, keep - merge, merge - 1] fp32 t · h / |h| over the head but the class token

    def decisions(self) -> list[Decision]:
        """The kept patches, then the best merge - 1 of them (the head: merge destinations), then each tail
        token's destination (a row of cosine similarities to the head's)."""
        merge = self.head.shape[1]
        return [
            ("kept tokens", self.score[:, None], (self.idx - 1)[:, None]),
            ("merge destinations", self.score[:, None], (self.idx[:, : merge - 1] - 1)[:, None]),
            ("merge partners", self.dots / self.tail.norm(dim=-1, keepdim=True), (self.dst - 1)[..., None]),
        ]


def choose_diffrate_reduce(x: torch.Tensor, score: torch.Tensor, keep: int, merge: int,
                           recorded: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> Reduction:
    """The class token plus the `keep - 1` patches of highest `score` [B, N-1] fp32 (best first), then each
    kept token beyond the first `merge` to its most cosine-similar head token but the class token, on the
    tokens x [B, N, C] themselves (fp32). merge < keep (a block that only prunes is `topk_prune`).
    `recorded`: (idx, dst) another run chose, used as they are (the similarities are theirs, not the best).

    Cosine similarity is the raw dot product scaled by both norms afterwards (same argmax, and only the
    [tail, head] matrix is divided, not every token).
    """
    idx = top_indices(score, keep - 1) + 1 if recorded is None else recorded[0]
    head, tail = _diffrate_split(idx, merge)
    h, t = gather_tokens(x, head).float(), gather_tokens(x, tail).float()
    dots = (t @ h.transpose(1, 2))[:, :, 1:] / h.norm(dim=-1)[:, None, 1:]  # column 0, the class token, left out
    similarity, best = dots.max(dim=-1)
    if recorded is None:
        dst = best + 1
    else:
        dst = recorded[1]
        similarity = dots.gather(-1, (dst - 1).unsqueeze(-1)).squeeze(-1)
    return Reduction(idx, dst, similarity / t.norm(dim=-1), score, h, t, dots)


def apply_diffrate_reduce(x: torch.Tensor, size: Optional[torch.Tensor], choice: Reduction):
    """Prune to the kept tokens and merge each tail token into its destination as the unweighted mean of the
    destination and its sources; the source's size, scaled by its similarity, is added to the destination's.

    x [B, N, C]; size [B, N] fp32 (None: all 1). Returns (tokens [B, merge, C], size [B, merge] fp32,
    idx [B, keep-1] kept positions (patch position + 1) best first, dst [B, keep - merge] head positions the
    tail went to). The kept tokens are gathered straight into head and tail, no copy between.
    """
    merge, idx, dst = choice.head.shape[1], choice.idx, choice.dst
    if size is None:
        size = torch.ones_like(x[..., 0], dtype=torch.float32)
    head, tail = _diffrate_split(idx, merge)
    tokens, head_size, tail_size = gather_tokens(x, head), gather_tokens(size, head), gather_tokens(size, tail)
    into = scatter_matrix(dst, merge, torch.float32)  # [B, head, tail]
    size = head_size + (into @ (tail_size * choice.similarity)[..., None])[..., 0]
    count = 1.0 + into.sum(dim=-1)  # [B, head]: each head token and its sources
    # the mean (x_j + sum_i x_i) / count_j as x_j + sum_i (x_i - x_j) / count_j: only tail-sized ops
    moved = (choice.tail - gather_tokens(choice.head, dst)) / gather_tokens(count, dst)[..., None]
    return tokens + (into @ moved).to(tokens.dtype), size, idx, dst


def diffrate_reduce(x: torch.Tensor, size: Optional[torch.Tensor], score: torch.Tensor, keep: int, merge: int):
    """`choose_diffrate_reduce` then `apply_diffrate_reduce`: (tokens [B, merge, C], size [B, merge] fp32,
    idx [B, keep-1], dst [B, keep - merge])."""
    return apply_diffrate_reduce(x, size, choose_diffrate_reduce(x, score, keep, merge))


def _diffrate_split(idx: torch.Tensor, merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept positions, class token first, as (head: the first `merge`, tail: the rest)."""
    order = torch.cat([torch.zeros_like(idx[:, :1]), idx], dim=1)
    return order[:, :merge], order[:, merge:]


Choice = Union[Kept, Matching, Reduction]


def log_size(size: torch.Tensor) -> torch.Tensor:
    """DiffRate's attention bias log(size), of max(size, smallest normal fp32): a size <= 0 (a negative
    best similarity) gives about -87 instead of -inf/NaN."""
    return size.clamp_min(_TINY).log()


# ---- LITv2 (HiLo's Hi-Fi branch) ---------------------------------------------------------------

def hilo_attention(
    qkv: torch.Tensor,
    pad: torch.Tensor,
    height: int,
    width: int,
    window: int,
    heads: int,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """HiLo's Hi-Fi branch: multi-head attention inside every non-overlapping window x window patch of the
    height x width map, before the output projection (per token, so it is applied after).

    qkv [B, H*W, 3*D]: the Hi-Fi q/k/v projection of the map's tokens (row-major), channels laid out as
    (q/k/v, head, head_dim); pad [3*D]: what a padding token projects to (the projection's bias, or 0),
    since the authors zero-pad the map *before* projecting: maps the window does not tile get bottom/right
    rows and columns of `pad` tokens, which queries attend to, unmasked. scale: head_dim ** -0.5 when None.
    Returns [B, H*W, D], channels (head, head_dim).

    Why this op and these inputs: the Hi-Fi branch is many memory passes (padding, rank-6 transposes, 4x4
    MatMuls for s = 2) for little arithmetic, which one kernel does in one read and one write. Lo-Fi is a
    plain attention on pooled keys that TensorRT fuses itself, and the projections are GEMMs it runs at
    full speed: both stay outside. Taking the projected q/k/v plus `pad` (rather than x and the weights)
    keeps the projection a GEMM and pads exactly (with a bias, a padding token's q/k/v is the bias, not 0)
    without any padded tensor.

    The partition is the reshapes/transposes (rank <= 6) of the authors' code, with the batch its own
    axis so it stays the graph's only symbolic dimension.
    """
    b, _, e = qkv.shape
    d, s = e // 3, window
    head_dim = d // heads
    scale = head_dim ** -0.5 if scale is None else scale
    hg, wg = -(-height // s), -(-width // s)
    grid = qkv.reshape(b, height, width, e)
    if wg * s > width:  # pad tokens' projections, concatenated: exact, unlike a Pad of (qkv - pad) + pad
        grid = torch.cat([grid, pad.expand(b, height, wg * s - width, e)], dim=2)
    if hg * s > height:
        grid = torch.cat([grid, pad.expand(b, hg * s - height, wg * s, e)], dim=1)
    grid = grid.reshape(b, hg, s, wg, s, e).transpose(2, 3)
    grid = grid.reshape(b, hg * wg, s * s, 3, heads, head_dim).permute(3, 0, 1, 4, 2, 5)
    q, k, v = grid[0], grid[1], grid[2]  # [B, windows, heads, s*s, head_dim]
    # written out (not SDPA): the scaled-Q MatMul-Softmax-MatMul pattern TensorRT fuses
    out = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    out = out.transpose(2, 3).reshape(b, hg, wg, s, s, d).transpose(2, 3).reshape(b, hg * s, wg * s, d)
    if hg * s > height or wg * s > width:
        out = out[:, :height, :width]
    return out.reshape(b, height * width, d)
