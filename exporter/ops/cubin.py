# SPDX-License-Identifier: Apache-2.0
"""What a compiled kernel is, read from its cubin without a GPU: registers, stack, spills, shared memory,
global load/store widths, tensor-core instructions, instruction count, and how many blocks fit an SM.

The facts come from the CUDA binary utilities that Triton's wheel bundles
(`triton/backends/nvidia/bin/cuobjdump`: `--dump-resource-usage` and `-sass`), so they describe the exact
code that runs, not the Triton source. `compile_variant` compiles one kernel variant of the AOT library
(`exporter.ops.aot.compile_variant`) and reads it; `occupancy` turns the facts and the launch's warps
into blocks per SM and waves for a grid, from the per-architecture limits in `LIMITS`.

    python -m exporter.ops.cubin FILE.cubin ...      (prints the facts of every kernel in each cubin)
"""
from __future__ import annotations

import collections
import math
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

# ---- the facts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers, e.g. "LDG.E.128.CONSTANT"; the predicate (@P0) is dropped
    operands: str


@dataclass(frozen=True)
class KernelFacts:
    """One kernel (function) of a cubin."""
    name: str
    arch: str  # the SASS target, e.g. "sm_90a"
    registers: int  # per thread
    stack: int  # bytes of stack frame per thread (spills and local arrays); 0 = none
    local: int  # bytes of local memory per thread outside the stack frame
    shared: int  # static shared memory per block (bytes); Triton's is dynamic: see `Variant.dynamic_shared`
    sass: tuple[Instruction, ...] = field(repr=False)

    @property
    def opcodes(self) -> collections.Counter:
        """Base opcode (before the first '.') -> count, over the issued instructions."""
        return collections.Counter(i.opcode.split(".")[0] for i in self.issued)

    @property
    def issued(self) -> tuple[Instruction, ...]:
        """The instructions that can issue: without the NOP padding and the closing branch-to-itself."""
        return tuple(i for i in self.sass if i.opcode != "NOP" and not _self_branch(i))

    @property
    def instructions(self) -> int:
        return len(self.issued)

    @property
    def spill_stores(self) -> int:
        """STL: stores to thread-local memory (register spills or local arrays)."""
        return self.opcodes["STL"]

    @property
    def spill_loads(self) -> int:
        return self.opcodes["LDL"]

    def global_loads(self, bits: int) -> int:
        """Global loads of `bits` per thread (LDG, and LDGSTS: global -> shared copies), e.g. bits=128."""
        return sum(1 for i in self.issued if i.opcode.split(".")[0] in ("LDG", "LDGSTS") and _width(i.opcode) == bits)

    def global_stores(self, bits: int) -> int:
        return sum(1 for i in self.issued if i.opcode.split(".")[0] in ("STG", "RED", "ATOMG") and _width(i.opcode) == bits)

    @property
    def tensor_core(self) -> int:
        """Tensor-core instructions: HMMA/IMMA (sm_80+), HGMMA/QGMMA (sm_90 warpgroup), UTC*MMA (sm_100)."""
        return sum(n for op, n in self.opcodes.items() if op.endswith("MMA"))

    @property
    def barriers(self) -> int:
        return self.opcodes["BAR"]

    def summary(self) -> dict:
        """The facts as plain values (for tables and JSON)."""
        return {"kernel": self.name, "arch": self.arch, "registers": self.registers, "stack": self.stack,
                "local": self.local, "shared_static": self.shared, "spill_stores": self.spill_stores,
                "spill_loads": self.spill_loads, "ldg128": self.global_loads(128), "stg128": self.global_stores(128),
                "ldg_scalar": sum(self.global_loads(b) for b in (8, 16, 32)),
                "tensor_core": self.tensor_core, "ffma": self.opcodes["FFMA"], "barriers": self.barriers,
                "instructions": self.instructions}


_WIDTHS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}


def _width(opcode: str) -> int:
    """Bits per thread of a memory instruction: its size modifier, 32 when it has none."""
    for part in opcode.split(".")[1:]:
        if part in _WIDTHS:
            return _WIDTHS[part]
    return 32


def branch_target(i: Instruction):
    """The address a BRA jumps to, or None (not a branch, or an indirect one)."""
    m = re.fullmatch(r"0x([0-9a-f]+)", i.operands) if i.opcode.split(".")[0] == "BRA" else None
    return int(m.group(1), 16) if m else None


def _self_branch(i: Instruction) -> bool:
    return branch_target(i) == i.address


