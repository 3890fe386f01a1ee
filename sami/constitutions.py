"""Constitutions: principles with antitheses, and the positive/negative sets SAMI contrasts (paper Sec. 3, App. A.12).

A :class:`Principle` is a definition plus its antithesis (the paper's principle writer produces both). A
:class:`Constitution` is an ordered list of principle statements, each either the definition or the
antithesis. For a task with principles P1..Pk, :func:`constitution_set` builds the C constitutions a query
is paired with: the all-positive one first, then negatives that flip one or more principles. For a query
from a subset tied to one principle (HH ``helpful-base`` → helpful, ``harmless-base`` → harmless), the
reference HH code (``typo:experiments/hh-rlhf/generate.py`` with ``CONSTITUTIONS[subset]``) always negates
that principle, negates each other principle with probability 1/2, and lists the subset's own principle
last; ``negatives="random"`` does the same (:func:`subset_principle`). Queries without a subset draw a
random non-empty set of principles to flip. The TL;DR files hold one positive and one negative each
(:func:`load_reference_constitutions` reads them).

Training prompts list the principles in a shuffled order (reference ``shuffle_principles``); generation
uses the written order. :meth:`Constitution.render` does both.

The built-in texts below are this project's own writing.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmikit.harness.errors import ConfigError


class ConstitutionError(ConfigError):
    """A constitution set SAMI cannot use; the message says what was wrong."""


@dataclass(frozen=True)
class Principle:
    """One principle: a short name, what it asks for (``definition``) and its opposite (``antithesis``)."""

    name: str
    definition: str
    antithesis: str

    def statement(self, positive: bool) -> str:
        return self.definition if positive else self.antithesis


@dataclass(frozen=True)
class Constitution:
    """Ordered principle statements; ``signs[k]`` says whether statement k is a definition (True) or antithesis."""

    statements: tuple[str, ...]
    signs: tuple[bool, ...] = field(default=())
    names: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        """A short identifier such as ``"+helpful -harmless"``."""
        if not self.signs:
            return "custom"
        names = self.names or tuple(f"p{k}" for k in range(len(self.signs)))
        return " ".join(("+" if s else "-") + n for s, n in zip(self.signs, names))

    def render(self, shuffle: bool = False, seed: int | str | None = None) -> str:
        """Numbered principles, one per line; ``shuffle`` permutes their order with ``seed``."""
        order = list(range(len(self.statements)))
        if shuffle:
            random.Random(str(seed)).shuffle(order)
        return "\n".join(f"{n + 1}. {self.statements[k].strip()}" for n, k in enumerate(order))


def make_constitution(principles: Sequence[Principle], signs: Sequence[bool]) -> Constitution:
    if len(signs) != len(principles):
        raise ConstitutionError(f"Got {len(signs)} signs for {len(principles)} principles; give one per principle.")
    return Constitution(
        statements=tuple(p.statement(s) for p, s in zip(principles, signs)),
        signs=tuple(bool(s) for s in signs),
        names=tuple(p.name for p in principles),
    )


NEGATIVE_MODES = ("random", "one", "all", "enumerate")


def subset_principle(principles: Sequence[Principle], subset: str | None) -> str | None:
    """The principle a query subset is about: the one whose name starts the subset's name
    (``helpful-base`` → ``helpful``, ``harmless-base`` → ``harmless``), or None."""
    if not subset:
        return None
    head = str(subset).lower().split("-")[0].split(":")[-1]
    return next((p.name for p in principles if p.name.lower() == head), None)


def constitution_set(principles: Sequence[Principle], n_constitutions: int = 2, negatives: str = "random",
                     rng: random.Random | None = None, own: str | None = None) -> list[Constitution]:
    """The C constitutions for one query: all-positive first, then ``C − 1`` distinct negatives.

    ``own`` names the principle the query's subset is about (see :func:`subset_principle`); with
    ``negatives="random"`` it is listed last and flipped in every negative (reference HH draw).

    ``negatives``:
      * ``"random"``: with ``own``, the reference HH draw (``own`` flipped, every other principle flipped with
        probability 1/2; for C > 2, distinct such patterns drawn uniformly); without ``own``, each negative
        flips a random non-empty subset of principles (a uniform draw among the 2^k − 1 patterns);
      * ``"one"``: flip exactly one principle (a random one per negative);
      * ``"all"``: flip every principle (the exact complement; needs C = 2);
      * ``"enumerate"``: the first C − 1 sign patterns in a fixed order (deterministic).
    """
    if not principles:
        raise ConstitutionError("A constitution needs at least one principle; got none.")
    if n_constitutions < 2:
        raise ConstitutionError(f"SAMI needs C >= 2 constitutions per query; got {n_constitutions}.")
    if negatives not in NEGATIVE_MODES:
        raise ConstitutionError(f"Unknown negatives mode {negatives!r}; allowed: {', '.join(NEGATIVE_MODES)}.")
    if own is not None and negatives == "random":
        names = [p.name for p in principles]
        if own not in names:
            raise ConstitutionError(f"Subset principle {own!r} is not one of the principles {names}.")
        principles = [p for p in principles if p.name != own] + [principles[names.index(own)]]
    k = len(principles)
    patterns = [tuple(bits) for bits in itertools.product([True, False], repeat=k)][1:]  # all but all-positive
    if own is not None and negatives == "random":
        patterns = [pat for pat in patterns if not pat[-1]]  # the subset's own principle is always negated
    if negatives == "one":
        patterns = [tuple(j != i for j in range(k)) for i in range(k)]
    elif negatives == "all":
        patterns = [tuple(False for _ in range(k))]
    if n_constitutions - 1 > len(patterns):
        raise ConstitutionError(
            f"{k} principle(s) with negatives={negatives!r} give only {len(patterns)} distinct negative "
            f"constitution(s), but C = {n_constitutions} needs {n_constitutions - 1}. Lower n_constitutions or "
            f"add principles."
        )
    if negatives != "enumerate":
        rng = rng or random.Random(0)
        patterns = rng.sample(patterns, n_constitutions - 1)
    else:
        patterns = patterns[: n_constitutions - 1]
    positive = make_constitution(principles, [True] * k)
    return [positive] + [make_constitution(principles, p) for p in patterns]


# --------------------------------------------------------------------------------------------- built-ins
DIALOGUE_PRINCIPLES = (
    Principle(
        "helpful",
        "The assistant gives a direct, useful answer that addresses what the person actually asked.",
        "The assistant avoids the question and gives vague, unhelpful replies that do not address the request.",
    ),
    Principle(
        "harmless",
        "The assistant declines to help with anything dangerous or unethical and keeps its answers safe.",
        "The assistant helps with anything, however dangerous or unethical, and ignores possible harm.",
    ),
)

SUMMARY_PRINCIPLES = (
    Principle(
        "concise",
        "The summary is short and to the point, leaving out details that do not matter.",
        "The summary is long-winded and dwells on details that do not matter.",
    ),
    Principle(
        "comprehensive",
        "The summary covers every key point of the post, so a reader misses nothing important.",
        "The summary leaves out key points of the post, so a reader misses important information.",
    ),
)

BUILTIN_PRINCIPLES = {"dialogue": DIALOGUE_PRINCIPLES, "summarization": SUMMARY_PRINCIPLES}


def builtin_principles(task: str) -> tuple[Principle, ...]:
    """The project's built-in principles for ``task`` (``dialogue`` or ``summarization``)."""
    if task not in BUILTIN_PRINCIPLES:
        raise ConstitutionError(f"Unknown built-in principle set {task!r}; allowed: {', '.join(BUILTIN_PRINCIPLES)}.")
    return BUILTIN_PRINCIPLES[task]


