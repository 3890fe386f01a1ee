"""The evaluation harness: run a task over examples and keep every result.

A :class:`Task` is a name, a list of examples (dicts with a unique ``"id"``) and a ``run_batch`` function
returning one record (a dict) per example; numeric metrics go in ``record["metrics"]``. :func:`run_task`:

* skips examples whose id is already in the output folder (resume after a crash or Ctrl-C);
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


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file, ignoring a truncated last line (a crash mid-write)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a partial line from an interrupted write; that example is re-run
    return records


def _drop_partial_last_line(path: Path) -> None:
    """Cut a last line left unfinished by a crash, so that appended records start on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)


def _record_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("records*.jsonl"))


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

    _drop_partial_last_line(records_path)
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
