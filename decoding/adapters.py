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
(native LLaDA / Dream included)
BERT-style ``*ForMaskedLM``               2D key mask                         unshifted
stock ``*ForCausalLM`` (opt in)           4D bool mask + position ids         ``shift_logits`` arg
========================================  ==================================  =====================

KV caches (``cache="prefix"`` / ``"dual"``, see :class:`BlockKVCache`) work for every transformers model
driven through a 4D mask (stock causal classes made bidirectional, ``is_bidirectional`` checkpoints): the
adapter hands the model a cache object whose ``update`` returns the stored keys/values of the positions
outside the window plus the window's fresh ones. LLaDA / Dream loaded by :func:`cmikit.harness.models.load_model`
without ``trust_remote_code`` are transformers' own Llama / Qwen2 classes (:mod:`cmikit.harness.native_dlm`), so
the cache works on them. Their remote code (``trust_remote_code=True``) is refused with a message: LLaDA's asserts
that masked diffusion has no KV cache and Dream's has no block cache for a bidirectional canvas (Fast-dLLM ships
modified modelling files for that, which this loop does not drive); BERT-style encoders have no cache either.

A stock causal class without ``bidirectional=True`` is refused: it would attend causally and produce
garbage for a masked-diffusion loop. The 4D mask comes from :func:`cmikit.harness.testing.bidirectional_attention_mask`
(one implementation for the whole toolkit): transformers passes a user 4D mask through unchanged, which
turns a causal decoder bidirectional.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from cmikit.harness.errors import ConfigError, ModelRefError


