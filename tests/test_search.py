# SPDX-License-Identifier: Apache-2.0
"""DiffRate's search (`exporter.methods.diffrate_search`, `python -m exporter search`) on the digits fixture.

The masked forward must compute what the real reduced model computes, the cost must be what the FLOPs counter
counts, the task loss must reach both rates of a block, and a search must be a function of its seed (resumed or
not). The search runs here are a few steps on a few images: what a full run reaches is measured in the README.
"""
import json

import pytest
import torch

from exporter.cli import main
from exporter.fixtures import digits
from exporter.methods import apply_method
from exporter.methods.diffrate_search import SearchViT, Settings, flops_cost, search, uniform
from exporter.methods.flops import count_gmacs
from exporter.models import create_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def dense():
    return create_model(digits.MODEL, "pretrained")


@pytest.fixture(scope="module")
def images(dense):
    from timm.data import create_transform, resolve_data_config

    scans, labels = digits.split()["train"]
    transform = create_transform(**resolve_data_config({}, model=dense))
    return digits._tensors(scans[:48], transform), torch.as_tensor(labels[:48])


def _searcher(dense, seed: int, granularity: int = 1) -> SearchViT:
    cost, constant = flops_cost(dense)
    model = SearchViT(dense, cost, constant, granularity)
    generator = torch.Generator().manual_seed(seed)
    # a falling schedule, some blocks pruning only, most pruning and merging: each rate nearly certain of a count
    for block, (prune, merge) in enumerate(zip(model.prune, model.merge), start=1):
        kept = 64 - 4 * block - int(torch.randint(0, 3, (1,), generator=generator))
        merged = kept - int(torch.randint(0, 4, (1,), generator=generator))
        for rate, count in ((prune, kept), (merge, merged)):
            rate.logits.data = torch.full_like(rate.logits, -10.0)
            rate.logits.data[(rate.candidates == count).nonzero()[0, 0]] = 10.0
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_forward_is_the_real_forward(dense, images, seed):
    model = _searcher(dense, seed)
    with torch.no_grad():
        logits, counts = model(images[0][:16])
        reduced = apply_method(dense, "diffrate", prune_kept=counts.prune_kept, merge_kept=counts.merge_kept)
        real = reduced(images[0][:16])
    assert min(reduced.schedule) < 65 and any(p != m for p, m in zip(counts.prune_kept, counts.merge_kept))
    assert torch.allclose(logits, real, atol=2e-5, rtol=0)
    # the differentiable cost is what the FLOPs counter counts in the real forward
    assert float(counts.cost) == pytest.approx(count_gmacs(reduced, (32, 32)), rel=1e-6)


def test_task_loss_reaches_prune_and_merge_rates(dense, images):
    model = _searcher(dense, 0)
    logits, counts = model(images[0][:16])
    logits.logsumexp(-1).mean().backward()  # no cost term: only the masks carry gradient
    prune = [r.logits.grad for r in model.prune if r.logits.grad is not None]
    merge = [r.logits.grad for r in model.merge if r.logits.grad is not None]
    assert prune and merge and all(torch.isfinite(g).all() for g in prune + merge)
    assert max(float(g.abs().max()) for g in prune) > 0 and max(float(g.abs().max()) for g in merge) > 0
    assert all(p.grad is None for p in model.vit.parameters())  # the model stays frozen


def test_uniform_schedule_meets_the_cost(dense):
    cost, constant = flops_cost(dense)
    target = 0.03

    def counted(prune, merge):
        return count_gmacs(apply_method(dense, "diffrate", prune_kept=prune, merge_kept=merge), (32, 32))

    prune, merge = uniform(65, 12, counted, target)
    assert counted(prune, merge) == pytest.approx(target, rel=0.02)


def test_search_starts_at_the_uniform_schedule_of_its_target(dense):
    cost, constant = flops_cost(dense)
    model = SearchViT(dense, cost, constant, 1)
    assert model.schedule() == ([65] + [34] * 11,) * 2  # the authors' zero logits: ceil(mean of 1..64) + class token
    model.start_uniform(0.03)
    start = model.schedule()
    assert start == uniform(65, 12, model.cost_of, 0.03) and len(set(start[1])) == 12  # every block removes tokens
    assert float(model.expected_cost()) == pytest.approx(model.cost_of(*start), rel=1e-6)
    assert model.cost_of(*start) == pytest.approx(0.03, rel=0.02)
    # the maximum-entropy distribution with that mean: a smooth tilt, not a point mass (gradients reach neighbours)
    assert all(float(r.logits.softmax(-1).max()) < 0.5 for r in (*model.prune, *model.merge))


