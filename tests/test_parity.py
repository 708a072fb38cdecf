"""The verification thresholds tell a broken graph from rounding and from near-tie token flips."""
import numpy as np

from exporter.checks.parity import compare


def logits(n=6, classes=10, seed=0):
    ref = np.random.default_rng(seed).normal(size=(n, classes)).astype(np.float32)
    ref[:, 0] += 5  # decisive: class 0 wins by a wide margin
    return ref


def test_identical_passes():
    ref = logits()
    c = compare(ref, ref.copy(), "g", "fp32", 2)
    assert c.passed and c.max_abs == 0 and c.top1_agreement == 1 and c.decisive == 6


def test_fp32_error_above_threshold_fails():
    ref = logits()
    c = compare(ref, ref + 2e-4, "g", "fp32", 2)
    assert not c.passed and "max abs error" in c.failures[0]


def test_fp32_flipped_samples_are_held_to_the_replay_but_many_flips_fail():
    ref = logits()
    bad = ref.copy()
    bad[0] += 3.0  # the flipped sample moved a lot ...
    flips = np.array([True, False, False, False, False, False])
    replay = ref.copy()
    replay[0] = bad[0] + 1e-6  # ... and PyTorch with the graph's token choices computes the same
    c = compare(replay, bad, "g", "fp32", 2, flips, replayed=flips)
    assert c.passed and c.token_flips == 1 and c.replayed_flips == 1 and c.max_abs < 2e-6
    c = compare(ref, bad, "g", "fp32", 2, flips, replayed=flips)  # the graph computed something else
    assert not c.passed and "max abs error" in c.failures[0]
    many = np.array([True] * 4 + [False] * 2)
    c = compare(ref, ref.copy(), "g", "fp32", 2, many, replayed=many)
    assert not c.passed and "too many to be near-ties" in c.failures[0]


def test_fp16_counts_every_sample_and_only_decisive_top1():
    ref = logits()
    ref[1, 1] = ref[1, 0] - 1e-4  # sample 1 is a near-tie between classes 0 and 1
    cand = ref + np.float32(5e-4)
    cand[1, 1] = cand[1, 0] + 1e-4  # ... and fp16 rounding swaps them: not decisive, allowed
    c = compare(ref, cand, "g", "fp16", 2, np.ones(6, dtype=bool))
    assert c.passed and c.decisive == 5 and c.top1_agreement < 1
    cand[2] = -ref[2]  # a decisive sample that is wrong
    c = compare(ref, cand, "g", "fp16", 2)
    assert not c.passed and any("cosine" in f for f in c.failures)


def test_nan_fails():
    ref = logits()
    cand = ref.copy()
    cand[0, 3] = np.nan
    assert "NaN" in compare(ref, cand, "g", "fp16", 2).failures[0]


def test_fp16_flip_is_replayed_only_when_pytorch_half_flips_too():
    """The caller replays a flip only with evidence of a tie; an unexplained flip is held to the fp32 reference."""
    ref = logits()
    cand = ref.copy()
    cand[0] = -ref[0]  # sample 0 kept other tokens and its logits moved a lot
    flips = np.array([True, False, False, False, False, False])
    fails = compare(ref, cand, "g", "fp16", 2, flips, replayed=np.zeros(6, dtype=bool))
    assert not fails.passed and fails.replayed_flips == 0
    replay = ref.copy()
    replay[0] = cand[0]
    ok = compare(replay, cand, "g", "fp16", 2, flips, replayed=flips)
    assert ok.passed and ok.token_flips == 1 and ok.replayed_flips == 1 and ok.min_cosine > 0.999999


def test_fp16_without_decisive_samples_warns_and_report_says_so():
    from reports import report

    ref = logits()
    ref[:, 1] = ref[:, 0]  # every sample an exact tie between classes 0 and 1: top-1 proves nothing
    c = compare(ref, ref + np.float32(1e-3), "model.fp16.onnx", "fp16", 2, np.ones(6, dtype=bool), np.ones(6, dtype=bool))
    assert c.passed and c.decisive == 0 and "top-1 agreement not checked" in c.warnings[0]
    r = report(spec={"method": "diffrate", "precision": "fp16"}, comparisons=[c])
    md = r.markdown()
    assert r.passed and "| 0 (—) | 6 (6 replayed) | pass |" in md and r.warnings()[0] in md
    assert not compare(logits(), logits(), "g", "fp16", 2).warnings
