"""``dlm-decode``: decode with a masked diffusion LM, benchmark the strategies, train the tiny DLM.

    dlm-decode generate --model llada-8b-instruct --prompt "..." --strategy ccd --cache dual
    dlm-decode generate --model tiny --prompt "abcdefghabcdefghabcdefgh,abcdefghabcdefghabcdefga=" --gen-length 24 --strategy ccd
    dlm-decode bench [--quick] [--out bench_out] [--parts cache] [--overwrite]
    dlm-decode train-tiny [--steps 3000] [--output DIR]
    dlm-decode convert GSAI-ML/LLaDA-8B-Instruct llada-native/   (or a downloaded folder; also Dream)

Every user error (a bad option value, unequal prompts, a run folder made with other settings) ends as one line
``error: ...`` with exit code 2, found before any model loads where it can be.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmikit.decoding.config import DiffusionGenerationConfig
from cmikit.harness.config import check_at_least, check_choice, parse_config
from cmikit.harness.errors import ConfigError

# DiffusionGenerationConfig fields that are not options of `dlm-decode generate`.
_SKIP = ("extra", "output_history")
BENCH_PARTS = ("accuracy", "overhead", "cache")
BENCH_TASKS = ("copy-one-of-two", "one-class-upper")

USAGE = """usage: dlm-decode <command> [--config FILE.yaml] [--key value ...]

commands:
  generate    decode prompts with a masked diffusion LM (every DiffusionGenerationConfig field is an option)
  bench       accuracy vs NFE on the tiny DLM, loop overhead and KV cache speed (writes bench.json/png)
  train-tiny  train the tiny DLM (runs scripts/train_tiny_dlm.py; pass its flags after)
  convert     SRC DST: write a released LLaDA / Dream checkpoint once as transformers' own LlamaForCausalLM /
              Qwen2ForCausalLM (safetensors, loads without remote code); SRC a folder, alias or Hub id

examples:
  dlm-decode generate --model tiny --prompt "abcdefghabcdefghabcdefgh,abcdefghabcdefghabcdefga=" --gen-length 24 --strategy ccd
  dlm-decode bench --quick --out bench_out

Options take --x-y or --x_y, booleans --x / --x false / --no-x (docs/harness.md). `dlm-decode <command> --help`
lists every option of a command."""


@dataclass
class GenerateOptions:
    """Options of ``dlm-decode generate`` besides the :class:`DiffusionGenerationConfig` fields."""

    model: str = field(default="tiny", metadata={
        "help": "'tiny' (the trained tiny DLM), a registry alias, Hub id or folder"})
    prompt: list[str] = field(default_factory=list, metadata={"repeat": True, "help": "repeat for a batch"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "run the checkpoint's own modelling code (LLaDA / Dream load natively without it)"})
    dtype: str = "auto"
    chat: bool = field(default=False, metadata={"help": "wrap prompts in the tokenizer's chat template"})
    bidirectional: bool = field(default=False, metadata={"help": "drive a stock causal class bidirectionally"})
    mask_token_id: int | None = field(default=None, metadata={"help": "override the model's mask token id"})
    keep_special: bool = field(default=False, metadata={"help": "keep special tokens in the printed completion"})


@dataclass
class BenchOptions:
    """Options of ``dlm-decode bench``."""

    quick: bool = field(default=False, metadata={"help": "a few settings, 64 problems, short overhead and cache runs"})
    out: str = field(default="bench_out", metadata={"help": "run folder (run.json records the settings)"})
    overwrite: bool = field(default=False, metadata={
        "help": "empty a run folder made with other settings and start over"})
    parts: list[str] = field(default_factory=lambda: list(BENCH_PARTS), metadata={
        "choices": BENCH_PARTS, "help": "what to run (default: all): accuracy (tiny DLM grid), overhead (loop vs "
                                        "forward time), cache (KV cache speed and accuracy)"})
    model_path: str | None = field(default=None, metadata={
        "help": "tiny DLM checkpoint folder (default: packaged/cache)"})
    overhead_model: str = field(default="smollm2-135m-instruct", metadata={
        "help": "model for the overhead and cache timings (made bidirectional; timing only)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow the timing model's own modelling code"})
    no_overhead: bool = field(default=False, metadata={
        "help": "skip the ~135M overhead measurement (= --parts without overhead)"})
    batch_size: int = 128
    n_problems: int | None = None
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})
    temperatures: list[float] = field(default_factory=lambda: [0.0, 1.0], metadata={
        "help": "sampling temperatures to sweep (default: 0 1)"})
    tasks: list[str] = field(default_factory=lambda: list(BENCH_TASKS), metadata={
        "choices": BENCH_TASKS, "help": "tiny-DLM tasks to benchmark (default: both; --model-path replaces the "
                                        "first one's model)"})


# The settings that change a bench run's results (run identity, cmikit.harness.runs); the others (output folder,
# --overwrite, --threads, --trust-remote-code) are recorded in run.json but do not refuse a resume.
BENCH_IDENTITY = ("quick", "parts", "model_path", "overhead_model", "batch_size", "n_problems", "temperatures",
                  "tasks")


def parse_generate(argv: Sequence[str]) -> tuple[GenerateOptions, DiffusionGenerationConfig]:
    """``dlm-decode generate``'s options and decoding config (the harness convention) and every start-up check,
    before any model loads."""
    from cmikit.harness.models import _DTYPES

    opts, config = parse_config((GenerateOptions, DiffusionGenerationConfig), argv, exclude=_SKIP,
                                prog="dlm-decode generate", description=__doc__, dashes=True)
    if not opts.prompt:
        raise ConfigError("--prompt is required: give the text to continue (repeat --prompt for a batch).")
    for prompt in opts.prompt:
        if not prompt.strip():
            raise ConfigError("--prompt '': an empty prompt gives the model nothing to condition on; give text.")
    check_choice("--dtype", opts.dtype, list(_DTYPES))
    check_at_least("--mask-token-id", opts.mask_token_id, 0, allow_none=True)
    if opts.model == "tiny":
        from cmikit.harness.testing import tiny_tokenizer

        if len({len(p) for p in opts.prompt}) > 1:
            raise ConfigError("--prompt: the tiny DLM takes prompts of equal length (it has no padding); got "
                              f"lengths {sorted({len(p) for p in opts.prompt})}.")
        vocab = tiny_tokenizer().get_vocab()
        unknown = sorted({c for p in opts.prompt for c in p if c not in vocab})
        if unknown:
            raise ConfigError(f"--prompt: the tiny DLM's character vocabulary has no {''.join(unknown)!r}; use "
                              "its letters (e.g. the task's a-h / A-H , =).")
        context = _tiny_context()
        total = len(opts.prompt[0]) + config.gen_length
        if context is not None and total > (config.max_context or context):
            raise ConfigError(f"--prompt of {len(opts.prompt[0])} characters + --gen-length {config.gen_length} = "
                              f"{total} exceeds the tiny DLM's context of {context}; shorten one of them.")
    return opts, config


def _tiny_context() -> int | None:
    """The packaged tiny DLM's context length, read from its config.json (no model load)."""
    from cmikit.decoding.tiny_dlm import ASSET_DIR, cache_dir

    for folder in (ASSET_DIR, cache_dir()):
        path = folder / "config.json"
        if path.is_file():
            try:
                return int(json.loads(path.read_text()).get("max_position_embeddings"))
            except (OSError, ValueError, TypeError, AttributeError):  # junk in the cache: checked at load
                return None
    return None


