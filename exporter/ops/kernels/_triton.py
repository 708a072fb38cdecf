"""The fused Triton kernels of the token operations, one program per image (restore: per image and C tile).

Why this shape: a block holds N <= 256 tokens, so an image's whole choice (ranks, matches, merge
weights) fits in one program's registers, and fusing it with the row movement saves the index
round trips the ONNX lowering pays for. Ranks come from comparison counts (ties go to the lower
position, so the choice is deterministic); fp32 dots use input_precision="ieee" (never TF32);
scores, similarities, sizes and merge sums stay fp32, and merged tokens are rounded once.

Every kernel's non-constexpr parameters, in order, are the launch ABI of the AOT launchers
(exporter/ops/aot.py checks them against its table); the sizes of its blocks are chosen in
`config.py`. Scores must be finite (a NaN breaks the comparison ranking).

This module imports triton: import it only through `exporter.ops.kernels`.
"""
import triton
import triton.language as tl

TINY = tl.constexpr(1.1754943508222875e-38)  # smallest normal fp32: the reference's clamp of Evo-ViT's weight sum


@triton.jit
def _order(s_row, n, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr):
    """[BLOCK_N]: the position of rank q's score (rank 0 = highest; ties: lower position first), 0 past n.

    Ranks of BLOCK_J positions at a time against all n scores, then each rank scattered to its slot
    by comparison, so nothing larger than [BLOCK_J, BLOCK_N] is ever live."""
    q = tl.arange(0, BLOCK_N)
    qm = q < n
    s_all = tl.load(s_row + q, mask=qm, other=float("-inf"))
    top = tl.zeros([BLOCK_N], dtype=tl.int32)
    for i0 in range(0, n, BLOCK_J):
        i = i0 + tl.arange(0, BLOCK_J)
        s_i = tl.load(s_row + i, mask=i < n, other=float("-inf"))
        ahead = (s_all[None, :] > s_i[:, None]) | ((s_all[None, :] == s_i[:, None]) & (q[None, :] < i[:, None]))
        rank = tl.sum((ahead & qm[None, :]).to(tl.int32), axis=1)
        hit = (rank[:, None] == q[None, :]) & (i < n)[:, None]
        top += tl.sum(tl.where(hit, i[:, None], 0), axis=0)
    return top


