"""SAMI loss: hand computations, ln C at a constant matrix, gradients only through completion tokens."""

from __future__ import annotations

import math

import pytest
import torch

from cmikit.sami.loss import (
    SAMIInputError,
    completion_logprob_matrix,
    log_mean_mi,
    reduce_token_logprobs,
    sami_loss,
)


def _hand_loss(m: list[list[float]]) -> tuple[float, float]:
    c = len(m)
    row = -sum(m[i][i] - math.log(sum(math.exp(m[i][j]) for j in range(c))) for i in range(c)) / c
    col = -sum(m[j][j] - math.log(sum(math.exp(m[i][j]) for i in range(c))) for j in range(c)) / c
    return row, col


def test_loss_matches_hand_computation_both_directions():
    m = [[-1.0, -3.0], [-2.5, -0.5]]
    out = sami_loss(torch.tensor(m))
    # row 0: -(-1 - log(e^-1 + e^-3)); row 1: -(-0.5 - log(e^-2.5 + e^-0.5))
    r0 = 1.0 + math.log(math.exp(-1) + math.exp(-3)) - 0.0
    r1 = 0.5 + math.log(math.exp(-2.5) + math.exp(-0.5))
    c0 = 1.0 + math.log(math.exp(-1) + math.exp(-2.5))
    c1 = 0.5 + math.log(math.exp(-3) + math.exp(-0.5))
    assert out.loss_row.item() == pytest.approx((r0 + r1) / 2, abs=1e-6)
    assert out.loss_col.item() == pytest.approx((c0 + c1) / 2, abs=1e-6)
    assert out.loss.item() == pytest.approx((r0 + r1 + c0 + c1) / 4, abs=1e-6)
    assert out.mi_bound.item() == pytest.approx(math.log(2) - out.loss.item(), abs=1e-6)
    assert out.accuracy_row.item() == 1.0 and out.accuracy_col.item() == 1.0


def test_loss_batched_c3_asymmetric_matrix():
    mats = [[[-1.0, -2.0, -4.0], [-3.0, -1.5, -0.2], [-2.0, -2.0, -1.0]],
            [[-0.3, -0.1, -0.9], [-1.0, -2.0, -3.0], [-0.5, -0.7, -0.6]]]
    out = sami_loss(torch.tensor(mats))
    hands = [_hand_loss(m) for m in mats]
    assert out.loss_row.item() == pytest.approx(sum(h[0] for h in hands) / 2, abs=1e-6)
    assert out.loss_col.item() == pytest.approx(sum(h[1] for h in hands) / 2, abs=1e-6)
    for b, (r, c) in enumerate(hands):
        assert out.loss_per_query[b].item() == pytest.approx((r + c) / 2, abs=1e-6)
    # Row and column terms differ on an asymmetric matrix: the two directions are really distinct.
    assert abs(hands[0][0] - hands[0][1]) > 1e-3


@pytest.mark.parametrize("c", [2, 3, 5])
def test_constant_matrix_gives_log_c(c):
    out = sami_loss(torch.full((4, c, c), -2.7))
    assert out.loss.item() == pytest.approx(math.log(c), abs=1e-6)
    assert out.mi_bound.item() == pytest.approx(0.0, abs=1e-6)
    assert log_mean_mi(torch.full((c, c), -1.0)).item() == pytest.approx(0.0)


def test_reductions_mean_and_sum_by_hand():
    lp = torch.tensor([[-1.0, -2.0, -3.0, -9.0], [-0.5, -0.5, -7.0, -7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0]])
    assert reduce_token_logprobs(lp, mask, "sum").tolist() == [-6.0, -0.5]
    assert reduce_token_logprobs(lp, mask, "mean").tolist() == [-2.0, -0.5]
    with pytest.raises(SAMIInputError, match="allowed"):
        reduce_token_logprobs(lp, mask, "max")
    with pytest.raises(SAMIInputError, match="no completion tokens"):
        reduce_token_logprobs(lp, torch.zeros_like(mask), "mean")


def test_loss_through_token_logprobs_uses_reduction():
    # Two responses of different lengths: sum and mean give different matrices and different losses.
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 11)
    labels = torch.randint(0, 11, (4, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]])
    m_sum = completion_logprob_matrix(logits, labels, mask, 2, "sum")
    m_mean = completion_logprob_matrix(logits, labels, mask, 2, "mean")
    lp = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    hand_sum = (lp * mask).sum(-1).view(1, 2, 2)
    assert torch.allclose(m_sum, hand_sum, atol=1e-5)
    assert torch.allclose(m_mean, hand_sum / mask.sum(-1).view(1, 2, 2), atol=1e-5)


def test_gradients_flow_only_through_completion_tokens():
    torch.manual_seed(1)
    logits = torch.randn(8, 7, 13, requires_grad=True)  # B=2 queries, C=2 → 8 sequences
    labels = torch.randint(0, 13, (8, 7))
    mask = torch.zeros(8, 7, dtype=torch.long)
    for n in range(8):
        mask[n, 3 + n % 3 : 6] = 1  # completion positions; the rest are prompt or padding
    out = sami_loss(completion_logprob_matrix(logits, labels, mask, 2))
    out.loss.backward()
    per_pos = logits.grad.abs().sum(-1)
    assert torch.all(per_pos[mask == 0] == 0)
    assert torch.all(per_pos[mask == 1] > 0)


@pytest.mark.parametrize("bad", [torch.zeros(1, 1), torch.zeros(2, 3), torch.zeros(3), torch.zeros(2, 1, 1)])
def test_bad_matrices_are_refused(bad):
    with pytest.raises(SAMIInputError, match="C >= 2|square"):
        sami_loss(bad)
