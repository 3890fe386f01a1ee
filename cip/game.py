"""The game ``cip play`` plays with a person, free of terminal I/O (so ``scripts/bench_cip.py --part players``
plays the same game with scripted players). Our addition around the paper's agent (§3.1, Alg. 4).

What a real player does, and what the game does about it (docs/cip.md, "Playing with people"):

* **"u" (unknown)** adds no evidence and does not advance k: the predictor sees only the informative turns
  and the threshold is tau_k with k = their number (the question is not asked again). Under answers that
  are missing at random this keeps the length-k guarantee; the derivation is in docs/cip.md.
* **A guess is a question.** When the conformal set is a single item that is more probable than "none of
  these" (or the question budget is spent) the game asks "Is it a X?". A "no" rules X out
  (:class:`cmikit.cip.predictors.OpenWorldPredictor.rejected`)
  and play goes on from the answers so far, up to ``max_guesses`` guesses. A mistaken answer is outvoted
  by the predictor's own answer-noise model; there is no hand-written lie rule.
* **Items it does not know.** The predictor carries a "none of these" hypothesis; when its probability
  reaches ``none_threshold``, or the guesses run out, the game says it does not know the item, and
  :func:`learn_item` turns the player's answers (plus one question that tells the item from a guess) into
  a new row of the knowledge base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cmikit.cip.agent import Agent
from cmikit.cip.knowledge import History, KnowledgeBase, Turn, answer_polarity
from cmikit.cip.predictors import OpenWorldPredictor
from cmikit.harness.config import check_at_least, check_range

NONE_LABEL = "(none of these)"


@dataclass
class GameSettings:
    """max_queries: questions asked, "unknown" answers included; max_guesses: "Is it X?" questions;
    none_threshold: P(none of these | answers) at which the game says it does not know the item."""

    max_queries: int = 20
    max_guesses: int = 3
    none_threshold: float = 0.9

    def __post_init__(self) -> None:
        check_at_least("max_queries", self.max_queries, 1)
        check_at_least("max_guesses", self.max_guesses, 1)
        check_range("none_threshold", self.none_threshold, 0, 1, low_open=True)


class Player(Protocol):
    """Who answers: a person at the terminal (``cip play``) or a scripted player (the benchmark)."""

    def answer(self, question: str) -> str | None:
        """The canonical answer (Yes. / No. / I don't know.) or None to quit."""

    def confirm(self, guess: str) -> bool | None:
        """Is the item ``guess``? None to quit."""


def a(word: str) -> str:
    """``word`` with its indefinite article ("a guitar", "an umbrella")."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def describe_empty_set(noun: str) -> str:
    """What an empty conformal set means, in words (the screen never shows "empty")."""
    return (f"no {noun} is likely enough yet for the set: the answers so far fit none of them well "
            f"(a mistaken answer, or {a(noun)} I do not know)")


def play_game(agent: Agent, predictor: OpenWorldPredictor, player: Player, settings: GameSettings,
              seed: int = 0, on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """One game. Returns the trace: ``outcome`` (confirmed / dont_know / quit), ``reason`` (for dont_know:
    none_of_these / guesses_out), ``item`` (the confirmed item), ``asked`` (every question
    with its answer, unknowns included), ``guesses`` (rejected items, in order), ``n_questions`` and the
    per-step records (k = informative answers, the posterior summary, P(none), the conformal set)."""
    thresholds = agent.thresholds
    labels = predictor.labels
    rng = np.random.default_rng(seed)
    predictor.rejected = set()
    history: History = ()
    asked: list[list[str]] = []
    guesses: list[str] = []
    steps: list[dict[str, Any]] = []
    bank_used_up = False

    def finish(outcome: str, reason: str | None = None, item: str | None = None) -> dict[str, Any]:
        return {"outcome": outcome, "reason": reason, "item": item, "asked": asked, "guesses": guesses,
                "n_questions": len(asked), "n_informative": len(history), "steps": steps,
                "history": [[t.question, t.answer] for t in history]}

    while True:
        k = len(history)
        post = predictor.predict([history])[0]
        p_none = float(predictor.none_probabilities([history])[0])
        member = thresholds.prediction_set(post, k) & (post > 0)
        order = [int(j) for j in np.argsort(-post) if post[j] > 0]
        top = [[labels[j], float(post[j])] for j in order[:5]]
        if p_none > (top[-1][1] if top else 0.0) or len(top) < 5:  # "none of these" joins the list when it ranks
            top = sorted([*top, [NONE_LABEL, p_none]], key=lambda t: -t[1])[:5]
        step: dict[str, Any] = {"k": k, "n_asked": len(asked), "top": top, "p_none": p_none,
                                "tau": thresholds.tau(k), "set": [labels[j] for j in np.flatnonzero(member)]}
        steps.append(step)
        if on_step is not None:
            on_step(step)
        leader = order[0] if order else None
        if leader is None or p_none >= settings.none_threshold:
            return finish("dont_know", "none_of_these")
        out_of_questions = bank_used_up or len(asked) >= settings.max_queries
        none_leads = p_none > post[leader]
        if (len(step["set"]) == 1 and not none_leads) or out_of_questions:
            if none_leads:  # out of questions, and "none of these" explains the answers best
                return finish("dont_know", "none_of_these")
            if len(guesses) >= settings.max_guesses:
                return finish("dont_know", "guesses_out")
            guess = step["set"][0] if len(step["set"]) == 1 else labels[leader]
            step["guess"] = guess
            verdict = player.confirm(guess)
            if verdict is None:
                return finish("quit")
            step["confirmed"] = bool(verdict)
            if verdict:
                return finish("confirmed", item=guess)
            guesses.append(guess)
            predictor.rejected.add(labels.index(guess))
            continue
        question = agent._choose(None, history, post, k, rng, step, exclude=frozenset(q for q, _ in asked))
        if question is None:  # the bank is used up: guess from here on
            bank_used_up = True
            continue
        answer = player.answer(question)
        step["question"] = question
        if answer is None:
            return finish("quit")
        step["answer"] = answer
        asked.append([question, answer])
        if answer_polarity(answer) is not None:  # "unknown" adds no evidence and does not advance k
            history = history + (Turn(question, answer),)


def learn_item(kb: KnowledgeBase, trace: dict[str, Any], name: str, question: str | None = None,
               answer: str | None = None, other: str | None = None) -> KnowledgeBase:
    """The knowledge base plus the item a game did not know: its row holds the player's yes/no answers of
    ``trace`` (the rest unknown) and, when given, the answer to ``question`` (one that tells it from
    ``other``, a guess the game made)."""
    return kb.with_learned_item(name, {q: a for q, a in trace["asked"]}, question, answer, other)


def teach_target(trace: dict[str, Any]) -> str | None:
    """The guess the learning question is asked against: the last rejected guess, else the leading item."""
    if trace["guesses"]:
        return trace["guesses"][-1]
    for name, _ in trace["steps"][-1]["top"]:
        if name != NONE_LABEL:
            return name
    return None
