"""One SAMI training round, shaped like TRL's ``trl/scripts/dpo.py``: parse, load the data, train, evaluate, save, push.

    python scripts/sami.py --model_name_or_path smollm2-135m-instruct --dataset_name rows.jsonl \\
        --output_dir runs/sami-round --max_steps 2 --learning_rate 1e-5 [--use_peft --lora_r 16]
    python scripts/sami.py --config configs/sami/smollm2-round.yaml
    accelerate launch --config_file $TRL_CONFIGS/multi_gpu.yaml scripts/sami.py --config ...   # DDP
    accelerate launch --config_file $TRL_CONFIGS/fsdp2.yaml scripts/sami.py --config ...       # FSDP2
    accelerate launch --config_file $TRL_CONFIGS/zero3.yaml scripts/sami.py --config ...       # DeepSpeed ZeRO-3

where ``TRL_CONFIGS=$(python -c "import pathlib, trl; print(pathlib.Path(trl.__file__).parent / 'accelerate_configs')")``
(the accelerate configs TRL ships: single_gpu, multi_gpu, fsdp1, fsdp2, zero1, zero2, zero3). On a CPU-only
machine, several processes: ``accelerate launch --multi_gpu --num_processes 2`` (gloo).

Options: ``ScriptArguments`` (``--dataset_name``: a Hub dataset, a local .json/.jsonl/.csv/.parquet file or a
``save_to_disk`` folder; splits), :class:`~cmikit.sami.config.SAMIConfig` (every ``TrainingArguments`` key plus
SAMI's) and TRL's ``ModelConfig`` (``--model_name_or_path`` — an alias such as ``smollm2-135m-instruct``, Hub id,
folder or .gguf —, ``--dtype``, ``--attn_implementation``, ``--use_peft``, ``--lora_*``, ``--load_in_4bit``), all
also as keys of ``--config file.yaml``. The data is rows of (constitution, query, response), grouped by query
(C rows per query, in constitution order), or ready SAMI rows with ``prompts`` and ``responses`` lists.

The whole expert-iteration loop (sample with the previous iterate, train this round, evaluate) is
``sami iterate`` / ``scripts/train_sami.py``, around the same trainer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, TrlParser


@dataclass
class SAMIScriptArguments(ScriptArguments):
    """TRL's ``ScriptArguments`` plus how (constitution, query, response) rows become prompts."""

    task: str = field(default="dialogue", metadata={"help": "dialogue or summarization (the prompt template)"})
    prompt_format: str = field(default="chat", metadata={"help": "chat (instruct models) or plain (base models)"})
    constitution_column: str = field(default="constitution", metadata={"help": "column of the constitution text"})
    query_column: str = field(default="query", metadata={"help": "column of the query"})
    response_column: str = field(default="response", metadata={"help": "column of the response"})


def make_parser() -> TrlParser:
    from cmikit.sami.config import SAMIConfig

    return TrlParser((SAMIScriptArguments, SAMIConfig, ModelConfig))


def load_data(script_args: SAMIScriptArguments):
    """``--dataset_name`` as a ``DatasetDict``: a local file, a ``save_to_disk`` folder or a Hub dataset."""
    import datasets

    from cmikit.harness.errors import ConfigError

    name = script_args.dataset_name
    if not name:
        raise ConfigError("--dataset_name is required: a Hub dataset, a .json/.jsonl/.csv/.parquet file or a "
                          "save_to_disk folder of (constitution, query, response) rows.")
    path = Path(name)
    formats = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
    try:
        if path.is_file():
            if path.suffix not in formats:
                raise ConfigError(f"--dataset_name {name}: unknown file type {path.suffix!r}; use one of "
                                  f"{', '.join(formats)}.")
            data = datasets.load_dataset(formats[path.suffix], data_files=str(path))
        elif path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()):
            data = datasets.load_from_disk(str(path))
        else:
            data = datasets.load_dataset(name, name=script_args.dataset_config,
                                         streaming=script_args.dataset_streaming)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"Could not load --dataset_name {name}: {err}") from err
    if isinstance(data, (datasets.Dataset, datasets.IterableDataset)):
        data = datasets.DatasetDict({script_args.dataset_train_split: data})
    return data


def sami_rows(split, script_args: SAMIScriptArguments):
    from cmikit.sami.sampling import rows_from_triples

    if {"prompts", "responses"} <= set(split.column_names):
        return split
    return rows_from_triples(split, script_args.task, script_args.prompt_format, script_args.constitution_column,
                             script_args.query_column, script_args.response_column)


def main(script_args: SAMIScriptArguments, training_args, model_args: ModelConfig) -> None:
    from accelerate import PartialState
    from trl import get_peft_config, get_quantization_config

    from cmikit.harness.errors import ConfigError
    from cmikit.sami.prompts import check_task_format
    from cmikit.sami.trainer import SAMITrainer

    check_task_format(script_args.task, script_args.prompt_format)
    if not model_args.model_name_or_path:
        raise ConfigError("--model_name_or_path is required (an alias such as smollm2-135m-instruct, a Hub id, a "
                          "folder or a .gguf file).")
    model_init_kwargs = {"revision": model_args.model_revision, "attn_implementation": model_args.attn_implementation,
                         "dtype": model_args.dtype}
    model_init_kwargs = {k: v for k, v in model_init_kwargs.items() if v is not None and v != "main"}
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    data = load_data(script_args)
    if script_args.dataset_train_split not in data:
        raise ConfigError(f"--dataset_train_split {script_args.dataset_train_split!r} is not in the dataset "
                          f"(splits: {', '.join(data)}).")
    with PartialState().main_process_first():
        train = sami_rows(data[script_args.dataset_train_split], script_args)
        evaluate = training_args.eval_strategy != "no" and script_args.dataset_test_split in data
        eval_rows = sami_rows(data[script_args.dataset_test_split], script_args) if evaluate else None

    trainer = SAMITrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train,
        eval_dataset=eval_rows,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    if script_args.ignore_bias_buffers:  # as trl/scripts/dpo.py: DDP skips boolean buffers
        import torch

        trainer.model._ddp_params_and_buffers_to_ignore = [
            name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool]
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if eval_rows is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish the trackers, destroy the process group
        trainer.end()


def cli(argv: list[str] | None = None) -> int:
    """Parse (``--config`` YAML plus overrides) and run inside the error boundary (one ``error:`` line, exit 2)."""
    from cmikit.harness.cli import run_cli
    from cmikit.harness.errors import ConfigError

    def run() -> int:
        try:
            script_args, training_args, model_args = make_parser().parse_args_and_config(
                args=sys.argv[1:] if argv is None else argv)
        except (ValueError, TypeError, FileNotFoundError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"Bad configuration: {err}") from err
        main(script_args, training_args, model_args)
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(cli())
