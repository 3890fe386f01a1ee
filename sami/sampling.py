"""Sampling one response per (query, constitution) from the current iterate (paper Alg. 1 step 1, App. A.3).

:func:`build_items` pairs every query with its C constitutions (all-positive first); :func:`sample_responses`
prompts the model through a harness backend (transformers, or vLLM when installed) with the paper's
defaults (greedy, at most 350 new tokens), applies the filters of :class:`ResponseFilter`, and saves the
kept rows as a ``datasets`` dataset (``save_to_disk``). Generation runs through the evaluation harness, so
every finished query is appended to ``records.jsonl`` at once and a killed run resumes where it stopped.

:func:`training_rows` turns sampled items into :class:`~cmikit.sami.trainer.SAMITrainer` rows, listing the
principles in a shuffled order per (query, constitution) as the reference training prompt does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmikit.harness.errors import ConfigError
from cmikit.sami.constitutions import (
    Constitution,
    Principle,
    check_constitution_sets,
    constitution_set,
    subset_principle,
)
from cmikit.sami.prompts import STOP_STRINGS, build_prompt

DATASET_DIR = "dataset"


@dataclass
class ResponseFilter:
    """Which sampled (query, C responses) items to keep. Reference TL;DR settings: ``filter_strings=["[insert",
    "]", "Response"]``, ``require_period=True``; HH adds ``"sorry"`` and ``"The assistant"``."""

    filter_strings: list[str] = field(default_factory=list)
    drop_identical: bool = True
    min_chars: int = 1
    require_period: bool = False

    def reason(self, responses: Sequence[str]) -> str | None:
        """Why an item is dropped (None = kept)."""
        for r in responses:
            if len(r.strip()) < self.min_chars:
                return "too_short"
            hit = next((s for s in self.filter_strings if s in r), None)
            if hit is not None:
                return f"contains {hit!r}"
        if self.drop_identical and len({r.strip() for r in responses}) < len(responses):
            return "identical"
        if self.require_period and not responses[0].rstrip().endswith("."):
            return "positive_not_ending_in_period"
        return None


def build_items(queries: Sequence[dict[str, str]], principles: Sequence[Principle] | None = None,
                reference_sets: Sequence[Sequence[Constitution]] | None = None, n_constitutions: int = 2,
                negatives: str = "random", seed: int = 0) -> list[dict[str, Any]]:
    """One item per query: ``{"id", "query", "statements": [C lists], "labels": [C]}``.

    With ``principles``, constitutions come from :func:`~cmikit.sami.constitutions.constitution_set` (a query's
    ``subset``, e.g. HH ``helpful-base``, selects the reference per-subset draw); with
    ``reference_sets`` (e.g. the reference TL;DR files), one set is drawn per query (as ``generate.py``).
    """
    from cmikit.sami.queries import QueryError

    if not queries:
        raise QueryError("The query set is empty; nothing to sample.")
    if (principles is None) == (reference_sets is None):
        raise ConfigError("Give exactly one of principles and reference_sets.")
    if reference_sets is not None:
        check_constitution_sets(reference_sets)
    rng = random.Random(seed)
    items = []
    for q in queries:
        if principles is not None:
            consts = constitution_set(principles, n_constitutions, negatives, rng,
                                      own=subset_principle(principles, q.get("subset")))
        else:
            consts = list(reference_sets[rng.randrange(len(reference_sets))])
        items.append({"id": str(q["id"]), "query": q["query"], **({"subset": q["subset"]} if q.get("subset") else {}),
                      "statements": [list(c.statements) for c in consts],
                      "labels": [c.label for c in consts]})
    return items


def _constitution(statements: Sequence[str]) -> Constitution:
    return Constitution(tuple(statements))


def item_prompts(item: dict[str, Any], task: str, fmt: str, shuffle: bool = False, salt: Any = "") -> list[Any]:
    """The C prompts of an item; ``shuffle`` permutes principle order per (item, constitution, salt)."""
    return [build_prompt(task, _constitution(st).render(shuffle=shuffle, seed=f"{item['id']}|{i}|{salt}"),
                         item["query"], fmt) for i, st in enumerate(item["statements"])]


def process_index() -> int:
    """This process's rank under ``accelerate launch`` / torchrun (0 otherwise); kept in records to show how the
    queries were split."""
    import os

    return int(os.environ.get("RANK", "0"))


def finished_flags(tokenizer: Any, responses: Sequence[str], max_new_tokens: int) -> list[bool]:
    """Whether each response ended on its own (EOS or stop string) rather than at the length limit."""
    if tokenizer is None:
        return [True] * len(responses)
    return [len(tokenizer(r, add_special_tokens=False)["input_ids"]) < max_new_tokens - 1 for r in responses]


def sample_responses(backend: Any, items: Sequence[dict[str, Any]], out_dir: str | Path, task: str = "dialogue",
                     fmt: str = "plain", sampling: Any = None, response_filter: ResponseFilter | None = None,
                     batch_size: int = 8, progress: bool = True) -> Any:
    """Generate C responses per item into ``out_dir`` and return the kept rows as a ``datasets.Dataset``.

    Every item gets a record (``kept`` true/false with ``drop_reason``); the dataset holds the kept ones with
    columns ``id, query, statements, labels, responses, complete`` (false: cut at the length limit) and is saved to ``out_dir/dataset``.
    """
    import datasets

    from cmikit.harness.backends import SamplingParams
    from cmikit.harness.evaluation import Task, read_records, run_task

    sampling = sampling or SamplingParams(max_new_tokens=350, temperature=0.0)
    if fmt == "plain" and not sampling.stop:
        sampling.stop = list(STOP_STRINGS[task])
    response_filter = response_filter or ResponseFilter()

    def run_batch(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        prompts = [p for it in batch for p in item_prompts(it, task, fmt)]
        texts = backend.generate(prompts, sampling)
        records, k = [], 0
        for it in batch:
            n = len(it["statements"])
            responses = [t.rstrip() for t in texts[k : k + n]]
            k += n
            reason = response_filter.reason(responses)
            complete = finished_flags(getattr(backend, "tokenizer", None), responses, sampling.max_new_tokens)
            records.append({**it, "responses": responses, "complete": complete, "kept": reason is None,
                            "process": process_index(),
                            "drop_reason": reason,
                            "metrics": {"kept": float(reason is None),
                                        "response_chars": sum(len(r) for r in responses) / n}})
        return records

    out_dir = Path(out_dir)
    run_task(Task("sami-sample", list(items), run_batch), out_dir, batch_size=batch_size, progress=progress)
    records = read_records(out_dir)
    kept = [records[str(it["id"])] for it in items if records.get(str(it["id"]), {}).get("kept")]
    columns = ("id", "query", "statements", "labels", "responses", "complete")
    ds = datasets.Dataset.from_list([{c: r[c] for c in columns} for r in kept]) if kept else \
        datasets.Dataset.from_dict({c: [] for c in columns})
    ds.save_to_disk(str(out_dir / DATASET_DIR))
    return ds


def training_rows(items: Any, task: str, fmt: str, shuffle: bool = True, salt: Any = "train") -> Any:
    """Sampled items (a dataset or list) → a ``datasets.Dataset`` of ``{"prompts", "responses", "complete"}`` rows."""
    import datasets

    rows = [{"prompts": item_prompts(it, task, fmt, shuffle=shuffle, salt=salt), "responses": it["responses"],
             "complete": it.get("complete") or [True] * len(it["responses"])} for it in items]
    return datasets.Dataset.from_list(rows)


def rows_from_triples(data: Any, task: str, fmt: str, constitution_column: str = "constitution",
                      query_column: str = "query", response_column: str = "response") -> Any:
    """A dataset of (constitution, query, response) rows → SAMI rows ``{"prompts", "responses"}``.

    Rows are grouped by query, in order of first appearance; within a query the k-th row gives constitution k and
    the response sampled under it, so prompt_k = the task's prompt for (constitution_k, query). Every query needs
    the same number C >= 2 of rows. A constitution is its rendered text (e.g. numbered principles).
    """
    import datasets

    from cmikit.sami.loss import SAMIInputError
    from cmikit.sami.prompts import build_prompt

    missing = [c for c in (constitution_column, query_column, response_column) if c not in data.column_names]
    if missing:
        raise SAMIInputError(
            f"The dataset has no column(s) {missing}; SAMI data is either rows of (constitution, query, response) "
            f"(name them with --constitution_column/--query_column/--response_column) or rows of 'prompts' and "
            f"'responses' lists. Columns found: {data.column_names}.")
    groups: dict[str, list[tuple[str, str]]] = {}
    for r in data:
        groups.setdefault(r[query_column], []).append((r[constitution_column], r[response_column]))
    sizes = {len(v) for v in groups.values()}
    if len(sizes) != 1 or min(sizes) < 2:
        raise SAMIInputError(
            f"Every query needs the same number C >= 2 of (constitution, response) rows; found {sorted(sizes)} rows "
            f"per query.")
    return datasets.Dataset.from_list([
        {"prompts": [build_prompt(task, c, q, fmt) for c, _ in pairs], "responses": [y for _, y in pairs]}
        for q, pairs in groups.items()])
