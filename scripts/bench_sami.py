"""Benchmark: SAMITrainer training-step throughput and peak memory vs a straightforward implementation.

Both variants train the same model on the same rows with the same number of queries per optimiser step:

* ``straightforward``: one query per micro-batch (as the reference code), its C² (prompt_i, response_j)
  sequences right-padded, logits over every position (``layout="padded"``, gradient accumulation over the
  batch);
* ``sami``: ``layout="shared_prompt"`` (each prompt once per constitution, 4D mask, logits only on
  responses), ``--micro_batch`` queries per micro-batch (default 1, the same as the straightforward one).

On CPU a custom 4D mask sends ``sdpa`` to its math kernel, which stores the T×T attention matrices of every
layer for the backward pass; larger micro-batches of long rows then cost much memory. On CUDA the
memory-efficient kernel takes arbitrary masks.

Each variant runs in its own subprocess (clean peak memory), with warm-up steps excluded from timing; the
ratio is printed in the same run and written to ``--out`` (JSON). Data: real TL;DR posts and the reference
base / SAMI summaries from the ``sami-tldr`` dataset (``$CMIKIT_DATA/sami-tldr`` or ``cmikit data fetch sami-tldr``) with the reference constitutions, so prompts are
long and responses short, as in the paper's TL;DR setting.

    python scripts/bench_sami.py --lora                # embedded SmolLM2-135M + LoRA, CPU
    python scripts/bench_sami.py --model mistral-7b --bf16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_rows(n_queries: int, max_post_chars: int) -> list[dict]:
    from cmikit.harness.data import data_dir
    from cmikit.sami.constitutions import load_reference_constitutions
    from cmikit.sami.judge import load_response_file
    from cmikit.sami.prompts import build_prompt

    DATA = data_dir("sami-tldr")
    base = load_response_file(DATA / "responses" / "base-mistral-mistral-constitution-temperature-0.0.json")
    sami = load_response_file(DATA / "responses" /
                              "iteration-3-epoch-0.38-from-epoch-0.25-mistral-mistral-constitution-temperature-0.0.json")
    sets = load_reference_constitutions(DATA / "constitutions_mistral")
    rows = []
    for k, i in enumerate(sorted(base, key=int)[:n_queries]):
        post = base[i]["query"][:max_post_chars]
        consts = sets[k % len(sets)]
        prompts = [build_prompt("summarization", c.render(shuffle=True, seed=f"{i}|{j}"), post, "plain")
                   for j, c in enumerate(consts)]
        rows.append({"prompts": prompts, "responses": [" " + sami[i]["response"].strip(),
                                                       " " + base[i]["response"].strip()]})
    return rows


class PeakRSS:
    """Peak resident memory of this process above a baseline, sampled every 10 ms (CPU runs)."""

    def __init__(self) -> None:
        self.base = self._rss()
        self.peak = self.base
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def stop(self) -> int:
        self._stop = True
        self._thread.join()
        return self.peak - self.base


def worker(args: argparse.Namespace) -> dict:
    import datasets
    import torch
    from transformers import TrainerCallback

    from cmikit.harness import load_model
    from cmikit.sami.trainer import SAMIConfig, SAMIDataCollator, SAMITrainer

    torch.manual_seed(0)
    model, tok = load_model(args.model, dtype="fp32", eval_mode=False, attn_implementation="sdpa")
    rows = build_rows(args.queries, args.max_post_chars)
    logical = SAMIDataCollator(tok, layout="padded")(rows)["attention_mask"].sum().item()
    straightforward = args.worker == "straightforward"
    batch = args.batch_size
    cfg = SAMIConfig(
        output_dir=str(ROOT / "runs" / "bench_sami" / args.worker), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=1 if straightforward else args.micro_batch,
        gradient_accumulation_steps=batch if straightforward else batch // args.micro_batch,
        layout="padded" if straightforward else "shared_prompt", learning_rate=5e-7, bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0, dataloader_drop_last=True,
        gradient_checkpointing=args.gradient_checkpointing)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    ds = datasets.Dataset.from_list(rows)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])
    trainer = SAMITrainer(model, cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()],
                          peft_config=peft_config)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rss = PeakRSS()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else rss.stop()
    timed = times[args.warmup:]
    per_step = statistics.median(timed)
    n_pairs = batch * 4  # C = 2 → C² sequences per query
    tokens_per_query = logical / len(rows)
    first_loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    return {"variant": args.worker, "seconds_per_step": per_step, "step_times": timed,
            "sequences_per_s": n_pairs / per_step, "tokens_per_s": tokens_per_query * batch / per_step,
            "peak_memory_bytes": int(peak), "first_step_loss": first_loss,
            "memory_kind": "cuda max_memory_allocated" if torch.cuda.is_available() else "CPU peak RSS increase"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--queries", type=int, default=16, help="rows of real TL;DR data")
    p.add_argument("--batch_size", type=int, default=4, help="queries per optimiser step")
    p.add_argument("--micro_batch", type=int, default=1,
                   help="queries per micro-batch of the sami variant (the straightforward one always uses 1)")
    p.add_argument("--steps", type=int, default=3, help="timed optimiser steps")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max_post_chars", type=int, default=2000)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter (r=16) instead of all weights")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_sami.json"))
    p.add_argument("--worker", choices=["straightforward", "sami"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return
    results = {}
    for variant in ("straightforward", "sami"):
        cmd = [sys.executable, __file__, "--worker", variant] + [a for a in sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{variant} run failed (exit code {proc.returncode}; -9 = killed, e.g. out of memory):\n"
                     f"{proc.stderr[-3000:]}")
        results[variant] = json.loads(line[len("RESULT "):])
        r = results[variant]
        print(f"{variant:16s} {r['seconds_per_step']:.2f} s/step  {r['sequences_per_s']:.2f} seq/s  "
              f"{r['tokens_per_s']:.0f} tok/s  peak {r['peak_memory_bytes'] / 2**20:.0f} MiB  "
              f"first loss {r['first_step_loss']:.4f}")
    s, b = results["sami"], results["straightforward"]
    summary = {"speedup": b["seconds_per_step"] / s["seconds_per_step"],
               "memory_ratio": s["peak_memory_bytes"] / max(b["peak_memory_bytes"], 1),
               "same_first_loss": abs(s["first_step_loss"] - b["first_step_loss"]) < 1e-3,
               "config": vars(args), "results": results}
    print(f"speed-up (straightforward s/step / sami s/step): {summary['speedup']:.2f}x; "
          f"peak memory sami/straightforward: {summary['memory_ratio']:.2f}; "
          f"first-step losses agree: {summary['same_first_loss']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
