# SPDX-License-Identifier: Apache-2.0
"""The token operations' Triton kernels: per op a *decision* (which tokens go where) and a *movement*.

Why split: the choice reads only fp32 scores or the metric and is small (ranks, partners, counts), the
movement is nearly all the bytes. A decision runs one program per image (per image and position tile for
the plain selections) and loops over tiles of tokens, so nothing bounds N; it writes the op's index
outputs and a *plan*: every output row as a range of terms (token, fp32 weight) of the input. The one
movement kernel, `combine_kernel`, runs on a grid of (image, row tile, channel tile) and writes each
output row as the fp32 sum of its terms' rows, optionally divided by their weight sum (a size-weighted
mean), rounded once: a copy is one term of weight 1 (exact), a merge the direct adds of the rows that
meet at its destination, never a one-hot product. Rows are contiguous in C, so with C % 16 == 0 and
16-byte aligned pointers (the AOT "aligned" variants, the JIT's own specialisation) fp16 rows move in
128-bit loads and stores.

Plan layout, per image (workspace of `config.plan_ints(N)` int32 and `config.plan_floats(N)` fp32):
ints = [off: N + 1 | tok: N | aux: N + 1], floats = [w: N | aux: N]. Output row o has terms
off[o] .. off[o + 1] - 1; term q reads input row tok[q] with weight w[q]. Every op's terms number at
most N (each input token is in at most one output row). `aux` is the decisions' own scratch.

Ranks come from comparison counts over tiles (rank 0 = highest; ties go to the lower position, so the
choice is deterministic). Similarities of fp32 rows use input_precision="ieee" (never TF32); of fp16 rows,
tensor-core dots of the fp16 values with fp32 accumulation (the products are exact in fp32, as when the
reference casts to fp32; only the summation order differs, as it does between any two fp32 matmuls). A decision's
phases are separated by CTA barriers and read what earlier phases wrote with L2 (.cg) loads. Scores
must be finite (a NaN breaks the comparison ranking).

Every kernel's non-constexpr parameters, in order, are the launch ABI of the AOT launchers
(`config.KERNELS`; exporter/ops/aot.py checks them). This module imports triton: import it only through
`exporter.ops.kernels`.
"""
import triton
import triton.language as tl

TINY = tl.constexpr(1.1754943508222875e-38)  # smallest normal fp32: the reference's clamp of Evo-ViT's weight sum


@triton.jit
def _plan(plan_i, plan_f, N):
    """(off, tok, aux ints, w, aux floats) of image program_id(0)'s plan (see the module docstring)."""
    b = tl.program_id(0).to(tl.int64)
    off = plan_i + b * (3 * N + 2)
    w = plan_f + b * (2 * N)
    return off, off + N + 1, off + 2 * N + 1, w, w + N


