# SPDX-License-Identifier: Apache-2.0
"""The `hilo_attention` token op (HiLo's Hi-Fi window attention): its fused Triton kernel against the reference
in Triton's interpreter, its plugin node in LITv2 plugin graphs, and `build --plugins` on LITv2."""
import collections
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from timm.models import build_model_with_cfg, register_model

from exporter import ops
from exporter.cli import main
from exporter.export.onnx_export import export_onnx
from exporter.models.hilo import HiLo
from exporter.models.litv2 import LITv2
from exporter.ops import contracts, reference
from exporter.runtime import op_reference, ort
from toolchain import plugins_buildable

ROOT = Path(__file__).resolve().parent.parent

KERNEL_CASES = [
    # batch, height, width, window, heads, head_dim, dtype
    (3, 14, 14, 2, 2, 32, "float32"),   # LITv2-S stage 3: 2 Hi-Fi heads of 32 channels
    (1, 14, 14, 2, 2, 32, "float16"),
    (3, 7, 9, 2, 3, 16, "float16"),     # odd map: padded bottom and right
    (1, 7, 8, 3, 2, 8, "float32"),      # 7x8 -> 9x9, 9-token windows (7 windows a program)
    (3, 5, 5, 4, 1, 24, "float32"),     # head_dim not a power of two; one window covers most of the map
    (1, 5, 7, 1, 4, 8, "float16"),      # s = 1: every token attends to itself only (out = v)
    (3, 6, 6, 2, 12, 8, "float32"),     # alpha = 0: every head of a layer is Hi-Fi
    (1, 9, 11, 8, 1, 32, "float32"),    # 64-token windows: one window a program
]

# Runs in a fresh interpreter with TRITON_INTERPRET=1 set before triton is imported (the interpreter needs
# triton.language's own jit functions interpreted, whatever other tests imported in this process).
_CHECKS = textwrap.dedent("""
    import json, sys, torch
    from exporter.ops import reference
    from exporter.ops.kernels.hilo_attention import hilo_attention
    errors = []
    for b, h, w, s, heads, hd, dtype in json.loads(sys.argv[1]):
        g = torch.Generator().manual_seed(b * 1000 + h * 100 + w * 10 + s)
        e = 3 * heads * hd
        # q/k at 2x unit scale, so the softmax is far from uniform; pad != 0, as a qkv bias makes it
        qkv = (torch.randn(b, h * w, e, generator=g) * 2).to(getattr(torch, dtype))
        pad = (torch.randn(e, generator=g) * 2).to(qkv.dtype)
        got = hilo_attention(qkv, pad, h, w, s, heads)
        exact = reference.hilo_attention(qkv.double(), pad.double(), h, w, s, heads)
        own = reference.hilo_attention(qkv, pad, h, w, s, heads)  # the reference in the same dtype
        errors.append([tuple(got.shape) == tuple(exact.shape), got.dtype == qkv.dtype,
                       (got.double() - exact).abs().max().item(), (own.double() - exact).abs().max().item(),
                       exact.abs().max().item()])
    print(json.dumps(errors))
""")


@pytest.fixture(scope="module")
def kernel_errors():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _CHECKS, json.dumps(KERNEL_CASES)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", range(len(KERNEL_CASES)), ids=[str(c) for c in KERNEL_CASES])
def test_kernel_matches_reference(kernel_errors, case):
    """The fused kernel against the float64 reference of the same inputs: no further off than the reference
    computed in the token dtype itself, plus two ulps of the output's magnitude."""
    shape_ok, dtype_ok, err, own, scale = kernel_errors[case]
    assert shape_ok and dtype_ok
    eps = torch.finfo(getattr(torch, KERNEL_CASES[case][-1])).eps
    assert err <= own + 2 * eps * scale, (err, own, scale)


def test_reference_pads_with_the_projection_of_a_zero_token():
    """Padding tokens are zero before the projection (the authors' F.pad), so with a bias their q/k/v are the
    bias: the op on the unpadded map's projection + pad equals attention on the projected zero-padded map."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(8, 24).double()
    torch.nn.init.normal_(proj.bias, 0, 1.0)
    x = torch.randn(2, 5, 7, 8, dtype=torch.float64)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 1, 0, 1))  # 6x8: tiled by 2x2 windows
    want = reference.hilo_attention(proj(padded).flatten(1, 2), proj.bias, 6, 8, 2, 2)
    want = want.unflatten(1, (6, 8))[:, :5, :7].flatten(1, 2)
    got = reference.hilo_attention(proj(x).flatten(1, 2), proj.bias, 5, 7, 2, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # and the bias matters: padding with zeros instead gives another result at the border
    assert (reference.hilo_attention(proj(x).flatten(1, 2), 0 * proj.bias, 5, 7, 2, 2) - want).abs().max() > 1e-3


def test_overridden_scale_stays_inline():
    """The op's scale is head_dim ** -0.5 (plugin attributes are integers); another scale runs the reference."""
    qkv, pad = torch.randn(2, 16, 24), torch.randn(24)
    with ops.lowering("plugin"):
        want = ops.hilo_attention(qkv, pad, 4, 4, 2, 2, 0.25)
    assert torch.equal(want, reference.hilo_attention(qkv, pad, 4, 4, 2, 2, 0.25))
    assert not torch.allclose(want, reference.hilo_attention(qkv, pad, 4, 4, 2, 2))