# ---- reading a cubin --------------------------------------------------------------------------------

def tool(name: str) -> Path:
    """A CUDA binary utility (cuobjdump, nvdisasm) from Triton's wheel."""
    import importlib.util

    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        raise RuntimeError("reading cubins needs triton (its wheel bundles cuobjdump): pip install triton")
    path = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / name
    if not path.is_file():
        raise RuntimeError(f"triton's wheel has no {name} at {path}")
    return path


def _run(*args) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(str(args[0])).name} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


_RESOURCES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_FUNCTION = re.compile(r"^\s*Function : (\S+)\s*$", re.M)
_ARCH = re.compile(r"code for (sm_\w+)")
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def read(cubin: Union[bytes, str, Path]) -> dict[str, KernelFacts]:
    """Kernel name -> facts, for every kernel in `cubin` (its bytes or a path)."""
    if isinstance(cubin, (bytes, bytearray)):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            return read(Path(f.name))
    path = Path(cubin)
    if not path.is_file():
        raise FileNotFoundError(f"no cubin at {path}")
    cuobjdump = tool("cuobjdump")
    resources = {m.group(1): tuple(int(g) for g in m.groups()[1:])
                 for m in _RESOURCES.finditer(_run(cuobjdump, "--dump-resource-usage", path))}
    sass = _run(cuobjdump, "-sass", path)
    arch = _ARCH.search(sass)
    starts = list(_FUNCTION.finditer(sass))
    facts = {}
    for n, m in enumerate(starts):
        body = sass[m.end(): starts[n + 1].start() if n + 1 < len(starts) else len(sass)]
        code = tuple(Instruction(int(a, 16), op, operands.strip()) for a, op, operands in _INSTRUCTION.findall(body))
        name = m.group(1)
        if name not in resources:
            raise RuntimeError(f"cuobjdump lists {name} in the SASS but not in the resource usage of {path}")
        reg, stack, shared, local = resources[name]
        facts[name] = KernelFacts(name, arch.group(1) if arch else "?", reg, stack, local, shared, code)
    if set(facts) != set(resources):
        raise RuntimeError(f"{path}: cuobjdump's SASS and resource usage list different kernels")
    return facts


# ---- compiling a variant ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One compiled kernel of the library and the launch facts its metadata adds to the cubin's."""
    key: tuple  # the arguments of exporter.ops.aot.compile_variant that made it
    warps: int
    dynamic_shared: int  # bytes per block, requested at launch (Triton's shared memory)
    facts: KernelFacts
    meta: dict = field(default_factory=dict, repr=False, compare=False)  # compile_variant's result, less the cubin
    sources: dict = field(default_factory=dict, repr=False, compare=False)  # address -> source lines (line_info)

    @property
    def arch(self) -> int:
        return int(re.match(r"sm_(\d+)", self.facts.arch).group(1))


def variant(compiled: dict, key: tuple = (), line_info: bool = False) -> Variant:
    """A `Variant` from what `aot.compile_variant` returns (its dict with `name`, `warps`, `shared`, `cubin`)."""
    facts = read(compiled["cubin"])
    if compiled["name"] not in facts:
        raise RuntimeError(f"the cubin of {compiled['name']} holds {sorted(facts)}")
    meta = {k: v for k, v in compiled.items() if k != "cubin"}
    sources = source_lines(compiled["cubin"]) if line_info else {}
    return Variant(key, compiled["warps"], compiled["shared"], facts[compiled["name"]], meta, sources)


def compile_variant(*key) -> Variant:
    """Compile one variant of the library (the arguments of `exporter.ops.aot.compile_variant`, e.g.
    op, dtype, block, arch) in this process and read its cubin. Triton must not be in interpreter mode here
    (a fresh process, or `compile_variants`)."""
    from . import aot

    return variant(aot.compile_variant(*key), tuple(key))


def compile_variants(keys: list[tuple], jobs: int = 0, line_info: bool = False) -> list[Variant]:
    """Many variants, compiled in fresh compiled-mode processes (`aot.compile_all`), read here; with
    `line_info`, each keeps its source line table and `Variant.sources` maps its instructions to lines."""
    from . import aot

    compiled = aot.compile_all(keys, jobs, line_info)
    return [variant(c, tuple(k), line_info) for k, c in zip(keys, compiled)]


Frame = tuple[str, int]  # (source file, line)


