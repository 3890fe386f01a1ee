"""Knowledge bases for 20 Questions and the shared history types (paper §4.1, Q_closed and the answer oracle).

A knowledge base is a JSON file in the format of the AwA2 file the C-IP paper plays
(``{"questions": [...], "classes": [...], "answers": {class: [0/1 per question]}}``, 1 = yes). The project
ships its own base, ``cip/data/everyday_things.json`` (24 everyday things x 40 questions, our own writing),
used as the default; ``awa2`` names the AwA2 20-class file of the ``awa2`` dataset (``$CMIKIT_DATA/awa2``, or
fetched once by ``cmikit data fetch awa2``).

A history is a tuple of :class:`Turn` (question, answer); the predictor conditions on it.
"""

from __future__ import annotations

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


KB_WHAT = 'knowledge base {"questions": [...], "classes": [...], "answers": {class: [0/1 per question]}}'


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
    table: np.ndarray  # [n_classes, n_questions] of 0/1
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
        rows = np.asarray([kb.answers[c] for c in kb.classes])
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
        """The table's answer ("Yes." / "No.") of item ``label`` to a bank question."""
        j = self.question_index.get(question)
        if j is None:
            raise KnowledgeBaseError(f"Question {question!r} is not in knowledge base {self.name}.")
        return YES if self.table[label, j] else NO
