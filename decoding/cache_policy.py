"""When an approximate KV cache refreshes: policies beside the strategies, not flags inside the loop.

The prefix / dual cache of :class:`cmikit.decoding.adapters.BlockKVCache` (Fast-dLLM) freezes the keys/values
of the positions outside the current window at a *refresh* (one full forward); the cached steps after it
attend to those frozen keys/values, which do not know what the block committed since. The loop asks a
:class:`RefreshPolicy` before every step after a block's first one (that first step always refreshes) whether
to refresh now, and tells it after every step what was committed:

============  ==========================================================================================
``block``     Fast-dLLM (``generate_with_prefix_cache`` / ``_dual_cache``): refresh only when a block starts
              (``cache_refresh=N``: also every N steps inside a block).
``interval``  dLLM-Cache's fixed refresh interval: every ``cache_refresh`` steps (default 2).
``surprisal`` (default) refresh when what was committed since the last refresh carries information: the
              summed surprisal ``-log p`` of the committed tokens under the logits they were drawn from
              reaches ``cache_surprisal`` nats in some row. A token committed at ``p ~ 1`` tells the rest of
              the canvas nothing it did not know from the mask, so copying confident tokens runs on the
              cache; a *decision* (a token committed at ``p = 0.75`` carries 0.29 nats) refreshes at the next
              step. Adaptive like dLLM-Cache / d2Cache / Elastic-Cache (refresh when the content moved),
              but triggered by the model's own confidence, which costs no extra computation.
============  ==========================================================================================

What a refresh recomputes is the cache's *scope* (``cache_refresh_scope``): ``canvas`` (a full forward, Fast-dLLM's
refresh; the default of ``block`` and ``interval``) or ``left`` (the default of ``surprisal``): one pass over the
prompt, the finished blocks and the block against the stored keys/values of the masked suffix, which keep theirs
(:class:`cmikit.decoding.adapters.BlockKVCache`).

Degenerate settings equal no cache bit for bit (every step refreshes): ``interval`` with ``cache_refresh=1``,
``surprisal`` with ``cache_surprisal=0`` and ``cache_refresh_scope="canvas"``. ``surprisal`` decides per row: in a batch, the rows that spent their
budget run the whole canvas and get fresh keys/values, the others run cached in the same step (two model
calls, one step, one NFE; each row's positions counted as run), so a sequence costs the same in a batch as
alone.
"""

from __future__ import annotations

import torch

from cmikit.harness.errors import ConfigError

CACHE_POLICIES = ("surprisal", "block", "interval")
DEFAULT_CACHE_POLICY = "surprisal"
#: What a refresh recomputes (:class:`cmikit.decoding.adapters.BlockKVCache`): the whole canvas, or everything
#: left of the window's end against the stored suffix.
REFRESH_SCOPES = ("canvas", "left")


class RefreshPolicy:
    """Decide, per step inside a block, whether the cache refreshes (a full forward) or runs cached."""

    name = "base"
    #: Whether the policy also decides the first step of a block (else that step always refreshes, Fast-dLLM).
    at_block_start = False

    def start_block(self, block_mask: torch.Tensor) -> None:
        """A new block starts (its first step always refreshes)."""

    def refresh_now(self, step: int) -> bool | torch.Tensor:
        """Whether step ``step`` (>= 1) of the block runs a full forward that refreshes the cache: for the whole
        batch (``bool``) or per row (``[B]`` bool: the marked rows refresh, the others run cached)."""
        raise NotImplementedError

    def observe(self, commit: torch.Tensor, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        """After a step: ``commit`` ``[B, n]`` positions filled with ``tokens`` ``[B, n]`` from ``logits``."""


class BlockRefresh(RefreshPolicy):
    """Fast-dLLM: refresh at block starts only, or also every ``every`` steps."""

    name = "block"

    def __init__(self, every: int | None = None) -> None:
        self.every = every

    def refresh_now(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0


class IntervalRefresh(BlockRefresh):
    """dLLM-Cache's fixed interval: every ``every`` steps (the block start too)."""

    name = "interval"

    def __init__(self, every: int | None = None) -> None:
        super().__init__(2 if every is None else every)


class SurprisalRefresh(RefreshPolicy):
    """Refresh once the committed tokens' summed surprisal since the last refresh reaches ``nats`` in a row.

    The budget runs across blocks: at a block start (step 0) a row whose budget is not spent does not refresh
    either; the cache then shifts its window and freezes the finished block's keys/values from that pass
    (:meth:`cmikit.decoding.adapters.BlockKVCache.step`)."""

    at_block_start = True

    name = "surprisal"

    def __init__(self, nats: float) -> None:
        self.nats = nats
        self.spent: torch.Tensor | None = None

    def refresh_now(self, step: int) -> torch.Tensor | bool:
        """Per row: the rows whose budget is spent refresh (the others run cached) and start over."""
        if self.spent is None:
            return False
        due = self.spent >= self.nats
        self.spent = self.spent.masked_fill(due, 0.0)
        return due

    def observe(self, commit: torch.Tensor, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
        info = torch.where(commit, -logp, torch.zeros_like(logp)).sum(-1)
        self.spent = info if self.spent is None else self.spent + info


def make_refresh_policy(config) -> RefreshPolicy:
    """The policy named by ``config.cache_policy`` (``None``: ``interval`` when ``cache_refresh`` is set, else
    the default ``surprisal``)."""
    name = resolved_cache_policy(config)
    if name == "block":
        return BlockRefresh(config.cache_refresh)
    if name == "interval":
        return IntervalRefresh(config.cache_refresh)
    if name == "surprisal":
        return SurprisalRefresh(config.cache_surprisal)
    raise ConfigError(f"cache_policy={name!r}: choose one of {', '.join(CACHE_POLICIES)}")


def resolved_refresh_scope(config) -> str:
    """``config.cache_refresh_scope``, or the policy's own: ``"left"`` for ``surprisal`` (a decision in the block
    moves the prompt's and the finished blocks' keys/values, which the block reads; the masked suffix only holds
    guesses), ``"canvas"`` for Fast-dLLM's ``block`` and dLLM-Cache's ``interval`` (their refresh is a full
    forward)."""
    if config.cache_refresh_scope is not None:
        return config.cache_refresh_scope
    return "left" if resolved_cache_policy(config) == "surprisal" else "canvas"


def resolved_cache_policy(config) -> str:
    if config.cache_policy is not None:
        return config.cache_policy
    return "interval" if config.cache_refresh is not None else DEFAULT_CACHE_POLICY