def _small_litv2(alpha: float, local_ws=(0, 0, 3, 2)) -> LITv2:
    """A tiny LITv2 (32 channels, 3 HiLo layers); windows 3 and 2 pad stages 3 and 4 at 224 px (14x14, 7x7)."""
    torch.manual_seed(0)
    model = LITv2(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), local_ws=local_ws, alpha=alpha,
                  num_classes=10).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv_offset" in name or name.endswith("qkv.bias"):
                p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("alpha,nodes", [(0.5, 3), (0.0, 3), (1.0, 0)])
def test_plugin_graph_has_one_node_per_hifi_layer(tmp_path, alpha, nodes):
    """One HiLoAttention node per HiLo layer with Hi-Fi heads (none at alpha = 1: all heads Lo-Fi), with the
    contract's attributes; onnxruntime running the nodes on the reference matches PyTorch."""
    model = _small_litv2(alpha)
    hifi = [m for m in model.modules() if isinstance(m, HiLo) and m.h_heads]
    assert len(hifi) == nodes
    path = export_onnx(model, tmp_path / "plugins.onnx", 224, batch=(1, 2, 3), lowering="plugin")
    graph = onnx.load(str(path), load_external_data=False).graph
    plugins = [n for n in graph.node if n.domain == contracts.DOMAIN]
    assert collections.Counter(n.op_type for n in plugins) == ({"HiLoAttention": nodes} if nodes else {})
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in plugins]
    want = [{"height": 14, "width": 14, "window": 3, "heads": m.h_heads} for m in hifi[:2]] + \
           [{"height": 7, "width": 7, "window": 2, "heads": m.h_heads} for m in hifi[2:]]
    assert [{k: v for k, v in a.items() if not k.startswith("plugin_")} for a in attrs] == want
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    (got,) = ort.run(op_reference.session(path, 2), x.numpy())
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-4)


@register_model
def litv2_tiny_test(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-S's layout at 1/3 of its width and 1-2 blocks a stage (the build test's model: LITv2-S itself takes
    minutes to export four times and build with TensorRT-RTX twice on a shared CPU): stage 3 has windows of 2,
    1 Hi-Fi head of 4 (int(4 * 0.9) = 3 Lo-Fi), stage 4 s = 1."""
    args = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), alpha=0.9, local_ws=(0, 0, 2, 1))
    return build_model_with_cfg(LITv2, "litv2_tiny_test", pretrained, **dict(args, **kwargs))


def test_build_litv2_with_plugins(tmp_path):
    """`build --plugins --precision fp16` of a LITv2 (no method: HiLo's window attention is the token op) at
    96 px (stage 3 a 6x6 map): plugin graphs written, linted and verified in onnxruntime on the reference; one
    HiLoAttention node per stage-3 layer (stage 4 has s = 1: plain attention, all heads Lo-Fi, no window op)."""
    out = tmp_path / "out"
    assert main(["build", "--model", "litv2_tiny_test", "--weights", "random", "--img-size", "96", "--precision",
                 "fp16", "--batch", "1:2:2", "--plugins", "--out", str(out)]) == 0
    (bundle,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    report = json.loads((bundle / "report.json").read_text())
    graphs = ["model.onnx", "model.fp16.onnx", "model.plugins.onnx", "model.plugins.fp16.onnx"]
    assert report["passed"] and report["lint"] == {g: [] for g in graphs}
    assert sorted({c["graph"] for c in report["comparisons"]}) == sorted(graphs)
    for graph in graphs[2:]:
        nodes = onnx.load(str(bundle / graph), load_external_data=False).graph.node
        assert collections.Counter(n.op_type for n in nodes if n.domain == "exporter") == {"HiLoAttention": 2}
        attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                 for n in nodes if n.domain == "exporter"]
        assert all((a["height"], a["width"], a["window"], a["heads"]) == (6, 6, 2, 1) for a in attrs)
    # TensorRT-RTX parses and builds every graph, the plugin graphs with the bundle's library (where it can be built)
    rtx = "passed" if importlib.util.find_spec("tensorrt_rtx") else "skipped"
    built = plugins_buildable()
    assert (bundle / "plugins" / "libexporter_plugins.so").is_file() == built
    for graph, result in report["tensorrt_rtx"].items():
        assert result["status"] == (rtx if graph in graphs[:2] or built else "skipped"), (graph, result)
    if built and rtx == "passed":
        for graph in graphs[2:]:
            assert report["tensorrt_rtx"][graph]["plugin_names"] == ["HiLoAttention"] * 2


def test_plugins_need_a_token_op(tmp_path, capsys):
    """A dense ViT has no token op to lower: --plugins is refused with a fix."""
    out = tmp_path / "out"
    assert main(["build", "--model", "test_vit", "--weights", "random", "--plugins", "--out", str(out)]) != 0
    assert "no token operation" in capsys.readouterr().err
