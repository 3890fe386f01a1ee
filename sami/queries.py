"""Query sets for SAMI: the prompts x that responses are sampled for (paper Sec. 4, App. A.3).

Every loader returns a list of ``{"id": str, "query": str}`` dicts, loaded through ``datasets``:

* ``builtin:dialogue`` / ``builtin:summarization``: this project's small offline sets (:mod:`cmikit.sami.builtin_data`);
* ``Anthropic/hh-rlhf`` (optionally ``:helpful-base`` / ``:harmless-base``): the first human turn of each
  conversation, as the paper's HH experiments use (needs Hub access);
* ``openai/summarize_from_feedback``: the posts of the ``comparisons`` config, de-duplicated by post id;
* a local ``.json`` / ``.jsonl`` / ``.csv`` file with a text column (``query``, ``prompt``, ``question``,
  ``post`` or ``text``), or the reference responses format ``{"question": {i: text}}``.

:func:`split_queries` takes disjoint train / held-out slices (the paper alternates training splits by
iteration; ``offset`` does that).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cmikit.harness.errors import ConfigError

TEXT_COLUMNS = ("query", "prompt", "question", "post", "text", "content")


class QueryError(ConfigError):
    """A query source that cannot be loaded or is empty; the message says what to do."""


def _first_human_turn(conversation: str) -> str:
    text = conversation.strip()
    if text.startswith("Human:"):
        text = text[len("Human:"):]
    return text.split("\n\nAssistant:")[0].strip()


def _from_rows(rows: Sequence[dict[str, Any]], source: str, column: str | None) -> list[dict[str, str]]:
    if not rows:
        raise QueryError(f"Query source {source} holds no rows.")
    cols = list(rows[0])
    col = column or next((c for c in TEXT_COLUMNS if c in cols), None)
    if col is None or col not in cols:
        raise QueryError(
            f"Query source {source} has no text column {column or ''!s}; columns are {cols}. Pass query_column= "
            f"one of them (looked for {', '.join(TEXT_COLUMNS)})."
        )
    out = []
    for k, row in enumerate(rows):
        text = row.get(col)
        if isinstance(text, str) and text.strip():
            q = {"id": str(row.get("id", k)), "query": text.strip()}
            if isinstance(row.get("subset"), str) and row["subset"].strip():
                q["subset"] = row["subset"].strip()  # e.g. helpful-base: selects the reference HH draw
            out.append(q)
    if not out:
        raise QueryError(f"Query source {source} has no non-empty text in column {col!r}.")
    return out


def _load_local(path: Path, column: str | None) -> list[dict[str, str]]:
    from cmikit.harness.errors import DataFileError
    from cmikit.sami.files import read_json, read_jsonl, read_text

    if path.is_dir():
        raise DataFileError("is a folder; give a .json, .jsonl or .csv query file", path=path)
    from cmikit.harness.schemas import QueriesObject, QueryRows, QueryStrings, ReferenceQueries, validate

    what = 'query file (a list of strings or of objects with a text column, or {"queries": [...]})'
    if path.suffix == ".json":
        data = read_json(path, what)
        if isinstance(data, dict):  # the shape picks the schema, so an error names what that shape needs
            data = validate(ReferenceQueries if "question" in data else QueriesObject, data, path, what=what)
            if isinstance(data, ReferenceQueries):  # reference responses format
                return [{"id": str(k), "query": v.strip()} for k, v in data.question.items() if v.strip()]
            data = data.queries
        elif isinstance(data, list) and data and any(isinstance(q, str) for q in data):
            data = validate(QueryStrings, data, path, what=what)
        if isinstance(data, list) and data and all(isinstance(q, str) for q in data):
            return [{"id": str(k), "query": q.strip()} for k, q in enumerate(data) if q.strip()]
        rows = validate(QueryRows, data, path, what=what)
    elif path.suffix == ".jsonl":
        rows = read_jsonl(path, "query file (one object with a text column per line)", schema=dict[str, Any])
        if not rows:
            raise DataFileError("holds no queries (the file is empty)", path=path)
    elif path.suffix == ".csv":
        import csv
        import io

        rows = list(csv.DictReader(io.StringIO(read_text(path, "query file"))))
        if not rows:
            raise DataFileError("holds no queries (no data rows under the header)", path=path)
    else:
        raise QueryError(f"Unsupported query file type {path.suffix!r} ({path}); use .json, .jsonl or .csv.")
    rows = validate(QueryRows, rows, path, what=what)  # objects, unique ids
    return _from_rows(rows, str(path), column)


def _load_hub(source: str, split: str, column: str | None) -> list[dict[str, str]]:
    import datasets

    name, _, subset = source.partition(":")
    try:
        if name.lower() == "anthropic/hh-rlhf":
            kw = {"data_dir": subset} if subset else {}
            ds = datasets.load_dataset(name, split=split, **kw)
            return [{"id": f"{subset or 'hh'}-{k}", "query": _first_human_turn(r["chosen"]),
                     **({"subset": subset} if subset else {})} for k, r in enumerate(ds)]
        if name.lower() == "openai/summarize_from_feedback":
            ds = datasets.load_dataset(name, subset or "comparisons", split=split)
            seen, out = set(), []
            for r in ds:
                info = r["info"]
                if info["id"] in seen:
                    continue
                seen.add(info["id"])
                out.append({"id": str(info["id"]), "query": (info.get("post") or info.get("article") or "").strip()})
            return [q for q in out if q["query"]]
        ds = datasets.load_dataset(name, subset or None, split=split)
    except Exception as err:  # network, missing dataset, bad split...
        raise QueryError(
            f"Could not load queries from the Hub dataset {source!r} (split {split!r}): {err}. Without Hub access "
            f"use a local .json/.jsonl/.csv file or builtin:dialogue / builtin:summarization."
        ) from err
    return _from_rows(ds.to_list(), source, column)


def load_queries(source: str, split: str = "train", column: str | None = None, limit: int | None = None,
                 offset: int = 0) -> list[dict[str, str]]:
    """Load queries from ``source`` (see the module docstring); ``offset``/``limit`` slice the result."""
    from cmikit.sami.builtin_data import DIALOGUE_QUERIES, SUMMARY_POSTS

    if not source:
        raise QueryError("No query source given; use builtin:dialogue, a Hub id or a local file.")
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        table = {"dialogue": DIALOGUE_QUERIES, "summarization": SUMMARY_POSTS}
        if name not in table:
            raise QueryError(f"Unknown built-in query set {name!r}; allowed: {', '.join(table)}.")
        queries = [{"id": f"{name}-{k}", "query": q} for k, q in enumerate(table[name])]
    elif Path(source).expanduser().exists():
        queries = _load_local(Path(source).expanduser(), column)
    elif source.endswith((".json", ".jsonl", ".csv")) or source.startswith((".", "/", "~")):
        raise QueryError(f"Query file not found: {source}.")
    else:
        queries = _load_hub(source, split, column)
    queries = queries[offset:]
    if limit is not None:
        queries = queries[:limit]
    if not queries:
        raise QueryError(
            f"The query set from {source!r} is empty after offset={offset}, limit={limit}; check the source and slice."
        )
    return queries


def split_queries(queries: Sequence[dict[str, str]], n_heldout: int, seed: int = 0
                  ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """A deterministic (train, held-out) split with ``n_heldout`` held-out queries."""
    import random

    if n_heldout >= len(queries):
        raise QueryError(f"Cannot hold out {n_heldout} of {len(queries)} queries; lower n_heldout.")
    order = list(range(len(queries)))
    random.Random(seed).shuffle(order)
    held = sorted(order[:n_heldout])
    keep = sorted(order[n_heldout:])
    return [queries[i] for i in keep], [queries[i] for i in held]
