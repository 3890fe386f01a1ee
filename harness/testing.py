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


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch of token-id lists: ``(input_ids, attention_mask)``, padding with ``pad_id``."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


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


#: Modules a released LLaDA / Dream folder names in ``auto_map``; the tiny checkpoints ship each as a tripwire.
REMOTE_CODE_FILES = {"llada": ("configuration_llada", "modeling_llada"),
                     "dream": ("configuration_dream", "modeling_dream", "tokenization_dream")}


def _released_parameters(fmt: str, cfg: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under the released parameter names (LLaDA: OLMo-style; Dream: Qwen2's)."""

    def rand(*shape, std=0.1):
        return torch.randn(*shape, generator=generator) * std

    def norm(size):
        return 1.0 + rand(size)

    if fmt == "llada":
        d, heads, kv = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"]
        head_dim, hidden, vocab = d // heads, cfg["mlp_hidden_size"], cfg["embedding_size"]
        out = {"model.transformer.wte.weight": rand(vocab, d, std=1.0), "model.transformer.ln_f.weight": norm(d),
               "model.transformer.ff_out.weight": rand(vocab, d, std=0.5)}
        for i in range(cfg["n_layers"]):
            p = f"model.transformer.blocks.{i}."
            out.update({p + "attn_norm.weight": norm(d), p + "ff_norm.weight": norm(d),
                        p + "q_proj.weight": rand(d, d, std=0.2), p + "k_proj.weight": rand(kv * head_dim, d, std=0.2),
                        p + "v_proj.weight": rand(kv * head_dim, d, std=0.2), p + "attn_out.weight": rand(d, d),
                        p + "ff_proj.weight": rand(hidden, d, std=0.2), p + "up_proj.weight": rand(hidden, d, std=0.2),
                        p + "ff_out.weight": rand(d, hidden)})
        head = "model.transformer.ff_out.weight"
    else:
        d, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        head_dim, hidden, vocab = d // heads, cfg["intermediate_size"], cfg["vocab_size"]
        out = {"model.embed_tokens.weight": rand(vocab, d, std=1.0), "model.norm.weight": norm(d),
               "lm_head.weight": rand(vocab, d, std=0.5)}
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            out.update({p + "input_layernorm.weight": norm(d), p + "post_attention_layernorm.weight": norm(d),
                        p + "self_attn.q_proj.weight": rand(d, d, std=0.2), p + "self_attn.q_proj.bias": rand(d),
                        p + "self_attn.k_proj.weight": rand(kv * head_dim, d, std=0.2),
                        p + "self_attn.k_proj.bias": rand(kv * head_dim),
                        p + "self_attn.v_proj.weight": rand(kv * head_dim, d, std=0.2),
                        p + "self_attn.v_proj.bias": rand(kv * head_dim), p + "self_attn.o_proj.weight": rand(d, d),
                        p + "mlp.gate_proj.weight": rand(hidden, d, std=0.2),
                        p + "mlp.up_proj.weight": rand(hidden, d, std=0.2), p + "mlp.down_proj.weight": rand(d, hidden)})
        head = "lm_head.weight"
    out[head][cfg["mask_token_id"]] = 0.0  # never predict [MASK] itself, as a trained model would not
    return out


def tiny_released_checkpoint(fmt: str, folder, seed: int = 0, layers: int = 2, num_key_value_heads: int = 2):
    """Write a tiny LLaDA (``fmt="llada"``) or Dream (``"dream"``) checkpoint in the *released* format.

    ``config.json`` is the released one (:data:`cmikit.harness.native_dlm.RELEASED_CONFIGS`, ``auto_map``
    included) shrunk to hidden size 32, 4 heads, ``layers`` layers and the :func:`tiny_tokenizer` vocabulary;
    weights are random, under the released parameter names, in two safetensors shards with an index; the
    tokenizer's config names a remote tokenizer class for Dream, as released. Every module ``auto_map`` names
    is a tripwire file: importing it writes ``<folder>/REMOTE_CODE_IMPORTED`` and raises.
    """
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from cmikit.harness.native_dlm import RELEASED_CONFIGS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    vocab = tiny_vocab_size()
    cfg = json.loads(json.dumps(RELEASED_CONFIGS[fmt]))
    ids = {"mask_token_id": tok.mask_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if fmt == "llada":
        cfg.update(d_model=32, n_heads=4, n_kv_heads=num_key_value_heads, n_layers=layers, mlp_hidden_size=48,
                   embedding_size=vocab, vocab_size=vocab, max_sequence_length=256, **ids)
    else:
        cfg.update(hidden_size=32, num_attention_heads=4, num_key_value_heads=num_key_value_heads,
                   num_hidden_layers=layers, max_window_layers=layers, intermediate_size=48, vocab_size=vocab,
                   max_position_embeddings=256, bos_token_id=tok.bos_token_id, **ids)
    cfg["torch_dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    params = _released_parameters(fmt, cfg, torch.Generator().manual_seed(seed))
    names = sorted(params)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: params[k].contiguous() for k in keys}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    total = sum(t.numel() * t.element_size() for t in params.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    tok.save_pretrained(folder)
    if fmt == "dream":  # the released tokenizer config points at its own class (a copy of Qwen2's)
        tc = json.loads((folder / "tokenizer_config.json").read_text())
        tc.update(tokenizer_class="DreamTokenizer", auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]})
        (folder / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    marker = folder / "REMOTE_CODE_IMPORTED"
    for module in REMOTE_CODE_FILES[fmt]:
        (folder / f"{module}.py").write_text(
            f"open({str(marker)!r}, 'a').write({module!r} + '\\n')\n"
            f"raise ImportError('remote code {module} was imported')\n")
    return folder
