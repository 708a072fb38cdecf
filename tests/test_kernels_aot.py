# SPDX-License-Identifier: Apache-2.0
"""The AOT kernel library on a machine without a GPU: generated, compiled with g++, loaded with ctypes.

Built once per session for two architectures (the cubins compile in Triton without a GPU), and once for one op
and dtype on one architecture (what it lacks is refused, naming it). The launchers
are called in subprocesses, since the driver is resolved once per process: with no driver (a clean
CUDA_ERROR_NOT_INITIALIZED, no crash) and with tests/fake_libcuda.c, which records each launch so the
cubin choice per compute capability and alignment, and each op's launches (decision, then movement:
grid, block, shared memory, parameters, workspace layout) are checked.
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.ops import aot, library as plugin_library
from exporter.ops.kernels import config

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "exporter" / "plugins" / "common" / "kernels.h"
ARCHS = [87, 90]

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("gcc") is None, reason="needs g++/gcc")


def compile_library(cpp: Path) -> tuple[Path, Path]:
    """kernels.cpp compiled with g++ (warnings are errors), and the fake driver beside it."""
    lib = cpp.with_name("libexporter_kernels.so")
    subprocess.run(["g++", "-std=c++17", "-O1", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-I", str(HEADER.parent),
                    str(cpp), "-o", str(lib), "-ldl"], check=True)
    fake = cpp.with_name("libcuda_fake.so")
    subprocess.run(["gcc", "-O1", "-fPIC", "-shared", str(ROOT / "tests" / "fake_libcuda.c"), "-o", str(fake)], check=True)
    return lib, fake


@pytest.fixture(scope="session")
def library(tmp_path_factory):
    cpp = aot.build(tmp_path_factory.mktemp("aot"), ARCHS, jobs=2)
    return *compile_library(cpp), cpp.read_text()


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """A library of topk_prune for fp32 tokens on sm_90 only, its cubins from a fresh cache."""
    out = tmp_path_factory.mktemp("subset")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(out / "cache"))
        cpp = plugin_library.generated_kernels(out, [90], aot.library_variants(["topk_prune"], ["fp32"]), jobs=2)
    return compile_library(cpp)


# Runs in a fresh process: argv = library, calls (JSON); prints each call's return code and, when the
# fake driver is loaded, what it recorded of each of the call's launches.
CALLER = r"""
import ctypes, json, os, sys
lib = ctypes.CDLL(sys.argv[1])
fake = ctypes.CDLL(os.environ["EXPORTER_LIBCUDA"]) if os.path.exists(os.environ["EXPORTER_LIBCUDA"]) else None
results = []
for name, args, sizes, params in json.loads(sys.argv[2]):
    fn = getattr(lib, name)
    text = name in ("exporter_kernels_error", "exporter_kernels_served")
    fn.restype = ctypes.c_size_t if name.endswith("_workspace") else ctypes.c_char_p if text else ctypes.c_int
    conv = [ctypes.c_void_p(a) if s == 8 else ctypes.c_int(a) for a, s in zip(args, sizes)]
    if fake:
        table = ((ctypes.c_int * 32) * 8).in_dll(fake, "fake_sizes")
        for i in range(8):
            table[i][:] = (params[i] if i < len(params) else []) + [0] * (32 - (len(params[i]) if i < len(params) else 0))
        ctypes.c_int.in_dll(fake, "fake_logged").value = 0
    rc = fn(*conv)
    rec = {"rc": rc.decode() if text else rc}
    if fake:
        rec["loads"] = ctypes.c_int.in_dll(fake, "fake_loads").value
        rec["launches"] = ctypes.c_int.in_dll(fake, "fake_launches").value
        rec["shared_attr"] = ctypes.c_int.in_dll(fake, "fake_shared_attr").value
        rec["log"] = []
        for i in range(min(ctypes.c_int.in_dll(fake, "fake_logged").value, len(params))):
            raw = ((ctypes.c_ubyte * 256) * 8).in_dll(fake, "fake_params")[i]
            rec["log"].append({
                "function": ((ctypes.c_char * 64) * 8).in_dll(fake, "fake_function")[i].value.decode(),
                "image": (ctypes.c_ulonglong * 8).in_dll(fake, "fake_image")[i],
                "launch": list(((ctypes.c_uint * 7) * 8).in_dll(fake, "fake_launch")[i]),
                "params": [int.from_bytes(bytes(raw[8 * j: 8 * j + s]), "little", signed=True)
                           for j, s in enumerate(params[i])]})
    results.append(rec)
