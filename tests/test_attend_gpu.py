# SPDX-License-Identifier: Apache-2.0
"""The class-token row on a GPU (fp16 q and k into an fp32-accumulating product, no fp32 copy of k) against
the fp32 route the CPU and the ONNX graphs take. Skipped without CUDA; benchmarks/gpu_check.sh runs it."""
import pytest
import torch

from exporter.methods.base import attend, cls_attention
from vits import decisive_vit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def fp32_route(q, k, scale, bias=None):
    logits = (q[:, :, :1].float() * scale) @ k.float().transpose(-2, -1)
    if bias is not None:
        logits = logits + bias.float()[:, None, None, :]
    return logits.softmax(dim=-1)[:, :, 0]


@pytest.mark.parametrize("with_bias", [False, True])
def test_cls_row_matches_the_fp32_route(with_bias):
    vit = decisive_vit(embed_dim=384, num_heads=6, img_size=224, patch_size=16).cuda().half()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8, 197, 384, generator=g, device="cuda").half()
    bias = torch.rand(8, 197, generator=g, device="cuda").log1p() if with_bias else None
    attn = vit.blocks[0].attn
    with torch.no_grad():
        out = attend(attn, x, bias=bias, cls_row=True)
        qkv = attn.qkv(x).reshape(8, 197, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.unbind(0)
        row, expected = cls_attention(q, k, attn.scale, bias), fp32_route(q, k, attn.scale, bias)
    assert row.dtype == torch.float32 and row.shape == expected.shape == (8, 6, 197)
    torch.testing.assert_close(row, expected, rtol=2e-6, atol=1e-7)  # summation order only
    torch.testing.assert_close(out.cls_row, expected, rtol=2e-6, atol=1e-7)
    # what the methods choose from it: the same tokens in the same order
    assert torch.equal(row[:, :, 1:].mean(1).argsort(dim=-1, descending=True, stable=True),
                       expected[:, :, 1:].mean(1).argsort(dim=-1, descending=True, stable=True))


def ops_called(fn) -> list[str]:
    """The names of the aten/custom ops `fn()` dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names = []

    class Seen(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Seen():
        fn()
    return names


def test_biased_attention_takes_the_fused_kernel():
    """With a size bias, a block's attention on a GPU is the fused kernel (not SDPA with a mask), within the bound
    the CPU tests hold it to; with fused kernels off, or tracing for plugins, it is SDPA with the mask."""
    from exporter import ops
    from exporter.ops.kernels.biased_attention import error_bound

    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = torch.randn(4, 197, 3, 6, 64, generator=g, device="cuda").half().permute(2, 0, 3, 1, 4).unbind(0)
    bias = torch.randint(1, 30, (4, 197), generator=g, device="cuda").float().log()
    assert "biased_attention" in ops_called(lambda: ops.biased_attention(q, k, v, bias))
    with torch.no_grad():
        out = ops.biased_attention(q, k, v, bias)
    bound, exact = error_bound(q, k, v, bias)
    assert (out.double() - exact).abs().max().item() <= bound
    for off in (ops.fused_kernels(False), ops.lowering("plugin")):
        with off:
            assert "biased_attention" not in ops_called(lambda: ops.biased_attention(q, k, v, bias))
