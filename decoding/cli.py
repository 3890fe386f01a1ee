"""``dlm-decode``: decode with a masked diffusion LM, benchmark the strategies, train the tiny DLM.

    dlm-decode generate --model llada-8b-instruct --trust-remote-code --prompt "..." --strategy ccd
    dlm-decode generate --model tiny --prompt "abcdefghabcdefghabcdefgh,abcdefghabcdefghabcdefga=" --gen-length 24 --strategy ccd
    dlm-decode bench [--quick] [--out bench_out]
    dlm-decode train-tiny [--steps 3000] [--output DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from decoding.config import STRATEGIES, DiffusionGenerationConfig

_SKIP = {"extra", "output_history"}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(DiffusionGenerationConfig):
        if f.name in _SKIP:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=default,
                                metavar="BOOL", help=f"default: {default}")
        elif f.name == "strategy":
            parser.add_argument(flag, choices=STRATEGIES, default=default, help=f"default: {default}")
        elif default is None or f.name in ("ccd_entropy_threshold",):
            parser.add_argument(flag, type=_none_or_number, default=default, help=f"default: {default}")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"default: {default}")


def _none_or_number(text: str):
    if text.lower() == "none":
        return None
    return float(text) if any(c in text for c in ".e") else int(text)


def _generate(args: argparse.Namespace) -> None:
    import torch

    from decoding.loop import generate

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(DiffusionGenerationConfig)
              if f.name not in _SKIP}
    config = DiffusionGenerationConfig(**fields)
    if args.model == "tiny":
        from decoding.tiny_dlm import load_tiny_dlm

        model, tokenizer, _ = load_tiny_dlm()
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(list(p)) for p in args.prompt])
        if len({len(p) for p in args.prompt}) > 1:
            raise SystemExit("dlm-decode generate --model tiny: give prompts of equal length")
        attention_mask = None
    else:
        from harness.models import load_model

        model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code, dtype=args.dtype)
        texts = args.prompt
        if args.chat and tokenizer.chat_template:
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in texts]
        tokenizer.padding_side = "left"
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not args.chat)
        ids, attention_mask = enc["input_ids"], enc["attention_mask"]
    from decoding.adapters import adapt

    adapter = adapt(model, tokenizer, bidirectional=args.bidirectional or None, mask_token_id=args.mask_token_id)
    out = generate(adapter, ids.to(adapter.device), config,
                   attention_mask=None if attention_mask is None else attention_mask.to(adapter.device))
    for row, prompt in enumerate(args.prompt):
        text = tokenizer.decode(out.generated[row], skip_special_tokens=not args.keep_special)
        print(json.dumps({"prompt": prompt, "completion": text, "nfe": int(out.nfe_per_row[row])}))


def _bench(args: argparse.Namespace) -> None:
    from decoding.bench import run_bench

    report = run_bench(args.out, quick=args.quick, model_path=args.model_path,
                       overhead_model=None if args.no_overhead else args.overhead_model,
                       batch_size=args.batch_size, n_problems=args.n_problems, threads=args.threads,
                       temperatures=tuple(args.temperatures), tasks=tuple(args.tasks))
    for task, parts in report["accuracy_vs_nfe"].items():
        for key, part in parts.items():
            print(task, key, json.dumps(part["targets"], indent=1))
    if "overhead" in report:
        ov = report["overhead"]
        print(json.dumps({"max_overhead_fraction": ov["max_overhead_fraction"],
                          "batch8_over_batch1": ov["batch8_over_batch1_sequences_per_second"]}, indent=1))
    print(f"wrote {args.out}/bench.json and the plots in {args.out}/")


def _train_tiny(args: argparse.Namespace, extra: list[str]) -> None:
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_dlm.py"
    if script.exists():
        spec = importlib.util.spec_from_file_location("train_tiny_dlm", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(extra)
        return
    from decoding.tiny_dlm import ASSET_DIR, TinyDLMTrainConfig, train_tiny_dlm

    print(f"saved {train_tiny_dlm(TinyDLMTrainConfig(), ASSET_DIR)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlm-decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="decode prompts with a masked diffusion LM")
    gen.add_argument("--model", default="tiny", help="'tiny' (the trained tiny DLM), a registry alias, Hub id or folder")
    gen.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    gen.add_argument("--trust-remote-code", action="store_true", help="needed for LLaDA / Dream checkpoints")
    gen.add_argument("--dtype", default="auto")
    gen.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    gen.add_argument("--bidirectional", action="store_true", help="drive a stock causal class bidirectionally")
    gen.add_argument("--mask-token-id", type=int, default=None, help="override the model's mask token id")
    gen.add_argument("--keep-special", action="store_true", help="keep special tokens in the printed completion")
    _add_config_args(gen)

    bench = sub.add_parser("bench", help="accuracy vs NFE on the tiny DLM + loop overhead (writes bench.json/png)")
    bench.add_argument("--quick", action="store_true", help="a few settings, 64 problems, short overhead run")
    bench.add_argument("--out", default="bench_out")
    bench.add_argument("--model-path", default=None, help="tiny DLM checkpoint folder (default: packaged/cache)")
    bench.add_argument("--overhead-model", default="smollm2-135m-instruct")
    bench.add_argument("--no-overhead", action="store_true", help="skip the ~135M overhead measurement")
    bench.add_argument("--batch-size", type=int, default=128)
    bench.add_argument("--n-problems", type=int, default=None)
    bench.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    bench.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0],
                       help="sampling temperatures to sweep (default: 0 1)")
    bench.add_argument("--tasks", nargs="+", choices=["copy-one-of-two", "one-class-upper"],
                       default=["copy-one-of-two", "one-class-upper"],
                       help="tiny-DLM tasks to benchmark (default: both; --model-path replaces the first one's model)")

    sub.add_parser("train-tiny", help="train the tiny DLM (runs scripts/train_tiny_dlm.py; pass its flags after)",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-tiny"]:
        _train_tiny(argparse.Namespace(), argv[1:])
        return
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        _generate(args)
    elif args.command == "bench":
        _bench(args)


if __name__ == "__main__":
    main()
