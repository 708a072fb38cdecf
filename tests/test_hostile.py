# SPDX-License-Identifier: Apache-2.0
"""Bundles from someone else (issue 22): each hostile or damaged case, made in the test from one good bundle, ends
in one sentence and exit 2 (or a reported problem, exit 1, for a failed verification), with nothing written
outside the bundle and no file outside it read. The bundle: timm's test_vit, dense fp32, batch 2 (built once)."""
import json
import os
import shutil
import signal
import struct
import zlib

import numpy as np
import onnx
import pytest
from PIL import Image

from exporter import bundle as artifacts
from exporter.cli import main
from exporter.errors import ExporterError

SENTINEL = b"the user's own file\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    assert main(["build", "--model", "test_vit", "--weights", "random", "--batch", "2", "--out", str(out)]) == 0
    (bundle,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return bundle


@pytest.fixture
def bundle(built, tmp_path):
    return shutil.copytree(built, tmp_path / "bundle" / built.name)


@pytest.fixture
def sentinel(tmp_path):
    """A file of the user's beside the bundle: no case may change it."""
    path = tmp_path / "mine.txt"
    path.write_bytes(SENTINEL)
    yield path
    assert path.read_bytes() == SENTINEL and not path.is_symlink()


def run(capsys, code, *args):
    """`python -m exporter ARGS` exits `code` with no traceback; its output, whitespace collapsed."""
    capsys.readouterr()
    assert main([str(a) for a in args]) == code
    captured = capsys.readouterr()
    said = " ".join((captured.err + captured.out).split())
    assert "Traceback" not in said, said
    return said


def manifest_of(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def rewrite(bundle, change=None):
    """Edit the manifest with `change`, then rehash every file (the sender who rewrites the hashes)."""
    manifest = manifest_of(bundle)
    if change:
        change(manifest)
    manifest["files"] = artifacts.file_hashes(bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def rtx():
    pytest.importorskip("tensorrt_rtx")
    return ["--runtime", "tensorrt-rtx", "--target", "sm86"]


# --- the writer: never through a link, never outside the bundle ----------------------------------------------------


@pytest.mark.parametrize("name", [".model.engine.tmp", ".engine.json.tmp", "engine.json", "model.engine", "timing.cache"])
def test_engine_refuses_links_planted_where_it_writes(bundle, sentinel, capsys, name):
    """Links to the user's file under the names `engine` writes or once wrote through: refused before any work."""
    folder = bundle / "engines" / "sm86-tensorrt-rtx"
    folder.mkdir(parents=True)
    (folder / name).symlink_to(sentinel)
    said = run(capsys, 2, "engine", bundle, *rtx())
    assert "links or special files where the tools write engines and timings" in said
    assert f"engines/sm86-tensorrt-rtx/{name}" in said


def test_the_writer_never_follows_a_link(tmp_path, sentinel):
    """The one writer: its temp file is created exclusively under a name of its own (a link planted at the old fixed
    temp name is left alone), and a link at the destination is replaced by the file, not written through."""
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / ".engine.json.tmp").symlink_to(sentinel)
    (folder / "engine.json").symlink_to(sentinel)
    artifacts.write_json(folder / "engine.json", {"entries": {}}, tmp_path)
    assert not (folder / "engine.json").is_symlink() and json.loads((folder / "engine.json").read_text()) == {"entries": {}}
    assert (folder / ".engine.json.tmp").is_symlink()
    assert sorted(p.name for p in folder.iterdir()) == [".engine.json.tmp", "engine.json"]  # no temp file left


def test_the_writer_refuses_a_linked_folder(tmp_path, sentinel):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "engines").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ExporterError, match="engines is a symbolic link"):
        artifacts.write_bytes(tmp_path / "b" / "engines" / "x.engine", b"plan", tmp_path / "b")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("sub", ["engines", "bench"])