def source_lines(cubin: bytes) -> dict[int, tuple[Frame, ...]]:
    """Instruction address -> its source lines (a cubin of one kernel, as Triton writes them), innermost first (inlined calls: the callee's line, then each
    call site), from `nvdisasm --print-line-info-inline` on a cubin compiled with line info."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = _run(tool("nvdisasm"), "-gi", "-c", f.name)
    out, chain, fresh = {}, (), True
    for line in text.splitlines():
        m = re.match(r'\s*//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?', line)
        if m:
            if fresh:  # a new annotation block: the first line is the innermost frame
                chain, fresh = (), False
            if not chain:
                chain = ((m.group(1), int(m.group(2))),)
            if m.group(3):
                chain += ((m.group(3), int(m.group(4))),)
            continue
        i = re.search(r"/\*([0-9a-f]{4,})\*/", line)
        if i:
            out[int(i.group(1), 16)] = chain
            fresh = True
    return out


# ---- occupancy --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """Per-SM limits of a compute capability: NVIDIA CUDA C++ Programming Guide, "Technical Specifications
    per Compute Capability" (resident blocks, warps, 32-bit registers, shared memory per SM and per block),
    and the allocation units of NVIDIA's occupancy calculator (registers per warp in units of 256, shared
    memory in units of 128 bytes, 1 KB of shared memory reserved per block by CUDA on compute 8.0+)."""
    blocks: int  # resident blocks per SM
    warps: int  # resident warps per SM
    registers: int = 65536  # 32-bit registers per SM
    max_registers: int = 255  # per thread
    shared: int = 0  # bytes of shared memory per SM usable by blocks
    block_shared: int = 0  # bytes per block at most
    register_unit: int = 256  # registers per warp are allocated in these units
    shared_unit: int = 128
    reserved_shared: int = 1024  # per block, by the CUDA runtime


KB = 1024
LIMITS = {
    80: Limits(blocks=32, warps=64, shared=164 * KB, block_shared=163 * KB),   # A100
    86: Limits(blocks=16, warps=48, shared=100 * KB, block_shared=99 * KB),    # RTX 30xx, A10
    87: Limits(blocks=16, warps=48, shared=164 * KB, block_shared=163 * KB),   # Jetson Orin
    89: Limits(blocks=24, warps=48, shared=100 * KB, block_shared=99 * KB),    # Ada
    90: Limits(blocks=32, warps=64, shared=228 * KB, block_shared=227 * KB),   # H100, H200
    100: Limits(blocks=32, warps=64, shared=228 * KB, block_shared=227 * KB),  # B200
    120: Limits(blocks=32, warps=48, shared=100 * KB, block_shared=99 * KB),   # RTX 50xx
}


@dataclass(frozen=True)
class Occupancy:
    blocks_per_sm: int
    limited_by: str  # "registers", "shared memory", "warps" or "blocks"
    shared_per_block: int  # bytes, as allocated

    def waves(self, programs: int, sms: int) -> int:
        """Rounds of resident blocks a grid of `programs` needs on `sms` SMs."""
        return math.ceil(programs / (self.blocks_per_sm * sms))


def occupancy(v: Variant, arch: int = 0) -> Occupancy:
    """Blocks of `v` resident per SM on compute capability `arch` (default: the cubin's own)."""
    lim = LIMITS.get(arch or v.arch)
    if lim is None:
        raise KeyError(f"no SM limits for sm_{arch or v.arch}: known {sorted(LIMITS)}")
    per_warp = math.ceil(v.facts.registers * 32 / lim.register_unit) * lim.register_unit
    # Triton's shared memory is dynamic; sm_90+ cubins show CUDA's 1 KB reservation as static shared memory
    shared = v.dynamic_shared + max(v.facts.shared, lim.reserved_shared)
    shared = math.ceil(shared / lim.shared_unit) * lim.shared_unit
    if v.dynamic_shared > lim.block_shared:
        raise ValueError(f"{v.facts.name} needs {v.dynamic_shared} bytes of shared memory per block; "
                         f"sm_{arch or v.arch} allows {lim.block_shared}")
    by = {"blocks": lim.blocks, "warps": lim.warps // v.warps,
          "registers": (lim.registers // per_warp) // v.warps, "shared memory": lim.shared // shared}
    limit = min(by, key=by.get)
    return Occupancy(by[limit], limit, shared)


def main(argv=None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print(__doc__.split("\n\n")[-1].strip(), file=sys.stderr)
        return 2
    for path in paths:
        for facts in read(Path(path)).values():
            print(path, " ".join(f"{k}={v}" for k, v in facts.summary().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
