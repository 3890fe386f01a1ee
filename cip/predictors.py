"""Predictors f(S_k) = P(Y | history) (paper §2 and App. G.5).

* :class:`LLMPredictor`: the paper's predictor. The chat ends with a prefilled assistant turn
  (``"The item is:"`` in 20 Questions, ``{"answer": "`` in MediQ); P(y | S_k) is the softmax of the
  first-token logits of the labels, restricted to the labels (the backend's ``next_token_logprobs``). The
  labels' first tokens must be distinct (App. G.5); this is checked at construction. All histories of one
  call go to the backend in one ``next_token_logprobs`` call so the KV cache of their shared prefix (the
  game history) is computed once.
* :class:`TablePredictor`: exact Bayes over a knowledge base with a symmetric answer-noise rate: fast, and a
  ground truth for tests. It is this project's addition (the paper uses LLMs only).
* :class:`OpenWorldPredictor`: wraps either one with an explicit "none of these" hypothesis (answers under it
  follow each question's base rate in the knowledge base) and the items a player has ruled out (a rejected
  guess). Our addition for ``cip play``.

Prompts are the project's own wording (:class:`TwentyQuestionsPrompt`, :class:`MediQPrompt`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmikit.cip.knowledge import History, KnowledgeBase, answer_polarity
from cmikit.harness.errors import ConfigError

Messages = list[dict[str, str]]


class PredictorError(ConfigError):
    """A predictor cannot be built or used as asked; the message says what to change."""


class Predictor(ABC):
    """P(label | history[, context]) for a fixed, ordered label set."""

    labels: list[str]
    name: str = "predictor"

    @abstractmethod
    def predict(self, histories: Sequence[History], contexts: Sequence[Any] | None = None) -> np.ndarray:
        """Probabilities ``[len(histories), len(labels)]`` (rows sum to 1)."""


# --------------------------------------------------------------------------------------------- table
class TablePredictor(Predictor):
    """Exact Bayes posterior over the knowledge base's items.

    Each yes/no answer is assumed to agree with the table with probability ``1 - noise`` (answers that are
    neither yes nor no, or questions outside the bank, carry no information). ``noise = 0`` gives the
    hard-elimination posterior; a little noise keeps a wrong answer from eliminating the true item forever.
    An unknown cell (a learned item's unanswered question) says yes with the question's base rate.
    """

    name = "table"

    def __init__(self, kb: KnowledgeBase, noise: float = 0.05, prior: Sequence[float] | None = None) -> None:
        if not 0 <= noise < 0.5:
            raise PredictorError(f"noise must be in [0, 0.5) (the chance an answer disagrees with the table), "
                                 f"got {noise}.")
        self.kb = kb
        self.labels = list(kb.classes)
        self.noise = noise
        prior_arr = np.full(len(self.labels), 1.0 / len(self.labels)) if prior is None else np.asarray(prior, float)
        if prior_arr.shape != (len(self.labels),) or (prior_arr < 0).any() or prior_arr.sum() <= 0:
            raise PredictorError(f"prior must be {len(self.labels)} non-negative weights, got {prior!r}.")
        self.log_prior = np.log(np.clip(prior_arr / prior_arr.sum(), 1e-300, None))
        eps = max(noise, 1e-12)
        # P(answer yes | item, question): 1 - eps where the table says yes, eps where it says no, the
        # question's base rate (kept within [eps, 1 - eps]) where the cell is unknown.
        # (log1p(-eps) and log(eps) exactly as before unknown cells existed: thresholds are compared with >=.)
        agree, disagree = np.log1p(-eps), np.log(eps)
        self._log_yes = np.where(kb.table == 1, agree, disagree)
        self._log_no = np.where(kb.table == 0, agree, disagree)
        unknown = kb.table < 0
        if unknown.any():
            rate = np.broadcast_to(np.clip(kb.base_rates(), eps, 1 - eps), kb.table.shape)[unknown]
            self._log_yes[unknown], self._log_no[unknown] = np.log(rate), np.log1p(-rate)
        self._memo: dict[History, np.ndarray] = {}

    def _turn_log_likelihood(self, turn: Any) -> np.ndarray | None:
        j = self.kb.question_index.get(turn.question)
        pol = answer_polarity(turn.answer)
        if j is None or pol is None:
            return None
        return self._log_yes[:, j] if pol == 1 else self._log_no[:, j]

    def log_likelihood(self, history: History) -> np.ndarray:
        """Sum of per-answer log-likelihoods; memoised by history, so the candidates of one step (which
        share the history and add one turn) cost one vector addition each."""
        cached = self._memo.get(history)
        if cached is not None:
            return cached
        out = self.log_likelihood(history[:-1]).copy() if history else np.zeros(len(self.labels))
        if history:
            term = self._turn_log_likelihood(history[-1])
            if term is not None:
                out += term
        if len(self._memo) > 50_000:
            self._memo.clear()
        self._memo[history] = out
        return out

    def predict(self, histories: Sequence[History], contexts: Sequence[Any] | None = None) -> np.ndarray:
        logits = np.stack([self.log_prior + self.log_likelihood(h) for h in histories]) if histories else \
            np.zeros((0, len(self.labels)))
        logits -= logits.max(axis=1, keepdims=True) if len(histories) else 0
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------- open world
class OpenWorldPredictor(Predictor):
    """A predictor over the knowledge base's items plus an explicit "none of these" hypothesis (our addition).

    The hypotheses are the items of ``kb`` (prior ``(1 - none_prior) / |Y|`` each) and *none* (prior
    ``none_prior``). Under an item, answers follow the table with ``noise`` (:class:`TablePredictor`); under
    *none*, question q is answered yes with its base rate in the knowledge base. Then

        P(none | S) = none_prior L_none(S) / (none_prior L_none(S) + (1 - none_prior) mean_y L_y(S))

    and ``predict`` returns P(y | S) = (1 - P(none | S)) f(S)_y, where f is the wrapped predictor (for the
    table predictor this is exact Bayes over items + none). Rows therefore sum to ``1 - P(none | S)``; the
    conformal sets use these probabilities, and calibration (which draws items of the knowledge base) sees
    the same function, so the guarantee for items in the base is unchanged. ``rejected`` items (guesses
    the player said no to) get probability 0 and their mass is renormalised over the rest: since the
    remaining probabilities only grow, every conformal set keeps the members it had minus the rejected
    ones, which a truthful "no" shows are not the answer.
    """

    def __init__(self, inner: Predictor, kb: KnowledgeBase, noise: float = 0.05, none_prior: float = 0.1) -> None:
        if not 0 < none_prior < 1:
            raise PredictorError(f"none_prior must be in (0, 1) (the prior of 'none of these'), got {none_prior}.")
        if list(inner.labels) != list(kb.classes):
            raise PredictorError("OpenWorldPredictor: the wrapped predictor's labels differ from the knowledge base's.")
        self.inner, self.kb, self.none_prior = inner, kb, none_prior
        self.labels = list(inner.labels)
        self.name = f"{inner.name}+none"
        self.evidence = inner if isinstance(inner, TablePredictor) and inner.noise == noise else TablePredictor(kb, noise)
        rates = np.clip(kb.base_rates(), max(noise, 1e-12), 1 - max(noise, 1e-12))
        self._log_none_yes, self._log_none_no = np.log(rates), np.log1p(-rates)
        self.rejected: set[int] = set()

    def _log_none(self, history: History) -> float:
        total = 0.0
        for turn in history:
            j, pol = self.kb.question_index.get(turn.question), answer_polarity(turn.answer)
            if j is not None and pol is not None:
                total += self._log_none_yes[j] if pol == 1 else self._log_none_no[j]
        return total

    def _keep(self) -> np.ndarray:
        keep = np.ones(len(self.labels), dtype=bool)
        keep[list(self.rejected)] = False
        return keep

    def none_probabilities(self, histories: Sequence[History]) -> np.ndarray:
        """P(none of these | S) for each history (with the rejected items ruled out)."""
        keep = self._keep()
        out = np.zeros(len(histories))
        for i, h in enumerate(histories):
            log_items = self.evidence.log_likelihood(h)[keep]
            if not len(log_items):
                out[i] = 1.0
                continue
            top = max(float(log_items.max()), self._log_none(h))
            items = (1 - self.none_prior) / len(self.labels) * np.exp(log_items - top).sum()
            none = self.none_prior * np.exp(self._log_none(h) - top)
            out[i] = none / (none + items)
        return out

    def predict(self, histories: Sequence[History], contexts: Sequence[Any] | None = None) -> np.ndarray:
        probs = self.inner.predict(histories, contexts)
        if not len(histories):
            return probs
        keep = self._keep()
        probs = probs * keep
        probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-300, None)
        return probs * (1 - self.none_probabilities(histories))[:, None]


# ------------------------------------------------------------------------------------------- prompts
@dataclass
class TwentyQuestionsPrompt:
    """The predictor prompt for 20 Questions (our wording).

    ``include_questions=False`` puts only the answers in the prompt, as the paper does for free-text answers
    (§4.1); with yes/no answers the questions must be shown. ``label_style="letters"`` lists the items as
    options A, B, C, ... and scores the letters (for label sets whose names share first tokens).
    """

    labels: Sequence[str]
    noun: str = "item"
    include_questions: bool = True
    label_style: str = "names"
    space_in_prefill: bool = False  # set by LLMPredictor for tokenizers that split the space off (char-level)

    def __post_init__(self) -> None:
        if self.label_style not in ("names", "letters"):
            raise PredictorError(f"label_style must be 'names' or 'letters', got {self.label_style!r}.")
        if self.label_style == "letters" and len(self.labels) > 26:
            raise PredictorError(f"label_style='letters' allows at most 26 labels, got {len(self.labels)}.")
        if self.label_style == "letters":
            options = "\n".join(f"{chr(65 + i)}. {name}" for i, name in enumerate(self.labels))
            self._system = (f"We are playing 20 Questions. The secret {self.noun} is one of these options:\n"
                            f"{options}\nAfter the questions and answers so far, say which option it is.")
        else:
            self._system = (f"We are playing 20 Questions. The secret {self.noun} is one of these: "
                            f"{', '.join(self.labels)}. After the questions and answers so far, name it.")

    @property
    def prefill(self) -> str:
        text = f"The {self.noun} is option" if self.label_style == "letters" else f"The {self.noun} is:"
        return text + " " if self.space_in_prefill else text

    @property
    def label_texts(self) -> list[str]:
        space = "" if self.space_in_prefill else " "
        if self.label_style == "letters":
            return [f"{space}{chr(65 + i)}" for i in range(len(self.labels))]
        return [f"{space}{name}" for name in self.labels]

    def messages(self, history: History, context: Any = None) -> Messages:
        if history:
            if self.include_questions:
                lines = [f"Q{i + 1}: {t.question}\nA{i + 1}: {t.answer}" for i, t in enumerate(history)]
            else:
                lines = [f"- {t.answer}" for t in history]
            user = "What we know so far:\n" + "\n".join(lines)
        else:
            user = "No questions have been asked yet."
        # The history ends the user turn, so the histories of one selection step differ only in the last
        # line and the short template tail: the shared-prefix KV cache covers everything else.
        return [{"role": "system", "content": self._system}, {"role": "user", "content": user},
                {"role": "assistant", "content": self.prefill}]


@dataclass
class MediQPrompt:
    """The predictor prompt for MediQ cases (our wording): the case's initial information, the patient's
    answers so far (answers only, as in the paper), the question and options; the reply is prefilled with a
    JSON answer key so the next token is the option letter."""

    letters: Sequence[str] = ("A", "B", "C", "D")

    @property
    def labels(self) -> list[str]:
        return list(self.letters)

    @property
    def prefill(self) -> str:
        return '{"answer": "'

    @property
    def label_texts(self) -> list[str]:
        return list(self.letters)

    def messages(self, history: History, context: Any = None) -> Messages:
        if context is None:
            raise PredictorError("MediQPrompt needs the case (question, options, initial information) as context.")
        options = "\n".join(f"{k}: {v}" for k, v in context["options"].items())
        learned = "\n".join(f"- {t.answer}" for t in history) if history else "- (nothing asked yet)"
        user = (f"Initial information: {context['initial_info']}\nWhat the patient told us:\n{learned}\n\n"
                f"Question: {context['question']}\nOptions:\n{options}\n"
                'Reply with JSON {"answer": "<letter>"}.')
        return [{"role": "system", "content": "You are a careful physician taking a multiple-choice exam."},
                {"role": "user", "content": user}, {"role": "assistant", "content": self.prefill}]


# --------------------------------------------------------------------------------------------- LLM
class LLMPredictor(Predictor):
    """P(label | history) from the first-token logits of the labels after a prefilled assistant turn.

    Args:
        backend: a :class:`cmikit.harness.backends.LMBackend`.
        prompt: a :class:`TwentyQuestionsPrompt`, :class:`MediQPrompt` or any object with ``messages``,
            ``prefill``, ``label_texts`` and ``labels``.
    """

    name = "llm"

    def __init__(self, backend: Any, prompt: Any) -> None:
        from cmikit.harness.backends import BackendError, first_token_ids

        self.backend = backend
        self.prompt = prompt
        self.labels = list(prompt.labels)
        tokenizer = backend.tokenizer
        if hasattr(prompt, "space_in_prefill") and not prompt.space_in_prefill:
            # BPE tokenizers fold the space into the label's first token (" giraffe"); tokenizers that keep
            # the space as its own token would make every label start with " ": move it into the prefill.
            ids = tokenizer(prompt.prefill + prompt.label_texts[0], add_special_tokens=False)["input_ids"]
            base = tokenizer(prompt.prefill, add_special_tokens=False)["input_ids"]
            if len(ids) > len(base) and tokenizer.decode([ids[len(base)]]).strip() == "":
                prompt.space_in_prefill = True
        try:
            self.label_token_ids = first_token_ids(tokenizer, prompt.label_texts, prefix=prompt.prefill)
        except BackendError as err:
            raise PredictorError(
                f"{err} (For 20 Questions: TwentyQuestionsPrompt(..., label_style='letters'), "
                "or --label_style letters on the command line.)"
            ) from err
        self.n_calls = 0
        self.n_posteriors = 0

    def predict(self, histories: Sequence[History], contexts: Sequence[Any] | None = None) -> np.ndarray:
        if not histories:
            return np.zeros((0, len(self.labels)))
        ctx = list(contexts) if contexts is not None else [None] * len(histories)
        prompts = [self.prompt.messages(h, c) for h, c in zip(histories, ctx)]
        logprobs = self.backend.next_token_logprobs(prompts, self.label_token_ids)
        self.n_calls += 1
        self.n_posteriors += len(prompts)
        return logprobs.exp().double().numpy()
