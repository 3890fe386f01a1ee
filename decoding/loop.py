"""The one decoding loop for masked diffusion LMs.

    canvas x = [prompt | MASK x gen_length]            (left-padded prompts: the 2D mask gets gen_length ones)
    for each block of block_length positions (semi-autoregressive, LLaDA generate.py):
        strategy.start_block(block mask, steps_per_block)
        while the block still has a mask in some row (fixed_steps: or fewer than steps_per_block steps ran):
            logits = model(x)                           one forward pass = one NFE (CFG: one doubled batch)
            logits = logits_hook(step, x, logits)       optional, Dream's generation_logits_hook_func
            commit, tokens = strategy.select(block)     which masked positions to fill, and with what
            x[block][commit] = tokens[commit]
            x = tokens_hook(step, x, logits)            optional, Dream's generation_tokens_hook_func

With ``cache="prefix"`` / ``"dual"`` (Fast-dLLM), the first step of each block (and every ``cache_refresh``
steps) is a full forward that also stores keys/values; the other steps run only the block plus the suffix
(prefix) or only the block (dual) against them (:class:`cmikit.decoding.adapters.BlockKVCache`). Strategies see the
same block logits either way, so their state across steps (CCD's history) stays valid.

Blocks, the forward pass, classifier-free guidance (LLaDA: ``un + (cfg + 1) (cond - un)`` with the prompt
masked in the unconditional pass), EOS suppression, hooks, history and NFE counting live here once;
strategies (``cmikit.decoding.strategies``) only decide. Everything is batched: rows that finish a block early
stop committing but the batch keeps stepping until every row is done (``nfe_per_row`` counts the passes in
which a row still had masks, i.e. what it would have cost alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cmikit.decoding.adapters import DiffusionModelAdapter, adapt
from cmikit.decoding.block_diffusion import check_block_layout
from cmikit.decoding.cache_policy import make_refresh_policy, resolved_refresh_scope
from cmikit.decoding.config import DiffusionGenerationConfig
from cmikit.decoding.strategies import StepInput, Strategy, make_strategy
from cmikit.harness.errors import ConfigError

Hook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None]


@dataclass
class DiffusionOutput:
    """Result of :func:`generate`.

    sequences: ``[B, prompt + gen_length]`` final canvas. nfe: forward passes run for the batch.
    nfe_per_row: ``[B]`` passes during which each row still had a mask in the current block.
    tokens_per_row: ``[B]`` canvas positions run through the model for each row over those passes (the
        honest cost once a KV cache shortens passes; doubled under classifier-free guidance).
    model_tokens: positions run through the model for the whole batch (every pass, every row).
    refreshes: cache passes that ran the whole canvas (block starts and the refresh policy's; 0 without cache).
    commits_per_step: ``[steps_run, B]`` tokens committed per step and row.
    history: canvases after every step when ``config.output_history``.
    """

    sequences: torch.Tensor
    nfe: int
    nfe_per_row: torch.Tensor
    commits_per_step: torch.Tensor
    prompt_length: int
    history: list[torch.Tensor] | None = None
    block_nfe: list[int] = field(default_factory=list)
    tokens_per_row: torch.Tensor | None = None
    model_tokens: int = 0
    refreshes: int = 0

    @property
    def generated(self) -> torch.Tensor:
        """The generated part only, ``[B, gen_length]``."""
        return self.sequences[:, self.prompt_length:]


def _model_batch(adapter: DiffusionModelAdapter, x: torch.Tensor, attention_mask: torch.Tensor | None,
                 prompt_length: int, cfg_scale: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch the model runs: the canvas, or (classifier-free guidance) canvas + unconditional canvas."""
    if cfg_scale <= 0:
        return x, attention_mask
    # LLaDA classifier-free guidance: the unconditional canvas has its prompt masked.
    uncond = x.clone()
    uncond[:, :prompt_length] = adapter.mask_token_id
    both_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
    return torch.cat([x, uncond]), both_mask


def _guide(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    if cfg_scale <= 0:
        return logits
    cond, un = logits.chunk(2)
    return un + (cfg_scale + 1) * (cond - un)


def _forward(adapter: DiffusionModelAdapter, x: torch.Tensor, attention_mask: torch.Tensor | None,
             prompt_length: int, cfg_scale: float) -> torch.Tensor:
    model_x, model_mask = _model_batch(adapter, x, attention_mask, prompt_length, cfg_scale)
    kwargs = {"prompt_length": prompt_length} if adapter.bd_size else {}
    return _guide(adapter.logits(model_x, model_mask, **kwargs), cfg_scale)


def _never_mask(block_logits: torch.Tensor, mask_id: int, sampling: bool) -> None:
    """The mask token is never a prediction: where it would win (greedy) or could be drawn (sampling), its logit
    becomes -inf in place. Elsewhere the logits stay untouched, so greedy decoding stays bit-equal to the
    references wherever they never pick it."""
    if mask_id >= block_logits.shape[-1]:
        return
    column = block_logits[..., mask_id]
    if sampling:
        column.fill_(float("-inf"))
    else:
        wins = block_logits.argmax(-1) == mask_id
        if bool(wins.any()):
            block_logits[..., mask_id] = column.masked_fill(wins, float("-inf"))


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    config: DiffusionGenerationConfig | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    tokenizer=None,
    strategy: Strategy | None = None,
    logits_hook: Hook | None = None,
    tokens_hook: Hook | None = None,
    **config_overrides,
) -> DiffusionOutput:
    """Decode ``gen_length`` tokens after ``input_ids`` with a masked diffusion LM.

    Args:
        model: a model or a :class:`~cmikit.decoding.adapters.DiffusionModelAdapter` (see :func:`decoding.adapt`).
        input_ids: ``[B, P]`` prompts, left-padded when lengths differ.
        config: a :class:`DiffusionGenerationConfig`; ``config_overrides`` replace its fields.
        attention_mask: ``[B, P]`` 1 for real tokens, 0 for left padding.
        tokenizer: optional, a source of mask / EOS ids when the model config lacks them.
        strategy: a ready strategy object (default: ``make_strategy(config)``).
        logits_hook, tokens_hook: ``f(step, x, logits)`` returning new logits / canvas (or ``None`` to keep).

    Returns:
        :class:`DiffusionOutput` with ``sequences``, ``nfe``, ``nfe_per_row``, ``tokens_per_row``,
        ``commits_per_step``, ``history``.

    Raises:
        cmikit.harness.errors.ConfigError: bad input shapes, or hooks together with a KV cache (a cached step computes
            only the block's logits, and a hook that edits the canvas outside the block would leave the cache stale).
        cmikit.harness.errors.ModelRefError: ``cache`` requested for a model that cannot reuse keys/values.
    """
    config = config or DiffusionGenerationConfig()
    if config_overrides:
        config = config.update(**config_overrides)
    adapter = adapt(model, tokenizer)
    strategy = strategy or make_strategy(config)
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ConfigError(f"input_ids must be a non-empty [batch, prompt_length] tensor, got shape "
                          f"{tuple(input_ids.shape)}")
    cache, policy = None, None
    if adapter.bd_size:
        check_block_layout(adapter, config.resolved_block_length, config.gen_length)
    if config.cache != "none":
        if logits_hook is not None or tokens_hook is not None:
            raise ConfigError(f"cache={config.cache!r} cannot run logits_hook / tokens_hook: a cached step computes "
                              "only the block's logits; use cache='none' with hooks.")
        cache = adapter.new_cache(config.cache, prompt_length=input_ids.shape[1],
                                  scope=resolved_refresh_scope(config))
        # An exact cache (block-diffusion models) never goes stale: no refresh policy.
        policy = None if cache.exact else make_refresh_policy(config)
    reference = config.numerics == "reference"
    batch, prompt_length = input_ids.shape
    gen_length, block_length = config.gen_length, config.resolved_block_length
    adapter.check_length(prompt_length + gen_length, config.max_context)
    mask_id = adapter.mask_token_id
    device = input_ids.device

    x = torch.cat([input_ids, torch.full((batch, gen_length), mask_id, dtype=input_ids.dtype, device=device)], 1)
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ConfigError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                              f"{tuple(input_ids.shape)}")
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, gen_length)], 1)
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    eos = torch.tensor(adapter.eos_token_ids, dtype=torch.long, device=device)
    defer_ids = eos if config.defer_eos else None
    suppressed = eos if config.suppress_eos_scope == "eos_eot" else torch.tensor(
        adapter.eos_only_token_ids, dtype=torch.long, device=device)

    nfe, step_count, refreshes = 0, 0, 0
    nfe_per_row = torch.zeros(batch, dtype=torch.long, device=device)
    tokens_per_row = torch.zeros(batch, dtype=torch.long, device=device)
    model_tokens = 0
    copies = 2 if config.cfg_scale > 0 else 1
    length = prompt_length + gen_length
    commits: list[torch.Tensor] = []
    history: list[torch.Tensor] | None = [] if config.output_history else None
    block_nfe: list[int] = []
    steps_per_block = config.steps_per_block
    max_steps_per_block = max(steps_per_block, block_length) + 1
    for block in range(config.num_blocks):
        lo = prompt_length + block * block_length
        hi = lo + block_length
        strategy.start_block(x[:, lo:hi] == mask_id, steps_per_block)
        if policy is not None:
            policy.start_block(x[:, lo:hi] == mask_id)
        step, block_start_nfe = 0, nfe
        while True:
            block_mask = x[:, lo:hi] == mask_id
            active = block_mask.any(-1)
            # fixed_steps: the references' step count (LLaDA / Dream run every step of the budget).
            padded = config.fixed_steps and step < steps_per_block
            if not bool(active.any()) and not padded:
                break
            if step >= max_steps_per_block:
                raise RuntimeError(
                    f"strategy {type(strategy).__name__} left masks in block {block} after {step} steps; "
                    "a strategy must commit at least one token per row per step eventually."
                )
            if cache is None:
                logits = _forward(adapter, x, attention_mask, prompt_length, config.cfg_scale)
                run = length
                if logits_hook is not None:
                    logits = _keep(logits_hook(step_count, x, logits), logits)
                block_logits = logits[:, lo:hi]
            else:
                model_x, model_mask = _model_batch(adapter, x, attention_mask, prompt_length, config.cfg_scale)
                # A policy may refresh some rows only ([B] bool): they run the whole canvas, the others cached.
                if policy is None:  # the exact cache: a block's first step records the finished block
                    refresh = step == 0
                elif step == 0 and (block == 0 or not policy.at_block_start):
                    refresh = True
                else:
                    refresh = policy.refresh_now(step)
                rows_refresh = refresh.repeat(copies) if isinstance(refresh, torch.Tensor) else refresh
                block_logits, run = cache.step(model_x, model_mask, lo, hi, rows_refresh)
                block_logits = _guide(block_logits, config.cfg_scale)
                refreshes += int(bool(refresh if isinstance(refresh, bool) else refresh.any()))
                if isinstance(run, torch.Tensor):  # per row, doubled under guidance: count each copy's
                    run = run.view(copies, batch).sum(0)
                    tokens_per_row += (active | padded) * run
                    model_tokens += int(run.sum())
                    run = None
            nfe += 1
            counted = active | padded
            nfe_per_row += counted
            if run is not None:
                tokens_per_row += counted * (run * copies)
                model_tokens += run * copies * batch
            if not reference:
                block_logits = block_logits.float()
            if config.suppress_eos and suppressed.numel():
                block_logits[..., suppressed] = float("-inf")
            _never_mask(block_logits, mask_id, sampling=config.temperature > 0)
            commit, tokens = strategy.select(StepInput(
                step=step, steps=steps_per_block, logits=block_logits, tokens=x[:, lo:hi], mask=block_mask,
                config=config, generator=generator, defer_ids=defer_ids, block_start=lo, canvas_length=length,
            ))
            commit = commit & block_mask
            if policy is not None:
                policy.observe(commit, tokens, block_logits)
            x[:, lo:hi] = torch.where(commit, tokens.to(x.dtype), x[:, lo:hi])
            commits.append(commit.sum(-1))
            if tokens_hook is not None:
                x = _keep(tokens_hook(step_count, x, logits), x)
            if history is not None:
                history.append(x.clone())
            step += 1
            step_count += 1
        block_nfe.append(nfe - block_start_nfe)

    return DiffusionOutput(
        sequences=x,
        nfe=nfe,
        nfe_per_row=nfe_per_row,
        commits_per_step=torch.stack(commits) if commits else torch.zeros(0, batch, dtype=torch.long),
        prompt_length=prompt_length,
        history=history,
        block_nfe=block_nfe,
        tokens_per_row=tokens_per_row,
        model_tokens=model_tokens,
        refreshes=refreshes,
    )


def _keep(new, old):
    return old if new is None else new
