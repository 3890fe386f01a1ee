"""Tiny random models and a tiny tokenizer, built in memory from a config: unit tests never download.

* :func:`tiny_tokenizer`: a character-level fast tokenizer with pad/bos/eos/mask tokens and a chat template.
* :func:`tiny_causal_lm`: a 2-layer Llama causal LM.
* :func:`tiny_llada_like`: a bidirectional mask predictor, logits at i predict token i (LLaDA convention),
  ``config.mask_token_id`` set.
* :func:`tiny_dream_like`: a bidirectional Qwen2 mask predictor whose logits at i-1 predict token i (Dream
  convention, ``config.shift_logits = True``).

The two diffusion-like models are stock transformers classes whose ``forward`` always builds a 4D
all-visible attention mask (minus key padding) — that is all it takes to make a causal class
bidirectional; :func:`bidirectional_attention_mask` is the shared helper that builds it.
"""

from __future__ import annotations

import string

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<mask>", "<|user|>", "<|assistant|>", "<|system|>", "<unk>"]
CHARS = list(string.ascii_letters + string.digits + " .,?!:;'\"-+=*/()\n")
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}"
    "{% if not (loop.last and continue_final_message) %}{{ '<eos>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (vocab = specials + printable chars), deterministic, no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        mask_token="<mask>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def tiny_vocab_size() -> int:
    return len(SPECIAL_TOKENS) + len(CHARS)


def _llama_config(vocab_size: int, **overrides) -> LlamaConfig:
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_causal_lm(vocab_size: int | None = None, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A random 2-layer Llama causal LM, in eval mode (vocab matches :func:`tiny_tokenizer` by default)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(vocab_size or tiny_vocab_size(), **overrides))
    return model.eval()


def bidirectional_attention_mask(attention_mask: torch.Tensor | None, input_ids: torch.Tensor,
                                 dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """A 4D ``[B, 1, L, L]`` mask letting every query see every non-padding key.

    Given to a stock transformers decoder (Llama, Qwen2, ...), it replaces the causal mask, so the model
    attends bidirectionally. Padding keys (0 in the 2D mask) stay hidden.
    """
    batch, length = input_ids.shape
    if attention_mask is None:
        keys = torch.ones(batch, length, dtype=torch.bool, device=input_ids.device)
    elif attention_mask.dim() == 4:
        return attention_mask
    else:
        keys = attention_mask.to(torch.bool)
    mask = keys[:, None, None, :].expand(batch, 1, length, length)
    if dtype == torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def padded_position_ids(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token of left-padded rows (pads get 0)."""
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class _BidirectionalMixin:
    """forward() with a 4D all-visible mask and padding-aware positions: a causal class made bidirectional."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if input_ids is not None and (attention_mask is None or attention_mask.dim() == 2):
            if position_ids is None:
                position_ids = padded_position_ids(attention_mask, input_ids)
            attention_mask = bidirectional_attention_mask(attention_mask, input_ids)
        kwargs.pop("use_cache", None)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False, **kwargs)


class TinyLLaDALike(_BidirectionalMixin, LlamaForCausalLM):
    """LLaDA convention: bidirectional; logits at position i predict token i."""


class TinyDreamLike(_BidirectionalMixin, Qwen2ForCausalLM):
    """Dream convention: bidirectional; logits at position i-1 predict token i (``config.shift_logits``)."""


def tiny_llada_like(vocab_size: int = 64, mask_token_id: int | None = None, seed: int = 0,
                    **overrides) -> TinyLLaDALike:
    """A random bidirectional mask predictor in the LLaDA convention (no logit shift)."""
    torch.manual_seed(seed)
    config = _llama_config(vocab_size, **overrides)
    config.mask_token_id = vocab_size - 1 if mask_token_id is None else mask_token_id
    config.shift_logits = False
    config.is_bidirectional = True
    return TinyLLaDALike(config).eval()


def tiny_dream_like(vocab_size: int = 64, mask_token_id: int | None = None, seed: int = 0,
                    **overrides) -> TinyDreamLike:
    """A random bidirectional Qwen2 mask predictor in the Dream convention (shifted logits)."""
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    config = Qwen2Config(**kwargs)
    config.mask_token_id = vocab_size - 1 if mask_token_id is None else mask_token_id
    config.shift_logits = True
    config.is_bidirectional = True
    return TinyDreamLike(config).eval()
