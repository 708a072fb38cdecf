# SPDX-License-Identifier: Apache-2.0
"""LITv2 models: timm registry, official checkpoint layout, FLOPs, bad input, and a static ONNX export that runs in
onnxruntime and builds with TensorRT-RTX."""
import copy

import numpy as np
import onnx
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import exporter.models.litv2  # noqa: F401  (registers the models)
from exporter.errors import ExporterError
from exporter.export.onnx_export import export_onnx
from exporter.models.litv2 import LITv2

# Read from ziplab/LITv2 classification/models/*.py (module attribute names) and checked against the official
# model class instantiated with a stubbed DCN extension: LITv2-S has 219 state_dict entries, M and B 459.
OFFICIAL_KEYS = {
    "patch_embed.proj.weight": (96, 3, 4, 4),
    "patch_embed.norm.bias": (96,),
    "layers.0.blocks.0.norm2.weight": (96,),
    "layers.0.blocks.1.mlp.fc1.weight": (384, 96),
    "layers.0.blocks.1.mlp.dwconv.dwconv.weight": (384, 1, 3, 3),
    "layers.1.blocks.1.mlp.fc2.bias": (192,),
    "layers.0.downsample.dconv.weight": (192, 96, 2, 2),
    "layers.0.downsample.dconv.bias": (192,),
    "layers.0.downsample.dconv.conv_offset.weight": (8, 96, 2, 2),
    "layers.1.downsample.dconv.conv_offset.bias": (8,),
    "layers.2.downsample.norm_layer.running_var": (768,),
    "layers.2.downsample.norm_layer.num_batches_tracked": (),
    "layers.2.blocks.0.norm1.weight": (384,),
    "layers.2.blocks.0.attn.l_q.weight": (320, 384),
    "layers.2.blocks.5.attn.l_kv.bias": (640,),
    "layers.2.blocks.3.attn.l_proj.weight": (320, 320),
    "layers.2.blocks.0.attn.h_qkv.weight": (192, 384),
    "layers.2.blocks.5.attn.h_proj.bias": (64,),
    "layers.3.blocks.1.attn.l_q.bias": (768,),
    "layers.3.blocks.1.attn.l_kv.weight": (1536, 768),
    "layers.3.blocks.0.attn.l_proj.weight": (768, 768),
    "norm.weight": (768,),
    "head.weight": (1000, 768),
}
ABSENT_KEYS = [
    "layers.0.blocks.0.norm1.weight",        # stages 1-2 have no attention, hence no norm1
    "layers.3.blocks.0.attn.h_qkv.weight",   # stage 4 uses s = 1: all heads Lo-Fi
    "layers.3.downsample.dconv.weight",      # no merging after the last stage
]


@pytest.fixture(scope="module")
def small():
    """LITv2-S with random weights, plus nonzero offsets (about a pixel) and BN statistics, so that the deformable
    sampling, its borders and every saved tensor matter."""
    torch.manual_seed(0)
    model = timm.create_model("litv2_small", pretrained=False).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
        for name, p in model.named_parameters():
            if "conv_offset" in name:
                p.normal_(0, 0.05)
    return model


def _meta(name: str, **kwargs):
    with torch.device("meta"):  # architecture only: no weight allocation or init
        return timm.create_model(name, pretrained=False, **kwargs)


