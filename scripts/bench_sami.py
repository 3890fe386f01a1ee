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

``--part memory`` measures instead the peak memory of the per-token log-probs alone (forward and backward) on
a [8, 256, 49152] bf16 logits tensor (SmolLM2's vocabulary), before (this project's former implementation: an
fp32 copy of the whole tensor, then logsumexp) and now (TRL's ``selective_log_softmax`` through
``cmikit.sami.loss.token_logprobs``), each in its own subprocess, in the same run:

    python scripts/bench_sami.py --part memory        # CPU: peak RSS (VmHWM reset first); CUDA: max allocated
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


def old_token_logprobs(logits, labels):
    """The implementation before TRL's (kept here only as the benchmark's baseline): fp32 copy of all logits."""
    import torch

    logits = logits.float()
    picked = torch.gather(logits, -1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def memory_worker(args: argparse.Namespace) -> dict:
    import torch

    from cmikit.sami.loss import token_logprobs

    fn = old_token_logprobs if args.memory_worker == "before" else token_logprobs
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shape = tuple(args.logits_shape)
    gen = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(shape, generator=gen) * 4).to(device=device, dtype=torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen).to(device)
    out = {}

    def reset() -> int:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (peak RSS) to the current RSS
            f.write("5")
        return _vm("VmRSS")

    def peak() -> int:
        if cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _vm("VmHWM")

    fn(logits[:1, :8], labels[:1, :8]).sum().backward()  # warm-up (kernels, allocator), not measured
    logits.grad = None
    base = reset()
    lp = fn(logits, labels)
    out["forward_bytes"] = peak() - base
    lp.sum().backward()
    out["forward_backward_bytes"] = peak() - base
    out["token_logprobs"] = lp.detach().float().cpu().flatten().tolist()
    out["memory_kind"] = "cuda max_memory_allocated" if cuda else "CPU peak RSS (VmHWM) above the start"
    out["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
    return out


def memory_main(args: argparse.Namespace) -> None:
    results = {}
    for variant in ("before", "after"):
        cmd = [sys.executable, __file__, "--part", "memory", "--memory_worker", variant,
               "--logits_shape", *map(str, args.logits_shape)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{variant} run failed (exit code {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(line[len("RESULT "):])
    lp_b, lp_a = results["before"].pop("token_logprobs"), results["after"].pop("token_logprobs")
    diff = max(abs(x - y) for x, y in zip(lp_b, lp_a))
    summary = {"logits_shape": args.logits_shape, "dtype": "bfloat16", **{
        f"{v}_{k}_mib": round(results[v][k] / 2**20, 1) for v in ("before", "after")
        for k in ("forward_bytes", "forward_backward_bytes")}}
    summary["ratio_forward"] = round(results["after"]["forward_bytes"] / max(results["before"]["forward_bytes"], 1), 3)
    summary["ratio_forward_backward"] = round(
        results["after"]["forward_backward_bytes"] / max(results["before"]["forward_backward_bytes"], 1), 3)
    summary["max_abs_token_logprob_diff"] = diff
    summary["memory_kind"] = results["after"]["memory_kind"]
    summary["device"] = results["after"]["device"]
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["train", "memory"], default="train",
                   help="train: training-step throughput and memory (default); memory: the log-prob step alone")
    p.add_argument("--logits_shape", type=int, nargs=3, default=[8, 256, 49152], help="--part memory: [N, T, V]")
    p.add_argument("--memory_worker", choices=["before", "after"], help=argparse.SUPPRESS)
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
    if args.part == "memory":
        if args.memory_worker:
            print("RESULT " + json.dumps(memory_worker(args)))
            return
        if args.out == str(ROOT / "runs" / "bench_sami.json"):
            args.out = str(ROOT / "runs" / "bench_sami_memory.json")
        memory_main(args)
        return
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
