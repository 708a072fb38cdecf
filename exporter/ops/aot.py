"""Ahead-of-time build of the fused kernels: cubins per architecture in one C++ source.

    python -m exporter.ops.aot --out DIR [--archs 80,86,87,89,90,100,120] [--blocks 16,32,64,128,256] [--jobs N]

writes DIR/kernels.cpp: every kernel of `exporter.ops.kernels` (both token dtypes, every block of
`config.aot_blocks`) compiled by `triton.compile` for each architecture (no GPU needed), embedded
as byte strings, plus the launchers declared in plugins/common/kernels.h (`kernels/launchers.cpp.in`).
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

from .kernels import config

DEFAULT_ARCHS = (80, 86, 87, 89, 90, 100, 120)
DTYPES = ("fp32", "fp16")  # index = the launchers' `dtype` (0 = float32, 1 = float16)
HEADER = Path(__file__).resolve().parents[1] / "plugins" / "common" / "kernels.h"


def _signature(kernel, fn, dtype: str) -> dict[str, str]:
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
    """The kernel's JIT function: from _triton.py, or from its op's own module (kernels/<op>.py, whose
    `jit_kernel()` decorates it in compiled mode)."""
    import importlib

    from .kernels import _triton

    if hasattr(_triton, kernel.name):
        return getattr(_triton, kernel.name)
    return importlib.import_module(f"{__package__}.kernels.{kernel.op}").jit_kernel()


def launch_signature(op: str, dtype: str, block: int, arch: int) -> tuple[str, str, dict]:
    """(kernel function, token dtype, constexprs) of a variant: what a launch of it passes, so a traced launch
    (exporter.ops.perf) finds its variant without compiling."""
    return config.KERNELS[op].name, dtype, config.constexprs(op, block)


def compile_variant(op: str, dtype: str, block: int, arch: int, line_info: bool = False) -> dict:
    """One cubin and what its launch needs; raises if its ABI is not what launchers.cpp.in passes.
    `line_info`: keep the source line table (for exporter.ops.perf; the library's cubins go without)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    knobs.compilation.disable_line_info = not line_info  # line tables tripled the cubins
    kernel = config.KERNELS[op]
    fn = _jit_function(kernel)
    sig = _signature(kernel, fn, dtype)
    params = tuple(n for n in fn.arg_names if sig[n] != "constexpr")
    if params != kernel.params:
        raise RuntimeError(f"{kernel.name} takes {params}, config.KERNELS says {kernel.params}")
    warps = config.num_warps(op, block)
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=config.constexprs(op, block)),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    md = compiled.metadata
    if md.global_scratch_size or md.profile_scratch_size or md.num_ctas != 1 or md.launch_cooperative_grid or md.launch_pdl:
        raise RuntimeError(f"{kernel.name}: needs scratch, clusters, cooperative or PDL launch (not supported by the launchers)")
    entry = re.search(r"\.entry\s+" + re.escape(md.name) + r"\s*\((.*?)\)", compiled.asm["ptx"], re.S)
    if entry is None or entry.group(1).count(".param") != len(params) + 2:
        raise RuntimeError(f"{kernel.name}: PTX entry does not take {len(params)} parameters + 2 scratch pointers")
    return {"op": op, "dtype": dtype, "block": block, "arch": arch, "name": md.name, "shared": md.shared,
            "warps": md.num_warps, "cubin": compiled.asm["cubin"]}


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


