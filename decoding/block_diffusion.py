"""Block-diffusion models (Fast-dLLM v2, SDAR, LLaDA2.0 layout) and their exact KV cache.

A block-diffusion model attends **causally between blocks and bidirectionally inside one**: the canvas is
cut into the prompt (block 0, bidirectional within itself) and generation blocks of ``bd_size`` tokens
(blocks 1, 2, ...); a query sees every key of its own block and of every earlier block, never a later one.
The model states its block size as ``config.bd_size`` (Fast-dLLM v2's name) and ``config.block_diffusion``.

Because no position ever sees a later block, the keys/values of a *finished* block never change again, so a
cache of finished blocks is exact (not Fast-dLLM's approximation): :class:`BlockDiffusionCache` keeps them,
each step runs only the current block against them, and the first step of a block also runs the block just
finished (its clean keys/values are recorded in that same pass, so caching costs no extra forward pass).
Decoding cached and uncached gives the same tokens (checked in ``tests/test_decoding_block_diffusion.py``).

Training (``dlm-decode train-tiny --bd-size 16``, :func:`cmikit.decoding.tiny_dlm.train_tiny_dlm`) uses the
vectorised form of block-diffusion training (BD3-LM, Arriola et al. 2025; the same idea as SDAR / Fast-dLLM v2
training): the model runs ``[prompt | noisy answer | clean answer]`` once, noisy block ``i`` attending to
itself and to the clean blocks before it, clean block ``i`` to the clean blocks up to itself; the loss is the
masked-diffusion loss on the noisy copy. :func:`block_causal_mask` builds every one of these masks.
This module's code is written for this project (no reference code was copied).
"""

from __future__ import annotations

import torch

from cmikit.harness.errors import ConfigError


def block_ids(positions: torch.Tensor, prompt_length: int | torch.Tensor, bd_size: int) -> torch.Tensor:
    """Block index of canvas ``positions``: 0 for the prompt, ``1 + (p - prompt_length) // bd_size`` after."""
    rel = positions - prompt_length
    return torch.where(rel < 0, torch.zeros_like(rel), 1 + torch.div(rel, bd_size, rounding_mode="floor"))


