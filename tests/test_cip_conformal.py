"""Conformal calibration (paper §3.2, Alg. 1): quantile rules, the coverage guarantee, thresholds I/O, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmikit.cip.conformal import (
    CalibrationError,
    ConformalThresholds,
    TrajectoryPrefixSampler,
    UniformHistorySampler,
    calibrate,
    conformal_quantile,
    min_calibration_size,
)
from cmikit.cip.knowledge import KnowledgeBase
from cmikit.cip.predictors import TablePredictor


def _coverage(alpha: float, n_cal: int, rule: str, reps: int = 3000, n_test: int = 40, seed: int = 0) -> float:
    """Synthetic predictor: Dirichlet probabilities over 5 labels, labels drawn from them (exchangeable)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(5) * 0.7, size=(reps, n_cal + n_test))
    u = rng.random((reps, n_cal + n_test, 1))
    labels = (probs.cumsum(-1) < u).sum(-1).clip(max=4)
    true_p = np.take_along_axis(probs, labels[..., None], -1)[..., 0]
    hits = []
    for r in range(reps):
        tau = -conformal_quantile(-true_p[r, :n_cal], alpha, rule)
        hits.append((true_p[r, n_cal:] >= tau).mean())
    return float(np.mean(hits))


@pytest.mark.parametrize("alpha,n_cal", [(0.1, 19), (0.3, 5), (0.2, 50)])
def test_finite_sample_coverage_lies_in_the_guaranteed_band(alpha, n_cal):
    cov = _coverage(alpha, n_cal, "finite-sample")
    noise = 0.01
    assert 1 - alpha - noise <= cov <= 1 - alpha + 1 / (n_cal + 1) + noise, cov


def test_plain_rule_undercovers_where_the_paper_rule_does_not():
    # N=5, alpha=0.3: the paper's rank ceil(6*0.7)=5 -> expected coverage 5/6; numpy's "higher" quantile at 0.7
    # takes position ceil(0.7*4)=3 -> the 4th smallest score -> expected coverage 4/6 < 0.7.
    assert _coverage(0.3, 5, "finite-sample") == pytest.approx(5 / 6, abs=0.01)
    assert _coverage(0.3, 5, "plain") == pytest.approx(4 / 6, abs=0.01)


def test_quantile_is_the_right_order_statistic():
    scores = [0.5, -0.1, 0.3, 0.9, 0.0, 0.7, 0.2, 0.4, 0.6]  # N = 9
    # sorted: -0.1 0.0 0.2 0.3 0.4 0.5 0.6 0.7 0.9; alpha = 0.2: rank ceil(10 * 0.8) = 8 -> 0.7
    assert conformal_quantile(scores, 0.2) == 0.7
    # plain: np.quantile(.., 0.8, "higher"): position 0.8*8 = 6.4 -> index 7 -> 0.7 as well here
    assert conformal_quantile(scores, 0.2, "plain") == 0.7
    assert conformal_quantile(scores, 0.5) == 0.4  # rank ceil(5) = 5 -> 0.4


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5])
def test_alpha_outside_unit_interval_is_refused(alpha):
    with pytest.raises(CalibrationError, match="strictly between 0 and 1"):
        conformal_quantile([0.1, 0.2], alpha)


def test_too_few_calibration_samples_say_the_threshold_is_undefined():
    assert min_calibration_size(0.1) == 9
    with pytest.raises(CalibrationError, match=r"undefined.*N >= 1/alpha - 1 = 9"):
        conformal_quantile(np.zeros(8), 0.1)
    conformal_quantile(np.zeros(9), 0.1)  # exactly enough
    kb = KnowledgeBase.load("everyday")
    with pytest.raises(CalibrationError, match="too small"):
        calibrate(TablePredictor(kb), UniformHistorySampler.from_knowledge_base(kb), 0.05, 10, 2, progress=False)


