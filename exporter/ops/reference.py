"""The token operations' reference maths: what every lowering and kernel is held to.

Each function is one reduction step of one block, written in export-friendly standard ops (TopK with a
constant K, flat Gathers, one-hot MatMuls), so the `decompose` lowering is these functions traced as
they are. Chosen token indices are always returned; passing `chosen` (indices another run returned)
makes the step use those instead of choosing, which is how verification replays a near-tie that went
the other way in a graph. Passing `decided` (a callable) hands it every choice the step makes, as
(what, scores [B, R, C] fp32, chosen [B, R, k]: the indices into C taken in each of the R rows), so
verification can tell how far a choice was from tipping (`checks.margins`); the graphs never pass it.

Shapes: B images, N tokens (class token first), C channels. Scores, similarities and sizes are fp32
whatever the token dtype, so fp16 changes which tokens are kept only through the rounding of the
hidden states they are computed from. Indices are int64.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


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


Decided = Optional[Callable[[str, torch.Tensor, torch.Tensor], None]]


def _decide(decided: Decided, what: str, scores: torch.Tensor, chosen: torch.Tensor) -> None:
    """Hand a choice to `decided`, a single row ([B, C] scores, [B, k] indices) as one of R rows."""
    if decided is not None:
        rows = scores.dim() == 3
        decided(what, scores if rows else scores[:, None], chosen if rows else chosen[:, None])


def scatter_matrix(idx: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, S] indices -> [B, n, S] with M[b, j, s] = 1 where idx[b, s] == j (Equal + Cast), so
    scatter-adds become MatMuls (exact, supported by every TensorRT version, unlike ScatterElements
    with a reduction). Built in this orientation so no transpose is materialised."""
    return (torch.arange(n, device=idx.device)[:, None] == idx[:, None, :]).to(dtype)


def scatter_add_tokens(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dst[b, idx[b, s]] += src[b, s] for dst [B, M, C], idx [B, S], src [B, S, C], as a MatMul."""
    return dst + scatter_matrix(idx, dst.shape[1], src.dtype) @ src


# ---- EViT (and DiffRate's prune-only blocks) ------------------------------------------------------------------------------------------

def topk_prune(x: torch.Tensor, score: torch.Tensor, k: int, fuse: bool, chosen: Optional[torch.Tensor] = None,
               decided: Decided = None):
    """Keep the class token and the `k` patch tokens of highest `score` (best first); with `fuse`, append
    the dropped patches' sum weighted by their score.

    x [B, N, C]; score [B, N-1] fp32 (class attention over the patches, mean over heads).
    Returns (tokens [B, 1 + k + fuse, C], idx [B, k] patch positions, best first).
    """
    patches = x[:, 1:]
    idx = top_indices(score, k) if chosen is None else chosen
    _decide(decided, "kept tokens", score, idx)
    tokens = [x[:, :1], gather_tokens(patches, idx)]
    if fuse:
        dropped = 1.0 - scatter_matrix(idx, patches.shape[1], score.dtype).sum(dim=-1)  # [B, N-1]: 1 where dropped
        tokens.append((dropped * score).unsqueeze(1).to(x.dtype) @ patches)
    return torch.cat(tokens, dim=1), idx


# ---- Evo-ViT ---------------------------------------------------------------------------------------

def evovit_select(x: torch.Tensor, g: torch.Tensor, keep: int, chosen: Optional[torch.Tensor] = None,
                  decided: Decided = None):
    """A stage's slow path: [class, the `keep` patches of highest global attention g (best first), rep],
    rep being the placeholders' mean weighted by g.

    x [B, N, C]; g [B, N-1] fp32. Returns (tokens [B, keep + 2, C], idx [B, keep]).
    """
    idx = top_indices(g, keep) if chosen is None else chosen
    _decide(decided, "informative tokens", g, idx)
    patches = x[:, 1:]
    weights = placeholders(idx, g.shape[1], g.dtype) * g
    # clamp: all-zero placeholder attention (fp32 underflow) gives rep = 0 instead of NaN
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    rep = weights.unsqueeze(1).to(x.dtype) @ patches
    return torch.cat([x[:, :1], gather_tokens(patches, idx), rep], dim=1), idx


def evovit_restore(x: torch.Tensor, tokens: torch.Tensor, moved: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """A stage's end: every token back in its place. The informative ones (`tokens`, as `evovit_select`
    laid them out and the blocks updated them) replace theirs; placeholders move by `moved`, the
    representative token's summed increments.

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

