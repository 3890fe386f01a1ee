"""cmikit.cip: Conformal Information Pursuit (Chan et al., NeurIPS 2025, arXiv 2507.03279).

Interactive question-asking agents that choose the next question by the expected size of a conformal
prediction set (C-IP) instead of the entropy of a possibly miscalibrated LLM posterior (IP).

* :mod:`cmikit.cip.predictors`: P(label | history) from an LLM's first-token label logits after a prefilled answer
  (§2, App. G.5), or exact Bayes over a knowledge base (our addition, a fast ground truth).
* :mod:`cmikit.cip.conformal`: split-conformal thresholds per history length (§3.2, Alg. 1), both quantile rules,
  uniform and direct-prompting history samplers, a saved thresholds object.
* :mod:`cmikit.cip.criteria`: C-IP as the paper states it (mean set size) and as the reference code computes it
  (Fano-style bound), IP (entropy) (§3.1, eq. C-IP and (11)), and our variants that do not reward empty
  simulated sets (``cip-floor``, the default; ``cip-selffano``; ``cip-fano``).
* :mod:`cmikit.cip.miscalibration`: predictor wrappers (over-confidence, first-label bias) and a noisy answering
  world, with expected calibration error, for the miscalibration study (our addition).
* :mod:`cmikit.cip.agent`: the ask -> answer -> update -> stop -> predict loop with full traces and stopping rules
  (Alg. 4/5, G.10).
* :mod:`cmikit.cip.environments` and :mod:`cmikit.cip.knowledge`: 20 Questions (closed bank, LLM answers, open LLM query
  sets) and MediQ (§4.1, §5.1); the project's own knowledge base ships in ``cip/data``.
* :mod:`cmikit.cip.evaluate` and :mod:`cmikit.cip.cli`: ``cip play``, ``cip calibrate``, ``cip eval [--quick]``.
"""

from cmikit.cip.agent import Agent, AgentConfig, apply_stopping
from cmikit.cip.conformal import (
    ConformalThresholds,
    TrajectoryPrefixSampler,
    UniformHistorySampler,
    calibrate,
    conformal_quantile,
)
from cmikit.cip.environments import (
    LLMAnswerer,
    LLMQuerier,
    MediQ,
    PatientLLM,
    TwentyQuestions,
    load_mediq_jsonl,
    load_mediq_split,
)
from cmikit.cip.knowledge import KnowledgeBase, Turn
from cmikit.cip.predictors import LLMPredictor, MediQPrompt, TablePredictor, TwentyQuestionsPrompt

__all__ = [
    "Agent",
    "AgentConfig",
    "ConformalThresholds",
    "KnowledgeBase",
    "LLMAnswerer",
    "LLMPredictor",
    "LLMQuerier",
    "MediQ",
    "MediQPrompt",
    "PatientLLM",
    "TablePredictor",
    "TrajectoryPrefixSampler",
    "Turn",
    "TwentyQuestions",
    "TwentyQuestionsPrompt",
    "UniformHistorySampler",
    "apply_stopping",
    "calibrate",
    "conformal_quantile",
    "load_mediq_jsonl",
    "load_mediq_split",
]
