# SPDX-License-Identifier: Apache-2.0
"""A static estimate of a reduced model's GPU time, from the compiled kernels, without a GPU.

    python -m exporter perf --model deit_small_patch16_224 --method tome [--r 13] --batch 256 --arch sm_90 [--json]

(the command is `exporter/commands/perf.py`; this module takes a model-building callable, so the op layer
imports no model or method)

It is an estimate, with a stated model; a GPU measurement (benchmarks/gpu_check.sh prints both) corrects it.

What runs, and how it is found:
- The model (random weights) runs once on the meta device at the batch and precision asked, with every
  token op as its custom op (`exporter.ops.lowering("plugin")`): each aten op and each token op it calls is
  recorded with its shapes, and `scaled_dot_product_attention` as one fused attention. The token schedule
  is the method's own (`exporter.methods`), not re-derived here.
- The token ops' kernels run once more, at batch 1 on the CPU in Triton's interpreter (in a fresh process),
  on the tensors the model really passes them: each launch's kernel, grid and constexprs, and how often each
  source line executed (sys.settrace).
- Each launched kernel's variant of the AOT library (`exporter.ops.aot`) is compiled for `--arch` with its
  line table, and read (`exporter.ops.cubin`): registers, stack, shared memory, 128-bit loads, occupancy.
  Dynamic instructions per program = for each SASS instruction, the executions of its source line (its
  inlined call chain) per program; lines that never ran in the interpreter count once.

The time model (every constant is the GPU's published figure, in `GPUS`, or an assumption stated in
`Model` and settable from the command line; none is fitted to a target):
- token op: max(memory-bound minimum, issue-bound estimate). Memory: the op's input and output bytes at the
  published DRAM bandwidth. Issue: each kernel's warp-instructions on its busiest SM, in waves of the
  resident blocks (occupancy from registers, shared memory and warps), at one warp-instruction per
  scheduler per clock (4 an SM), and no more than one per resident warp: no latency, no stalls, so a lower
  bound on busy kernels. Programs scale with the batch (grid axis 0 is the image).
- GEMMs (and the patch convolution): torch's FLOP count at `gemm_efficiency` of the dense tensor-core peak
  (fp16) or of the fp32 CUDA-core peak (fp32), or their bytes at DRAM bandwidth if slower.
- attention: flash-style (no score matrix in memory): 4·N²·d FLOPs a head at `attention_efficiency` of the
  same peak, or q, k, v, bias and output bytes at DRAM bandwidth if slower.
- every other op (norms, GELU, adds, copies, casts, softmax rows): its input and output bytes at DRAM
  bandwidth. Views are free. No launch gaps (CUDA graphs), no L2 reuse between kernels.
"""
from __future__ import annotations

import collections
import math
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ExporterError


@dataclass(frozen=True)
class GPU:
    name: str
    arch: int
    sms: int
    clock_ghz: float  # the clock the issue rate is counted at
    dram_gbs: float  # GB/s
    tensor_tflops: float  # dense fp16 tensor-core peak (fp32 accumulate)
    fp32_tflops: float  # fp32 CUDA-core peak (an fp32 graph: no TF32)
    source: str


GPUS = {
    "sm_90": GPU("H100 SXM5", 90, 132, 1.98, 3350, 989.4, 66.9,
                 "NVIDIA H100 Tensor Core GPU datasheet (SXM5: 3.35 TB/s HBM3, 989.4 dense FP16 tensor TFLOPS, "
                 "66.9 FP32 TFLOPS); Hopper architecture whitepaper (132 SMs); max boost clock 1,980 MHz"),
    "sm_87": GPU("Jetson AGX Orin 64GB", 87, 16, 1.3, 204.8, 42.5, 5.3,
                 "NVIDIA Jetson AGX Orin Series Technical Brief / datasheet (2048 CUDA cores = 16 SMs at up to "
                 "1.3 GHz, 204.8 GB/s LPDDR5, 5.3 FP32 TFLOPS, 170 sparse INT8 TOPS -> 42.5 dense FP16 TFLOPS)"),
    "sm_100": GPU("B200", 100, 148, 1.965, 8000, 2250, 75,
                  "NVIDIA DGX/HGX B200 datasheet (8 TB/s HBM3e, 4.5 PFLOPS sparse = 2.25 dense FP16/BF16 tensor, "
                  "75 FP32 TFLOPS); 148 SMs and 1,965 MHz boost: public spec listings, not NVIDIA's datasheet"),
}
ISSUE_PER_SM = 4  # warp-instructions per clock: four warp schedulers an SM, one instruction each (CUDA C++ Programming Guide)


@dataclass(frozen=True)
class Model:
    """The assumptions beside the published figures."""
    gemm_efficiency: float = 0.6  # share of the tensor-core peak a large fp16 GEMM reaches (cuBLAS, K >= 384)
    attention_efficiency: float = 0.4  # share a flash-style attention reaches at head dim 64


