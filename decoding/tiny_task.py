"""The synthetic task the tiny diffusion LM is trained and benchmarked on: "copy one of two strings".

A prompt is ``"X,Y="`` where ``X`` is a random lower-case string over a small alphabet and ``Y`` equals ``X``
except at ``n_diff`` positions, where it has the upper-case letter. The answer is *either* ``X`` *or* ``Y``
in full (training picks one at random); an answer is correct exactly when it equals one of them, so it
is checked exactly. (Upper-casing keeps the consistency rule learnable by a tiny model in minutes: "one
revealed capital means all capitals".)

Why this task: where ``X`` and ``Y`` agree the next token is certain, so a sampler may commit those
positions in parallel. Where they differ, each position on its own is a coin flip, but the positions are
fully dependent: once one of them is committed the others are determined. Committing two differing
positions in the same step picks each one independently and produces a chimera half of the time, so
committing several dependent tokens at once measurably hurts, while committing certain tokens in
parallel is free. (Multi-digit and binary addition were tried first: on 2 shared CPU cores a model
small enough to train in minutes stayed at chance on the digits. With arbitrary replacement letters
instead of capitals the tiny model learned to copy but not to keep the choice consistent.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class CopyOneTask:
    """Problem generator and exact checker (string level; the tokenizer is character level)."""

    length: int = 24
    n_diff: int = 6
    alphabet: str = "abcdefgh"
    gen_length: int = 24

    def __post_init__(self) -> None:
        if self.gen_length < self.length:
            raise ValueError(f"gen_length={self.gen_length} must be >= length={self.length}")
        if not 0 <= self.n_diff <= self.length:
            raise ValueError(f"n_diff={self.n_diff} must be in [0, length={self.length}]")

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One ``(prompt, answer)`` pair; the answer (X or Y, at random) excludes the EOS padding."""
        x = [rng.choice(self.alphabet) for _ in range(self.length)]
        y = list(x)
        for pos in rng.sample(range(self.length), self.n_diff):
            y[pos] = x[pos].upper()
        x_str, y_str = "".join(x), "".join(y)
        return f"{x_str},{y_str}=", (x_str if rng.random() < 0.5 else y_str)

    def problems(self, n: int, seed: int, exclude: set[str] | None = None) -> list[tuple[str, str]]:
        """``n`` distinct problems from ``seed``, skipping prompts in ``exclude`` (held-out split)."""
        return _distinct_problems(self, n, seed, exclude)

    def is_correct(self, prompt: str, generated: str) -> bool:
        """``generated`` (EOS and padding after the answer ignored) equals X or Y of ``prompt`` exactly."""
        x, y = prompt.rstrip("=").split(",")
        head = generated[: self.length]
        tail = generated[self.length:]
        return head in (x, y) and all(c.lower() not in self.alphabet for c in tail[:1])


@dataclass(frozen=True)
class OneClassUpperTask:
    """"Upper-case one letter class": confident but coupled positions over a long answer.

    The prompt is ``"X="`` with ``X`` a random lower-case string of ``length`` letters over ``alphabet``. The
    answer is ``X`` with every occurrence of *one* of the ``choice`` letters upper-cased (training picks the
    letter uniformly); it is correct exactly when it equals one of those ``len(choice)`` candidates.

    Why this task: positions holding a non-choice letter are certain (a copy). A position holding a choice
    letter is lower-case with marginal probability ``(K - 1) / K`` (0.75 for the default K = 4): *confident*,
    yet coupled to every other choice position. All occurrences of a letter share its case, and exactly
    one letter is upper-cased, so the per-position majority (everything lower-case) is never an answer.
    Committing choice positions one at a time works: each lower-case commit rules a letter out, and after at
    most K - 1 of them the rest is determined. Committing several confident choice positions of different
    letters in one step (threshold below (K - 1) / K, a fixed k > 1 per step at the end, a consistency test
    that only asks that the argmax stay the same) produces the all-lower-case chimera; sampling them in
    parallel mixes cases within a letter. With ``length = 64`` the answer is long enough for adaptive
    budgets to matter (one token per step costs 64 forward passes).
    """

    length: int = 64
    alphabet: str = "abcdefgh"
    choice: str = "abcd"
    gen_length: int = 64

    def __post_init__(self) -> None:
        if self.gen_length < self.length:
            raise ValueError(f"gen_length={self.gen_length} must be >= length={self.length}")
        if not self.choice or not set(self.choice) <= set(self.alphabet):
            raise ValueError(f"choice={self.choice!r} must be a non-empty subset of alphabet={self.alphabet!r}")

    def candidates(self, x: str) -> set[str]:
        """Every correct answer for the lower-case string ``x``."""
        return {x.replace(c, c.upper()) for c in self.choice}

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One ``(prompt, answer)`` pair."""
        x = "".join(rng.choice(self.alphabet) for _ in range(self.length))
        letter = rng.choice(self.choice)
        return f"{x}=", x.replace(letter, letter.upper())

    def problems(self, n: int, seed: int, exclude: set[str] | None = None) -> list[tuple[str, str]]:
        """``n`` distinct problems from ``seed``, skipping prompts in ``exclude`` (held-out split)."""
        return _distinct_problems(self, n, seed, exclude)

    def is_correct(self, prompt: str, generated: str) -> bool:
        """The first ``length`` generated characters are one of the candidates (anything after is ignored
        unless it is a letter of the alphabet)."""
        head, tail = generated[: self.length], generated[self.length:]
        return head in self.candidates(prompt.rstrip("=")) and all(c.lower() not in self.alphabet for c in tail[:1])


def _distinct_problems(task, n: int, seed: int, exclude: set[str] | None) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    seen = set(exclude or ())
    out = []
    while len(out) < n:
        prompt, answer = task.sample(rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append((prompt, answer))
    return out


#: Task classes by the ``name`` stored in a checkpoint's ``config.tiny_dlm_task``.
TASKS = {"copy-one-of-two": CopyOneTask, "one-class-upper": OneClassUpperTask}


def task_name(task) -> str:
    return next(name for name, cls in TASKS.items() if isinstance(task, cls))


def task_from_dict(d: dict) -> CopyOneTask | OneClassUpperTask:
    """Rebuild a task from ``asdict(task) | {"name": ...}`` (no name: the copy task, older checkpoints)."""
    d = dict(d)
    return TASKS[d.pop("name", "copy-one-of-two")](**d)
