# SPDX-License-Identifier: Apache-2.0
"""HiLo attention and the deformable conv against plain reference implementations (float64, decisive tolerances)."""
import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from exporter.errors import ExporterError
from exporter.models.deform import DTM, DeformConv2dPack, deform_conv2d
from exporter.models.hilo import HiLo, split_heads


def _heads_attention(q, k, v, heads, scale):
    """q [Nq, D], k/v [Nk, D] -> [Nq, D], one head at a time."""
    hd = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        outs.append(torch.softmax(q[:, sl] @ k[:, sl].T * scale, dim=-1) @ v[:, sl])
    return torch.cat(outs, dim=-1)


def reference_hilo(m: HiLo, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """HiLo written plainly: loops over images and windows, zero padding at bottom/right like the authors."""
    b, _, c = x.shape
    s = m.ws
    hp, wp = -(-h // s) * s, -(-w // s) * s
    grid = torch.zeros(b, hp, wp, c, dtype=x.dtype)
    grid[:, :h, :w] = x.reshape(b, h, w, c)
    out = torch.zeros(b, hp, wp, m.h_dim + m.l_dim, dtype=x.dtype)
    for i in range(b):
        img = grid[i]
        if m.h_heads:
            for wi in range(hp // s):
                for wj in range(wp // s):
                    win = img[wi * s:(wi + 1) * s, wj * s:(wj + 1) * s].reshape(s * s, c)
                    q, k, v = m.h_qkv(win).split(m.h_dim, dim=-1)
                    o = m.h_proj(_heads_attention(q, k, v, m.h_heads, m.scale))
                    out[i, wi * s:(wi + 1) * s, wj * s:(wj + 1) * s, :m.h_dim] = o.reshape(s, s, m.h_dim)
        if m.l_heads:
            pooled = torch.stack([
                img[pi * s:(pi + 1) * s, pj * s:(pj + 1) * s].reshape(-1, c).mean(0)
                for pi in range(hp // s) for pj in range(wp // s)])
            q = m.l_q(img.reshape(-1, c))
            k, v = m.l_kv(pooled).split(m.l_dim, dim=-1)
            o = m.l_proj(_heads_attention(q, k, v, m.l_heads, m.scale))
            out[i, :, :, m.h_dim:] = o.reshape(hp, wp, m.l_dim)
    return out[:, :h, :w].reshape(b, h * w, c)


HILO_CASES = [
    # dim, heads, window, alpha, h, w
    (64, 8, 2, 0.5, 6, 8),      # even split
    (96, 12, 2, 0.9, 8, 8),     # LITv2 split: int(12 * 0.9) = 10 Lo-Fi heads, 2 Hi-Fi heads
    (64, 4, 3, 0.5, 7, 8),      # padding: 7x8 -> 9x9
    (64, 4, 2, 0.5, 5, 5),      # padding on both sides
    (64, 4, 2, 0.0, 6, 6),      # alpha = 0: Hi-Fi only
    (64, 4, 2, 1.0, 7, 6),      # alpha = 1: Lo-Fi only, padded
    (64, 4, 1, 0.5, 5, 7),      # s = 1: plain global attention
]


@pytest.mark.parametrize("dim,heads,ws,alpha,h,w", HILO_CASES)
def test_hilo_matches_reference(dim, heads, ws, alpha, h, w):
    torch.manual_seed(0)
    m = HiLo(dim, heads, qkv_bias=True, window_size=ws, alpha=alpha).double().eval()
    for p in m.parameters():  # weights large enough that the softmax is far from uniform
        torch.nn.init.normal_(p, 0, 0.3)
    x = torch.randn(2, h * w, dim, dtype=torch.float64)
    with torch.no_grad():
        out, ref = m(x, (h, w)), reference_hilo(m, x, h, w)
    assert out.shape == x.shape
    assert (out - ref).abs().max().item() < 1e-10


def test_hilo_head_split_and_names():
    """The authors' split and parameter names (classification/models/attentions.py), LITv2-S stage 3."""
    m = HiLo(384, 12, qkv_bias=True, window_size=2, alpha=0.9)
    assert (m.l_heads, m.h_heads) == (10, 2)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "l_q.weight": (320, 384), "l_q.bias": (320,), "l_kv.weight": (640, 384), "l_kv.bias": (640,),
        "l_proj.weight": (320, 320), "l_proj.bias": (320,), "h_qkv.weight": (192, 384), "h_qkv.bias": (192,),
        "h_proj.weight": (64, 64), "h_proj.bias": (64,)}
    assert set(HiLo(64, 4, window_size=1, alpha=0.5).state_dict()) == {
        "l_q.weight", "l_kv.weight", "l_proj.weight", "l_proj.bias"}  # s = 1: all heads Lo-Fi, no pooling
    assert set(HiLo(64, 4, window_size=2, alpha=0.0).state_dict()) == {
        "h_qkv.weight", "h_proj.weight", "h_proj.bias"}


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5", None])
def test_bad_alpha(alpha):
    with pytest.raises(ExporterError, match=r"alpha .* outside \[0, 1\]"):
        HiLo(64, 4, window_size=2, alpha=alpha)


def test_bad_head_split_and_window():
    with pytest.raises(ExporterError, match="cannot split 100 channels into 3 heads"):
        HiLo(100, 3)
    with pytest.raises(ExporterError, match="window size 0 is not a positive integer"):
        HiLo(64, 4, window_size=0)
    m = HiLo(64, 4, window_size=8, alpha=0.5)
    with pytest.raises(ExporterError, match="window size 8 does not fit the 7×7 feature map"):
        m(torch.randn(1, 49, 64), (7, 7))
    with pytest.raises(ExporterError, match="got 50 tokens for a 7×7 map"):
        m(torch.randn(1, 50, 64), (7, 7))


def _counted_macs(module, *args) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*args)
    return counter.get_total_flops() // 2  # the counter reports 2 FLOPs per multiply-accumulate


def hilo_macs(dim: int, num_heads: int, height: int, width: int, window_size: int = 2, alpha: float = 0.5) -> int:
    """Multiply-accumulates of one HiLo layer by hand (projections + the two attention matmuls): projections on the
    map's own tokens, window attention and pooled keys on the map padded to multiples of the window."""
    l_heads, h_heads = split_heads(dim, num_heads, window_size, alpha)
    head_dim, s = dim // num_heads, window_size
    n, padded = height * width, -(-height // s) * s * -(-width // s) * s
    l_dim, h_dim = l_heads * head_dim, h_heads * head_dim
    hifi = n * dim * 3 * h_dim + n * h_dim * h_dim + 2 * padded * (s * s) * h_dim
    m = padded // (s * s)  # Lo-Fi keys: pooled tokens (all tokens when s = 1)
    return hifi + n * dim * l_dim + m * dim * 2 * l_dim + n * l_dim * l_dim + 2 * n * m * l_dim


def _hilo_counted(dim, heads, h, w, ws, alpha) -> int:
    m = HiLo(dim, heads, qkv_bias=True, window_size=ws, alpha=alpha).eval()
    return _counted_macs(m, torch.randn(1, h * w, dim), (h, w))


@pytest.mark.parametrize("ws,alpha,h,w", [(2, 0.9, 14, 14), (2, 0.5, 7, 9), (4, 0.25, 14, 14), (1, 0.9, 7, 7)])
def test_hilo_macs_match_flop_counter(ws, alpha, h, w):
    assert hilo_macs(96, 6, h, w, ws, alpha) == _hilo_counted(96, 6, h, w, ws, alpha)


def test_hilo_cheaper_than_msa():
    # Textbook MSA on N tokens of C channels: 4·N·C² projections + 2·N²·C for the two attention matmuls; HiLo with
    # s = 1 is exactly that.
    n, c = 14 * 14, 384
    msa = _hilo_counted(c, 12, 14, 14, 1, 0.9)
    assert msa == 4 * n * c * c + 2 * n * n * c == 145_108_992
    # LITv2-S stage 3 (14×14, 384 channels, 12 heads, s = 2, α = 0.9 -> 2 Hi-Fi heads (64 ch), 10 Lo-Fi (320 ch)):
    #   Hi-Fi: 196·384·192 + 196·64² + 2·196·4·64            = 15,353,856
    #   Lo-Fi: 196·384·320 + 49·384·640 + 196·320² + 2·196·49·320 = 62,343,680
    # HiLo needs 46% fewer MACs.
    hilo = _hilo_counted(c, 12, 14, 14, 2, 0.9)
    assert hilo == 15_353_856 + 62_343_680
    # Moving heads from Hi-Fi to Lo-Fi saves MACs at s = 2 here (the trend of the paper's α ablation), and even
    # all-Hi-Fi is cheaper than MSA.
    assert msa > _hilo_counted(c, 12, 14, 14, 2, 0.0) > _hilo_counted(c, 12, 14, 14, 2, 0.5) > hilo


DEFORM_CASES = [
    # kernel, stride, padding, dilation, groups, H, W
    (2, 2, 0, 1, 1, 12, 10),    # LITv2's DTM
    (3, 1, 1, 1, 1, 9, 11),
    (3, 2, 1, 2, 2, 13, 12),
    (1, 1, 0, 1, 1, 5, 6),
]


@pytest.mark.parametrize("k,stride,pad,dil,groups,h,w", DEFORM_CASES)
def test_deform_conv2d_matches_torchvision(k, stride, pad, dil, groups, h, w):
    torch.manual_seed(0)
    x = torch.randn(2, 8, h, w, dtype=torch.float64)
    weight = torch.randn(6, 8 // groups, k, k, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    offset = torch.randn(2, 2 * k * k, ho, wo, dtype=torch.float64) * 3  # many samples leave the map
    ref = torchvision.ops.deform_conv2d(x, offset, weight, bias, stride=stride, padding=pad, dilation=dil)
    out = deform_conv2d(x, offset, weight, bias, stride, pad, dil)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < 1e-10
    # fp32: the only extra error is the rounding of normalised sampling coordinates.
    out32 = deform_conv2d(x.float(), offset.float(), weight.float(), bias.float(), stride, pad, dil)
    assert (out32.double() - ref).abs().max().item() < 1e-5 * ref.abs().max().item()


def test_dtm_uses_its_offsets():
    torch.manual_seed(0)
    dtm = DTM(8).double().eval()
    pack = dtm.dconv
    assert isinstance(pack, DeformConv2dPack)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    # Authors' init: zero offsets, i.e. a plain 2×2 / 2 conv.
    plain = torch.nn.functional.conv2d(x, pack.weight, pack.bias, stride=2)
    assert (pack(x) - plain).abs().max().item() < 1e-12
    torch.nn.init.normal_(pack.conv_offset.weight, 0, 0.5)
    offset = pack.conv_offset(x)
    ref = torchvision.ops.deform_conv2d(x, offset, pack.weight, pack.bias, stride=2)
    assert (pack(x) - ref).abs().max().item() < 1e-10
    assert (ref - plain).abs().max().item() > 0.1  # the offsets matter
    tokens, size = dtm(x.flatten(2).transpose(1, 2), (6, 6))
    assert size == (3, 3) and tokens.shape == (2, 9, 16)
