# SPDX-License-Identifier: Apache-2.0
"""Ahead-of-time build of the fused kernels: cubins per architecture in one C++ source.

    python -m exporter.ops.aot --out DIR [--archs 80,86,87,89,90,100,120] [--ops tome_merge,...]
                               [--dtypes fp16] [--jobs N]

writes DIR/kernels.cpp: the variants the ops need (default: every variant of `config.all_variants()`:
each op's decision and movement kernels, per token dtype, generic and aligned) compiled by
`triton.compile` for each architecture (no GPU needed), embedded as byte strings, plus the launchers
declared in plugins/common/kernels.h (`kernels/launchers.cpp.in`) and what the library serves
(`served`; a launch of anything else fails with CUDA_ERROR_NO_BINARY_FOR_GPU and a message).

An aligned variant is compiled as the JIT specialises a launch whose C % 16 == 0 and pointers are 16-byte
aligned (`tt.divisibility` 16 on `Kernel.aligned`); the launchers pick it when the actual sizes and pointers
allow, else the generic one. Compile it with `g++ -std=c++17 -O2 -fPIC -shared -I plugins/common kernels.cpp
-ldl`: the library does not link libcuda (it is dlopen'ed at the first launch).

Why not triton/tools/compile.py: it asks the driver for a target even when given one, and writes a
C file per kernel that links libcuda and exits the process on a CUDA error. The launch ABI it
encodes is checked here instead: each kernel's PTX entry must take exactly its non-constexpr
parameters plus Triton's two scratch pointers, and need no global or profile scratch.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

from .kernels import config

# A100, RTX 30xx/A10, Jetson Orin, Ada (RTX 40xx, L4, L40), Hopper, Blackwell datacenter, Blackwell RTX.
# CUDA runs a cubin on its own compute capability and, below 9.0, on later minors of its major (an sm_80 cubin
# runs on 8.6/8.7/8.9); sm_90 and later are built as Triton's arch-specific 'a' targets, which run on
# exactly their own. 8.6, 8.7 and 8.9 still get cubins of their own: ptxas schedules and allocates registers
# per target (diffrate_decide fp32 has an 8-byte stack frame for sm_80, none for 8.6/8.7/8.9), and a cubin
# costs ~1 s of CPU. No PTX is embedded: Triton's PTX for 9.0+ is 'a' PTX, which the driver does not JIT onto
# other GPUs, so it would be a fallback for 8.x only.
DEFAULT_ARCHS = (80, 86, 87, 89, 90, 100, 120)
# Compute capabilities a library may be built for (Triton 3.8 compiles every kernel for each; an unknown one
# aborts its compiler): the defaults, Blackwell B300 (10.3), Jetson Thor (11.0) and GB10 (12.1).
ARCHS = (80, 86, 87, 89, 90, 100, 103, 110, 120, 121)
HEADER = Path(__file__).resolve().parents[1] / "plugins" / "common" / "kernels.h"


def _signature(kernel: config.Kernel, fn, dtype) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in kernel.pointers:
            sig[name] = "*" + (dtype if kernel.pointers[name] == "T" else kernel.pointers[name])
        elif name in kernel.params:
            sig[name] = "i32"
        else:
            sig[name] = "constexpr"
    return sig


def _jit_function(kernel: config.Kernel):
    """The kernel's JIT function: from _triton.py, or from its own module (kernels/<module>.py, whose
    `jit_kernel()` decorates it in compiled mode)."""
    import importlib

    module = importlib.import_module(f"{__package__}.kernels.{kernel.module}")
    return getattr(module, kernel.name) if kernel.module == "_triton" else module.jit_kernel()


def launch_signature(kernel: str, dtype: Optional[str], aligned: bool, arch: int) -> tuple[str, Optional[str], dict]:
    """(kernel function, token dtype or None for a kernel reading no tokens, constexprs) of a variant: what a
    launch of it passes, so a traced launch (exporter.ops.perf) finds its variant without compiling. The
    aligned and generic variants of a kernel share it (`variant_keys` lists the aligned one first)."""
    return kernel, dtype, config.constexprs(kernel)


def compile_variant(kernel: str, dtype: Optional[str], aligned: bool, arch: int, line_info: bool = False) -> dict:
    """One cubin, the variant (`config.Variant` fields) of `kernel` for `arch`, and what its launch needs;
    raises if its ABI is not what launchers.cpp.in passes. `line_info`: keep the source line table (for
    exporter.ops.perf; the library's cubins go without)."""
    variant = config.Variant(kernel, dtype, aligned)
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    knobs.compilation.disable_line_info = not line_info  # line tables tripled the cubins
    kernel = config.KERNELS[variant.kernel]
    fn = _jit_function(kernel)
    sig = _signature(kernel, fn, variant.dtype)
    params = tuple(n for n in fn.arg_names if sig[n] != "constexpr")
    if params != kernel.params:
        raise RuntimeError(f"{kernel.name} takes {params}, config.KERNELS says {kernel.params}")
    # what the JIT derives for C % 16 == 0 and 16-byte aligned pointers: 128-bit fp16 rows
    attrs = {(fn.arg_names.index(p),): [["tt.divisibility", 16]] for p in kernel.aligned} if variant.aligned else {}
    source = ASTSource(fn=fn, signature=sig, constexprs=config.constexprs(kernel.name), attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=config.launch_options(kernel.name, variant.aligned))
    md = compiled.metadata
    if md.global_scratch_size or md.profile_scratch_size or md.num_ctas != 1 or md.launch_cooperative_grid or md.launch_pdl:
        raise RuntimeError(f"{kernel.name}: needs scratch, clusters, cooperative or PDL launch (not supported by the launchers)")
    entry = re.search(r"\.entry\s+" + re.escape(md.name) + r"\s*\((.*?)\)", compiled.asm["ptx"], re.S)
    if entry is None or entry.group(1).count(".param") != len(params) + 2:
        raise RuntimeError(f"{kernel.name}: PTX entry does not take {len(params)} parameters + 2 scratch pointers")
    return {"variant": variant, "kernel": variant.kernel, "role": kernel.role, "dtype": variant.dtype,
            "aligned": variant.aligned, "arch": arch, "name": md.name, "shared": md.shared, "warps": md.num_warps,
            "cubin": compiled.asm["cubin"]}


def _bytes_literal(data: bytes, width: int = 100) -> str:
    """`data` as adjacent C string literals (octal escapes; compiles far faster than a brace list)."""
    out, line = [], []
    size = 0
    for byte in data:
        ch = chr(byte)
        piece = ch if 32 <= byte < 127 and ch not in '"\\?' and not ch.isdigit() else f"\\{byte:03o}"
        line.append(piece)
        size += len(piece)
        if size >= width:
            out.append('"' + "".join(line) + '"')
            line, size = [], 0
    if line:
        out.append('"' + "".join(line) + '"')
    return "\n".join(out)


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _enum(kernel: str) -> str:
    return "k" + "".join(p.capitalize() for p in kernel.removesuffix("_kernel").split("_"))


def render(compiled: list[dict], archs: list[int]) -> str:
    """kernels.cpp: cubin tables + the static launchers."""
    names = list(config.KERNELS)
    serves = served([c["variant"] for c in compiled], archs)
    lines = [
        "// Generated by `python -m exporter.ops.aot`: do not edit. Fused token-op kernels (Triton cubins)",
        "// and the C launchers of plugins/common/kernels.h; see exporter/ops/kernels/launchers.cpp.in.",
        "#include <dlfcn.h>", "", "#include <cstddef>", "#include <cstdint>", "#include <cstdio>", "#include <cstdlib>",
        "#include <cstring>", "#include <initializer_list>", "#include <mutex>", "#include <vector>", "",
        '#include "kernels.h"', "", "namespace {", "",
        "enum Kernel { " + ", ".join(f"{_enum(k)} = {i}" for i, k in enumerate(names)) + " };",
        f"constexpr int kMoveRows = {config.MOVE_ROWS};",
        f"constexpr int kMoveC = {config.MOVE_C};",
        f"constexpr int kSelectTile = {config.KERNELS['select_decide_kernel'].constexprs['BLOCK_I']};",
        f"constexpr int kHiloRows = {config.HILO_ROWS};",
        f"constexpr int kNumArchs = {len(archs)};",
        "const int kArchs[kNumArchs] = {" + ", ".join(map(str, archs)) + "};",
        "// what this library serves (exporter.ops.aot.served): anything else is refused with 209",
        f"const char kServed[] = {_c_string(describe(serves))};",
        f"const char kServedJson[] = {_c_string(json.dumps(serves))};",
        "// one image's plan (exporter/ops/kernels/_triton.py): int32 and fp32 words for N tokens",
        "size_t plan_ints(int n) { return " + _words(config.plan_ints) + "; }",
        "size_t plan_floats(int n) { return " + _words(config.plan_floats) + "; }",
        "",
        "struct Variant {",
        "  int kernel, dtype, aligned, arch;  // dtype -1: any (reads no token tensor); arch: index into kArchs",
        "  const char* name;", "  int shared, warps;", "  const unsigned char* cubin;", "};", "",
    ]
    for i, c in enumerate(compiled):
        v = c["variant"]
        lines.append(f"// {c['name']} {v.dtype or 'any'}{' aligned' if v.aligned else ''} sm_{c['arch']}: "
                     f"{len(c['cubin'])} bytes")
        lines.append(f"alignas(8) const char kCubin{i}[] =\n{_bytes_literal(c['cubin'])};")
    lines += ["", f"constexpr int kNumVariants = {len(compiled)};", "const Variant kVariants[kNumVariants] = {"]
    for i, c in enumerate(compiled):
        v = c["variant"]
        dtype = -1 if v.dtype is None else config.DTYPES.index(v.dtype)
        lines.append(f"    {{{_enum(v.kernel)}, {dtype}, {int(v.aligned)}, {archs.index(c['arch'])}, "
                     f"\"{c['name']}\", {c['shared']}, {c['warps']}, reinterpret_cast<const unsigned char*>(kCubin{i})}},")
    lines += ["};", "", "}  // namespace", ""]
    return "\n".join(lines) + (Path(__file__).with_name("kernels") / "launchers.cpp.in").read_text()


def _words(per_image) -> str:
    """A linear `config.plan_*` function of N as C++ (checked at two points)."""
    a, b = per_image(1) - per_image(0), per_image(0)
    if per_image(1000) != a * 1000 + b:
        raise RuntimeError("plan sizes must be linear in N")
    return f"{a} * static_cast<size_t>(n) + {b}"


def _compiled_mode() -> None:
    os.environ.pop("TRITON_INTERPRET", None)


def variant_keys(archs, variants: Optional[list] = None) -> list[tuple]:
    """The arguments of `compile_variant` (kernel, dtype, aligned, arch) for `variants` (default: every
    variant, `config.all_variants`) on each architecture of `archs`."""
    variants = config.all_variants() if variants is None else variants
    return [(v.kernel, v.dtype, v.aligned, arch) for arch in archs for v in variants]


def library_variants(ops: Optional[Sequence[str]] = None, dtypes: Optional[Sequence[str]] = None) -> list[config.Variant]:
    """The variants a library serving `ops` (names of `config.OPS`) for token `dtypes` (of `config.DTYPES`)
    holds; None: all of them. A kernel reading no token tensor serves every dtype, so it is in whenever its
    op is. Raises ValueError naming an unknown op or dtype."""
    ops = list(config.OPS) if ops is None else list(dict.fromkeys(ops))
    dtypes = list(config.DTYPES) if dtypes is None else list(dict.fromkeys(dtypes))
    for what, given, known in (("op", ops, config.OPS), ("dtype", dtypes, config.DTYPES)):
        unknown = [g for g in given if g not in known]
        if unknown or not given:
            problem = f"unknown token {what} {', '.join(map(repr, unknown))}" if unknown else f"no token {what} given"
            raise ValueError(f"{problem} (the {what}s: {', '.join(known)})")
    return list(dict.fromkeys(v for op in ops for v in config.variants(op) if v.dtype in (None, *dtypes)))


def served(variants: Sequence[config.Variant], archs: Sequence[int]) -> dict:
    """What a library of `variants` for `archs` serves: {"ops": {op: [dtypes]}, "archs": [...]}; an op is
    served for a dtype when every variant it may launch for that dtype is there."""
    have = set(variants)
    ops = {op: [d for d in config.DTYPES if all(v in have for v in config.variants(op) if v.dtype in (None, d))]
           for op in config.OPS}
    return {"ops": {op: dtypes for op, dtypes in ops.items() if dtypes}, "archs": sorted(archs)}


def describe(serves: dict) -> str:
    """`served(...)` in words, e.g. "tome_merge (fp16) on sm_87, sm_90"."""
    ops = ", ".join(f"{op} ({' '.join(dtypes)})" for op, dtypes in serves["ops"].items()) or "no op"
    return f"{ops} on {', '.join(f'sm_{a}' for a in serves['archs'])}"


def compile_all(keys: list[tuple], jobs: int = 0, line_info: bool = False) -> list[dict]:
    """`compile_variant(*key)` for each key, in `jobs` processes (default: the CPUs, at most 16)."""
    jobs = jobs or min(len(os.sched_getaffinity(0)), 16, len(keys))
    # fresh (spawned) compiler processes in compiled mode: this one's triton may be the interpreter's
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_compiled_mode) as pool:
        return list(pool.map(compile_variant, *zip(*keys), [line_info] * len(keys)))


