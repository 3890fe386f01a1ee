"""Expert iteration for SAMI (paper Alg. 1, App. A.3): sample with the previous iterate, train, save, evaluate.

Iteration η (1..N):

1. **sample**: the iterate η−1 (the base model for η = 1) answers this iteration's training queries under C
   constitutions each; filtered rows are saved as a ``datasets`` dataset;
2. **train**: from the base model (paper: every iterate restarts from the base weights) or, with
   ``train_from="previous"``, from iterate η−1, for ``steps_per_iteration[η−1]`` optimiser steps;
3. **save** the model (a LoRA adapter, or full weights);
4. **evaluate** the MI bound on held-out queries (:func:`cmikit.sami.evaluate.evaluate_mi`), and optionally judged
   win rates of the iterate's positive-constitution responses against the base model's.

Iteration 0 is the base model's evaluation. Every stage writes a ``DONE`` marker when finished; sampling and
evaluation append one JSONL record per query, and training saves Trainer checkpoints, so a run killed at any
point restarts where it stopped and never redoes a finished stage. ``run_dir/results.json`` and
``run_dir/curves.png`` collect the per-iteration numbers.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmikit.harness.errors import ConfigError
from cmikit.sami.config import SAMIConfig

logger = logging.getLogger(__name__)
DONE = "DONE"


@dataclass
class IterateConfig:
    """What to train and on what; optimisation settings live in :class:`~cmikit.sami.trainer.SAMIConfig`.

    The run folder is ``SAMIConfig.output_dir``.
    """

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "base model: alias, Hub id, folder, .gguf"})
    task: str = field(default="dialogue", metadata={"help": "dialogue or summarization"})
    prompt_format: str = field(default="chat", metadata={"help": "chat (instruct models) or plain (base models)"})
    queries: str = field(default="builtin:dialogue",
                         metadata={"help": "query source(s), comma-separated sources are interleaved (see cmikit.sami.queries)"})
    query_split: str = field(default="train", metadata={"help": "split of a Hub query dataset"})
    query_column: str | None = field(default=None, metadata={"help": "text column of a local/Hub dataset"})
    queries_per_iteration: int | None = field(
        default=None, metadata={"help": "training queries per iteration (None: all non-held-out queries)"})
    max_train_items: int | None = field(
        default=None, metadata={"help": "train on at most this many kept items per iteration (reference HH: 2000)"})
    alternate_queries: bool = field(
        default=False, metadata={"help": "use a different slice of queries each iteration (paper)"})
    heldout_queries: str | None = field(
        default=None, metadata={"help": "held-out query source (None: split from `queries`)"})
    heldout_split: str = field(default="validation", metadata={"help": "split of a Hub held-out source"})
    n_heldout: int = field(default=16, metadata={"help": "held-out queries for the MI bound"})
    constitutions: str = field(
        default="builtin", metadata={"help": "builtin (principles of the task) or reference JSON file/folder"})
    n_constitutions: int = field(default=2, metadata={"help": "C: constitutions per query"})
    negatives: str = field(default="random", metadata={"help": "random, one, all or enumerate"})
    iterations: int = field(default=3, metadata={"help": "N expert iterations"})
    steps_per_iteration: list[int] = field(
        default_factory=lambda: [2, 4, 6], metadata={"help": "optimiser steps of each iteration (paper: 2 4 6)"})
    train_from: str = field(default="base", metadata={"help": "base (paper) or previous (continue)"})
    use_lora: bool = field(default=False, metadata={"help": "train a LoRA adapter instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "modules LoRA adapts"})
    backend: str = field(default="transformers", metadata={"help": "sampling backend: transformers or vllm"})
    generation_batch_size: int = field(default=16, metadata={"help": "prompts per generation batch"})
    max_new_tokens: int = field(default=350, metadata={"help": "sampling length (paper: 350)"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (paper)"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus (paper: 0.9, inactive when greedy)"})
    filter_strings: list[str] = field(default_factory=list, metadata={"help": "drop items whose responses contain one"})
    drop_identical: bool = field(default=True, metadata={"help": "drop items with identical responses"})
    require_period: bool = field(default=False, metadata={"help": "drop items whose positive lacks a final '.'"})
    eval_batch_size: int = field(default=4, metadata={"help": "held-out queries per evaluation batch"})
    judge_model: str | None = field(default=None, metadata={"help": "judge for win rates vs base (None: skip)"})
    judge_mode: str = field(default="logprob", metadata={"help": "logprob or generate"})
    data_seed_offset: int = field(default=0, metadata={"help": "salt for constitution draws"})

    judge_order: str = field(default="both", metadata={"help": "A/B order of the judge: both, random, ..."})
    length_tokenizer: str | None = field(
        default=None, metadata={"help": "model whose tokenizer counts lengths for the balanced win rate "
                                        "(None: the policy, as the reference)"})
    overwrite: bool = field(default=False, metadata={"help": "empty a run folder made with other settings"})

    def __post_init__(self) -> None:
        from cmikit.harness.config import check_at_least, check_choice
        from cmikit.sami.checks import check_common, check_model_ref, check_source_file
        from cmikit.sami.judge import MODES, ORDERS

        check_model_ref("model", self.model)
        check_model_ref("judge_model", self.judge_model, allow_none=True)
        check_model_ref("length_tokenizer", self.length_tokenizer, allow_none=True)
        check_common(self)
        check_source_file("queries", self.queries)
        check_source_file("heldout_queries", self.heldout_queries)
        check_at_least("iterations", self.iterations, 1)
        check_at_least("queries_per_iteration", self.queries_per_iteration, 1, allow_none=True)
        check_at_least("max_train_items", self.max_train_items, 1, allow_none=True)
        if len(self.steps_per_iteration) < self.iterations:
            raise ConfigError(
                f"--steps_per_iteration {self.steps_per_iteration} lists {len(self.steps_per_iteration)} value(s) "
                f"for iterations={self.iterations}; give one step count per iteration.")
        for steps in self.steps_per_iteration:
            check_at_least("steps_per_iteration", steps, 1)
        check_choice("train_from", self.train_from, ("base", "previous"))
        check_choice("judge_mode", self.judge_mode, MODES)
        check_choice("judge_order", self.judge_order, ORDERS)


# ---------------------------------------------------------------------------------------------- helpers
def _state():
    from accelerate import PartialState

    return PartialState()


def _principles_or_sets(cfg: IterateConfig):
    from cmikit.sami.constitutions import builtin_principles, load_reference_constitutions

    if cfg.constitutions == "builtin":
        return builtin_principles(cfg.task), None
    return None, load_reference_constitutions(cfg.constitutions)


class ExpertIteration:
    """Runs :class:`IterateConfig` × :class:`SAMIConfig`; call :meth:`run`."""

    def __init__(self, cfg: IterateConfig, train_args: SAMIConfig) -> None:
        self.cfg = cfg
        self.args = train_args
        self.run_dir = Path(train_args.output_dir)
        self.principles, self.reference_sets = _principles_or_sets(cfg)
        self._load_queries()

    # ------------------------------------------------------------------------------------- data
    def _load_queries(self) -> None:
        from cmikit.sami.queries import load_queries, split_queries

        cfg = self.cfg

        def load(sources: str, split: str, limit: int | None = None) -> list[dict[str, str]]:
            # Several sources (e.g. HH helpful-base and harmless-base) are interleaved: a, b, a, b, ...
            lists = [load_queries(s.strip(), split=split, column=cfg.query_column, limit=limit)
                     for s in sources.split(",") if s.strip()]
            mixed = [q for group in itertools.zip_longest(*lists) for q in group if q is not None]
            return mixed[:limit] if limit else mixed

        queries = load(cfg.queries, cfg.query_split)
        if cfg.heldout_queries:
            self.heldout = load(cfg.heldout_queries, cfg.heldout_split, limit=cfg.n_heldout)
            self.train_queries = queries
        else:
            self.train_queries, self.heldout = split_queries(queries, cfg.n_heldout)

    def queries_for(self, eta: int) -> list[dict[str, str]]:
        cfg, pool = self.cfg, self.train_queries
        n = cfg.queries_per_iteration or len(pool)
        start = ((eta - 1) * n) % len(pool) if cfg.alternate_queries else 0
        chosen = (pool[start:] + pool[:start])[:n]
        return chosen

    def items_for(self, queries, salt: int) -> list[dict[str, Any]]:
        from cmikit.sami.sampling import build_items

        return build_items(queries, self.principles, self.reference_sets, self.cfg.n_constitutions,
                           self.cfg.negatives, seed=salt + self.cfg.data_seed_offset)

    # ---------------------------------------------------------------------------------- models
    def iteration_dir(self, eta: int) -> Path:
        return self.run_dir / f"iteration-{eta}"

    def model_ref(self, eta: int) -> tuple[str, str | None]:
        """(model, adapter) of iterate ``eta``: base for 0; LoRA runs keep the adapter apart."""
        if eta == 0:
            return self.cfg.model, None
        folder = str(self.iteration_dir(eta) / "model")
        if self.cfg.use_lora:
            # A continued LoRA run trains a fresh adapter on the previous iterate merged into the base.
            base = self._merged(eta - 1) if (self.cfg.train_from == "previous" and eta > 1) else self.cfg.model
            return base, folder
        return folder, None

    def _merged(self, eta: int) -> str:
        """A merged full-weight copy of a LoRA iterate (needed to stack adapters with train_from=previous)."""
        out = self.iteration_dir(eta) / "merged"
        if not (out / DONE).exists():
            from cmikit.harness.models import load_model

            base, adapter = self.model_ref(eta)
            model, tok = load_model(base, adapter=adapter, dtype=self.args.model_dtype,
                                    trust_remote_code=self.args.trust_remote_code)
            model = model.merge_and_unload()
            if _state().is_main_process:
                model.save_pretrained(out)
                tok.save_pretrained(out)
                (out / DONE).touch()
            _state().wait_for_everyone()
        return str(out)

    def _backend(self, eta: int):
        from cmikit.harness.backends import TransformersBackend, make_backend

        base, adapter = self.model_ref(eta)
        if self.cfg.backend == "vllm":
            if adapter is not None:
                base = self._merged(eta)
            return make_backend("vllm", base, trust_remote_code=self.args.trust_remote_code)
        return TransformersBackend.from_ref(base, adapter=adapter, dtype=self.args.model_dtype,
                                            batch_size=self.cfg.generation_batch_size,
                                            trust_remote_code=self.args.trust_remote_code)

    def _sampling(self):
        from cmikit.harness.backends import SamplingParams

        return SamplingParams(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                              top_p=self.cfg.top_p if self.cfg.temperature > 0 else 1.0, seed=self.args.seed)

    # ---------------------------------------------------------------------------------- stages
    def sample(self, eta: int):
        """Stage 1 of iteration ``eta``: responses from iterate ``eta − 1``."""
        import datasets

        from cmikit.sami.sampling import DATASET_DIR, ResponseFilter, sample_responses

        out = self.iteration_dir(eta) / "samples"
        if (out / DONE).exists():
            return datasets.load_from_disk(str(out / DATASET_DIR))
        backend = self._backend(eta - 1)
        filt = ResponseFilter(list(self.cfg.filter_strings), self.cfg.drop_identical, 1, self.cfg.require_period)
        ds = sample_responses(backend, self.items_for(self.queries_for(eta), salt=eta), out, self.cfg.task,
                              self.cfg.prompt_format, self._sampling(), filt, self.cfg.generation_batch_size)
        del backend
        gc.collect()
        if _state().is_main_process:
            (out / DONE).touch()
        _state().wait_for_everyone()
        return ds

    def _train_model(self, eta: int):
        from cmikit.sami.trainer import load_policy

        if self.cfg.train_from == "previous" and eta > 1:
            base, adapter = self.model_ref(eta - 1)
            if adapter is not None:
                base = self._merged(eta - 1)
        else:
            base = self.cfg.model
        return load_policy(base, self.args)  # the trainer's own loading path (FSDP / DeepSpeed: on the CPU)

    def peft_config(self):
        """The LoRA settings as TRL's ``ModelConfig`` → ``get_peft_config`` (``None`` without ``use_lora``)."""
        from trl import ModelConfig, get_peft_config

        cfg = self.cfg
        return get_peft_config(ModelConfig(use_peft=cfg.use_lora, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                           lora_dropout=cfg.lora_dropout,
                                           lora_target_modules=list(cfg.lora_target_modules)))

    def train(self, eta: int, samples) -> None:
        """Stages 2–3: train for this iteration's step count and save the iterate."""
        import dataclasses

        from transformers.trainer_utils import get_last_checkpoint

        from cmikit.sami.sampling import training_rows
        from cmikit.sami.trainer import SAMIInputError, SAMITrainer

        out = self.iteration_dir(eta) / "model"
        if (out / DONE).exists():
            return
        if len(samples) == 0:
            raise SAMIInputError(
                f"Iteration {eta}: every sampled item was filtered out, so there is nothing to train on. Relax the "
                f"filters (filter_strings, drop_identical, require_period) or sample more queries.")
        steps = self.cfg.steps_per_iteration[eta - 1]
        ckpt_dir = self.iteration_dir(eta) / "train"
        args = dataclasses.replace(self.args, output_dir=str(ckpt_dir), max_steps=steps)
        model, tok = self._train_model(eta)
        peft_config = self.peft_config()
        if self.cfg.max_train_items is not None and len(samples) > self.cfg.max_train_items:
            samples = samples.select(range(self.cfg.max_train_items))
        rows = training_rows(samples, self.cfg.task, self.cfg.prompt_format, shuffle=True, salt=eta)
        trainer = SAMITrainer(model, args, train_dataset=rows, processing_class=tok, peft_config=peft_config)
        last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        trainer.train(resume_from_checkpoint=last)
        trainer.save_model(str(out))
        if _state().is_main_process:
            tok.save_pretrained(out)
            (out / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
            (out / DONE).touch()
        _state().wait_for_everyone()
        del trainer, model
        gc.collect()

    def evaluate(self, eta: int) -> dict[str, Any]:
        """Stage 4: MI bound of iterate ``eta`` on held-out queries (and win rate vs base when a judge is set)."""
        from cmikit.sami.evaluate import evaluate_mi

        out = self.iteration_dir(eta) / "eval"
        summary_file = out / "summary.json"
        if (out / DONE).exists():
            summary = json.loads(summary_file.read_text())
            if self.cfg.judge_model and eta > 0 and "win_rate_vs_base" in summary:
                self._judge(eta, check_only=True)  # refuses a rerun with other judge settings
            elif self.cfg.judge_model and eta > 0:
                # A judge added to a finished run (e.g. rerun with --judge_model): judge the saved responses.
                summary["win_rate_vs_base"] = self._judge(eta)
                if _state().is_main_process:
                    summary_file.write_text(json.dumps(summary, indent=1))
            return summary
        backend = self._backend(eta)
        if not hasattr(backend, "model"):
            raise ConfigError("The MI bound needs the model's weights; evaluate with backend=transformers.")
        summary = evaluate_mi(backend, self.items_for(self.heldout, salt=10_000), out, self.cfg.task,
                              self.cfg.prompt_format, self._sampling(), self.args.logprob_reduction,
                              self.args.mask_eos, batch_size=self.cfg.eval_batch_size)
        del backend
        gc.collect()
        if self.cfg.judge_model and eta > 0:
            summary["win_rate_vs_base"] = self._judge(eta)
        if _state().is_main_process:
            summary_file.write_text(json.dumps(summary, indent=1))
            (out / DONE).touch()
        _state().wait_for_everyone()
        return summary

    def _judge_run(self, eta: int):
        """The judge folder of iteration ``eta`` opened as a run of its own (judge settings fingerprinted)."""
        from cmikit.harness.runs import model_identity, open_run

        length_ref = self.cfg.length_tokenizer or self.cfg.model
        settings = {"judge_model": self.cfg.judge_model, "judge_mode": self.cfg.judge_mode,
                    "judge_order": self.cfg.judge_order, "length_tokenizer": length_ref}
        return open_run(self.iteration_dir(eta) / "judge", "sami-iterate-judge", settings, keys=settings,
                        out_flag="--output_dir",
                        models={"judge": model_identity(self.cfg.judge_model),
                                "length_tokenizer": model_identity(length_ref)},
                        main_process=_state().is_main_process)

    def check_judges(self) -> None:
        """Refuse, before anything is written, a rerun whose judge settings differ from a judged iteration's."""
        if not self.cfg.judge_model:
            return
        for eta in range(1, self.cfg.iterations + 1):
            if (self.iteration_dir(eta) / "judge" / "run.json").is_file():
                with self._judge_run(eta):
                    pass

    def _judge(self, eta: int, check_only: bool = False) -> dict[str, Any] | None:
        from cmikit.harness.backends import make_backend
        from cmikit.harness.evaluation import read_jsonl
        from cmikit.sami.judge import judge_pairs, load_length_tokenizer

        base = {r["id"]: r for r in read_jsonl(self.iteration_dir(0) / "eval" / "records.jsonl")}
        cand = {r["id"]: r for r in read_jsonl(self.iteration_dir(eta) / "eval" / "records.jsonl")}
        pairs = []
        for k, r in cand.items():
            if k in base:
                from cmikit.sami.constitutions import Constitution

                pos = next(it for it in self.items_for(self.heldout, salt=10_000) if it["id"] == k)["statements"][0]
                pairs.append({"id": k, "query": r["query"], "constitution": Constitution(tuple(pos)).render(),
                              "candidate": r["responses"][0], "baseline": base[k]["responses"][0]})
        length_ref = self.cfg.length_tokenizer or self.cfg.model
        # The judge's settings are not part of the run's identity (a judge can be added to a finished run);
        # its own folder is, so a rerun with another judge, mode, order or length tokenizer is refused there.
        with self._judge_run(eta):
            _state().wait_for_everyone()
            if check_only:
                return None
            length_tok = load_length_tokenizer(length_ref, self.args.trust_remote_code)
            judge = make_backend(self.cfg.backend, self.cfg.judge_model,
                                 trust_remote_code=self.args.trust_remote_code)
            return judge_pairs(judge, pairs, self.iteration_dir(eta) / "judge", task=self.cfg.task,
                               mode=self.cfg.judge_mode, order=self.cfg.judge_order, length_tokenizer=length_tok,
                               length_unit=f"tokens:{length_ref}")

    # ------------------------------------------------------------------------------------- run
    def run(self, progress: bool = True) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {"iterations": []}
        results["iterations"].append({"iteration": 0, **self._brief(self.evaluate(0))})
        self._write(results)
        for eta in range(1, self.cfg.iterations + 1):
            samples = self.sample(eta)
            self.train(eta, samples)
            summary = self.evaluate(eta)
            results["iterations"].append({"iteration": eta, "n_train_items": len(samples),
                                          "steps": self.cfg.steps_per_iteration[eta - 1], **self._brief(summary)})
            self._write(results)
        return results

    @staticmethod
    def _brief(summary: dict[str, Any]) -> dict[str, Any]:
        out = {k: summary["metrics"][k] for k in ("mi_bound", "mi_bound_sum", "log_mean_mi", "accuracy",
                                                  "response_tokens_positive") if k in summary.get("metrics", {})}
        if "win_rate_vs_base" in summary:
            out["win_rate_vs_base"] = summary["win_rate_vs_base"]
        return out

    def _write(self, results: dict[str, Any]) -> None:
        if not _state().is_main_process:
            return
        (self.run_dir / "results.json").write_text(json.dumps(results, indent=1))
        plot_results(results, self.run_dir / "curves.png")


def plot_results(results: dict[str, Any], path: str | Path) -> None:
    """MI bound (and win rate vs base, when judged) over iterations, with bootstrap intervals, as a PNG."""
    from cmikit.harness.evaluation import plot_curves

    its = results["iterations"]
    curves = {}
    for key, label in (("mi_bound", "MI bound (held-out)"), ("mi_bound_sum", "MI bound, summed log-probs")):
        pts = [(r["iteration"], r[key]) for r in its if key in r]
        if pts:
            curves[label] = {"x": [p[0] for p in pts], "y": [p[1]["mean"] for p in pts],
                             "low": [p[1]["ci_low"] for p in pts], "high": [p[1]["ci_high"] for p in pts]}
    wins = [(r["iteration"], r["win_rate_vs_base"]) for r in its if "win_rate_vs_base" in r]
    for key, label in (("win_rate", "win rate vs base"), ("length_balanced_win_rate", "length-balanced win rate"),
                       ("soft_win_rate", "soft win rate vs base")):
        pts = [(w[0], w[1][key]) for w in wins if key in w[1]]
        if pts:
            curves[label] = {"x": [p[0] for p in pts], "y": [p[1]["mean"] for p in pts],
                             "low": [p[1]["ci_low"] for p in pts], "high": [p[1]["ci_high"] for p in pts]}
    if curves:
        plot_curves(curves, str(path), xlabel="iteration", ylabel="nats / win rate",
                    title="SAMI expert iteration")


# The settings that change a `sami iterate` run's results (the run identity, cmikit.harness.runs): IterateConfig's,
# SAMIConfig's own, and the TrainingArguments fields that change training. A new option that changes results
# belongs here. Everything else is recorded in run.json but does not refuse a resume: the output folder,
# --overwrite, logging, saving, Hub and tracker options, dataloader workers, batch sizes of sampling and
# evaluation (records are kept per query), trust_remote_code, the judge settings (the judge stage fingerprints
# its own folder, iteration-<eta>/judge/run.json, so a judge can be added later), and any field a newer
# transformers adds to TrainingArguments.
ITERATE_IDENTITY = (
    # IterateConfig
    "model", "task", "prompt_format", "queries", "query_split", "query_column", "queries_per_iteration",
    "max_train_items", "alternate_queries", "heldout_queries", "heldout_split", "n_heldout", "constitutions",
    "n_constitutions", "negatives", "iterations", "steps_per_iteration", "train_from", "use_lora", "lora_r",
    "lora_alpha", "lora_dropout", "lora_target_modules", "backend", "max_new_tokens", "temperature", "top_p",
    "filter_strings", "drop_identical", "require_period", "data_seed_offset",
    # SAMIConfig's own fields
    "logprob_reduction", "mask_eos", "max_completion_length", "layout", "pad_to_multiple_of", "model_dtype",
    "disable_dropout", "lr_zero_first_step", "last_microbatch_gradient_only", "schedule", "weight_decay_params",
    "model_init_kwargs",  # dtype, attn_implementation, revision of the model loaded for training
    # TrainingArguments: optimisation, schedule, precision, batching, seeds
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps", "learning_rate",
    "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim", "optim_args", "optim_target_modules",
    "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "label_smoothing_factor",
    "average_tokens_across_devices", "bf16", "fp16", "tf32", "gradient_checkpointing", "neftune_noise_alpha",
    "seed", "data_seed", "full_determinism", "dataloader_drop_last", "train_sampling_strategy", "use_liger_kernel",
    "torch_compile", "fsdp", "fsdp_config", "deepspeed",
)
SECRET_KEYS = ("hub_token",)


def run_config(cfg: IterateConfig, train_args: SAMIConfig) -> dict[str, Any]:
    """The resolved settings of a run (both dataclasses, secrets left out) as saved in ``run.json``."""
    from cmikit.harness.config import config_to_dict

    merged = {**config_to_dict(train_args), **config_to_dict(cfg)}
    return {k: v for k, v in merged.items() if k not in SECRET_KEYS}


def run_expert_iteration(cfg: IterateConfig, train_args: SAMIConfig) -> dict[str, Any]:
    """Run (or resume) the whole loop; see the module docstring.

    The run folder (``output_dir``) is opened with :func:`cmikit.harness.runs.open_run` by the main process: a rerun
    with other settings, data files or models is refused (``--overwrite`` starts over), and one run holds the
    folder at a time."""
    from cmikit.harness.runs import model_identity, open_run
    from cmikit.sami.checks import local_files

    loop = ExpertIteration(cfg, train_args)  # loads queries and constitutions: data errors before any model
    models = {"model": model_identity(cfg.model)}
    if not cfg.overwrite:
        loop.check_judges()  # a rerun with other judge settings is refused before anything is written
    files = local_files(cfg.queries, cfg.heldout_queries,
                        cfg.constitutions if cfg.constitutions != "builtin" else None)
    with open_run(train_args.output_dir, "sami-iterate", run_config(cfg, train_args), keys=ITERATE_IDENTITY,
                  files=files, models=models, overwrite=cfg.overwrite, main_process=_state().is_main_process,
                  out_flag="--output_dir"):
        _state().wait_for_everyone()  # other processes start once the main one holds the folder
        return loop.run()
