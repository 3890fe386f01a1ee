"""The vLLM implementation of :class:`~cmikit.harness.backends.base.LMBackend` (extra ``cmikit[vllm]``, GPU).

vLLM is imported lazily, only when a :class:`VLLMBackend` is built without an engine, so the toolkit
imports and tests without it. The mapping onto vLLM's API:

* ``generate`` -> ``LLM.generate`` with ``SamplingParams(temperature, top_p, top_k, max_tokens, stop, seed)``.
* ``sequence_logprobs`` -> one ``LLM.generate`` over prompt+completion token ids with ``max_tokens=1`` and
  ``prompt_logprobs=0``: the log-probability vLLM reports for each actual prompt token; the completion's
  positions are summed.
* ``next_token_logprobs`` -> ``max_tokens=1``, ``allowed_token_ids=candidates``, ``logprobs=k``; the
  returned candidate log-probs are renormalised over the candidates here (whether vLLM reports raw or
  processed log-probs, the result is the log-softmax over the k candidate logits).

The engine's pure-Python handling is tested with a fake engine; ``scripts/gpu_check.sh`` runs the real one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from cmikit.harness.backends.base import BackendError, LMBackend, Prompt, SamplingParams, truncate_at_stop


def _vllm():
    try:
        import vllm
    except ImportError as err:
        raise BackendError(
            "The vLLM backend needs the optional extra: pip install 'cmikit[vllm]' (Linux with a CUDA GPU). "
            "Use backend='transformers' on machines without one."
        ) from err
    return vllm


def _logprob_value(entry: Any) -> float:
    return float(entry.logprob if hasattr(entry, "logprob") else entry)


class VLLMBackend(LMBackend):
    """Query a model served in-process by vLLM.

    Args:
        model: a Hub id or local folder (ignored when ``engine`` is given).
        engine: an existing ``vllm.LLM`` (or a test double with the same methods).
        tokenizer: defaults to ``engine.get_tokenizer()``.
        engine_kwargs: passed to ``vllm.LLM`` (``tensor_parallel_size``, ``dtype``, ``gpu_memory_utilization``...).
    """

    def __init__(self, model: str | None = None, engine: Any = None, tokenizer: Any = None,
                 **engine_kwargs: Any) -> None:
        if engine is None:
            if model is None:
                raise BackendError("VLLMBackend needs a model reference or an engine.")
            vllm = _vllm()
            engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
            try:
                engine = vllm.LLM(model=model, **engine_kwargs)
            except TypeError:  # older vLLM without logprobs_mode
                engine_kwargs.pop("logprobs_mode", None)
                engine = vllm.LLM(model=model, **engine_kwargs)
        self.engine = engine
        self.tokenizer = tokenizer if tokenizer is not None else engine.get_tokenizer()

    def _params(self, **kwargs: Any):
        factory = getattr(self.engine, "sampling_params_factory", None)
        if factory is not None:  # test doubles supply their own
            return factory(**kwargs)
        return _vllm().SamplingParams(**kwargs)

    def _token_prompt(self, ids: list[int]) -> Any:
        return {"prompt_token_ids": ids}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams | None = None) -> list[str]:
        sampling = sampling or SamplingParams()
        params = self._params(
            temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k if sampling.top_k else -1,
            max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None, seed=sampling.seed,
            repetition_penalty=sampling.repetition_penalty,
        )
        requests = [self._token_prompt(self._encode(self.render(p))) for p in prompts]
        outputs = self.engine.generate(requests, params, use_tqdm=False)
        return [truncate_at_stop(out.outputs[0].text, sampling.stop) for out in outputs]

    def sequence_logprobs(self, prompts: Sequence[Prompt], completions: Sequence[str]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_pairs(prompts, completions)
        requests, spans = [], []
        for prompt, completion in zip(prompts, completions):
            p_ids, c_ids = self._encode(self.render(prompt)), self._encode(completion)
            if not p_ids:
                if self.tokenizer.bos_token_id is None:
                    raise BackendError("An empty prompt needs a BOS token to condition on; this tokenizer has none.")
                p_ids = [self.tokenizer.bos_token_id]
            requests.append(self._token_prompt(p_ids + c_ids))
            spans.append((len(p_ids), p_ids + c_ids))
        sums = torch.zeros(len(requests), dtype=torch.float32)
        counts = torch.tensor([len(ids) - start for start, ids in spans], dtype=torch.long)
        if not requests:
            return sums, counts
        params = self._params(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.engine.generate(requests, params, use_tqdm=False)
        for i, (out, (start, ids)) in enumerate(zip(outputs, spans)):
            plp = out.prompt_logprobs
            total = 0.0
            for pos in range(start, len(ids)):
                entry = plp[pos]
                if entry is None or ids[pos] not in entry:
                    raise BackendError(f"vLLM returned no prompt log-prob for token {ids[pos]} at position {pos}.")
                total += _logprob_value(entry[ids[pos]])
            sums[i] = total
        return sums, counts

    def next_token_logprobs(self, prompts: Sequence[Prompt], candidate_token_ids) -> torch.Tensor:
        cand = self._candidate_matrix(len(prompts), candidate_token_ids)
        result = torch.empty(cand.shape, dtype=torch.float32)
        if len(prompts) == 0:
            return result
        # Requests sharing a candidate set share one SamplingParams (vLLM batches them together).
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in range(len(prompts)):
            groups.setdefault(tuple(cand[i].tolist()), []).append(i)
        for ids, rows in groups.items():
            params = self._params(max_tokens=1, temperature=0.0, logprobs=len(ids), allowed_token_ids=list(ids))
            requests = [self._token_prompt(self._encode(self.render(prompts[i]))) for i in rows]
            outputs = self.engine.generate(requests, params, use_tqdm=False)
            for i, out in zip(rows, outputs):
                top = out.outputs[0].logprobs[0]
                values = []
                for tid in ids:
                    if tid not in top:
                        raise BackendError(f"vLLM returned no log-prob for candidate token {tid}.")
                    values.append(_logprob_value(top[tid]))
                vec = torch.tensor(values, dtype=torch.float32)
                vec = torch.where(torch.isfinite(vec), vec, torch.full_like(vec, -math.inf))
                result[i] = torch.log_softmax(vec, dim=-1)
        return result
