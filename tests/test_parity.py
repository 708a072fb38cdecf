"""The verification thresholds tell a broken graph from rounding and from near-tie token flips."""
import numpy as np

from exporter.verify.parity import compare


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


def test_fp32_flipped_samples_are_excluded_but_many_flips_fail():
    ref = logits()
    bad = ref.copy()
    bad[0] += 3.0  # the flipped sample moved a lot
    flips = np.array([True, False, False, False, False, False])
    c = compare(ref, bad, "g", "fp32", 2, flips)
    assert c.passed and c.token_flips == 1 and c.max_abs == 0
    c = compare(ref, bad, "g", "fp32", 2, np.array([True] * 4 + [False] * 2))
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


def test_fp16_flip_is_excused_only_when_pytorch_half_flips_too():
    ref = logits()
    cand = ref.copy()
    cand[0] = -ref[0]  # sample 0 kept other tokens and its logits moved a lot
    flips = np.array([True, False, False, False, False, False])
    fails = compare(ref, cand, "g", "fp16", 2, flips, excused=np.zeros(6, dtype=bool))
    assert not fails.passed and fails.excused_flips == 0
    ok = compare(ref, cand, "g", "fp16", 2, flips, excused=np.array([True, True, False, False, False, False]))
    assert ok.passed and ok.token_flips == 1 and ok.excused_flips == 1 and ok.min_cosine > 0.999999


def test_fp16_check_that_held_no_sample_warns_and_shows_no_numbers():
    """Random weights can make every fp16 sample a near-tie that PyTorch's half model flips too: the check
    passes (nothing contradicts parity) but must say it proved nothing, not print perfect numbers."""
    from exporter.verify.report import render, warnings

    ref = logits()
    cand = -ref  # would fail every threshold, were any sample held to them
    everything = np.ones(6, dtype=bool)
    c = compare(ref, cand, "model_fp16.onnx", "fp16", 2, everything, excused=everything)
    assert c.passed and c.checked == 0 and c.excused_flips == 6
    assert len(c.warnings) == 1 and "no sample checked" in c.warnings[0]
    report = {"run_name": "r", "passed": True, "schedule": None, "thresholds": "t", "lint": {}, "tensorrt_rtx": {},
              "spec": {"model": "m", "method": "diffrate", "method_params": {}, "precision": "fp16", "batch": 2,
                       "opset": 18},
              "flops": {"gmacs": 1.0, "dense_gmacs": 1.0, "ratio": 1.0}, "comparisons": [c.to_dict()]}
    md = render(report)
    assert "| 6 (0) | — | — | — | — | 0 (—) |" in md and warnings(report)[0] in md
    strict = compare(ref, ref.copy(), "g", "fp16", 2, np.zeros(6, dtype=bool))
    assert strict.checked == 6 and not strict.warnings
