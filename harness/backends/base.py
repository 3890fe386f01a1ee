"""The LM backend interface every package talks to.

Three operations cover what SAMI, C-IP and the evaluators need:

* ``generate(prompts, sampling) -> list[str]``
* ``sequence_logprobs(prompts, completions) -> (sum_logprob[B], n_tokens[B])``: log p(completion | prompt),
  summed over the completion's tokens (prompt and completion are tokenised separately and concatenated,
  so the score is that of exactly those completion tokens).
* ``next_token_logprobs(prompts, candidate_token_ids) -> [B, k]``: log-probabilities of the next token
  restricted to the candidates and renormalised over them (log-softmax over the k candidate logits).

A prompt is plain text or a list of chat messages (``{"role", "content"}``). Chat prompts are rendered with
the tokenizer's chat template: if the last message is the assistant's, it is a prefilled turn that the
model continues (``continue_final_message=True``); otherwise a generation prompt is added.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Message = dict[str, str]
Prompt = str | Sequence[Message]


class BackendError(ValueError):
    """Bad input to a backend call; the message says what was wrong."""


@dataclass
class SamplingParams:
    """Decoding settings shared by all backends. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise BackendError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise BackendError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise BackendError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise BackendError(f"top_k must be >= 0 (0 = off), got {self.top_k}.")


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """Turn a prompt (text or chat messages) into the exact text the model sees."""
    # Same rule as trl's ``apply_chat_template`` for a prompt (generation prompt after a user turn; an assistant
    # prefill, e.g. the judge's "Final answer:", left open with ``continue_final_message``), kept as our own
    # because TRL's takes a dataset row ({"prompt": ...}) and returns a dict, while every backend renders one
    # message list, and a tokenizer without a chat template gets a BackendError naming the fix here.
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise BackendError(
            f"A chat prompt must be a non-empty list of {{'role', 'content'}} dicts, got {prompt!r:.200}."
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise BackendError("This tokenizer has no chat template; pass plain-text prompts instead.")
    prefilled = messages[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=not prefilled,
        continue_final_message=prefilled,
    )


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the earliest stop string (the stop string itself is dropped)."""
    cut = len(text)
    for s in stop:
        if s:
            idx = text.find(s)
            if idx != -1:
                cut = min(cut, idx)
    return text[:cut]


def first_token_ids(tokenizer: Any, labels: Sequence[str], prefix: str = "") -> list[int]:
    """The first token id of each label as it would appear after ``prefix`` (e.g. after a prefilled
    ``"Answer: "``). Labels whose first tokens collide raise :class:`BackendError` naming them."""
    ids: list[int] = []
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    for label in labels:
        full = tokenizer(prefix + label, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) <= len(base):
            # The label merged with the prefix; fall back to tokenising the label alone.
            full = base + tokenizer(label, add_special_tokens=False)["input_ids"]
        ids.append(full[len(base)])
    seen: dict[int, str] = {}
    collisions = []
    for label, tid in zip(labels, ids):
        if tid in seen:
            collisions.append((seen[tid], label, tokenizer.decode([tid])))
        seen.setdefault(tid, label)
    if collisions:
        desc = "; ".join(f"{a!r} and {b!r} both start with token {t!r}" for a, b, t in collisions)
        raise BackendError(
            f"Labels must have distinct first tokens: {desc}. Use option letters (A, B, C, ...) or reword the "
            f"labels so that each starts differently."
        )
    return ids


class LMBackend(ABC):
    """A language model that can be queried; see the module docstring for the contract."""

    tokenizer: Any

    def render(self, prompt: Prompt) -> str:
        return render_prompt(self.tokenizer, prompt)

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams | None = None) -> list[str]: ...

    @abstractmethod
    def sequence_logprobs(
        self, prompts: Sequence[Prompt], completions: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def next_token_logprobs(
        self, prompts: Sequence[Prompt], candidate_token_ids: Sequence[int] | Sequence[Sequence[int]]
    ) -> torch.Tensor: ...

    # shared validation -------------------------------------------------------------------------------
    @staticmethod
    def _check_pairs(prompts: Sequence[Prompt], completions: Sequence[str]) -> None:
        if len(prompts) != len(completions):
            raise BackendError(f"Got {len(prompts)} prompts but {len(completions)} completions; they pair up.")

    def _candidate_matrix(self, n: int, candidate_token_ids) -> torch.Tensor:
        cand = torch.as_tensor(candidate_token_ids, dtype=torch.long)
        if cand.dim() == 1:
            cand = cand.unsqueeze(0).expand(n, -1)
        if cand.dim() != 2 or cand.shape[0] != n or cand.shape[1] < 1:
            raise BackendError(
                f"candidate_token_ids must be [k] or [batch={n}, k] with k >= 1, got shape {tuple(cand.shape)}."
            )
        vocab = len(self.tokenizer)
        if int(cand.min()) < 0 or int(cand.max()) >= max(vocab, self._vocab_size()):
            raise BackendError(f"candidate token ids must lie in [0, {vocab}); got {cand.unique().tolist()[:20]}.")
        return cand

    def _vocab_size(self) -> int:
        return len(self.tokenizer)
