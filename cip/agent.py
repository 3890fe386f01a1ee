"""The C-IP agent loop: ask -> answer -> update -> stop -> predict, with a full trace (paper Alg. 4/5, §3.1,
App. G.10).

At step k (history S_k): the posterior f(S_k) gives the prediction argmax and the conformal set at tau_k.
Then every candidate query q is scored: n_est estimation items (x_i, y_i) are drawn, each answers q,
the posteriors f(S_k + (q, a_i)) are computed -- **all of them in one predictor call**, identical
(history, context) pairs only once -- and the criterion (:mod:`cmikit.cip.criteria`) is evaluated with
tau_{k+1}. The estimation items are drawn once per step and shared by all candidates (common random
numbers), as in the reference code, which also draws them once per step before looping over the candidates.

Stopping rules (any combination): ``max_queries``; a singleton prediction set; the standard deviation of
the candidates' scores below ``stop_epsilon`` (G.10). The reference code has no online stopping; every
candidate's score at every step is kept in the trace, so :func:`apply_stopping` re-applies any rule
afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmikit.cip.conformal import ConformalThresholds
from cmikit.cip.criteria import (
    DEFAULT_CRITERION,
    ESTIMATION_SOURCES,
    SCORED_CRITERIA,
    check_criterion,
    score_all,
)
from cmikit.cip.knowledge import History, Turn
from cmikit.cip.predictors import Predictor
from cmikit.harness.errors import ConfigError


class AgentError(ConfigError):
    """A bad agent setting; the message says what is allowed."""


@dataclass
class AgentConfig:
    """Settings of one agent.

    criterion: cip-floor (the default: the paper's mean set size with an empty simulated set counted as the
        current set; our extension), cip-selffano (Fano with the predictor's own miscoverage; ours),
        cip-paper (mean set size, the paper), cip-code (the reference code's bound), cip-fano (that
        bound with the empirical miscoverage; ours), ip (entropy),
        random, direct (the LLM proposes the next question; needs a querier).
    n_est / est_source: estimation samples per step (4 in 20Q, 12 in MediQ); prior = the reference code.
    max_queries, stop_singleton, stop_epsilon: stopping rules (epsilon 0 = off).
    top_k: how many top probabilities each trace step keeps.
    tie_break: first = argmin's first minimum (the reference code); random = uniform among the minima
        (set sizes are integers, so ties are common with few estimation samples).
    alpha_n_correction: cip-code's alpha_n = alpha - 1/(n_est+1) (the 20Q reference code); False: alpha_n =
        alpha (the MediQ reference code, which comments the correction out).
    est_replacement: estimation samples drawn with replacement (20Q and MediQ C-IP reference code); False:
        without (the MediQ IP baseline of the reference code).
    nonempty_sets: when scoring candidates, every simulated set also holds its top label (our extension; the
        paper's sets may be empty, and an empty set scores as the best possible outcome).
    """

    criterion: str = DEFAULT_CRITERION
    alpha: float = 0.1
    n_est: int = 4
    est_source: str = "prior"
    max_queries: int = 20
    stop_singleton: bool = False
    stop_epsilon: float = 0.0
    top_k: int = 5
    record_candidates: bool = True
    tie_break: str = "first"
    nonempty_sets: bool = False
    alpha_n_correction: bool = True
    est_replacement: bool = True

    def __post_init__(self) -> None:
        check_criterion(self.criterion)
        if self.est_source not in ESTIMATION_SOURCES:
            raise AgentError(f"est_source must be one of {ESTIMATION_SOURCES}, got {self.est_source!r}.")
        if self.n_est < 1:
            raise AgentError(f"n_est must be >= 1, got {self.n_est}.")
        if self.max_queries < 0:
            raise AgentError(f"max_queries must be >= 0, got {self.max_queries}.")
        if self.tie_break not in ("first", "random"):
            raise AgentError(f"tie_break must be 'first' (reference code: argmin) or 'random', got {self.tie_break!r}.")


class Agent:
    """Plays games in an environment with a predictor, thresholds and a criterion."""

    def __init__(self, env: Any, predictor: Predictor, thresholds: ConformalThresholds | None,
                 config: AgentConfig, querier: Any = None) -> None:
        self.env, self.predictor, self.config, self.querier = env, predictor, config, querier
        if list(env.labels) != list(predictor.labels):
            raise AgentError(f"The environment's labels {env.labels[:5]}... differ from the predictor's "
                             f"{predictor.labels[:5]}...; build both from the same label set.")
        if thresholds is not None:
            thresholds.check_labels(predictor.labels)
            if abs(thresholds.alpha - config.alpha) > 1e-12:
                raise AgentError(f"The thresholds were set for alpha={thresholds.alpha} but the agent uses alpha="
                                 f"{config.alpha}; pass thresholds.with_alpha({config.alpha}) or the same alpha.")
        elif config.criterion in SCORED_CRITERIA and config.criterion != "ip":
            raise AgentError(f"The {config.criterion} criterion needs conformal thresholds; run `cip calibrate` "
                             "or pass thresholds.")
        self.thresholds = thresholds
        if config.criterion == "direct" and querier is None:
            raise AgentError("criterion 'direct' needs an LLM querier (the LLM proposes each question).")

    # ------------------------------------------------------------------------------------------ step parts
    def posterior(self, history: History, context: Any) -> np.ndarray:
        return self.predictor.predict([history], [context])[0]

    def tau(self, k: int) -> float | None:
        return self.thresholds.tau(k) if self.thresholds is not None else None

    def score_candidates(self, candidates: list[str], history: History, posterior: np.ndarray, k: int,
                         rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Every scored criterion for every candidate (one predictor call for the whole step)."""
        cfg = self.config
        items, weights = self.env.estimation_items(rng, cfg.n_est, cfg.est_source, posterior,
                                                   replacement=cfg.est_replacement)
        est_labels = np.array([self.env.label_of(x) for x in items])
        contexts = [self.env.context(x) for x in items]
        requests: dict[tuple, int] = {}
        request_list: list[tuple[History, Any]] = []
        index = np.zeros((len(candidates), len(items)), dtype=int)
        for qi, q in enumerate(candidates):
            answers = self.env.answers(items, q)
            for i, (a, ctx) in enumerate(zip(answers, contexts)):
                key = (q, a, id(ctx) if ctx is not None else None)
                if key not in requests:
                    requests[key] = len(request_list)
                    request_list.append((history + (Turn(q, a),), ctx))
                index[qi, i] = requests[key]
        probs = self.predictor.predict([h for h, _ in request_list], [c for _, c in request_list])
        posteriors = probs[index]  # [Q, n, |Y|]
        if self.thresholds is not None:
            tau, n_cal = self.thresholds.tau(k + 1), self.thresholds.n_cal
            set_rule = self.thresholds.set_rule
            current = int(self.thresholds.prediction_set(posterior, k).sum())
            scores = score_all(posteriors, weights, est_labels, tau, cfg.alpha, n_cal, set_rule, cfg.nonempty_sets,
                               current_size=current, alpha_n_correction=cfg.alpha_n_correction)
        else:
            from cmikit.cip.criteria import ip_score

            scores = {"ip": ip_score(posteriors, weights)}
        scores["n_posteriors"] = np.array([len(request_list)])
        return scores

    # -------------------------------------------------------------------------------------------- a game
    def play(self, item: Any = None, seed: int = 0, answer_fn: Callable[[str], str] | None = None,
             on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Play one game; ``item`` is the hidden item (None when a person answers through ``answer_fn``).

        Returns the trace: ``steps`` (one per history length k, with the posterior summary, the conformal
        set, every candidate's scores, the chosen query and its answer) and the final prediction.
        """
        cfg = self.config
        rng = np.random.default_rng(seed)
        context = self.env.context(item) if item is not None else None
        true_label = self.env.label_of(item) if item is not None else None
        labels = self.predictor.labels
        history: History = ()
        steps: list[dict[str, Any]] = []
        stop_reason = "max_queries"
        for k in range(cfg.max_queries + 1):
            post = self.posterior(history, context)
            order = np.argsort(-post)
            step: dict[str, Any] = {
                "k": k,
                "prediction": labels[int(order[0])],
                "top": [[labels[int(j)], float(post[j])] for j in order[: cfg.top_k]],
            }
            if self.thresholds is not None:
                members = np.flatnonzero(self.thresholds.prediction_set(post, k))
                step["tau"] = self.thresholds.tau(k)
                step["set"] = [labels[int(j)] for j in members]
            if true_label is not None:
                step["true_prob"] = float(post[true_label])
                step["correct"] = int(order[0]) == true_label
                if "set" in step:
                    step["covered"] = labels[true_label] in step["set"]
            steps.append(step)
            if on_step is not None:
                on_step(step)
            if k == cfg.max_queries:
                break
            if cfg.stop_singleton and len(step.get("set", [None, None])) == 1:
                stop_reason = "singleton"
                break
            question = self._choose(item, history, post, k, rng, step)
            if question is None:
                stop_reason = step.pop("stop", "no_queries")
                break
            if answer_fn is not None:
                answer = answer_fn(question)
                if answer is None:
                    stop_reason = "quit"
                    step["question"] = question
                    break
            else:
                answer = self.env.answer(item, question)
            step["question"], step["answer"] = question, answer
            history = history + (Turn(question, answer),)
        final = steps[-1]
        return {
            "criterion": cfg.criterion, "alpha": cfg.alpha, "seed": seed,
            "true_label": labels[true_label] if true_label is not None else None,
            "item": self.env.item_name(item) if item is not None else None,
            "prediction": final["prediction"], "correct": final.get("correct"),
            "n_queries": len(history), "stop_reason": stop_reason,
            "history": [[t.question, t.answer] for t in history], "steps": steps,
        }

    def _choose(self, item: Any, history: History, post: np.ndarray, k: int, rng: np.random.Generator,
                step: dict[str, Any], exclude: frozenset[str] = frozenset()) -> str | None:
        """The next question; ``exclude`` names questions asked but absent from ``history`` (answered
        "unknown" in ``cip play``, which adds no evidence and so no turn)."""
        cfg = self.config
        if cfg.criterion == "direct":
            proposed = [q for q in self.querier.propose(history, 1) if q not in exclude]
            if proposed:
                return proposed[0]
            step["querier_fallback"] = True
        candidates = [q for q in self.env.candidate_queries(item, history, rng) if q not in exclude]
        if not candidates:
            return None
        if cfg.criterion in ("random", "direct"):
            return candidates[int(rng.integers(len(candidates)))]
        scores = self.score_candidates(candidates, history, post, k, rng)
        step["n_posteriors"] = int(scores.pop("n_posteriors")[0])
        chosen = scores[cfg.criterion]
        if cfg.record_candidates:
            step["candidates"] = {q: {name: float(v[i]) for name, v in scores.items()}
                                  for i, q in enumerate(candidates)}
        step["score_std"] = float(np.std(chosen))
        if cfg.stop_epsilon > 0 and len(candidates) > 1 and step["score_std"] < cfg.stop_epsilon:
            step["stop"] = "spread"
            return None
        if cfg.tie_break == "random":
            best = np.flatnonzero(chosen <= chosen.min() + 1e-9)
            return candidates[int(best[rng.integers(len(best))])]
        return candidates[int(np.argmin(chosen))]


def apply_stopping(trace: dict[str, Any], criterion: str | None = None, epsilon: float = 0.0,
                   singleton: bool = False, max_queries: int | None = None) -> int:
    """The history length at which a stopping rule would have stopped this (full-length) trace.

    ``epsilon`` uses the recorded candidate scores of ``criterion`` (default the trace's own criterion).
    """
    criterion = criterion or trace["criterion"]
    if criterion not in SCORED_CRITERIA and epsilon > 0:
        raise AgentError(f"epsilon stopping needs a scored criterion ({SCORED_CRITERIA}), got {criterion!r}.")
    steps = trace["steps"]
    limit = len(steps) - 1 if max_queries is None else min(max_queries, len(steps) - 1)
    for step in steps[: limit + 1]:
        k = step["k"]
        if k == limit:
            return k
        if singleton and len(step.get("set", [None, None])) == 1:
            return k
        cands = step.get("candidates")
        if epsilon > 0 and cands:
            values = np.array([c[criterion] for c in cands.values()])
            if len(values) > 1 and float(np.std(values)) < epsilon:
                return k
    return limit
