"""The ``sami`` command line: expert iteration, held-out MI evaluation and judged win rates.

    sami iterate --config configs/sami/smollm2-demo.yaml [--key value ...]   # full loop (resumable)
    sami evaluate --model REF [--adapter DIR] --queries builtin:dialogue --out_dir runs/mi
    sami judge --candidate A.json --baseline B.json --judge REF --out_dir runs/judge
    accelerate launch --config_file configs/accelerate/fsdp.yaml scripts/train_sami.py --config ...

Every subcommand takes ``--config file.yaml`` plus ``--key value`` overrides (``harness.config``); ``sami
<command> --help`` lists the keys.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.config import ConfigError, parse_config

USAGE = """usage: sami <command> [--config FILE.yaml] [--key value ...]

commands:
  iterate   run (or resume) SAMI expert iteration: sample, train, save, evaluate per iteration
  evaluate  MI lower bound of a model (or adapter) on held-out queries, with bootstrap intervals
  judge     judged win rates (raw and length-balanced) of two response files

`sami <command> --help` lists every option of a command.
"""


@dataclass
class EvaluateConfig:
    """``sami evaluate``: the MI bound of one model on held-out queries."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "model reference"})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter folder on top of the model"})
    out_dir: str = field(default="runs/sami-evaluate", metadata={"help": "output folder (resumable)"})
    task: str = field(default="dialogue", metadata={"help": "dialogue or summarization"})
    prompt_format: str = field(default="chat", metadata={"help": "chat or plain"})
    queries: str = field(default="builtin:dialogue", metadata={"help": "query source"})
    query_column: str | None = field(default=None, metadata={"help": "text column"})
    limit: int = field(default=16, metadata={"help": "number of queries"})
    offset: int = field(default=0, metadata={"help": "skip this many queries first"})
    constitutions: str = field(default="builtin", metadata={"help": "builtin or reference JSON file/folder"})
    n_constitutions: int = field(default=2, metadata={"help": "C"})
    negatives: str = field(default="random", metadata={"help": "random, one, all or enumerate"})
    max_new_tokens: int = field(default=350, metadata={"help": "sampling length"})
    logprob_reduction: str = field(default="mean", metadata={"help": "mean or sum"})
    mask_eos: bool = field(default=False, metadata={"help": "do not score EOS"})
    batch_size: int = field(default=4, metadata={"help": "queries per batch"})
    dtype: str = field(default="auto", metadata={"help": "model dtype"})


@dataclass
class JudgeConfig:
    """``sami judge``: win rates of candidate responses over baseline responses."""

    candidate: str = field(default="", metadata={"help": "candidate responses (reference JSON format)"})
    baseline: str = field(default="", metadata={"help": "baseline responses (same format, same ids)"})
    judge: str = field(default="smollm2-135m-instruct", metadata={"help": "judge model reference"})
    backend: str = field(default="transformers", metadata={"help": "transformers or vllm"})
    out_dir: str = field(default="runs/sami-judge", metadata={"help": "output folder (resumable)"})
    task: str = field(default="summarization", metadata={"help": "dialogue or summarization"})
    mode: str = field(default="generate", metadata={"help": "generate (paper) or logprob"})
    order: str = field(default="random", metadata={"help": "random (paper), both, candidate_first, candidate_second"})
    seed: int = field(default=1, metadata={"help": "seed of the A/B position draw (paper: 1)"})
    limit: int | None = field(default=None, metadata={"help": "judge only the first N items"})
    max_new_tokens: int = field(default=200, metadata={"help": "judge output length (paper: 200)"})
    batch_size: int = field(default=8, metadata={"help": "items per batch"})


def _iterate(argv: Sequence[str]) -> int:
    from sami.iterate import IterateConfig, run_expert_iteration
    from sami.trainer import SAMIConfig

    cfg, train_args = parse_config((IterateConfig, SAMIConfig), list(argv))
    results = run_expert_iteration(cfg, train_args)
    print(json.dumps(results, indent=1))
    return 0


def _evaluate(argv: Sequence[str]) -> int:
    from harness.backends import SamplingParams, TransformersBackend
    from sami.constitutions import builtin_principles, load_reference_constitutions
    from sami.evaluate import evaluate_mi
    from sami.queries import load_queries
    from sami.sampling import build_items

    cfg = parse_config(EvaluateConfig, list(argv))
    queries = load_queries(cfg.queries, column=cfg.query_column, limit=cfg.limit, offset=cfg.offset)
    if cfg.constitutions == "builtin":
        items = build_items(queries, builtin_principles(cfg.task), None, cfg.n_constitutions, cfg.negatives,
                            seed=10_000)
    else:
        items = build_items(queries, None, load_reference_constitutions(cfg.constitutions), seed=10_000)
    backend = TransformersBackend.from_ref(cfg.model, adapter=cfg.adapter, dtype=cfg.dtype)
    summary = evaluate_mi(backend, items, cfg.out_dir, cfg.task, cfg.prompt_format,
                          SamplingParams(max_new_tokens=cfg.max_new_tokens), cfg.logprob_reduction, cfg.mask_eos,
                          batch_size=cfg.batch_size)
    print(json.dumps(summary, indent=1))
    return 0


def _judge(argv: Sequence[str]) -> int:
    from harness.backends import make_backend
    from sami.judge import judge_pairs, pairs_from_files

    cfg = parse_config(JudgeConfig, list(argv))
    if not cfg.candidate or not cfg.baseline:
        raise ConfigError("sami judge needs --candidate FILE and --baseline FILE (response JSON files).")
    pairs = pairs_from_files(cfg.candidate, cfg.baseline, limit=cfg.limit)
    judge = make_backend(cfg.backend, cfg.judge)
    result = judge_pairs(judge, pairs, cfg.out_dir, task=cfg.task, mode=cfg.mode, order=cfg.order, seed=cfg.seed,
                         max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    print(json.dumps(result, indent=1))
    return 0


COMMANDS = {"iterate": _iterate, "evaluate": _evaluate, "judge": _judge}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sami`` console script."""
    from harness.cli import dispatch

    return dispatch("sami", USAGE, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