def test_thresholds_save_load_roundtrip_and_label_check(tmp_path):
    kb = KnowledgeBase.load("everyday")
    pred = TablePredictor(kb, noise=0.05)
    th = calibrate(pred, UniformHistorySampler.from_knowledge_base(kb), 0.1, 30, 4, seed=3, min_length=0,
                   model="table", progress=False)
    path = th.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["alpha"] == 0.1 and data["n_cal"] == 30 and data["seed"] == 3 and data["model"] == "table"
    back = ConformalThresholds.load(path, labels=kb.classes)
    assert back.taus == th.taus
    # thresholds at another alpha come from the same scores; a smaller alpha never raises tau
    assert all(back.with_alpha(0.05).tau(k) <= th.tau(k) for k in th.lengths)
    assert back.tau(99) == th.tau(4) and back.tau(-1) == th.tau(0)  # fallbacks beyond the calibrated range
    other = list(kb.classes[:-1]) + ["submarine"]
    with pytest.raises(CalibrationError, match="another label set.*submarine"):
        ConformalThresholds.load(path, labels=other)


def test_coverage_function_and_set_rule():
    th = ConformalThresholds(0.5, {1: [-0.5, -0.4, -0.3]}, ["a", "b", "c"])
    # N=3, alpha=.5: rank ceil(2) = 2 -> q = -0.4 -> tau = 0.4
    assert th.tau(1) == pytest.approx(0.4)
    probs = np.array([[0.4, 0.3, 0.3], [0.2, 0.5, 0.3]])
    assert th.prediction_set(probs, 1).tolist() == [[True, False, False], [False, True, False]]
    assert th.coverage(probs, [0, 0], 1) == 0.5
    strict = ConformalThresholds(0.5, {1: [-0.5, -0.4, -0.3]}, ["a", "b", "c"], set_rule=">")
    assert strict.coverage(probs, [0, 0], 1) == 0.0


def test_uniform_sampler_draws_distinct_queries_and_true_answers():
    kb = KnowledgeBase.load("everyday")
    sampler = UniformHistorySampler.from_knowledge_base(kb)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ex = sampler.sample(6, rng)
        qs = [t.question for t in ex.history]
        assert len(set(qs)) == 6
        assert all(t.answer == kb.answer(ex.label, t.question) for t in ex.history)
    with pytest.raises(CalibrationError, match="distinct queries"):
        sampler.sample(len(kb.questions) + 1, rng)
    with_repl = UniformHistorySampler.from_knowledge_base(kb, replacement=True)
    assert len(with_repl.sample(len(kb.questions) + 5, rng).history) == len(kb.questions) + 5


def test_trajectory_prefix_sampler_takes_prefixes_of_long_enough_runs():
    trajs = [{"label": 0, "history": [["q1", "Yes."], ["q2", "No."]]},
             {"label": 1, "history": [["p1", "No."], ["p2", "No."], ["p3", "Yes."]]}]
    sampler = TrajectoryPrefixSampler(trajs)
    rng = np.random.default_rng(0)
    for _ in range(10):
        ex = sampler.sample(3, rng)
        assert ex.label == 1 and [t.question for t in ex.history] == ["p1", "p2", "p3"]
    assert len(sampler.sample(1, rng).history) == 1
    with pytest.raises(CalibrationError, match="longest: 3"):
        sampler.sample(4, rng)


def test_calibration_on_saved_direct_prompting_games(tmp_path):
    from cmikit.cip.evaluate import trajectory_sampler

    kb = KnowledgeBase.load("everyday")
    lines = [json.dumps({"id": f"direct-{i}", "method": "direct",
                         "trace": {"true_label": kb.classes[i],
                                   "history": [[q, kb.answer(i, q)] for q in kb.questions[i : i + 4]]}})
             for i in range(12)]
    lines.append(json.dumps({"id": "ip-0", "method": "ip", "trace": {"true_label": "dog", "history": []}}))
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    sampler = trajectory_sampler(path, kb.classes)
    assert len(sampler.trajectories) == 12  # only the direct-prompting games
    th = calibrate(TablePredictor(kb), sampler, 0.1, 20, 4, progress=False)
    assert th.lengths == [1, 2, 3, 4] and th.metadata["sampler"] == "TrajectoryPrefixSampler"
    # longer histories of the true item's answers concentrate the posterior: tau does not fall
    assert th.tau(4) >= th.tau(1)
    with pytest.raises(ValueError, match="no games of the 'direct' method"):
        trajectory_sampler(tmp_path / "missing.jsonl", kb.classes)
