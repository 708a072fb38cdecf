# SPDX-License-Identifier: Apache-2.0
"""`inspect` shows what a bundle holds without running it: graphs, plugin nodes and the plugins they need,
engines, and damage, which it reports instead of refusing."""
import json

import onnx
import pytest

from exporter.cli import main
from exporter.ops import library


@pytest.fixture(scope="module")
def plugin_bundle(tmp_path_factory):
    """test_vit with EViT's two TopKPrune nodes; the library's build is made to find no toolchain (fast, and the
    case where inspect must say why the library is missing)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(library, "missing_toolchain", lambda *a, **k: "cmake is not on PATH")
    out = tmp_path_factory.mktemp("inspect")
    try:
        assert main(["build", "--model", "test_vit", "--weights", "random", "--method", "evit", "--locations", "1,3",
                     "--batch", "1:2:4", "--plugins", "--out", str(out)]) == 0
    finally:
        mp.undo()
    (bundle,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return bundle


def inspect(capsys, *args):
    capsys.readouterr()
    assert main(["inspect", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_json_maps_every_plugin_node_to_its_plugin(plugin_bundle, capsys):
    info = json.loads(inspect(capsys, plugin_bundle, "--json"))
    assert info["verdict"] == "PASSED" and info["method"] == "evit" and info["files"]["problems"] == []
    graphs = {g["file"]: g for g in info["graphs"]}
    assert set(graphs) == {"model.onnx", "model.plugins.onnx"}
    for name, g in graphs.items():
        model = onnx.load(str(plugin_bundle / name), load_external_data=False)
        assert g["nodes"] == len(model.graph.node) and g["inputs"][0]["shape"] == ["batch", 3, 160, 160]
    assert graphs["model.onnx"]["plugin_nodes"] == []
    nodes = graphs["model.plugins.onnx"]["plugin_nodes"]
    assert [(n["plugin"], n["version"], n["namespace"], n["contract"]) for n in nodes] == \
        [("TopKPrune", "1", "exporter", "exporter/plugins/topk_prune/contract.json")] * 2
    assert [n["attributes"] for n in nodes] == [{"fuse": 1, "k": 70}, {"fuse": 1, "k": 50}]  # ceil(0.7 * 100), ceil(0.7 * 71)
    assert info["plugin_library"]["present"] is False and info["plugin_library"]["build"]["reason"] == "cmake is not on PATH"


def test_text_says_the_same(plugin_bundle, capsys):
    out = inspect(capsys, plugin_bundle)
    assert out.startswith(f"{plugin_bundle.name}: PASSED\n")
    assert ("  2 plugin nodes TopKPrune version 1, namespace 'exporter'; contract exporter/plugins/topk_prune/contract.json\n"
            "    (fuse=1, k=70); (fuse=1, k=50)\n") in out
    assert "plugin library plugins/libexporter_plugins.so: missing (cmake is not on PATH)" in out
    assert "  inputs:  input float32[batchx3x160x160]" in out


def test_damage_is_shown_not_refused(plugin_bundle, tmp_path, capsys):
    import shutil

    copy_ = shutil.copytree(plugin_bundle, tmp_path / "b")
    (copy_ / "model.plugins.onnx").write_bytes(b"not onnx")
    (copy_ / "engines" / "sm86-tensorrt-rtx").mkdir(parents=True)
    (copy_ / "engines" / "sm86-tensorrt-rtx" / "engine.json").write_text("[]")
    out = inspect(capsys, copy_)
    assert "modified since the build (sha256 differs): model.plugins.onnx" in out
    assert "model.plugins.onnx: cannot be read as ONNX (DecodeError" in out and "model.onnx: 1." in out
    assert "engines: " in out and "holds no {graph file: engine entry} table" in out


def test_not_a_bundle_is_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "is not a bundle (no manifest.json)" in capsys.readouterr().err


def test_identical_plugin_nodes_are_counted_not_repeated():
    from exporter.commands.inspect import _plugin_lines

    node = {"plugin": "ToMeMerge", "version": "1", "namespace": "exporter", "contract": "c.json"}
    nodes = [dict(node, node=f"n{i}", attributes={"r": 13 if i < 11 else 4}) for i in range(12)]
    assert _plugin_lines(nodes) == ["  12 plugin nodes ToMeMerge version 1, namespace 'exporter'; contract c.json",
                                    "    (r=13) x11; (r=4)"]
