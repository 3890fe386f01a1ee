"""cmikit.decoding: decode masked diffusion LMs (LLaDA, Dream, or any bidirectional model with a mask token) with
Coherent Contextual Decoding (CCD, Chen et al. 2025, arXiv 2512.02044) and the standard samplers.

* :func:`generate` is the one decoding loop (blocks, batching, hooks, NFE count); :class:`DiffusionGenerationConfig`
  holds every knob, validated.
* :mod:`cmikit.decoding.strategies`: LLaDA low_confidence / random, Dream origin / maskgit_plus / topk_margin /
  entropy, Fast-dLLM threshold, EB-Sampler, CCD as released (``ccd``) and as the paper states it
  (``ccd_marginal``). Each documents the reference behaviour it matches.
* :func:`adapt` wraps LLaDA / Dream remote-code checkpoints, bidirectional checkpoints, BERT-style masked LMs
  and (opt-in) stock causal classes made bidirectional by a 4D mask.
* :func:`cmikit.decoding.plugin.diffusion_generate` plugs the loop into ``model.generate(custom_generate=...)``.
* ``dlm-decode`` (:mod:`cmikit.decoding.cli`): ``generate``, ``bench`` (two tiny trained DLM tasks + overhead), ``train-tiny``.
"""

# `cmikit.decoding.plugin.diffusion_generate` and `cmikit.decoding.diffusion_generate` are the same callable for
# `model.generate(custom_generate=...)`.
from cmikit.decoding import plugin
from cmikit.decoding.adapters import AdapterError, DiffusionModelAdapter, adapt
from cmikit.decoding.config import STRATEGIES, DiffusionGenerationConfig
from cmikit.decoding.loop import DiffusionOutput, generate
from cmikit.decoding.plugin import diffusion_generate
from cmikit.decoding.strategies import (
    CCDMarginal,
    CCDOfficial,
    ConfidenceThreshold,
    DreamSampler,
    EntropyBound,
    LLaDARemasking,
    StepInput,
    Strategy,
    make_strategy,
)

__all__ = [
    "STRATEGIES",
    "AdapterError",
    "CCDMarginal",
    "CCDOfficial",
    "ConfidenceThreshold",
    "DiffusionGenerationConfig",
    "DiffusionModelAdapter",
    "DiffusionOutput",
    "DreamSampler",
    "EntropyBound",
    "LLaDARemasking",
    "StepInput",
    "Strategy",
    "adapt",
    "diffusion_generate",
    "generate",
    "make_strategy",
    "plugin",
]