def _gmacs(model, size=224) -> float:
    """Multiply-accumulates of one image, counted by torch's FlopCounterMode on the meta device."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 2e9


def test_registered_with_pretrained_cfg(small):
    assert {"litv2_small", "litv2_medium", "litv2_base"} <= set(timm.list_models("litv2_*"))
    cfg = small.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["num_classes"] == 1000
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    assert cfg["url"] == "https://github.com/ziplab/LITv2/releases/download/v1.0/litv2_s.pth"
    assert small.default_cfg == cfg
    assert small.num_classes == 1000 and small.total_stride == 32
    assert small(torch.randn(1, 3, 64, 96)).shape == (1, 1000)


def test_official_key_names(small):
    sd = small.state_dict()
    assert len(sd) == 219
    for key, shape in OFFICIAL_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    for key in ABSENT_KEYS:
        assert key not in sd


def test_checkpoint_round_trip(small, tmp_path):
    """Save like the authors ({'model': state_dict}), load strictly into a fresh model: every tensor comes back."""
    path = tmp_path / "litv2_s.pth"
    torch.save({"model": small.state_dict(), "epoch": 300}, path)
    checkpoint = torch.load(path, map_location="cpu")
    fresh = timm.create_model("litv2_small", pretrained=False)
    fresh.load_state_dict(checkpoint["model"], strict=True)
    loaded, saved = fresh.state_dict(), small.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    # timm's pretrained path unwraps the 'model' key through the filter function.
    assert exporter.models.litv2.checkpoint_filter_fn(checkpoint, fresh) is checkpoint["model"]


@pytest.mark.parametrize("name,published", [("litv2_small", 3.7), ("litv2_medium", 7.5), ("litv2_base", 13.2)])
def test_flops_match_published(name, published):
    """The counted FLOPs (what `exporter methods` and the bench report) match the paper's."""
    gflops = _gmacs(_meta(name))
    assert abs(gflops - published) / published < 0.03, gflops


@pytest.mark.parametrize("alpha,published", [(0.0, 3.97), (0.5, 3.77), (1.0, 3.70)])
def test_flops_alpha_ablation(alpha, published):
    """README α table for LITv2-S (alpha_*.pth rows)."""
    assert abs(_gmacs(_meta("litv2_small", alpha=alpha)) - published) / published < 0.03


@pytest.mark.parametrize("size", [200, (224, 240)])
def test_image_size_not_divisible_by_stride(small, size):
    with pytest.raises(ExporterError, match="not divisible by the model's total stride 32") as err:
        small.check_img_size(size)
    assert "224" in err.value.fix
    h, w = (size, size) if isinstance(size, int) else size
    with pytest.raises(ExporterError, match="total stride 32"):
        small(torch.randn(1, 3, h, w))
    with pytest.raises(ExporterError, match="total stride 32"):
        timm.create_model("litv2_small", img_size=size)


def test_bad_model_arguments():
    with pytest.raises(ExporterError, match="alpha 1.2 is outside"):
        timm.create_model("litv2_small", alpha=1.2)
    with pytest.raises(ExporterError, match="window size 16 in stage 3 does not fit its 14×14 feature map"):
        timm.create_model("litv2_small", local_ws=(0, 0, 16, 1))
    with pytest.raises(ExporterError, match="one value per stage"):
        timm.create_model("litv2_small", local_ws=(0, 2, 1))


# ---- ONNX export (one export for the module) ----

@pytest.fixture(scope="module")
def exported(small, tmp_path_factory):
    return export_onnx(small, tmp_path_factory.mktemp("litv2") / "litv2_small.onnx", 224, batch=(1, 2, 4))


def test_onnx_parity(small, exported):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            ref = small(x).numpy()
        out = session.run(None, {"input": x.numpy()})[0]
        assert out.shape == (batch, 1000)
        assert np.abs(out - ref).max() <= 1e-4


