# SPDX-License-Identifier: Apache-2.0
"""Exported accuracy on real images: the trained digits fixture built with every method, fp32, fp16, int8 and fp8.

Random weights prove parity; these tests show that each exported reduced graph classifies the 360 held-out scans
as its PyTorch model does (top-1 within one image, fp16 within one image of fp32, int8 and fp8 within one point of
fp32), and print each method's accuracy and its drop against dense after the run. The int8 graph is calibrated on
training scans (CALIB_PER_CLASS of each digit; the build judges it on those it did not calibrate on). Each bundle is
built once per session, at one batch size. The fp8 graph is no second build: `digits.quantized` quantizes the method's
fp32 graph as the build does, on the images the int8 build calibrated on, and judges it on the same 360 scans.
"""
import json

import pytest

from exporter.cli import main
from exporter.fixtures import digits
from exporter.verify import accuracy

METHODS = list(digits.SETTINGS)
CALIB_PER_CLASS = 40  # 400 training scans: 256 calibrate, 144 judge the int8 graph in the build


@pytest.fixture(scope="session")
def split_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits-test")
    assert digits.export_split(out) == digits.TEST_SIZE
    return out


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits-calib")
    digits.export_split(out, "train", per_class=CALIB_PER_CLASS)
    return out


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, calib_dir):
    """method -> bundle (fp32, fp16 and int8 graphs), built lazily (a test asking for one method builds only that one)."""
    built = {}

    def get(method):
        if method not in built:
            out = tmp_path_factory.mktemp(f"digits-{method}")
            built[method] = digits.build(out, method, digits.SETTINGS[method][0], precision="int8",
                                         calib=["--calib", str(calib_dir), "--calib-samples", "256"])
        return built[method]

    return get


@pytest.fixture(scope="session")
def fp8(tmp_path_factory, calib_dir, split_dir):
    """method -> `digits.quantized` fp8 (and fp32) rows on the held-out split, calibrated as the int8 build was."""
    done = {}

    def get(method):
        if method not in done:
            done[method] = digits.quantized(method, tmp_path_factory.mktemp(f"digits-fp8-{method}"), calib_dir, split_dir,
                                            precisions=("fp8",))
        return done[method]

    return get


@pytest.fixture(scope="session")
def measured(bundles, fp8, split_dir, terminal_summary):
    """method -> `accuracy.measure` result on the held-out split; adds a row to the printed table per method."""
    results, agreements, fp8_rows = {}, {}, {}

    def get(method):
        if method not in results:
            results[method] = accuracy.measure(bundles(method), split_dir, threads=1)
            agreements[method] = json.loads((bundles(method) / "manifest.json").read_text())["quantized"]["token_choice_agreement"]
            fp8_rows[method] = fp8(method)["fp8"]
            _summarise(terminal_summary, results, agreements, fp8_rows)
        return results[method]

    return get


def _summarise(lines, results, agreements, fp8_rows):
    """The table printed after the run: top-1 per runtime, the drop against dense PyTorch, and the 8-bit graphs'
    token-choice agreement with PyTorch fp32 (mean and lowest over the reductions; int8 on the build's held-out
    scans, fp8 on the test split)."""
    dense = results["none"].score("pytorch").top1 if "none" in results else None
    lines[:] = [
        f"vit_digits, {digits.TEST_SIZE} held-out scans, top-1 % (drop vs dense PyTorch); 8-bit token choices as PyTorch's",
        f"{'method':<10} {'parameters':<36} {'PyTorch':>16} {'fp32 ONNX':>10} {'fp16 ONNX':>10} {'int8 ONNX':>10} "
        f"{'fp8 ONNX':>10} {'int8 tokens mean/min':>21} {'fp8 tokens mean/min':>20}",
    ]
    for method in METHODS:
        if method not in results:
            continue
        r = results[method]
        torch_top1 = r.score("pytorch").top1
        drop = "" if dense is None else f" ({torch_top1 - dense:+.2f})"
        params = " ".join(digits.SETTINGS[method][0]) or "defaults"
        params = params if len(params) <= 36 else params[:33] + "..."
        lines.append(
            f"{method:<10} {params:<36} {f'{torch_top1:.2f}{drop}':>16} "
            f"{r.score('model.onnx').top1:>10.2f} {r.score('model.fp16.onnx').top1:>10.2f} "
            f"{r.score('model.int8.onnx').top1:>10.2f} {fp8_rows[method]['accuracy']['top1']:>10.2f} "
            f"{_agreement(agreements[method]):>21} {_agreement(fp8_rows[method]['token_choices']):>20}"
        )


def _agreement(shares) -> str:
    return f"{100 * sum(shares) / len(shares):.1f}% / {100 * min(shares):.1f}%" if shares else "-"


def test_export_split_layout(split_dir):
    folders = sorted(p.name for p in split_dir.iterdir())
    assert folders == [str(d) for d in range(10)]
    counts = [len(list((split_dir / f).glob("*.png"))) for f in folders]
    assert sum(counts) == digits.TEST_SIZE and min(counts) >= 35  # stratified: 35-37 per digit


def test_fixture_is_trained_and_held_out(measured):
    """The committed checkpoint classifies unseen scans well, with room left to see a method's cost."""
    dense = measured("none").score("pytorch")
    assert 88.0 <= dense.top1 < 100.0, dense
    assert dense.top5 >= 98.0
    train, test = digits.split()["train"], digits.split()["test"]
    assert len(train[0]) + len(test[0]) == 1797
    train_pixels = {im.tobytes() for im in train[0]}
    assert sum(im.tobytes() in train_pixels for im in test[0]) < 5  # only duplicate scans, if any, overlap


