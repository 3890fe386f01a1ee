"""Knowledge bases for 20 Questions and the shared history types (paper §4.1, Q_closed and the answer oracle).

A knowledge base is a JSON file in the format of the AwA2 file the C-IP paper plays
(``{"questions": [...], "classes": [...], "answers": {class: [0/1 per question]}}``, 1 = yes). The project
ships its own base, ``cip/data/everyday_things.json`` (24 everyday things x 40 questions, our own writing),
used as the default; ``awa2`` names the AwA2 20-class file of the ``awa2`` dataset (``$CMIKIT_DATA/awa2``, or
fetched once by ``cmikit data fetch awa2``).

A cell of the answer table may be unknown (``null`` in the JSON, -1 in :attr:`KnowledgeBase.table`): items that
``cip play`` learned from a player carry the player's answers and nothing else. An unknown cell answers
"I don't know." and the table predictor gives it the question's base rate (:meth:`KnowledgeBase.base_rates`).

Every knowledge-base file this package writes goes through :meth:`KnowledgeBase.save` (one place to validate).

A history is a tuple of :class:`Turn` (question, answer); the predictor conditions on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmikit.harness.errors import DataFileError

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_KB = DATA_DIR / "everyday_things.json"
AWA2_FILE = "twenty_questions_awa2_20.json"  # in the awa2 dataset (cmikit.harness.data)
KB_ALIASES = {"everyday": DEFAULT_KB, "default": DEFAULT_KB, "awa2": None}  # None: resolved by cmikit.harness.data

YES, NO, UNKNOWN = "Yes.", "No.", "I don't know."
ANSWER_WORDS = {"y": YES, "yes": YES, "n": NO, "no": NO, "u": UNKNOWN, "unknown": UNKNOWN, "?": UNKNOWN,
                "dont know": UNKNOWN, "don't know": UNKNOWN, "idk": UNKNOWN}


KB_WHAT = 'knowledge base {"questions": [...], "classes": [...], "answers": {class: [0/1/null per question]}}'


class KnowledgeBaseError(DataFileError):
    """A knowledge base file or value a user can fix; the message says what was wrong (a
    :class:`cmikit.harness.errors.DataFileError`, so the CLIs print it as one line)."""


@dataclass(frozen=True)
class Turn:
    """One (query, answer) pair of a history S_k."""

    question: str
    answer: str


History = tuple[Turn, ...]


def resolve_kb_path(path: str | Path | None) -> Path:
    """The file behind a ``--kb`` value: an alias (``everyday``/``default``, ``awa2``) or a path."""
    if path is None:
        return Path(DEFAULT_KB)
    if str(path) in KB_ALIASES:
        from cmikit.harness.data import data_file

        return Path(KB_ALIASES[str(path)] or data_file("awa2", AWA2_FILE))
    return Path(path)


def normalize_answer(text: str) -> str:
    """Map a person's answer (y / n / unknown and spelled-out forms) to the canonical answer string.

    Raises :class:`KnowledgeBaseError` naming the allowed answers for anything else.
    """
    key = text.strip().lower().rstrip(".!")
    if key in ANSWER_WORDS:
        return ANSWER_WORDS[key]
    raise KnowledgeBaseError(
        f"Answer {text!r} is not allowed; answer y (yes), n (no) or u (unknown)."
    )


def answer_polarity(answer: str) -> int | None:
    """+1 for a yes answer, 0 for a no answer, None when the answer says neither (unknown, free text)."""
    words = answer.strip().lower().replace(",", " ").replace(".", " ").split()
    if not words:
        return None
    if words[0] in ("yes", "yeah", "yep", "y"):
        return 1
    if words[0] in ("no", "nope", "n"):
        return 0
    return None


@dataclass
class KnowledgeBase:
    """Items (the label set Y), yes/no questions (Q_closed) and the item x question answer table."""

    classes: list[str]
    questions: list[str]
    table: np.ndarray  # [n_classes, n_questions] of 1 (yes), 0 (no), -1 (unknown)
    source: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if not self.classes:
            raise KnowledgeBaseError(f"Knowledge base {self.name or '(unnamed)'} has no classes; add at least two.")
        if not self.questions:
            raise KnowledgeBaseError(f"Knowledge base {self.name or '(unnamed)'} has no questions; add some.")
        if len(set(self.classes)) != len(self.classes):
            dupes = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise KnowledgeBaseError(f"Knowledge base {self.name}: repeated class names {dupes}.")
        if len(set(self.questions)) != len(self.questions):
            dupes = sorted({q for q in self.questions if self.questions.count(q) > 1})[:3]
            raise KnowledgeBaseError(f"Knowledge base {self.name}: repeated questions {dupes}.")
        self.table = np.asarray(self.table, dtype=np.int8)
        expected = (len(self.classes), len(self.questions))
        if self.table.shape != expected:
            raise KnowledgeBaseError(f"Knowledge base {self.name}: answer table has shape {self.table.shape}, "
                                     f"expected {expected} (classes x questions).")
        self.question_index = {q: j for j, q in enumerate(self.questions)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "") -> KnowledgeBase:
        """A knowledge base from its JSON object, checked by :class:`cmikit.harness.schemas.KnowledgeBaseFile`
        (errors name ``name``, the JSON path, the value found and what is allowed)."""
        from cmikit.harness.schemas import KnowledgeBaseFile, validate

        try:
            kb = validate(KnowledgeBaseFile, data, name or "knowledge base", what=KB_WHAT)
        except DataFileError as err:
            raise KnowledgeBaseError(str(err)) from None
        rows = np.asarray([[-1 if v is None else v for v in kb.answers[c]] for c in kb.classes])
        return cls(list(kb.classes), list(kb.questions), rows, source=kb.source, name=name)

    @classmethod
    def load(cls, path: str | Path | None = None) -> KnowledgeBase:
        """Load a knowledge base from a JSON path or an alias (``everyday`` = the default, ``awa2``)."""
        from cmikit.harness.schemas import parse_json, read_text

        path = resolve_kb_path(path)
        if not path.is_file():
            raise KnowledgeBaseError(f"Knowledge base file not found: {path}. Pass a JSON file in the AwA2 format "
                                     f"or one of the aliases {sorted(KB_ALIASES)}.")
        try:
            data = parse_json(read_text(path, "knowledge base"), path, KB_WHAT)
        except DataFileError as err:
            raise KnowledgeBaseError(str(err)) from None
        return cls.from_dict(data, name=str(path))

    def answer(self, label: int, question: str) -> str:
        """The table's answer ("Yes." / "No."; "I don't know." for an unknown cell) of item ``label``."""
        j = self.question_index.get(question)
        if j is None:
            raise KnowledgeBaseError(f"Question {question!r} is not in knowledge base {self.name}.")
        value = int(self.table[label, j])
        return UNKNOWN if value < 0 else YES if value else NO

    def base_rates(self) -> np.ndarray:
        """P(yes) per question over the items whose cell is known (0.5 where none is): the answer model of an
        unknown cell and of the "none of these" hypothesis (:class:`cmikit.cip.predictors.OpenWorldPredictor`)."""
        known = self.table >= 0
        yes = (self.table == 1).sum(axis=0)
        n = known.sum(axis=0)
        return np.where(n > 0, yes / np.maximum(n, 1), 0.5)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the AwA2 format; unknown cells are ``null``)."""
        answers = {c: [None if v < 0 else int(v) for v in self.table[i]] for i, c in enumerate(self.classes)}
        out: dict[str, Any] = {"questions": list(self.questions), "classes": list(self.classes), "answers": answers}
        if self.source:
            out["source"] = self.source
        return out

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the items, questions and answers: the knowledge base's identity in
        thresholds files and caches (whitespace and key order do not change it; any answer does)."""
        body = self.to_dict()
        body.pop("source", None)
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the knowledge base as JSON (atomically); the one place this package writes a KB file."""
        path = Path(path)
        KnowledgeBase.from_dict(self.to_dict(), name=str(path))  # what is written must load back
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    def without(self, label: int) -> KnowledgeBase:
        """A copy without item ``label`` (the held-out players of ``bench_cip.py --part players``)."""
        keep = [i for i in range(len(self.classes)) if i != label]
        return KnowledgeBase([self.classes[i] for i in keep], list(self.questions), self.table[keep].copy(),
                             source=self.source, name=f"{self.name} without {self.classes[label]}")

    def with_learned_item(self, name: str, answers: dict[str, str], new_question: str | None = None,
                          new_answer: str | None = None, other: str | None = None) -> KnowledgeBase:
        """A copy with one learned item: its row holds the player's yes/no ``answers`` (question -> answer
        text; anything else stays unknown). ``new_question`` (a question that tells ``name`` from ``other``)
        is added to the bank if new, answered ``new_answer`` for ``name`` and the opposite for ``other``;
        every other item's cell of a new question is unknown."""
        name = name.strip()
        if not name:
            raise KnowledgeBaseError("The new item needs a name.")
        if name in self.classes:
            raise KnowledgeBaseError(f"{name!r} is already in the knowledge base {self.name}.")
        questions, table = list(self.questions), self.table.copy()
        if new_question and new_question not in self.question_index:
            questions.append(new_question)
            table = np.concatenate([table, np.full((len(self.classes), 1), -1, dtype=np.int8)], axis=1)
        row = np.full(len(questions), -1, dtype=np.int8)
        for question, text in answers.items():
            pol = answer_polarity(text)
            if question in questions and pol is not None:
                row[questions.index(question)] = pol
        if new_question:
            pol = answer_polarity(new_answer or "")
            if pol is None:
                raise KnowledgeBaseError(f"The answer for {name!r} to {new_question!r} must be yes or no.")
            j = questions.index(new_question)
            row[j] = pol
            if other is not None:
                table[self.classes.index(other), j] = 1 - pol
        return KnowledgeBase([*self.classes, name], questions, np.concatenate([table, row[None]], axis=0),
                             source=self.source, name=self.name)
