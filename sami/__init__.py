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

from sami.constitutions import (
    Constitution,
    Principle,
    builtin_principles,
    constitution_set,
    load_reference_constitutions,
)
from sami.loss import SAMIInputError, SAMILossOutput, log_mean_mi, sami_loss
from sami.queries import load_queries
from sami.trainer import SAMIConfig, SAMIDataCollator, SAMITrainer, logprob_matrix

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
