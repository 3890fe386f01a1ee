"""The ``"cache"`` part of ``dlm-decode bench``: KV cache speed and accuracy, every arm in the same run.

Speed: the embedded SmolLM2-135M made bidirectional (a real transformer of the size where a cache matters;
its tokens are meaningless, only the time counts), one random prompt, ``low_confidence`` with one token per
step, batch 1, decoded with ``cache="none"``, ``"prefix"`` and ``"dual"`` one after the other in one process.
The full setting is the issue's target (prompt 64, ``gen_length`` 256, ``block_length`` 32); ``--quick`` uses
prompt 32, ``gen_length`` 64, ``block_length`` 16.

Accuracy: every shipped tiny DLM on its held-out problems (copy task, blocks of 8; one-class-upper, blocks of
16; the block-diffusion copy model, its blocks of 8 and its exact cache), for ``low_confidence``, ``threshold``
and ``ccd``, each with every cache arm (:data:`ACCURACY_ARMS`: the default ``surprisal`` refresh policy and
Fast-dLLM's fixed ``block`` one by name); every row gives accuracy, mean NFE, mean positions run through the
model (``model_tokens``), their reduction against no cache, and the fraction of prompts whose output is
identical to no cache. The one-token-per-step baseline (no cache, one block) and the named best combination
(:data:`BEST_COMBINATION`) run on the same one-class-upper problems for the best-combination target.

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
#: Cache arms: ``mode`` alone runs the default refresh policy (``surprisal``); ``mode/policy`` names one.
SPEED_ARMS = ("none", "prefix", "dual", "prefix/block", "dual/block")
ACCURACY_ARMS = ("none", "prefix", "dual", "prefix/block", "dual/block", "dual/interval")
ACCURACY_STRATEGIES = ("low_confidence", "threshold", "ccd")
#: Every tiny task's cache setting: (task, block-diffusion model?, block_length, arms).
ACCURACY_TASKS = (
    ("copy-one-of-two", False, 8, ACCURACY_ARMS),
    ("one-class-upper", False, 16, ACCURACY_ARMS),
    ("copy-one-of-two", True, 8, ("none", "dual")),
)
SPEED_FULL = {"prompt_length": 64, "gen_length": 256, "block_length": 32}
SPEED_QUICK = {"prompt_length": 32, "gen_length": 64, "block_length": 16}
TARGETS = {"prefix_speedup": 1.5, "dual_speedup": 3.0, "dual_adaptive_speedup": 2.0, "accuracy_tolerance": 0.02,
           "positions_reduction": 2.0, "best_positions_reduction": 10.0}


def arm_fields(arm: str) -> dict[str, Any]:
    """Config fields of a cache arm name (``"none"``, ``"dual"``, ``"dual/block"``, ...)."""
    mode, _, policy = arm.partition("/")
    return {"cache": mode, **({"cache_policy": policy} if policy else {})}


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
    for mode in tqdm(SPEED_ARMS, desc="cache speed", disable=not progress):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = generate(adapter, ids, config.update(**arm_fields(mode)))
        if adapter.device.type == "cuda":
            torch.cuda.synchronize(adapter.device)  # kernels run asynchronously: time the finished work
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        outputs[mode] = out.generated
        rows[mode] = {
            "seconds": round(seconds, 3),
            "tokens_per_second": round(gen_length / seconds, 3),
            "cpu_seconds": round(cpu_seconds, 3),
            "mean_nfe": float(out.nfe_per_row.float().mean()),
            "model_tokens": int(out.tokens_per_row[0]),
            "tokens_per_sequence": int(out.tokens_per_row[0]),
            "refreshes": out.refreshes,
        }
    for mode in SPEED_ARMS:
        rows[mode]["speedup"] = round(rows[mode]["tokens_per_second"] / rows["none"]["tokens_per_second"], 3)
        # CPU time of this process: on a shared machine it is far less sensitive to other jobs than wall time.
        rows[mode]["cpu_speedup"] = round(rows["none"]["cpu_seconds"] / max(rows[mode]["cpu_seconds"], 1e-9), 3)
        rows[mode]["same_tokens_as_none"] = float((outputs[mode] == outputs["none"]).float().mean())
    setting = {"model": model_ref, "prompt_length": prompt_length, "gen_length": gen_length,
               "block_length": block_length, "steps": gen_length, "strategy": "low_confidence", "batch": 1,
               "device": str(adapter.device), "torch_threads": torch.get_num_threads()}
    return {"setting": setting, "modes": rows}


def cache_accuracy(model_path: str | None = None, n_problems: int = 256, batch_size: int = 128,
                   strategies: tuple[str, ...] = ACCURACY_STRATEGIES, tasks=ACCURACY_TASKS,
                   progress: bool = True) -> dict[str, Any]:
    """Per tiny task (the block-diffusion model included), strategy and cache arm: exact match, mean NFE, mean
    positions run through the model (``model_tokens``) and agreement with no cache, held-out problems, greedy.

    ``model_path`` replaces the first task's bidirectional checkpoint."""
    from tqdm.auto import tqdm

    from cmikit.decoding.tiny_dlm import encode_problems, load_tiny_dlm

    results: dict[str, Any] = {}
    jobs = [(t, s) for t in tasks for s in strategies]
    for index, ((task_name, bd, block_length, arms), strategy) in enumerate(
            tqdm(jobs, desc="cache accuracy", disable=not progress)):
        model, tokenizer, task = load_tiny_dlm(model_path if index == 0 else None, progress=progress,
                                               task=task_name, block_diffusion=bd)
        key = f"{task_name}{' (block diffusion)' if bd else ''}"
        problems = task.problems(n_problems, seed=12345)
        prompts, _ = encode_problems(problems, tokenizer, task.gen_length)
        config = DiffusionGenerationConfig(gen_length=task.gen_length, block_length=block_length, strategy=strategy)
        outs: dict[str, torch.Tensor] = {}
        for arm in arms:
            generated, nfe, positions = [], [], []
            for lo in range(0, len(problems), batch_size):
                out = generate(model, prompts[lo:lo + batch_size], config.update(**arm_fields(arm)))
                generated.append(out.generated)
                nfe += out.nfe_per_row.tolist()
                positions += out.tokens_per_row.tolist()
            outs[arm] = torch.cat(generated)
            correct = sum(task.is_correct(prompt, "".join(tokenizer.convert_ids_to_tokens(row.tolist())))
                          for (prompt, _), row in zip(problems, outs[arm]))
            results.setdefault(key, {"block_length": block_length, "arms": {}})["arms"].setdefault(arm, {})[
                strategy] = {
                "accuracy": correct / len(problems),
                "mean_nfe": sum(nfe) / len(nfe),
                "model_tokens": sum(positions) / len(positions),
                "agreement_with_none": float((outs[arm] == outs["none"]).all(-1).float().mean()),
            }
    for by_task in results.values():
        for by_strategy in by_task["arms"].values():
            for strategy, row in by_strategy.items():
                row["positions_reduction"] = round(
                    by_task["arms"]["none"][strategy]["model_tokens"] / row["model_tokens"], 3)
    setting = {"n_problems": n_problems, "temperature": 0.0, "strategies": list(strategies),
               "tasks": {f"{t}{' (block diffusion)' if bd else ''}": {"block_length": b, "arms": list(a)}
                         for t, bd, b, a in tasks}}
    return {"setting": setting, "tasks": results}