@triton.jit
def _rank(s_row, i, n, BLOCK_J: tl.constexpr):
    """Ranks of the scores at positions i among s_row[:n] (0 = highest; ties: lower position first),
    counted BLOCK_J positions at a time. Positions past n load -inf and never count."""
    s_i = tl.load(s_row + i, mask=i < n, other=float("-inf"), cache_modifier=".cg")
    rank = tl.zeros(i.shape, dtype=tl.int32)
    for j0 in range(0, n, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        s_j = tl.load(s_row + j, mask=j < n, other=float("-inf"), cache_modifier=".cg")
        ahead = (s_j[None, :] > s_i[:, None]) | ((s_j[None, :] == s_i[:, None]) & (j[None, :] < i[:, None]))
        rank += tl.sum(ahead.to(tl.int32), axis=1)
    return rank


@triton.jit
def _before(key, i, key_row, upto, BLOCK_J: tl.constexpr):
    """For each position i, how many positions j < i (of key_row[:upto]) hold the same key (keys < 0
    never match): a source's place among those sharing its destination."""
    same = tl.zeros(i.shape, dtype=tl.int32)
    for j0 in range(0, upto, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        k_j = tl.load(key_row + j, mask=j < upto, other=-1, cache_modifier=".cg")
        hit = (k_j[None, :] == key[:, None]) & (k_j >= 0)[None, :] & (j[None, :] < i[:, None])
        same += tl.sum(hit.to(tl.int32), axis=1)
    return same


@triton.jit
def _term(x_img, tok, w, start, count, q, c, cm, C):
    """Term q of each output row (weight, input row in fp32); weight and row 0 past the row's terms."""
    live = q < count
    t = tl.load(tok + start + q, mask=live, other=0)
    wt = tl.load(w + start + q, mask=live, other=0.0)
    rows = tl.load(x_img + (t[:, None] * C + c[None, :]), mask=live[:, None] & cm[None, :], other=0.0)
    return wt, rows.to(tl.float32)


@triton.jit
def combine_kernel(x, plan_i, plan_f, out, N, C, M, norm, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Movement, grid (B, row tiles, C tiles): out[b, o] = sum_q w[q] x[b, tok[q]] over row o's terms,
    times 1 / max(sum_q w[q], TINY) when `norm`; fp32 accumulation in term order, rounded once.
    Two terms a step: both rows' loads are in flight together, which halves the serial latency of a long
    row (EViT's and Evo-ViT's fused token sums every dropped patch)."""
    b = tl.program_id(0).to(tl.int64)
    o = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    om = o < M
    cm = c < C
    off, tok, _, w, _ = _plan(plan_i, plan_f, N)
    start = tl.load(off + o, mask=om, other=0)
    count = tl.load(off + o + 1, mask=om, other=0) - start
    x_img = x + b * N * C
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    total = tl.zeros([BLOCK_R], dtype=tl.float32)
    for q in range(0, tl.max(count, axis=0), 2):
        w0, r0 = _term(x_img, tok, w, start, count, q, c, cm, C)
        w1, r1 = _term(x_img, tok, w, start, count, q + 1, c, cm, C)
        acc += w0[:, None] * r0
        acc += w1[:, None] * r1
        total += w0
        total += w1
    if norm != 0:
        acc = acc * (1.0 / tl.maximum(total, TINY))[:, None]  # a reciprocal per row, not a division per element
    tl.store(out + b * M * C + (o[:, None] * C + c[None, :]), acc.to(out.dtype.element_ty), mask=om[:, None] & cm[None, :])


@triton.jit
def select_decide_kernel(score, idx, plan_i, plan_f, N, k, extra, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """EViT / Evo-ViT decision, grid (B, position tiles covering N + 1): idx[b] = the k best patches,
    best first; plan rows = [class, the k kept patches, (extra) the dropped ones weighted by score].

    Term 0 is the class token, term 1 + rank(i) patch i (weight 1 if kept, else its score), so the
    dropped patches are the terms of the extra row in rank order."""
    b = tl.program_id(0).to(tl.int64)
    n = N - 1
    off, tok, _, w, _ = _plan(plan_i, plan_f, N)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    tl.store(off + i, tl.where(i <= k + 1, i, N), mask=i <= k + 1 + extra)
    tl.store(tok + i, i, mask=i == 0)
    tl.store(w + i, tl.full([BLOCK_I], 1.0, tl.float32), mask=i == 0)
    s_row = score + b * n
    rank = _rank(s_row, i, n, BLOCK_J)
    im = i < n
    tl.store(idx + b * k + rank, i.to(tl.int64), mask=im & (rank < k))
    s = tl.load(s_row + i, mask=im, other=0.0)
    tl.store(tok + 1 + rank, 1 + i, mask=im)
    tl.store(w + 1 + rank, tl.where(rank < k, 1.0, s), mask=im)


@triton.jit
def restore_decide_kernel(idx, plan_i, plan_f, N, K, BLOCK_I: tl.constexpr):
    """Evo-ViT stage end, decision (grid B): aux[j] = the slot of patch j in idx, or -1 (a placeholder)."""
    b = tl.program_id(0).to(tl.int64)
    _, _, slot, _, _ = _plan(plan_i, plan_f, N)
    for j0 in range(0, N - 1, BLOCK_I):
        j = j0 + tl.arange(0, BLOCK_I)
        tl.store(slot + j, tl.full([BLOCK_I], -1, tl.int32), mask=j < N - 1)
    tl.debug_barrier()
    for s0 in range(0, K, BLOCK_I):
        s = s0 + tl.arange(0, BLOCK_I)
        j = tl.load(idx + b * K + s, mask=s < K, other=0).to(tl.int32)
        tl.store(slot + j, s, mask=s < K)


@triton.jit
def restore_move_kernel(x, tokens, moved, plan_i, plan_f, out, N, C, K, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Evo-ViT stage end, movement (grid B, row tiles, C tiles): a chosen patch takes its updated token, a
    placeholder x + moved (added in fp32 and rounded once, as torch adds halves: bit-exact)."""
    b = tl.program_id(0).to(tl.int64)
    o = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    om = o < N
    cm = c < C
    _, _, slot_row, _, _ = _plan(plan_i, plan_f, N)
    slot = tl.load(slot_row + o - 1, mask=om & (o > 0), other=-1)
    src = tl.where(o == 0, 0, 1 + slot)  # row of `tokens`, or 0 past the class token: a placeholder
    m = om[:, None] & cm[None, :]
    taken = m & ((o == 0) | (slot >= 0))[:, None]
    waits = m & ~taken
    dst = out + b * N * C + o[:, None] * C + c[None, :]
    tv = tl.load(tokens + b * (K + 2) * C + src[:, None] * C + c[None, :], mask=taken)
    tl.store(dst, tv, mask=taken)
    xv = tl.load(x + b * N * C + o[:, None] * C + c[None, :], mask=waits, other=0.0)
    # `moved` loaded per placeholder row (cached): in the tile's own layout, so the sum needs no conversion
    mv = tl.load(moved + b * C + (0 * o[:, None] + c[None, :]), mask=waits, other=0.0)
    tl.store(dst, (xv.to(tl.float32) + mv.to(tl.float32)).to(out.dtype.element_ty), mask=waits)


@triton.jit
def _sq_norms(rows_ptr, tok, live, C, BLOCK_K: tl.constexpr):
    """[len(tok)]: squared norms of rows tok (fp32) of a [*, C] matrix, BLOCK_K channels at a time, summed
    across the channels once at the end (not a cross-thread reduction per step)."""
    acc = tl.zeros([tok.shape[0], BLOCK_K], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        c = c0 + tl.arange(0, BLOCK_K)
        v = tl.load(rows_ptr + tok[:, None] * C + c[None, :], mask=live[:, None] & (c < C)[None, :], other=0.0)
        v = v.to(tl.float32)
        acc += v * v
    return tl.sum(acc, axis=1)


@triton.jit
def _dots(rows_ptr, tok_i, tok_j, C, BLOCK_K: tl.constexpr):
    """[len(tok_i), len(tok_j)] fp32 dot products of rows of a [*, C] matrix. fp16 rows: tensor-core dots of
    the fp16 values with fp32 accumulation (each product exact in fp32, as in the fp32 maths); fp32 rows:
    IEEE fp32 (never TF32). Every index must be a row of the matrix: callers point lanes past their tile's
    end at row 0 and discard those products (so only the channels are masked here)."""
    acc = tl.zeros([tok_i.shape[0], tok_j.shape[0]], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        c = c0 + tl.arange(0, BLOCK_K)
        cm = c < C
        vi = tl.load(rows_ptr + tok_i[:, None] * C + c[None, :], mask=cm[None, :], other=0.0)
        vj = tl.load(rows_ptr + tok_j[:, None] * C + c[None, :], mask=cm[None, :], other=0.0)
        if rows_ptr.dtype.element_ty == tl.float16:
            acc = tl.dot(vi, tl.trans(vj), acc)
        else:
            acc += tl.dot(vi.to(tl.float32), tl.trans(vj.to(tl.float32)), input_precision="ieee")
    return acc


@triton.jit
def tome_decide_kernel(size, metric, size_out, src, dst, plan_i, plan_f, N, Cm, r,
                       BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """ToMe bipartite soft matching of one image (grid B): src/dst, merged sizes and the merge plan.

    A = even positions (a -> token 2a), B = odd (b -> 2b + 1). Output rows: the unmerged A tokens
    ascending (one term each), then every B token: itself, then its sources ascending, weighted by
    size (the movement divides by the sizes' sum: ToMe's size-weighted mean).
    aux ints: [partner: na | rank: na]; aux floats: [best: na | B norms' reciprocals: nb]."""
    b = tl.program_id(0).to(tl.int64)
    na = (N + 1) // 2
    nb = N // 2
    kept = na - r
    off, tok, partner_row, w, best_row = _plan(plan_i, plan_f, N)
    rank_row = partner_row + na
    m_row = metric + b * N * Cm
    s_row = size + b * N
    so_row = size_out + b * (N - r)
    b_scale_row = best_row + na
    # 0: 1 / the B norms, once (every A tile reads them; a product per similarity, not a division)
    for j0 in range(0, nb, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        tl.store(b_scale_row + j, 1.0 / tl.sqrt(_sq_norms(m_row, 2 * j + 1, j < nb, Cm, BLOCK_K)), mask=j < nb)
    tl.debug_barrier()
    # 1: every A token's most similar B token (ties: the lower B position), cosine similarity
    for a0 in range(0, na, BLOCK_I):
        ia = a0 + tl.arange(0, BLOCK_I)
        am = ia < na
        best = tl.full([BLOCK_I], float("-inf"), dtype=tl.float32)
        partner = tl.zeros([BLOCK_I], dtype=tl.int32)
        for j0 in range(0, nb, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            jm = j < nb
            dots = _dots(m_row, tl.where(am, 2 * ia, 0), tl.where(jm, 2 * j + 1, 0), Cm, BLOCK_K)
            b_scale = tl.load(b_scale_row + j, mask=jm, other=1.0, cache_modifier=".cg")
            sim = tl.where(jm[None, :], dots * b_scale[None, :], float("-inf"))
            top = tl.max(sim, axis=1)
            better = top > best
            partner = tl.where(better, j0 + tl.argmax(sim, axis=1, tie_break_left=True), partner)
            best = tl.where(better, top, best)
        a_norm = tl.sqrt(_sq_norms(m_row, 2 * ia, am, Cm, BLOCK_K))  # after the loop: not live across it
        best = tl.where(ia == 0, float("-inf"), best / tl.where(am, a_norm, 1.0))  # the class token never merges
        tl.store(best_row + ia, best, mask=am)
        tl.store(partner_row + ia, partner, mask=am)
    tl.debug_barrier()
    # 2: the r best-matched A tokens merge, best first
    for a0 in range(0, na, BLOCK_I):
        ia = a0 + tl.arange(0, BLOCK_I)
        am = ia < na
        rank = _rank(best_row, ia, na, BLOCK_J)
        merged = am & (rank < r)
        tl.store(rank_row + ia, tl.where(merged, rank, -1), mask=am)
        partner = tl.load(partner_row + ia, mask=am, other=0, cache_modifier=".cg")
        tl.store(src + b * r + rank, ia.to(tl.int64), mask=merged)
        tl.store(dst + b * r + rank, partner.to(tl.int64), mask=merged)
        tl.store(partner_row + ia, tl.where(merged, partner, -1), mask=am)  # from here on: -1 = not merged
    tl.debug_barrier()
    # 3: B rows: merged sizes and term ranges (itself, then its sources)
    carry = 0
    for j0 in range(0, nb, BLOCK_I):
        j = j0 + tl.arange(0, BLOCK_I)
        jm = j < nb
        count = tl.zeros([BLOCK_I], dtype=tl.int32)
        grow = tl.zeros([BLOCK_I], dtype=tl.float32)
        for a0 in range(0, na, BLOCK_J):
            ia = a0 + tl.arange(0, BLOCK_J)
            am = ia < na
            p = tl.load(partner_row + ia, mask=am, other=-1, cache_modifier=".cg")
            s_a = tl.load(s_row + 2 * ia, mask=am, other=0.0)
            into = p[None, :] == j[:, None]
            count += tl.sum(into.to(tl.int32), axis=1)
            grow += tl.sum(tl.where(into, s_a[None, :], 0.0), axis=1)
        s_b = tl.load(s_row + 2 * j + 1, mask=jm, other=0.0)
        tl.store(so_row + kept + j, s_b + grow, mask=jm)
        first = kept + j + carry + tl.cumsum(count, axis=0) - count
        tl.store(off + kept + j, first, mask=jm)
        tl.store(tok + first, 2 * j + 1, mask=jm)
        tl.store(w + first, s_b, mask=jm)
        carry += tl.sum(count, axis=0)
    tl.store(off + (N - r) + tl.arange(0, 1), tl.full([1], N, tl.int32))
    tl.debug_barrier()
    # 4: A tokens: an unmerged one is its own row, a merged one a term of its partner's
    before = 0
    for a0 in range(0, na, BLOCK_I):
        ia = a0 + tl.arange(0, BLOCK_I)
        am = ia < na
        partner = tl.load(partner_row + ia, mask=am, other=-1, cache_modifier=".cg")
        merged = partner >= 0
        rest = am & ~merged
        s_a = tl.load(s_row + 2 * ia, mask=am, other=0.0)
        pos = ia - (before + tl.cumsum(merged.to(tl.int32), axis=0) - merged.to(tl.int32))
        tl.store(off + pos, pos, mask=rest)
        tl.store(so_row + pos, s_a, mask=rest)
        into = tl.load(off + kept + partner, mask=merged, other=0, cache_modifier=".cg")  # the partner's row start
        slot = tl.where(merged, into + 1 + _before(partner, ia, partner_row, a0 + BLOCK_I, BLOCK_J), pos)
        tl.store(tok + slot, 2 * ia, mask=am)
        tl.store(w + slot, s_a, mask=am)
        before += tl.sum(merged.to(tl.int32), axis=0)


@triton.jit
def diffrate_decide_kernel(x, size, score, size_out, idx, dst, plan_i, plan_f, N, C, keep, merge,
                           BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """DiffRate prune + merge decision of one image (grid B): idx, dst, merged sizes and the merge plan.

    Kept order: class token, then idx (patch position + 1, best first); the first `merge` are the head,
    the rest the tail, each tail token merging into its most cosine-similar head token but the class
    token. Output row h: head token h, then its sources, weight 1 each (the movement divides by the
    count: the reference's unweighted mean). aux ints: [dst: nt]; aux floats: [1 / head norms: merge |
    tail similarities: nt]."""
    b = tl.program_id(0).to(tl.int64)
    n = N - 1
    nt = keep - merge
    idx_row = idx + b * (keep - 1)
    x_img = x + b * N * C
    s_row = size + b * N
    off, tok, dst_row, w, scale_row = _plan(plan_i, plan_f, N)
    sim_row = scale_row + merge
    # 1: the keep - 1 best patches, best first
    for i0 in range(0, n, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        rank = _rank(score + b * n, i, n, BLOCK_J)
        tl.store(idx_row + rank, (i + 1).to(tl.int64), mask=(i < n) & (rank < keep - 1))
    tl.debug_barrier()
    # 2: 1 / the head norms (a product per similarity, not a division)
    for h0 in range(0, merge, BLOCK_I):
        h = h0 + tl.arange(0, BLOCK_I)
        hm = h < merge
        head = tl.load(idx_row + h - 1, mask=hm & (h > 0), other=0, cache_modifier=".cg").to(tl.int32)
        tl.store(scale_row + h, 1.0 / tl.sqrt(_sq_norms(x_img, head, hm, C, BLOCK_K)), mask=hm)
    tl.debug_barrier()
    # 3: every tail token's destination (ties: the lower head position) and similarity
    for t0 in range(0, nt, BLOCK_I):
        t = t0 + tl.arange(0, BLOCK_I)
        tm = t < nt
        tail = tl.load(idx_row + merge - 1 + t, mask=tm, other=0, cache_modifier=".cg").to(tl.int32)
        best = tl.full([BLOCK_I], float("-inf"), dtype=tl.float32)
        d = tl.zeros([BLOCK_I], dtype=tl.int32)
        for h0 in range(0, merge, BLOCK_J):
            h = h0 + tl.arange(0, BLOCK_J)
            hm = h < merge
            head = tl.load(idx_row + h - 1, mask=hm & (h > 0), other=0, cache_modifier=".cg").to(tl.int32)
            h_scale = tl.load(scale_row + h, mask=hm, other=1.0, cache_modifier=".cg")
            dots = _dots(x_img, tail, head, C, BLOCK_K)  # rows past the tiles' ends: 0 (loaded with other=0)
            sim = tl.where(((h >= 1) & hm)[None, :], dots * h_scale[None, :], float("-inf"))  # never the class token
            top = tl.max(sim, axis=1)
            better = top > best
            d = tl.where(better, h0 + tl.argmax(sim, axis=1, tie_break_left=True), d)
            best = tl.where(better, top, best)
        t_norm = tl.sqrt(_sq_norms(x_img, tail, tm, C, BLOCK_K))
        tl.store(dst + b * nt + t, d.to(tl.int64), mask=tm)
        tl.store(dst_row + t, d, mask=tm)
        tl.store(sim_row + t, best / tl.where(tm, t_norm, 1.0), mask=tm)
    tl.debug_barrier()
    # 4: head rows: merged sizes and term ranges (itself, then its sources)
    carry = 0
    for h0 in range(0, merge, BLOCK_I):
        h = h0 + tl.arange(0, BLOCK_I)
        hm = h < merge
        count = tl.zeros([BLOCK_I], dtype=tl.int32)
        grow = tl.zeros([BLOCK_I], dtype=tl.float32)
        for t0 in range(0, nt, BLOCK_J):
            t = t0 + tl.arange(0, BLOCK_J)
            tm = t < nt
            d = tl.load(dst_row + t, mask=tm, other=-1, cache_modifier=".cg")
            tail = tl.load(idx_row + merge - 1 + t, mask=tm, other=0, cache_modifier=".cg").to(tl.int32)
            gain = tl.load(s_row + tail, mask=tm, other=0.0) * tl.load(sim_row + t, mask=tm, other=0.0, cache_modifier=".cg")
            onto = d[None, :] == h[:, None]
            count += tl.sum(onto.to(tl.int32), axis=1)
            grow += tl.sum(tl.where(onto, gain[None, :], 0.0), axis=1)
        head = tl.load(idx_row + h - 1, mask=hm & (h > 0), other=0, cache_modifier=".cg").to(tl.int32)
        tl.store(size_out + b * merge + h, tl.load(s_row + head, mask=hm, other=0.0) + grow, mask=hm)
        first = h + carry + tl.cumsum(count, axis=0) - count
        tl.store(off + h, first, mask=hm)
        tl.store(tok + first, head, mask=hm)
        tl.store(w + first, tl.full([BLOCK_I], 1.0, tl.float32), mask=hm)
        carry += tl.sum(count, axis=0)
    tl.store(off + merge + tl.arange(0, 1), tl.full([1], keep, tl.int32))
    tl.debug_barrier()
    # 5: tail tokens: a term of their destination's row, in tail order
    for t0 in range(0, nt, BLOCK_I):
        t = t0 + tl.arange(0, BLOCK_I)
        tm = t < nt
        d = tl.load(dst_row + t, mask=tm, other=0, cache_modifier=".cg")
        tail = tl.load(idx_row + merge - 1 + t, mask=tm, other=0, cache_modifier=".cg").to(tl.int32)
        slot = tl.load(off + d, mask=tm, other=0, cache_modifier=".cg") + 1 + _before(d, t, dst_row, t0 + BLOCK_I, BLOCK_J)
        tl.store(tok + slot, tail, mask=tm)
        tl.store(w + slot, tl.full([BLOCK_I], 1.0, tl.float32), mask=tm)
