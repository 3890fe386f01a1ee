"""Held-out evaluation of a SAMI iterate: the MI lower bound (paper Sec. 4, "conditional MI" figures).

For each held-out query, the iterate samples one response per constitution (through a harness backend),
then the same model scores every response under every constitution, giving the C×C matrix of
:mod:`cmikit.sami.loss`. Per query we record

* ``mi_bound``: ``log C − loss`` with the training objective's reduction (InfoNCE bound, mean per-token
  log-probs by default);
* ``mi_bound_sum``: the same bound on summed log-probs (the paper's Eq. 2 form);
* ``log_mean_mi``: the research code's estimate (log-mean over constitutions, summed log-probs);
* ``accuracy``: whether each constitution's own response is its most likely one.

Scoring reuses the trainer's collator and :func:`~cmikit.sami.trainer.logprob_matrix`, so the number is exactly the
quantity training maximises. Runs through the evaluation harness (JSONL records, resume, bootstrap
intervals in ``summary.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cmikit.sami.loss import log_mean_mi, sami_loss
from cmikit.sami.prompts import STOP_STRINGS
from cmikit.sami.sampling import ResponseFilter, finished_flags, item_prompts, process_index
from cmikit.sami.trainer import SAMIDataCollator, logprob_matrix


@torch.no_grad()
def score_items(model: Any, tokenizer: Any, items: Sequence[dict[str, Any]], task: str, fmt: str,
                mask_eos: bool = False, max_completion_length: int | None = None) -> dict[str, torch.Tensor]:
    """C×C log-prob matrices (mean and sum reductions) for items that carry ``responses``."""
    collator = SAMIDataCollator(tokenizer, layout="shared_prompt", mask_eos=mask_eos,
                                max_completion_length=max_completion_length)
    rows = [{"prompts": item_prompts(it, task, fmt), "responses": it["responses"], "complete": it.get("complete")}
            for it in items]
    batch = collator(rows)
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    was_training = model.training
    model.eval()
    try:
        total, lengths = logprob_matrix(model, batch, reduction="sum")
    finally:
        model.train(was_training)
    mean = total / lengths[:, None, :].clamp_min(1)
    return {"mean": mean.float().cpu(), "sum": total.float().cpu(), "lengths": lengths.cpu()}


def evaluate_mi(backend: Any, items: Sequence[dict[str, Any]], out_dir: str | Path, task: str = "dialogue",
                fmt: str = "plain", sampling: Any = None, reduction: str = "mean", mask_eos: bool = False,
                batch_size: int = 4, progress: bool = True) -> dict[str, Any]:
    """Sample with ``backend`` and score with its model; returns the harness summary (means + intervals).

    ``backend`` must be a :class:`~cmikit.harness.backends.TransformersBackend` (its model is used for scoring).
    Empty responses get a one-character placeholder so every query keeps its C×C matrix.
    """
    from cmikit.harness.backends import SamplingParams
    from cmikit.harness.evaluation import Task, run_task

    sampling = sampling or SamplingParams(max_new_tokens=350, temperature=0.0)
    if fmt == "plain" and not sampling.stop:
        sampling.stop = list(STOP_STRINGS[task])

    def run_batch(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        prompts = [p for it in batch for p in item_prompts(it, task, fmt)]
        texts = backend.generate(prompts, sampling)
        k, scored = 0, []
        for it in batch:
            n = len(it["statements"])
            responses = [(t.rstrip() or " .") for t in texts[k : k + n]]
            k += n
            scored.append({**it, "responses": responses,
                           "complete": finished_flags(backend.tokenizer, responses, sampling.max_new_tokens)})
        mats = score_items(backend.model, backend.tokenizer, scored, task, fmt, mask_eos=mask_eos)
        main = mats[reduction]
        per = sami_loss(main)
        per_sum = sami_loss(mats["sum"])
        lmm = log_mean_mi(mats["sum"])
        records = []
        for b, it in enumerate(scored):
            acc = float((main[b].argmax(-1) == torch.arange(main.shape[-1])).float().mean())
            records.append({
                "id": it["id"], "query": it["query"], "labels": it["labels"], "responses": it["responses"],
                "process": process_index(),
                "logprob_matrix": main[b].tolist(), "response_tokens": mats["lengths"][b].tolist(),
                "metrics": {"mi_bound": float(per.mi_bound_per_query[b]), "loss": float(per.loss_per_query[b]),
                            "mi_bound_sum": float(per_sum.mi_bound_per_query[b]), "log_mean_mi": float(lmm[b]),
                            "accuracy": acc,
                            "response_tokens_positive": float(mats["lengths"][b][0])},
            })
        return records

    return run_task(Task("sami-mi", list(items), run_batch), out_dir, batch_size=batch_size, progress=progress)


__all__ = ["ResponseFilter", "evaluate_mi", "score_items"]