def _generate(argv: Sequence[str]) -> int:
    import torch

    from cmikit.decoding.loop import generate

    args, config = parse_generate(argv)
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
    return 0


def parse_bench(argv: Sequence[str]) -> tuple[BenchOptions, list[str]]:
    """``dlm-decode bench``'s options (the harness convention) and every start-up check, before any model loads;
    returns them and the parts to run."""
    args = parse_config(BenchOptions, argv, prog="dlm-decode bench", description=__doc__, dashes=True)
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
    return args, parts


def _bench(argv: Sequence[str]) -> int:
    from cmikit.decoding.bench import run_bench
    from cmikit.decoding.tiny_dlm import asset_dir
    from cmikit.harness.runs import open_run

    args, parts = parse_bench(argv)
    settings = dataclasses.asdict(args)
    settings["parts"] = parts
    # The tiny DLM checkpoint of every task (--model-path replaces the first task's), hashed into the run.
    tiny = {f"tiny_dlm:{task}": Path(args.model_path) if args.model_path and i == 0 else asset_dir(task)
            for i, task in enumerate(args.tasks)}
    with open_run(args.out, "dlm-decode-bench", settings, keys=BENCH_IDENTITY,
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
    return 0


def _train_tiny(extra: Sequence[str]) -> int:
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_dlm.py"
    if script.exists():
        spec = importlib.util.spec_from_file_location("train_tiny_dlm", script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its option dataclass is resolved through the module
        spec.loader.exec_module(module)
        return int(module.main(list(extra)) or 0)
    from cmikit.decoding.tiny_dlm import TinyDLMTrainConfig, cache_dir, train_tiny_dlm

    print(f"saved {train_tiny_dlm(TinyDLMTrainConfig(), cache_dir())}")  # never into the installed package
    return 0


@dataclass
class ConvertOptions:
    """Options of ``dlm-decode convert SRC DST`` besides the two folders."""

    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty output folder"})


def _convert(argv: Sequence[str]) -> int:
    """``dlm-decode convert SRC DST``: the native checkpoint of a released LLaDA / Dream one
    (:mod:`cmikit.harness.native_dlm`)."""
    if any(a in ("-h", "--help") for a in argv):
        print("usage: dlm-decode convert SRC DST [--overwrite]\n\n"
              "Write a released LLaDA / Dream checkpoint (SRC: a downloaded folder, alias or Hub id; Hub\n"
              "downloads skip *.py) once as transformers' own LlamaForCausalLM / Qwen2ForCausalLM into DST:\n"
              "safetensors shards with native names, a config.json that loads without remote code, the\n"
              "tokenizer files without auto_map.\n\n"
              "  --overwrite   replace a non-empty DST")
        return 0
    positional = [a for a in argv if not a.startswith("-")]
    if len(positional) != 2 or list(argv[:2]) != positional:
        raise ConfigError("usage: dlm-decode convert SRC DST [--overwrite]: SRC is a downloaded LLaDA / Dream "
                          "folder, alias or Hub id, DST the output folder.")
    opts = parse_config(ConvertOptions, list(argv[2:]), prog="dlm-decode convert", description=_convert.__doc__,
                        dashes=True)
    from cmikit.harness.native_dlm import checkpoint_folder, convert_checkpoint

    print(json.dumps(convert_checkpoint(checkpoint_folder(positional[0]), positional[1], overwrite=opts.overwrite)))
    return 0


COMMANDS = {"generate": _generate, "bench": _bench, "train-tiny": _train_tiny, "convert": _convert}


def main(argv: list[str] | None = None) -> int:
    """``dlm-decode``: inside :func:`cmikit.harness.cli.dispatch` (one ``error:`` line and exit 2 for user errors)."""
    from cmikit.harness.cli import dispatch

    return dispatch("dlm-decode", USAGE, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