@pytest.mark.parametrize("method", METHODS)
def test_exported_accuracy_matches_pytorch(measured, method):
    result = measured(method)
    assert result.images == digits.TEST_SIZE and result.classes == 10
    torch_row, fp32, fp16, int8 = (result.score(r) for r in ("pytorch", "model.onnx", "model.fp16.onnx", "model.int8.onnx"))
    assert abs(fp32.correct_top1 - torch_row.correct_top1) <= 1, result
    assert abs(fp16.correct_top1 - fp32.correct_top1) <= 1, result
    assert int8.top1 >= fp32.top1 - 1.0, result  # the build's own gate, here on the test split
    # near-ties aside, the graphs make PyTorch's predictions image by image
    assert fp32.top1_agreement >= digits.TEST_SIZE - 1 and fp16.top1_agreement >= digits.TEST_SIZE - 2
    if method != "none":
        dense = result.score("pytorch (dense)")
        assert dense.correct_top1 == measured("none").score("pytorch").correct_top1


# Below the gate on these calibration images, by 4-5 of the 360 scans (docs/quantization.md): no single group of
# products causes it (Evo-ViT with the qkv, Q.K, P.V, proj, fc1 or fc2 inputs of every block kept fp32 in turn stays
# 0.8-1.7 points below fp32), and which 256 training scans calibrate moves DiffRate by 2 scans (-0.56 on the docs'
# draw). strict: the day one passes, the docs' numbers are out of date.
FP8_BELOW_GATE = {"evovit": "fp8 top-1 87.22 vs fp32 88.61 (docs/quantization.md)",
                  "diffrate": "fp8 top-1 90.56 vs fp32 91.67 (docs/quantization.md)"}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.xfail(reason=FP8_BELOW_GATE[m], strict=True))
                                    if m in FP8_BELOW_GATE else m for m in METHODS])
def test_fp8_accuracy(measured, fp8, method):
    """The fp8 graph (onnxruntime's float8 Q/DQ, values rounded to e4m3, products in fp32: what TensorRT's fp8 GEMMs
    compute) within one point of the fp32 graph on the 360 scans, the build's gate."""
    measured(method)  # its row in the printed table
    rows = fp8(method)
    fp32, fp8_row = rows["fp32"]["accuracy"], rows["fp8"]["accuracy"]
    assert fp8_row["n"] == digits.TEST_SIZE and len(rows["fp8"]["token_choices"]) == len(rows["fp32"]["token_choices"])
    assert fp8_row["top1"] >= fp32["top1"] - 1.0, rows


@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
def test_methods_reduce_the_fixture(bundles, method):
    """Every method removes a real share of the 65 tokens, so its accuracy cost is measured, not assumed."""
    report = json.loads((bundles(method) / "report.json").read_text())
    assert report["passed"] and report["flops"]["ratio"] > 1.2
    assert min(report["schedule"]) <= 40


def test_verify_data_command(bundles, split_dir, capsys):
    """The command re-verifies the bundle and adds the accuracy of PyTorch and both graphs to its report (on
    stdout here), leaving the bundle as it was."""
    bundle = bundles("none")  # dense: no debug graphs to re-export, the cheapest full verify
    before = (bundle / "report.json").read_bytes()
    assert main(["verify", str(bundle), "--data", str(split_dir)]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "## Accuracy on labelled images" in out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if f"/{digits.TEST_SIZE} |" in line]
    assert rows == ["pytorch", "model.onnx", "model.fp16.onnx", "model.int8.onnx"]
    assert (bundle / "report.json").read_bytes() == before


def _flat(tmp_path, split_dir):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, png in enumerate(sorted(split_dir.glob("*/*.png"))[:12]):
        (flat / f"{i}.png").write_bytes(png.read_bytes())
    return flat


def _nine_classes(tmp_path, split_dir):
    import shutil

    nine = tmp_path / "nine"
    for d in range(9):
        shutil.copytree(split_dir / str(d), nine / str(d))
    return nine


def _copy(tmp_path, split_dir):
    import shutil

    return shutil.copytree(split_dir, tmp_path / "copy")


def _not_an_image(tmp_path, split_dir):
    data = _copy(tmp_path, split_dir)
    sorted((data / "3").glob("*.png"))[0].write_text("not an image")
    return data


def _empty_class(tmp_path, split_dir):
    data = _copy(tmp_path, split_dir)
    (data / "zz_extra").mkdir()
    return data


@pytest.mark.parametrize(
    "make,expected",
    [
        (_flat, ["has no class sub-folders", "12 files", "export-split"]),
        (_nine_classes, ["has 9 class folders but the model predicts 10 classes", "sorted order"]),
        (_not_an_image, ["copy/3/", ".png is not an image PIL can read", "Remove or replace that file"]),
        (_empty_class, ["Found no valid file for the classes zz_extra"]),
        (lambda tmp_path, split_dir: tmp_path / "missing", ["is not a directory"]),
    ],
)
def test_verify_data_wrong_layout(bundles, split_dir, tmp_path, capsys, make, expected):
    """A folder of another layout fails at once (exit 2, problem and fix), before any verification runs."""
    assert main(["verify", str(bundles("none")), "--data", str(make(tmp_path, split_dir))]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "fix:" in err and "Traceback" not in err and "check file hashes" not in err
    for text in expected:
        assert text in " ".join(err.split()), (text, err)
