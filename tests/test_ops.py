# SPDX-License-Identifier: Apache-2.0
"""The token op layer: custom ops whose shapes come from the plugin contracts, and the plugin lowering."""
import collections

import onnx
import pytest
import timm
import torch

from exporter import ops
from exporter.export.onnx_export import export_onnx
from exporter.methods import apply_method
from exporter.ops import contracts, reference
from exporter.runtime import onnx_runner, op_reference, ort

B, N, C = 3, 13, 8


def inputs(name: str, dtype=torch.float32):
    """Arguments of op `name` on random tokens (scores and sizes fp32, tokens in `dtype`)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, C, generator=g).to(dtype)
    score = torch.rand(B, N - 1, generator=g)
    size = 1 + torch.rand(B, N, generator=g)
    if name == "topk_prune":
        return x, score, 5, True
    if name == "evovit_select":
        return x, score, 4
    if name == "evovit_restore":
        tokens, idx = reference.evovit_select(x, score, 4)
        return x, tokens + 1, torch.randn(B, 1, C, generator=g).to(dtype), idx
    if name == "tome_merge":
        return x, size, torch.randn(B, N, 4, generator=g).to(dtype), 5
    if name == "hilo_attention":  # a 3x5 map (N = 15) in windows of 2 (padded), 2 heads of 4 channels
        return torch.randn(B, 15, 24, generator=g).to(dtype), torch.randn(24, generator=g).to(dtype), 3, 5, 2, 2
    return x, size, score, 9, 6  # diffrate_reduce


@pytest.mark.parametrize("name", ops.OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_custom_ops_match_their_contract(name, dtype):
    """torch's op checks (schema, fake shapes against the real outputs), and the real outputs' shapes and
    dtypes against the contract the plugin implements."""
    args = inputs(name, dtype)
    op = getattr(torch.ops.exporter, name).default
    torch.library.opcheck(op, args)
    contract = contracts.load(name)
    outs = op(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    tensors = args[: len(contract.inputs)]
    attrs = dict(zip(contract.attributes, args[len(contract.inputs):]))
    assert [tuple(o.shape) for o in outs] == contract.output_shapes([tuple(t.shape) for t in tensors], attrs)
    token = "float16" if dtype == torch.float16 else "float32"
    assert [str(o.dtype).removeprefix("torch.") for o in outs] == contract.dtypes(token)[1]


def test_contract_shapes_keep_a_symbolic_batch_and_refuse_contradictions():
    tome = contracts.load("tome_merge")
    shapes = tome.output_shapes([("batch", 197, 384), ("batch", 197), ("batch", 197, 64)], {"r": 13})
    assert shapes == [("batch", 184, 384), ("batch", 184), ("batch", 13), ("batch", 13)]
    with pytest.raises(ValueError, match="'size' has dimension 196"):
        tome.output_shapes([("batch", 197, 384), ("batch", 196), ("batch", 197, 64)], {"r": 13})
    with pytest.raises(ValueError, match="takes tokens of"):
        tome.dtypes("int64")


def test_replayed_choices_are_used():
    """A choice built from recorded indices replaces the op's own (the replay verification relies on), and
    keeps the scores of this run, which the margins read."""
    x, score, k, fuse = inputs("topk_prune")
    _, own = ops.apply_topk_prune(x, ops.Deferred(ops.choose_topk_prune, (score, k)), fuse)
    other = own.flip(0)
    choice = ops.choose_topk_prune(score, k, recorded=other)
    tokens, used = ops.apply_topk_prune(x, choice, fuse)
    assert torch.equal(used, other) and torch.equal(tokens[:, 1:1 + k], reference.gather_tokens(x[:, 1:], other))
    [(what, scores, chosen)] = choice.decisions()
    assert what == "kept tokens" and torch.equal(scores[:, 0], score) and torch.equal(chosen[:, 0], other)


PARAMS = {
    "evit": dict(locations=(1, 3)),
    "evovit": dict(stages=(2, 4)),
    "diffrate": dict(prune_kept=[40, 35, 30, 28, 26, 24], merge_kept=[38, 33, 29, 27, 25, 22]),
    "tome": dict(r=8),
}
NODES = {"evit": {"TopKPrune": 2}, "evovit": {"EvoViTSelect": 2, "EvoViTRestore": 2},
         "diffrate": {"DiffRateReduce": 6}, "tome": {"ToMeMerge": 6}}


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_plugin_lowering(tmp_path, method):
    """One plugin node per op per block, attributes from the contract; in onnxruntime (plugin nodes on the
    reference) it computes what PyTorch computes, and so does the model called through the custom ops."""
    torch.manual_seed(0)
    model = apply_method(timm.create_model("test_vit").eval(), method, **PARAMS[method])
    path = export_onnx(model, tmp_path / "plugins.onnx", 160, batch=(1, 2, 4), lowering="plugin")
    graph = onnx.load(str(path), load_external_data=False)
    plugins = [n for n in graph.graph.node if n.domain == contracts.DOMAIN]
    assert collections.Counter(n.op_type for n in plugins) == NODES[method]
    for node in plugins:
        contract = contracts.by_plugin(node.op_type)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert set(attrs) == {*contract.attributes, "plugin_version", "plugin_namespace"}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"exporter"
    x = torch.randn(3, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
        with ops.lowering("plugin"):  # eager: every token op through torch.ops.exporter
            through_ops = model(x)
    torch.testing.assert_close(through_ops, want, rtol=0, atol=0)
    (got,) = ort.run(op_reference.session(path, 2), x.numpy())
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=1e-4)
    # asked for, the plugin nodes also hand over every choice's scores (for measuring a graph's own fp16 error):
    # PyTorch's, in the order made, from the tokens onnxruntime computed
    made: list = []
    with torch.no_grad():
        model.forward_traced(x, None, made)
    logits, *scores = onnx_runner(path, 2, scores=True)(x.numpy())
    assert len(scores) == len(made) > 0 and logits.shape == tuple(want.shape)
    for got_scores, (_, _, want_scores, _) in zip(scores, made):
        torch.testing.assert_close(torch.from_numpy(got_scores), want_scores.float(), rtol=0, atol=1e-4)
    assert len(onnx_runner(path, 2)(x.numpy())) == 1  # not asked: logits only


@pytest.mark.parametrize("name", ops.OPS)
def test_cuda_dispatches_to_the_fused_kernel(name, monkeypatch):
    """On CUDA tensors every op runs `exporter.ops.kernels.<name>`: its CUDA kernel is registered and calls
    that function (checked with the function replaced by a probe: CI has no GPU)."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"exporter::{name}", "CUDA")
    from exporter.ops import kernels

    calls = []
    monkeypatch.setattr(kernels, name, lambda *args: calls.append(args) or getattr(reference, name)(*args))
    args = inputs(name)
    ops._fused(name)(*args)  # what the CUDA dispatch key runs
    assert calls and calls[0][0] is args[0]
