"""Split-conformal calibration, one threshold per history length (paper §3.2, eq. 12-14, Alg. 1).

Score of a calibration example: s = -f(S_k)_y (the negative probability of the true label, footnote 4).
Prediction set: C_k = {y : f(S_k)_y >= tau_k} (the reference code's ``>=``; the paper's eq. 3 has ``>``,
available as ``set_rule=">"``). With N exchangeable calibration scores per length k,

* ``quantile_rule="finite-sample"`` (paper, Alg. 1): q_k = the ceil((N+1)(1-alpha))-th smallest score,
  i.e. the ceil((N+1)(1-alpha))/N empirical quantile. Guarantee (length marginalisation):
  1 - alpha <= P(Y in C_k) <= 1 - alpha + 1/(N+1). Undefined when ceil((N+1)(1-alpha)) > N, i.e. when
  N < 1/alpha - 1: we refuse rather than silently return the full label set.
* ``quantile_rule="plain"`` (reference code): ``np.quantile(scores, 1 - alpha, method="higher")`` with the
  finite-sample correction commented out. No finite-sample guarantee.

tau_k = -q_k. History samplers: :class:`UniformHistorySampler` (eq. 13; closed query sets, queries drawn
with or without replacement) and :class:`TrajectoryPrefixSampler` (eq. 14; prefixes of saved
direct-prompting trajectories, for open query sets).

:class:`ConformalThresholds` keeps the raw calibration scores per k (so thresholds at any alpha can be
derived without recomputing) and saves/loads JSON with alpha, N, model, seed and the label set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmikit.cip.knowledge import History, Turn
from cmikit.harness.errors import ConfigError, ThresholdsError

QUANTILE_RULES = ("finite-sample", "plain")
SET_RULES = (">=", ">")


class CalibrationError(ConfigError):
    """A calibration setting a user can fix; the message says what was wrong."""


class ThresholdsFileError(CalibrationError, ThresholdsError):
    """A thresholds file that is missing, unreadable or does not fit the run (length, predictor, model, label
    set); the message says how to recalibrate."""


def check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise CalibrationError(f"alpha must lie strictly between 0 and 1 (miscoverage level), got {alpha!r}.")
    return float(alpha)


def min_calibration_size(alpha: float) -> int:
    """The smallest N for which the finite-sample threshold exists: N >= 1/alpha - 1."""
    return max(1, math.ceil(1.0 / check_alpha(alpha) - 1 - 1e-12))


def conformal_quantile(scores: Sequence[float], alpha: float, rule: str = "finite-sample") -> float:
    """The conformal quantile q of calibration scores (tau = -q); see the module docstring for the rules."""
    alpha = check_alpha(alpha)
    arr = np.sort(np.asarray(scores, dtype=float))
    n = arr.size
    if n == 0:
        raise CalibrationError("No calibration scores: calibrate with n_cal >= 1.")
    if rule == "finite-sample":
        rank = math.ceil((n + 1) * (1 - alpha) - 1e-12)
        if rank > n:
            raise CalibrationError(
                f"The finite-sample conformal threshold is undefined for alpha={alpha} with N={n} calibration "
                f"histories: it needs N >= 1/alpha - 1 = {min_calibration_size(alpha)}. Use more calibration "
                f"samples (--n_cal) or a larger alpha."
            )
        return float(arr[max(rank, 1) - 1])
    if rule == "plain":
        return float(np.quantile(arr, 1 - alpha, method="higher"))
    raise CalibrationError(f"Unknown quantile rule {rule!r}; allowed: {', '.join(QUANTILE_RULES)}.")


def prediction_sets(probs: np.ndarray, tau: float, set_rule: str = ">=") -> np.ndarray:
    """Boolean membership ``[B, |Y|]`` of the conformal sets {y : p_y >= tau} (or ``>``)."""
    if set_rule == ">=":
        return probs >= tau
    if set_rule == ">":
        return probs > tau
    raise CalibrationError(f"Unknown set rule {set_rule!r}; allowed: {', '.join(SET_RULES)}.")


@dataclass
class ConformalThresholds:
    """Per-length thresholds tau_k for one alpha, with the calibration scores they came from.

    ``tau(k)`` falls back to the largest calibrated length for k beyond it (and to the smallest below it).
    """

    alpha: float
    scores: dict[int, list[float]]
    labels: list[str]
    quantile_rule: str = "finite-sample"
    set_rule: str = ">="
    model: str = ""
    seed: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if self.quantile_rule not in QUANTILE_RULES:
            raise CalibrationError(f"quantile_rule must be one of {QUANTILE_RULES}, got {self.quantile_rule!r}.")
        if self.set_rule not in SET_RULES:
            raise CalibrationError(f"set_rule must be one of {SET_RULES}, got {self.set_rule!r}.")
        if not self.scores:
            raise CalibrationError("ConformalThresholds needs calibration scores for at least one length k.")
        self.scores = {int(k): [float(s) for s in v] for k, v in self.scores.items()}
        self.taus = {k: -conformal_quantile(v, self.alpha, self.quantile_rule) for k, v in sorted(self.scores.items())}

    @property
    def n_cal(self) -> int:
        return min(len(v) for v in self.scores.values())

    @property
    def lengths(self) -> list[int]:
        return sorted(self.taus)

    def tau(self, k: int) -> float:
        ks = self.lengths
        k = min(max(k, ks[0]), ks[-1])
        if k not in self.taus:  # a gap in the calibrated lengths: use the nearest shorter one
            k = max(x for x in ks if x <= k)
        return self.taus[k]

    def with_alpha(self, alpha: float, quantile_rule: str | None = None) -> ConformalThresholds:
        """The same calibration scores at another alpha (and optionally quantile rule)."""
        return ConformalThresholds(alpha, self.scores, self.labels, quantile_rule or self.quantile_rule,
                                   self.set_rule, self.model, self.seed, dict(self.metadata))

    def prediction_set(self, probs: np.ndarray, k: int) -> np.ndarray:
        """Membership of the length-k conformal set(s) for probabilities ``[|Y|]`` or ``[B, |Y|]``."""
        return prediction_sets(np.asarray(probs), self.tau(k), self.set_rule)

    def coverage(self, probs: np.ndarray, true_labels: Sequence[int], k: int) -> float:
        """Empirical coverage (App. G.11): the fraction of rows whose true label is in the length-k set."""
        member = self.prediction_set(np.atleast_2d(probs), k)
        idx = np.asarray(true_labels, dtype=int)
        return float(member[np.arange(len(idx)), idx].mean())

    def check_labels(self, labels: Sequence[str]) -> None:
        if list(labels) != list(self.labels):
            extra = sorted(set(labels) - set(self.labels))[:5]
            missing = sorted(set(self.labels) - set(labels))[:5]
            raise ThresholdsFileError(
                f"These thresholds were calibrated for another label set ({len(self.labels)} labels, model "
                f"{self.model!r}); this game has {len(labels)} labels (new: {extra}, missing: {missing}"
                f"{', or a different order' if not extra and not missing else ''}). Recalibrate with "
                f"`cip calibrate` for this knowledge base."
            )

    # ------------------------------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "n_cal": self.n_cal, "quantile_rule": self.quantile_rule,
                "set_rule": self.set_rule, "model": self.model, "seed": self.seed, "labels": self.labels,
                "taus": {str(k): v for k, v in self.taus.items()},
                "scores": {str(k): v for k, v in self.scores.items()}, "metadata": self.metadata}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, labels: Sequence[str] | None = None, alpha: float | None = None
             ) -> ConformalThresholds:
        """Load thresholds; with ``labels``, refuse a file calibrated for another label set."""
        path = Path(path)
        if not path.is_file():
            raise ThresholdsFileError(f"Thresholds file not found: {path}. Create it with `cip calibrate`.")
        from cmikit.harness.errors import DataFileError
        from cmikit.harness.schemas import ThresholdsFile, load_json

        try:
            data = load_json(path, ThresholdsFile, "thresholds file written by `cip calibrate`")
        except DataFileError as err:
            raise ThresholdsFileError(str(err)) from None
        obj = cls(alpha=data.alpha if alpha is None else alpha, scores=data.scores, labels=list(data.labels),
                  quantile_rule=data.quantile_rule, set_rule=data.set_rule, model=data.model, seed=data.seed,
                  metadata=dict(data.metadata))
        if labels is not None:
            obj.check_labels(labels)
        return obj


# ------------------------------------------------------------------------------------ history samplers
@dataclass
class CalibrationExample:
    label: int
    history: History
    context: Any = None


class UniformHistorySampler:
    """Eq. 13: draw an item uniformly (with replacement), then k queries uniformly from the closed bank
    (without replacement as in the 20Q reference code, or with replacement as in its MediQ code), with the
    item's true answers.

    ``draw_item(rng) -> (label, context, queries)`` and ``answer(label, context, query) -> str`` adapt an
    environment; :meth:`from_knowledge_base` builds them for a knowledge base.
    """

    def __init__(self, draw_item: Callable[[np.random.Generator], tuple[int, Any, Sequence[str]]],
                 answer: Callable[[int, Any, str], str], replacement: bool = False) -> None:
        self.draw_item, self.answer, self.replacement = draw_item, answer, replacement

    @classmethod
    def from_knowledge_base(cls, kb: Any, replacement: bool = False) -> UniformHistorySampler:
        def draw(rng: np.random.Generator):
            return int(rng.integers(len(kb.classes))), None, kb.questions

        return cls(draw, lambda label, ctx, q: kb.answer(label, q), replacement)

    def sample(self, k: int, rng: np.random.Generator) -> CalibrationExample:
        label, context, queries = self.draw_item(rng)
        if not self.replacement and k > len(queries):
            raise CalibrationError(f"Cannot draw {k} distinct queries from a bank of {len(queries)}; lower "
                                   f"max_length or sample with replacement.")
        picks = rng.choice(len(queries), size=k, replace=self.replacement) if k else []
        history = tuple(Turn(queries[j], self.answer(label, context, queries[j])) for j in picks)
        return CalibrationExample(label, history, context)


class TrajectoryPrefixSampler:
    """Eq. 14: the length-k prefix of a saved direct-prompting trajectory drawn with replacement.

    ``trajectories`` are dicts ``{"label": int, "history": [[question, answer], ...], "context": ...}``
    (the ``history`` of a saved game trace works as is); those shorter than k are skipped.
    """

    def __init__(self, trajectories: Sequence[dict[str, Any]]) -> None:
        if not trajectories:
            raise CalibrationError("TrajectoryPrefixSampler needs at least one saved trajectory.")
        self.trajectories = [
            (int(t["label"]), tuple(Turn(*(turn if isinstance(turn, (list, tuple)) else
                                            (turn["question"], turn["answer"]))) for turn in t["history"]),
             t.get("context"))
            for t in trajectories
        ]

    def sample(self, k: int, rng: np.random.Generator) -> CalibrationExample:
        pool = [t for t in self.trajectories if len(t[1]) >= k]
        if not pool:
            longest = max(len(t[1]) for t in self.trajectories)
            raise CalibrationError(f"No saved trajectory has {k} turns (longest: {longest}); lower max_length.")
        label, history, context = pool[int(rng.integers(len(pool)))]
        return CalibrationExample(label, history[:k], context)


def calibrate(predictor: Any, sampler: Any, alpha: float, n_cal: int, max_length: int, seed: int = 0,
              min_length: int = 1, quantile_rule: str = "finite-sample", set_rule: str = ">=", model: str = "",
              progress: bool = True, chunk: int = 64) -> ConformalThresholds:
    """Alg. 1: for k = min_length..max_length, N sampled histories -> scores -f(S_k)_y -> thresholds.

    All histories are drawn first (so the random stream does not depend on batching), then scored in chunks.
    """
    from tqdm.auto import tqdm

    check_alpha(alpha)
    if n_cal < 1:
        raise CalibrationError(f"n_cal must be >= 1, got {n_cal}.")
    if quantile_rule == "finite-sample" and n_cal < min_calibration_size(alpha):
        raise CalibrationError(
            f"n_cal={n_cal} is too small for alpha={alpha}: the finite-sample threshold is undefined unless "
            f"N >= 1/alpha - 1 = {min_calibration_size(alpha)}. Raise n_cal or alpha."
        )
    if max_length < min_length:
        raise CalibrationError(f"max_length ({max_length}) must be >= min_length ({min_length}).")
    rng = np.random.default_rng(seed)
    examples = [(k, sampler.sample(k, rng)) for k in range(min_length, max_length + 1) for _ in range(n_cal)]
    scores: dict[int, list[float]] = {k: [] for k in range(min_length, max_length + 1)}
    bar = tqdm(total=len(examples), desc="calibrate", unit="hist", disable=not progress)
    for k in scores:  # one length per call: rows of similar length pad little
        of_k = [e for kk, e in examples if kk == k]
        for start in range(0, len(of_k), chunk):
            part = of_k[start : start + chunk]
            probs = predictor.predict([e.history for e in part], [e.context for e in part])
            scores[k].extend(-float(p[e.label]) for e, p in zip(part, probs))
            bar.update(len(part))
    bar.close()
    return ConformalThresholds(alpha, scores, list(predictor.labels), quantile_rule, set_rule, model, seed,
                               {"n_cal": n_cal, "min_length": min_length, "max_length": max_length,
                                "sampler": type(sampler).__name__})
