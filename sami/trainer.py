"""``SAMIConfig`` and ``SAMITrainer``: the SAMI objective as a ``transformers.Trainer`` (paper Sec. 3, Alg. 1).

Read it like TRL's ``DPOTrainer``: a dataset row is ``{"prompts": [p_1..p_C], "responses": [y_1..y_C]}``
where ``p_i`` is the prompt under constitution i (text, or chat messages) and ``y_j`` was sampled under
constitution j. :class:`SAMIDataCollator` expands each row to the C² (prompt_i, response_j) pairs,
:meth:`SAMITrainer.compute_loss` turns the model's log-probs into a [B, C, C] matrix and applies
:func:`cmikit.sami.loss.sami_loss`. Accelerate, FSDP, DeepSpeed, bf16, gradient checkpointing and accumulation
come from the Trainer; LoRA from ``peft_config``.

Two sequence layouts give the same matrix (a test checks it):

* ``padded`` (the straightforward one, as the reference code): C² right-padded sequences prompt_i+y_j;
  logits for every position.
* ``shared_prompt`` (default, faster): one row per (query, constitution) holding prompt_i once followed by
  all C responses; a 4D attention mask lets each response see the prompt and itself only, position ids
  restart after the prompt, and prompts are left-aligned to a common end so logits (the ``lm_head`` over
  the whole vocabulary) are computed only from the last prompt token on. That is C·|p| + C²·|y| tokens
  instead of C²·(|p| + |y|), and no vocabulary projection over prompts. Needs an attention implementation
  that accepts custom 4D masks (``sdpa`` or ``eager``; not ``flash_attention_2``).

Reference-code differences, as options: ``mask_eos`` (``true`` = released ``sami`` and research ``typo`` up to
2024-04, when the HH results were produced; ``typo`` from 2024-05 scores the first pad = EOS, i.e. trains EOS
on all but the longest of the C² sequences; here EOS is trained on every response by default),
``logprob_reduction`` (``mean`` = released code, ``sum`` = paper Eq. 2). Paper-era quirks of the research
code, off by default, for ablations: ``lr_zero_first_step`` (linear schedule with one warm-up step, so the
first optimiser step has lr 0, plus gradient clipping at 1.0), ``last_microbatch_gradient_only`` (gradients
zeroed before every micro-batch, so only the last one's survives accumulation) and ``schedule="reference"``
(the schedule spans the whole data with a floor step count; a last partial accumulation step is divided by
the full accumulation). With all three (and ``weight_decay=0.01``, ``weight_decay_params="all"``) the trainer
reproduces the research code's loop step for step (``tests/test_sami_reference.py``).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer
from trl.trainer.utils import disable_dropout_in_model, generate_model_card, get_config_model_id, pad

from cmikit.harness.backends import render_prompt
from cmikit.sami.config import DECAY_PARAMS, LAYOUTS, SCHEDULES, SAMIConfig  # noqa: F401 (re-exported)
from cmikit.sami.loss import SAMIInputError, reduce_token_logprobs, sami_loss, token_logprobs

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

CITATION = textwrap.dedent("""\
    @inproceedings{franken2024sami,
        title        = {{Self-Supervised Alignment with Mutual Information: Learning to Follow Principles without Preference Labels}},
        author       = {Jan-Philipp Fr{\\"a}nken and Eric Zelikman and Rafael Rafailov and Kanishk Gandhi and Tobias Gerstenberg and Noah D. Goodman},
        year         = 2024,
        booktitle    = {Advances in Neural Information Processing Systems 37 (NeurIPS 2024)},
        eprint       = {2404.14313},
        archivePrefix = {arXiv},
    }""")


# ----------------------------------------------------------------------------------------------- collator
def _pad_to(n: int, multiple: int | None) -> int:
    return n if not multiple else int(math.ceil(n / multiple) * multiple)


@dataclass
class SAMIDataCollator:
    """Tokenise SAMI rows and expand each to its C² (prompt_i, response_j) pairs.

    For every pair the prompt is tokenised alone and together with the response; the prompt's tokens must
    be a prefix of the joint tokens (otherwise a token merges across the boundary and the response's
    log-prob would silently include part of the prompt), else :class:`SAMIInputError`. The response's
    tokens are the joint tokens after the prompt, plus EOS unless ``mask_eos`` or the row's optional
    ``complete[j]`` is false (a response cut by the sampling length limit).

    Outputs for ``layout="padded"``: ``input_ids``, ``attention_mask``, ``completion_mask`` of shape
    [B·C², T], rows ordered (query, constitution i, response j), right-padded. For ``"shared_prompt"``:
    ``input_ids``, ``position_ids`` [B·C, T], ``attention_mask`` [B·C, 1, T, T] (bool, True = may attend),
    and ``score_index`` / ``score_target`` / ``score_segment`` [B·C, K] (which logit column predicts which
    response token of which response j; segment −1 = padding), ``logits_start`` (first column whose logits
    are needed). Both give ``n_constitutions``.
    """

    tokenizer: Any
    layout: str = "shared_prompt"
    mask_eos: bool = False
    max_completion_length: int | None = None
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise SAMIInputError(f"layout={self.layout!r}; allowed: {', '.join(LAYOUTS)}.")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.mask_eos and self.tokenizer.eos_token_id is None:
            raise SAMIInputError("The tokenizer has no EOS token to train; pass mask_eos=True.")

    # -------------------------------------------------------------------------------- tokenisation
    def _tokenize(self, text: str, plain: bool) -> list[int]:
        # Chat templates write their own BOS; plain prompts get the tokenizer's default special tokens.
        ids = self.tokenizer(text, add_special_tokens=plain)["input_ids"]
        if plain and self.tokenizer.eos_token_id is not None and ids and ids[-1] == self.tokenizer.eos_token_id \
                and len(ids) > 1:
            ids = ids[:-1]  # tokenizers that append EOS by default: the prompt must stay open
        return list(ids)

    def encode_pair(self, prompt: Any, response: str, complete: bool = True) -> tuple[list[int], list[int], bool]:
        """Return (prompt_ids, completion_ids, completion_trained_eos) for one pair; checks the prefix property.

        ``complete=False`` marks a response cut by the sampling length limit: it gets no EOS (the model must
        not learn to stop there)."""
        plain = isinstance(prompt, str)
        text = render_prompt(self.tokenizer, prompt)
        prompt_ids = self._tokenize(text, plain)
        full_ids = self._tokenize(text + response, plain)
        if full_ids[: len(prompt_ids)] != prompt_ids:
            k = next(i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b) \
                if any(a != b for a, b in zip(prompt_ids, full_ids)) else min(len(prompt_ids), len(full_ids))
            raise SAMIInputError(
                f"The tokenised prompt is not a prefix of the tokenised prompt+response: a token merges across "
                f"the boundary at prompt token {k} (prompt ends {text[-20:]!r}, response starts {response[:20]!r}). "
                f"The response's log-prob would include part of the prompt. End prompts with whitespace or a "
                f"delimiter the tokenizer cannot merge, or start responses with a space."
            )
        completion = full_ids[len(prompt_ids):]
        truncated = self.max_completion_length is not None and len(completion) >= self.max_completion_length
        if truncated:
            completion = completion[: self.max_completion_length]
        with_eos = not self.mask_eos and not truncated and complete
        if with_eos:
            completion = completion + [self.tokenizer.eos_token_id]
        if not completion:
            raise SAMIInputError(f"Empty response after tokenisation (response {response!r}); filter empty responses.")
        return prompt_ids, completion, with_eos

    def _check_rows(self, rows: Sequence[dict[str, Any]]) -> int:
        if not rows:
            raise SAMIInputError("Empty batch.")
        sizes = set()
        for r in rows:
            if "prompts" not in r or "responses" not in r:
                raise SAMIInputError(f"A SAMI row needs 'prompts' and 'responses' lists; got keys {sorted(r)}.")
            if len(r["prompts"]) != len(r["responses"]):
                raise SAMIInputError(
                    f"A row has {len(r['prompts'])} prompts but {len(r['responses'])} responses; SAMI needs one "
                    f"response per constitution (a square C×C matrix)."
                )
            sizes.add(len(r["prompts"]))
        if len(sizes) != 1:
            raise SAMIInputError(f"Rows in one batch have different numbers of constitutions {sorted(sizes)}.")
        c = sizes.pop()
        if c < 2:
            raise SAMIInputError(f"SAMI needs C >= 2 constitutions per query; got C = {c}.")
        return c

    # ------------------------------------------------------------------------------------- layouts
    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        n_const = self._check_rows(rows)
        # encoded[b][i] = (prompt_ids, [completion_ids_j for j])
        encoded = []
        for r in rows:
            per_const = []
            complete = r.get("complete") or [True] * len(r["responses"])
            for prompt in r["prompts"]:
                pairs = [self.encode_pair(prompt, y, c) for y, c in zip(r["responses"], complete)]
                per_const.append((pairs[0][0], [c for _, c, _ in pairs]))
            encoded.append(per_const)
        if self.layout == "padded":
            batch = self._padded(encoded)
        else:
            batch = self._shared(encoded, n_const)
        batch["n_constitutions"] = n_const
        return batch

    def _padded(self, encoded) -> dict[str, Any]:
        seqs, masks = [], []
        for per_const in encoded:
            for prompt_ids, completions in per_const:
                for comp in completions:
                    seqs.append(torch.tensor(prompt_ids + comp))
                    masks.append(torch.tensor([0] * len(prompt_ids) + [1] * len(comp)))
        multiple = self.pad_to_multiple_of
        return {
            "input_ids": pad(seqs, padding_value=self.tokenizer.pad_token_id, pad_to_multiple_of=multiple),
            "attention_mask": pad([torch.ones_like(x) for x in seqs], padding_value=0, pad_to_multiple_of=multiple),
            "completion_mask": pad(masks, padding_value=0, pad_to_multiple_of=multiple),
        }

    # Built by hand, not with trl's ``pad``: prompts are left-aligned to a common end column and C responses follow
    # in one row, with a 4D block mask and restarted position ids, a layout TRL has no helper for.
    def _shared(self, encoded, n_const: int) -> dict[str, Any]:
        rows = [(p, comps) for per_const in encoded for p, comps in per_const]
        prompt_end = max(len(p) for p, _ in rows)
        width = _pad_to(max(prompt_end + sum(len(c) for c in comps) for _, comps in rows), self.pad_to_multiple_of)
        n_score = max(sum(len(c) for c in comps) for _, comps in rows)
        n = len(rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        segment = torch.full((n, width), -2, dtype=torch.long)  # -2 pad, -1 prompt, j response j
        score_index = torch.full((n, n_score), prompt_end - 1, dtype=torch.long)
        score_target = torch.full((n, n_score), pad, dtype=torch.long)
        score_segment = torch.full((n, n_score), -1, dtype=torch.long)
        for r, (p, comps) in enumerate(rows):
            start = prompt_end - len(p)  # left-pad so every prompt ends at column prompt_end - 1
            input_ids[r, start:prompt_end] = torch.tensor(p)
            position_ids[r, start:prompt_end] = torch.arange(len(p))
            segment[r, start:prompt_end] = -1
            col, k = prompt_end, 0
            for j, comp in enumerate(comps):
                m = len(comp)
                input_ids[r, col : col + m] = torch.tensor(comp)
                position_ids[r, col : col + m] = torch.arange(len(p), len(p) + m)
                segment[r, col : col + m] = j
                # Token t of response j is predicted by the logits at the previous token of the same response,
                # and its first token by the logits at the prompt's last token.
                score_index[r, k] = prompt_end - 1
                score_index[r, k + 1 : k + m] = torch.arange(col, col + m - 1)
                score_target[r, k : k + m] = torch.tensor(comp)
                score_segment[r, k : k + m] = j
                col, k = col + m, k + m
        q_seg = segment[:, :, None]
        k_seg = segment[:, None, :]
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        allowed = causal & (k_seg != -2) & ((k_seg == -1) | (k_seg == q_seg))
        allowed |= torch.eye(width, dtype=torch.bool)  # padding attends to itself (no empty softmax rows)
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "attention_mask": allowed[:, None],
            "score_index": score_index,
            "score_target": score_target,
            "score_segment": score_segment,
            "logits_start": prompt_end - 1,
        }


# ---------------------------------------------------------------------------------------------- matrix
def logprob_matrix(model: Any, batch: dict[str, Any], reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on a collated batch; return the [B, C, C] log-prob matrix and the response lengths [B, C]."""
    n_const = int(batch["n_constitutions"])
    if "score_index" not in batch:  # padded layout: every position's logits, shifted labels
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        labels = batch["input_ids"][:, 1:]
        mask = batch["completion_mask"][:, 1:]
        token_lp = token_logprobs(logits[:, :-1], labels)
        matrix = reduce_token_logprobs(token_lp, mask, reduction).view(-1, n_const, n_const)
        lengths = mask.sum(-1).view(-1, n_const, n_const)[:, 0, :]
        return matrix, lengths
    start = int(batch["logits_start"])
    width = batch["input_ids"].shape[1]
    mask = batch["attention_mask"]
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa") or "sdpa"
    if "flash" in impl:
        raise SAMIInputError(
            f"layout='shared_prompt' needs custom 4D attention masks, which {impl} does not take; load the model "
            f"with attn_implementation='sdpa' or use layout='padded'."
        )
    if impl != "sdpa":  # eager and friends add the mask to the scores
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
                use_cache=False, logits_to_keep=width - start)
    logits = out.logits  # [N, width - start, V]
    index = (batch["score_index"] - start).clamp_min(0)
    picked = torch.gather(logits, 1, index[..., None].expand(-1, -1, logits.shape[-1]))
    token_lp = token_logprobs(picked, batch["score_target"])
    seg = batch["score_segment"]
    valid = seg >= 0
    n_rows = seg.shape[0]
    sums = torch.zeros((n_rows, n_const), dtype=token_lp.dtype, device=token_lp.device)
    sums = sums.scatter_add(1, seg.clamp_min(0), token_lp * valid)
    counts = torch.zeros_like(sums).scatter_add(1, seg.clamp_min(0), valid.to(sums.dtype))
    if reduction == "mean":
        sums = sums / counts.clamp_min(1)
    return sums.view(-1, n_const, n_const), counts.view(-1, n_const, n_const)[:, 0, :]


# ------------------------------------------------------------------------------------------------ model
def sharded_launch() -> bool:
    """True under an FSDP or DeepSpeed ``accelerate launch``: the Trainer then shards a CPU-loaded model."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or \
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


MODEL_INIT_KEYS = ("dtype", "attn_implementation", "revision", "device_map", "trust_remote_code")


def load_policy(model_id: str, args: SAMIConfig, quantization_config: Any = None) -> tuple[Any, Any]:
    """Load the model to train and its tokenizer from a reference string (alias, Hub id, folder, .gguf).

    The one loading path of :class:`SAMITrainer` (``model`` given as a string) and of ``sami iterate``:
    ``args.model_init_kwargs`` as DPO's (a ``dtype`` there wins over ``args.model_dtype``; other keys go to
    ``from_pretrained``), ``args.trust_remote_code``, and placement: under FSDP / DeepSpeed on the CPU (the
    Trainer shards it), otherwise on this process's device (for k-bit weights too: that is what TRL's former
    ``get_kbit_device_map`` returned, so no helper is needed) unless ``device_map`` is given.
    """
    from cmikit.harness.models import load_model

    kwargs = dict(args.model_init_kwargs or {})
    if quantization_config is not None and kwargs.get("quantization_config") is not None:
        raise SAMIInputError("quantization_config is given both to SAMITrainer and in model_init_kwargs; give it once "
                             "(preferably to the trainer).")
    quantization_config = quantization_config or kwargs.pop("quantization_config", None)
    dtype = kwargs.pop("dtype", None) or args.model_dtype
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    trust = bool(kwargs.pop("trust_remote_code", args.trust_remote_code))
    device_map = kwargs.pop("device_map", None) or "accelerate"
    if sharded_launch():
        device_map = "cpu"
    model, tokenizer = load_model(model_id, dtype=dtype, device_map=device_map, eval_mode=False,
                                  trust_remote_code=trust, attn_implementation=kwargs.pop("attn_implementation", None),
                                  revision=kwargs.pop("revision", None), quantization_config=quantization_config,
                                  model_kwargs=kwargs)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------- trainer
class SAMITrainer(Trainer):
    """Trainer for SAMI (see the module docstring), with ``trl.DPOTrainer``'s arguments and order.

    Args:
        model: a model, a ``PeftModel``, or a reference string (alias, Hub id, folder, .gguf) loaded with
            ``args.model_init_kwargs`` by :func:`load_policy`.
        args: :class:`SAMIConfig` (default: ``SAMIConfig("<model name>-SAMI")``).
        data_collator: default :class:`SAMIDataCollator` with the config's layout and EOS settings.
        train_dataset / eval_dataset: rows ``{"prompts": [...C], "responses": [...C]}``.
        processing_class: the tokenizer; ``None``: loaded from the model.
        compute_metrics, callbacks, optimizers: as ``transformers.Trainer``.
        quantization_config: a ``BitsAndBytesConfig`` for a model given as a string (QLoRA with ``peft_config``).
        peft_config: a ``peft`` config (e.g. ``LoraConfig``) to train an adapter instead of all weights.
    """

    _tag_names = ["trl", "sami"]
    _name = "SAMI"
    _paper = {"title": "Self-Supervised Alignment with Mutual Information: Learning to Follow Principles without "
                       "Preference Labels", "id": "2404.14313", "citation": CITATION}

    def __init__(self, model: str | PreTrainedModel | PeftModel, args: SAMIConfig | None = None,
                 data_collator: Any = None, train_dataset: Any = None, eval_dataset: Any = None,
                 processing_class: PreTrainedTokenizerBase | None = None, compute_metrics: Any = None,
                 callbacks: list | None = None, optimizers: tuple = (None, None),
                 quantization_config: BitsAndBytesConfig | None = None, peft_config: PeftConfig | None = None) -> None:
        if args is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config) or "model"
            args = SAMIConfig(f"{name.rstrip('/').split('/')[-1]}-SAMI")
        self._base_model_id = None
        if isinstance(model, str):
            from transformers import set_seed

            from cmikit.harness.models import resolve_model_ref

            resolved = resolve_model_ref(model)
            if resolved.kind in ("hub", "embedded"):
                self._base_model_id = resolved.path  # the Hub id (also of an alias), for the model card
            set_seed(args.seed)  # a new LoRA adapter's initial weights depend on the seed (as DPOTrainer)
            model, tokenizer = load_policy(model, args, quantization_config)
            processing_class = processing_class or tokenizer
        elif quantization_config is not None:
            raise SAMIInputError("quantization_config applies when the model is loaded from a string; this model is "
                                 "already instantiated (pass its reference instead, or quantise it yourself).")
        if processing_class is None:
            from transformers import AutoTokenizer

            processing_class = AutoTokenizer.from_pretrained(get_config_model_id(model.config),
                                                             trust_remote_code=args.trust_remote_code)
        if peft_config is not None:
            from peft import get_peft_model, prepare_model_for_kbit_training

            if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
                model = prepare_model_for_kbit_training(
                    model, use_gradient_checkpointing=args.gradient_checkpointing)
            elif args.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
            model = get_peft_model(model, peft_config)
        if args.disable_dropout:
            disable_dropout_in_model(model)
        if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
            raise SAMIInputError("The training dataset is empty; sample responses first (or relax the filters).")
        data_collator = data_collator or SAMIDataCollator(
            processing_class, layout=args.layout, mask_eos=args.mask_eos,
            max_completion_length=args.max_completion_length, pad_to_multiple_of=args.pad_to_multiple_of)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         compute_metrics=compute_metrics, callbacks=callbacks, optimizers=optimizers)
        # compute_loss returns a per-batch mean; let the Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    # ------------------------------------------------------------------------------------- model card
    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None, output_dir: str | None = None) -> None:
        """Write ``README.md`` with TRL's model-card generator: tags ``trl``, ``sami`` and the paper's citation.

        Written by this method rather than by subclassing TRL's private ``_BaseTrainer`` (which also does this, plus
        telemetry and loss-scaling switches this trainer does not want); the card itself is TRL's."""
        if not self.is_world_process_zero():
            return
        base = getattr(self, "_base_model_id", None) or get_config_model_id(self.model.config)
        base_model = base if base and not os.path.isdir(base) else None
        tags = {tags} if isinstance(tags, str) else set(tags or ())
        tags.update(self._tag_names)
        card = generate_model_card(
            base_model=base_model, model_name=model_name or os.path.basename(os.path.normpath(self.args.output_dir)),
            hub_model_id=getattr(self, "hub_model_id", None), dataset_name=dataset_name,
            tags=sorted(tags), wandb_url=None, trackio_url=None, trainer_name=self._name,
            trainer_citation=self._paper["citation"], paper_title=self._paper["title"], paper_id=self._paper["id"])
        card.save(os.path.join(output_dir or self.args.output_dir, "README.md"))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if not _internal_call:  # a user's save (not a checkpoint): the folder gets its card
            self.create_model_card(output_dir=output_dir)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # As TRL's trainers: the run folder's card is refreshed at every checkpoint.
        self.create_model_card(model_name=self.args.hub_model_id.split("/")[-1] if self.args.hub_model_id else None)
        super()._save_checkpoint(model, trial)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        matrix, lengths = logprob_matrix(model, inputs, self.args.logprob_reduction)
        out = sami_loss(matrix)
        mode = "train" if model.training else "eval"
        stats = torch.stack([out.loss_row, out.loss_col, out.mi_bound, out.accuracy_row, out.accuracy_col,
                             matrix.diagonal(dim1=-2, dim2=-1).mean(), lengths.float().mean()]).detach()
        stats = self.accelerator.gather_for_metrics(stats[None]).mean(0)
        names = ["loss_row", "loss_col", "mi_bound", "accuracy_row", "accuracy_col", "logps_diag",
                 "completion_length"]
        for name, value in zip(names, stats.tolist()):
            self._metrics[mode][name].append(value)
        return (out.loss, {"logprob_matrix": matrix}) if return_outputs else out.loss

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if self.args.last_microbatch_gradient_only and self.optimizer is not None:
            self.optimizer.zero_grad()  # research-code quirk: earlier micro-batches' gradients are discarded
        if self.args.schedule == "reference":
            # The reference divides every micro-batch's loss by the full accumulation, also in a last partial
            # step; the returned value (only used for the logged loss) is rescaled to the step's real average.
            actual = self.current_gradient_accumulation_steps
            full = self.args.gradient_accumulation_steps
            self.current_gradient_accumulation_steps = full
            try:
                loss = super().training_step(model, inputs, num_items_in_batch)
            finally:
                self.current_gradient_accumulation_steps = actual
            return loss * (full / actual)
        return super().training_step(model, inputs, num_items_in_batch)

    # ------------------------------------------------------------------------- schedule and optimiser
    def set_initial_training_values(self, args: Any, dataloader: Any):
        self._micro_batches_per_epoch = len(dataloader) if hasattr(dataloader, "__len__") else None
        return super().set_initial_training_values(args, dataloader)

    def reference_schedule_steps(self) -> int:
        """The research code's schedule length: floor(micro-batches per process × epochs / accumulation)."""
        n = getattr(self, "_micro_batches_per_epoch", None)
        if n is None:
            raise SAMIInputError("schedule=reference needs a training dataset with a length.")
        return int(n * self.args.num_train_epochs) // self.args.gradient_accumulation_steps

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None):
        if self.args.schedule == "reference" and self.lr_scheduler is None:
            num_training_steps = self.reference_schedule_steps()
        return super().create_scheduler(num_training_steps, optimizer)

    def get_decay_parameter_names(self, model: Any) -> list[str]:
        if self.args.weight_decay_params == "all":  # reference: torch AdamW(model.parameters()) decays everything
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: Any = None):
        """Loss; for ``compute_metrics`` also the [B, C, C] log-prob matrix as predictions and the diagonal as labels
        (``label_ids[b, i] = i``: constitution i's own response is response i)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only or self.compute_metrics is None:
            return loss.detach(), None, None
        matrix = outputs["logprob_matrix"].detach()
        labels = torch.arange(matrix.shape[-1], device=matrix.device).expand(matrix.shape[:-1])
        return loss.detach(), matrix, labels

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        logs = {**logs, **metrics}
        super().log(logs, start_time)
        self._metrics[mode].clear()
