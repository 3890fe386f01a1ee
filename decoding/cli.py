"""``dlm-decode``: decode with a masked diffusion LM, benchmark the strategies, train the tiny DLM.

    dlm-decode generate --model llada-8b-instruct --trust-remote-code --prompt "..." --strategy ccd
    dlm-decode generate --model tiny --prompt "abcdefghabcdefghabcdefgh,abcdefghabcdefghabcdefga=" --gen-length 24 --strategy ccd
    dlm-decode bench [--quick] [--out bench_out] [--parts cache] [--overwrite]
    dlm-decode train-tiny [--steps 3000] [--output DIR]

Every user error (a bad option value, unequal prompts, a run folder made with other settings) ends as one line
``error: ...`` with exit code 2, found before any model loads where it can be.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from cmikit.decoding.config import CACHE_MODES, NUMERICS, STRATEGIES, DiffusionGenerationConfig
from cmikit.harness.config import check_at_least, check_choice, strict_bool
from cmikit.harness.errors import ConfigError

_SKIP = {"extra", "output_history"}
BENCH_PARTS = ("accuracy", "overhead", "cache")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become :class:`ConfigError` (one ``error:`` line, exit 2, via run_cli)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise ConfigError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(DiffusionGenerationConfig):
        if f.name in _SKIP:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, type=strict_bool, default=default, metavar="BOOL",
                                help=f"true/false (default: {default})")
        elif f.name == "strategy":
            parser.add_argument(flag, choices=STRATEGIES, default=default, help=f"default: {default}")
        elif f.name == "cache":
            parser.add_argument(flag, choices=CACHE_MODES, default=default,
                                help="KV cache: none, prefix or dual (Fast-dLLM); default: none")
        elif f.name == "numerics":
            parser.add_argument(flag, choices=NUMERICS, default=default,
                                help="float32 (default) or reference (model dtype, F.softmax, torch.topk)")
        elif f.name == "ccd_tokens_from":
            parser.add_argument(flag, choices=("mixture", "current"), default=default, help=f"default: {default}")
        elif default is None or f.name in ("ccd_entropy_threshold",):
            parser.add_argument(flag, type=_none_or_number, default=default, help=f"default: {default}")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"default: {default}")


def _none_or_number(text: str):
    if text.lower() == "none":
        return None
    try:
        return float(text) if any(c in text.lower() for c in ".en") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (or none)") from None


def _config_from(args: argparse.Namespace) -> DiffusionGenerationConfig:
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(DiffusionGenerationConfig)
              if f.name not in _SKIP}
    for name in ("gen_length", "block_length", "steps", "top_k", "warmup_steps", "ccd_window", "ccd_top_v",
                 "max_context", "seed", "cache_refresh"):
        value = fields.get(name)
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"--{name.replace('_', '-')} {value}: must be a whole number.")
            fields[name] = int(value)
    try:
        return DiffusionGenerationConfig(**fields)
    except ConfigError as err:  # name the flag the user typed, not the dataclass field
        message = str(err)
        for name in fields:
            message = message.replace(f"DiffusionGenerationConfig.{name}=", f"--{name.replace('_', '-')} ")
        raise ConfigError(message) from None


def _check_generate_args(args: argparse.Namespace) -> DiffusionGenerationConfig:
    """Every start-up check of ``generate`` (before any model loads)."""
    from cmikit.harness.models import _DTYPES

    config = _config_from(args)
    for prompt in args.prompt:
        if not prompt.strip():
            raise ConfigError("--prompt '': an empty prompt gives the model nothing to condition on; give text.")
    check_choice("--dtype", args.dtype, list(_DTYPES))
    check_at_least("--mask-token-id", args.mask_token_id, 0, allow_none=True)
    if args.model == "tiny":
        from cmikit.harness.testing import tiny_tokenizer

        if len({len(p) for p in args.prompt}) > 1:
            raise ConfigError("--prompt: the tiny DLM takes prompts of equal length (it has no padding); got "
                              f"lengths {sorted({len(p) for p in args.prompt})}.")
        vocab = tiny_tokenizer().get_vocab()
        unknown = sorted({c for p in args.prompt for c in p if c not in vocab})
        if unknown:
            raise ConfigError(f"--prompt: the tiny DLM's character vocabulary has no {''.join(unknown)!r}; use "
                              "its letters (e.g. the task's a-h / A-H , =).")
        context = _tiny_context()
        total = len(args.prompt[0]) + config.gen_length
        if context is not None and total > (config.max_context or context):
            raise ConfigError(f"--prompt of {len(args.prompt[0])} characters + --gen-length {config.gen_length} = "
                              f"{total} exceeds the tiny DLM's context of {context}; shorten one of them.")
    return config


def _tiny_context() -> int | None:
    """The packaged tiny DLM's context length, read from its config.json (no model load)."""
    from cmikit.decoding.tiny_dlm import ASSET_DIR, cache_dir

    for folder in (ASSET_DIR, cache_dir()):
        path = folder / "config.json"
        if path.is_file():
            try:
                return int(json.loads(path.read_text()).get("max_position_embeddings"))
            except (OSError, ValueError, TypeError):
                return None
    return None