def test_onnx_static_shapes(exported):
    """Every value has a fully known shape; the only symbol is the batch; ranks stay within TensorRT's 8."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported)), data_prop=True)
    graph = model.graph
    ops = {node.op_type for node in graph.node}
    assert "GridSample" in ops and "DeformConv" not in ops
    values = [*graph.input, *graph.value_info, *graph.output]
    assert len(values) > len(graph.node)  # shape inference annotated the intermediate values
    for value in values:
        dims = value.type.tensor_type.shape.dim
        assert len(dims) <= 8, value.name
        for d in dims:
            assert d.HasField("dim_value") or d.dim_param == "batch", (value.name, d)
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", 3, 224, 224]


def _trt_rtx_build(path, trt):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 224, 224), (2, 3, 224, 224), (4, 3, 224, 224))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None


def test_tensorrt_rtx_builds(exported):
    _trt_rtx_build(exported, pytest.importorskip("tensorrt_rtx"))


def test_padded_hilo_exports(tmp_path):
    """Windows that do not tile the map (14×14 with s = 3, 7×7 with s = 2): Pad + Slice, still static and exact."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = LITv2(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), local_ws=(0, 0, 3, 2), alpha=0.5,
                  num_classes=10).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv_offset" in name:
                p.normal_(0, 0.1)
    path = export_onnx(model, tmp_path / "padded.onnx", 224, batch=(1, 2, 4))
    assert {"Pad", "Slice"} <= {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model(x).numpy()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(out - ref).max() <= 1e-5
    _trt_rtx_build(path, pytest.importorskip("tensorrt_rtx"))


# ---- timm's model conventions (what timm's own tests/test_models.py checks of a registered model) ----

def test_registered_by_importing_exporter_models():
    """In a fresh interpreter: `import exporter.models` (what the CLI and the pipeline import) registers them."""
    import subprocess
    import sys
    code = "import timm, exporter.models; print(','.join(timm.list_models('litv2*')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "litv2_base,litv2_medium,litv2_small", done.stderr


@pytest.mark.parametrize("name", ["litv2_small", "litv2_medium", "litv2_base"])
def test_timm_default_cfg_contract(name):
    """timm's test_model_default_cfgs, on the meta device: cfg fields against the model, the unpooled
    forward_features (output_fmt NHWC) at the cfg's pool_size, pre_logits width = head_hidden_size, the
    classifier removed by reset_classifier or at construction, with and without pooling."""
    model = timm.create_model(name, pretrained=False, device="meta").eval()
    cfg = model.default_cfg
    assert model.num_classes == cfg["num_classes"] == 1000
    assert model.num_features == model.head_hidden_size > 0
    assert model.in_chans == cfg["input_size"][0]
    sd = model.state_dict()
    assert cfg["classifier"] + ".weight" in sd and cfg["first_conv"] + ".weight" in sd
    assert all(p.device.type == "meta" for p in model.parameters())
    with pytest.raises(TypeError):
        timm.create_model(name, pretrained=False, device="meta", not_a_model_arg=1)

    x = torch.randn(1, *cfg["input_size"], device="meta")
    feats = model.forward_features(x)
    assert model.output_fmt == "NHWC"
    assert feats.shape == (1, *cfg["pool_size"], model.num_features)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    assert model(x).shape == (1, 1000)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == pre.shape
    model.reset_classifier(0, "")
    assert model(x).shape == feats.shape
    model.reset_classifier(7)  # keeps the pooling it has ('')
    assert model(x).shape == (1, *cfg["pool_size"], 7)
    with pytest.raises(ExporterError, match="global_pool 'max'"):
        model.reset_classifier(7, "max")
    no_head = timm.create_model(name, pretrained=False, device="meta", num_classes=0)
    assert no_head(x).shape == pre.shape
    no_pool = timm.create_model(name, pretrained=False, device="meta", num_classes=0, global_pool="")
    assert no_pool(x).shape == feats.shape

    # a new head lives where the model lives, in its dtype and mode
    model.to(dtype=torch.float64).train()
    model.reset_classifier(2)
    head = model.get_classifier()
    assert head.weight.device.type == "meta" and head.weight.dtype == torch.float64 and head.training


@pytest.fixture(scope="module")
def tiny():
    """A small LITv2 with every part of the big ones (HiLo with both paths in stage 3, MSA in stage 4, DTMs with
    nonzero offsets), cheap enough to trace and script."""
    torch.manual_seed(0)
    model = LITv2(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), num_classes=10).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv_offset" in name:
                p.normal_(0, 0.05)
    return model


def test_timm_forward_intermediates(tiny):
    """timm's test_model_forward_intermediates: one NCHW map per stage at input / reduction with feature_info's
    channels, and the final output equal to forward_features; indices, stop_early and NHWC as timm defines them."""
    x = torch.randn(2, 3, 64, 96)
    info = timm.models.FeatureInfo(tiny.feature_info, len(tiny.feature_info))
    assert info.channels() == [16, 32, 64, 128] and info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        final, inter = tiny.forward_intermediates(x)
        assert [tuple(t.shape) for t in inter] == [(2, c, 64 // r, 96 // r) for c, r in zip(info.channels(), info.reduction())]
        torch.testing.assert_close(final, tiny.forward_features(x), rtol=0, atol=0)
        last_two = tiny.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last_two) == 2 and all(torch.equal(a, b) for a, b in zip(last_two, inter[2:]))
        early = tiny.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True, output_fmt="NHWC")
        assert torch.equal(early[0], inter[1].permute(0, 2, 3, 1))
        normed = tiny.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed.permute(0, 2, 3, 1), final, rtol=0, atol=0)