def render(variants: list[dict], archs: list[int]) -> str:
    """kernels.cpp: cubin tables + the static launchers."""
    ops = list(config.KERNELS)
    enum = {op: "k" + "".join(p.capitalize() for p in op.split("_")) for op in ops}
    lines = [
        "// Generated by `python -m exporter.ops.aot`: do not edit. Fused token-op kernels (Triton cubins)",
        "// and the C launchers of plugins/common/kernels.h; see exporter/ops/kernels/launchers.cpp.in.",
        "#include <dlfcn.h>", "", "#include <cstddef>", "#include <cstdint>", "#include <cstdlib>", "#include <mutex>", "#include <vector>", "",
        '#include "kernels.h"', "", "namespace {", "",
        "enum Op { " + ", ".join(f"{enum[op]} = {i}" for i, op in enumerate(ops)) + " };",
        f"constexpr int kRestoreBlockC = {config.RESTORE_BLOCK_C};",
        f"constexpr int kHiloRows = {config.HILO_ROWS};",
        f"constexpr int kNumArchs = {len(archs)};",
        "const int kArchs[kNumArchs] = {" + ", ".join(map(str, archs)) + "};",
        "",
        "struct Variant {", "  int op, dtype, block, arch;  // arch: index into kArchs",
        "  const char* name;", "  int shared, warps;", "  const unsigned char* cubin;", "};", "",
    ]
    for i, v in enumerate(variants):
        lines.append(f"// {v['name']} {v['dtype']} block {v['block']} sm_{v['arch']}: {len(v['cubin'])} bytes")
        lines.append(f"alignas(8) const char kCubin{i}[] =\n{_bytes_literal(v['cubin'])};")
    lines += ["", f"constexpr int kNumVariants = {len(variants)};", "const Variant kVariants[kNumVariants] = {"]
    for i, v in enumerate(variants):
        lines.append(f"    {{{enum[v['op']]}, {DTYPES.index(v['dtype'])}, {v['block']}, {archs.index(v['arch'])}, "
                     f"\"{v['name']}\", {v['shared']}, {v['warps']}, reinterpret_cast<const unsigned char*>(kCubin{i})}},")
    lines += ["};", "", "}  // namespace", ""]
    return "\n".join(lines) + (Path(__file__).with_name("kernels") / "launchers.cpp.in").read_text()


def _compiled_mode() -> None:
    os.environ.pop("TRITON_INTERPRET", None)


def variant_keys(archs, blocks: tuple[int, ...] = config.AOT_BLOCKS) -> list[tuple]:
    """The arguments of `compile_variant` for every variant the library holds for `archs`."""
    return [(op, dtype, block, arch) for arch in archs for op in config.KERNELS for dtype in DTYPES
            for block in config.aot_blocks(op, blocks)]


def compile_all(keys: list[tuple], jobs: int = 0, line_info: bool = False) -> list[dict]:
    """`compile_variant(*key)` for each key, in `jobs` processes (default: the CPUs, at most 16)."""
    jobs = jobs or min(len(os.sched_getaffinity(0)), 16, len(keys))
    # fresh (spawned) compiler processes in compiled mode: this one's triton may be the interpreter's
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_compiled_mode) as pool:
        return list(pool.map(compile_variant, *zip(*keys), [line_info] * len(keys)))


def build(out: Path, archs: list[int], blocks: tuple[int, ...] = config.AOT_BLOCKS, jobs: int = 0) -> Path:
    """Compile every variant (in `jobs` processes) and write out/kernels.cpp; returns its path."""
    variants = compile_all(variant_keys(archs, blocks), jobs)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "kernels.cpp"
    path.write_text(render(variants, list(archs)))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.ops.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for kernels.cpp")
    parser.add_argument("--archs", default=",".join(map(str, DEFAULT_ARCHS)),
                        help="compute capabilities, e.g. 87,89,90,100,120 (sm_90 and later build Triton's 'a' targets)")
    parser.add_argument("--blocks", default=",".join(map(str, config.AOT_BLOCKS)),
                        help="token blocks to compile (powers of two >= 16); the largest bounds N")
    parser.add_argument("--jobs", type=int, default=0, help="compiler processes (default: the CPUs, at most 16)")
    args = parser.parse_args(argv)
    archs = sorted({int(a) for a in args.archs.split(",")})
    blocks = tuple(sorted({int(b) for b in args.blocks.split(",")}))
    if any(b < config.MIN_BLOCK or b & (b - 1) for b in blocks):
        parser.error(f"--blocks must be powers of two >= {config.MIN_BLOCK}")
    path = build(args.out, archs, blocks, args.jobs)
    print(f"{path}: {len(archs)} architectures; header {HEADER}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
