"""The AOT kernel library on a machine without a GPU: generated, compiled with g++, loaded with ctypes.

Built once per session for two architectures and the smallest block only (the cubins compile in
Triton without a GPU; the launch logic does not depend on how many variants there are). The launchers
are called in subprocesses, since the driver is resolved once per process: with no driver (a clean
CUDA_ERROR_NOT_INITIALIZED, no crash) and with tests/fake_libcuda.c, which records each launch so the
cubin choice per compute capability, grid, block, shared memory and parameter list are checked.
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.ops import aot

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "exporter" / "plugins" / "common" / "kernels.h"
ARCHS = [87, 90]

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("gcc") is None, reason="needs g++/gcc")


@pytest.fixture(scope="session")
def library(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot")
    cpp = aot.build(out, ARCHS, blocks=(16,), jobs=2)
    lib = out / "libexporter_kernels.so"
    subprocess.run(["g++", "-std=c++17", "-O1", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-I", str(HEADER.parent),
                    str(cpp), "-o", str(lib), "-ldl"], check=True)
    fake = out / "libcuda_fake.so"
    subprocess.run(["gcc", "-O1", "-fPIC", "-shared", str(ROOT / "tests" / "fake_libcuda.c"), "-o", str(fake)], check=True)
    return lib, fake, cpp.read_text()


# Runs in a fresh process: argv = library, calls (JSON); prints each call's return code and, when the
# fake driver is loaded, what it recorded.
CALLER = r"""
import ctypes, json, os, sys
lib = ctypes.CDLL(sys.argv[1])
fake = ctypes.CDLL(os.environ["EXPORTER_LIBCUDA"]) if os.path.exists(os.environ["EXPORTER_LIBCUDA"]) else None
results = []
for name, args, sizes, params in json.loads(sys.argv[2]):
    fn = getattr(lib, name)
    fn.restype = ctypes.c_size_t if name.endswith("_workspace") else ctypes.c_int
    conv = [ctypes.c_void_p(a) if s == 8 else ctypes.c_int(a) for a, s in zip(args, sizes)]
    if fake:
        (ctypes.c_int * 32).in_dll(fake, "fake_sizes")[:] = params + [0] * (32 - len(params))
    rc = fn(*conv)
    rec = {"rc": rc}
    if fake:
        rec["launch"] = list((ctypes.c_uint * 7).in_dll(fake, "fake_launch"))
        rec["loads"] = ctypes.c_int.in_dll(fake, "fake_loads").value
        rec["launches"] = ctypes.c_int.in_dll(fake, "fake_launches").value
        rec["function"] = (ctypes.c_char * 128).in_dll(fake, "fake_function").value.decode()
        raw = (ctypes.c_ubyte * 256).in_dll(fake, "fake_params")
        rec["params"] = [int.from_bytes(bytes(raw[8 * i: 8 * i + s]), "little", signed=True)
                         for i, s in enumerate(params)]
        rec["shared_attr"] = ctypes.c_int.in_dll(fake, "fake_shared_attr").value
    results.append(rec)