def test_search_is_deterministic_and_resumable(dense, images, tmp_path):
    x, y = images
    settings = Settings(target=0.03, unit="GMACs", epochs=2, batch=24, seed=3)
    first = search(_searcher(dense, 0), x, y, settings)
    assert search(_searcher(dense, 0), x, y, settings) == first
    checkpoint = tmp_path / "rates.pt"

    def interrupt(p):  # killed in the second epoch: the checkpoint holds the first
        if p.step > p.steps // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(_searcher(dense, 0), x, y, settings, checkpoint, interrupt)
    assert search(_searcher(dense, 0), x, y, settings, checkpoint) == first
    assert first[0] != [65] * 12 or first[1] != [65] * 12


def test_python_api(dense, images):
    from exporter import methods

    prune, merge = methods.search(dense, *images, 0.03, epochs=1, batch=24, seed=1)
    assert len(prune) == len(merge) == 12 and prune[0] == merge[0] == 65
    assert all(2 <= c <= 65 for c in prune + merge)
    assert methods.search(dense, *images, 0.03, epochs=1, batch=24, seed=1) == (prune, merge)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits-search")
    digits.export_split(out / "train", "train")
    digits.export_split(out / "test", "test")
    return out


def test_search_command_writes_a_schedule_build_and_methods_read(folders, tmp_path, capsys):
    schedule = tmp_path / "s.json"
    argv = ["search", "--model", digits.MODEL, "--data", str(folders / "train"), "--eval-data", str(folders / "test"),
            "--images", "64", "--epochs", "1", "--batch-size", "32", "--target-flops", "0.03", "--out", str(schedule)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    # piped (not a terminal): the progress is plain lines, the last one with every number
    assert "search step 2/2  loss " in err and " GMACs  top-1 " in err
    for row in ("searched", "uniform, same cost", "GFLOPs, scaled", "dense"):
        assert row in out
    record = json.loads(schedule.read_text())
    assert record["model"] == digits.MODEL and len(record["prune_kept"]) == 12 and record["budget"]["target"] == 0.03
    assert record["accuracy"]["images"] == 64 and record["held_out"]["images"] == digits.TEST_SIZE
    assert record["settings"]["start"] == "uniform"  # --start reaches the search (and its record)
    reduced = apply_method(create_model(digits.MODEL, "pretrained"), "diffrate", schedule=str(schedule))
    assert list(reduced.schedule) == record["tokens_after"]
    assert main(["methods", "--method", "diffrate", "--schedule", str(schedule)]) == 0
    assert ",".join(map(str, record["merge_kept"])) in capsys.readouterr().out
    # the schedule belongs to these weights: random ones are refused
    assert main(["methods", "--model", digits.MODEL, "--method", "diffrate", "--schedule", str(schedule)]) == 2
    assert "other weights" in capsys.readouterr().err


@pytest.mark.parametrize("case, expected", [
    ("above dense", "outside what DiffRate can reach"),
    ("below smallest", "outside what DiffRate can reach"),
    ("no class token", "2 prefix tokens"),
    ("empty data", "no class sub-folders"),
    ("wrong classes", "class folders but the model predicts 10"),
    ("not diffrate", "only DiffRate learns"),
])
def test_search_bad_input(folders, tmp_path, capsys, case, expected):
    argv = ["search", "--model", digits.MODEL, "--data", str(folders / "train"), "--target-flops", "0.03",
            "--out", str(tmp_path / "s.json")]
    if case == "above dense":
        argv[-3] = "0.05"
    elif case == "below smallest":
        argv[-3] = "0.001"
    elif case == "no class token":
        argv[2:3] = ["deit_tiny_distilled_patch16_224", "--weights", "random"]
    elif case == "empty data":
        (tmp_path / "empty").mkdir()
        argv[4] = str(tmp_path / "empty")
    elif case == "wrong classes":
        (tmp_path / "two" / "a").mkdir(parents=True)
        (tmp_path / "two" / "b").mkdir()
        for name in ("a", "b"):
            digits.split()["test"][0][0].save(tmp_path / "two" / name / "0.png")
        argv[4] = str(tmp_path / "two")
    elif case == "not diffrate":
        argv += ["--method", "tome"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "s.json").exists()


def test_schedule_for_another_model_is_refused(folders, tmp_path, capsys):
    schedule = tmp_path / "s.json"
    schedule.write_text(json.dumps({
        "format": "exporter-diffrate-schedule/1", "model": "deit_small_patch16_224", "tokens": 197, "depth": 12,
        "weights_sha256": "0" * 64, "budget": {"unit": "GMACs", "target": 2.9},
        "prune_kept": [197] * 12, "merge_kept": [197] * 12}))
    assert main(["methods", "--model", digits.MODEL, "--method", "diffrate", "--schedule", str(schedule)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "was searched on deit_small_patch16_224" in err and "Traceback" not in err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["methods", "--model", digits.MODEL, "--method", "diffrate", "--schedule", str(tmp_path / "bad.json")]) == 2
    assert "is not a schedule file of format exporter-diffrate-schedule/1" in " ".join(capsys.readouterr().err.split())