def block_causal_mask(query_blocks: torch.Tensor, key_blocks: torch.Tensor, key_valid: torch.Tensor | None = None,
                      *, query_noisy: torch.Tensor | None = None, key_noisy: torch.Tensor | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive 4D mask ``[B, 1, Q, K]``: a clean query sees clean keys of its block and earlier blocks; a noisy
    query (training's noisy copy) sees the noisy keys of its own block and the clean keys of earlier blocks.

    ``query_blocks`` ``[B, Q]`` / ``key_blocks`` ``[B, K]`` (or 1D, shared by the batch); ``key_valid`` ``[B, K]``
    hides padding keys; ``*_noisy`` default to all clean (decoding).
    """
    qb = query_blocks if query_blocks.dim() == 2 else query_blocks[None]
    kb = key_blocks if key_blocks.dim() == 2 else key_blocks[None]
    qb, kb = qb[:, :, None], kb[:, None, :]
    allowed = kb <= qb
    if query_noisy is not None or key_noisy is not None:
        qn = (query_noisy if query_noisy is not None else torch.zeros_like(query_blocks, dtype=torch.bool))
        kn = (key_noisy if key_noisy is not None else torch.zeros_like(key_blocks, dtype=torch.bool))
        qn = (qn if qn.dim() == 2 else qn[None])[:, :, None]
        kn = (kn if kn.dim() == 2 else kn[None])[:, None, :]
        allowed = (~kn & ((~qn & (kb <= qb)) | (qn & (kb < qb)))) | (kn & qn & (kb == qb))
    if key_valid is not None:
        allowed = allowed & key_valid.to(torch.bool)[:, None, :]
    allowed = allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def canvas_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, prompt_length: int, bd_size: int,
                dtype: torch.dtype) -> torch.Tensor:
    """The decoding mask of a whole ``[B, L]`` canvas (prompt = block 0, then blocks of ``bd_size``)."""
    blocks = block_ids(torch.arange(input_ids.shape[1], device=input_ids.device), prompt_length, bd_size)
    return block_causal_mask(blocks, blocks, attention_mask, dtype=dtype)


def _append_store_class():
    """A transformers ``DynamicCache`` holding the finished blocks' keys/values per layer: ``update`` returns
    them followed by the pass's fresh ones; :meth:`commit` appends the first ``n`` fresh positions of the last
    pass (the block that just finished) for good."""
    from transformers.cache_utils import DynamicCache

    class AppendStore(DynamicCache):
        def __init__(self) -> None:
            super().__init__()
            self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            self.fresh: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            self.fresh[layer_idx] = (key_states, value_states)
            if layer_idx not in self.kept:
                return key_states, value_states
            keys, values = self.kept[layer_idx]
            return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

        def commit(self, n: int) -> None:
            for i, (k, v) in self.fresh.items():
                k, v = k[..., :n, :], v[..., :n, :]
                if i in self.kept:
                    k = torch.cat([self.kept[i][0], k], dim=-2)
                    v = torch.cat([self.kept[i][1], v], dim=-2)
                self.kept[i] = (k, v)
            self.fresh = {}

        def get_seq_length(self, layer_idx: int = 0) -> int:
            return self.kept[layer_idx][0].shape[-2] if layer_idx in self.kept else 0

    return AppendStore


class BlockDiffusionCache:
    """The exact cache of finished blocks for one :func:`decoding.generate` call on a block-diffusion model.

    Same interface as :class:`cmikit.decoding.adapters.BlockKVCache` where the loop is concerned
    (``exact = True``: the loop runs no refresh policy, nothing can go stale). ``step(x, mask, lo, hi,
    first)`` returns the block's logits and the number of positions the pass ran: on a block's first step the
    positions not yet cached (the prompt, or the block just finished) plus the block, after that the block.
    """

    exact = True

    def __init__(self, adapter, mode: str, prompt_length: int) -> None:
        self.adapter = adapter
        self.mode = mode
        self.kwarg = adapter.cache_kwarg()
        self.prompt_length = prompt_length
        self.bd_size = adapter.bd_size
        self.store = _append_store_class()()
        self.cached = 0  # canvas positions [0, cached) have their keys/values in the store

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, lo: int, hi: int,
             first: bool) -> tuple[torch.Tensor, int]:
        from cmikit.harness.testing import padded_position_ids

        if first and self.cached < lo:
            self.store.fresh = {}
        start = self.cached if first else lo
        if start != self.cached and not first:
            start = lo
        positions_all = padded_position_ids(attention_mask if attention_mask is not None and bool(
            (attention_mask == 0).any()) else None, input_ids)
        device = input_ids.device
        blocks = block_ids(torch.arange(hi, device=device), self.prompt_length, self.bd_size)
        keys = torch.cat([torch.arange(self.cached, device=device), torch.arange(start, hi, device=device)])
        valid = None if attention_mask is None else attention_mask.to(torch.bool).index_select(1, keys)
        mask = block_causal_mask(blocks[start:hi], blocks.index_select(0, keys), valid, dtype=self.adapter.float_dtype)
        raw = self.adapter.raw_logits(input_ids[:, start:hi], attention_mask=mask,
                                      position_ids=positions_all[:, start:hi], **{self.kwarg: self.store})
        if first and lo > self.cached:
            self.store.commit(lo - self.cached)
            self.cached = lo
        else:
            self.store.fresh = {}
        return raw[:, lo - start:], hi - start


def check_block_layout(adapter, block_length: int, gen_length: int) -> None:
    """A block-diffusion model decodes in its own blocks: the loop's block must be ``bd_size``."""
    if block_length != adapter.bd_size:
        raise ConfigError(
            f"block_length={block_length} (gen_length {gen_length}): this block-diffusion model attends causally "
            f"between blocks of bd_size={adapter.bd_size} tokens, so the loop must decode in those blocks; pass "
            f"--block-length {adapter.bd_size} (block_length={adapter.bd_size}).")
    if adapter.shift_logits:
        raise ConfigError("block-diffusion models with shifted logits (Dream convention) are not supported yet; "
                          "the tiny block-diffusion model predicts each position from itself (shift_logits=False).")
