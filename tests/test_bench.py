"""The benchmark's machinery attribution: which ONNX nodes count as token-selection code."""
import numpy as np
import onnx
import pytest
import timm
import torch

from exporter.bench.throughput import machinery_nodes, profile_machinery
from exporter.export.onnx_export import export_onnx
from exporter.methods import apply_method


def _namespace(node: onnx.NodeProto) -> str:
    return next((p.value for p in node.metadata_props if p.key == "namespace"), "")


@pytest.fixture(scope="module")
def tome_graph(tmp_path_factory):
    torch.manual_seed(0)
    model = apply_method(timm.create_model("test_vit").eval(), "tome", r=8)
    path = export_onnx(model, tmp_path_factory.mktemp("bench") / "tome.onnx", 160, (2, 2, 2))
    return path, onnx.load(str(path), load_external_data=False)


def test_machinery_is_the_method_code_only(tome_graph):
    _, graph = tome_graph
    chosen = machinery_nodes(graph)
    by_name = {n.name: n for n in graph.graph.node}
    kinds = {by_name[name].op_type for name in chosen}
    # the selection itself: scores, TopK, gathers, one-hot merge
    assert {"TopK", "GatherND", "MatMul", "Equal", "ReduceMean"} <= kinds
    for node in graph.graph.node:
        ns = _namespace(node)
        if "blocks." in ns or "patch_embed" in ns:  # timm's own modules never count
            assert node.name not in chosen, ns
    adds = [n for n in graph.graph.node if n.op_type == "Add" and len(_namespace(n).split("/")) == 2]
    inside = {out for n in graph.graph.node if len(_namespace(n).split("/")) > 2 for out in n.output}
    residual = [n for n in adds if any(i in inside for i in n.input)]
    # two residual adds per block, never counted
    assert len(residual) == 2 * 6 and not {n.name for n in residual} & chosen
    # every merging block adds its merged tokens (a top-level one-hot MatMul) onto the kept ones: counted
    producer = {out: n for n in graph.graph.node for out in n.output}
    merge = [n for n in adds if any(i in producer and producer[i].op_type == "MatMul" and producer[i].name in chosen
                                    for i in n.input)]
    assert merge and all(n.name in chosen for n in merge)


def test_profile_share_is_a_fraction(tome_graph):
    path, _ = tome_graph
    x = np.random.default_rng(0).standard_normal((2, 3, 160, 160), dtype=np.float32)
    share = profile_machinery(path, x, threads=1, sessions=1, runs=2)
    assert 0.0 < share < 0.5
