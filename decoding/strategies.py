"""Strategies: small objects that answer one question, "which masked positions of this block do I commit now,
and with which tokens". The loop (:mod:`cmikit.decoding.loop`) owns everything else (canvas, blocks, forward
passes, classifier-free guidance, EOS suppression, hooks, NFE counting).

Every strategy sees block-local tensors (``[B, n]`` for the ``n`` positions of the current block) and is
vectorised over the batch: per-row budgets are tensors, top-k with a per-row k is one ``argsort``.

=====================  ==========================================================================
strategy               reference behaviour matched
=====================  ==========================================================================
``low_confidence``     ``ML-GSAI/LLaDA:generate.py``: ``get_num_transfer_tokens`` schedule, float64
                       Gumbel-max sampling, confidence = softmax(untempered logits)[x0]
``random``             same schedule, confidence ~ U(0, 1)
``origin``             Dream ``diffusion_generate``: each mask revealed with prob 1 - s/t
``maskgit_plus``       Dream: prob of the sampled token; ``int(M (1 - s/t))`` tokens per step
``topk_margin``        Dream: top1 - top2 probability
``entropy``            Dream: negative entropy (sum p log p, eps 1e-10)
``threshold``          ``NVlabs/Fast-dLLM`` LLaDA threshold decoding: commit every mask with confidence
                       >= tau, always the top-1
``entropy_bound``      EB-Sampler (arXiv 2505.24857): largest low-entropy set with sum H - max H <= gamma
``ccd``                ``tonyckc/CCD-DLM-code`` ``_sample_inference_lookahead``: two-step consistency test
                       over a buffer of next-best positions; ``seek_mode`` = CCD-DS
``ccd_marginal``       the paper's formulation (arXiv 2512.02044 §3 as summarised in the brief §1.2):
                       score = -H(mixture of the last d predictive distributions); a reconstruction
=====================  ==========================================================================

Numerics (``config.numerics``). ``"float32"`` (default): the loop hands strategies float32 logits;
probabilities of a token are ``exp(l - logsumexp(l))``; rankings use one stable ``argsort`` over the block
(ties go to the lowest position). ``"reference"``: logits stay in the model's dtype; probabilities come from
``F.softmax`` in that dtype (float64 for Fast-dLLM ``threshold``, as its ``get_transfer_index``); rankings come
from ``torch.topk`` over the whole canvas row with ``-inf`` outside the block's masked positions, per row for
LLaDA / Fast-dLLM (which loop over rows) and on the batch for Dream and CCD. This is what the references run, so
ties and near-ties in bf16 resolve as they do there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cmikit.decoding.config import DiffusionGenerationConfig

NEG_INF = float("-inf")
# Confidence given to positions whose token is deferred (EOS with ``defer_eos``): below every real
# confidence, above the -inf of positions that are not masked, so they are still chosen last.
DEFERRED = -1e30


@dataclass
class StepInput:
    """What a strategy sees at one step of one block (all tensors block-local)."""

    step: int  # step index inside the block, from 0
    steps: int  # the block's step budget (config.steps / num_blocks)
    logits: torch.Tensor  # [B, n, V] float32, aligned (logits[:, i] predicts position i)
    tokens: torch.Tensor  # [B, n] current block tokens
    mask: torch.Tensor  # [B, n] bool, still masked
    config: DiffusionGenerationConfig
    generator: torch.Generator | None = None
    defer_ids: torch.Tensor | None = None  # token ids whose confidence is deferred (defer_eos)
    block_start: int = 0  # canvas position of the block's first position
    canvas_length: int | None = None  # prompt + gen_length (reference top-k runs over the whole row)

    @property
    def reference(self) -> bool:
        return self.config.numerics == "reference"


# ---------------------------------------------------------------------------------------------------
# Shared, vectorised pieces
# ---------------------------------------------------------------------------------------------------
def rank_positions(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Rank of each position by descending score among ``valid`` ones (0 = best); invalid get ``n``."""
    n = scores.shape[-1]
    scores = scores.masked_fill(~valid, NEG_INF)
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(n, device=scores.device).expand_as(order))
    return ranks.masked_fill(~valid, n)