print(json.dumps(results))
"""

P, I = 8, 4  # parameter sizes: device pointer, int


def call(library, driver, calls, cc=0):
    """Run `calls` [(function, args, their sizes, the kernel parameters' sizes)] in a fresh process with
    `driver` as libcuda."""
    env = {"EXPORTER_LIBCUDA": str(driver), "FAKE_CC": str(cc), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", CALLER, str(library), json.dumps(calls)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def topk(B=2, N=17, C=16, k=4, fuse=1, dtype=0):
    """exporter_topk_prune's arguments (fake device pointers) and their sizes."""
    args = [0x10, dtype, B, N, C, k, fuse, 0x1000, 0x2000, 0x3000, 0x4000, 0]
    return ["exporter_topk_prune", args, [P, I, I, I, I, I, I, P, P, P, P, P], [P] * 4 + [I] * 4 + [P, P]]


def variant(source, op, dtype, block, arch_index):
    """(shared, warps) of a variant from the generated table."""
    m = re.search(r"\{k%s, %d, %d, %d, \"\w+\", (\d+), (\d+)," % (op, dtype, block, arch_index), source)
    assert m, f"no variant {op} {dtype} {block} {arch_index}"
    return int(m.group(1)), int(m.group(2))


def test_exports_the_header_and_needs_no_libcuda(library):
    lib, _, _ = library
    declared = set(re.findall(r"\b(exporter_\w+)\s*\(", HEADER.read_text()))
    assert len(declared) == 13  # six launchers, six workspace queries, the preload
    defined = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    assert declared <= {line.split()[-1] for line in defined.splitlines()}
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    assert not re.search(r"\bcu[A-Z]", undefined), "driver functions must be resolved with dlsym, not linked"
    needed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "libcuda" not in needed


def test_no_driver_is_an_error_not_a_crash(library):
    lib, _, _ = library
    results = call(lib, "/nonexistent/libcuda.so.1", [
        topk(), topk(k=16),  # valid; then k leaves no patch out
        ["exporter_topk_prune_workspace", [0, 2, 17, 16, 4, 1], [I] * 6, []],
    ])
    assert [r["rc"] for r in results] == [3, 1, 0]  # CUDA_ERROR_NOT_INITIALIZED, CUDA_ERROR_INVALID_VALUE, 0 bytes


def test_launch_abi_on_a_fake_sm90(library):
    lib, fake, source = library
    tome = ["exporter_tome_merge", [0x10, 1, 3, 31, 20, 16, 5, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000, 0],
            [P, I, I, I, I, I, I, P, P, P, P, P, P, P, P], [P] * 7 + [I] * 4 + [P, P]]
    restore = ["exporter_evovit_restore", [0x10, 0, 2, 17, 130, 5, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0],
               [P, I, I, I, I, I, P, P, P, P, P, P], [P] * 5 + [I] * 3 + [P, P]]
    results = call(lib, fake, [tome, tome, restore, topk(N=40, k=4)], cc=90)
    first, again, rest, too_big = results
    assert first["rc"] == 0 and again["rc"] == 0 and rest["rc"] == 0
    assert first["function"] == "tome_merge_kernel"
    shared, warps = variant(source, "TomeMerge", 1, 16, ARCHS.index(90))
    assert first["launch"] == [3, 1, 1, 32 * warps, 1, 1, shared]
    # x, size, metric, tokens, size_out, src, dst, N, C, Cm, r, then Triton's two scratch pointers
    assert first["params"] == [0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000, 31, 20, 16, 5, 0, 0]
    assert again["loads"] == 1 and again["launches"] == 2, "the module is loaded once per context"
    assert rest["launch"][:3] == [2, 3, 1]  # (B, C tiles of 64)
    assert rest["params"] == [0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 17, 130, 5, 0, 0]
    assert too_big["rc"] == 1 and too_big["launches"] == 3  # 39 patches: no compiled block holds them


def test_hilo_attention_launch_abi(library):
    """A 14x14 map in 2x2 windows (49 windows, 16 a program: 4 programs) of 2 heads of 16 channels, 3 images:
    grid (4, 3 * 2); windows over 8x8 and heads wider than every compiled block are refused."""
    lib, fake, source = library

    def hilo(C=32, window=2, heads=2):
        args = [0x10, 1, 3, 14, 14, C, window, heads, 0x1000, 0x2000, 0x3000, 0]
        return ["exporter_hilo_attention", args, [P] + [I] * 7 + [P] * 4, [P] * 3 + [I] * 6 + [P, P]]

    ok, wide, big = call(lib, fake, [hilo(), hilo(window=9), hilo(C=64)], cc=90)
    assert ok["rc"] == 0 and ok["function"] == "hilo_attention_kernel"
    shared, warps = variant(source, "HiloAttention", 1, 16, ARCHS.index(90))
    assert ok["launch"] == [4, 6, 1, 32 * warps, 1, 1, shared]
    # qkv, pad, out, H, W, S, HEADS, HD, WINDOWS, then Triton's two scratch pointers
    assert ok["params"] == [0x1000, 0x2000, 0x3000, 14, 14, 2, 2, 16, 16, 0, 0]
    assert wide["rc"] == 1 and big["rc"] == 1 and big["launches"] == 1  # head dim 32: only block 16 is built


def test_preload_loads_every_kernel_of_the_gpu_once(library):
    """After the preload no launch loads a module (a load inside a CUDA-graph capture would fail)."""
    lib, fake, source = library
    variants = len(re.findall(r"\{k\w+, \d+, \d+, %d, \"" % ARCHS.index(90), source))
    preload, launch = call(lib, fake, [["exporter_kernels_preload", [], [], []], topk()], cc=90)
    assert preload["rc"] == 0 and preload["loads"] == variants == 12  # six ops x two dtypes, one block
    assert launch["rc"] == 0 and launch["loads"] == variants and launch["launches"] == 1
    (missing,) = call(lib, fake, [["exporter_kernels_preload", [], [], []]], cc=100)
    assert missing["rc"] == 209 and missing["loads"] == 0


@pytest.mark.parametrize("cc,rc", [(87, 0), (89, 0), (86, 209), (100, 209)])
def test_cubin_choice_per_compute_capability(library, cc, rc):
    """Own architecture, or a later minor of the same major below 9.0 (8.9 runs sm_87); else 209."""
    lib, fake, _ = library
    (result,) = call(lib, fake, [topk()], cc=cc)
    assert result["rc"] == rc and result["launches"] == (rc == 0)
    if rc == 0:
        assert result["params"][:7] == [0x1000, 0x2000, 0x3000, 0x4000, 17, 16, 4]
