"""Hand-written oracle "models" for testing strategies: logits you construct, with chosen confidences.

An :class:`OracleModel` predicts a fixed target token at every position with a probability you choose
(the rest of the mass spread evenly over the other tokens), optionally as a function of the canvas (to
make predictions change between steps). With distinct confidences every strategy's commits become
predictable and can be asserted exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import torch


def peaked_logits(targets: torch.Tensor, confidence: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits whose softmax puts ``confidence`` on ``targets`` and the rest uniformly on the other tokens."""
    confidence = confidence.double().clamp(1e-6, 1 - 1e-9)
    rest = ((1 - confidence) / (vocab_size - 1)).log()
    logits = rest[..., None].expand(*targets.shape, vocab_size).clone()
    logits.scatter_(-1, targets[..., None], confidence.log()[..., None])
    return logits.float()


class OracleModel(torch.nn.Module):
    """``forward(input_ids) -> .logits``, no parameters.

    Args:
        vocab_size: size of the output distribution.
        predict: ``f(input_ids [B, L]) -> (targets [B, L], confidence [B, L])``.
        shift: emit Dream-convention logits (row i-1 predicts token i) instead of LLaDA's.
    """

    def __init__(self, vocab_size: int,
                 predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], shift: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        self.predict = predict
        self.shift = shift
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask=None, **_) -> SimpleNamespace:
        self.calls += 1
        targets, conf = self.predict(input_ids)
        logits = peaked_logits(targets, conf, self.vocab_size)
        if self.shift:
            logits = torch.cat([logits[:, 1:], logits[:, -1:]], dim=1)
        return SimpleNamespace(logits=logits)


def fixed_oracle(vocab_size: int, targets: torch.Tensor, confidence: torch.Tensor) -> OracleModel:
    """An oracle with the same targets / confidences at every step (shape ``[L]`` or ``[B, L]``)."""

    def predict(x: torch.Tensor):
        return targets.expand_as(x), confidence.expand(x.shape).to(torch.float64)

    return OracleModel(vocab_size, predict)


def entropy_of(confidence: float, vocab_size: int) -> float:
    """Entropy (nats) of the distribution :func:`peaked_logits` builds."""
    rest = (1 - confidence) / (vocab_size - 1)
    return -(confidence * math.log(confidence) + (vocab_size - 1) * rest * math.log(rest))