def test_a_linked_engines_or_bench_folder_is_reported_and_refused(bundle, tmp_path, sentinel, capsys, sub):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (bundle / sub).symlink_to(elsewhere, target_is_directory=True)
    said = run(capsys, 1, "verify", bundle, "--references-only")
    assert "links or special files where the tools write engines and timings" in said and sub in said
    if sub == "engines":
        said = run(capsys, 2, "engine", bundle, *rtx())
    else:
        said = run(capsys, 2, "bench", bundle, "--rounds", "1", "--iterations", "1")
    assert f"links or special files where the tools write engines and timings (refused by engine and bench, which " \
        f"would write through them): {sub})" in said
    assert list(elsewhere.iterdir()) == []


def test_a_linked_engine_folder_inside_engines_is_refused(bundle, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (bundle / "engines").mkdir()
    (bundle / "engines" / "sm86-tensorrt-rtx").symlink_to(elsewhere, target_is_directory=True)
    said = run(capsys, 2, "engine", bundle, *rtx())
    assert "would write through them): engines/sm86-tensorrt-rtx)" in said and list(elsewhere.iterdir()) == []


def test_bench_writer_refuses_a_linked_folder(bundle, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (bundle / "bench").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ExporterError, match="symbolic link"):
        artifacts.write_bench(bundle, {"machine": {}, "rows": []}, "md", b"png")
    assert list(elsewhere.iterdir()) == []


def test_verify_report_inside_the_bundle_is_refused(bundle, capsys):
    before = {p.name for p in bundle.iterdir()}
    said = run(capsys, 2, "verify", bundle, "--references-only", "--report", bundle / "verify.md")
    assert f"--report {bundle / 'verify.md'} lies inside the bundle" in said
    assert f"--report {bundle.parent / (bundle.name + '.verify.md')}" in said  # where to write instead
    assert {p.name for p in bundle.iterdir()} == before


# --- the reader: regular files inside the bundle, bounded -----------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "/dev/zero", "../outside.onnx"])
def test_inspect_never_opens_what_the_manifest_names_outside(bundle, capsys, name):
    def add(m):
        m["io"][name] = m["io"]["model.onnx"]

    rewrite(bundle, add)
    said = run(capsys, 2, "inspect", bundle)
    assert f"io describes {name!r}, which is not one of a bundle's graphs" in said


@pytest.fixture
def alarm():
    """A hang fails the test in 60 s instead of blocking the suite."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("hung"))
    signal.alarm(60)
    yield
    signal.alarm(0)


def test_a_fifo_in_the_bundle_is_refused_not_waited_on(bundle, capsys, alarm):
    (bundle / "model.onnx").unlink()
    os.mkfifo(bundle / "model.onnx")
    said = run(capsys, 0, "inspect", bundle)  # inspect shows damage
    assert "model.onnx: Refused to read" in said and "it is not a regular file" in said
    said = run(capsys, 1, "verify", bundle, "--references-only")
    assert "modified since the build (sha256 differs): model.onnx" in said


def test_a_manifest_that_is_a_link_is_refused(bundle, tmp_path, capsys):
    outside = tmp_path / "manifest.json"
    shutil.move(bundle / "manifest.json", outside)
    (bundle / "manifest.json").symlink_to(outside)
    said = run(capsys, 2, "inspect", bundle)
    assert f"Refused to read {bundle / 'manifest.json'}: it is a symbolic link." in said


def test_an_oversized_manifest_is_refused_before_it_is_read(bundle, capsys):
    with open(bundle / "manifest.json", "r+b") as f:
        f.truncate(artifacts.LIMITS["json"] + 1)  # sparse: no disk used
    said = run(capsys, 2, "inspect", bundle)
    assert "more than a json file of a bundle may be" in said


@pytest.mark.parametrize("where", ["../outside.data", "absolute"])
def test_external_data_outside_the_bundle_is_never_opened(bundle, tmp_path, capsys, where):
    outside = tmp_path / "outside.data"
    shutil.copy(bundle / "model.onnx.data", outside)
    location = str(outside) if where == "absolute" else os.path.relpath(outside, bundle)
    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(bundle / "model.onnx"))
    (bundle / "model.onnx.data").unlink()
    rewrite(bundle)
    said = run(capsys, 2, "verify", bundle, "--references-only")
    assert f"keeps its weights in {location!r}, outside the bundle" in said and "nothing was read from there" in said
    assert "outside the bundle" in run(capsys, 0, "inspect", bundle)
    assert "outside the bundle" in run(capsys, 2, "engine", bundle, *rtx())


def test_an_oversized_input_dimension_is_a_sentence(bundle, capsys):
    model = onnx.load(str(bundle / "model.onnx"), load_external_data=False)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 10**12
    onnx.save(model, str(bundle / "model.onnx"))

    def grow(m):
        m["io"]["model.onnx"]["inputs"][0]["shape"][2] = 10**12

    rewrite(bundle, grow)
    said = run(capsys, 2, "verify", bundle, "--references-only")
    assert "gives 'input' the dimension 1000000000000 (at most 2147483647" in said


# --- hostile text is inert -----------------------------------------------------------------------------------------


def test_terminal_escapes_from_a_bundle_are_printed_escaped(bundle, capsys):
    hostile = "\x1b[2J\x1b]52;c;cm0gLXJmIH4K\x07\u202e"

    def poison(m):
        m["command"] += " " + hostile

    rewrite(bundle, poison)
    for code, args in ((0, ["inspect", bundle]), (0, ["inspect", bundle, "--json"]), (1, ["verify", bundle, "--references-only"])):
        capsys.readouterr()
        assert main([str(a) for a in args]) == code
        printed = "".join(capsys.readouterr())
        assert "\x1b" not in printed and "\x07" not in printed and "\u202e" not in printed
        assert ("\\x1b[2J" in printed) or ("\\u001b[2J" in printed)


# --- every damaged field is a sentence -----------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, said", [
    ("runtime", "bogus", "runtime 'bogus' is not one of tensorrt, tensorrt-rtx"),
    ("graph", "/etc/passwd", "graph '/etc/passwd' is not one of the bundle's graphs"),
    ("engine", ["x"], "engine ['x'] is not a plan file name in the folder"),
    ("engine", "../../../mine.engine", "is not a plan file name in the folder"),
])
def test_damaged_engine_json_is_a_sentence(bundle, capsys, field, value, said):
    folder = bundle / "engines" / "sm86-tensorrt-rtx"
    folder.mkdir(parents=True)
    entry = {k: "x" for k in artifacts.ENTRY_FIELDS} | {"engine": "model.engine", "graph": "model.onnx",
                                                          "runtime": "tensorrt-rtx", "key_fields": {}}
    entry[field] = value
    (folder / "engine.json").write_text(json.dumps({"entries": {"model.onnx": entry}}))
    assert said in run(capsys, 2, "verify", bundle, "--references-only")
    assert said in run(capsys, 0, "inspect", bundle)  # shown, not refused


def _npz(bundle, change):
    with np.load(bundle / "references.npz") as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez_compressed(bundle / "references.npz", **arrays)


@pytest.mark.parametrize("damage, said", [
    (lambda b: (b / "references.npz").write_bytes(b"PK\x03\x04 not a zip at all"), "cannot be read as numpy arrays"),
    (lambda b: _npz(b, lambda a: a.pop("logits")), "it lacks logits"),
    (lambda b: _npz(b, lambda a: a.update(inputs=a["inputs"][:, :, :8])), "inputs are [3, 8, 160] per image, model.onnx takes [3, 160, 160]"),
    (lambda b: _npz(b, lambda a: a.update(logits=a["logits"][:3])), "logits are float32[3, 1000], not float32[16"),
    (lambda b: _npz(b, lambda a: a.update(labels=np.array([1, 2], dtype=object))), "cannot be read as numpy arrays"),
])
def test_damaged_references_are_a_sentence(bundle, capsys, damage, said):
    damage(bundle)
    rewrite(bundle)
    out = run(capsys, 2, "verify", bundle, "--references-only")
    assert f"{bundle / 'references.npz'} is damaged" in out and said in out


@pytest.mark.parametrize("field, value, said", [
    ("schedule", 5, "schedule is int 5, not a list of token counts"),
    ("schedule", ["a"], "schedule holds something other than token counts"),
    ("method_params", [1], "method_params is list [1], not a table of parameters"),
    ("flops", {"gmacs": "many"}, "flops holds something other than numbers"),
    ("files", {"/etc/passwd": "0" * 64}, "files lists names outside the bundle: '/etc/passwd'"),
])
def test_manifest_fields_of_the_wrong_type_are_a_sentence(bundle, capsys, field, value, said):
    def spoil(m):
        m[field] = value

    manifest = manifest_of(bundle)
    spoil(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert said in run(capsys, 2, "inspect", bundle)
    assert said in run(capsys, 2, "verify", bundle, "--references-only")


# --- --data: links, bombs and truncated images, before the run ------------------------------------------------------


def _png(path, size=(16, 16), value=0):
    Image.new("L", size, value).save(path)


@pytest.fixture
def data(tmp_path):
    """A folder per class of test_vit's 1000, one small image in each."""
    root = tmp_path / "data"
    for c in range(1000):
        (root / f"{c:04d}").mkdir(parents=True)
        _png(root / f"{c:04d}" / "a.png", value=c % 256)
    return root


def test_data_links_to_folders_are_not_followed(bundle, data, capsys, monkeypatch):
    from exporter.verify import accuracy

    (data / "0007" / "up").symlink_to("..", target_is_directory=True)  # a loop: 7/up/0007/up/...
    (data / "0008" / "twice.png").symlink_to(data / "0008" / "a.png")
    dataset = accuracy.open_folder(data, 1000)
    assert len(dataset) == 1000
    err = capsys.readouterr().err
    assert "1 link to folders not followed" in err and "1 file reached twice through links counted once" in err


@pytest.mark.parametrize("make, said", [
    ("bomb", "is too large to decode safely"),
    ("truncated", "is not an image PIL can read"),
])
def test_bad_data_images_are_refused_before_the_run(bundle, data, capsys, make, said):
    path = data / "0003" / "b.png"
    if make == "bomb":  # a 200-byte PNG of 20000 x 20000 pixels (PIL refuses more than 2 x MAX_IMAGE_PIXELS)
        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100)))
                         + chunk(b"IEND", b""))
    else:
        _png(path, (64, 64), 7)
        path.write_bytes(path.read_bytes()[:-40])
    out = run(capsys, 2, "verify", bundle, "--references-only", "--data", data)
    assert f"--data: {path} {said}" in out
    assert "check files and manifest" not in out  # refused before the verification started