def _one_task_run(fields: dict[str, Any], model_path: str | None, n_problems: int, batch_size: int,
                  task_name: str) -> dict[str, Any]:
    """Accuracy, mean NFE and mean positions run of one config (``fields`` over the task's ``gen_length``)."""
    from cmikit.decoding.tiny_dlm import encode_problems, load_tiny_dlm

    model, tokenizer, task = load_tiny_dlm(model_path, progress=False, task=task_name)
    problems = task.problems(n_problems, seed=12345)
    prompts, _ = encode_problems(problems, tokenizer, task.gen_length)
    config = DiffusionGenerationConfig(gen_length=task.gen_length, **fields)
    correct, positions, nfe = 0, [], []
    for lo in range(0, len(problems), batch_size):
        out = generate(model, prompts[lo:lo + batch_size], config)
        positions += out.tokens_per_row.tolist()
        nfe += out.nfe_per_row.tolist()
        correct += sum(task.is_correct(p, "".join(tokenizer.convert_ids_to_tokens(row.tolist())))
                       for (p, _), row in zip(problems[lo:lo + batch_size], out.generated))
    return {"task": task_name, "config": dict(fields), "accuracy": correct / len(problems),
            "mean_nfe": sum(nfe) / len(nfe), "model_tokens": sum(positions) / len(positions)}


def one_token_per_step_baseline(model_path: str | None = None, n_problems: int = 256, batch_size: int = 128,
                                task_name: str = "one-class-upper") -> dict[str, Any]:
    """``low_confidence`` with one token per step and no cache (one block): the reference point of the
    best-combination target."""
    return _one_task_run({"strategy": "low_confidence"}, model_path, n_problems, batch_size, task_name)


#: The best combination found on one-class-upper (issue 18; sweep over strategy, threshold, steps, block length,
#: cache, policy, scope and budget on the 128 bench problems, docs/decoding.md): Fast-dLLM threshold at tau 0.8,
#: the dual cache with its default refresh (``surprisal`` 0.4, left scope), blocks of 32, gen_length 64.
BEST_COMBINATION = {"strategy": "threshold", "threshold": 0.8, "block_length": 32, "cache": "dual"}


