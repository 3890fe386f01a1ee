"""cmikit.sami: Self-Supervised Alignment with Mutual Information (Fränken et al., 2024, arXiv 2404.14313).

SAMI teaches a pretrained LM to follow a written constitution without preference labels: for each query,
the previous iterate answers under C constitutions (principles and their antitheses), and the model is
trained so that each response is more likely under its own constitution than under the others, and each
constitution more likely for its own response, a symmetric InfoNCE bound on I(response; constitution | query).

* :mod:`cmikit.sami.loss`: the objective as plain functions (C×C log-prob matrix → loss, MI bound).
* :mod:`cmikit.sami.trainer`: :class:`SAMIConfig` / :class:`SAMITrainer` (a ``transformers.Trainer``, TRL style) and
  the collator that expands each query to C² sequences.
* :mod:`cmikit.sami.constitutions`, :mod:`cmikit.sami.queries`, :mod:`cmikit.sami.prompts`: principles, query sets, prompts.
* :mod:`cmikit.sami.sampling`: one response per (query, constitution) through a harness backend.
* :mod:`cmikit.sami.iterate`: expert iteration (sample, train, save, evaluate; resumable).
* :mod:`cmikit.sami.evaluate`, :mod:`cmikit.sami.judge`: held-out MI bound; judged raw and length-balanced win rates.
* :mod:`cmikit.sami.cli`: the ``sami`` command (``iterate``, ``evaluate``, ``judge``).
"""

from typing import Any

# Names resolve lazily (PEP 562), so ``sami judge --help`` or a start-up error does not import the Trainer.
_EXPORTS = {
    "Constitution": "cmikit.sami.constitutions", "Principle": "cmikit.sami.constitutions",
    "builtin_principles": "cmikit.sami.constitutions", "constitution_set": "cmikit.sami.constitutions",
    "load_reference_constitutions": "cmikit.sami.constitutions",
    "SAMIInputError": "cmikit.sami.loss", "SAMILossOutput": "cmikit.sami.loss", "log_mean_mi": "cmikit.sami.loss",
    "sami_loss": "cmikit.sami.loss", "load_queries": "cmikit.sami.queries",
    "SAMIConfig": "cmikit.sami.config", "SAMIDataCollator": "cmikit.sami.trainer", "SAMITrainer": "cmikit.sami.trainer",
    "logprob_matrix": "cmikit.sami.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cmikit.sami' has no attribute {name!r}")


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
