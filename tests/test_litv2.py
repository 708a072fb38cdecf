"""LITv2 models: timm registry, official checkpoint layout, FLOPs, bad input, and a static ONNX export that runs in
onnxruntime and builds with TensorRT-RTX."""
import numpy as np
import onnx
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import exporter.models.litv2  # noqa: F401  (registers the models)
from exporter.errors import ExporterError
from exporter.export.onnx_export import export_onnx
from exporter.models.litv2 import LITv2, litv2_flops

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
    gflops = litv2_flops(name, 224) / 1e9
    assert abs(gflops - published) / published < 0.03, gflops


@pytest.mark.parametrize("alpha,published", [(0.0, 3.97), (0.5, 3.77), (1.0, 3.70)])
def test_flops_alpha_ablation(alpha, published):
    """README α table for LITv2-S (alpha_*.pth rows)."""
    assert abs(litv2_flops(_meta("litv2_small", alpha=alpha)) / 1e9 - published) / published < 0.03


@pytest.mark.parametrize("size", [224, 256])
def test_flops_cover_every_matmul_and_conv(size):
    """The analytic count equals torch's FLOP counter (2 FLOPs per MAC), deformable conv included."""
    model = _meta("litv2_small")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size, device="meta"))
    assert litv2_flops(model, size) == counter.get_total_flops() // 2


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
