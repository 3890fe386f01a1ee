"""Query-selection criteria on hand-made posteriors (paper eq. C-IP, the reference code's bound, IP)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmikit.cip.criteria import (
    CriterionError,
    binary_entropy,
    check_criterion,
    cip_code_score,
    cip_paper_score,
    draw_estimation_labels,
    ip_score,
    mean_set_size,
)

# Two candidates x two estimation samples x four labels.
Q1 = [[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]  # sets at tau=.3: {0,1}, {0,1}; entropy 1 bit each
Q2 = [[0.4, 0.2, 0.2, 0.2], [0.4, 0.2, 0.2, 0.2]]  # sets {0};  entropy 0.4*log(1/.4)+3*.2*log(5) = 1.922 bits
POST = np.array([Q1, Q2])
W = np.array([0.5, 0.5])
TAU = 0.3


def test_mean_set_size_and_entropy_by_hand():
    assert mean_set_size(POST, W, TAU).tolist() == [2.0, 1.0]
    h2 = -(0.4 * math.log2(0.4) + 3 * 0.2 * math.log2(0.2))
    # zeros are clamped at 1e-5 as in the reference code: each adds 1e-5*log2(1e5)
    clamp = 2 * 1e-5 * math.log2(1e5)
    assert ip_score(POST, W) == pytest.approx([1.0 + clamp, h2], abs=1e-9)


def test_cip_and_ip_disagree_on_this_step():
    cip = cip_paper_score(POST, W, TAU, alpha=0.1, n_cal=100)
    ip = ip_score(POST, W)
    assert int(np.argmin(cip)) == 1  # Q2 leaves a singleton set
    assert int(np.argmin(ip)) == 0  # but Q1 has the lower entropy


def test_paper_score_is_the_bound_with_its_constant():
    alpha, n_cal = 0.1, 100
    alpha_n = alpha - 1 / (n_cal + 1)
    lam = binary_entropy(alpha) + alpha * math.log2(4) - (1 - alpha_n) * math.log2(1 - alpha)
    got = cip_paper_score(POST, W, TAU, alpha, n_cal)
    assert got == pytest.approx([lam + (1 - alpha_n) * 1.0, lam + 0.0])


def test_reference_code_bound_by_hand():
    alpha = 0.1
    labels = np.array([0, 2])  # sample 1 is covered by {0,1}; sample 2 (label 2) is not
    alpha_n = alpha - 1 / (2 + 1)  # the code's alpha_n uses n_est
    hb = binary_entropy(alpha)
    got = cip_code_score(POST, W, labels, TAU, alpha)
    # Q1: inside group log2|{0,1}| = 1; outside group log2(4 - 2) = 1
    q1 = hb + (1 - alpha_n) * 1.0 + alpha * 1.0
    # Q2: sets {0}: sample 1 inside (log2 1 = 0); sample 2 outside: log2(4 - 1)
    q2 = hb + (1 - alpha_n) * 0.0 + alpha * math.log2(3)
    assert got == pytest.approx([q1, q2])
    # an empty group contributes 0: both samples covered
    all_in = cip_code_score(POST, W, np.array([0, 0]), TAU, alpha)
    assert all_in == pytest.approx([hb + (1 - alpha_n) * 1.0, hb])


def test_binary_entropy_edges():
    assert binary_entropy(0.5) == 1.0 and binary_entropy(0.0) == 0.0 and binary_entropy(1.0) == 0.0


def test_estimation_sources():
    rng = np.random.default_rng(0)
    post = np.array([0.7, 0.2, 0.1, 0.0])
    labels, w = draw_estimation_labels(rng, 1000, "posterior", post)
    assert 3 not in labels and abs((labels == 0).mean() - 0.7) < 0.05 and w.sum() == pytest.approx(1)
    labels, w = draw_estimation_labels(rng, 4, "exhaustive", post)
    assert labels.tolist() == [0, 1, 2, 3] and w.tolist() == pytest.approx(post.tolist())
    labels, _ = draw_estimation_labels(rng, 4000, "prior", post)
    assert set(labels.tolist()) == {0, 1, 2, 3}
    with pytest.raises(CriterionError, match="allowed: prior, posterior, exhaustive"):
        draw_estimation_labels(rng, 4, "oracle", post)
    with pytest.raises(CriterionError, match="cip-paper"):
        check_criterion("cip")


def test_empty_sets_fool_the_fixed_alpha_bounds_but_not_the_empirical_one():
    from cmikit.cip.criteria import cip_fano_score

    alpha, tau = 0.1, 0.3
    flat = np.full((1, 2, 4), 0.25)  # an uninformative question: every simulated set is empty at tau = .3
    split = np.array([[[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]])  # an informative one: sets of 2, both covered
    labels = np.array([0, 2])
    both = np.concatenate([flat, split])
    code = cip_code_score(both, W, labels, tau, alpha)
    assert code[0] == pytest.approx(binary_entropy(alpha) + alpha * 2.0)  # log2(4 - 0) = 2
    assert int(np.argmin(code)) == 0  # the reference bound prefers learning nothing
    assert int(np.argmin(cip_paper_score(both, W, tau, alpha, 100))) == 0
    fano = cip_fano_score(both, W, labels, tau)
    assert fano.tolist() == pytest.approx([2.0, 1.0])  # e = 1: log2|Y|; e = 0: mean log2|C| = 1
    assert int(np.argmin(fano)) == 1
