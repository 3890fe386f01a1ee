"""Environments: who answers, which questions may be asked, and which items exist (paper §4.1 and §5.1).

* :class:`TwentyQuestions`: (a) a closed query bank with table answers (the paper's "closed, binary"
  setting), (b) free-text answers from an :class:`LLMAnswerer` (the "free-text" settings), (c) open query
  sets proposed at each step by an :class:`LLMQuerier` (the "open" settings, m candidates per step).
* :class:`MediQ`: interactive medical QA. The query set of a case is its atomic facts turned into questions
  (:func:`fact_to_question`, our template); answers are the facts themselves or a
  :class:`PatientLLM` that picks relevant facts. Estimation samples are other patients from D_est, as in the
  reference code, which answer the test patient's questions from their own facts.

Every environment offers the same small interface used by the agent (:mod:`cmikit.cip.agent`): ``labels``,
``label_of(item)``, ``context(item)``, ``candidate_queries(item, history, rng)``, ``answer(item, query)`` and
``estimation_items(rng, n_est, source, posterior)``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmikit.cip.criteria import draw_estimation_labels
from cmikit.cip.knowledge import NO, UNKNOWN, YES, History, KnowledgeBase, answer_polarity
from cmikit.harness.errors import DataFileError

CANNOT_ANSWER = "The patient cannot answer that."


class EnvironmentSetupError(DataFileError):
    """Bad environment input; the message says what was wrong and what to do."""


# ----------------------------------------------------------------------------------- LLM helpers
class LLMAnswerer:
    """Answers a question about a known item with the LLM (the paper's answerer, our wording).

    ``yes_no=True`` asks for a one-word answer, mapped to "Yes." / "No." / "I don't know."; otherwise a
    short free-text answer that must not name the item. Answers are cached per (item, question).
    """

    def __init__(self, backend: Any, noun: str = "item", yes_no: bool = True, max_new_tokens: int = 32,
                 temperature: float = 0.0, seed: int = 0) -> None:
        self.backend, self.noun, self.yes_no = backend, noun, yes_no
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.cache: dict[tuple[str, str], str] = {}

    def _messages(self, item: str, question: str) -> list[dict[str, str]]:
        if self.yes_no:
            rule = "Answer with one word: yes or no."
        else:
            rule = f"Answer in one short sentence, truthfully, and never say the name of the {self.noun}."
        return [{"role": "system", "content": f"You know everything about the {self.noun} '{item}'. {rule}"},
                {"role": "user", "content": question}]

    def answer_many(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        from cmikit.harness.backends import SamplingParams

        todo = [p for p in dict.fromkeys(pairs) if p not in self.cache]
        if todo:
            sampling = SamplingParams(max_new_tokens=3 if self.yes_no else self.max_new_tokens,
                                      temperature=self.temperature, seed=self.seed, stop=["\n"])
            outs = self.backend.generate([self._messages(i, q) for i, q in todo], sampling)
            for pair, text in zip(todo, outs):
                text = text.strip()
                if self.yes_no:
                    pol = answer_polarity(text)
                    text = YES if pol == 1 else NO if pol == 0 else UNKNOWN
                elif pair[0].lower() in text.lower():  # the answer must not give the item away
                    text = re.sub(re.escape(pair[0]), f"this {self.noun}", text, flags=re.IGNORECASE)
                self.cache[pair] = text or UNKNOWN
        return [self.cache[p] for p in pairs]


def parse_questions(text: str) -> list[str]:
    """Questions from a querier reply: a JSON ``{"questions": [...]}`` object if one parses, else the
    lines that end with a question mark."""
    match = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if match:
        try:
            data = json.loads(match.group(0))
            qs = data.get("questions") if isinstance(data, dict) else None
            if isinstance(qs, list):
                return [str(q).strip() for q in qs if str(q).strip().endswith("?")]
        except json.JSONDecodeError:
            pass
    found = re.findall(r"([A-Z][^?\n]{3,200}\?)", text)
    return [q.strip().lstrip("-*0123456789. ").strip() for q in found]


class LLMQuerier:
    """Proposes candidate questions from the history (open query sets, §4.1; m per step) or one question
    (direct prompting). Re-prompts with sampling until a reply parses, up to ``max_tries``; returns what
    it has (possibly nothing) after that, and the caller falls back."""

    def __init__(self, backend: Any, labels: Sequence[str], noun: str = "item", max_tries: int = 3,
                 max_new_tokens: int = 160, temperature: float = 0.7, seed: int = 0) -> None:
        self.backend, self.labels, self.noun = backend, list(labels), noun
        self.max_tries, self.max_new_tokens, self.temperature, self.seed = max_tries, max_new_tokens, temperature, seed

    def _messages(self, history: History, m: int) -> list[dict[str, str]]:
        asked = "\n".join(f"Q: {t.question} A: {t.answer}" for t in history) or "(none yet)"
        return [
            {"role": "system", "content": (
                f"We are playing 20 Questions. The secret {self.noun} is one of: {', '.join(self.labels)}. "
                f"You ask yes/no questions that split the remaining possibilities well. Never name a "
                f"specific {self.noun} in a question.")},
            {"role": "user", "content": (
                f"Questions asked so far:\n{asked}\n\nPropose {m} new yes/no question{'s' if m > 1 else ''}. "
                'Reply with JSON only: {"questions": ["...?"]}')},
        ]

    def propose(self, history: History, m: int) -> list[str]:
        from cmikit.harness.backends import SamplingParams

        asked = {t.question for t in history}
        found: list[str] = []
        for attempt in range(self.max_tries):
            sampling = SamplingParams(max_new_tokens=self.max_new_tokens,
                                      temperature=0.0 if attempt == 0 else self.temperature,
                                      seed=self.seed + attempt + 31 * len(history))
            text = self.backend.generate([self._messages(history, m)], sampling)[0]
            for q in parse_questions(text):
                if q not in asked and q not in found and not any(lab.lower() in q.lower() for lab in self.labels):
                    found.append(q)
            if len(found) >= m:
                break
        return found[:m]


# --------------------------------------------------------------------------------------- 20 Questions
@dataclass
class TwentyQuestions:
    """20 Questions over a knowledge base.

    Args:
        kb: items and the closed query bank.
        answerer: None for table answers ("Yes."/"No."), or an :class:`LLMAnswerer` (free-text answers).
        querier: None for the closed bank, or an :class:`LLMQuerier` (open query set of ``n_candidates``).
        remove_asked: drop asked questions from the bank (the reference code does).
        max_candidates: score only a random subset of this many bank questions per step (None = all, as in
            the paper; a smaller number trades selection quality for speed).
    """

    kb: KnowledgeBase
    answerer: LLMAnswerer | None = None
    querier: LLMQuerier | None = None
    n_candidates: int = 5
    remove_asked: bool = True
    noun: str = "item"
    max_candidates: int | None = None
    fallbacks: int = field(default=0, init=False)

    @property
    def labels(self) -> list[str]:
        return list(self.kb.classes)

    def test_items(self) -> list[int]:
        return list(range(len(self.kb.classes)))

    def label_of(self, item: int) -> int:
        return int(item)

    def item_name(self, item: int) -> str:
        return self.kb.classes[item]

    def context(self, item: Any) -> None:
        return None

    def candidate_queries(self, item: Any, history: History, rng: np.random.Generator) -> list[str]:
        asked = {t.question for t in history}
        bank = [q for q in self.kb.questions if not (self.remove_asked and q in asked)]
        if self.querier is None:
            if self.max_candidates and len(bank) > self.max_candidates:  # a random subset of the bank per step
                picks = sorted(rng.choice(len(bank), size=self.max_candidates, replace=False).tolist())
                return [bank[j] for j in picks]
            return bank
        proposed = self.querier.propose(history, self.n_candidates)
        if not proposed:  # the querier never produced a parsable question: fall back to the bank
            self.fallbacks += 1
            picks = rng.choice(len(bank), size=min(self.n_candidates, len(bank)), replace=False)
            return [bank[j] for j in picks]
        return proposed

    def answers(self, items: Sequence[int], query: str) -> list[str]:
        if self.answerer is not None:
            return self.answerer.answer_many([(self.kb.classes[i], query) for i in items])
        if query not in self.kb.question_index:
            raise EnvironmentSetupError(
                f"The question {query!r} is not in the knowledge base, so table answers cannot answer it; use "
                f"an LLM answerer (--answerer llm) for open questions."
            )
        return [self.kb.answer(i, query) for i in items]

    def answer(self, item: int, query: str) -> str:
        return self.answers([item], query)[0]

    def estimation_items(self, rng: np.random.Generator, n_est: int, source: str, posterior: np.ndarray,
                         replacement: bool = True) -> tuple[list[int], np.ndarray]:
        labels, weights = draw_estimation_labels(rng, n_est, source, posterior, replacement)
        return [int(y) for y in labels], weights


# -------------------------------------------------------------------------------------------- MediQ
@dataclass
class MediQCase:
    """One MediQ case: the multiple-choice question, the initial information (``context[0]``), the atomic
    facts (numbering stripped) and the questions that reveal them."""

    id: str
    question: str
    options: dict[str, str]
    answer_idx: str
    initial_info: str
    facts: list[str]
    queries: list[str] = field(default_factory=list)
    specialty: str = ""

    def __post_init__(self) -> None:
        if not self.queries:
            self.queries = [fact_to_question(f) for f in self.facts]

    @property
    def context(self) -> dict[str, Any]:
        return {"question": self.question, "options": self.options, "initial_info": self.initial_info}


_NUMBER = re.compile(r"^\s*\d+\s*[.)]\s*")


def fact_to_question(fact: str) -> str:
    """Our template for turning an atomic fact into the question that reveals it. Only answers enter the
    predictor prompt (§5.1), so the wording matters for answerers, not for the predictor."""
    words = re.findall(r"[A-Za-z0-9'/-]+", fact)
    topic = " ".join(words[:8])
    return f"Could you tell me about this: {topic}?"


def _parse_case(row: dict[str, Any], specialty: str = "", path: str | Path | None = None,
                line: int | None = None) -> MediQCase:
    from cmikit.harness.errors import DataFileError
    from cmikit.harness.schemas import MediQRow, validate

    if isinstance(row, dict) and "id" not in row and "" in row:  # a CSV's unnamed index column
        row = {**row, "id": row[""]}
    try:
        case = validate(MediQRow, row, path, line=line,
                        what="MediQ case (question, context, options, answer_idx, facts)")
    except DataFileError as err:
        raise EnvironmentSetupError(str(err)) from None
    context = case.context if isinstance(case.context, list) else [case.context]
    facts = [_NUMBER.sub("", f).strip() for f in case.facts]
    return MediQCase(id=case.id or "", question=case.question, options=dict(case.options),
                     answer_idx=case.answer_idx, initial_info=context[0] if context else "",
                     facts=[f for f in facts if f], specialty=case.specialty or specialty)


def load_mediq_jsonl(path: str | Path, limit: int | None = None) -> list[MediQCase]:
    """Cases from a MediQ JSONL file (``all_dev_good.jsonl`` / ``all_craft_md.jsonl`` format)."""
    path = Path(path)
    if not path.is_file():
        raise EnvironmentSetupError(f"MediQ file not found: {path}.")
    from cmikit.harness.errors import DataFileError
    from cmikit.harness.schemas import iter_jsonl

    cases = []
    try:
        for number, _raw, row in iter_jsonl(path, "MediQ .jsonl file (one case per line)"):
            if isinstance(row, DataFileError):
                raise row
            cases.append(_parse_case(row, path=path, line=number))
            if limit is not None and len(cases) >= limit:
                break
    except EnvironmentSetupError:
        raise
    except DataFileError as err:
        raise EnvironmentSetupError(str(err)) from None
    if not cases:
        raise EnvironmentSetupError("holds no cases.", path=path)
    return cases


def load_mediq_split(data_dir: str | Path, specialty: str, split: int, role: str) -> list[MediQCase]:
    """Cases of ``splits/{specialty}/split{split}_{role}.csv`` (role: train = D_est, cal, test)."""
    roles = ("train", "cal", "test")
    if role not in roles:
        raise EnvironmentSetupError(f"role must be one of {roles}, got {role!r}.")
    path = Path(data_dir) / "splits" / specialty / f"split{split}_{role}.csv"
    if not path.is_file():
        have = sorted(p.name for p in (Path(data_dir) / "splits").glob("*")) if (Path(data_dir) / "splits").is_dir() else []
        raise EnvironmentSetupError(f"MediQ split file not found: {path}. Specialties available: {have}.")
    csv.field_size_limit(10**8)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            cases = []
            for row in reader:
                cases.append(_parse_case(row, specialty, path=path, line=reader.line_num))
    except UnicodeDecodeError as err:
        raise EnvironmentSetupError(f"not UTF-8 text (byte {err.start}).", path=path) from err
    except csv.Error as err:
        raise EnvironmentSetupError(f"not a readable CSV file ({err}).", path=path) from err
    if not cases:
        raise EnvironmentSetupError("holds no cases.", path=path)
    return cases


def _overlap_answer(facts: Sequence[str], query: str, min_overlap: float = 0.3) -> str:
    """The fact sharing the most content words with the query (our lexical stand-in for a patient), or
    "cannot answer" below ``min_overlap`` (Jaccard)."""
    qw = set(re.findall(r"[a-z0-9]{3,}", query.lower())) - {"could", "you", "tell", "about", "this", "the"}
    best, best_score = None, 0.0
    for f in facts:
        fw = set(re.findall(r"[a-z0-9]{3,}", f.lower()))
        score = len(qw & fw) / max(1, len(qw | fw))
        if score > best_score:
            best, best_score = f, score
    return best if best is not None and best_score >= min_overlap else CANNOT_ANSWER


class PatientLLM:
    """A patient simulated by the LLM: given the patient's facts and a question, it replies with at most two
    relevant facts or says it cannot answer (the paper's MediQ answerer, our wording)."""

    def __init__(self, backend: Any, max_new_tokens: int = 64) -> None:
        self.backend, self.max_new_tokens = backend, max_new_tokens

    def answer(self, facts: Sequence[str], query: str) -> str:
        from cmikit.harness.backends import SamplingParams

        listing = "\n".join(f"- {f}" for f in facts)
        msgs = [{"role": "system", "content": "You are a patient. Answer the doctor only with facts from your "
                 f"list, at most two of them, copied as written. If none applies, say: {CANNOT_ANSWER}"},
                {"role": "user", "content": f"Your facts:\n{listing}\n\nDoctor's question: {query}"}]
        text = self.backend.generate([msgs], SamplingParams(max_new_tokens=self.max_new_tokens))[0].strip()
        return text or CANNOT_ANSWER


@dataclass
class MediQ:
    """MediQ as a C-IP environment. ``est_cases`` is D_est (the split's train file)."""

    est_cases: list[MediQCase]
    patient: PatientLLM | None = None
    letters: tuple[str, ...] = ("A", "B", "C", "D")
    max_candidates: int | None = None

    def __post_init__(self) -> None:
        if not self.est_cases:
            raise EnvironmentSetupError("MediQ needs at least one estimation case (D_est).")

    @property
    def labels(self) -> list[str]:
        return list(self.letters)

    def label_of(self, case: MediQCase) -> int:
        return self.letters.index(case.answer_idx)

    def item_name(self, case: MediQCase) -> str:
        return f"{case.answer_idx}: {case.options[case.answer_idx]}"

    def context(self, case: MediQCase) -> dict[str, Any]:
        return case.context

    def candidate_queries(self, case: MediQCase, history: History, rng: np.random.Generator) -> list[str]:
        asked = {t.question for t in history}
        bank = [q for q in case.queries if q not in asked]
        if self.max_candidates and len(bank) > self.max_candidates:  # a random subset per step (speed)
            picks = sorted(rng.choice(len(bank), size=self.max_candidates, replace=False).tolist())
            return [bank[j] for j in picks]
        return bank

    def answer(self, case: MediQCase, query: str) -> str:
        if query in case.queries:  # the test patient's own fact question: the fact itself (or the patient LLM)
            fact = case.facts[case.queries.index(query)]
            return self.patient.answer(case.facts, query) if self.patient is not None else fact
        if self.patient is not None:
            return self.patient.answer(case.facts, query)
        return _overlap_answer(case.facts, query)

    def answers(self, cases: Sequence[MediQCase], query: str) -> list[str]:
        return [self.answer(c, query) for c in cases]

    def estimation_items(self, rng: np.random.Generator, n_est: int, source: str, posterior: np.ndarray,
                         replacement: bool = True) -> tuple[list[MediQCase], np.ndarray]:
        if source != "prior":
            raise EnvironmentSetupError(f"MediQ estimation samples come from D_est (source 'prior'); got {source!r}.")
        if not replacement and n_est <= len(self.est_cases):  # the reference MediQ IP baseline
            picks = rng.choice(len(self.est_cases), size=n_est, replace=False)
        else:
            picks = rng.integers(len(self.est_cases), size=n_est)
        return [self.est_cases[i] for i in picks], np.full(n_est, 1.0 / n_est)