def _generate(args: argparse.Namespace) -> None:
    import torch

    from cmikit.decoding.loop import generate

    config = _check_generate_args(args)
    if args.model == "tiny":
        from cmikit.decoding.tiny_dlm import load_tiny_dlm

        model, tokenizer, _ = load_tiny_dlm()
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(list(p)) for p in args.prompt])
        attention_mask = None
    else:
        from cmikit.harness.models import load_model

        model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code, dtype=args.dtype)
        texts = args.prompt
        if args.chat and tokenizer.chat_template:
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in texts]
        tokenizer.padding_side = "left"
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not args.chat)
        ids, attention_mask = enc["input_ids"], enc["attention_mask"]
    from cmikit.decoding.adapters import adapt

    adapter = adapt(model, tokenizer, bidirectional=args.bidirectional or None, mask_token_id=args.mask_token_id)
    out = generate(adapter, ids.to(adapter.device), config,
                   attention_mask=None if attention_mask is None else attention_mask.to(adapter.device))
    for row, prompt in enumerate(args.prompt):
        text = tokenizer.decode(out.generated[row], skip_special_tokens=not args.keep_special)
        print(json.dumps({"prompt": prompt, "completion": text, "nfe": int(out.nfe_per_row[row]),
                          "model_tokens": int(out.tokens_per_row[row])}))


def _check_bench_args(args: argparse.Namespace) -> list[str]:
    """Every start-up check of ``bench`` (before any model loads); returns the parts to run."""
    check_at_least("--batch-size", args.batch_size, 1)
    check_at_least("--n-problems", args.n_problems, 1, allow_none=True)
    check_at_least("--threads", args.threads, 1, allow_none=True)
    for t in args.temperatures:
        check_at_least("--temperatures", t, 0)
    if args.model_path is not None and not (Path(args.model_path) / "model.safetensors").is_file():
        raise ConfigError(f"--model-path {args.model_path}: no model.safetensors there (a tiny DLM checkpoint "
                          "folder written by `dlm-decode train-tiny`).")
    parts = list(dict.fromkeys(args.parts))
    if args.no_overhead and "overhead" in parts:
        parts.remove("overhead")
    if not parts:
        raise ConfigError("--parts / --no-overhead: nothing left to run; choose at least one of "
                          f"{', '.join(BENCH_PARTS)}.")
    return parts


