"""``DiffusionGenerationConfig``: every knob of the decoding loop and its strategies, validated in one place.

Modelled on transformers' ``GenerationConfig`` (and Dream's ``DreamGenerationConfig``, whose ``validate`` is
a no-op): plain attributes with documented defaults, ``validate()`` raising ``cmikit.harness.errors.ConfigError`` (a
``ValueError``) that names the field, the value and what is allowed, and ``to_dict`` / ``update`` helpers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from cmikit.harness.errors import ConfigError

STRATEGIES = (
    "low_confidence", "random",                                 # LLaDA generate.py remasking
    "origin", "maskgit_plus", "topk_margin", "entropy",        # Dream diffusion_generate algs
    "threshold",                                                # Fast-dLLM confidence-threshold parallel
    "entropy_bound",                                            # EB-Sampler
    "ccd", "ccd_marginal",                                      # CCD as released / as the paper states it
)

CACHE_MODES = ("none", "prefix", "dual")
NUMERICS = ("float32", "reference")


@dataclass
class DiffusionGenerationConfig:
    """Configuration of :func:`decoding.generate`.

    Canvas and schedule
        gen_length (int, 128): number of mask tokens appended to the prompt.
        block_length (int | None, None): semi-autoregressive block size; ``None`` means one block of
            ``gen_length`` (LLaDA asserts ``gen_length % block_length == 0``).
        steps (int | None, None): total step budget over all blocks (each block gets ``steps / num_blocks``);
            ``None`` means ``gen_length`` (one token per step). Adaptive strategies (``threshold``,
            ``entropy_bound``, CCD-DS) may finish a block early; a block never runs past the point where it has
            no mask left.
        fixed_steps (bool, False): run every block for its full step budget (``steps / num_blocks`` forward
            passes) even when it has no mask left earlier, as LLaDA ``generate`` and Dream
            ``diffusion_generate`` do (their loops have no early exit), so NFE is comparable with their
            papers. Off by default: steps that could commit nothing are skipped. A block with masks left after
            its budget (CCD with steps not dividing the block) still runs on until it is full.
        strategy (str, "low_confidence"): one of :data:`STRATEGIES`, see ``cmikit.decoding.strategies``.

    Sampling (all strategies)
        temperature (float, 0.0): 0 = greedy. LLaDA strategies use float64 Gumbel-max; Dream and CCD sample
            from softmax(logits / temperature) after top-p / top-k.
        top_p (float | None), top_k (int | None): Dream-style nucleus / top-k filtering.
        cfg_scale (float, 0.0): LLaDA classifier-free guidance; the unconditional pass masks the prompt.
        suppress_eos (bool, False): LLaDA ``logits_eos_inf``: the EOS logit set to -inf before sampling.
        suppress_eos_scope (str, "eos"): which ids ``suppress_eos`` hits: ``"eos"`` = the model's EOS only
            (``config.eos_token_id``, else the tokenizer's), as LLaDA's ``logits_eos_inf`` (it hard-codes
            126081); ``"eos_eot"`` = EOS and the end-of-turn tokens (the wider form, not LLaDA's).
        defer_eos (bool, False): LLaDA ``confidence_eos_eot_inf`` done as intended (the reference only hits
            EoT): positions whose sampled token is EOS / EoT get confidence -inf.
        seed (int | None, None): seeds the loop's own ``torch.Generator`` (same seed, same output).

    Strategy parameters
        alg_temp (float | None): Dream: sample positions from softmax(confidence / alg_temp) instead of top-k.
        eps (float, 1e-3): Dream timestep schedule ``linspace(1, eps, steps + 1)``.
        corrected_schedule (bool, False): NOT Dream's behaviour: ``linspace(1, 0, steps + 1)`` with a
            float-safe floor, so no step is wasted (Dream's first step commits 0 tokens when steps = length).
        threshold (float, 0.9): Fast-dLLM confidence threshold tau in (0, 1].
        entropy_bound (float, 0.1): EB-Sampler gamma (nats), >= 0.
        expand_ratio (float, 4.0), warmup_steps (int, 5), late_frac (float, 0.1), seek_mode (bool, True): CCD as
            released (``tonyckc/CCD-DLM-code``); ``seek_mode`` is CCD-DS (adaptive budget).
        ccd_window (int, 3), ccd_top_v (int, 4), ccd_entropy_threshold (float | None, 0.1): CCD as the paper
            states it: window d, positions kept per step V, DS threshold epsilon (``None`` = fixed budget).
        ccd_tokens_from (str, "mixture"): ``ccd_marginal`` draws tokens from the mixture p_bar (the paper's
            target) or from the ``"current"`` step's distribution (safer when sampling, temperature > 0).

    KV cache (Fast-dLLM, arXiv 2505.22618; ``NVlabs/Fast-dLLM`` ``generate_with_prefix_cache`` / ``_dual_cache``)
        cache (str, "none"): ``"none"`` runs the whole canvas every step (exact). ``"prefix"``: at each block
            start one full forward stores the keys/values of everything left of the block, and the block's other
            steps run only the block and everything right of it. ``"dual"``: also keeps the (masked) suffix right
            of the block, so steps run only the block. Both are approximations (the cached keys/values were
            computed when the block still held masks), as in Fast-dLLM; the refresh step's logits are used for
            that step's commits, so NFE still counts every forward pass.
            On a block-diffusion model (``config.bd_size``, causal between blocks) either mode is the exact cache
            of finished blocks (:mod:`cmikit.decoding.block_diffusion`) and no policy applies.
        cache_policy (str | None, None): when the approximate cache refreshes (one full forward), see
            :mod:`cmikit.decoding.cache_policy`: ``"surprisal"`` (the default: refresh after the committed tokens
            carried ``cache_surprisal`` nats, so confident copies run cached and decisions refresh),
            ``"block"`` (Fast-dLLM's fixed behaviour: block starts only), ``"interval"`` (every
            ``cache_refresh`` steps, dLLM-Cache). ``None``: ``"interval"`` when ``cache_refresh`` is set, else
            ``"surprisal"``. Only with a cache.
        cache_refresh (int | None, None): ``"block"``: ``None`` refreshes only at block boundaries, as
            Fast-dLLM; ``N`` also every ``N`` steps inside a block (``1`` = no cache). ``"interval"``: the
            period (default 2). Only with a cache.
        cache_surprisal (float, 0.4): the ``"surprisal"`` policy's budget in nats (``0`` = refresh every step).
        cache_refresh_scope (str | None, None): what a refresh recomputes. ``"canvas"``: a full forward over the
            whole canvas (Fast-dLLM's refresh). ``"left"``: everything left of the window's end (the prompt, the
            finished blocks, the block), against the stored keys/values of the masked suffix, which keep theirs.
            ``None``: ``"left"`` under the ``"surprisal"`` policy, ``"canvas"`` under ``"block"`` / ``"interval"``.
            With ``cache="prefix"`` the window reaches the end, so both are the full forward. Only with a cache.

    Numerics
        numerics (str, "float32"): ``"float32"`` casts the block's logits to float32 and ranks with a stable
            sort (ties go to the lowest position). ``"reference"`` computes as each reference does: in the
            model's dtype with ``F.softmax`` and ``torch.topk`` over the whole canvas row (LLaDA, Dream, CCD),
            float64 softmax for Fast-dLLM ``threshold``; see ``docs/decoding.md`` for which is bit-equal to what.

    Outputs
        output_history (bool, False): keep the canvas after every step.
        max_context (int | None, None): override the model's context length check.
    """

    gen_length: int = 128
    block_length: int | None = None
    steps: int | None = None
    fixed_steps: bool = False
    strategy: str = "low_confidence"
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    cfg_scale: float = 0.0
    suppress_eos: bool = False
    suppress_eos_scope: str = "eos"
    defer_eos: bool = False
    seed: int | None = None
    alg_temp: float | None = None
    eps: float = 1e-3
    corrected_schedule: bool = False
    threshold: float = 0.9
    entropy_bound: float = 0.1
    expand_ratio: float = 4.0
    warmup_steps: int = 5
    late_frac: float = 0.1
    seek_mode: bool = True
    ccd_window: int = 3
    ccd_top_v: int = 4
    ccd_entropy_threshold: float | None = 0.1
    ccd_tokens_from: str = "mixture"
    cache: str = "none"
    cache_policy: str | None = None
    cache_refresh: int | None = None
    cache_surprisal: float = 0.4
    cache_refresh_scope: str | None = None
    numerics: str = "float32"
    output_history: bool = False
    max_context: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- derived values ----------------------------------------------------------------------------
    @property
    def resolved_block_length(self) -> int:
        return self.gen_length if self.block_length is None else self.block_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.resolved_block_length

    @property
    def resolved_steps(self) -> int:
        return self.gen_length if self.steps is None else self.steps

    @property
    def steps_per_block(self) -> int:
        return self.resolved_steps // self.num_blocks

    # -- validation --------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`~cmikit.harness.errors.ConfigError` (a ``ValueError``) naming the field, its value and what is allowed."""

        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"DiffusionGenerationConfig.{name}={getattr(self, name)!r} is invalid: {allowed}.")

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and math.isnan(value):
                raise bad(f.name, "must be a number, not NaN")
        if not isinstance(self.gen_length, int) or self.gen_length < 1:
            raise bad("gen_length", "must be a positive integer")
        if self.block_length is not None and (not isinstance(self.block_length, int) or self.block_length < 1):
            raise bad("block_length", "must be a positive integer or None (one block)")
        if self.gen_length % self.resolved_block_length:
            raise ConfigError(
                f"gen_length={self.gen_length} (--gen-length) is not divisible by block_length={self.block_length} "
                f"(--block-length): blocks must tile the generation (e.g. block_length={self._divisor_hint()})."
            )
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise bad("steps", "must be a positive integer or None (= gen_length)")
        if self.resolved_steps % self.num_blocks:
            raise ConfigError(
                f"steps={self.resolved_steps} is not divisible by the number of blocks ({self.num_blocks} = "
                f"gen_length {self.gen_length} / block_length {self.resolved_block_length}): each block needs the "
                f"same number of steps (e.g. steps={self.num_blocks * max(1, self.resolved_steps // self.num_blocks)})."
            )
        if self.strategy not in STRATEGIES:
            raise bad("strategy", f"choose one of {', '.join(STRATEGIES)}")
        if self.suppress_eos_scope not in ("eos", "eos_eot"):
            raise bad("suppress_eos_scope", "choose 'eos' (LLaDA logits_eos_inf) or 'eos_eot' (EOS and end-of-turn)")
        if self.temperature < 0:
            raise bad("temperature", "must be >= 0 (0 = greedy)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1] or None")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise bad("top_k", "must be a positive integer or None")
        if self.cfg_scale < 0:
            raise bad("cfg_scale", "must be >= 0 (0 disables classifier-free guidance)")
        if self.alg_temp is not None and self.alg_temp < 0:
            raise bad("alg_temp", "must be >= 0 or None")
        if not 0 <= self.eps < 1:
            raise bad("eps", "must be in [0, 1)")
        if not 0 < self.threshold <= 1:
            raise bad("threshold", "a confidence threshold must be in (0, 1]")
        if self.entropy_bound < 0:
            raise bad("entropy_bound", "must be >= 0 (nats)")
        if self.expand_ratio < 0:
            raise bad("expand_ratio", "must be >= 0")
        if self.warmup_steps < 1:
            raise bad("warmup_steps", "must be >= 1")
        if not 0 <= self.late_frac < 1:
            raise bad("late_frac", "must be in [0, 1)")
        if self.ccd_window < 1:
            raise bad("ccd_window", "must be >= 1")
        if self.ccd_top_v < 1:
            raise bad("ccd_top_v", "must be >= 1")
        if self.ccd_entropy_threshold is not None and self.ccd_entropy_threshold <= 0:
            raise bad("ccd_entropy_threshold", "must be > 0 (nats) or None for the fixed budget")
        if self.ccd_tokens_from not in ("mixture", "current"):
            raise bad("ccd_tokens_from", "choose 'mixture' or 'current'")
        if self.cache not in CACHE_MODES:
            raise bad("cache", f"choose one of {', '.join(CACHE_MODES)}")
        if self.cache_refresh is not None and (not isinstance(self.cache_refresh, int) or isinstance(
                self.cache_refresh, bool) or self.cache_refresh < 1):
            raise bad("cache_refresh", "must be a positive number of steps, or None (refresh at block boundaries)")
        from cmikit.decoding.cache_policy import CACHE_POLICIES

        if self.cache_policy is not None and self.cache_policy not in CACHE_POLICIES:
            raise bad("cache_policy", f"choose one of {', '.join(CACHE_POLICIES)}, or None (the default)")
        if self.cache_surprisal < 0:
            raise bad("cache_surprisal", "must be >= 0 nats (0 refreshes every step)")
        from cmikit.decoding.cache_policy import REFRESH_SCOPES

        if self.cache_refresh_scope is not None and self.cache_refresh_scope not in REFRESH_SCOPES:
            raise bad("cache_refresh_scope", f"choose one of {', '.join(REFRESH_SCOPES)}, or None (the policy's)")
        if self.cache == "none":
            for name in ("cache_refresh", "cache_policy", "cache_refresh_scope"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"DiffusionGenerationConfig.{name}={getattr(self, name)!r} needs a KV cache: "
                                      "it has no effect with cache='none'; pass cache='prefix' or 'dual' with it.")
        if self.numerics not in NUMERICS:
            raise bad("numerics", f"choose one of {', '.join(NUMERICS)}")
        if self.max_context is not None and self.max_context < 1:
            raise bad("max_context", "must be a positive integer or None")

    def _divisor_hint(self) -> int:
        want = self.resolved_block_length
        divisors = [d for d in range(1, self.gen_length + 1) if self.gen_length % d == 0]
        return min(divisors, key=lambda d: abs(d - want))

    # -- helpers -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, **kwargs: Any) -> DiffusionGenerationConfig:
        """A validated copy with ``kwargs`` replaced; unknown names raise ``TypeError`` listing the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"Unknown DiffusionGenerationConfig field(s) {unknown}; valid: {sorted(names)}")
        return dataclasses.replace(self, **kwargs)
