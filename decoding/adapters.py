"""Model adapters: what the decoding loop needs from a model, and nothing else.

The loop asks an adapter for five things (brief §3.4): a forward pass with **bidirectional** attention over a
left-padded canvas, the **mask token id**, the **logit shift** (Dream: logits at i-1 predict token i; LLaDA:
none), the **EOS / EoT ids** (for optional suppression), and the **context length** (checked up front).
:func:`adapt` picks the convention from the model and its config:

========================================  ==================================  =====================
model                                     attention given to ``forward``      logits
========================================  ==================================  =====================
LLaDA remote code (``model_type=llada``)  2D key mask (``None`` if no pads)   unshifted
Dream remote code (``model_type=Dream``)  4D bool mask + position ids         shifted (``cat``)
``config.is_bidirectional`` checkpoints   4D bool mask + position ids         ``config.shift_logits``
BERT-style ``*ForMaskedLM``               2D key mask                         unshifted
stock ``*ForCausalLM`` (opt in)           4D bool mask + position ids         ``shift_logits`` arg
========================================  ==================================  =====================

A stock causal class without ``bidirectional=True`` is refused: it would attend causally and produce
garbage for a masked-diffusion loop. The 4D mask comes from :func:`harness.testing.bidirectional_attention_mask`
(one implementation for the whole toolkit): transformers passes a user 4D mask through unchanged, which
turns a causal decoder bidirectional.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class AdapterError(ValueError):
    """The model cannot be driven by the masked-diffusion loop as given; the message says what to pass."""


def _first(*values):
    for v in values:
        if v is not None:
            return v
    return None


def _as_id_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


@dataclass
class DiffusionModelAdapter:
    """A model plus the conventions the loop needs. Build it with :func:`adapt`.

    ``attention`` is ``"2d"`` (pass the 2D key mask, ``None`` when no row is padded), ``"4d"`` (pass a 4D
    bool mask and padding-aware position ids) or ``"none"`` (pass nothing).
    """

    model: torch.nn.Module
    mask_token_id: int
    shift_logits: bool = False
    attention: str = "2d"
    eos_token_ids: list[int] = field(default_factory=list)
    #: EOS only (the model config's ``eos_token_id``, else the tokenizer's): what LLaDA's ``logits_eos_inf``
    #: suppresses. ``eos_token_ids`` adds end-of-turn tokens found by name.
    eos_only_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    max_context: int | None = None
    kind: str = "custom"

    @property
    def float_dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:  # parameter-free oracle models
            return torch.device("cpu")

    def check_length(self, total_length: int, override: int | None = None) -> None:
        limit = _first(override, self.max_context)
        if limit is not None and total_length > limit:
            raise ValueError(
                f"prompt + gen_length = {total_length} tokens exceeds the model's context of {limit} tokens "
                f"({self.kind}); shorten the prompt or lower gen_length."
            )

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Logits aligned so that ``logits[:, i]`` predicts ``input_ids[:, i]`` (shift applied here)."""
        padded = attention_mask is not None and bool((attention_mask == 0).any())
        kwargs = {}
        if self.attention == "2d":
            if padded:
                kwargs["attention_mask"] = attention_mask
        elif self.attention == "4d":
            from harness.testing import bidirectional_attention_mask, padded_position_ids

            mask2d = attention_mask if padded else None
            # Additive float mask: eager attention adds the mask to the scores, so a bool mask would not hide
            # padding there; sdpa accepts either.
            kwargs["attention_mask"] = bidirectional_attention_mask(mask2d, input_ids, dtype=self.float_dtype)
            kwargs["position_ids"] = padded_position_ids(mask2d, input_ids)
        out = self.model(input_ids=input_ids, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out
        if self.shift_logits:
            # Dream (diffusion_generate): logits at i-1 predict token i; position 0 keeps its own row.
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits


def _config_of(model):
    return getattr(model, "config", None)


def _context_length(config) -> int | None:
    if config is None:
        return None
    for name in ("max_position_embeddings", "max_sequence_length", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _eos_ids(model, tokenizer) -> list[int]:
    config = _config_of(model)
    gen_config = getattr(model, "generation_config", None)
    ids = _as_id_list(getattr(config, "eos_token_id", None)) + _as_id_list(getattr(gen_config, "eos_token_id", None))
    if tokenizer is not None:
        ids += _as_id_list(getattr(tokenizer, "eos_token_id", None))
        # LLaDA's end-of-turn token (the reference's `confidence_eos_eot_inf` targets it); looked up by name.
        for name in ("<|eot_id|>", "<|im_end|>", "<|endoftext|>"):
            token_id = tokenizer.convert_tokens_to_ids(name) if name in tokenizer.get_vocab() else None
            if token_id is not None:
                ids.append(token_id)
    return sorted(set(ids))


def _eos_only_ids(model, tokenizer) -> list[int]:
    ids = _as_id_list(getattr(_config_of(model), "eos_token_id", None))
    if not ids and tokenizer is not None:
        ids = _as_id_list(getattr(tokenizer, "eos_token_id", None))
    return sorted(set(ids))


def adapt(
    model,
    tokenizer=None,
    *,
    mask_token_id: int | None = None,
    shift_logits: bool | None = None,
    bidirectional: bool | None = None,
    max_context: int | None = None,
) -> DiffusionModelAdapter:
    """Wrap ``model`` for :func:`decoding.generate`; an adapter passed in is returned unchanged.

    Args:
        model: a LLaDA / Dream checkpoint (remote code), a checkpoint with ``config.is_bidirectional``, a
            BERT-style masked LM, or a stock causal LM with ``bidirectional=True``.
        tokenizer: optional; supplies the mask / EOS ids when the config lacks them.
        mask_token_id: overrides config / generation config / tokenizer.
        shift_logits: overrides the detected convention (Dream True, LLaDA False).
        bidirectional: required ``True`` for a stock causal class (attend both ways through a 4D mask).
        max_context: overrides the context length read from the config.

    Raises:
        AdapterError: no mask token id anywhere, or a causal-only model without ``bidirectional=True``.
    """
    if isinstance(model, DiffusionModelAdapter):
        return model
    config = _config_of(model)
    gen_config = getattr(model, "generation_config", None)
    model_type = str(getattr(config, "model_type", "") or "").lower()
    class_name = type(model).__name__
    is_masked_lm = "ForMaskedLM" in class_name or (
        config is not None and getattr(config, "is_decoder", True) is False and "Causal" not in class_name
        and model_type in {"bert", "roberta", "modernbert", "distilbert", "electra", "deberta", "deberta-v2", "xlm-roberta"}
    )

    if model_type == "llada":
        kind, attention, default_shift = "llada", "2d", False
    elif model_type == "dream":
        kind, attention, default_shift = "dream", "4d", True
    elif getattr(config, "is_bidirectional", False):
        kind, attention, default_shift = "bidirectional", "4d", bool(getattr(config, "shift_logits", False))
    elif is_masked_lm:
        kind, attention, default_shift = "masked-lm", "2d", False
    elif bidirectional:
        kind, attention, default_shift = "causal-made-bidirectional", "4d", bool(getattr(config, "shift_logits", False))
    elif config is None:
        kind, attention, default_shift = "custom", "2d", False
    else:
        raise AdapterError(
            f"{class_name} (model_type={model_type!r}) is a causal-only model: without help it attends left to "
            "right, which a masked-diffusion decoder cannot use. Pass bidirectional=True to attend both ways "
            "through a 4D mask (only meaningful for a model trained as a mask predictor), or use a LLaDA / Dream "
            "checkpoint or a *ForMaskedLM model."
        )

    resolved_mask = _first(
        mask_token_id,
        getattr(config, "mask_token_id", None),
        getattr(gen_config, "mask_token_id", None),
        getattr(tokenizer, "mask_token_id", None) if tokenizer is not None else None,
    )
    if resolved_mask is None:
        raise AdapterError(
            f"No mask token id for {class_name}: neither the argument, model.config.mask_token_id, "
            "model.generation_config.mask_token_id nor tokenizer.mask_token_id is set. Pass mask_token_id=... "
            "(a token the model was trained to treat as [MASK])."
        )
    pad = _first(getattr(config, "pad_token_id", None), getattr(tokenizer, "pad_token_id", None) if tokenizer else None)
    return DiffusionModelAdapter(
        model=model,
        mask_token_id=int(resolved_mask),
        shift_logits=default_shift if shift_logits is None else bool(shift_logits),
        attention=attention,
        eos_token_ids=_eos_ids(model, tokenizer),
        eos_only_token_ids=_eos_only_ids(model, tokenizer),
        pad_token_id=pad,
        max_context=_first(max_context, _context_length(config)),
        kind=kind,
    )
