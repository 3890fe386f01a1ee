"""Miscalibrated predictors and worlds, to test the paper's thesis in simulation (our addition).

The paper's claim is that C-IP helps when the LLM's posterior is miscalibrated. With the exact-Bayes
:class:`cmikit.cip.predictors.TablePredictor` the posterior is calibrated by construction, so these wrappers
miscalibrate it the ways LLMs are miscalibrated:

* :class:`TemperedPredictor`: over-confidence, p_y proportional to p_y^(1/T) with T < 1 (T = 1: unchanged).
* :class:`FirstLabelBiasPredictor`: a prior biased toward the first-listed label, log p_0 + log(b) (b = 1:
  unchanged); LLMs favour the first option of a list.
* :func:`noisy_world`: answer noise the predictor does not model: the world that answers the questions (the
  test games, the estimation samples and the calibration histories) disagrees with the predictor's table in a
  fraction rho of the (item, question) cells, drawn once per seed, while the predictor assumes its own rate.

:func:`expected_calibration_error` measures the top-label ECE (equal-width bins) of a predictor on
exchangeable histories, the quantity each wrapper raises with its strength.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cmikit.cip.knowledge import History, KnowledgeBase
from cmikit.cip.predictors import Predictor, PredictorError


class TemperedPredictor(Predictor):
    """``softmax(log p / T)``: T < 1 is over-confident, T > 1 under-confident."""

    def __init__(self, base: Predictor, temperature: float) -> None:
        if not temperature > 0:
            raise PredictorError(f"temperature must be > 0, got {temperature}.")
        self.base, self.temperature = base, float(temperature)
        self.labels = list(base.labels)
        self.name = f"{getattr(base, 'name', 'predictor')}@T={temperature:g}"

    def predict(self, histories: Sequence[History], contexts: Sequence[Any] | None = None) -> np.ndarray:
        p = self.base.predict(histories, contexts)
        if self.temperature == 1.0 or len(p) == 0:
            return p
        logits = np.log(np.clip(p, 1e-300, None)) / self.temperature
        logits -= logits.max(axis=-1, keepdims=True)
        out = np.exp(logits)
        return out / out.sum(axis=-1, keepdims=True)


class FirstLabelBiasPredictor(Predictor):
    """Multiplies the first label's probability by ``bias`` and renormalises (b = 1: unchanged)."""

    def __init__(self, base: Predictor, bias: float, label: int = 0) -> None:
        if not bias > 0:
            raise PredictorError(f"bias must be > 0, got {bias}.")
        self.base, self.bias, self.label = base, float(bias), int(label)
        self.labels = list(base.labels)
        self.name = f"{getattr(base, 'name', 'predictor')}+bias{bias:g}"

    def predict(self, histories: Sequence[History], contexts: Sequence[Any] | None = None) -> np.ndarray:
        p = self.base.predict(histories, contexts).copy()
        if len(p):
            p[:, self.label] *= self.bias
            p /= p.sum(axis=-1, keepdims=True)
        return p


def noisy_world(kb: KnowledgeBase, rho: float, seed: int) -> KnowledgeBase:
    """A copy of ``kb`` whose answers disagree with it in a fraction ``rho`` of the cells (drawn with ``seed``)."""
    if not 0 <= rho < 0.5:
        raise PredictorError(f"rho must be in [0, 0.5), got {rho}.")
    rng = np.random.default_rng(7919 + seed)
    flips = rng.random(kb.table.shape) < rho
    table = np.where(flips, 1 - kb.table, kb.table)
    return KnowledgeBase(list(kb.classes), list(kb.questions), table, source=kb.source, name=f"{kb.name}~{rho:g}")


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], n_bins: int = 10) -> float:
    """Top-label ECE: sum over equal-width confidence bins of (bin share) * |accuracy - mean confidence|."""
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels, dtype=int)
    conf = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def predictor_ece(predictor: Predictor, sampler: Any, max_k: int, n_per_k: int, seed: int = 0) -> float:
    """ECE of ``predictor`` on ``n_per_k`` exchangeable histories per length k = 0..max_k from ``sampler``."""
    rng = np.random.default_rng(20_000 + seed)
    examples = [sampler.sample(k, rng) for k in range(max_k + 1) for _ in range(n_per_k)]
    probs = predictor.predict([e.history for e in examples], [e.context for e in examples])
    return expected_calibration_error(probs, [e.label for e in examples])
