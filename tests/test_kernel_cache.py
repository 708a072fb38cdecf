# SPDX-License-Identifier: Apache-2.0
"""The per-variant cubin cache (exporter.ops.kernel_cache) and what a library is built from (aot.library_variants):
a second build compiles nothing, a build of other ops/dtypes compiles only what it has not met, and the key
follows the kernels' sources and Triton's version."""
import shutil

import pytest

from exporter.errors import ExporterError
from exporter.ops import aot, kernel_cache, library
from exporter.ops.kernels import config


@pytest.fixture
def compiles(monkeypatch, tmp_path):
    """The keys each `aot.compile_all` call compiled, with the cache in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    compile_all = aot.compile_all

    def counted(keys, jobs=0, line_info=False):
        calls.append(list(keys))
        return compile_all(keys, jobs, line_info)

    monkeypatch.setattr(aot, "compile_all", counted)
    return calls


def test_a_second_build_compiles_nothing(compiles, tmp_path):
    fp32 = aot.library_variants(["topk_prune"], ["fp32"])
    first = library.generated_kernels(tmp_path / "a", [90], fp32, jobs=2)
    assert [len(c) for c in compiles] == [3]  # select_decide (any dtype), combine fp32 aligned and generic
    again = library.generated_kernels(tmp_path / "b", [90], fp32, jobs=2)
    # Evo-ViT's selection launches the same two kernels: nothing new either
    same = library.generated_kernels(tmp_path / "c", [90], aot.library_variants(["evovit_select"], ["fp32"]), jobs=2)
    assert [len(c) for c in compiles] == [3], "every cubin came from the cache"
    assert first.read_text() == again.read_text() == same.read_text()
    mtime = again.stat().st_mtime_ns
    library.generated_kernels(tmp_path / "b", [90], fp32, jobs=2)
    assert again.stat().st_mtime_ns == mtime, "an unchanged kernels.cpp is not rewritten (its object stays built)"

    both = library.generated_kernels(tmp_path / "d", [90], aot.library_variants(["topk_prune"], ["fp32", "fp16"]), jobs=2)
    assert [set(c) for c in compiles[1:]] == [{("combine_kernel", "fp16", True, 90), ("combine_kernel", "fp16", False, 90)}]
    assert 'kServed[] = "topk_prune (fp32 fp16), evovit_select (fp32 fp16) on sm_90";' in both.read_text()


def test_cached_results_are_what_compiling_returns(compiles, tmp_path):
    key = ("restore_decide_kernel", None, False, 87)
    (compiled,) = kernel_cache.compile_all([key], jobs=1)
    (cached,) = kernel_cache.compile_all([key], jobs=1)
    assert len(compiles) == 1 and cached == compiled and cached["cubin"].startswith(b"\x7fELF")
    path = kernel_cache.entry(key, kernel_cache.sources_digest(), kernel_cache.default_dir())
    path.write_text(path.read_text()[:100])  # a torn entry is a miss, compiled again
    assert kernel_cache.compile_all([key], jobs=1) == [compiled] and len(compiles) == 2


def test_the_key_follows_the_sources_and_triton(tmp_path, monkeypatch):
    root = tmp_path / "ops"
    shutil.copytree(kernel_cache.OPS_DIR / "kernels", root / "kernels")
    shutil.copy(kernel_cache.OPS_DIR / "aot.py", root / "aot.py")
    digest = kernel_cache.sources_digest(root)
    assert digest == kernel_cache.sources_digest()
    (root / "kernels" / "launchers.cpp.in").write_text("// not a cubin's source\n")
    assert kernel_cache.sources_digest(root) == digest, "the launchers are assembled each build, not cached"
    for name in ("kernels/_triton.py", "kernels/config.py", "kernels/hilo_attention.py", "aot.py"):
        source = root / name
        text = source.read_text()
        source.write_text(text + "\n# changed\n")
        assert kernel_cache.sources_digest(root) != digest, name
        source.write_text(text)
    assert kernel_cache.sources_digest(root) == digest
    import triton

    monkeypatch.setattr(triton, "__version__", triton.__version__ + ".post1")
    assert kernel_cache.sources_digest(root) != digest

    key = ("combine_kernel", "fp16", True, 90)
    paths = {kernel_cache.entry(k, digest, tmp_path) for k in (key, (*key[:3], 87), (key[0], "fp32", True, 90),
                                                                (*key[:2], False, 90))}
    assert len(paths) == 4 and kernel_cache.entry(key, "other", tmp_path) not in paths


def test_library_variants():
    assert aot.library_variants() == config.all_variants()
    tome = aot.library_variants(["tome_merge"], ["fp16"])
    assert {(v.kernel, v.dtype) for v in tome} == {("tome_decide_kernel", "fp16"), ("combine_kernel", "fp16")}
    assert len(tome) == 4 and aot.served(tome, [87]) == {"ops": {"tome_merge": ["fp16"]}, "archs": [87]}
    assert aot.served(config.all_variants(), [90, 87])["ops"] == {op: list(config.DTYPES) for op in config.OPS}
    with pytest.raises(ValueError, match="unknown token op 'tome'"):
        aot.library_variants(["tome"])
    with pytest.raises(ValueError, match="unknown token dtype 'float16'.*fp32, fp16"):
        aot.library_variants(None, ["float16"])


def test_bad_arguments_are_exporter_errors(tmp_path):
    with pytest.raises(ExporterError, match="95 is not one it supports") as error:
        library.checked_archs([90, 95])
    assert "87 for Jetson Orin" in error.value.fix
    assert library.checked_archs([90, 87, 90]) == (87, 90) and library.checked_archs(None) == library.DEFAULT_ARCHS
    if library.missing_toolchain() is None:
        with pytest.raises(ExporterError, match="unknown token op 'merge'"):
            library.build_library(tmp_path, ops=["merge"])