# --- bounds --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, said", [
    (["--seed", "99999999999999999999999"], "--seed 99999999999999999999999 is outside 0..2^64-1"),
    (["--seed", "-1"], "--seed -1 is outside"),
    (["--img-size", "10000"], "--img-size 10000 is outside 1..4096"),
    (["--img-size", "4000", "--batch", "64"], "its attention alone needs"),
])
def test_bounds_are_refused_up_front(tmp_path, capsys, args, said):
    out = run(capsys, 2, "build", "--model", "test_vit", "--weights", "random", *args, "--out", tmp_path)
    assert said in out
    assert "seed" not in said or "--img-size" not in out  # the error names the flag that is wrong
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_sentence(tmp_path, capsys, monkeypatch):
    """A disk with less room than the bundle: refused after the model is made, before the export, naming the folder
    and the space needed; nothing is left."""
    from exporter.bundle import files

    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10**5, 10**5))
    out = run(capsys, 2, "build", "--model", "test_vit", "--weights", "random", "--batch", "2", "--out", tmp_path)
    assert f"The disk holding {tmp_path} has no room for this (0.1 MB free, at least" in out and "MB needed" in out
    assert [p for p in tmp_path.iterdir()] == []


def test_a_disk_that_fills_during_the_build_is_one_sentence(tmp_path, capsys, monkeypatch):
    """ENOSPC from a write in the middle of the build (the room checked up front was taken by someone else)."""
    import errno

    from exporter.bundle import files

    real = files.os.replace

    def full(src, dst):
        if str(dst).endswith("references.npz"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", full)
    out = run(capsys, 2, "build", "--model", "test_vit", "--weights", "random", "--batch", "2", "--out", tmp_path)
    assert f"The disk holding {tmp_path} has no room for this" in out and "the build had written" in out
    assert [p for p in tmp_path.iterdir()] == []
