# SPDX-License-Identifier: Apache-2.0
"""The verification thresholds tell a broken graph from rounding and from near-tie token flips."""
import numpy as np

from exporter.checks.margins import Decision, Rounding, error, margin
from exporter.checks.parity import Cut, compare, failing


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
    assert failing(ref, cand, "fp16").tolist() == [False, False, True, False, False, False]  # the one to name
    assert failing(ref, cand, "fp32").tolist() == [True] * 6  # 5e-4 is beyond fp32's threshold everywhere


def test_nan_fails():
    ref = logits()
    cand = ref.copy()
    cand[0, 3] = np.nan
    assert "NaN" in compare(ref, cand, "g", "fp16", 2).failures[0]
    assert failing(ref, cand, "fp16").tolist() == [True] + [False] * 5


def test_fp16_flip_fails_when_it_overturns_a_clear_score_margin():
    """A flip within twice the fp16 error of its scores is replayed and held to the thresholds; a flip against a
    clearer margin is a bug, and the check fails with a sentence naming sample, reduction and margin."""
    ref = logits()
    cand = ref.copy()
    cand[0] = ref[0] + np.float32(1e-4)  # sample 0 kept other tokens; PyTorch replaying them computes the same
    flips = np.array([True, False, False, False, False, False])
    near = Cut(sample=0, reduction=2, what="kept tokens", margin=1.5e-3, error=1e-3)
    ok = compare(cand.copy(), cand, "g", "fp16", 2, flips, replayed=flips, cuts=[near])
    assert near.near_tie and ok.passed and ok.replayed_flips == 1 and ok.cuts[0]["near_tie"]
    clear = Cut(sample=0, reduction=2, what="kept tokens", margin=0.05, error=1e-3)
    bad = compare(ref, cand, "g", "fp16", 2, flips, replayed=np.zeros(6, dtype=bool), cuts=[clear])
    assert not bad.passed and bad.replayed_flips == 0 and not bad.cuts[0]["near_tie"]
    assert bad.failures == [
        "sample 0's kept tokens at reduction 2 differ from PyTorch fp32's against an fp32 score margin of 0.05, "
        "more than 2x the fp16 error of those scores (0.001): not a near-tie"
    ]


def decision(scores, chosen, reduction=0, what="kept tokens"):
    """A Decision of one row per sample."""
    return Decision(reduction, what, np.asarray(scores, np.float32)[:, None], np.asarray(chosen)[:, None])


def test_margin_is_the_gap_at_the_cut_and_negative_against_the_scores():
    scores = [[0.9, 0.5, 0.49, 0.1], [0.9, 0.5, 0.49, 0.1]]
    own = margin(decision(scores, [[0, 1], [1, 0]]))  # the top two, in any order
    assert np.allclose(own, 0.01)
    against = margin(decision(scores, [[0, 2], [2, 3]]))  # tipped at the cut; the best two dropped
    assert np.allclose(against, [-0.01, -0.8])
    tome = decision([[-np.inf, 0.3, 0.2]], [[1]])  # ToMe's class token is never a candidate
    assert np.allclose(margin(tome), 0.1)
    assert np.isinf(margin(decision([[0.3, 0.2]], [[0, 1]])))  # nothing left out: no choice


def test_fp16_error_is_taken_near_the_cut():
    """Scores far from the cut (the large top scores, which round most) cannot cross it; their error is left out."""
    fp32 = decision([[0.9, 0.5, 0.49, 0.1]], [[0, 1]])
    fp16 = decision([[0.95, 0.501, 0.4895, 0.1]], [[0, 1]])
    assert np.allclose(error(fp32, fp16), 1e-3)  # 0.5 and 0.49 lie within 2 x 0.05 of the cut, 0.9 and 0.1 do not
    # a sample is fp16-sensitive when its cut is within twice that error, and the first choice against the scores is
    # the one judged (later choices depend on it)
    rounding = Rounding.measure([fp32], [fp16])
    assert not rounding.sensitive()[0]  # gap 0.01 > 2 x 0.001
    assert np.allclose(rounding.closeness(), 10, rtol=1e-4)  # the margin in units of the error (float32 scores)
    near = Rounding([fp32], [np.array([0.006])])
    assert near.sensitive()[0]
    # per sample, the closest of its choices; no rounding: inf, unless it is an exact tie
    two = [decision([[0.9, 0.5, 0.49], [0.9, 0.5, 0.5]], [[0, 1], [0, 1]]), decision([[0.3, 0.2], [0.3, 0.2]], [[0], [0]])]
    closeness = Rounding(two, [np.array([0.002, 0.0]), np.array([0.02, 0.001])]).closeness()
    assert np.allclose(closeness, [5, 0]) and Rounding(two, [np.zeros(2), np.zeros(2)]).closeness()[0] == np.inf
    tipped = [decision([[0.9, 0.5, 0.49, 0.1]], [[0, 2]]), decision([[0.3, 0.2]], [[1]], reduction=1)]
    (cut,) = near.first_cuts(tipped, np.array([True]))
    assert (cut.reduction, cut.what, cut.near_tie) == (1, "kept tokens", True) and np.isclose(cut.margin, 0.01)
    assert near.first_cuts([fp32], np.array([True])) == []  # same choice, other order: no cut


def test_fp16_error_of_a_choice_in_rows_is_that_of_rows_that_can_tip():
    """Each merged token's partner is a row: a row whose gap no rounding of its size bridges adds no error."""
    fp32 = Decision(0, "merge partners", np.array([[[0.5, 0.49, 0.1], [0.9, 0.1, 0.0]]], np.float32), np.array([[[0], [0]]]))
    fp16 = Decision(0, "merge partners", np.array([[[0.501, 0.4895, 0.1], [0.95, 0.05, 0.0]]], np.float32), fp32.chosen)
    assert np.allclose(margin(fp32), 0.01) and np.allclose(error(fp32, fp16), 1e-3)


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
