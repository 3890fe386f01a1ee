"""Query-selection criteria: how good is asking candidate q next? (paper §3.1 eq. C-IP and (11); App. Alg. 4/5)

For one candidate q and n_est estimation samples (y_i with weights w_i, their simulated answers a_i and the
posteriors p_i = f(S_k + (q, a_i))), with C_i = {y : p_{i,y} >= tau_{k+1}}:

* ``cip-paper`` (the paper's objective, eq. C-IP): lambda_alpha + (1 - alpha_N) * log2 E[|C|], with
  lambda_alpha = h_b(alpha) + alpha * log2|Y| - (1 - alpha_N) * log2(1 - alpha) and alpha_N = alpha - 1/(N+1)
  (N = calibration size). The constant does not change the argmin, so this is "minimise the mean set size";
  the raw mean set size is also reported (``mean-set-size``).
* ``cip-code`` (what the reference code computes, ``compute_upper_bound_formula``): the Fano-style bound
  h_b(alpha) + (1 - alpha_n) * mean_{i in I} log2|C_i| + alpha * mean_{i not in I} log2(|Y| - |C_i|),
  I = {i : y_i in C_i}, alpha_n = alpha - 1/(n_est + 1); an empty group contributes 0. Needs the labels y_i.
* ``cip-fano`` (our extension, not in the paper or the code): the same Fano form with the *empirical*
  miscoverage rate e of the simulated sets in place of alpha: h_b(e) + (1 - e) * mean_I log2|C_i| +
  e * mean_{not I} log2(|Y| - |C_i|). The fixed-alpha forms reward questions that leave every simulated set
  empty (nothing learned, tau above every probability): ``cip-code`` then scores h_b(alpha) +
  alpha * log2|Y|, its best value, and ``cip-paper`` log2(0). With e = 1 that case scores log2|Y|, its worst.
* ``cip-floor`` (our extension, the default; a heuristic with an IP tie-break, docs/cip.md): the paper's
  objective with every empty simulated set counted as the current step's set C_k (|Y| if that is empty
  too): an answer that empties the set has taught nothing the conformal procedure can act on. Equal to ``cip-paper`` whenever no
  simulated set is empty; label-free. Ties (integer sizes) go to the lower expected entropy (weight 1e-6).
* ``cip-selffano`` (our extension): Fano's bound per simulated posterior with its own miscoverage of its set,
  e_i = 1 - p_i(C_i): h_b(e_i) + (1 - e_i) log2|C_i| + e_i log2(|Y| - |C_i|), averaged; label-free.
* ``ip`` (the IP baseline, ``compute_entropy_formula``): mean entropy in bits, probabilities clamped at 1e-5.

All are minimised. Means are weighted by w_i (uniform for sampled estimation examples).
"""

from __future__ import annotations

import math

import numpy as np

from cmikit.harness.errors import ConfigError

SCORED_CRITERIA = ("cip-floor", "cip-paper", "cip-code", "cip-fano", "cip-selffano", "ip")
ALL_CRITERIA = (*SCORED_CRITERIA, "random", "direct")
# The default criterion of the agent, `cip play` and the first of `cip eval`'s methods: the C-IP variant that
# measures best (docs/cip.md, "Which C-IP variant is the default").
DEFAULT_CRITERION = "cip-floor"
ESTIMATION_SOURCES = ("prior", "posterior", "exhaustive")


class CriterionError(ConfigError):
    """An unknown criterion or estimation setting; the message lists what is allowed."""


def binary_entropy(p: float) -> float:
    """h_b(p) in bits."""
    if p <= 0 or p >= 1:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def set_membership(posteriors: np.ndarray, tau: float, set_rule: str = ">=", nonempty: bool = False) -> np.ndarray:
    """Boolean membership of C_i = {y : p_y >= tau}; ``nonempty`` also puts the top label in every set (an
    extension of this project, not in the paper: an empty set otherwise looks like the best possible set)."""
    member = posteriors >= tau if set_rule == ">=" else posteriors > tau
    if nonempty:
        top = posteriors.argmax(axis=-1)[..., None]
        member = member.copy()
        np.put_along_axis(member, top, True, axis=-1)
    return member


def set_sizes(posteriors: np.ndarray, tau: float, set_rule: str = ">=", nonempty: bool = False) -> np.ndarray:
    """|C_i| for posteriors ``[..., |Y|]``."""
    return set_membership(posteriors, tau, set_rule, nonempty).sum(axis=-1)


