"""``python -m cmikit.harness.demo``: load the embedded default model and answer one prompt through the backend.

A smoke run of the foundation (loader, embedded model, backend); the method packages' main jobs build on it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cmikit.harness.backends import SamplingParams, TransformersBackend, first_token_ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="alias, Hub id, folder or .gguf")
    parser.add_argument("--prompt", default="In one sentence: why do people ask good questions?")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", default=None, help="folder for demo.json (optional)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    backend = TransformersBackend.from_ref(args.model)
    load_s = time.perf_counter() - start
    messages = [{"role": "user", "content": args.prompt}]
    answer = backend.generate([messages], SamplingParams(max_new_tokens=args.max_new_tokens))[0]
    question = [{"role": "user", "content": "Is a whale a mammal? Answer Yes or No."},
                {"role": "assistant", "content": ""}]
    labels = ["Yes", "No"]
    probs = backend.next_token_logprobs([question], first_token_ids(backend.tokenizer, labels))[0].exp()
    result = {"model": args.model, "load_seconds": round(load_s, 2), "prompt": args.prompt, "answer": answer,
              "label_probs": {lab: round(float(p), 4) for lab, p in zip(labels, probs)}}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "demo.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
