"""``dlm-decode bench``: every strategy over a grid of budgets on the tiny trained DLMs, plus loop overhead.

Part 1 (accuracy vs NFE): the tiny LLaDA-style models of :mod:`cmikit.decoding.tiny_dlm` decode held-out problems
of their task (:mod:`cmikit.decoding.tiny_task`: ``copy-one-of-two``, gen_length 24, and ``one-class-upper``,
gen_length 64, whose confident but coupled positions punish committing dependent tokens together) with
each strategy and setting; recorded per setting: exact-match accuracy, mean NFE per sequence
(``nfe_per_row``), mean positions run through the model per sequence (``model_tokens``), wall time and
sequences/s. The baseline is LLaDA ``low_confidence`` with one token per
step (steps = gen_length); ``targets`` gives, per adaptive strategy, the fewest forward passes at an
accuracy at least the baseline's.

Part 2 (overhead): on a ~135M-parameter model made bidirectional (the embedded SmolLM2, timing only), time
per step minus model forward time, at batch 1 and batch 8, and sequences/s at both.

Part 1 runs greedy (temperature 0) and sampled (temperature 1, seeded) decoding: at temperature 0 a
model with a slight global preference resolves the task's coin flips consistently even in parallel;
sampling is where committing dependent tokens together produces chimeras.

Writes ``bench.json`` (``accuracy_vs_nfe[task][temperature]``), ``bench.png`` / ``bench_t1.png`` (copy task,
temperatures 0 / 1) and ``bench_one-class-upper.png`` / ``bench_one-class-upper_t1.png`` into ``--out``.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from cmikit.decoding.adapters import DiffusionModelAdapter, adapt
from cmikit.decoding.config import DiffusionGenerationConfig
from cmikit.decoding.loop import generate
from cmikit.harness.errors import ConfigError

BASELINE = ("low_confidence", "steps=N")


def budget_grid(n: int, quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """``(strategy, label, config fields)`` for every setting; ``n`` is the generation length."""
    if quick:
        return [
            ("low_confidence", "steps=N", {"steps": n}),
            ("low_confidence", "steps=N/4", {"steps": n // 4}),
            ("entropy", "steps=N", {"steps": n}),
            ("threshold", "tau=0.9", {"threshold": 0.9}),
            ("entropy_bound", "gamma=0.1", {"entropy_bound": 0.1}),
            ("ccd", "fixed (seek_mode=False)", {"seek_mode": False}),
            ("ccd", "DS expand_ratio=4", {"seek_mode": True, "expand_ratio": 4.0}),
            ("ccd_marginal", "DS eps=0.1", {"ccd_entropy_threshold": 0.1}),
        ]
    grid: list[tuple[str, str, dict[str, Any]]] = []
    for div in (1, 2, 3, 4, 6, 8):
        grid.append(("low_confidence", "steps=N" if div == 1 else f"steps=N/{div}", {"steps": max(1, n // div)}))
    for div in (1, 2):
        grid.append(("random", "steps=N" if div == 1 else f"steps=N/{div}", {"steps": n // div}))
    grid.append(("origin", "steps=N", {"steps": n, "seed": 0}))
    for alg in ("maskgit_plus", "topk_margin", "entropy"):
        for div in (1, 2, 4):
            grid.append((alg, "steps=N" if div == 1 else f"steps=N/{div}", {"steps": n // div}))
    grid.append(("entropy", "steps=N corrected schedule", {"steps": n, "corrected_schedule": True}))
    for tau in (0.99, 0.95, 0.9, 0.8, 0.7, 0.5):
        grid.append(("threshold", f"tau={tau}", {"threshold": tau}))
    for gamma in (0.001, 0.01, 0.1, 0.3, 1.0):
        grid.append(("entropy_bound", f"gamma={gamma}", {"entropy_bound": gamma}))
    grid.append(("ccd", "fixed (seek_mode=False)", {"seek_mode": False}))
    for ratio in (1.0, 2.0, 4.0, 8.0):
        grid.append(("ccd", f"DS expand_ratio={ratio:g}", {"seek_mode": True, "expand_ratio": ratio}))
    grid.append(("ccd", "DS expand_ratio=4 steps=N/2", {"seek_mode": True, "expand_ratio": 4.0, "steps": n // 2}))
    grid.append(("ccd_marginal", "fixed budget", {"ccd_entropy_threshold": None}))
    for eps in (0.01, 0.05, 0.1, 0.3, 0.6):
        grid.append(("ccd_marginal", f"DS eps={eps}", {"ccd_entropy_threshold": eps}))
    for eps in (0.3, 0.6):
        grid.append(("ccd_marginal", f"DS eps={eps} V=8", {"ccd_entropy_threshold": eps, "ccd_top_v": 8}))
    for eps in (0.1, 0.3):
        grid.append(("ccd_marginal", f"DS eps={eps} V=8 tokens=current",
                     {"ccd_entropy_threshold": eps, "ccd_top_v": 8, "ccd_tokens_from": "current"}))
    return grid


def dependency_grid(n: int, quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """The grid for the long ``one-class-upper`` task (``n`` = 64): every strategy, fewer one-token-per-step
    settings than :func:`budget_grid` (each costs ``n`` passes), wider adaptive budgets."""
    if quick:
        return [
            ("low_confidence", "steps=N", {"steps": n}),
            ("low_confidence", "steps=N/4", {"steps": n // 4}),
            ("threshold", "tau=0.9", {"threshold": 0.9}),
            ("threshold", "tau=0.6", {"threshold": 0.6}),
            ("entropy_bound", "gamma=0.1", {"entropy_bound": 0.1}),
            ("ccd", "DS expand_ratio=8", {"seek_mode": True, "expand_ratio": 8.0}),
            ("ccd_marginal", "DS eps=0.1 V=8", {"ccd_entropy_threshold": 0.1, "ccd_top_v": 8}),
        ]
    grid: list[tuple[str, str, dict[str, Any]]] = []
    for div in (1, 2, 4, 8):
        grid.append(("low_confidence", "steps=N" if div == 1 else f"steps=N/{div}", {"steps": n // div}))
    grid.append(("random", "steps=N", {"steps": n}))
    grid.append(("origin", "steps=N", {"steps": n, "seed": 0}))
    grid.append(("maskgit_plus", "steps=N/4", {"steps": n // 4}))
    grid.append(("topk_margin", "steps=N/4", {"steps": n // 4}))
    for div in (1, 4):
        grid.append(("entropy", "steps=N" if div == 1 else f"steps=N/{div}", {"steps": n // div}))
    for tau in (0.99, 0.95, 0.9, 0.8, 0.7, 0.6):
        grid.append(("threshold", f"tau={tau}", {"threshold": tau}))
    for gamma in (0.01, 0.1, 0.3, 1.0):
        grid.append(("entropy_bound", f"gamma={gamma}", {"entropy_bound": gamma}))
    grid.append(("ccd", "fixed (seek_mode=False)", {"seek_mode": False}))
    for ratio in (4.0, 8.0, 16.0):
        grid.append(("ccd", f"DS expand_ratio={ratio:g}", {"seek_mode": True, "expand_ratio": ratio}))
    grid.append(("ccd_marginal", "fixed budget", {"ccd_entropy_threshold": None}))
    grid.append(("ccd_marginal", "DS eps=0.1", {"ccd_entropy_threshold": 0.1}))
    for v in (8, 16, 32):
        grid.append(("ccd_marginal", f"DS eps=0.1 V={v}", {"ccd_entropy_threshold": 0.1, "ccd_top_v": v}))
    grid.append(("ccd_marginal", "DS eps=0.3 V=16", {"ccd_entropy_threshold": 0.3, "ccd_top_v": 16}))
    grid.append(("ccd_marginal", "DS eps=0.1 V=16 tokens=current",
                 {"ccd_entropy_threshold": 0.1, "ccd_top_v": 16, "ccd_tokens_from": "current"}))
    return grid


#: The grid of each task.
GRIDS = {"copy-one-of-two": budget_grid, "one-class-upper": dependency_grid}
#: Default number of held-out problems per task (full, quick): the long task costs ~3x per pass.
N_PROBLEMS = {"copy-one-of-two": (256, 64), "one-class-upper": (128, 32)}


def evaluate_setting(model, tokenizer, task, problems, config: DiffusionGenerationConfig,
                     batch_size: int) -> dict[str, Any]:
    """Exact match, mean NFE and positions run (``model_tokens``) per sequence, wall time and sequences/s."""
    from cmikit.decoding.tiny_dlm import encode_problems

    prompts, _ = encode_problems(problems, tokenizer, task.gen_length)
    correct, nfe_rows, batch_nfe, positions = 0, [], 0, []
    start = time.perf_counter()
    for lo in range(0, len(problems), batch_size):
        out = generate(model, prompts[lo:lo + batch_size], config)
        batch_nfe += out.nfe
        nfe_rows += out.nfe_per_row.tolist()
        positions += out.tokens_per_row.tolist()
        for row, (prompt, _) in enumerate(problems[lo:lo + batch_size]):
            text = "".join(tokenizer.convert_ids_to_tokens(out.generated[row].tolist()))
            correct += task.is_correct(prompt, text)
    seconds = time.perf_counter() - start
    return {
        "accuracy": correct / len(problems),
        "mean_nfe": sum(nfe_rows) / len(nfe_rows),
        # Positions run through the model per sequence: the cost measure shared with the cache part.
        "model_tokens": sum(positions) / len(positions),
        "batch_nfe_total": batch_nfe,
        "wall_seconds": round(seconds, 3),
        "sequences_per_second": round(len(problems) / seconds, 2),
        "n": len(problems),
    }


def accuracy_vs_nfe(model_path: str | None, quick: bool, batch_size: int = 128,
                    n_problems: int | None = None, progress: bool = True, temperature: float = 0.0,
                    seed: int = 0, task_name: str = "copy-one-of-two") -> dict[str, Any]:
    from tqdm.auto import tqdm

    from cmikit.decoding.tiny_dlm import load_tiny_dlm
    from cmikit.decoding.tiny_task import task_name as name_of

    model, tokenizer, task = load_tiny_dlm(model_path, progress=progress, task=task_name)
    n_problems = n_problems or N_PROBLEMS[task_name][1 if quick else 0]
    problems = task.problems(n_problems, seed=12345)  # the held-out split the trainer excluded
    n = task.gen_length
    results = []
    grid = GRIDS[name_of(task)](n, quick)
    for strategy, label, fields_ in tqdm(grid, desc=f"bench {task_name} T={temperature:g}", disable=not progress):
        config = DiffusionGenerationConfig(gen_length=n, strategy=strategy, temperature=temperature,
                                           **{"seed": seed, **fields_})
        row = {"strategy": strategy, "setting": label, "config": {k: v for k, v in fields_.items()}}
        row.update(evaluate_setting(model, tokenizer, task, problems, config, batch_size))
        results.append(row)
    return {"task": {"name": name_of(task), **vars(task)}, "n_problems": n_problems, "gen_length": n,
            "temperature": temperature, "seed": seed,
            "results": results, "targets": ccd_target(results, n)}


def ccd_target(results: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """CCD-DS vs the one-token-per-step confidence baseline: best NFE reduction at >= baseline accuracy; the
    same for Fast-dLLM ``threshold`` and EB-Sampler (``entropy_bound``) under ``"others"``."""
    base = next(r for r in results if (r["strategy"], r["setting"]) == BASELINE)
    summary: dict[str, Any] = {"baseline": {k: base[k] for k in ("accuracy", "mean_nfe")}}
    others = {}
    for name in ("threshold", "entropy_bound"):
        ok = [r for r in results if r["strategy"] == name and r["accuracy"] >= base["accuracy"]]
        best = min(ok, key=lambda r: r["mean_nfe"]) if ok else None
        others[name] = None if best is None else {
            "setting": best["setting"], "accuracy": best["accuracy"], "mean_nfe": best["mean_nfe"],
            "nfe_reduction": round(base["mean_nfe"] / best["mean_nfe"], 3)}
    summary["others_at_equal_or_better_accuracy"] = others
    for name in ("ccd", "ccd_marginal"):
        ds = [r for r in results if r["strategy"] == name and "DS" in r["setting"]]
        ok = [r for r in ds if r["accuracy"] >= base["accuracy"]]
        best = min(ok, key=lambda r: r["mean_nfe"]) if ok else None
        summary[name] = {
            "best_at_equal_or_better_accuracy": None if best is None else {
                "setting": best["setting"], "accuracy": best["accuracy"], "mean_nfe": best["mean_nfe"],
                "nfe_reduction": round(base["mean_nfe"] / best["mean_nfe"], 3)},
            "all_ds": [{k: r[k] for k in ("setting", "accuracy", "mean_nfe")} for r in ds],
        }
        summary[name]["meets_3x"] = bool(best and base["mean_nfe"] / best["mean_nfe"] >= 3)
    return summary


# -------------------------------------------------------------------------------------------------------------
# Overhead
# -------------------------------------------------------------------------------------------------------------
@dataclass
class TimedAdapter(DiffusionModelAdapter):
    """An adapter that accumulates the wall time of its forward passes (CPU: synchronous; CUDA: synchronised)."""

    forward_seconds: float = 0.0

    def logits(self, input_ids, attention_mask):
        sync = torch.cuda.synchronize if input_ids.is_cuda else (lambda: None)
        sync()
        start = time.perf_counter()
        out = super().logits(input_ids, attention_mask)
        sync()
        self.forward_seconds += time.perf_counter() - start
        return out


def spare_special_token_id(tokenizer) -> int:
    """A mask id for a model that has none: the tokenizer's mask token, else its last added special token
    that is not BOS / EOS / PAD / UNK (read from the tokenizer, never hard-coded)."""
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return tokenizer.mask_token_id
    reserved = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    specials = [i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special and i not in reserved]
    if not specials:
        raise ValueError("the tokenizer has no spare special token to use as [MASK]; pass one explicitly")
    return max(specials)


def measure_overhead(model_ref: str = "smollm2-135m-instruct", batch_sizes: tuple[int, ...] = (1, 8),
                     prompt_length: int = 16, gen_length: int = 32,
                     strategies: tuple[str, ...] = ("low_confidence", "ccd", "ccd_marginal", "threshold"),
                     repeats: int = 2, progress: bool = True, trust_remote_code: bool = False) -> dict[str, Any]:
    """Loop + strategy time per step minus forward time, on a ~135M model made bidirectional (timing only)."""
    from tqdm.auto import tqdm

    from cmikit.harness.models import load_model

    model, tokenizer = load_model(model_ref, trust_remote_code=trust_remote_code)
    model.eval()
    base = adapt(model, tokenizer, bidirectional=True, mask_token_id=spare_special_token_id(tokenizer))
    adapter = TimedAdapter(**{f.name: getattr(base, f.name) for f in fields(base)})
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    rows = []
    jobs = [(s, b) for s in strategies for b in batch_sizes]
    for strategy, batch in tqdm(jobs, desc="overhead", disable=not progress):
        ids = torch.randint(0, tokenizer.vocab_size, (batch, prompt_length), generator=gen).to(adapter.device)
        config = DiffusionGenerationConfig(gen_length=gen_length, strategy=strategy, threshold=0.9,
                                           ccd_entropy_threshold=0.1)
        generate(adapter, ids, config.update(gen_length=8))  # warm-up
        best = None
        for _ in range(repeats):
            adapter.forward_seconds = 0.0
            start = time.perf_counter()
            out = generate(adapter, ids, config)
            total = time.perf_counter() - start
            if best is None or total < best[0]:
                best = (total, adapter.forward_seconds, out.nfe)
        total, forward, nfe = best
        rows.append({
            "strategy": strategy, "batch": batch, "nfe": nfe, "total_seconds": round(total, 4),
            "forward_seconds": round(forward, 4),
            "overhead_ms_per_step": round(1000 * (total - forward) / nfe, 3),
            "forward_ms_per_step": round(1000 * forward / nfe, 3),
            "overhead_fraction_of_forward": round((total - forward) / forward, 4),
            "sequences_per_second": round(batch / total, 3),
        })
    speedups = {}
    for strategy in strategies:
        by_batch = {r["batch"]: r for r in rows if r["strategy"] == strategy}
        if 1 in by_batch and 8 in by_batch:
            speedups[strategy] = round(by_batch[8]["sequences_per_second"] / by_batch[1]["sequences_per_second"], 3)
    return {
        "model": model_ref, "parameters": n_params, "device": str(adapter.device),
        "torch_threads": torch.get_num_threads(), "prompt_length": prompt_length, "gen_length": gen_length,
        "rows": rows, "batch8_over_batch1_sequences_per_second": speedups,
        "max_overhead_fraction": max(r["overhead_fraction_of_forward"] for r in rows),
    }


# -------------------------------------------------------------------------------------------------------------
def plot(results: list[dict[str, Any]], path: Path, title: str = "", task: str = "copy-one-of-two") -> None:
    from cmikit.harness.evaluation import plot_curves

    series = {}
    for strategy in dict.fromkeys(r["strategy"] for r in results):
        rows = sorted((r for r in results if r["strategy"] == strategy), key=lambda r: r["mean_nfe"])
        series[strategy] = {"x": [r["mean_nfe"] for r in rows], "y": [r["accuracy"] for r in rows]}
    base = next((r for r in results if (r["strategy"], r["setting"]) == BASELINE), None)
    plot_curves(series, path, "mean forward passes per sequence (NFE)", "exact-match accuracy",
                title=f"Tiny DLM, {task} task: accuracy vs NFE {title}".strip(),
                hlines={"baseline accuracy": base["accuracy"]} if base else None,
                vlines={"baseline NFE / 3": base["mean_nfe"] / 3} if base else None)


def run_bench(out_dir: str | Path = "bench_out", quick: bool = False, model_path: str | None = None,
              overhead_model: str | None = "smollm2-135m-instruct", batch_size: int = 128,
              n_problems: int | None = None, threads: int | None = None,
              temperatures: tuple[float, ...] = (0.0, 1.0),
              tasks: tuple[str, ...] = ("copy-one-of-two", "one-class-upper"),
              parts: tuple[str, ...] = ("accuracy", "overhead", "cache"),
              trust_remote_code: bool = False) -> dict[str, Any]:
    """Run the ``parts`` (accuracy vs NFE per task, overhead, KV cache: :mod:`cmikit.decoding.bench_cache`) and write
    ``bench.json`` and the plots; returns the report dict.

    ``model_path`` replaces the packaged checkpoint of the first task in ``tasks`` (the others load theirs).
    """
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": f"dlm-decode bench{' --quick' if quick else ''}",
        "host": {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
                 "threads": torch.get_num_threads()},
    }
    if "cache" in parts:
        from cmikit.decoding.bench_cache import cache_report

        report["cache"] = cache_report(quick, overhead_model or "smollm2-135m-instruct", model_path, batch_size,
                                       trust_remote_code=trust_remote_code)
        (out / "bench.json").write_text(json.dumps(report, indent=1))
    if "accuracy" in parts:
        report["accuracy_vs_nfe"] = {}
    for index, task in enumerate(tasks if "accuracy" in parts else ()):
        if task not in GRIDS:
            raise ConfigError(f"--tasks {task!r}: unknown bench task; choose from {', '.join(sorted(GRIDS))}.")
        report["accuracy_vs_nfe"][task] = {}
        for temperature in temperatures:
            key = f"temperature={temperature:g}"
            part = accuracy_vs_nfe(model_path if index == 0 else None, quick, batch_size, n_problems,
                                   temperature=temperature, task_name=task)
            report["accuracy_vs_nfe"][task][key] = part
            prefix = "bench" if task == "copy-one-of-two" else f"bench_{task}"
            suffix = "" if temperature == temperatures[0] else f"_t{temperature:g}"
            plot(part["results"], out / f"{prefix}{suffix}.png", title=key, task=task)
            (out / "bench.json").write_text(json.dumps(report, indent=1))
    if overhead_model and "overhead" in parts:
        report["overhead"] = measure_overhead(
            overhead_model, trust_remote_code=trust_remote_code, gen_length=16 if quick else 32, repeats=1 if quick else 2,
            strategies=("low_confidence", "ccd") if quick else ("low_confidence", "ccd", "ccd_marginal", "threshold"))
        (out / "bench.json").write_text(json.dumps(report, indent=1))
    return report


def gpu_throughput(model_ref: str = "smollm2-135m-instruct") -> dict[str, Any]:
    """For ``scripts/gpu_check.sh``: tokens/s of the issue-11 cache comparison (prompt 64, gen_length 256,
    block 32, one token per step, batch 1; no cache / prefix / dual) on the accelerate process's device."""
    from cmikit.decoding.bench_cache import cache_speed

    return cache_speed(model_ref, progress=False)
