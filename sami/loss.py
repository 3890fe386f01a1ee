"""The SAMI objective as plain functions (paper Sec. 3, Eq. 2 and App. A.2; Fig. 6).

Given, for each query, a C×C matrix ``L[i, j] = log π(y_j | x, c_i)`` (row i = constitution, column j =
the response sampled under constitution j), the loss is a CLIP-style symmetric InfoNCE with the diagonal as
the positive pairs::

    loss_row = −(1/C) Σ_i [ L[i,i] − logsumexp_j L[i,j] ]   # each constitution picks its own response
    loss_col = −(1/C) Σ_j [ L[j,j] − logsumexp_i L[i,j] ]   # each response picks its own constitution
    loss     = (loss_row + loss_col) / 2

and ``log C − loss`` is the lower bound on the conditional mutual information I(Y; C | X) that SAMI
maximises. The released code uses the *mean* per-token log-prob for ``L`` (a per-response temperature
1/|y_j|); the paper's Eq. 2 uses the sequence log-prob (the sum). :func:`completion_logprob_matrix`
offers both (``reduction="mean"`` = released code, ``"sum"`` = paper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cmikit.harness.errors import ConfigError

REDUCTIONS = ("mean", "sum")


class SAMIInputError(ConfigError):
    """A log-prob matrix or batch that SAMI cannot use; the message says what was wrong."""


@dataclass
class SAMILossOutput:
    """Loss terms per batch (means over the B queries) and per query (``*_per_query``, shape [B])."""

    loss: torch.Tensor
    loss_row: torch.Tensor
    loss_col: torch.Tensor
    mi_bound: torch.Tensor
    accuracy_row: torch.Tensor
    accuracy_col: torch.Tensor
    loss_per_query: torch.Tensor
    mi_bound_per_query: torch.Tensor


def check_logprob_matrix(logprobs: torch.Tensor) -> torch.Tensor:
    """Return ``logprobs`` as a [B, C, C] tensor, or raise :class:`SAMIInputError`."""
    if not isinstance(logprobs, torch.Tensor):
        raise SAMIInputError(f"Expected a torch.Tensor of log-probs, got {type(logprobs).__name__}.")
    if logprobs.dim() == 2:
        logprobs = logprobs.unsqueeze(0)
    if logprobs.dim() != 3 or logprobs.shape[-1] != logprobs.shape[-2]:
        raise SAMIInputError(
            f"SAMI needs a square C×C log-prob matrix per query (rows = constitutions, columns = responses), "
            f"shape [C, C] or [B, C, C]; got shape {tuple(logprobs.shape)}. Give one response per constitution."
        )
    if logprobs.shape[-1] < 2:
        raise SAMIInputError(
            f"SAMI contrasts constitutions, so it needs C >= 2 constitutions per query; got C = {logprobs.shape[-1]}."
        )
    return logprobs


def sami_loss(logprobs: torch.Tensor) -> SAMILossOutput:
    """Symmetric InfoNCE over a [C, C] or [B, C, C] matrix ``L[b, i, j] = log π(y_j | x_b, c_i)``.

    Any C >= 2. Returns the mean over queries of the loss, its row and column terms, the MI lower bound
    ``log C − loss`` and the diagonal accuracies (fraction of rows / columns whose maximum is on the
    diagonal), plus the per-query loss and bound.
    """
    logprobs = check_logprob_matrix(logprobs)
    n_queries, n_const, _ = logprobs.shape
    diag = torch.diagonal(logprobs, dim1=-2, dim2=-1)  # [B, C]
    # Row i: softmax over responses j (dim -1). Column j: softmax over constitutions i (dim -2).
    row_terms = diag - torch.logsumexp(logprobs, dim=-1)
    col_terms = diag - torch.logsumexp(logprobs, dim=-2)
    loss_row_q = -row_terms.mean(dim=-1)
    loss_col_q = -col_terms.mean(dim=-1)
    loss_q = 0.5 * (loss_row_q + loss_col_q)
    target = torch.arange(n_const, device=logprobs.device)
    with torch.no_grad():
        acc_row = (logprobs.argmax(dim=-1) == target).float().mean()
        acc_col = (logprobs.argmax(dim=-2) == target).float().mean()
    mi_q = math.log(n_const) - loss_q
    return SAMILossOutput(
        loss=loss_q.mean(),
        loss_row=loss_row_q.mean(),
        loss_col=loss_col_q.mean(),
        mi_bound=mi_q.mean(),
        accuracy_row=acc_row,
        accuracy_col=acc_col,
        loss_per_query=loss_q,
        mi_bound_per_query=mi_q,
    )


def log_mean_mi(logprobs: torch.Tensor) -> torch.Tensor:
    """The MI estimate of the paper's research code, per query: mean_j [L[j,j] − mean_i L[i,j]].

    A log-*mean* (not InfoNCE's log-mean-exp) over constitutions, computed on summed log-probs in the
    reference evaluation. Returned for comparison with the paper's reported values; shape [B].
    """
    logprobs = check_logprob_matrix(logprobs)
    diag = torch.diagonal(logprobs, dim1=-2, dim2=-1)
    return (diag - logprobs.mean(dim=-2)).mean(dim=-1)


def reduce_token_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Sum (paper) or mean (released code) of ``token_logprobs`` over positions where ``mask`` is true.

    Works on any shape whose last dimension is tokens. A sequence with no completion token raises
    :class:`SAMIInputError` for ``mean`` (its mean is undefined); filter empty responses before training.
    """
    if reduction not in REDUCTIONS:
        raise SAMIInputError(f"Unknown reduction {reduction!r}; allowed: {', '.join(REDUCTIONS)}.")
    mask = mask.to(token_logprobs.dtype)
    total = (token_logprobs * mask).sum(dim=-1)
    if reduction == "sum":
        return total
    count = mask.sum(dim=-1)
    if (count == 0).any():
        raise SAMIInputError(
            "A response has no completion tokens, so its mean log-prob is undefined. Drop empty responses "
            "(sampling filters do this by default) or use reduction='sum'."
        )
    return total / count


def completion_logprob_matrix(
    logits: torch.Tensor,
    labels: torch.Tensor,
    completion_mask: torch.Tensor,
    n_constitutions: int,
    reduction: str = "mean",
) -> torch.Tensor:
    """[B·C·C, T, V] logits of the straightforward layout → [B, C, C] log-prob matrix.

    ``labels[n, t]`` is the token predicted by ``logits[n, t]`` (already shifted); ``completion_mask[n, t]``
    marks the response tokens (and EOS when it is trained). Rows are ordered (query, constitution i,
    response j), as :class:`~cmikit.sami.trainer.SAMIDataCollator` emits them with ``layout="padded"``.
    """
    token_lp = token_logprobs(logits, labels)
    per_seq = reduce_token_logprobs(token_lp, completion_mask, reduction)
    c2 = n_constitutions * n_constitutions
    if per_seq.numel() % c2:
        raise SAMIInputError(f"{per_seq.numel()} sequences cannot be viewed as [B, {n_constitutions}, {n_constitutions}].")
    return per_seq.view(-1, n_constitutions, n_constitutions)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., labels]`` per position, returned in fp32 (negative labels read as 0).

    TRL's ``selective_log_softmax`` does the work: fp32 logits exactly (gather minus a row-by-row logsumexp);
    bf16 / fp16 logits row by row in their own dtype (a log-softmax of one sequence at a time), never an fp32
    copy of the whole [N, T, V] tensor; on a CUDA device with triton, its fused kernel. The [N, T] result is
    then cast to fp32 so the reduction over tokens and the C×C matrix are fp32.
    """
    from trl.trainer.utils import selective_log_softmax

    return selective_log_softmax(logits, labels.clamp_min(0)).float()