def top_k_mask(scores: torch.Tensor, valid: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Per-row top-``k`` of ``scores`` among ``valid`` positions (``k`` a ``[B]`` tensor or an int)."""
    if not torch.is_tensor(k):
        k = torch.full(scores.shape[:1], int(k), device=scores.device)
    return (rank_positions(scores, valid) < k[:, None]) & valid


def first_k_in_rank_order(selected: torch.Tensor, ranks: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` selected positions with the smallest rank (per row)."""
    sub_ranks = rank_positions(-ranks.float(), selected)
    return selected & (sub_ranks < k)


def _canvas_rows(scores: torch.Tensor, valid: torch.Tensor, inp: StepInput) -> tuple[torch.Tensor, int]:
    """Block scores placed in a ``[B, canvas_length]`` row of ``-inf`` (invalid positions ``-inf`` too), as the
    references rank them; returns the rows and the block's offset in them."""
    length = inp.canvas_length or scores.shape[-1]
    offset = inp.block_start if inp.canvas_length else 0
    rows = torch.full((scores.shape[0], length), NEG_INF, dtype=scores.dtype, device=scores.device)
    rows[:, offset: offset + scores.shape[-1]] = scores.masked_fill(~valid, NEG_INF)
    return rows, offset


def reference_top_k(scores: torch.Tensor, valid: torch.Tensor, k: torch.Tensor | int, inp: StepInput,
                    per_row: bool) -> torch.Tensor:
    """``torch.topk`` over the canvas row, per row (LLaDA, Fast-dLLM loop over rows) or on the whole batch with
    one ``k`` (Dream, CCD); the chosen block positions as a ``[B, n]`` mask (restricted to ``valid``)."""
    rows, offset = _canvas_rows(scores, valid, inp)
    chosen = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
    if not torch.is_tensor(k):
        k = torch.full(scores.shape[:1], int(k), device=scores.device)
    if not per_row and bool((k == k[0]).all()):
        if int(k[0]) > 0:
            chosen.scatter_(1, torch.topk(rows, int(k[0]), dim=-1).indices, True)
    else:
        for row in range(rows.shape[0]):
            if int(k[row]) > 0:
                chosen[row, torch.topk(rows[row], int(k[row])).indices] = True
    return chosen[:, offset: offset + scores.shape[-1]] & valid


def reference_ranks(scores: torch.Tensor, valid: torch.Tensor, inp: StepInput) -> torch.Tensor:
    """:func:`rank_positions` with the order of a full ``torch.topk`` over the canvas row (sorted)."""
    rows, offset = _canvas_rows(scores, valid, inp)
    order = torch.topk(rows, rows.shape[-1], dim=-1, sorted=True).indices
    place = torch.empty_like(order)
    place.scatter_(-1, order, torch.arange(rows.shape[-1], device=rows.device).expand_as(order))
    block_place = place[:, offset: offset + scores.shape[-1]]
    return rank_positions(-block_place.double(), valid)


def select_top_k(scores: torch.Tensor, valid: torch.Tensor, k: torch.Tensor | int, inp: StepInput,
                 per_row: bool = False) -> torch.Tensor:
    """Top-``k`` per row: stable argsort (float32 numerics) or ``torch.topk`` as the reference runs it."""
    if inp.reference:
        return reference_top_k(scores, valid, k, inp, per_row)
    return top_k_mask(scores, valid, k)


def ranks_of(scores: torch.Tensor, valid: torch.Tensor, inp: StepInput) -> torch.Tensor:
    return reference_ranks(scores, valid, inp) if inp.reference else rank_positions(scores, valid)


def token_prob(logits: torch.Tensor, tokens: torch.Tensor, inp: StepInput, dtype: torch.dtype | None = None):
    """softmax(logits)[tokens]: ``exp(l - logsumexp)`` in float32, or ``F.softmax`` in the logits' dtype (or
    ``dtype``) with reference numerics."""
    if inp.reference:
        probs = F.softmax(logits if dtype is None else logits.to(dtype), dim=-1)
        return probs.gather(-1, tokens[..., None]).squeeze(-1)
    return prob_of(logits, tokens)


def uniform_rand(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    """LLaDA ``add_gumbel_noise`` + argmax: ``exp(l) / (-log u)^T`` in float64 (argmax of logits when T = 0)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits64 = logits.to(torch.float64)
    noise = -torch.log(uniform_rand(logits64.shape, generator, logits.device, torch.float64))
    return (logits64.exp() / noise**temperature).argmax(-1)


def filter_logits(logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Dream ``sample_tokens`` preprocessing: temperature, then nucleus, then top-k (filtered to dtype min)."""
    if temperature > 0:
        logits = logits / temperature
    fill = torch.finfo(logits.dtype).min
    if top_p is not None and top_p < 1:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the first token above the threshold
        remove[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(-1, sorted_idx, remove), fill)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, fill)
    return logits


def sample_from_probs(probs: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    """Categorical sample when temperature > 0, argmax otherwise (Dream ``sample_tokens``)."""
    if temperature > 0:
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
    return probs.argmax(-1)


def prob_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[tokens] without materialising the softmax: exp(l[t] - logsumexp(l))."""
    return (logits.gather(-1, tokens[..., None]).squeeze(-1) - logits.logsumexp(-1)).exp()


def neg_entropy(probs: torch.Tensor) -> torch.Tensor:
    """sum p log(p + 1e-10), Dream's ``neg_entropy`` confidence."""
    return (probs * torch.log(probs + 1e-10)).sum(-1)


def defer(conf: torch.Tensor, tokens: torch.Tensor, inp: StepInput) -> torch.Tensor:
    if inp.defer_ids is None or inp.defer_ids.numel() == 0:
        return conf
    return conf.masked_fill(torch.isin(tokens, inp.defer_ids), DEFERRED)


def llada_num_transfer_tokens(mask: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA ``get_num_transfer_tokens``: ``[B, steps]``, ``M // steps`` each, the first ``M % steps`` +1."""
    masked = mask.sum(-1, keepdim=True)
    base, remainder = masked // steps, masked % steps
    schedule = base.expand(-1, steps).clone()
    schedule += torch.arange(steps, device=mask.device)[None, :] < remainder
    return schedule


class Strategy:
    """Base class. ``start_block`` resets per-block state; ``select`` returns ``(commit [B, n] bool, tokens)``."""

    name = "strategy"
    reference = ""

    def __init__(self, config: DiffusionGenerationConfig) -> None:
        self.config = config

    def start_block(self, mask: torch.Tensor, steps: int) -> None:  # noqa: B027 - optional hook
        """Called once per block with the block's initial mask and step budget."""

    def select(self, inp: StepInput) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------
# LLaDA
# ---------------------------------------------------------------------------------------------------
class LLaDARemasking(Strategy):
    """LLaDA ``generate`` (``ML-GSAI/LLaDA:generate.py``) with ``remasking`` = low_confidence | random.

    Per step, ``get_num_transfer_tokens`` decides how many tokens each row commits (``M // steps``, the first
    ``M % steps`` steps one more); tokens are ``argmax(exp(logits) / (-log u)^T)`` in float64 (Gumbel-max
    sampling from softmax(logits / T)); the committed positions are the top-k by confidence, which is
    softmax of the *untempered* logits at the sampled token (``low_confidence``) or U(0, 1) (``random``).
    Differences, on purpose: top-k is vectorised (LLaDA loops over rows); the noise comes from the loop's
    seeded generator rather than the global RNG.
    """

    reference = "ML-GSAI/LLaDA generate.py"

    def __init__(self, config: DiffusionGenerationConfig, remasking: str = "low_confidence") -> None:
        super().__init__(config)
        if remasking not in ("low_confidence", "random"):
            raise ValueError(f"remasking={remasking!r}: choose 'low_confidence' or 'random'")
        self.remasking = self.name = remasking
        self.schedule: torch.Tensor | None = None

    def start_block(self, mask: torch.Tensor, steps: int) -> None:
        self.schedule = llada_num_transfer_tokens(mask, steps)

    def select(self, inp: StepInput) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = gumbel_argmax(inp.logits, self.config.temperature, inp.generator)
        if self.remasking == "low_confidence":
            conf = token_prob(inp.logits, tokens, inp)
        else:
            conf = uniform_rand(tokens.shape, inp.generator, tokens.device)
        conf = defer(conf, tokens, inp)
        if inp.step < inp.steps:
            k = self.schedule[:, inp.step]
        else:  # past the budget (only if a hook re-masked tokens): finish the block
            k = inp.mask.sum(-1)
        return select_top_k(conf, inp.mask, k, inp, per_row=True), tokens


# ---------------------------------------------------------------------------------------------------
# Dream
# ---------------------------------------------------------------------------------------------------
class DreamSampler(Strategy):
    """Dream ``diffusion_generate`` (``_sample`` / ``sample_tokens``) with ``alg`` = origin | maskgit_plus |
    topk_margin | entropy.

    Timesteps ``linspace(1, eps, steps + 1)``; at step i with ``t, s = ts[i], ts[i + 1]``:

    * ``origin``: every mask is revealed independently with probability ``1 - s/t`` (1 at the last step),
      with a token sampled from the filtered distribution;
    * otherwise tokens and confidences come from ``sample_tokens`` (temperature, top-p, top-k; categorical
      sample or argmax), and ``int(M * (1 - s/t))`` positions are committed (all remaining at the last step),
      top-k by confidence, or sampled from softmax(confidence / alg_temp) when ``alg_temp > 0`` (here as
      Gumbel-top-k, the same distribution as ``multinomial`` without replacement).

    Dream's quirk is kept: with ``eps = 1e-3`` and ``steps = M`` the first step commits ``int(0.999) = 0``
    tokens (a wasted forward pass) and the last one commits 2. ``corrected_schedule=True`` (not Dream's
    behaviour) uses ``linspace(1, 0, steps + 1)``, a float-safe floor and at least one token per step.
    ``M`` is the row's own mask count; Dream uses the batch mean, which is the same number whenever every
    row has the same count (always true for these fixed schedules, since every row commits the same number).
    """

    reference = "Dream diffusion_generate (HF remote code generation_utils.py)"

    def __init__(self, config: DiffusionGenerationConfig, alg: str = "entropy") -> None:
        super().__init__(config)
        if alg not in ("origin", "maskgit_plus", "topk_margin", "entropy"):
            raise ValueError(f"alg={alg!r}: choose origin, maskgit_plus, topk_margin or entropy")
        self.alg = self.name = alg
        self.timesteps: torch.Tensor | None = None

    def start_block(self, mask: torch.Tensor, steps: int) -> None:
        if self.config.corrected_schedule:
            self.timesteps = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        else:
            self.timesteps = torch.linspace(1, self.config.eps, steps + 1)  # float32, as Dream

    def transfer_fraction(self, step: int, steps: int) -> float | None:
        """``1 - s/t`` at this step, ``None`` at (or past) the last step (commit everything)."""
        if step >= steps - 1:
            return None
        t, s = self.timesteps[step], self.timesteps[step + 1]
        return 1 - s / t

    def num_transfer(self, masked: torch.Tensor, step: int, steps: int) -> torch.Tensor:
        frac = self.transfer_fraction(step, steps)
        if frac is None:
            return masked
        if self.config.corrected_schedule:
            k = torch.floor(masked.double() * frac + 1e-6).long()
            return torch.minimum(k.clamp(min=1), masked)
        # Dream: int(num_mask_token * (1 - s / t)) on float32 tensors.
        return (masked.float() * frac).long()

    def select(self, inp: StepInput) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        logits = filter_logits(inp.logits, cfg.temperature, cfg.top_p, cfg.top_k)
        probs = logits.softmax(-1)
        tokens = sample_from_probs(probs, cfg.temperature, inp.generator)
        if self.alg == "origin":
            frac = self.transfer_fraction(inp.step, inp.steps)
            if frac is None:
                return inp.mask, tokens
            reveal = uniform_rand(inp.mask.shape, inp.generator, inp.mask.device) < float(frac)
            return inp.mask & reveal, tokens
        if self.alg == "maskgit_plus":
            conf = probs.gather(-1, tokens[..., None]).squeeze(-1)
        elif self.alg == "topk_margin":
            top2 = probs.topk(2, dim=-1).values
            conf = top2[..., 0] - top2[..., 1]
        else:
            conf = neg_entropy(probs)
        conf = defer(conf, tokens, inp)
        k = self.num_transfer(inp.mask.sum(-1), inp.step, inp.steps)
        if cfg.alg_temp:
            gumbel = -torch.log(-torch.log(uniform_rand(conf.shape, inp.generator, conf.device)))
            conf = conf / cfg.alg_temp + gumbel
        return select_top_k(conf, inp.mask, k, inp), tokens


# ---------------------------------------------------------------------------------------------------
# Adaptive parallel decoding
# ---------------------------------------------------------------------------------------------------
class ConfidenceThreshold(Strategy):
    """Fast-dLLM threshold parallel decoding (``NVlabs/Fast-dLLM:llada/generate.py`` ``get_transfer_index``
    with ``threshold``): sample as LLaDA (Gumbel-max), confidence = softmax(logits)[x0], commit every masked
    position of the block with confidence >= tau, and always the most confident one. Blocks run until no
    mask is left; ``steps`` is ignored (as in Fast-dLLM).
    """

    name = "threshold"
    reference = "NVlabs/Fast-dLLM llada generate(threshold=...)"

    def select(self, inp: StepInput) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = gumbel_argmax(inp.logits, self.config.temperature, inp.generator)
        # Fast-dLLM: F.softmax(logits.to(float64)); top-1 = the first of topk(confidence, M) per row.
        conf = defer(token_prob(inp.logits, tokens, inp, dtype=torch.float64), tokens, inp)
        if inp.reference:
            rows, offset = _canvas_rows(conf, inp.mask, inp)
            top1 = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
            for row, count in enumerate(inp.mask.sum(-1).tolist()):
                if count:
                    top1[row, torch.topk(rows[row], count).indices[0]] = True
            top1 = top1[:, offset: offset + conf.shape[-1]] & inp.mask
        else:
            top1 = top_k_mask(conf, inp.mask, 1)
        return top1 | (inp.mask & (conf >= self.config.threshold)), tokens


class EntropyBound(Strategy):
    """EB-Sampler (Ben-Hamu et al., arXiv 2505.24857): sort the block's masked positions by entropy (low
    first) and commit the largest prefix whose ``sum(H) - max(H) <= gamma``; at least one.
    """

    name = "entropy_bound"
    reference = "EB-Sampler (arXiv 2505.24857); transformers diffusion_gemma EntropyBoundSampler"

    def select(self, inp: StepInput) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        probs = filter_logits(inp.logits, cfg.temperature, cfg.top_p, cfg.top_k).softmax(-1)
        tokens = sample_from_probs(probs, cfg.temperature, inp.generator)
        entropy = -neg_entropy(probs)
        ranks = ranks_of(defer(-entropy, tokens, inp), inp.mask, inp)
        sorted_h = torch.sort(entropy.masked_fill(~inp.mask, math.inf), dim=-1).values
        # For an ascending prefix, max = its last element: the bound is cumsum - current, non-decreasing.
        slack = sorted_h.cumsum(-1) - sorted_h
        accepted = ((slack <= cfg.entropy_bound) & torch.isfinite(sorted_h)).sum(-1).clamp(min=1)
        return inp.mask & (ranks < accepted[:, None]), tokens


# ---------------------------------------------------------------------------------------------------
# CCD
# ---------------------------------------------------------------------------------------------------
class CCDOfficial(Strategy):
    """CCD as released: ``tonyckc/CCD-DLM-code:model.py`` ``_sample_inference_lookahead`` (brief §1.3).

    Confidence is Dream's negative entropy; ``k = N // T`` tokens per plain step (N = block length,
    T = block steps). The verification buffer holds the ``n_v`` next-best masked positions after each
    commit. ``n_v`` is 1 during warm-up, then grows by one per step up to ``vmax = k + int(k*expand_ratio)``;
    in the late stage (<= ``late_frac * N`` masks left) it is pinned to 2. Steps ``< warmup_steps`` and the
    last step decode plainly (top-k). Otherwise, when the current top-k meets last step's buffer, the
    candidates are the current top-``n_v``; those that were buffered *and* whose argmax token did not change
    since the previous step pass the consistency test. If at least k pass, they are all committed with
    ``seek_mode`` (CCD-DS, adaptive budget) or the first k without; otherwise the plain top-k is committed.

    Deliberate differences: batched (per-row ``n_v``, buffers and late stage; the release only works at
    batch 1); ranks only range over masked positions (the release clamps its look-ahead to the mask count
    in most branches); ``alg_temp`` is not supported (the release's is untested).

    Where the release departs from itself (checked against ``model.py`` at cfcfd92, loop
    ``for i in range(steps)``), and what this class does instead (each case has a test):

    * **Fewer masks than k** (k >= 2, near the end, e.g. after CCD-DS committed extra tokens, or T not
      dividing N): the release's ``torch.topk(full_confidence, k)`` also picks non-mask positions (confidence
      -inf) and writes ``x_`` there, which holds MASK outside the masked positions: it *re-masks* decoded or
      prompt tokens. Here a step commits at most the masks it has; committed and prompt tokens never change.
    * **T does not divide N**: the release uses ``k = int(N / T)`` and stops after T passes with
      ``N - kT`` masks left (fixed budget). Here the block runs on with plain top-k steps until it is full:
      fixed-budget CCD then takes ``ceil(N / k)`` passes (N = 10, T = 4: 5 passes), not T.
    * **T > N**: the release's ``k = int(N / T) = 0`` commits nothing in T passes (its ``if
      number_transfer_tokens > 0`` skips every step). Here ``k = max(1, N // T)``: one token per step, N
      passes (``fixed_steps=True`` pads to T passes, as the release's loop would run).
    * **Step count**: the release reports ``finish_step``, the loop index at exit, which is NFE - 1 (NFE
      when the block fills during the first ``warmup_steps`` steps, where its top-of-loop check breaks).
      ``DiffusionOutput.nfe`` / ``nfe_per_row`` here count forward passes.
    """

    name = "ccd"
    reference = "tonyckc/CCD-DLM-code model.py _sample_inference_lookahead"

    def start_block(self, mask: torch.Tensor, steps: int) -> None:
        batch, n = mask.shape
        self.block_size = n
        self.k = max(1, n // steps)
        self.vmax = self.k + int(self.k * self.config.expand_ratio)
        self.n_v = torch.ones(batch, dtype=torch.long, device=mask.device)
        self.buffer = torch.zeros_like(mask)
        self.prev_argmax: torch.Tensor | None = None

    def select(self, inp: StepInput) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, i = self.config, inp.step
        warmup = cfg.warmup_steps
        masked = inp.mask.sum(-1)
        if i < warmup - 1:
            self.n_v = torch.ones_like(self.n_v)
        else:
            late = masked <= cfg.late_frac * self.block_size
            self.n_v = (torch.where(late, torch.ones_like(self.n_v), self.n_v) + 1).clamp(max=self.vmax)

        probs = filter_logits(inp.logits, cfg.temperature, cfg.top_p, cfg.top_k).softmax(-1)
        argmax = inp.logits.argmax(-1)
        tokens = sample_from_probs(probs, cfg.temperature, inp.generator) if cfg.temperature > 0 else argmax
        conf = defer(neg_entropy(probs), tokens, inp)
        ranks = ranks_of(conf, inp.mask, inp)
        top = (ranks < self.k) & inp.mask

        if i < warmup or i >= inp.steps - 1 or self.prev_argmax is None:
            commit = top
        else:
            gate = (top & self.buffer).any(-1)
            candidates = (ranks < self.n_v[:, None]) & inp.mask
            match = candidates & self.buffer & (argmax == self.prev_argmax)
            if not cfg.seek_mode:
                match = first_k_in_rank_order(match, ranks, self.k)
            use_match = gate & (match.sum(-1) >= self.k)
            commit = torch.where(use_match[:, None], match, top)
        # Next-best positions after this commit (the release rebuilds the buffer from topk(n_d + |commit|)).
        remaining = inp.mask & ~commit
        self.buffer = (rank_positions(-ranks.float(), remaining) < self.n_v[:, None]) & remaining
        self.prev_argmax = argmax
        return commit, tokens


class CCDMarginal(Strategy):
    """CCD as the paper states it (arXiv 2512.02044 §3, from the brief §1.2; a reconstruction, not the release).

    Keeps a sliding window of the predictive distributions of the last ``d`` steps (``ccd_window``), storing
    only the ``V`` (``ccd_top_v``) best still-masked positions per step. The score of a masked position is
    ``-H(p_bar)`` where ``p_bar`` is the mixture of its current distribution and its stored ones, so
    ``H(p_bar) = mean H + CMI``: ranking prefers tokens that are confident *and* context-insensitive.
    Tokens come from ``p_bar`` (argmax at temperature 0), or from the current distribution with
    ``ccd_tokens_from="current"``: when sampling, stale distributions from before a choice was resolved keep
    ``p_bar`` mixed, so drawing from it can contradict tokens committed since.

    Budget: ``k = N // T`` per step (fixed-budget CCD, ``ccd_entropy_threshold=None``); CCD-DS
    (``ccd_entropy_threshold = epsilon``) also commits every *buffered* position (one with at least one
    stored distribution) whose ``H(p_bar) <= epsilon``.
    """

    name = "ccd_marginal"
    reference = "arXiv 2512.02044 §3 (paper formulation, reconstructed)"

    def start_block(self, mask: torch.Tensor, steps: int) -> None:
        self.k = max(1, mask.shape[-1] // steps)
        self.window: list[tuple[torch.Tensor, torch.Tensor]] = []

    def select(self, inp: StepInput) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        probs = filter_logits(inp.logits, cfg.temperature, cfg.top_p, cfg.top_k).softmax(-1)
        total = probs.clone() if self.window else probs
        count = torch.ones(probs.shape[:2], device=probs.device)
        for positions, stored in self.window:
            total.scatter_add_(1, positions[..., None].expand_as(stored), stored)
            count.scatter_add_(1, positions, torch.ones_like(positions, dtype=count.dtype))
        mixture = total / count[..., None]
        source = mixture if cfg.ccd_tokens_from == "mixture" else probs
        tokens = sample_from_probs(source, cfg.temperature, inp.generator)
        entropy = -neg_entropy(mixture)
        score = defer(-entropy, tokens, inp)
        commit = select_top_k(score, inp.mask, self.k, inp)
        if cfg.ccd_entropy_threshold is not None:
            commit |= inp.mask & (count > 1) & (entropy <= cfg.ccd_entropy_threshold)
        remaining = inp.mask & ~commit
        v = min(cfg.ccd_top_v, remaining.shape[-1])
        keep_ranks = ranks_of(score, remaining, inp)
        positions = torch.argsort(keep_ranks, dim=-1, stable=True)[:, :v]
        # Rows with fewer than V masks store some unmasked positions; those never score again.
        self.window.append((positions, probs.gather(1, positions[..., None].expand(-1, -1, probs.shape[-1]))))
        self.window = self.window[-(cfg.ccd_window - 1):] if cfg.ccd_window > 1 else []
        return commit, tokens


def make_strategy(config: DiffusionGenerationConfig) -> Strategy:
    """The strategy object named by ``config.strategy``."""
    name = config.strategy
    if name in ("low_confidence", "random"):
        return LLaDARemasking(config, name)
    if name in ("origin", "maskgit_plus", "topk_margin", "entropy"):
        return DreamSampler(config, name)
    if name == "threshold":
        return ConfidenceThreshold(config)
    if name == "entropy_bound":
        return EntropyBound(config)
    if name == "ccd":
        return CCDOfficial(config)
    if name == "ccd_marginal":
        return CCDMarginal(config)
    raise ValueError(f"Unknown strategy {name!r}")


__all__ = [
    "CCDMarginal", "CCDOfficial", "ConfidenceThreshold", "DreamSampler", "EntropyBound", "LLaDARemasking",
    "StepInput", "Strategy", "llada_num_transfer_tokens", "make_strategy",
]
