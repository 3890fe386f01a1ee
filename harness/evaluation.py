"""The evaluation harness: run a task over examples and keep every result.

A :class:`Task` is a name, a list of examples (dicts with a unique ``"id"``) and a ``run_batch`` function
returning one record (a dict) per example; numeric metrics go in ``record["metrics"]``. :func:`run_task`:

* skips examples whose id is already in the output folder (resume after a crash or Ctrl-C); a record line
  that is damaged (cut short, not UTF-8, not an object with an id) is reported as ``file:line``, set aside
  into ``records.rejected.jsonl`` and its example is run again (:func:`repair_records`);
* splits the remaining examples across accelerate processes (``accelerate launch`` gives data parallelism;
  a plain ``python`` run is one process);
* runs them in batches under a progress bar, appending one JSON line per finished example to
  ``records.jsonl`` (``records.rank<k>.jsonl`` per process when there are several) and flushing it at once;
* merges the per-process files, and writes ``summary.json``: per metric the mean, a bootstrap confidence
  interval and the count, optionally per group (e.g. per method).

:func:`plot_curves` draws lines with optional interval bands to a PNG.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RECORDS_FILE = "records.jsonl"
REJECTED_FILE = "records.rejected.jsonl"
SUMMARY_FILE = "summary.json"


class EvaluationError(ValueError):
    """Bad task input (duplicate or missing ids, empty example set...)."""


@dataclass
class Task:
    """What :func:`run_task` runs. ``run_batch(examples) -> records`` must return one dict per example."""

    name: str
    examples: Sequence[dict[str, Any]]
    run_batch: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    group_by: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # A schema (cmikit.harness.schemas) every stored record must also pass on resume; a record that does not
    # (a hand edit, a value out of range) is set aside and its example runs again.
    record_schema: Any = None


def _check_record(value: Any, path: Path, number: int, schema: Any = None) -> dict[str, Any]:
    from cmikit.harness.schemas import RecordLine, validate

    validate(RecordLine, value, path, line=number, what="record (an object with a string 'id')")
    if schema is not None:
        validate(schema, value, path, line=number, what="record of this task")
    return value


def scan_records(path: str | Path, schema: Any = None
                 ) -> tuple[list[dict[str, Any]], list[tuple[int, bytes, str]]]:
    """``(good records, bad lines as (line number, raw bytes, problem))`` of a records file. A line is bad when
    it is not UTF-8, not JSON, not an object or has no string ``id`` (a crash mid-write, a hand edit)."""
    from cmikit.harness.errors import DataFileError
    from cmikit.harness.schemas import iter_jsonl

    path = Path(path)
    good: list[dict[str, Any]] = []
    bad: list[tuple[int, bytes, str]] = []
    if not path.is_file():
        return good, bad
    for number, raw, value in iter_jsonl(path, "records file", allow_nan=True):
        try:
            if isinstance(value, DataFileError):
                raise value
            good.append(_check_record(value, path, number, schema))
        except DataFileError as err:
            bad.append((number, raw, str(err)))
    return good, bad


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The valid records of a JSONL file; bad lines (see :func:`scan_records`) are skipped (their examples are
    re-run by :func:`run_task`, which sets them aside first)."""
    return scan_records(path)[0]


