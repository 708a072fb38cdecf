# SPDX-License-Identifier: Apache-2.0
"""A bundle built with `build --method diffrate --schedule FILE` holds the schedule itself: its spec the schedule's
content (so its name follows the content, not the path) and a copy `schedule.json` hashed in the manifest. `verify`
and `bench` then need the file no more, bench times the bundle's counts on its random-weights model, a tampered copy
is caught, and a bundle from before the copy (its spec holding the path) still verifies."""
import json
import shutil

import pytest

from exporter.bundle import MANIFEST, REPORT_JSON, SCHEDULE, file_hashes, read_manifest
from exporter.cli import main
from exporter.fixtures import digits
from exporter.methods import schedule as schedule_file
from exporter.methods.diffrate import plan
from exporter.models import create_model
from exporter.options import CLI, spec_of_command
from exporter.spec import BuildSpec
from exporter.stages.model import timing_model

pytestmark = pytest.mark.usefixtures("single_thread")

PRUNE = [65, 65, 60, 56, 52, 48, 44, 40, 36, 32, 28, 24]
MERGE = [65, 62, 58, 54, 50, 46, 42, 38, 34, 30, 26, 20]


def _schedule(path, prune=PRUNE):
    """A schedule file of the digits fixture's shipped weights (as `search` writes it, fewer fields)."""
    dense = create_model(digits.MODEL, "pretrained")
    schedule_file.write(path, {"model": schedule_file.model_name(dense), "tokens": 65, "depth": 12,
                               "weights": "pretrained", "weights_sha256": schedule_file.weights_sha256(dense),
                               "budget": {"unit": "GMACs", "target": 0.03}, "prune_kept": prune, "merge_kept": MERGE})
    return path


def _command(schedule) -> str:
    return CLI + f"build --model {digits.MODEL} --weights pretrained --method diffrate --schedule {schedule} --batch 2"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The bundle, its schedule file deleted after the build."""
    root = tmp_path_factory.mktemp("schedule-bundle")
    schedule = _schedule(root / "s.json")
    assert main(_command(schedule).removeprefix(CLI).split() + ["--out", str(root / "out")]) == 0
    (bundle,) = [p for p in (root / "out").iterdir() if not p.name.startswith(".")]
    assert json.loads((bundle / SCHEDULE).read_text()) == schedule_file.read(schedule)
    schedule.unlink()
    return bundle


def test_the_spec_follows_the_schedules_content_not_its_path(tmp_path):
    a, b = _schedule(tmp_path / "a.json"), tmp_path / "elsewhere" / "b.json"
    b.parent.mkdir()
    shutil.copy(a, b)
    names = {spec_of_command(_command(p)).run_name for p in (a, b)}
    assert len(names) == 1
    other = _schedule(tmp_path / "c.json", prune=[65, 65] + PRUNE[2:-1] + [20])
    assert spec_of_command(_command(other)).run_name not in names


def test_verify_and_bench_without_the_schedule_file(built, capsys):
    assert main(["verify", str(built)]) == 0
    assert main(["bench", str(built), "--batch", "2", "--rounds", "1", "--iterations", "1", "--threads", "1"]) == 0
    timed = json.loads((built / "bench" / "bench.json").read_text())
    assert {r["runtime"] for r in timed["rows"]} >= {"onnxruntime CPU fp32", "PyTorch eager CPU fp32"}
    # what bench's PyTorch row times: the bundle's token counts, on random weights
    manifest, spec = read_manifest(built)
    assert timing_model(spec).schedule == manifest["schedule"] == plan(65, PRUNE, MERGE)[1]


def _copy(bundle, tmp_path):
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("bench", "engines"))
    return dst


def _rehash(bundle) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"] = file_hashes(bundle)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_a_tampered_copy_is_caught(built, tmp_path, capsys):
    bundle = _copy(built, tmp_path)
    record = json.loads((bundle / SCHEDULE).read_text())
    record["merge_kept"][-1] = 2
    (bundle / SCHEDULE).write_text(json.dumps(record))
    assert main(["verify", str(bundle)]) == 1
    assert f"modified since the build (sha256 differs): {SCHEDULE}" in " ".join(capsys.readouterr().out.split())
    _rehash(bundle)  # the manifest's hash rewritten too: the copy no longer is what the spec holds
    assert main(["verify", str(bundle)]) == 1
    assert "the recorded command does not build the recorded spec" in " ".join(capsys.readouterr().out.split())


def test_a_bundle_whose_spec_holds_the_path_still_verifies(built, tmp_path):
    """What builds wrote before the copy: the path in the spec (and so in the run name), no schedule.json."""
    bundle = _copy(built, tmp_path)
    schedule = _schedule(tmp_path / "s.json")
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["spec"]["method_params"]["schedule"] = str(schedule)
    manifest["method_params"]["schedule"] = str(schedule)
    manifest["run_name"] = BuildSpec.from_dict(manifest["spec"]).run_name
    manifest["command"] = _command(schedule)
    (bundle / SCHEDULE).unlink()
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    report = json.loads((bundle / REPORT_JSON).read_text())
    report.update(run_name=manifest["run_name"], spec=manifest["spec"], method_params=manifest["method_params"])
    (bundle / REPORT_JSON).write_text(json.dumps(report))
    _rehash(bundle)
    assert main(["verify", str(bundle)]) == 0