def _bench(args: argparse.Namespace) -> None:
    from cmikit.decoding.bench import run_bench
    from cmikit.decoding.tiny_dlm import asset_dir
    from cmikit.harness.runs import open_run

    parts = _check_bench_args(args)
    settings = {k: v for k, v in vars(args).items() if k != "command"}
    settings["parts"] = parts
    # The tiny DLM checkpoint of every task (--model-path replaces the first task's), hashed into the run.
    tiny = {f"tiny_dlm:{task}": Path(args.model_path) if args.model_path and i == 0 else asset_dir(task)
            for i, task in enumerate(args.tasks)}
    with open_run(args.out, "dlm-decode-bench", settings, ignore=("out", "overwrite", "threads"),
                  files={name: path if path.is_dir() else None for name, path in tiny.items()},
                  models={"overhead": args.overhead_model}, overwrite=args.overwrite, out_flag="--out"):
        report = run_bench(args.out, quick=args.quick, model_path=args.model_path,
                           overhead_model=args.overhead_model,
                           batch_size=args.batch_size, n_problems=args.n_problems, threads=args.threads,
                           temperatures=tuple(args.temperatures), tasks=tuple(args.tasks), parts=tuple(parts),
                           trust_remote_code=args.trust_remote_code)
    for task, by_temperature in report.get("accuracy_vs_nfe", {}).items():
        for key, part in by_temperature.items():
            print(task, key, json.dumps(part["targets"], indent=1))
    if "cache" in report:
        cache = report["cache"]
        print("cache", json.dumps({m: {k: cache[m].get(k) for k in ("tokens_per_second", "seconds", "mean_nfe",
                                                                     "model_tokens", "accuracy", "speedup")}
                                   for m in ("none", "prefix", "dual", "prefix/block", "dual/block")}, indent=1))
        print("cache load average", cache["load_average"], "targets", json.dumps(cache["targets"]))
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
    from cmikit.decoding.tiny_dlm import ASSET_DIR, TinyDLMTrainConfig, train_tiny_dlm

    print(f"saved {train_tiny_dlm(TinyDLMTrainConfig(), ASSET_DIR)}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dlm-decode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="decode prompts with a masked diffusion LM")
    gen.add_argument("--model", default="tiny", help="'tiny' (the trained tiny DLM), a registry alias, Hub id or folder")
    gen.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    gen.add_argument("--trust-remote-code", type=strict_bool, nargs="?", const=True, default=False, metavar="BOOL",
                     help="run the checkpoint's own modelling code (needed for LLaDA / Dream); default: false")
    gen.add_argument("--dtype", default="auto")
    gen.add_argument("--chat", type=strict_bool, nargs="?", const=True, default=False, metavar="BOOL",
                     help="wrap prompts in the tokenizer's chat template")
    gen.add_argument("--bidirectional", type=strict_bool, nargs="?", const=True, default=False, metavar="BOOL",
                     help="drive a stock causal class bidirectionally")
    gen.add_argument("--mask-token-id", type=int, default=None, help="override the model's mask token id")
    gen.add_argument("--keep-special", type=strict_bool, nargs="?", const=True, default=False, metavar="BOOL",
                     help="keep special tokens in the printed completion")
    _add_config_args(gen)

    bench = sub.add_parser("bench", help="accuracy vs NFE on the tiny DLM, loop overhead and KV cache speed "
                                         "(writes bench.json/png)")
    bench.add_argument("--quick", type=strict_bool, nargs="?", const=True, default=False, metavar="BOOL",
                       help="a few settings, 64 problems, short overhead and cache runs")
    bench.add_argument("--out", default="bench_out", help="run folder (run.json records the settings)")
    bench.add_argument("--overwrite", type=strict_bool, nargs="?", const=True, default=False, metavar="BOOL",
                       help="empty a run folder made with other settings and start over")
    bench.add_argument("--parts", nargs="+", choices=BENCH_PARTS, default=list(BENCH_PARTS),
                       help="what to run (default: all): accuracy (tiny DLM grid), overhead (loop vs forward "
                            "time), cache (KV cache speed and accuracy)")
    bench.add_argument("--model-path", default=None, help="tiny DLM checkpoint folder (default: packaged/cache)")
    bench.add_argument("--overhead-model", default="smollm2-135m-instruct",
                       help="model for the overhead and cache timings (made bidirectional; timing only)")
    bench.add_argument("--trust-remote-code", type=strict_bool, nargs="?", const=True, default=False,
                       metavar="BOOL", help="allow the timing model's own modelling code; default: false")
    bench.add_argument("--no-overhead", type=strict_bool, nargs="?", const=True, default=False, metavar="BOOL",
                       help="skip the ~135M overhead measurement (= --parts without overhead)")
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


def _main(argv: list[str]) -> int:
    if argv[:1] == ["train-tiny"]:
        _train_tiny(argparse.Namespace(), argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        _generate(args)
    elif args.command == "bench":
        _bench(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``dlm-decode``: inside :func:`cmikit.harness.cli.run_cli` (one ``error:`` line and exit 2 for user errors)."""
    from cmikit.harness.cli import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