print(json.dumps(results))
"""

P, I = 8, 4  # parameter sizes: device pointer, int
WS = 0x100000  # the workspace's fake device address
COMBINE = [P] * 4 + [I] * 4 + [P, P]  # x, plan_i, plan_f, out, N, C, M, norm + Triton's two scratch pointers


def call(library, driver, calls, cc=0):
    """Run `calls` [(function, args, their sizes, each launch's parameter sizes)] in a fresh process with
    `driver` as libcuda."""
    env = {"EXPORTER_LIBCUDA": str(driver), "FAKE_CC": str(cc), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", CALLER, str(library), json.dumps(calls)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def topk(B=2, N=17, C=16, k=4, fuse=1, dtype=0, x=0x1000, ws=WS):
    """exporter_topk_prune's arguments (fake device pointers) and their sizes."""
    args = [0x10, dtype, B, N, C, k, fuse, x, 0x2000, 0x3000, 0x4000, ws]
    return ["exporter_topk_prune", args, [P, I, I, I, I, I, I, P, P, P, P, P], [[P] * 4 + [I] * 3 + [P, P], COMBINE]]


def plan(B, N):
    """The plan pointers (int32 words, then fp32 words) the launchers carve from the workspace at WS."""
    return [WS, WS + -(-B * config.plan_ints(N) * 4 // 256) * 256]


def variant(source, kernel, dtype, aligned, arch_index):
    """(shared, warps, cubin bytes) of a variant from the generated table and its comment."""
    m = re.search(r"\{k%s, %d, %d, %d, \"\w+\", (\d+), (\d+), reinterpret_cast<const unsigned char\*>\(kCubin(\d+)\)"
                  % (kernel, dtype, aligned, arch_index), source)
    assert m, f"no variant {kernel} {dtype} {aligned} {arch_index}"
    size = re.search(r"(\d+) bytes\nalignas\(8\) const char kCubin%s\[\]" % m.group(3), source)
    return int(m.group(1)), int(m.group(2)), int(size.group(1))


def tiles(rows, C):
    """A movement grid's row and channel tiles (the launchers' kMoveRows and kMoveC come from config)."""
    return [-(-rows // config.MOVE_ROWS), -(-C // config.MOVE_C)]


def test_exports_the_header_and_needs_no_libcuda(library):
    lib, _, _ = library
    declared = set(re.findall(r"\b(exporter_\w+)\s*\(", HEADER.read_text()))
    assert len(declared) == 15  # six launchers, six workspace queries, the preload, what it serves, the last error
    defined = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    assert declared <= {line.split()[-1] for line in defined.splitlines()}
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    assert not re.search(r"\bcu[A-Z]", undefined), "driver functions must be resolved with dlsym, not linked"
    needed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "libcuda" not in needed


def test_no_driver_is_an_error_not_a_crash(library):
    lib, _, _ = library
    results = call(lib, "/nonexistent/libcuda.so.1", [
        topk(), topk(k=16), topk(ws=0),  # valid; then k leaves no patch out; then no workspace
        ["exporter_topk_prune_workspace", [0, 2, 17, 16, 4, 1], [I] * 6, []],
        ["exporter_hilo_attention_workspace", [0, 2, 14, 14, 32, 2, 2], [I] * 7, []],
    ])
    # CUDA_ERROR_NOT_INITIALIZED, CUDA_ERROR_INVALID_VALUE twice, two plans of 17 tokens (256-byte parts), none
    assert [r["rc"] for r in results] == [3, 1, 1, 512 + 512, 0]


def test_launch_abi_on_a_fake_sm90(library):
    """Each op: its decision, then its movement, sharing the workspace's plan; aligned variants only when
    C % 16 == 0 and the pointers are 16-byte aligned; any token count."""
    lib, fake, source = library
    arch = ARCHS.index(90)
    tome = ["exporter_tome_merge", [0x10, 1, 3, 31, 20, 16, 5, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000, WS],
            [P, I, I, I, I, I, I, P, P, P, P, P, P, P, P], [[P] * 7 + [I] * 3 + [P, P], COMBINE]]
    restore = ["exporter_evovit_restore", [0x10, 0, 2, 17, 130, 5, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, WS],
               [P, I, I, I, I, I, P, P, P, P, P, P], [[P] * 3 + [I] * 2 + [P, P], [P] * 6 + [I] * 3 + [P, P]]]
    diffrate = ["exporter_diffrate_reduce", [0x10, 1, 2, 577, 384, 500, 200, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000,
                                             0x6000, 0x7000, WS],
                [P, I, I, I, I, I, I] + [P] * 8, [[P] * 8 + [I] * 4 + [P, P], COMBINE]]
    first, again, rest, merge, unaligned, large = call(
        lib, fake, [tome, tome, restore, diffrate, topk(x=0x1008), topk(N=1025, k=4, C=48)], cc=90)
    assert all(r["rc"] == 0 for r in (first, again, rest, merge, unaligned, large))

    decide, move = first["log"]
    assert decide["function"] == "tome_decide_kernel" and move["function"] == "combine_kernel"
    shared, warps, size = variant(source, "TomeDecide", 1, 1, arch)  # Cm = 16, metric aligned
    assert decide["launch"] == [3, 1, 1, 32 * warps, 1, 1, shared] and decide["image"] == size
    # size, metric, size_out, src, dst, the plan, N, Cm, r, then Triton's two scratch pointers
    assert decide["params"] == [0x2000, 0x3000, 0x5000, 0x6000, 0x7000, *plan(3, 31), 31, 16, 5, 0, 0]
    shared, warps, size = variant(source, "Combine", 1, 0, arch)  # C = 20: the generic variant
    assert move["launch"] == [3, *tiles(26, 20), 32 * warps, 1, 1, shared] and move["image"] == size  # (B, 26 rows, C = 20)
    assert move["params"] == [0x1000, *plan(3, 31), 0x4000, 31, 20, 26, 1, 0, 0]
    assert again["loads"] == first["loads"] == 2 and again["launches"] == 4, "a module is loaded once per context"

    decide, move = rest["log"]
    assert decide["function"] == "restore_decide_kernel" and decide["launch"][:3] == [2, 1, 1]
    assert decide["params"] == [0x4000, *plan(2, 17), 17, 5, 0, 0]
    assert move["function"] == "restore_move_kernel" and move["launch"][:3] == [2, *tiles(17, 130)]  # (B, 17 rows, C = 130)
    assert move["params"] == [0x1000, 0x2000, 0x3000, *plan(2, 17), 0x5000, 17, 130, 5, 0, 0]
    assert move["image"] == variant(source, "RestoreMove", 0, 0, arch)[2]

    decide, move = merge["log"]  # ViT-B/16 at 384 px: 577 tokens
    assert decide["image"] == variant(source, "DiffrateDecide", 1, 1, arch)[2]
    assert decide["params"] == [0x1000, 0x2000, 0x3000, 0x5000, 0x6000, 0x7000, *plan(2, 577), 577, 384, 500, 200, 0, 0]
    assert move["launch"][:3] == [2, *tiles(200, 384)] and move["image"] == variant(source, "Combine", 1, 1, arch)[2]
    assert move["params"] == [0x1000, *plan(2, 577), 0x4000, 577, 384, 200, 1, 0, 0]

    decide, move = unaligned["log"]  # x at 8 bytes past 16: the generic movement
    assert decide["function"] == "select_decide_kernel" and decide["launch"][:3] == [2, 1, 1]
    assert decide["params"] == [0x2000, 0x4000, *plan(2, 17), 17, 4, 1, 0, 0]
    assert move["image"] == variant(source, "Combine", 0, 0, arch)[2]
    assert move["params"] == [0x1008, *plan(2, 17), 0x3000, 17, 16, 6, 0, 0, 0]  # norm 0: a plain sum
    decide, move = large["log"]
    assert decide["launch"][:3] == [2, -(-1026 // config.DECIDE["BLOCK_I"]), 1]
    assert move["image"] == variant(source, "Combine", 0, 1, arch)[2]
    assert variant(source, "Combine", 0, 1, arch)[2] != variant(source, "Combine", 0, 0, arch)[2], \
        "aligned and generic cubins must differ for the image sizes to tell them apart"


def test_hilo_attention_launch_abi(library):
    """A 14x14 map in 2x2 windows (49 windows, 8 a program: 7 programs) of 2 heads of 16 channels, 3 images:
    grid (7, 3 * 2), the aligned variant; a head dim of 24 the generic one; any head dim; windows over 5x5 refused."""
    lib, fake, source = library

    def hilo(C=32, window=2, heads=2):
        args = [0x10, 1, 3, 14, 14, C, window, heads, 0x1000, 0x2000, 0x3000, 0]
        return ["exporter_hilo_attention", args, [P] + [I] * 7 + [P] * 4, [[P] * 3 + [I] * 6 + [P, P]]]

    ok, odd, wide, big = call(lib, fake, [hilo(), hilo(C=48), hilo(window=6), hilo(C=512)], cc=90)
    assert ok["rc"] == 0 and ok["log"][0]["function"] == "hilo_attention_kernel"
    shared, warps, size = variant(source, "HiloAttention", 1, 1, ARCHS.index(90))
    assert ok["log"][0]["launch"] == [7, 6, 1, 32 * warps, 1, 1, shared] and ok["log"][0]["image"] == size
    # qkv, pad, out, H, W, S, HEADS, HD, WINDOWS, then Triton's two scratch pointers
    assert ok["log"][0]["params"] == [0x1000, 0x2000, 0x3000, 14, 14, 2, 2, 16, 8, 0, 0]
    assert odd["rc"] == 0 and odd["log"][0]["image"] == variant(source, "HiloAttention", 1, 0, ARCHS.index(90))[2]
    assert wide["rc"] == 1 and big["rc"] == 0 and big["log"][0]["params"][7] == 256


def test_preload_loads_every_kernel_of_the_gpu_once(library):
    """After the preload no launch loads a module (a load inside a CUDA-graph capture would fail)."""
    lib, fake, source = library
    variants = len(re.findall(r"\{k\w+, -?\d+, \d+, %d, \"" % ARCHS.index(90), source))
    preload, launch = call(lib, fake, [["exporter_kernels_preload", [], [], []], topk()], cc=90)
    assert variants == len(config.all_variants())
    assert preload["rc"] == 0 and preload["loads"] == variants
    assert launch["rc"] == 0 and launch["loads"] == variants and launch["launches"] == 2
    (missing,) = call(lib, fake, [["exporter_kernels_preload", [], [], []]], cc=100)
    assert missing["rc"] == 209 and missing["loads"] == 0


@pytest.mark.parametrize("cc,rc", [(87, 0), (89, 0), (86, 209), (100, 209)])
def test_cubin_choice_per_compute_capability(library, cc, rc):
    """Own architecture, or a later minor of the same major below 9.0 (8.9 runs sm_87); else 209."""
    lib, fake, source = library
    (result,) = call(lib, fake, [topk()], cc=cc)
    assert result["rc"] == rc and result["launches"] == 2 * (rc == 0)
    if rc == 0:
        decide, move = result["log"]
        assert decide["params"][:7] == [0x2000, 0x4000, *plan(2, 17), 17, 4, 1]
        assert move["image"] == variant(source, "Combine", 0, 1, ARCHS.index(87))[2]


ERROR = ["exporter_kernels_error", [], [], []]


def test_a_library_refuses_what_it_was_not_built_for(subset):
    """topk_prune fp32 on sm_90 runs; fp16, another op, another architecture are each 209 with nothing launched
    (not even the decision the library has) and a sentence naming the op, the dtype and the architecture."""
    lib, fake = subset
    serves = {"ops": {"topk_prune": ["fp32"], "evovit_select": ["fp32"]}, "archs": [90]}  # the same two kernels
    hilo = ["exporter_hilo_attention", [0x10, 0, 3, 14, 14, 32, 2, 2, 0x1000, 0x2000, 0x3000, 0],
            [P] + [I] * 7 + [P] * 4, [[P] * 3 + [I] * 6 + [P, P]]]
    tome = ["exporter_tome_merge", [0x10, 0, 3, 31, 20, 16, 5, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000, WS],
            [P, I, I, I, I, I, I, P, P, P, P, P, P, P, P], []]
    (served, before, ok, fp16, fp16_error, other, other_error, fused, fused_error) = call(
        lib, fake, [["exporter_kernels_served", [], [], []], ERROR, topk(), topk(dtype=1), ERROR, tome, ERROR,
                    hilo, ERROR], cc=90)
    assert json.loads(served["rc"]) == serves == plugin_library.served(lib)
    assert before["rc"] == "" and ok["rc"] == 0 and ok["launches"] == 2
    serving = "(it serves topk_prune (fp32), evovit_select (fp32) on sm_90); rebuild it with"
    fix = f"{serving} that op, dtype and architecture (exporter.ops.library.build_library(..., archs=, ops=, dtypes=))"
    assert fp16["rc"] == 209 and fp16["launches"] == ok["launches"], "the decision is there, not the movement"
    assert fp16_error["rc"] == f"this plugin library has no topk_prune kernel for float16 tokens on sm_90 {fix}"
    assert other["rc"] == 209 and other["launches"] == ok["launches"]
    assert other_error["rc"] == f"this plugin library has no tome_merge kernel for float32 tokens on sm_90 {fix}"
    assert fused["rc"] == 209 and fused_error["rc"].startswith("this plugin library has no hilo_attention kernel for "
                                                               "float32 tokens on sm_90 (")

    launch, error, preload, preload_error = call(lib, fake, [topk(), ERROR, ["exporter_kernels_preload", [], [], []],
                                                             ERROR], cc=87)
    assert launch["rc"] == 209 and launch["launches"] == 0
    assert error["rc"] == f"this plugin library has no topk_prune kernel for float32 tokens on sm_87 {fix}"
    assert preload["rc"] == 209 and preload["loads"] == 0
    assert preload_error["rc"] == ("this plugin library has no kernels for the GPU's architecture sm_87 "
                                   f"{serving} that architecture (exporter.ops.library.build_library(..., archs=, "
                                   "ops=, dtypes=))")