def tome_merge(
    x: torch.Tensor,
    size: Optional[torch.Tensor],
    metric: torch.Tensor,
    r: int,
    chosen: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    decided: Decided = None,
):
    """Bipartite soft matching on `metric`, then the size-weighted average of x (ToMe, r tokens merged).

    x [B, N, C]; size [B, N] fp32 patches per token (None: all 1); metric [B, N, Cm] (keys, mean over
    heads). A = even positions (class token first), B = odd; every A token but the class token finds
    its most cosine-similar B token and the r best-matched A tokens merge into their partners.
    Returns (tokens [B, N - r, C], size [B, N - r] fp32, src [B, r] merged A indices best first,
    dst [B, r] their B partners); output order: unmerged A tokens ascending, then every B token.

    Works on token positions of x rather than on split copies of it. Every merged A token computes its
    partner's merged value x_p + sum_i s_i (x_i - x_p) / s'_p over the sources i of that partner
    (s'_p = s_p + sum_i s_i, the authors' weighted average rewritten), the sum being an [r, r] MatMul
    over sources that share a partner. The r merged rows are appended to x and one gather lays out the
    output: unmerged A tokens, then every B token, a partner read from an appended row.
    """
    n = x.shape[1]
    metric = metric.float()
    a, b = metric[:, ::2], metric[:, 1::2]  # A position i is token 2i; the class token is A's first
    # cosine similarity: b normalised before the MatMul, a after the max (one division per row)
    dots = a @ (b / b.norm(dim=-1, keepdim=True)).transpose(1, 2)
    best, partner = dots.max(dim=-1)
    best = (best / a.norm(dim=-1)).masked_fill(torch.arange(a.shape[1], device=x.device) == 0, -torch.inf)
    if chosen is None:
        src, unmerged = _tome_split(best, r)
        dst = gather_tokens(partner, src)
    else:  # merges another run chose: the A tokens they leave
        src, dst = chosen
        unmerged = _tome_rest(src, a.shape[1])
    if decided is not None:  # which A tokens merge, then each one's partner (a row of similarities)
        _decide(decided, "merged tokens", best, src)
        _decide(decided, "merge partners", gather_tokens(dots / a.norm(dim=-1, keepdim=True), src), dst[..., None])
    if size is None:
        size = torch.ones_like(metric[..., 0])
    same = (dst[:, :, None] == dst[:, None, :]).float()  # [B, r, r]: sources sharing a partner
    src_pos, dst_pos = 2 * src, 2 * dst + 1  # positions in x
    src_size = gather_tokens(size, src_pos)
    merged_size = gather_tokens(size, dst_pos) + (same @ src_size[..., None])[..., 0]  # s'_p, per source
    x_src, x_dst = gather_tokens(x, src_pos).float(), gather_tokens(x, dst_pos).float()
    merged = x_dst + same @ ((src_size / merged_size)[..., None] * (x_src - x_dst))  # [B, r, C]
    # B token j reads x's row 2j + 1, or, if it is a partner, the appended row of a source merged into it
    partnered, source = scatter_matrix(dst, b.shape[1], torch.float32).max(dim=-1)  # [B, B tokens]
    odd = torch.arange(1, n, 2, device=x.device)
    layout = torch.cat([2 * unmerged, torch.where(partnered > 0, n + source, odd)], dim=1)  # the n - r output tokens
    x = torch.cat([x, merged.to(x.dtype)], dim=1)
    return gather_tokens(x, layout), gather_tokens(torch.cat([size, merged_size], dim=1), layout), src, dst


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


def diffrate_reduce(
    x: torch.Tensor,
    size: Optional[torch.Tensor],
    score: torch.Tensor,
    keep: int,
    merge: int,
    chosen: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    decided: Decided = None,
):
    """Prune to the class token plus the `keep - 1` patches of highest `score` (best first), then merge
    every kept token beyond the first `merge` into its most cosine-similar head token (never the class
    token) as the unweighted mean of the destination and its sources; the source's size, scaled by that
    similarity, is added to the destination's. merge < keep (a block that only prunes is `topk_prune`).

    x [B, N, C]; size [B, N] fp32 (None: all 1); score [B, N-1] fp32. Returns (tokens [B, merge, C],
    size [B, merge] fp32, idx [B, keep-1] kept positions (patch position + 1) best first, dst [B, keep - merge]
    head positions the tail went to).
    The kept tokens are gathered straight into head and tail, no copy between.
    """
    if chosen is None:
        idx = top_indices(score, keep - 1) + 1
    else:
        idx = chosen[0]
    if decided is not None:  # the kept patches, then the best merge - 1 of them: the head (merge destinations)
        _decide(decided, "kept tokens", score, idx - 1)
        _decide(decided, "merge destinations", score, idx[:, : merge - 1] - 1)
    order = torch.cat([torch.zeros_like(idx[:, :1]), idx], dim=1)
    if size is None:
        size = torch.ones_like(x[..., 0], dtype=torch.float32)
    head, tail = order[:, :merge], order[:, merge:]
    tokens, size, dst = _diffrate_merge(
        gather_tokens(x, head), gather_tokens(x, tail), gather_tokens(size, head), gather_tokens(size, tail),
        None if chosen is None else chosen[1], decided,
    )
    return tokens, size, idx, dst


def _diffrate_merge(head, tail, head_size, tail_size, chosen_dst: Optional[torch.Tensor], decided: Decided = None):
    """Each tail token into its most similar head token but the class token: (dst + sources) / (1 + count).

    Cosine similarity is the raw dot product scaled by both norms afterwards (same argmax, and only the
    [tail, head] matrix is divided, not every token).
    """
    h, t = head.float(), tail.float()
    dots = (t @ h.transpose(1, 2))[:, :, 1:] / h.norm(dim=-1)[:, None, 1:]  # column 0, the class token, left out
    similarity, best = dots.max(dim=-1)
    if chosen_dst is None:
        dst = best + 1
    else:  # partners another run chose: their similarities, not the best ones
        dst = chosen_dst
        similarity = dots.gather(-1, (dst - 1).unsqueeze(-1)).squeeze(-1)
    similarity = similarity / t.norm(dim=-1)
    if decided is not None:  # each tail token's destination: a row of cosine similarities to the head's
        _decide(decided, "merge partners", dots / t.norm(dim=-1, keepdim=True), (dst - 1)[..., None])
    into = scatter_matrix(dst, h.shape[1], torch.float32)  # [B, head, tail]
    size = head_size + (into @ (tail_size * similarity)[..., None])[..., 0]
    count = 1.0 + into.sum(dim=-1)  # [B, head]: each head token and its sources
    # the mean (x_j + sum_i x_i) / count_j as x_j + sum_i (x_i - x_j) / count_j: only tail-sized ops
    moved = (t - gather_tokens(h, dst)) / gather_tokens(count, dst)[..., None]
    return head + (into @ moved).to(head.dtype), size, dst


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
