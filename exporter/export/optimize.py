# SPDX-License-Identifier: Apache-2.0
"""The graph optimizer `torch.onnx.export(..., optimize=True)` runs, run by us: the same onnxscript passes and
rules (`onnxscript.optimizer.optimize_ir` with its defaults, then `onnxscript.rewriter.onnx_fusions.fuse`, as
torch 2.8+ calls them), found faster.

One difference in how, none in what: a rewrite rule whose pattern ends in several nodes (in onnxscript 0.7's
default set, SlicesSplit: two Slices of one tensor become one Split) is only tried on nodes its first pattern node
accepts. For such a pattern onnxscript 0.7's matcher indexes every node of the graph by op type for every node it
tries the rule on, before looking at that node: quadratic in the graph's size. On DeiT-S ToMe's debug graph
(3,478 nodes before optimizing) that was 12M node visits, two thirds of the optimizer's time and a quarter of
the export's. A node the first pattern node rejects (op type, domain, attributes) fails the match whatever the
index holds, so every graph comes out node for node the same (tests/test_optimize.py holds ours to torch's).
"""
from __future__ import annotations

import copy

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript import rewriter
from onnxscript.optimizer import _constant_folding
from onnxscript.rewriter import MatchResult, _matcher
from onnxscript.rewriter.onnx_fusions import fuse


class _FirstNodeFirst(_matcher.SimplePatternMatcher):
    """onnxscript's matcher, which for a pattern with several output nodes first asks whether `node` can be the
    first of them."""

    def match(self, model, graph_or_function, node, *, verbose=0, remove_nodes=True, tracer=None):
        if not self.pattern.has_single_output_node and not self.pattern.output_nodes[0].matches(node, MatchResult()):
            return MatchResult().fail(f"{node.op_type} cannot be the pattern's first output node.")
        return super().match(model, graph_or_function, node, verbose=verbose, remove_nodes=remove_nodes, tracer=tracer)


def _rules() -> list:
    """onnxscript's default rewrite rules, in order; each with several output nodes matched by `_FirstNodeFirst`."""
    rules = []
    for rule in rewriter._DEFAULT_REWRITE_RULES:
        if not rule._target_pattern.has_single_output_node:
            rule = copy.copy(rule)
            rule._matcher = _FirstNodeFirst(rule._target_pattern)
        rules.append(rule)
    return rules


def optimize(model: ir.Model) -> ir.Model:
    """Optimize `model` in place as `torch.onnx.export(..., optimize=True)` does (see the module docstring)."""
    limits = dict(input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                  output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT)
    ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager(
            [
                _constant_folding.FoldConstantsPass(shape_inference=True, **limits),
                rewriter.RewritePass(_rules()),
                common.RemoveUnusedNodesPass(),
                common.RemoveUnusedFunctionsPass(),
                common.RemoveUnusedOpsetsPass(),
            ],
            steps=2,
            early_stop=True,
        ),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)
    fuse(model)
    return model
