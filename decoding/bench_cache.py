"""The ``"cache"`` part of ``dlm-decode bench``: KV cache speed and accuracy, every arm in the same run.

Speed: the embedded SmolLM2-135M made bidirectional (a real transformer of the size where a cache matters;
its tokens are meaningless, only the time counts), one random prompt, ``low_confidence`` with one token per
step, batch 1, decoded with ``cache="none"``, ``"prefix"`` and ``"dual"`` one after the other in one process.
The full setting is the issue's target (prompt 64, ``gen_length`` 256, ``block_length`` 32); ``--quick`` uses
prompt 32, ``gen_length`` 64, ``block_length`` 16.

Accuracy: the shipped tiny DLM on its held-out copy task with blocks of 8 (so caching applies), for
``low_confidence``, ``threshold`` and ``ccd``, each with the three cache modes; also the fraction of prompts
whose output is identical to no cache.

The report (``bench.json["cache"]``) holds, for each of ``"none"``, ``"prefix"``, ``"dual"``:
``tokens_per_second`` (generated tokens / s), ``seconds``, ``mean_nfe``, ``tokens_per_sequence`` (positions run
through the model), ``accuracy`` (tiny DLM, ``low_confidence``), ``accuracy_by_strategy``, and ``speedup``
(tokens/s over no cache's, same run); ``cpu_seconds`` / ``cpu_speedup``, the same from the process's CPU time
(robust to other jobs on a shared machine); plus the settings, the load average before and after, and the
targets (judged on ``speedup``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from cmikit.decoding.config import DiffusionGenerationConfig
from cmikit.decoding.loop import generate

MODES = ("none", "prefix", "dual")
ACCURACY_STRATEGIES = ("low_confidence", "threshold", "ccd")
SPEED_FULL = {"prompt_length": 64, "gen_length": 256, "block_length": 32}
SPEED_QUICK = {"prompt_length": 32, "gen_length": 64, "block_length": 16}
TARGETS = {"prefix_speedup": 1.5, "dual_speedup": 3.0, "accuracy_tolerance": 0.02}


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cache_speed(model_ref: str = "smollm2-135m-instruct", prompt_length: int = 64, gen_length: int = 256,
                block_length: int = 32, progress: bool = True, trust_remote_code: bool = False) -> dict[str, Any]:
    """Seconds and tokens/s of one batch-1 decode per cache mode (same prompt, same process)."""
    from tqdm.auto import tqdm

    from cmikit.decoding.adapters import adapt
    from cmikit.decoding.bench import spare_special_token_id
    from cmikit.harness.models import load_model

    model, tokenizer = load_model(model_ref, trust_remote_code=trust_remote_code)
    model.eval()
    adapter = adapt(model, tokenizer, bidirectional=True, mask_token_id=spare_special_token_id(tokenizer))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tokenizer.vocab_size, (1, prompt_length), generator=gen).to(adapter.device)
    config = DiffusionGenerationConfig(gen_length=gen_length, block_length=block_length, steps=gen_length,
                                       strategy="low_confidence")
    warm = config.update(gen_length=4, block_length=2, steps=4)
    for mode in MODES:  # warm-up: allocator, kernels, the cache code path
        generate(adapter, ids, warm.update(cache=mode))
    rows: dict[str, Any] = {}
    outputs = {}
    for mode in tqdm(MODES, desc="cache speed", disable=not progress):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = generate(adapter, ids, config.update(cache=mode))
        if adapter.device.type == "cuda":
            torch.cuda.synchronize(adapter.device)  # kernels run asynchronously: time the finished work
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        outputs[mode] = out.generated
        rows[mode] = {
            "seconds": round(seconds, 3),
            "tokens_per_second": round(gen_length / seconds, 3),
            "cpu_seconds": round(cpu_seconds, 3),
            "mean_nfe": float(out.nfe_per_row.float().mean()),
            "tokens_per_sequence": int(out.tokens_per_row[0]),
        }
    for mode in MODES:
        rows[mode]["speedup"] = round(rows[mode]["tokens_per_second"] / rows["none"]["tokens_per_second"], 3)
        # CPU time of this process: on a shared machine it is far less sensitive to other jobs than wall time.
        rows[mode]["cpu_speedup"] = round(rows["none"]["cpu_seconds"] / max(rows[mode]["cpu_seconds"], 1e-9), 3)
        rows[mode]["same_tokens_as_none"] = float((outputs[mode] == outputs["none"]).float().mean())
    setting = {"model": model_ref, "prompt_length": prompt_length, "gen_length": gen_length,
               "block_length": block_length, "steps": gen_length, "strategy": "low_confidence", "batch": 1,
               "device": str(adapter.device), "torch_threads": torch.get_num_threads()}
    return {"setting": setting, "modes": rows}


def cache_accuracy(model_path: str | None = None, n_problems: int = 256, block_length: int = 8,
                   batch_size: int = 128, strategies: tuple[str, ...] = ACCURACY_STRATEGIES,
                   progress: bool = True) -> dict[str, Any]:
    """Exact match, mean NFE and agreement with no cache on the tiny DLM, per strategy and cache mode."""
    from tqdm.auto import tqdm

    from cmikit.decoding.tiny_dlm import encode_problems, load_tiny_dlm

    model, tokenizer, task = load_tiny_dlm(model_path, progress=progress)
    problems = task.problems(n_problems, seed=12345)
    prompts, _ = encode_problems(problems, tokenizer, task.gen_length)
    results: dict[str, dict[str, Any]] = {}
    for strategy in tqdm(strategies, desc="cache accuracy", disable=not progress):
        config = DiffusionGenerationConfig(gen_length=task.gen_length, block_length=block_length,
                                           strategy=strategy)
        outs = {}
        for mode in MODES:
            generated, nfe = [], []
            for lo in range(0, len(problems), batch_size):
                out = generate(model, prompts[lo:lo + batch_size], config.update(cache=mode))
                generated.append(out.generated)
                nfe += out.nfe_per_row.tolist()
            outs[mode] = torch.cat(generated)
            correct = sum(task.is_correct(prompt, "".join(tokenizer.convert_ids_to_tokens(row.tolist())))
                          for (prompt, _), row in zip(problems, outs[mode]))
            results.setdefault(mode, {})[strategy] = {
                "accuracy": correct / len(problems),
                "mean_nfe": sum(nfe) / len(nfe),
                "agreement_with_none": float((outs[mode] == outs["none"]).all(-1).float().mean()),
            }
    setting = {"task": "copy-one-of-two (tiny DLM)", "n_problems": n_problems, "gen_length": task.gen_length,
               "block_length": block_length, "temperature": 0.0, "strategies": list(strategies)}
    return {"setting": setting, "modes": results}


def cache_report(quick: bool = False, model_ref: str = "smollm2-135m-instruct", model_path: str | None = None,
                 batch_size: int = 128, progress: bool = True, trust_remote_code: bool = False) -> dict[str, Any]:
    """The ``"cache"`` object of ``bench.json`` (see the module docstring)."""
    load_before = _load()
    speed = cache_speed(model_ref, progress=progress, trust_remote_code=trust_remote_code,
                        **(SPEED_QUICK if quick else SPEED_FULL))
    accuracy = cache_accuracy(model_path, n_problems=64 if quick else 256, batch_size=batch_size,
                              progress=progress)
    report: dict[str, Any] = {}
    for mode in MODES:
        by_strategy = accuracy["modes"][mode]
        report[mode] = {
            **speed["modes"][mode],
            "accuracy": by_strategy["low_confidence"]["accuracy"],
            "accuracy_by_strategy": by_strategy,
        }
    worst_gap = max(abs(report[m]["accuracy_by_strategy"][s]["accuracy"]
                        - report["none"]["accuracy_by_strategy"][s]["accuracy"])
                    for m in ("prefix", "dual") for s in accuracy["setting"]["strategies"])
    report["speed_setting"] = speed["setting"]
    report["accuracy_setting"] = accuracy["setting"]
    report["load_average"] = {"before": load_before, "after": _load()}
    report["targets"] = {
        **TARGETS,
        "applies": not quick,
        "prefix_met": report["prefix"]["speedup"] >= TARGETS["prefix_speedup"],
        "dual_met": report["dual"]["speedup"] >= TARGETS["dual_speedup"],
        "max_accuracy_gap": round(worst_gap, 4),
        "accuracy_met": worst_gap <= TARGETS["accuracy_tolerance"],
    }
    return report
