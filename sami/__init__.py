"""sami: Self-Supervised Alignment with Mutual Information (Fränken et al., 2024, arXiv 2404.14313).

SAMI teaches a pretrained LM to follow a written constitution without preference labels: for each query,
the previous iterate answers under C constitutions (principles and their antitheses), and the model is
trained so that each response is more likely under its own constitution than under the others, and each
constitution more likely for its own response, a symmetric InfoNCE bound on I(response; constitution | query).

* :mod:`sami.loss`: the objective as plain functions (C×C log-prob matrix → loss, MI bound).
* :mod:`sami.trainer`: :class:`SAMIConfig` / :class:`SAMITrainer` (a ``transformers.Trainer``, TRL style) and
  the collator that expands each query to C² sequences.
* :mod:`sami.constitutions`, :mod:`sami.queries`, :mod:`sami.prompts`: principles, query sets, prompts.
* :mod:`sami.sampling`: one response per (query, constitution) through a harness backend.
* :mod:`sami.iterate`: expert iteration (sample, train, save, evaluate; resumable).
* :mod:`sami.evaluate`, :mod:`sami.judge`: held-out MI bound; judged raw and length-balanced win rates.
* :mod:`sami.cli`: the ``sami`` command (``iterate``, ``evaluate``, ``judge``).
"""

from typing import Any

# Names resolve lazily (PEP 562), so ``sami judge --help`` or a start-up error does not import the Trainer.
_EXPORTS = {
    "Constitution": "sami.constitutions", "Principle": "sami.constitutions",
    "builtin_principles": "sami.constitutions", "constitution_set": "sami.constitutions",
    "load_reference_constitutions": "sami.constitutions",
    "SAMIInputError": "sami.loss", "SAMILossOutput": "sami.loss", "log_mean_mi": "sami.loss",
    "sami_loss": "sami.loss", "load_queries": "sami.queries",
    "SAMIConfig": "sami.config", "SAMIDataCollator": "sami.trainer", "SAMITrainer": "sami.trainer",
    "logprob_matrix": "sami.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sami' has no attribute {name!r}")


__all__ = [
    "Constitution",
    "Principle",
    "SAMIConfig",
    "SAMIDataCollator",
    "SAMIInputError",
    "SAMILossOutput",
    "SAMITrainer",
    "builtin_principles",
    "constitution_set",
    "load_queries",
    "load_reference_constitutions",
    "log_mean_mi",
    "logprob_matrix",
    "sami_loss",
]