def test_timm_features_only():
    """timm's test_model_forward_features: create_model(features_only=True) gives the four stage maps, with
    channels and reductions as its feature_info says; out_indices select stages and prune the rest away."""
    torch.manual_seed(0)
    model = timm.create_model("litv2_small", pretrained=False, features_only=True).eval()
    assert model.feature_info.channels() == [96, 192, 384, 768] and model.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(1, c, 64 // r, 96 // r) for c, r in zip([96, 192, 384, 768], [4, 8, 16, 32])]
    assert not any(torch.isnan(o).any() for o in outs)
    first_two = timm.create_model("litv2_small", pretrained=False, features_only=True, out_indices=(0, 1))
    assert first_two.feature_info.channels() == [96, 192]
    assert len(first_two.model.layers) == 2 and first_two.model.layers[1].downsample is None  # nothing unused kept
    assert [tuple(o.shape) for o in first_two(x)] == [(1, 96, 16, 24), (1, 192, 8, 12)]


def test_torchscript(tiny):
    """timm's test_model_forward_torchscript: the scripted model computes what the eager one does, and still
    refuses an image size the model cannot tile."""
    scripted = torch.jit.script(tiny)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), tiny(x), rtol=1e-5, atol=1e-6)
        with pytest.raises(torch.jit.Error, match="total stride 32"):
            scripted(torch.randn(1, 3, 48, 64))


def test_fx_symbolic_trace(tiny):
    """timm's test_model_forward_fx (its tracer with timm's leaf functions, through torchvision's feature
    extractor) and a plain torch.fx.symbolic_trace: both graphs compute what the model does."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    from timm.models import get_notrace_functions, get_notrace_modules

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = tiny(x)
        traced = torch.fx.symbolic_trace(tiny)
        torch.testing.assert_close(traced(x), ref, rtol=1e-5, atol=1e-6)
        kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                      param_shapes_constant=True)
        _, eval_nodes = get_graph_node_names(tiny, tracer_kwargs=kwargs)
        extractor = create_feature_extractor(tiny, eval_return_nodes=[eval_nodes[-1]], train_return_nodes=[eval_nodes[-1]],
                                             tracer_kwargs=kwargs)
        torch.testing.assert_close(next(iter(extractor(x).values())), ref, rtol=1e-5, atol=1e-6)


# ---- fp16: the deformable merge samples at fp32 positions ----

def test_deformable_merge_positions_stay_fp32_in_half_precision():
    """With nonzero offsets (the random init's are zero, which hides it), a half-precision DTM conv matches fp32
    to fp16 rounding of the values only: positions near 100 px in fp16 would be 1/16 px off (about 20x the error)."""
    from exporter.models.deform import DeformConv2dPack

    torch.manual_seed(0)
    pack = DeformConv2dPack(16, 32, kernel_size=2, stride=2)
    torch.nn.init.normal_(pack.conv_offset.weight, 0, 0.3)
    x = torch.randn(2, 16, 112, 112)
    with torch.no_grad():
        ref = pack(x)
        assert pack.conv_offset(x).abs().mean() > 0.5  # the offsets move the samples by pixels
        half = copy.deepcopy(pack).half()(x.half()).float()
    assert (half - ref).abs().max().item() < 0.01 * ref.abs().max().item()


def test_fp16_graph_samples_with_an_fp32_grid(tmp_path):
    """The fp16 ONNX graph of LITv2: every GridSample takes an fp32 grid (and fp32 data), as deform.py says."""
    from exporter.export.fp16 import export_fp16

    model = LITv2(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), num_classes=10).eval()
    path = tmp_path / "litv2.fp16.onnx"
    export_fp16(model, path, img_size=64, batch=(1, 1, 1))
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input]}
    samplers = [n for n in graph.node if n.op_type == "GridSample"]
    assert len(samplers) == 3
    for node in samplers:
        assert types[node.input[0]] == types[node.input[1]] == onnx.TensorProto.FLOAT, node.name
    assert any(types.get(n.input[0]) == onnx.TensorProto.FLOAT16 for n in graph.node if n.op_type == "Conv")
