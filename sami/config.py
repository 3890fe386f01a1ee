"""``SAMIConfig``: the trainer's settings (a ``transformers.TrainingArguments``), in a module of its own so that
the command line can parse and check them without importing the Trainer (start-up errors stay fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from cmikit.harness.config import check_at_least, check_choice
from cmikit.harness.errors import ConfigError
from cmikit.sami.loss import REDUCTIONS

LAYOUTS = ("shared_prompt", "padded")
SCHEDULES = ("steps", "reference")
DECAY_PARAMS = ("no_bias_norm", "all")


@dataclass
class SAMIConfig(TrainingArguments):
    r"""Configuration for :class:`SAMITrainer`; only SAMI-specific fields are listed, the rest are
    ``transformers.TrainingArguments``. Defaults follow the released SAMI code unless stated.

    Parameters:
        > Objective

        logprob_reduction (`str`, defaults to `"mean"`):
            How a response's token log-probs become one entry of the C×C matrix: `"mean"` (released code) or
            `"sum"` (the sequence log-prob of the paper's Eq. 2).
        mask_eos (`bool`, defaults to `False`):
            Do not train the end-of-sequence token, as the released ``sami`` code and the research code ``typo``
            up to 2024-04 (when the HH results were produced; generation stops by string matching). ``typo``
            from 2024-05 scores the first pad token (= EOS) after each response, which trains EOS on every
            sequence except the longest of the C² (it gets no pad). By default the EOS token is appended to
            every response and trained, so the model learns to stop.

        > Data

        max_completion_length (`int` or `None`, defaults to `None`):
            Truncate each response to this many tokens (the EOS is then not appended).
        layout (`str`, defaults to `"shared_prompt"`):
            `"shared_prompt"` (prompt once per constitution, 4D mask, logits on responses only) or `"padded"`
            (C² independent padded sequences, the straightforward layout). Both give the same loss.
        pad_to_multiple_of (`int` or `None`, defaults to `None`):
            Pad sequence length to a multiple of this (for compiled or TPU kernels).

        > Model (as ``trl.DPOConfig``)

        model_init_kwargs (`dict`, `str` or `None`, defaults to `None`):
            Keyword arguments for loading the model when `SAMITrainer` gets a reference string (alias, Hub id,
            folder, .gguf): `dtype`, `attn_implementation`, `revision`, `device_map`, `trust_remote_code`, as
            DPO's. A `dtype` here wins over `model_dtype`. Under FSDP / DeepSpeed the model is loaded on the CPU
            for the Trainer to shard, whatever `device_map` says.
        trust_remote_code (`bool`, defaults to `False`):
            Allow modelling code from the checkpoint (model and tokenizer), as DPO's.
        model_dtype (`str`, defaults to `"fp32"`):
            Weight dtype when `model` is given as a reference string: `fp32` masters with `--bf16 true` autocast
            (recommended; pure bf16 weights lose updates of size ~lr to rounding) or `bf16` / `auto`.
        disable_dropout (`bool`, defaults to `True`):
            Set every dropout probability to 0 (``trl.trainer.utils.disable_dropout_in_model``).

        > Paper-era quirks (research code ``typo``; off by default)

        lr_zero_first_step (`bool`, defaults to `False`):
            Linear schedule with one warm-up step (the first optimiser step has lr 0) and gradient clipping at
            1.0, as the research code's ``get_scheduler("linear", num_warmup_steps=1)``.
        last_microbatch_gradient_only (`bool`, defaults to `False`):
            Zero the gradients before every micro-batch, so only the last micro-batch's gradient (scaled by
            1/accumulation) reaches the optimiser: the research code's effective batch of one query per rank.

        > Schedule and optimiser

        schedule (`str`, defaults to `"steps"`):
            `"steps"` (transformers): the learning-rate schedule spans this run's `max_steps`, and a last
            partial accumulation step is averaged over the micro-batches it has. `"reference"` (research code
            ``typo``): the schedule spans `floor(micro-batches per process × num_train_epochs /
            gradient_accumulation_steps)` optimiser steps, i.e. the whole data, whatever `max_steps` stops the
            run at (the reference takes its iterates as checkpoints partway through that schedule), and a last
            partial step divides by the full `gradient_accumulation_steps`.
        weight_decay_params (`str`, defaults to `"no_bias_norm"`):
            Which parameters `weight_decay` applies to: `"no_bias_norm"` (transformers: not biases and norm
            weights) or `"all"` (torch ``AdamW(model.parameters())`` as the reference, whose default
            `weight_decay` is 0.01; set `weight_decay: 0.01` with it).

    Changed ``TrainingArguments`` defaults: ``learning_rate=5e-7`` (paper), ``lr_scheduler_type="constant"``
    and ``max_grad_norm=0`` (released code: no schedule, no clipping), ``num_train_epochs=1`` (reference
    ``n_epochs``), ``logging_steps=1``, ``remove_unused_columns=False``, ``save_strategy="no"``. The default
    ``weight_decay`` stays 0.0 (the reference's torch AdamW default is 0.01 on every parameter: use
    ``weight_decay: 0.01`` and ``weight_decay_params: all``).
    """

    # Lets TrainingArguments turn a JSON string (command line, YAML) into a dict, as DPOConfig does.
    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "model_init_kwargs"]

    logprob_reduction: str = field(default="mean", metadata={"help": "mean (released code) or sum (paper Eq. 2)"})
    mask_eos: bool = field(default=False, metadata={"help": "do not train EOS (reference behaviour)"})
    max_completion_length: int | None = field(default=None, metadata={"help": "truncate responses (tokens)"})
    layout: str = field(default="shared_prompt", metadata={"help": "shared_prompt or padded"})
    pad_to_multiple_of: int | None = field(default=None, metadata={"help": "pad length to a multiple"})
    model_init_kwargs: dict[str, Any] | str | None = field(default=None, metadata={
        "help": "keyword arguments for loading a model given as a string (dtype, attn_implementation, revision, "
                "device_map, trust_remote_code), as DPOConfig"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow modelling code from the checkpoint"})
    model_dtype: str = field(default="fp32", metadata={"help": "weights dtype when model is a reference"})
    disable_dropout: bool = field(default=True, metadata={"help": "set dropout probabilities to 0"})
    lr_zero_first_step: bool = field(default=False, metadata={"help": "paper-era quirk: first step at lr 0"})
    last_microbatch_gradient_only: bool = field(
        default=False, metadata={"help": "paper-era quirk: keep only the last micro-batch's gradient"})

    schedule: str = field(default="steps", metadata={
        "help": "steps (schedule spans max_steps) or reference (spans the whole data, floor step count, last "
                "partial step scaled by the full accumulation, as the research code)"})
    weight_decay_params: str = field(default="no_bias_norm", metadata={
        "help": "weight decay on no_bias_norm (transformers) or all parameters (reference torch AdamW)"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs (reference n_epochs: 1)"})
    learning_rate: float = field(default=5e-7, metadata={"help": "AdamW learning rate (paper: 5e-7)"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "learning-rate schedule"})
    max_grad_norm: float = field(default=0.0, metadata={"help": "gradient clipping (0 = off, released code)"})
    logging_steps: float = field(default=1, metadata={"help": "log every N steps"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep the prompts/responses columns"})
    save_strategy: str = field(default="no", metadata={"help": "checkpointing strategy: no, steps, epoch"})

    def __post_init__(self) -> None:
        check_choice("logprob_reduction", self.logprob_reduction, REDUCTIONS)
        check_choice("layout", self.layout, LAYOUTS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("weight_decay_params", self.weight_decay_params, DECAY_PARAMS)
        check_at_least("max_completion_length", self.max_completion_length, 1, allow_none=True)
        for key in ("learning_rate", "weight_decay", "max_grad_norm", "num_train_epochs"):
            check_at_least(key, getattr(self, key), 0.0)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"--max_steps {self.max_steps}: must be >= 1 (or -1 for num_train_epochs).")
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            check_at_least(key, getattr(self, key), 1)
        if self.lr_zero_first_step:
            self.lr_scheduler_type = "linear"
            self.warmup_steps = 1
            self.max_grad_norm = 1.0
        super().__post_init__()
