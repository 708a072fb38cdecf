"""Ahead-of-time build of the fused kernels: cubins per architecture in one C++ source.

    python -m exporter.ops.aot --out DIR [--archs 80,86,87,89,90,100,120] [--jobs N]

writes DIR/kernels.cpp: every variant of `config.all_variants()` (each op's decision and movement
kernels, per token dtype, generic and aligned) compiled by `triton.compile` for each architecture (no
GPU needed), embedded as byte strings, plus the launchers declared in plugins/common/kernels.h
(`kernels/launchers.cpp.in`). An aligned variant is compiled as the JIT specialises a launch whose
C % 16 == 0 and pointers are 16-byte aligned (`tt.divisibility` 16 on `Kernel.aligned`); the launchers
pick it when the actual sizes and pointers allow, else the generic one.
Compile it with `g++ -std=c++17 -O2 -fPIC -shared -I plugins/common kernels.cpp -ldl`: the library
does not link libcuda (it is dlopen'ed at the first launch).

Why not triton/tools/compile.py: it asks the driver for a target even when given one, and writes a
C file per kernel that links libcuda and exits the process on a CUDA error. The launch ABI it
encodes is checked here instead: each kernel's PTX entry must take exactly its non-constexpr
parameters plus Triton's two scratch pointers, and need no global or profile scratch.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

from .kernels import config

DEFAULT_ARCHS = (80, 86, 87, 89, 90, 100, 120)
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
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=config.launch_options(kernel.name))
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


def _enum(kernel: str) -> str:
    return "k" + "".join(p.capitalize() for p in kernel.removesuffix("_kernel").split("_"))


def render(compiled: list[dict], archs: list[int]) -> str:
    """kernels.cpp: cubin tables + the static launchers."""
    names = list(config.KERNELS)
    lines = [
        "// Generated by `python -m exporter.ops.aot`: do not edit. Fused token-op kernels (Triton cubins)",
        "// and the C launchers of plugins/common/kernels.h; see exporter/ops/kernels/launchers.cpp.in.",
        "#include <dlfcn.h>", "", "#include <cstddef>", "#include <cstdint>", "#include <cstdlib>", "#include <mutex>", "#include <vector>", "",
        '#include "kernels.h"', "", "namespace {", "",
        "enum Kernel { " + ", ".join(f"{_enum(k)} = {i}" for i, k in enumerate(names)) + " };",
        f"constexpr int kMoveRows = {config.MOVE_ROWS};",
        f"constexpr int kMoveC = {config.MOVE_C};",
        f"constexpr int kSelectTile = {config.KERNELS['select_decide_kernel'].constexprs['BLOCK_I']};",
        f"constexpr int kHiloRows = {config.HILO_ROWS};",
        f"constexpr int kNumArchs = {len(archs)};",
        "const int kArchs[kNumArchs] = {" + ", ".join(map(str, archs)) + "};",
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
    return [(v.kernel, v.dtype, v.aligned, arch) for arch in archs for v in (variants or config.all_variants())]


def compile_all(keys: list[tuple], jobs: int = 0, line_info: bool = False) -> list[dict]:
    """`compile_variant(*key)` for each key, in `jobs` processes (default: the CPUs, at most 16)."""
    jobs = jobs or min(len(os.sched_getaffinity(0)), 16, len(keys))
    # fresh (spawned) compiler processes in compiled mode: this one's triton may be the interpreter's
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_compiled_mode) as pool:
        return list(pool.map(compile_variant, *zip(*keys), [line_info] * len(keys)))


def build(out: Path, archs: list[int], variants: Optional[list] = None, jobs: int = 0) -> Path:
    """Compile `variants` (default: all) for every architecture in `jobs` processes and write
    out/kernels.cpp; returns its path."""
    compiled = compile_all(variant_keys(archs, variants), jobs)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "kernels.cpp"
    path.write_text(render(compiled, list(archs)))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.ops.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for kernels.cpp")
    parser.add_argument("--archs", default=",".join(map(str, DEFAULT_ARCHS)),
                        help="compute capabilities, e.g. 87,89,90,100,120 (sm_90 and later build Triton's 'a' targets)")
    parser.add_argument("--jobs", type=int, default=0, help="compiler processes (default: the CPUs, at most 16)")
    args = parser.parse_args(argv)
    archs = sorted({int(a) for a in args.archs.split(",")})
    path = build(args.out, archs, jobs=args.jobs)
    print(f"{path}: {len(archs)} architectures; header {HEADER}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