@triton.jit
def _select(x_row, out_row, top, w, n, k, C, extra, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """out = [class, x[1 + top[:k]], (extra) sum_o w[o] x[1 + top[o]]]: the kept rows copied exactly,
    the extra row summed in fp32 and rounded once."""
    o = tl.arange(0, BLOCK_N)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cm = c < C
        tl.store(out_row + c, tl.load(x_row + c, mask=cm), mask=cm)
        rows = tl.load(x_row + (1 + top)[:, None] * C + c[None, :], mask=(o < n)[:, None] & cm[None, :], other=0.0)
        tl.store(out_row + (1 + o)[:, None] * C + c[None, :], rows, mask=(o < k)[:, None] & cm[None, :])
        if extra != 0:
            acc = tl.sum(w[:, None] * rows.to(tl.float32), axis=0)
            tl.store(out_row + (1 + k) * C + c, acc.to(out_row.dtype.element_ty), mask=cm)


@triton.jit
def topk_prune_kernel(x, score, tokens, idx, N, C, k, fuse,
                      BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr):
    """EViT: class token, the k best patches (best first), with `fuse` the dropped ones' score-weighted sum."""
    b = tl.program_id(0).to(tl.int64)
    n = N - 1
    s_row = score + b * n
    top = _order(s_row, n, BLOCK_N, BLOCK_J)
    o = tl.arange(0, BLOCK_N)
    tl.store(idx + b * k + o, top.to(tl.int64), mask=o < k)
    w = tl.load(s_row + top, mask=(o >= k) & (o < n), other=0.0)
    _select(x + b * N * C, tokens + b * (1 + k + fuse) * C, top, w, n, k, C, fuse, BLOCK_N, BLOCK_C)


@triton.jit
def evovit_select_kernel(x, g, tokens, idx, N, C, keep,
                         BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr):
    """Evo-ViT: class token, the `keep` best patches by g, and the placeholders' g-weighted mean."""
    b = tl.program_id(0).to(tl.int64)
    n = N - 1
    g_row = g + b * n
    top = _order(g_row, n, BLOCK_N, BLOCK_J)
    o = tl.arange(0, BLOCK_N)
    tl.store(idx + b * keep + o, top.to(tl.int64), mask=o < keep)
    w = tl.load(g_row + top, mask=(o >= keep) & (o < n), other=0.0)
    w = w / tl.maximum(tl.sum(w, axis=0), TINY)
    _select(x + b * N * C, tokens + b * (keep + 2) * C, top, w, n, keep, C, 1, BLOCK_N, BLOCK_C)


@triton.jit
def evovit_restore_kernel(x, tokens, moved, idx, out, N, C, K,
                          BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Evo-ViT stage end, grid (B, C tiles): a chosen patch takes its updated token, a placeholder x + moved
    (added in fp32 and rounded once, as torch adds fp16 tensors, so the result is bit-exact)."""
    b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    x_row = x + b * N * C
    t_row = tokens + b * (K + 2) * C
    out_row = out + b * N * C
    mv = tl.load(moved + b * C + c, mask=cm, other=0.0)
    tl.store(out_row + c, tl.load(t_row + c, mask=cm), mask=cm)
    s = tl.arange(0, BLOCK_K)
    chosen = tl.load(idx + b * K + s, mask=s < K, other=-1).to(tl.int32)
    for r0 in range(0, N - 1, BLOCK_R):
        j = r0 + tl.arange(0, BLOCK_R)
        jm = j < N - 1
        src = tl.max(tl.where(chosen[None, :] == j[:, None], s[None, :], -1), axis=1)  # slot of patch j, or -1
        m = jm[:, None] & cm[None, :]
        waits = m & (src < 0)[:, None]
        xv = tl.load(x_row + (1 + j)[:, None] * C + c[None, :], mask=waits, other=0.0)
        tv = tl.load(t_row + (1 + src)[:, None] * C + c[None, :], mask=m & (src >= 0)[:, None], other=0.0)
        moved_x = (xv.to(tl.float32) + mv.to(tl.float32)[None, :]).to(tv.dtype)  # as torch adds halves
        tl.store(out_row + (1 + j)[:, None] * C + c[None, :], tl.where(waits, moved_x, tv), mask=m)


@triton.jit
def tome_merge_kernel(x, size, metric, tokens, size_out, src, dst, N, C, Cm, r,
                      BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """ToMe bipartite soft matching and size-weighted merge of one image.

    A = even positions (a -> token 2a), B = odd (b -> 2b + 1); BLOCK_A covers both sets. The [A, B]
    similarities are formed BLOCK_S B tokens at a time (running best match), the ranking of A stays in
    registers, and the merge runs over the chosen sources BLOCK_S at a time: dense [A, B] and [B, A]
    MatMuls, unrolled as fp32 FMAs, made 2-4x larger cubins and 90 KB of shared memory at BLOCK_A 128.
    """
    b = tl.program_id(0).to(tl.int64)
    na = (N + 1) // 2
    nb = N // 2
    ia = tl.arange(0, BLOCK_A)
    am = ia < na
    bm = ia < nb  # B index vector is the same arange
    m_row = metric + b * N * Cm
    # best B partner of every A token, BLOCK_S B tokens at a time (ties: the lower B position)
    a2 = tl.zeros([BLOCK_A], dtype=tl.float32)
    for c0 in range(0, Cm, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        ta = tl.load(m_row + (2 * ia)[:, None] * Cm + c[None, :], mask=am[:, None] & (c < Cm)[None, :], other=0.0).to(tl.float32)
        a2 += tl.sum(ta * ta, axis=1)
    best = tl.full([BLOCK_A], float("-inf"), dtype=tl.float32)
    partner = tl.zeros([BLOCK_A], dtype=tl.int32)
    for j0 in range(0, nb, BLOCK_S):
        j = j0 + tl.arange(0, BLOCK_S)
        jm = j < nb
        dots = tl.zeros([BLOCK_A, BLOCK_S], dtype=tl.float32)
        b2 = tl.zeros([BLOCK_S], dtype=tl.float32)
        for c0 in range(0, Cm, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cm = c < Cm
            ta = tl.load(m_row + (2 * ia)[:, None] * Cm + c[None, :], mask=am[:, None] & cm[None, :], other=0.0).to(tl.float32)
            tb = tl.load(m_row + (2 * j + 1)[:, None] * Cm + c[None, :], mask=jm[:, None] & cm[None, :], other=0.0).to(tl.float32)
            dots += tl.dot(ta, tl.trans(tb), input_precision="ieee")
            b2 += tl.sum(tb * tb, axis=1)
        sim = tl.where(jm[None, :], dots / tl.where(jm, tl.sqrt(b2), 1.0)[None, :], float("-inf"))
        top = tl.max(sim, axis=1)
        better = top > best
        partner = tl.where(better, j0 + tl.argmax(sim, axis=1, tie_break_left=True), partner)
        best = tl.where(better, top, best)
    best = best / tl.where(am, tl.sqrt(a2), 1.0)
    best = tl.where((ia == 0) | ~am, float("-inf"), best)
    ahead = (best[None, :] > best[:, None]) | ((best[None, :] == best[:, None]) & (ia[None, :] < ia[:, None]))
    rank = tl.sum((ahead & am[None, :]).to(tl.int32), axis=1)
    merged = (rank < r) & am
    tl.store(src + b * r + rank, ia.to(tl.int64), mask=merged)
    tl.store(dst + b * r + rank, partner.to(tl.int64), mask=merged)
    # output rows: unmerged A ascending (a minus the merged A before it), then every B token
    pos_a = ia - tl.sum(((ia[None, :] < ia[:, None]) & merged[None, :]).to(tl.int32), axis=1)
    rest = am & ~merged
    pos_b = na - r + ia
    s_a = tl.load(size + b * N + 2 * ia, mask=am, other=0.0)
    s_b = tl.load(size + b * N + 2 * ia + 1, mask=bm, other=0.0)
    into = (partner[None, :] == ia[:, None]) & merged[None, :]  # [B, A]: A token a merges into B token b
    s_new = s_b + tl.sum(tl.where(into, s_a[None, :], 0.0), axis=1)
    tl.store(size_out + b * (N - r) + pos_a, s_a, mask=rest)
    tl.store(size_out + b * (N - r) + pos_b, s_new, mask=bm)
    tl.debug_barrier()  # src/dst written: the merge reads them back BLOCK_S sources at a time
    x_row = x + b * N * C
    out_row = tokens + b * (N - r) * C
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cm = c < C
        xa = tl.load(x_row + (2 * ia)[:, None] * C + c[None, :], mask=am[:, None] & cm[None, :], other=0.0)
        tl.store(out_row + pos_a[:, None] * C + c[None, :], xa, mask=rest[:, None] & cm[None, :])
        acc = tl.load(x_row + (2 * ia + 1)[:, None] * C + c[None, :], mask=bm[:, None] & cm[None, :], other=0.0).to(tl.float32)
        for s0 in range(0, r, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            sm = s < r
            a = tl.load(src + b * r + s, mask=sm, other=0, cache_modifier=".cg").to(tl.int32)
            p = tl.load(dst + b * r + s, mask=sm, other=-1, cache_modifier=".cg").to(tl.int32)
            onto = (p[:, None] == ia[None, :]) & sm[:, None]  # [sources, B]
            s_p = tl.sum(tl.where(onto, s_new[None, :], 0.0), axis=1)  # the partner's merged size
            w = tl.load(size + b * N + 2 * a, mask=sm, other=0.0) / tl.where(sm, s_p, 1.0)
            m = sm[:, None] & cm[None, :]
            xs = tl.load(x_row + (2 * a)[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
            xp = tl.load(x_row + (2 * p + 1)[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
            # partner value x_p + sum_i s_i (x_i - x_p) / s'_p, as the reference rewrites the weighted mean
            acc += tl.dot(tl.trans(onto.to(tl.float32)), w[:, None] * (xs - xp), input_precision="ieee")
        tl.store(out_row + pos_b[:, None] * C + c[None, :], acc.to(out_row.dtype.element_ty), mask=bm[:, None] & cm[None, :])


@triton.jit
def diffrate_reduce_kernel(x, size, score, tokens, size_out, idx, dst, N, C, keep, merge,
                           BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                           BLOCK_J: tl.constexpr):
    """DiffRate prune + merge of one image.

    The kept order is written to `idx` first and read back (after a CTA barrier, L2 loads) for the head
    and for BLOCK_T tail tokens at a time, so no [tail, head] matrix larger than [BLOCK_T, BLOCK_N]
    is live; the tail's partners go to `dst` and are read back the same way for the merge.
    """
    b = tl.program_id(0).to(tl.int64)
    n = N - 1
    nt = keep - merge
    idx_row = idx + b * (keep - 1)
    dst_row = dst + b * nt
    x_row = x + b * N * C
    top = _order(score + b * n, n, BLOCK_N, BLOCK_J)
    h = tl.arange(0, BLOCK_N)  # head (order) positions; also rank positions for idx
    tl.store(idx_row + h, (top + 1).to(tl.int64), mask=h < keep - 1)
    tl.debug_barrier()
    hm = h < merge
    head_tok = tl.load(idx_row + h - 1, mask=hm & (h > 0), other=0, cache_modifier=".cg").to(tl.int32)
    h2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        xh = tl.load(x_row + head_tok[:, None] * C + c[None, :], mask=hm[:, None] & (c < C)[None, :], other=0.0).to(tl.float32)
        h2 += tl.sum(xh * xh, axis=1)
    h_norm = tl.where(hm, tl.sqrt(h2), 1.0)  # padding divides by 1, not 0
    count = tl.zeros([BLOCK_N], dtype=tl.float32)
    grow = tl.zeros([BLOCK_N], dtype=tl.float32)
    for t0 in range(0, nt, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tm = t < nt
        tail_tok = tl.load(idx_row + merge - 1 + t, mask=tm, other=0, cache_modifier=".cg").to(tl.int32)
        dots = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
        t2 = tl.zeros([BLOCK_T], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cm = c < C
            xt = tl.load(x_row + tail_tok[:, None] * C + c[None, :], mask=tm[:, None] & cm[None, :], other=0.0).to(tl.float32)
            xh = tl.load(x_row + head_tok[:, None] * C + c[None, :], mask=hm[:, None] & cm[None, :], other=0.0).to(tl.float32)
            dots += tl.dot(xt, tl.trans(xh), input_precision="ieee")
            t2 += tl.sum(xt * xt, axis=1)
        sim = tl.where(((h >= 1) & hm)[None, :], dots / h_norm[None, :], float("-inf"))  # never the class token
        d = tl.argmax(sim, axis=1, tie_break_left=True)
        best = tl.max(sim, axis=1) / tl.where(tm, tl.sqrt(t2), 1.0)
        tl.store(dst_row + t, d.to(tl.int64), mask=tm)
        t_size = tl.load(size + b * N + tail_tok, mask=tm, other=0.0)
        onto = (d[:, None] == h[None, :]) & tm[:, None]
        count += tl.sum(onto.to(tl.float32), axis=0)
        grow += tl.sum(tl.where(onto, (t_size * best)[:, None], 0.0), axis=0)
    h_size = tl.load(size + b * N + head_tok, mask=hm, other=0.0)
    tl.store(size_out + b * merge + h, h_size + grow, mask=hm)
    count += 1.0
    tl.debug_barrier()
    out_row = tokens + b * merge * C
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cm = c < C
        acc = tl.load(x_row + head_tok[:, None] * C + c[None, :], mask=hm[:, None] & cm[None, :], other=0.0).to(tl.float32)
        for t0 in range(0, nt, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            tm = t < nt
            tail_tok = tl.load(idx_row + merge - 1 + t, mask=tm, other=0, cache_modifier=".cg").to(tl.int32)
            d = tl.load(dst_row + t, mask=tm, other=-1, cache_modifier=".cg").to(tl.int32)
            onto = (d[:, None] == h[None, :]) & tm[:, None]
            d_tok = tl.sum(tl.where(onto, head_tok[None, :], 0), axis=1)
            d_count = tl.sum(tl.where(onto, count[None, :], 0.0), axis=1)
            m = tm[:, None] & cm[None, :]
            xt = tl.load(x_row + tail_tok[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
            xd = tl.load(x_row + d_tok[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
            moved = tl.where(m, (xt - xd) / tl.where(tm, d_count, 1.0)[:, None], 0.0)
            acc += tl.dot(tl.trans(onto.to(tl.float32)), moved, input_precision="ieee")
        tl.store(out_row + h[:, None] * C + c[None, :], acc.to(out_row.dtype.element_ty), mask=hm[:, None] & cm[None, :])