class AdapterError(ModelRefError, ValueError):
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
    #: Block-diffusion models (``config.bd_size``): attention causal between blocks of this many tokens and
    #: bidirectional inside one (:mod:`cmikit.decoding.block_diffusion`); 0 = bidirectional everywhere.
    bd_size: int = 0
    _logits_to_keep: bool | None = field(default=None, repr=False)

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
            raise ConfigError(
                f"prompt + gen_length = {total_length} tokens exceeds the model's context of {limit} tokens "
                f"({self.kind}); shorten the prompt or lower gen_length."
            )

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *, prompt_length: int | None = None,
               keep: tuple[int, int] | None = None, **model_kwargs) -> torch.Tensor:
        """Logits aligned so that ``logits[:, i]`` predicts ``input_ids[:, i]`` (shift applied here).

        ``prompt_length`` places the blocks of a block-diffusion model (required for one, ignored otherwise).
        ``model_kwargs`` go to the model as they are (the KV cache passes its cache object this way)."""
        padded = attention_mask is not None and bool((attention_mask == 0).any())
        kwargs = dict(model_kwargs)
        if self.bd_size:
            from cmikit.decoding.block_diffusion import canvas_mask
            from cmikit.harness.testing import padded_position_ids

            if prompt_length is None:
                raise ConfigError("a block-diffusion model needs prompt_length to place its blocks")
            mask2d = attention_mask if padded else None
            kwargs["attention_mask"] = canvas_mask(input_ids, mask2d, prompt_length, self.bd_size, self.float_dtype)
            kwargs["position_ids"] = padded_position_ids(mask2d, input_ids)
        elif self.attention == "2d":
            if padded:
                kwargs["attention_mask"] = attention_mask
        elif self.attention == "4d":
            from cmikit.harness.testing import bidirectional_attention_mask, padded_position_ids

            mask2d = attention_mask if padded else None
            # Additive float mask: eager attention adds the mask to the scores, so a bool mask would not hide
            # padding there; sdpa accepts either.
            kwargs["attention_mask"] = bidirectional_attention_mask(mask2d, input_ids, dtype=self.float_dtype)
            kwargs["position_ids"] = padded_position_ids(mask2d, input_ids)
        if keep is not None:
            return self.window_logits(input_ids, 0, keep[0], keep[1], **kwargs)
        logits = self.raw_logits(input_ids, **kwargs)
        if self.shift_logits:
            # Dream (diffusion_generate): logits at i-1 predict token i; position 0 keeps its own row.
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def window_logits(self, window_ids: torch.Tensor, offset: int, lo: int, hi: int, **kwargs) -> torch.Tensor:
        """Aligned logits ``[B, hi - lo, V]`` of canvas positions ``[lo, hi)`` from a forward over ``window_ids``
        (canvas positions ``[offset, offset + n)``). The vocabulary projection runs only on the rows needed
        (transformers' ``logits_to_keep``) where the model takes it: on a 135M model with a 49k vocabulary it is
        a fifth of a full pass."""
        rows = torch.arange(lo, hi, device=window_ids.device)
        if self.shift_logits:  # logits at i - 1 predict token i; position 0 keeps its own row
            rows = (rows - 1).clamp(min=0)
        rows = rows - offset
        if self.takes_logits_to_keep():
            return self.raw_logits(window_ids, logits_to_keep=rows, **kwargs)
        return self.raw_logits(window_ids, **kwargs).index_select(1, rows)

    def takes_logits_to_keep(self) -> bool:
        if self._logits_to_keep is None:
            self._logits_to_keep = any("logits_to_keep" in _parameters(cls.__dict__["forward"])
                                       for cls in type(self.model).__mro__ if "forward" in cls.__dict__)
        return self._logits_to_keep


    def raw_logits(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        """The model's logits as it returns them (no shift)."""
        out = self.model(input_ids=input_ids, **kwargs)
        return out.logits if hasattr(out, "logits") else out

    # -- KV cache ------------------------------------------------------------------------------------------------
    def cache_kwarg(self) -> str | None:
        """The name under which the model's ``forward`` takes a transformers cache object (``cache`` since
        transformers 5.x, ``past_key_values`` before), or ``None`` when it takes none."""
        for cls in type(self.model).__mro__:
            params = _parameters(cls.__dict__["forward"]) if "forward" in cls.__dict__ else {}
            for name in ("cache", "past_key_values"):
                if name in params:
                    return name
        return None

    def check_cache(self, mode: str) -> None:
        """Raise a one-line error when ``cache=mode`` cannot run on this model; a no-op for ``"none"``."""
        if mode == "none":
            return
        if self.kind in ("llada", "dream"):
            why = ("its modelling code asserts that masked diffusion has no KV cache" if self.kind == "llada" else
                   "its modelling code has no block cache for a bidirectional canvas")
            raise ModelRefError(
                f"cache={mode!r}: the {self.kind} remote-code checkpoint cannot reuse keys/values ({why}; "
                "Fast-dLLM ships modified modelling files for that, which this loop does not drive); load it "
                "without trust_remote_code (transformers' own class, where the cache works) or decode with "
                "cache='none'."
            )
        if self.attention != "4d":
            raise ConfigError(
                f"cache={mode!r} needs a transformers decoder driven through a 4D mask (a stock causal class with "
                f"bidirectional=True or an is_bidirectional checkpoint); {type(self.model).__name__} ({self.kind}) "
                "has no KV cache to reuse. Use cache='none'."
            )
        if self.cache_kwarg() is None:
            raise ModelRefError(
                f"cache={mode!r}: {type(self.model).__name__}.forward takes no cache / past_key_values argument, "
                "so keys and values cannot be reused; use cache='none'."
            )

    def new_cache(self, mode: str, prompt_length: int | None = None, scope: str = "canvas"):
        """The cache of one decoding call: :class:`BlockKVCache` (approximate; ``scope``: what a refresh
        recomputes), or for a block-diffusion model the exact
        :class:`~cmikit.decoding.block_diffusion.BlockDiffusionCache` (needs ``prompt_length``; never refreshes)."""
        self.check_cache(mode)
        if self.bd_size:
            from cmikit.decoding.block_diffusion import BlockDiffusionCache

            return BlockDiffusionCache(self, mode, prompt_length)
        return BlockKVCache(self, mode, scope)


def _parameters(function) -> dict:
    """A function's parameters by name ({} where its signature cannot be read)."""
    try:
        return dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return {}


def _kv_store_class():
    """A transformers ``DynamicCache`` whose ``update`` either records every layer's keys/values (the full
    forward at a refresh) or returns the frozen ones of the positions outside the window followed by the window's
    fresh ones, without storing them (every cached step starts from the same frozen state)."""
    from transformers.cache_utils import DynamicCache

    class KVStore(DynamicCache):
        def __init__(self) -> None:
            super().__init__()
            self.recording = True
            self.frozen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            if self.recording:
                self.frozen[layer_idx] = (key_states, value_states)
                return key_states, value_states
            keys, values = self.frozen[layer_idx]
            if getattr(self, "fresh", None) is not None:  # a window shift keeps the window's own keys/values
                self.fresh[layer_idx] = (key_states, value_states)
            return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

        def keep(self, index: torch.Tensor) -> None:
            """Keep only the sequence positions ``index`` of what was recorded, and stop recording."""
            self.frozen = {i: (k.index_select(-2, index), v.index_select(-2, index)) for i, (k, v) in self.frozen.items()}
            self.recording = False

        def get_seq_length(self, layer_idx: int = 0) -> int:
            if layer_idx in self.frozen:
                return self.frozen[layer_idx][0].shape[-2]
            return 0

    return KVStore


class BlockKVCache:
    """Fast-dLLM's block-wise approximate KV cache for one :func:`decoding.generate` call.

    ``refresh(x, mask, lo, hi)`` runs the whole canvas once (that forward's logits serve the current step) and
    keeps the keys/values of every position outside the *window*: ``[s, L)`` for ``"prefix"`` (everything
    left of the block is cached), ``[s, hi)`` for ``"dual"`` (the suffix right of the block is cached too).
    ``s`` is the block start ``lo``, or ``lo - 1`` for shifted-logit (Dream-convention) models, whose
    prediction for position ``lo`` comes from position ``lo - 1``. ``block_logits(x, mask)`` then runs only
    the window, attending to the frozen keys/values plus the window's own, and returns the block's aligned
    logits. Keys carry their rotary position already, so the frozen positions keep their order-free meaning;
    padding keys stay hidden through the 4D mask.
    """

    exact = False

    def __init__(self, adapter: DiffusionModelAdapter, mode: str, scope: str = "canvas") -> None:
        self.adapter = adapter
        self.mode = mode
        # A prefix window reaches the canvas end: everything left of it is the whole canvas.
        self.scope = "canvas" if mode == "prefix" else scope
        self.kwarg = adapter.cache_kwarg()
        self.store = None
        self.window: tuple[int, int] = (0, 0)
        self.block: tuple[int, int] = (0, 0)

    def _window_for(self, lo: int, hi: int, length: int) -> tuple[int, int]:
        start = lo - 1 if (self.adapter.shift_logits and lo > 0) else lo
        return start, (hi if self.mode == "dual" else length)

    def window_length(self, lo: int, hi: int, length: int) -> int:
        """How many positions a cached step runs through the model."""
        start, end = self._window_for(lo, hi, length)
        return end - start

    def refresh(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, lo: int, hi: int,
                keep: tuple[int, int] | None = None) -> torch.Tensor:
        """Full forward that also stores the keys/values outside the window: aligned logits ``[B, L, V]``, or
        with ``keep=(a, b)`` those of positions ``[a, b)`` only (the vocabulary projection runs on them only)."""
        from cmikit.harness.testing import padded_position_ids

        batch, length = input_ids.shape
        self.store = _kv_store_class()()
        logits = self.adapter.logits(input_ids, attention_mask, keep=keep, **{self.kwarg: self.store})
        start, end = self._window_for(lo, hi, length)
        outside = torch.cat([torch.arange(0, start), torch.arange(end, length)]).to(input_ids.device)
        self.store.keep(outside)
        keys = torch.ones(batch, length, dtype=torch.bool, device=input_ids.device) if attention_mask is None \
            else attention_mask.to(torch.bool)
        self.key_valid = torch.cat([keys.index_select(1, outside), keys[:, start:end]], dim=1)
        padded = attention_mask is not None and bool((attention_mask == 0).any())
        self.positions = padded_position_ids(attention_mask if padded else None, input_ids)[:, start:end]
        self.window, self.block = (start, end), (lo, hi)
        return logits

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, lo: int, hi: int,
             refresh: bool | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
        """One decoding step: ``(block logits [B, hi - lo, V], positions run)``.

        ``refresh`` is ``True`` (every row refreshes), ``False`` (no row does) or a ``[B]`` bool tensor: the rows
        it marks refresh, the others do not; positions run are then per row (``[B]``). A refresh is a full
        forward (``scope="canvas"``) or, with ``scope="left"``, a pass over everything left of the window end
        against the stored suffix (the prompt, the finished blocks and the block get fresh keys/values, the
        masked suffix keeps its own). Without a refresh a step runs the window against the frozen keys/values;
        on the first step of a new block it runs the previous window and the new one together and freezes the
        finished block's keys/values from that pass (a *window shift*, the delayed caching of dKV-Cache /
        Fast-dLLM v2: no full forward at the block boundary)."""
        length, batch = input_ids.shape[1], input_ids.shape[0]
        if self.store is None:
            refresh = True
        if isinstance(refresh, torch.Tensor):
            if bool(refresh.all()):
                refresh = True
            elif not bool(refresh.any()):
                refresh = False
        if refresh is True and (self.scope == "canvas" or self.store is None):
            return self.refresh(input_ids, attention_mask, lo, hi, keep=(lo, hi)), length
        new_block = (lo, hi) != self.block
        if refresh is False:
            if new_block:
                logits, run, state = self._span(input_ids, attention_mask, lo, hi, None, left=False)
                self._install(state)
                return logits, run
            return self.block_logits(input_ids), self.window_length(lo, hi, length)
        if refresh is True:
            refresh = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
        stay = (~refresh).nonzero(as_tuple=True)[0]
        renew = refresh.nonzero(as_tuple=True)[0]
        parts = []  # (rows, block logits, positions run, state or None = the rows' current state)
        if stay.numel():
            if new_block:
                parts.append((stay, *self._span(input_ids, attention_mask, lo, hi, stay, left=False)))
            else:
                parts.append((stay, self.block_logits(input_ids, rows=stay), self.window_length(lo, hi, length),
                              None))
        if self.scope == "left":
            parts.append((renew, *self._span(input_ids, attention_mask, lo, hi, renew, left=True)))
        else:
            fresh_cache = BlockKVCache(self.adapter, self.mode)
            fresh = fresh_cache.refresh(input_ids[renew], None if attention_mask is None else attention_mask[renew],
                                        lo, hi, keep=(lo, hi))
            parts.append((renew, fresh, length, {
                "frozen": fresh_cache.store.frozen, "key_valid": fresh_cache.key_valid,
                "positions": fresh_cache.positions, "window": fresh_cache.window, "block": fresh_cache.block}))
        if len(parts) == 1:  # every row refreshed: its state is already the batch's, nothing to merge
            _, logits, run, state = parts[0]
            self._install(state)
            return logits, torch.full((batch,), run, dtype=torch.long, device=input_ids.device)
        self._install(self._merge(parts, batch))
        first = parts[0][1]
        logits = first.new_empty((batch, *first.shape[1:]))
        run = torch.empty(batch, dtype=torch.long, device=input_ids.device)
        for rows, part_logits, part_run, _ in parts:
            logits[rows], run[rows] = part_logits.to(first.dtype), part_run
        return logits, run

    def _merge(self, parts, batch: int) -> dict:
        """One batch-wide state from per-row-group states (``None``: those rows keep the current state)."""
        given = next((s for *_, s in parts if s is not None), None)
        frozen = {}
        for layer in self.store.frozen:
            out = []
            for j in (0, 1):
                sample = (self.store.frozen if given is None else given["frozen"])[layer][j]
                full = sample.new_empty((batch, *sample.shape[1:]))
                for rows, _, _, state in parts:
                    src = self.store.frozen[layer][j][rows] if state is None else state["frozen"][layer][j]
                    full[rows] = src
                out.append(full)
            frozen[layer] = tuple(out)
        merged = {"frozen": frozen}
        for name in ("key_valid", "positions"):
            sample = getattr(self, name) if given is None else given[name]
            full = sample.new_empty((batch, *sample.shape[1:]))
            for rows, _, _, state in parts:
                full[rows] = getattr(self, name)[rows] if state is None else state[name]
            merged[name] = full
        merged["window"], merged["block"] = (self.window, self.block) if given is None else (given["window"],
                                                                                             given["block"])
        return merged

    def _span(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, lo: int, hi: int,
              rows: torch.Tensor | None, left: bool) -> tuple[torch.Tensor, int, dict]:
        """One pass of the queries ``[q_lo, q_hi)`` against the frozen keys/values outside them, for block
        ``[lo, hi)``. ``left=False`` (a window shift, the first pass of a new block without a refresh): the
        queries are the old window and the new one. ``left=True`` (a left refresh): everything from position 0 to
        the window's end. Returns the block's aligned logits, the positions run and the new state (the queries'
        fresh keys/values frozen outside the new window, the other frozen positions kept, the window's dropped)."""
        from cmikit.harness.testing import padded_position_ids

        length = input_ids.shape[1]
        device = input_ids.device
        old_start, old_end = self.window
        start, end = self._window_for(lo, hi, length)
        q_lo, q_hi = (0 if left else min(old_start, start)), max(old_end, end)
        everything = torch.arange(length, device=device)
        old_frozen = torch.cat([everything[:old_start], everything[old_end:]])
        outside = ((old_frozen < q_lo) | (old_frozen >= q_hi)).nonzero(as_tuple=True)[0]
        padded = attention_mask is not None and bool((attention_mask == 0).any())
        keys_all = torch.ones(input_ids.shape, dtype=torch.bool, device=device) if attention_mask is None \
            else attention_mask.to(torch.bool)
        positions_all = padded_position_ids(attention_mask if padded else None, input_ids)
        frozen = self.store.frozen
        if rows is not None:
            input_ids, keys_all, positions_all = input_ids[rows], keys_all[rows], positions_all[rows]
            frozen = {i: (k[rows], v[rows]) for i, (k, v) in frozen.items()}
        store = _kv_store_class()()
        store.frozen = {i: (k.index_select(-2, outside), v.index_select(-2, outside)) for i, (k, v) in frozen.items()}
        store.recording, store.fresh = False, {}
        key_valid = torch.cat([keys_all.index_select(1, old_frozen.index_select(0, outside)),
                               keys_all[:, q_lo:q_hi]], dim=1)
        dtype = self.adapter.float_dtype
        valid = key_valid[:, None, None, :].expand(-1, 1, q_hi - q_lo, -1)
        mask = torch.zeros(valid.shape, dtype=dtype, device=device).masked_fill(~valid, torch.finfo(dtype).min)
        logits = self.adapter.window_logits(input_ids[:, q_lo:q_hi], q_lo, lo, hi, attention_mask=mask,
                                            position_ids=positions_all[:, q_lo:q_hi], **{self.kwarg: store})
        new_frozen = torch.cat([everything[:start], everything[end:]])
        state_frozen = {}
        for i, (k, v) in frozen.items():
            full_k = k.new_zeros((*k.shape[:-2], length, k.shape[-1]))
            full_v = v.new_zeros((*v.shape[:-2], length, v.shape[-1]))
            full_k[..., old_frozen, :], full_v[..., old_frozen, :] = k, v
            fresh_k, fresh_v = store.fresh[i]
            full_k[..., q_lo:q_hi, :], full_v[..., q_lo:q_hi, :] = fresh_k, fresh_v
            state_frozen[i] = (full_k.index_select(-2, new_frozen), full_v.index_select(-2, new_frozen))
        state = {"frozen": state_frozen,
                 "key_valid": torch.cat([keys_all.index_select(1, new_frozen), keys_all[:, start:end]], dim=1),
                 "positions": positions_all[:, start:end], "window": (start, end), "block": (lo, hi)}
        return logits, q_hi - q_lo, state

    def _install(self, state: dict) -> None:
        self.store = _kv_store_class()()
        self.store.frozen, self.store.recording = state["frozen"], False
        self.key_valid, self.positions = state["key_valid"], state["positions"]
        self.window, self.block = state["window"], state["block"]

    def block_logits(self, input_ids: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Aligned logits ``[B, hi - lo, V]`` of the block from a forward over the window only (``rows``: of
        those rows of the batch only, ``input_ids`` being the whole batch)."""
        start, end = self.window
        lo, hi = self.block
        dtype = self.adapter.float_dtype
        queries = end - start
        store, key_valid, positions = self.store, self.key_valid, self.positions
        if rows is not None:
            input_ids, key_valid, positions = input_ids[rows], key_valid[rows], positions[rows]
            store = _kv_store_class()()
            store.frozen = {i: (k[rows], v[rows]) for i, (k, v) in self.store.frozen.items()}
            store.recording = False
        valid = key_valid[:, None, None, :].expand(-1, 1, queries, -1)
        mask = torch.zeros(valid.shape, dtype=dtype, device=input_ids.device).masked_fill(~valid, torch.finfo(dtype).min)
        return self.adapter.window_logits(input_ids[:, start:end], start, lo, hi, attention_mask=mask,
                                          position_ids=positions, **{self.kwarg: store})


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
        native = getattr(config, "diffusion_format", None)  # LLaDA / Dream on transformers' own class
        kind = f"{native}-native" if native else "bidirectional"
        attention, default_shift = "4d", bool(getattr(config, "shift_logits", False))
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
    bd_size = int(getattr(config, "bd_size", 0) or 0) if getattr(config, "block_diffusion", False) else 0
    if bd_size:
        kind, attention = "block-diffusion", "4d"
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
        bd_size=bd_size,
    )