def repair_records(path: str | Path, stream: Any = None, schema: Any = None) -> int:
    """Set the bad lines of a records file aside into ``records.rejected.jsonl`` (one JSON object per line:
    source file, line, problem and the line's text, undecodable bytes kept as ``\\udcXX`` escapes), rewrite
    the file with the good records only, and say so once per line on ``stream`` (stderr). Returns the number
    of lines set aside; their examples are not done, so they run again. Nothing is deleted."""
    import sys

    path = Path(path)
    good, bad = scan_records(path, schema)
    if not bad:
        _end_last_line(path)
        return 0
    stream = stream or sys.stderr
    rejected = path.with_name(REJECTED_FILE)
    with open(rejected, "a", encoding="utf-8") as out:
        for number, raw, problem in bad:
            text = raw.decode("utf-8", errors="surrogateescape")
            out.write(json.dumps({"source": path.name, "line": number, "problem": problem, "text": text}) + "\n")
        out.flush()
        os.fsync(out.fileno())
    tmp = path.with_name(f".{path.name}.repair.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for record in good:
            out.write(json.dumps(record, default=_json_default) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    for _number, _raw, problem in bad[:5]:
        print(f"warning: {problem}; set aside in {rejected.name}, its example runs again", file=stream)
    if len(bad) > 5:
        print(f"warning: {len(bad) - 5} more bad lines of {path} set aside in {rejected.name}", file=stream)
    return len(bad)


def _end_last_line(path: Path) -> None:
    """End a complete last record that lacks its newline, so that appended records start on a fresh line."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


def _record_files(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.glob("records*.jsonl") if p.name != REJECTED_FILE)


def read_records(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every record of a run folder (merged or still per-process), by example id."""
    return {str(r["id"]): r for f in _record_files(Path(out_dir)) for r in read_jsonl(f) if "id" in r}


def completed_ids(out_dir: str | Path) -> set[str]:
    return set(read_records(out_dir))


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                 statistic: Callable[[np.ndarray], float] | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, or of ``statistic(indices)`` for any other statistic
    (it receives one resample's indices into ``values`` and may return NaN to drop that resample).
    A single value gives a zero-width interval of the mean."""
    arr = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
                     dtype=float) if statistic is None else np.asarray(values, dtype=float)
    if arr.size == 0:
        return (float("nan"), float("nan"))
    if arr.size == 1 and statistic is None:
        return (float(arr[0]), float(arr[0]))
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, arr.size, size=(n_resamples, arr.size))
    if statistic is None:
        draws = arr[resamples].mean(axis=1)
    else:
        draws = np.asarray([statistic(idx) for idx in resamples], dtype=float)
        draws = draws[~np.isnan(draws)]
        if draws.size == 0:
            return (float("nan"), float("nan"))
    alpha = (1 - confidence) / 2
    return (float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha)))


def summarize(records: Iterable[dict[str, Any]], group_by: str | None = None, confidence: float = 0.95,
              seed: int = 0) -> dict[str, Any]:
    """Mean, bootstrap interval and count of every numeric entry of ``record["metrics"]``.

    With ``group_by``, the same per value of ``record[group_by]`` (under ``"groups"``).
    """
    records = list(records)

    def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
        metrics: dict[str, list[float]] = {}
        for r in rows:
            for key, value in (r.get("metrics") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    metrics.setdefault(key, []).append(float(value))
                elif isinstance(value, bool):
                    metrics.setdefault(key, []).append(float(value))
        out = {}
        for key, vals in sorted(metrics.items()):
            lo, hi = bootstrap_ci(vals, confidence=confidence, seed=seed)
            out[key] = {"mean": float(np.mean(vals)), "ci_low": lo, "ci_high": hi, "n": len(vals)}
        return out

    summary: dict[str, Any] = {"n_records": len(records), "confidence": confidence, "metrics": stats(records)}
    if group_by:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            groups.setdefault(str(r.get(group_by)), []).append(r)
        summary["group_by"] = group_by
        summary["groups"] = {g: stats(rows) for g, rows in sorted(groups.items())}
    return summary


def _dist_state():
    """The accelerate process state; on machines without CUDA, ``cpu=True`` lets ``torchrun`` /
    ``accelerate launch --cpu`` start several gloo processes (accelerate only does so when asked)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def run_task(task: Task, out_dir: str | Path, batch_size: int = 8, resume: bool = True,
             progress: bool = True, confidence: float = 0.95) -> dict[str, Any]:
    """Run ``task`` into ``out_dir`` (see the module docstring); return the summary dict.

    With ``resume=False`` an existing output folder is refused rather than overwritten.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    examples = list(task.examples)
    if not examples:
        raise EvaluationError(f"Task {task.name!r} has no examples; check the data path or filters.")
    ids = [str(e.get("id", "")) for e in examples]
    if any(i == "" for i in ids):
        raise EvaluationError(f"Every example of task {task.name!r} needs an 'id' (used to resume).")
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise EvaluationError(f"Example ids must be unique in task {task.name!r}; repeated: {dupes}.")

    state = _dist_state()
    rank = state.process_index if state is not None else 0
    world = state.num_processes if state is not None else 1
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and world != launched:
        raise EvaluationError(
            f"This process was launched as one of {launched} (WORLD_SIZE) but accelerate sees {world}: an "
            f"accelerate state was created before run_task without distributed set-up. On a CPU-only machine "
            f"create it as PartialState(cpu=True) (or use `accelerate launch --cpu`), otherwise the processes "
            f"would all run every example."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:  # resume that repairs: bad lines are set aside (reported with file:line) and run again
        for f in _record_files(out_dir):
            repair_records(f, schema=task.record_schema)
    if state is not None and world > 1:
        state.wait_for_everyone()
    done = completed_ids(out_dir)
    if done and not resume:
        raise EvaluationError(
            f"{out_dir} already holds {len(done)} records; pass resume=True (--resume) to continue, or choose "
            f"a new output folder."
        )
    if state is not None and world > 1:
        # Every rank must split the same to-do list: nobody writes before all have read what is done.
        state.wait_for_everyone()
    todo = [e for e, i in zip(examples, ids) if i not in done]
    mine = todo[rank::world]
    records_path = out_dir / (RECORDS_FILE if world == 1 else f"records.rank{rank}.jsonl")
    if rank == 0:
        (out_dir / "task.json").write_text(json.dumps(
            {"task": task.name, "n_examples": len(examples), "metadata": task.metadata}, indent=2, default=str))

    bar = tqdm(total=len(mine), desc=task.name, disable=not progress or rank != 0, unit="ex")
    with open(records_path, "a") as handle:
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            results = task.run_batch(batch)
            if len(results) != len(batch):
                raise EvaluationError(
                    f"run_batch of task {task.name!r} returned {len(results)} records for {len(batch)} examples."
                )
            for example, record in zip(batch, results):
                record = {"id": str(example["id"]), **{k: v for k, v in record.items() if k != "id"}}
                handle.write(json.dumps(record, default=_json_default) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            bar.update(len(batch))
    bar.close()

    if state is not None and world > 1:
        state.wait_for_everyone()
    summary: dict[str, Any] = {}
    if rank == 0:
        records = merge_records(out_dir)
        summary = summarize(records, group_by=task.group_by, confidence=confidence)
        summary["task"] = task.name
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def merge_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """Fold per-process record files into ``records.jsonl`` (one record per id, first kept)."""
    out_dir = Path(out_dir)
    seen: set[str] = set()
    merged = []
    for f in _record_files(out_dir):
        for r in read_jsonl(f):
            if str(r.get("id")) not in seen:
                seen.add(str(r.get("id")))
                merged.append(r)
    target = out_dir / RECORDS_FILE
    tmp = target.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as handle:
        for r in merged:
            handle.write(json.dumps(r, default=_json_default) + "\n")
    os.replace(tmp, target)
    for f in _record_files(out_dir):
        if f.name != RECORDS_FILE:
            f.unlink()
    return merged


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def plot_curves(series: dict[str, dict[str, Sequence[float]]], path: str | Path, xlabel: str, ylabel: str,
                title: str = "", diagonal: bool = False, logx: bool = False,
                hlines: dict[str, float] | None = None, vlines: dict[str, float] | None = None) -> Path:
    """Line plot to PNG. ``series[label] = {"x": [...], "y": [...], "low": [...], "high": [...]}`` where
    ``low``/``high`` (optional) draw an interval band. ``diagonal`` adds y = x (e.g. coverage vs 1-alpha);
    ``hlines`` / ``vlines`` map a label to a horizontal / vertical reference line (e.g. a baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, s in series.items():
        (line,) = ax.plot(s["x"], s["y"], marker="o", label=label)
        if s.get("low") is not None and s.get("high") is not None:
            ax.fill_between(s["x"], s["low"], s["high"], alpha=0.2, color=line.get_color())
    if diagonal:
        lims = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
        ax.plot(lims, lims, "k--", linewidth=1, label="y = x")
    for label, y in (hlines or {}).items():
        ax.axhline(y, color="grey", linestyle=":", linewidth=1, label=label)
    for label, x in (vlines or {}).items():
        ax.axvline(x, color="grey", linestyle="--", linewidth=1, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