def build(out: Path, archs: list[int], variants: Optional[list] = None, jobs: int = 0,
          compile: Callable[[list[tuple], int], list[dict]] = compile_all) -> Path:
    """Compile `variants` (default: all) for every architecture in `jobs` processes and write
    out/kernels.cpp (unless it holds that text already: its build stays up to date); returns its path.
    `compile`: `compile_all` or a drop-in, e.g. `exporter.ops.kernel_cache.compile_all` (cached by content)."""
    variants = config.all_variants() if variants is None else variants
    compiled = compile(variant_keys(archs, variants), jobs)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "kernels.cpp"
    text = render(compiled, list(archs))
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.ops.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for kernels.cpp")
    parser.add_argument("--archs", default=",".join(map(str, DEFAULT_ARCHS)),
                        help="compute capabilities, e.g. 87,89,90,100,120 (sm_90 and later build Triton's 'a' targets)")
    parser.add_argument("--ops", help="the token ops it serves, e.g. tome_merge,topk_prune (default: all)")
    parser.add_argument("--dtypes", help="the token dtypes it serves: fp32, fp16 or fp32,fp16 (default: both)")
    parser.add_argument("--jobs", type=int, default=0, help="compiler processes (default: the CPUs, at most 16)")
    args = parser.parse_args(argv)
    archs = sorted({int(a) for a in args.archs.split(",")})
    unknown = sorted(set(archs) - set(ARCHS))
    if unknown:
        parser.error(f"--archs {','.join(map(str, unknown))}: not among {','.join(map(str, ARCHS))}")
    try:
        variants = library_variants(args.ops and args.ops.split(","), args.dtypes and args.dtypes.split(","))
    except ValueError as e:
        parser.error(str(e))
    path = build(args.out, archs, variants, jobs=args.jobs)
    print(f"{path}: {describe(served(variants, archs))}; header {HEADER}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
