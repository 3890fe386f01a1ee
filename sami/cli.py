"""The ``sami`` command line: expert iteration, held-out MI evaluation and judged win rates.

    sami iterate --config configs/sami/smollm2-demo.yaml [--key value ...]   # full loop (resumable)
    sami evaluate --model REF [--adapter DIR] --queries builtin:dialogue --out_dir runs/mi
    sami judge --candidate A.json --baseline B.json --judge REF --out_dir runs/judge
    sami judge --judged released_judge_outputs.json --out_dir runs/judge-released
    accelerate launch --config_file configs/accelerate/fsdp.yaml scripts/train_sami.py --config ...

Every subcommand takes ``--config file.yaml`` plus ``--key value`` overrides (``cmikit.harness.config``); ``sami
<command> --help`` lists the keys.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from cmikit.harness.config import check_at_least, check_choice, config_to_dict, parse_config
from cmikit.harness.errors import ConfigError

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
    trust_remote_code: bool = field(default=False, metadata={"help": "allow modelling code from the checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "empty a run folder made with other settings"})

    def __post_init__(self) -> None:
        from cmikit.sami.checks import check_adapter, check_common, check_model_ref, check_source_file
        from cmikit.sami.loss import REDUCTIONS

        check_model_ref("model", self.model)
        check_adapter("adapter", self.adapter)
        check_common(self)
        check_source_file("queries", self.queries)
        check_at_least("limit", self.limit, 1)
        check_at_least("offset", self.offset, 0)
        check_choice("logprob_reduction", self.logprob_reduction, REDUCTIONS)


# The settings that change `sami evaluate`'s results (run identity, cmikit.harness.runs); out_dir, overwrite,
# batch_size (records are per query) and trust_remote_code are recorded in run.json but not fingerprinted.
EVALUATE_IDENTITY = ("model", "adapter", "task", "prompt_format", "queries", "query_column", "limit", "offset",
                     "constitutions", "n_constitutions", "negatives", "max_new_tokens", "logprob_reduction",
                     "mask_eos", "dtype")


@dataclass
class JudgeConfig:
    """``sami judge``: win rates of candidate responses over baseline responses."""

    candidate: str = field(default="", metadata={"help": "candidate responses (reference JSON format)"})
    baseline: str = field(default="", metadata={"help": "baseline responses (same format, same ids)"})
    judged: str | None = field(default=None, metadata={
        "help": "released judge outputs (JSON rows [win, len_baseline, len_candidate]): win rates without a judge"})
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
    length_tokenizer: str | None = field(default=None, metadata={
        "help": "model whose tokenizer counts response lengths: the policy that wrote the candidate (reference: "
                "Mistral); None: the judge's tokenizer; 'words': whitespace words"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow modelling code from the checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "empty a run folder made with other settings"})

    def __post_init__(self) -> None:
        from cmikit.sami.checks import check_common, check_model_ref
        from cmikit.sami.judge import MODES, ORDERS

        check_common(self)
        check_choice("mode", self.mode, MODES)
        check_choice("order", self.order, ORDERS)
        check_at_least("limit", self.limit, 1, allow_none=True)
        if self.judged is not None:
            if self.candidate or self.baseline:
                raise ConfigError("--judged FILE computes win rates from released judge outputs; do not also give "
                                  "--candidate/--baseline.")
            return
        if not self.candidate or not self.baseline:
            raise ConfigError("sami judge needs --candidate FILE and --baseline FILE (response JSON files), or "
                              "--judged FILE (released judge outputs).")
        check_model_ref("judge", self.judge)
        if self.length_tokenizer not in (None, "words"):
            check_model_ref("length_tokenizer", self.length_tokenizer)


# The settings that change `sami judge`'s results; out_dir, overwrite, batch_size, trust_remote_code are not.
JUDGE_IDENTITY = ("candidate", "baseline", "judged", "judge", "backend", "task", "mode", "order", "seed", "limit",
                  "max_new_tokens", "length_tokenizer")


def _iterate(argv: Sequence[str]) -> int:
    from cmikit.sami.config import SAMIConfig
    from cmikit.sami.iterate import IterateConfig, run_expert_iteration

    cfg, train_args = parse_config((IterateConfig, SAMIConfig), list(argv), prog="sami iterate")
    results = run_expert_iteration(cfg, train_args)
    print(json.dumps(results, indent=1))
    return 0


def _evaluate(argv: Sequence[str]) -> int:
    from cmikit.harness.backends import SamplingParams, TransformersBackend
    from cmikit.harness.runs import model_identity, open_run
    from cmikit.sami.checks import local_files
    from cmikit.sami.constitutions import builtin_principles, load_reference_constitutions
    from cmikit.sami.evaluate import evaluate_mi
    from cmikit.sami.queries import load_queries
    from cmikit.sami.sampling import build_items

    cfg = parse_config(EvaluateConfig, list(argv), prog="sami evaluate")
    queries = load_queries(cfg.queries, column=cfg.query_column, limit=cfg.limit, offset=cfg.offset)
    if cfg.constitutions == "builtin":
        items = build_items(queries, builtin_principles(cfg.task), None, cfg.n_constitutions, cfg.negatives,
                            seed=10_000)
    else:
        items = build_items(queries, None, load_reference_constitutions(cfg.constitutions), seed=10_000)
    files = local_files(cfg.queries, cfg.constitutions if cfg.constitutions != "builtin" else None)
    with open_run(cfg.out_dir, "sami-evaluate", config_to_dict(cfg), keys=EVALUATE_IDENTITY,
                  files=files, models={"model": model_identity(cfg.model, adapter=cfg.adapter)},
                  overwrite=cfg.overwrite):
        backend = TransformersBackend.from_ref(cfg.model, adapter=cfg.adapter, dtype=cfg.dtype,
                                               trust_remote_code=cfg.trust_remote_code)
        summary = evaluate_mi(backend, items, cfg.out_dir, cfg.task, cfg.prompt_format,
                              SamplingParams(max_new_tokens=cfg.max_new_tokens), cfg.logprob_reduction,
                              cfg.mask_eos, batch_size=cfg.batch_size)
    print(json.dumps(summary, indent=1))
    return 0


def _judge(argv: Sequence[str]) -> int:
    from cmikit.harness.runs import model_identity, open_run
    from cmikit.sami.judge import judge_pairs, load_length_tokenizer, pairs_from_files, released_win_rates

    cfg = parse_config(JudgeConfig, list(argv), prog="sami judge")
    if cfg.judged is not None:
        result = released_win_rates(cfg.judged)
        with open_run(cfg.out_dir, "sami-judge-released", {"judged": cfg.judged}, keys=("judged",),
                      files={"judged": cfg.judged}, overwrite=cfg.overwrite) as run:
            run.path("win_rates.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return 0
    pairs = pairs_from_files(cfg.candidate, cfg.baseline, limit=cfg.limit)  # file errors before any model
    length_ref = cfg.length_tokenizer or cfg.judge
    models = {"judge": model_identity(cfg.judge)}
    if length_ref != "words":
        models["length_tokenizer"] = model_identity(length_ref)
    with open_run(cfg.out_dir, "sami-judge", config_to_dict(cfg), keys=JUDGE_IDENTITY,
                  files={"candidate": cfg.candidate, "baseline": cfg.baseline}, models=models,
                  overwrite=cfg.overwrite):
        from cmikit.harness.backends import make_backend

        length_tok = None if length_ref == "words" else load_length_tokenizer(length_ref, cfg.trust_remote_code)
        judge = make_backend(cfg.backend, cfg.judge, trust_remote_code=cfg.trust_remote_code)
        result = judge_pairs(judge, pairs, cfg.out_dir, task=cfg.task, mode=cfg.mode, order=cfg.order,
                             seed=cfg.seed, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                             length_tokenizer=length_tok,
                             length_unit="words" if length_tok is None else f"tokens:{length_ref}")
    print(json.dumps(result, indent=1))
    return 0


COMMANDS = {"iterate": _iterate, "evaluate": _evaluate, "judge": _judge}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sami`` console script."""
    from cmikit.harness.cli import dispatch

    return dispatch("sami", USAGE, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
