# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter perf`: the static GPU-time estimate of a reduced model (`exporter.ops.perf`), from its
compiled kernels, without a GPU: one table per batch size, or `--json`."""
from __future__ import annotations

import functools
import json
from typing import Optional

from rich.console import Console
from rich.table import Table

from ..methods import apply_method
from ..methods.flops import count_gmacs
from ..models import create_model, input_size
from ..ops import perf


def models(model_name: str, method: str, params: dict, img_size: Optional[int]):
    """(dense, reduced), random weights: what `perf.analyse` rebuilds for each recording (module-level, so the
    tracing process can unpickle it)."""
    dense = create_model(model_name, "random", 0, img_size)
    return dense, apply_method(dense, method, **params)


def run(out: Console, model_name: str, method: str, params: dict, img_size: Optional[int], batches: list[int],
        arch: str, precision: str, assumptions: perf.Model, jobs: int, as_json: bool) -> None:
    build = functools.partial(models, model_name, method, params, img_size)
    dense, reduced = build()
    size = input_size(dense)
    about = {"model": model_name, "method": method, "params": getattr(reduced, "params", params),
             "schedule": getattr(reduced, "schedule", None), "depth": len(getattr(dense, "blocks", ())) or None}
    analysis = perf.analyse(build, about, size, (count_gmacs(dense, size), count_gmacs(reduced, size)), arch,
                            precision, jobs)
    results = [perf.estimate(analysis, b, assumptions) for b in batches]
    if as_json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=1, default=str))
        return
    for result in results:
        table(result, out)


def table(result: dict, console: Console) -> None:
    """One batch's estimate: a row per kernel of each token op, then the whole forward against dense."""
    gpu = result["gpu"]
    console.print(f"{result['model']} {result['method']} {result['params'] or ''} batch {result['batch']} "
                  f"{result['precision']} on {gpu['name']} ({result['arch']}): {result['estimate']}", markup=False)
    t = Table("#", "op", "tokens", "kernel", "variant", "regs", "stack", "blocks/SM", "waves", "LDG.128",
              "instr/prog", "memory µs", "issue µs", "estimate µs", "standard ops µs")
    for r in result["ops"]:
        for n, k in enumerate(r["kernels"]):
            first = n == 0
            t.add_row(str(r["index"]) if first else "", r["op"] if first else "",
                      f"{r['tokens'][0]}→{r['tokens'][1]}" if first else "",
                      k["kernel"].removesuffix("_kernel"), " ".join(map(str, k["variant"][1:])),
                      str(k["registers"]), str(k["stack"]),
                      f"{k['blocks_per_sm']} ({k['limited_by']})", str(k["waves"]), str(k["ldg128"]),
                      str(k["instructions_per_program"]),
                      f"{r['memory_us']:.1f}" if first else "", f"{k['issue_us']:.1f}",
                      f"{r['estimate_us']:.1f}" if first else "", f"{r['standard_us']:.1f}" if first else "")
    console.print(t)
    a = result["assumptions"]
    console.print(
        f"dense forward {result['dense_us']:.0f} µs"
        + (f" ({result['dense_block_us']:.1f} µs a block)" if result["dense_block_us"] else "") + "; reduced: "
        f"{result['reduced_us']:.0f} µs with the fused kernels, {result['reduced_standard_ops_us']:.0f} µs with standard "
        f"ops. Speedup {result['speedup']:.2f}x fused ({result['speedup_standard_ops']:.2f}x standard ops) vs FLOPs "
        f"ratio {result['flops_ratio']:.2f}x ({result['speedup'] / result['flops_ratio']:.2f} of it).\n"
        f"Assumed: GEMMs at {a['gemm_efficiency']:.0%} and attention at {a['attention_efficiency']:.0%} of "
        f"{gpu['tensor_tflops'] if result['precision'] == 'fp16' else gpu['fp32_tflops']} TFLOPS, "
        f"{gpu['dram_gbs']:.0f} GB/s, {gpu['sms']} SMs at {gpu['clock_ghz']} GHz issuing 4 warp-instructions a clock "
        f"({gpu['source']}).", markup=False)