def best_combination_run(model_path: str | None = None, n_problems: int = 256, batch_size: int = 128,
                         task_name: str = "one-class-upper") -> dict[str, Any]:
    """:data:`BEST_COMBINATION` on the same problems as the baseline: the named row of the best-combination
    target."""
    return _one_task_run(BEST_COMBINATION, model_path, n_problems, batch_size, task_name)


def cache_report(quick: bool = False, model_ref: str = "smollm2-135m-instruct", model_path: str | None = None,
                 batch_size: int = 128, progress: bool = True, trust_remote_code: bool = False) -> dict[str, Any]:
    """The ``"cache"`` object of ``bench.json`` (see the module docstring)."""
    load_before = _load()
    speed = cache_speed(model_ref, progress=progress, trust_remote_code=trust_remote_code,
                        **(SPEED_QUICK if quick else SPEED_FULL))
    n_problems = 32 if quick else 128
    accuracy = cache_accuracy(model_path, n_problems=n_problems, batch_size=batch_size, progress=progress)
    report: dict[str, Any] = {}
    for arm in SPEED_ARMS:
        report[arm] = dict(speed["modes"][arm])
    for arm in ACCURACY_ARMS:  # the copy task's low_confidence accuracy, as before, and every task below
        copy = accuracy["tasks"]["copy-one-of-two"]["arms"].get(arm)
        if copy is not None:
            report.setdefault(arm, {})["accuracy"] = copy.get("low_confidence", {}).get("accuracy")
            report[arm]["accuracy_by_strategy"] = copy
    report["accuracy_by_task"] = accuracy["tasks"]
    report["speed_setting"] = speed["setting"]
    report["accuracy_setting"] = accuracy["setting"]
    report["load_average"] = {"before": load_before, "after": _load()}
    report["targets"] = cache_targets(report, accuracy, one_token_per_step_baseline(
        None, n_problems, batch_size), quick, best_combination_run(None, n_problems, batch_size))
    return report


def cache_targets(report: dict[str, Any], accuracy: dict[str, Any], baseline: dict[str, Any],
                  quick: bool, named_best: dict[str, Any] | None = None) -> dict[str, Any]:
    """The issue-18 targets, judged on this run's numbers (``named_best``: :func:`best_combination_run`'s row,
    one more candidate for the best combination, arm ``"best"``)."""
    upper = accuracy["tasks"]["one-class-upper"]["arms"]
    gaps = {s: round(upper["none"][s]["accuracy"] - upper["dual"][s]["accuracy"], 4) for s in upper["dual"]}
    reductions = {s: upper["dual"][s]["positions_reduction"] for s in upper["dual"]}
    candidates = [(arm, s, row) for arm, by in upper.items() for s, row in by.items()]
    if named_best is not None:
        candidates.append(("best", named_best["config"]["strategy"], named_best))
    bd = accuracy["tasks"].get("copy-one-of-two (block diffusion)", {}).get("arms", {})
    ok = [c for c in candidates if c[2]["accuracy"] >= baseline["accuracy"]]
    best = min(ok, key=lambda c: c[2]["model_tokens"]) if ok else None
    best_row = None if best is None else {
        "arm": best[0], "strategy": best[1], "accuracy": best[2]["accuracy"],
        "model_tokens": best[2]["model_tokens"], "config": best[2].get("config"),
        "reduction_vs_one_token_per_step": round(baseline["model_tokens"] / best[2]["model_tokens"], 3)}
    bd_identical = {s: row["agreement_with_none"] for s, row in bd.get("dual", {}).items()}
    return {
        **TARGETS,
        "applies": not quick,
        "prefix_met": report["prefix/block"]["speedup"] >= TARGETS["prefix_speedup"],
        "dual_met": report["dual/block"]["speedup"] >= TARGETS["dual_speedup"],
        "dual_adaptive_met": report["dual"]["speedup"] >= TARGETS["dual_adaptive_speedup"],
        "one_class_upper_dual_accuracy_gap": gaps,
        "one_class_upper_dual_positions_reduction": reductions,
        "accuracy_met": all(g <= TARGETS["accuracy_tolerance"] for g in gaps.values()),
        "positions_met": all(r >= TARGETS["positions_reduction"] for r in reductions.values()),
        "one_token_per_step_baseline": baseline,
        "named_best_combination": named_best,
        "best_combination": best_row,
        "best_met": bool(best_row and best_row["reduction_vs_one_token_per_step"] >= TARGETS[
            "best_positions_reduction"]),
        "block_diffusion_cached_identical": bd_identical,
        "block_diffusion_met": bool(bd_identical) and all(v == 1.0 for v in bd_identical.values()),
    }
