"""``python -m cmikit.harness.demo``: load the embedded default model and answer one prompt through the backend.

A smoke run of the foundation (loader, embedded model, backend); the method packages' main jobs build on it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cmikit.harness.backends import SamplingParams, TransformersBackend, first_token_ids


@dataclass
class DemoOptions:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "alias, Hub id, folder or .gguf"})
    prompt: str = "In one sentence: why do people ask good questions?"
    max_new_tokens: int = 48
    out: str | None = field(default=None, metadata={"help": "folder for demo.json (optional)"})


def main(argv: list[str] | None = None) -> int:
    from cmikit.harness.cli import run_cli

    return run_cli(lambda: _demo(sys.argv[1:] if argv is None else argv))


def _demo(argv: list[str]) -> int:
    from cmikit.harness.config import check_at_least, parse_config

    args = parse_config(DemoOptions, argv, prog="python -m cmikit.harness.demo", description=__doc__, dashes=True)
    check_at_least("--max-new-tokens", args.max_new_tokens, 1)

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