# ---- recording what the model runs ------------------------------------------------------------------

@dataclass
class Cost:
    kind: str  # "gemm", "attention", "memory" or "token"
    name: str
    flops: float = 0.0
    bytes: float = 0.0
    tokens: tuple = ()  # token ops: (N in, N out)
    standard: list = field(default_factory=list)  # token ops: the reference's own costs (its standard ops)


def _nbytes(tree) -> int:
    import torch
    from torch.utils._pytree import tree_leaves

    return sum(t.numel() * t.element_size() for t in tree_leaves(tree) if isinstance(t, torch.Tensor))


def record(model, batch: int, dtype, img_size: tuple[int, int]) -> list[Cost]:
    """The costs of one forward of `model` at `batch` in `dtype`, on the meta device (nothing computed)."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry, sdpa_flop_count

    from .. import ops
    from . import reference

    costs: list[Cost] = []
    sink = [costs]  # the list the current op's costs go to (a token op's reference maths: its own)

    class Attention(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.nn.functional.scaled_dot_product_attention:
                q, k, v = args[:3]
                mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
                sink[-1].append(Cost("attention", "scaled_dot_product_attention",
                                     2 * sdpa_flop_count(q.shape, k.shape, v.shape),
                                     _nbytes((q, k, v, mask)) + _nbytes(q) * v.shape[-1] // q.shape[-1]))
                return q.new_empty(*q.shape[:-1], v.shape[-1])
            return func(*args, **kwargs)

    class Dispatch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func.namespace == "exporter":
                name = func.overloadpacket.__name__
                x, y = args[0], out[0] if isinstance(out, tuple) else out
                cost = Cost("token", name, bytes=_nbytes((args, out)), tokens=(x.shape[1], y.shape[1]))
                sink.append(cost.standard)
                try:
                    with torch.no_grad(), Dispatch():  # (the handler runs with this mode off)
                        getattr(reference, name)(*args)
                finally:
                    sink.pop()
                sink[-1].append(cost)
            elif func.is_view or func.overloadpacket.__name__ in ("detach", "empty", "alias"):
                pass
            elif func.overloadpacket in flop_registry:
                flops = flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
                sink[-1].append(Cost("gemm", func.overloadpacket.__name__, flops, _nbytes((args, out))))
            else:
                sink[-1].append(Cost("memory", func.overloadpacket.__name__, 0, _nbytes((args, out))))
            return out

    meta = model.to(device="meta", dtype=dtype)
    x = torch.zeros(batch, 3, *img_size, device="meta", dtype=dtype)
    with torch.no_grad(), ops.lowering("plugin"), Dispatch(), Attention():
        meta(x)
    return costs


def time_us(c: Cost, gpu: GPU, model: Model, fp16: bool) -> float:
    """The time model for one standard op (see the module docstring)."""
    peak = (gpu.tensor_tflops if fp16 else gpu.fp32_tflops) * 1e12
    memory = c.bytes / (gpu.dram_gbs * 1e9)
    if c.kind == "gemm":
        return 1e6 * max(c.flops / (peak * model.gemm_efficiency), memory)
    if c.kind == "attention":
        return 1e6 * max(c.flops / (peak * model.attention_efficiency), memory)
    if c.kind == "memory":
        return 1e6 * memory
    raise ValueError(c.kind)


# ---- tracing the token ops' kernels (interpreter, batch 1) ------------------------------------------

Chain = tuple  # ((file, line), ...) innermost first, ending in the kernel's own body


@dataclass
class Launch:
    kernel: str
    programs: int  # at batch 1
    constexprs: dict
    hits: dict  # Chain -> executions, summed over the launch's programs


def _trace_worker(build: Callable, size: tuple, precision: str) -> list[tuple[str, list[Launch]]]:
    """In a fresh process with TRITON_INTERPRET=1: every token op call of one forward at batch 1 on the CPU,
    with the kernel launches it makes (run on the same tensors, cast to `precision`)."""
    import torch
    import triton.runtime.interpreter as interpreter
    from torch.utils._python_dispatch import TorchDispatchMode

    from .. import ops
    from . import kernels

    source_dir = str(Path(kernels.__file__).resolve().parent)
    launches: list[Launch] = []
    run = interpreter.GridExecutor.__call__

    def traced(self, *args, **kwargs):
        hits: collections.Counter = collections.Counter()
        body = self.fn.__code__

        def lines(frame, event, arg):
            if event == "line":
                chain, f = [], frame
                while f is not None:
                    if f.f_code.co_filename.startswith(source_dir):
                        chain.append((os.path.realpath(f.f_code.co_filename), f.f_lineno))
                    if f.f_code is body:
                        break
                    f = f.f_back
                hits[tuple(chain)] += 1
            return lines

        sys.settrace(lambda frame, event, arg: lines if frame.f_code.co_filename.startswith(source_dir) else None)
        try:
            return run(self, *args, **kwargs)
        finally:
            sys.settrace(None)
            grid = self.grid if isinstance(self.grid, tuple) else tuple(self.grid)
            launches.append(Launch(self.fn.__name__, math.prod(grid),
                                   {k: v for k, v in kwargs.items() if k in self.constexprs}, dict(hits)))

    interpreter.GridExecutor.__call__ = traced
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[precision]
    calls = []

    class Kernels(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.namespace == "exporter":
                cast = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
                launches.clear()
                getattr(kernels, func.overloadpacket.__name__)(*cast)
                calls.append((func.overloadpacket.__name__, list(launches)))
            return out

    _, model = build()
    with torch.no_grad(), ops.lowering("plugin"), Kernels():
        model(torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)))
    return calls


def _interpreter_mode() -> None:
    os.environ["TRITON_INTERPRET"] = "1"


def trace(build: Callable, size: tuple, precision: str):
    """`_trace_worker` in a fresh process (Triton's interpreter mode is fixed per process)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_interpreter_mode) as pool:
        return pool.submit(_trace_worker, build, size, precision).result()


# ---- the kernels' estimate ----------------------------------------------------------------------------

def library_key(launch: Launch, precision: str, arch: int) -> tuple:
    """The AOT library's variant that serves `launch`: its kernel and constexprs, the token dtype (or none, for
    a kernel that reads no tokens); the first `aot.variant_keys` lists where several do (the aligned one: the
    launchers take it when C % 16 == 0 and the pointers are 16-byte aligned, as in these models)."""
    from . import aot

    for key in aot.variant_keys([arch]):
        kernel, dtype, constexprs = aot.launch_signature(*key)
        if kernel == launch.kernel and dtype in (precision, None) and constexprs == launch.constexprs:
            return key
    raise ExporterError(f"The plugin library has no sm_{arch} variant of {launch.kernel} ({precision}, "
                        f"{launch.constexprs}) for this model.",
                        "Its launch and exporter/ops/kernels/config.py disagree on the constexprs or dtype; fix the table.")


def _frame(frame: tuple) -> tuple:
    """(file name, line): a cubin from Triton's cache may name another checkout's copy of the same source."""
    return os.path.basename(frame[0]), frame[1]


def dynamic_instructions(variant, launch: Launch) -> float:
    """Instructions one program executes (per warp).

    An instruction runs as often per program as its source line ran in the interpreter (the longest traced
    suffix of its inlined call chain), but no more often than its innermost SASS loop iterates (a backward
    branch's range; its trip count is the count of the branch's own line): the compiler hoists loop-invariant
    code out of loops keeping the line it came from, and unrolls constant-trip loops into copies that each
    run once. Outside every loop an instruction runs at most once; untraced lines count once.
    """
    from .cubin import branch_target

    per_program = {tuple(map(_frame, chain)): n / launch.programs for chain, n in launch.hits.items()}
    traced = {frame for chain in per_program for frame in chain}

    def count(address: int):
        chain = tuple(f for f in map(_frame, variant.sources.get(address, ())) if f in traced)
        for start in range(len(chain)):
            if chain[start:] in per_program:
                return per_program[chain[start:]]
        return None

    loops = sorted(((branch_target(i), i.address) for i in variant.facts.issued
                    if branch_target(i) is not None and branch_target(i) < i.address), key=lambda r: r[1] - r[0])
    trips = {loop: count(loop[1]) for loop in loops}
    total = 0.0
    for i in variant.facts.issued:
        n = count(i.address)
        inner = next((loop for loop in loops if loop[0] <= i.address <= loop[1]), None)
        cap = 1.0 if inner is None else trips[inner]
        total += 1.0 if n is None else n if cap is None else min(n, cap)
    return total


def issue_us(variant, occupancy, warp_instructions: float, programs: int, gpu: GPU) -> float:
    """Issue-bound time: the busiest SM's blocks in waves of `occupancy.blocks_per_sm`, each wave at
    min(4, resident warps) warp-instructions a clock."""
    blocks = math.ceil(programs / gpu.sms)
    cycles, left = 0.0, blocks
    while left > 0:
        wave = min(left, occupancy.blocks_per_sm)
        cycles += wave * warp_instructions / min(ISSUE_PER_SM, wave * variant.warps)
        left -= wave
    return cycles / (gpu.clock_ghz * 1e3)


@dataclass
class OpRow:
    index: int
    op: str
    tokens: tuple
    kernels: list  # per launch: facts and estimate
    memory_us: float
    issue_us: float
    estimate_us: float
    standard_us: float  # the same op as standard ops (the reference's lowering), by the time model


@dataclass
class Analysis:
    """What does not depend on the batch: the model's FLOPs, its token ops' launches (traced at batch 1) and
    their compiled variants. `build` makes fresh (dense, reduced) models on the CPU (a recording moves them to
    the meta device); it must pickle (a module-level function, or a partial of one) for the tracing process."""
    build: Callable
    about: dict  # model, method, params (resolved), schedule, depth: what the result reports
    precision: str
    gpu: GPU
    size: tuple
    dense_gmacs: float
    gmacs: float
    calls: list  # (op, [Launch]) per token op call, in call order
    variants: dict  # library key -> cubin.Variant (with line info)


def analyse(build: Callable, about: dict, size: tuple, gmacs: tuple[float, float], arch: str,
            precision: str = "fp16", jobs: int = 0) -> Analysis:
    """Trace the token ops' kernels of `build()`'s reduced model and compile their variants for `arch`;
    `gmacs` is (dense, reduced)."""
    from . import cubin

    if arch not in GPUS:
        raise ExporterError(f"--arch {arch} has no published figures here.", f"Use one of {', '.join(GPUS)}.")
    gpu = GPUS[arch]
    calls = trace(build, size, precision)
    keys = sorted({library_key(launch, precision, gpu.arch) for _, launches in calls for launch in launches})
    variants = dict(zip(keys, cubin.compile_variants(keys, jobs, line_info=True))) if keys else {}
    return Analysis(build, about, precision, gpu, size, gmacs[0], gmacs[1], calls, variants)


def estimate(a: Analysis, batch: int, model: Model = Model()) -> dict:
    """The estimate at `batch`, as plain values (what --json prints)."""
    import torch

    from . import cubin

    gpu, fp16 = a.gpu, a.precision == "fp16"
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[a.precision]
    dense, reduced = a.build()
    dense_costs = record(dense, batch, dtype, a.size)  # (moves both models to the meta device: they share weights)
    dense, reduced = a.build()
    costs = record(reduced, batch, dtype, a.size)
    tokens = [c for c in costs if c.kind == "token"]
    if [c.name for c in tokens] != [name for name, _ in a.calls]:
        raise RuntimeError("the meta run and the interpreter run called different token ops")

    rows = []
    for index, (cost, (name, launches)) in enumerate(zip(tokens, a.calls)):
        kernels, issue = [], 0.0
        for launch in launches:
            v = a.variants[library_key(launch, a.precision, gpu.arch)]
            occ = cubin.occupancy(v, gpu.arch)
            per_warp = dynamic_instructions(v, launch)
            programs = launch.programs * batch
            t = issue_us(v, occ, per_warp * v.warps, programs, gpu)
            issue += t
            kernels.append({**v.facts.summary(), "variant": list(v.key), "warps": v.warps, "programs": programs,
                            "blocks_per_sm": occ.blocks_per_sm, "limited_by": occ.limited_by,
                            "waves": occ.waves(programs, gpu.sms), "instructions_per_program": round(per_warp),
                            "issue_us": t})
        memory = 1e6 * cost.bytes / (gpu.dram_gbs * 1e9)
        standard = sum(time_us(c, gpu, model, fp16) for c in cost.standard)
        rows.append(OpRow(index, name, cost.tokens, kernels, memory, issue, max(memory, issue), standard))

    def total(cs, token_time):
        return sum(time_us(c, gpu, model, fp16) for c in cs if c.kind != "token") + token_time

    # the baseline runs its own token ops (LITv2's HiLo) as standard ops
    dense_us = total(dense_costs, sum(time_us(s, gpu, model, fp16) for c in dense_costs if c.kind == "token"
                                      for s in c.standard))
    fused_us = total(costs, sum(r.estimate_us for r in rows))
    standard_us = total(costs, sum(r.standard_us for r in rows))
    return {
        "estimate": "static estimate from compiled kernels, not a measurement (see exporter/ops/perf.py)",
        "model": a.about["model"], "method": a.about["method"], "params": a.about["params"], "batch": batch,
        "precision": a.precision, "arch": f"sm_{gpu.arch}", "gpu": asdict(gpu), "assumptions": asdict(model),
        "schedule": a.about["schedule"],
        "ops": [asdict(r) for r in rows],
        "dense_us": dense_us, "dense_block_us": dense_us / a.about["depth"] if a.about["depth"] else None,
        "reduced_us": fused_us, "reduced_standard_ops_us": standard_us,
        "speedup": dense_us / fused_us, "speedup_standard_ops": dense_us / standard_us,
        "dense_gmacs": a.dense_gmacs, "gmacs": a.gmacs, "flops_ratio": a.dense_gmacs / a.gmacs,
    }