def _weighted_mean(values: np.ndarray, weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    w = weights * mask
    total = w.sum(axis=-1)
    out = np.where(total > 0, (w * np.where(mask, values, 0.0)).sum(axis=-1) / np.where(total > 0, total, 1), 0.0)
    return out


def mean_set_size(posteriors: np.ndarray, weights: np.ndarray, tau: float, set_rule: str = ">=",
                  nonempty: bool = False) -> np.ndarray:
    """E[|C|] per candidate; ``posteriors`` is ``[Q, n, |Y|]``, ``weights`` ``[n]`` or ``[Q, n]`` (sum 1)."""
    sizes = set_sizes(posteriors, tau, set_rule, nonempty).astype(float)
    return (sizes * weights).sum(axis=-1)


def cip_paper_score(posteriors: np.ndarray, weights: np.ndarray, tau: float, alpha: float, n_cal: int,
                    set_rule: str = ">=", nonempty: bool = False) -> np.ndarray:
    """The paper's C-IP objective (eq. C-IP with Prop. 3.1's constant), in bits."""
    n_labels = posteriors.shape[-1]
    alpha_n = alpha - 1.0 / (n_cal + 1)
    lam = binary_entropy(alpha) + alpha * math.log2(n_labels) - (1 - alpha_n) * math.log2(1 - alpha)
    size = mean_set_size(posteriors, weights, tau, set_rule, nonempty)
    return lam + (1 - alpha_n) * np.log2(np.maximum(size, 1e-12))


def _fano_terms(posteriors: np.ndarray, weights: np.ndarray, est_labels: np.ndarray, tau: float, set_rule: str,
                nonempty: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shared by the two Fano forms: per simulated answer, whether the estimated label is covered, the
    weights, and the weighted mean log2 set size inside / log2 complement size outside the covered cases."""
    n_labels = posteriors.shape[-1]
    member = set_membership(posteriors, tau, set_rule, nonempty)
    sizes = member.sum(axis=-1).astype(float)
    est_labels = np.asarray(est_labels, dtype=int)
    if est_labels.ndim == 1:
        est_labels = np.broadcast_to(est_labels, sizes.shape)
    covered = np.take_along_axis(member, est_labels[..., None], axis=-1)[..., 0]
    weights = np.broadcast_to(weights, sizes.shape)
    inside = _weighted_mean(np.log2(np.maximum(sizes, 1)), weights, covered)
    outside = _weighted_mean(np.log2(np.maximum(n_labels - sizes, 1)), weights, ~covered)
    return covered, weights, inside, outside


def cip_code_score(posteriors: np.ndarray, weights: np.ndarray, est_labels: np.ndarray, tau: float, alpha: float,
                   set_rule: str = ">=", nonempty: bool = False, alpha_n_correction: bool = True) -> np.ndarray:
    """The reference code's Fano-style bound (see the module docstring). ``alpha_n_correction=False``:
    alpha_n = alpha, as the reference MediQ code computes it."""
    alpha_n = alpha - 1.0 / (posteriors.shape[-2] + 1) if alpha_n_correction else alpha
    _, _, inside, outside = _fano_terms(posteriors, weights, est_labels, tau, set_rule, nonempty)
    return binary_entropy(alpha) + (1 - alpha_n) * inside + alpha * outside


def cip_fano_score(posteriors: np.ndarray, weights: np.ndarray, est_labels: np.ndarray, tau: float,
                   set_rule: str = ">=", nonempty: bool = False) -> np.ndarray:
    """The Fano form with the empirical miscoverage of the simulated sets (our extension; see above)."""
    covered, weights, inside, outside = _fano_terms(posteriors, weights, est_labels, tau, set_rule, nonempty)
    miss = (weights * ~covered).sum(axis=-1) / weights.sum(axis=-1)
    hb = np.vectorize(binary_entropy, otypes=[float])(miss)
    return hb + (1 - miss) * inside + miss * outside


FLOOR_TIE_WEIGHT = 1e-6


def floored_set_sizes(posteriors: np.ndarray, tau: float, floor: float, set_rule: str = ">=") -> np.ndarray:
    """|C_i| with an empty simulated set counted as ``floor`` (the current set's size: an answer that empties
    the set has told us nothing we can act on, so the set we would answer with is still the current one)."""
    sizes = set_sizes(posteriors, tau, set_rule).astype(float)
    return np.where(sizes > 0, sizes, float(floor))


def cip_floor_score(posteriors: np.ndarray, weights: np.ndarray, tau: float, alpha: float, n_cal: int,
                    current_size: float, set_rule: str = ">=") -> np.ndarray:
    """The paper's objective lambda_alpha + (1 - alpha_N) log2 E[|C|] with every empty simulated set replaced
    by the current step's set (size ``current_size``; |Y| when that is empty too). Our extension: the default
    criterion (see docs/cip.md for the derivation). Label-free, so prior-drawn estimation labels do no harm."""
    n_labels = posteriors.shape[-1]
    alpha_n = alpha - 1.0 / (n_cal + 1)
    lam = binary_entropy(alpha) + alpha * math.log2(n_labels) - (1 - alpha_n) * math.log2(1 - alpha)
    floor = current_size if current_size > 0 else n_labels
    size = (floored_set_sizes(posteriors, tau, floor, set_rule) * weights).sum(axis=-1)
    # Set sizes are integers, so candidates tie often; ties go to the lower expected entropy (the quantity the
    # bound bounds). The weight keeps this below any difference in expected set size (>= 1/n_est in E|C|).
    return lam + (1 - alpha_n) * np.log2(np.maximum(size, 1.0)) + FLOOR_TIE_WEIGHT * ip_score(posteriors, weights)


def cip_selffano_score(posteriors: np.ndarray, weights: np.ndarray, tau: float, set_rule: str = ">=") -> np.ndarray:
    """Fano's bound per simulated posterior with the predictor's own miscoverage e_i = 1 - p_i(C_i):
    h_b(e_i) + (1 - e_i) log2|C_i| + e_i log2(|Y| - |C_i|), averaged (our extension; label-free)."""
    n_labels = posteriors.shape[-1]
    member = set_membership(posteriors, tau, set_rule)
    sizes = member.sum(axis=-1).astype(float)
    miss = np.clip(1.0 - (posteriors * member).sum(axis=-1), 0.0, 1.0)
    hb = np.where((miss > 0) & (miss < 1), -(np.clip(miss, 1e-12, 1) * np.log2(np.clip(miss, 1e-12, 1))
                                           + np.clip(1 - miss, 1e-12, 1) * np.log2(np.clip(1 - miss, 1e-12, 1))), 0.0)
    bound = hb + (1 - miss) * np.log2(np.maximum(sizes, 1)) + miss * np.log2(np.maximum(n_labels - sizes, 1))
    return (bound * weights).sum(axis=-1)


def ip_score(posteriors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean entropy in bits of the simulated posteriors (IP), probabilities clamped at 1e-5."""
    p = np.clip(posteriors, 1e-5, None)
    ent = -(p * np.log2(p)).sum(axis=-1)
    return (ent * weights).sum(axis=-1)


def score_all(posteriors: np.ndarray, weights: np.ndarray, est_labels: np.ndarray, tau: float, alpha: float,
              n_cal: int, set_rule: str = ">=", nonempty: bool = False, current_size: float | None = None,
              alpha_n_correction: bool = True) -> dict[str, np.ndarray]:
    """Every scored criterion (and the raw mean set size) for ``posteriors [Q, n, |Y|]``. ``current_size`` is
    |C_k| of the current step (for ``cip-floor``; |Y| when not given)."""
    n_labels = posteriors.shape[-1]
    return {
        "cip-floor": cip_floor_score(posteriors, weights, tau, alpha, n_cal,
                                     n_labels if current_size is None else current_size, set_rule),
        "cip-selffano": cip_selffano_score(posteriors, weights, tau, set_rule),
        "cip-paper": cip_paper_score(posteriors, weights, tau, alpha, n_cal, set_rule, nonempty),
        "cip-code": cip_code_score(posteriors, weights, est_labels, tau, alpha, set_rule, nonempty,
                                   alpha_n_correction),
        "cip-fano": cip_fano_score(posteriors, weights, est_labels, tau, set_rule, nonempty),
        "ip": ip_score(posteriors, weights),
        "mean-set-size": mean_set_size(posteriors, weights, tau, set_rule, nonempty),
    }


def draw_estimation_labels(rng: np.random.Generator, n_est: int, source: str, posterior: np.ndarray,
                           replacement: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The estimation samples' labels and weights.

    * ``prior`` (reference code): n_est labels drawn uniformly with replacement, weight 1/n_est.
    * ``posterior``: n_est labels drawn from the current f(S_k), weight 1/n_est.
    * ``exhaustive``: every label once, weighted by f(S_k) (the exact expectation under the predictor).
    """
    n_labels = posterior.shape[-1]
    if source == "prior" and not replacement and n_est <= n_labels:
        labels = rng.choice(n_labels, size=n_est, replace=False)
    elif source == "prior":
        labels = rng.integers(n_labels, size=n_est)
    elif source == "posterior":
        p = posterior / posterior.sum()
        labels = rng.choice(n_labels, size=n_est, p=p)
    elif source == "exhaustive":
        return np.arange(n_labels), posterior / posterior.sum()
    else:
        raise CriterionError(f"Unknown estimation source {source!r}; allowed: {', '.join(ESTIMATION_SOURCES)}.")
    return labels, np.full(n_est, 1.0 / n_est)


def check_criterion(name: str) -> str:
    if name not in ALL_CRITERIA:
        raise CriterionError(f"Unknown criterion {name!r}; allowed: {', '.join(ALL_CRITERIA)} "
                             "(cip-paper = mean set size as in the paper, cip-code = the reference code's bound, "
                             "cip-fano = that bound with the empirical miscoverage, our extension).")
    return name