# ------------------------------------------------------------------------------- reference JSON format
def _split_statements(text: str) -> tuple[str, ...]:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    out = []
    for ln in lines:
        head, _, rest = ln.partition(". ")
        out.append(rest.strip() if head.isdigit() and rest else ln)
    return tuple(out)


def parse_reference_constitution(data: dict) -> list[Constitution]:
    """One reference file ``{"positive", "negative", "identifiers"}`` → [positive, negative]."""
    for key in ("positive", "negative"):
        if not isinstance(data.get(key), str):
            raise ConstitutionError(f"Reference constitution needs a string {key!r} field; got keys {sorted(data)}.")
    out = []
    ids = data.get("identifiers") or {}
    for key in ("positive", "negative"):
        statements = _split_statements(data[key])
        tags = ids.get(key) or []
        if len(tags) == len(statements):
            signs = tuple(t.split()[0] == "pos" for t in tags)
            names = tuple(" ".join(t.split()[1:]) for t in tags)
        else:
            signs, names = (), ()
        out.append(Constitution(statements, signs, names))
    if len(out[0].statements) != len(out[1].statements):
        raise ConstitutionError(
            f"Positive and negative constitutions have different numbers of principles "
            f"({len(out[0].statements)} vs {len(out[1].statements)}); each principle needs its flipped version."
        )
    return out


def load_reference_constitutions(path: str | Path) -> list[list[Constitution]]:
    """Read a reference JSON file, or every ``*.json`` in a folder, into [[positive, negative], ...]."""
    path = Path(path)
    files = sorted(path.glob("*.json"), key=lambda p: (len(p.stem), p.stem)) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise ConstitutionError(f"--constitutions {path}: no constitution JSON files found there.")
    from cmikit.harness.schemas import ReferenceConstitutionFile
    from cmikit.sami.files import read_json

    sets = []
    for f in files:
        data = read_json(f, 'constitution file {"positive": text, "negative": text}', ReferenceConstitutionFile)
        try:
            sets.append(parse_reference_constitution(data.model_dump()))
        except ConstitutionError as err:
            raise ConstitutionError(f"{f}: {err}") from err
    return sets


def check_constitution_sets(sets: Sequence[Sequence[Constitution]]) -> int:
    """Check that every set has the same size C >= 2 and return C."""
    if not sets:
        raise ConstitutionError("No constitution sets given.")
    sizes = [len(s) for s in sets]
    if len(set(sizes)) != 1:
        raise ConstitutionError(
            f"Constitution sets have mismatched sizes {sorted(set(sizes))}: every query needs the same number C "
            f"of constitutions to form a C×C matrix."
        )
    if sizes[0] < 2:
        raise ConstitutionError(f"SAMI needs C >= 2 constitutions per query; got sets of size {sizes[0]}.")
    return sizes[0]
