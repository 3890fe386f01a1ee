"""Configuration parsing and the evaluation harness (resume, summaries, plots)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Literal

import pytest

from cmikit.harness.config import ConfigError, parse_config
from cmikit.harness.evaluation import (
    EvaluationError,
    Task,
    bootstrap_ci,
    plot_curves,
    read_jsonl,
    run_task,
    summarize,
)


@dataclass
class RunConfig:
    model: str = "smollm2-135m-instruct"
    learning_rate: float = 1e-4
    method: Literal["cip", "ip", "random"] = "cip"
    seeds: list[int] = field(default_factory=lambda: [0])
    quick: bool = False

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def write_yaml(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_yaml_then_command_line_override(tmp_path):
    path = write_yaml(tmp_path, """
        learning_rate: 3.0e-4
        method: ip
        seeds: [1, 2, 3]
        quick: true
    """)
    cfg = parse_config(RunConfig, ["--config", path, "--method", "random"])
    assert cfg.learning_rate == pytest.approx(3e-4)
    assert cfg.method == "random" and cfg.seeds == [1, 2, 3] and cfg.quick is True


def test_unknown_yaml_key_names_key_value_and_allowed(tmp_path):
    path = write_yaml(tmp_path, "learning_rat: 0.1\n")
    with pytest.raises(ConfigError) as err:
        parse_config(RunConfig, ["--config", path])
    msg = str(err.value)
    assert "learning_rat" in msg and "0.1" in msg and "learning_rate" in msg


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match="method.*invalid choice.*'cip', 'ip', 'random'"):
        parse_config(RunConfig, ["--method", "magic"])
    with pytest.raises(ConfigError, match="learning_rate.*invalid float value: 'fast'"):
        parse_config(RunConfig, ["--config", write_yaml(tmp_path, "learning_rate: fast\n")])
    with pytest.raises(ConfigError, match="learning_rate must be > 0"):
        parse_config(RunConfig, ["--learning_rate", "-1"])
    with pytest.raises(ConfigError, match="Unknown option --lr"):
        parse_config(RunConfig, ["--lr", "1"])
    with pytest.raises(ConfigError, match="not found"):
        parse_config(RunConfig, ["--config", str(tmp_path / "missing.yaml")])


def _task(n=10, fail_after=None, seen=None):
    def run_batch(batch):
        out = []
        for ex in batch:
            if fail_after is not None and len(seen) >= fail_after:
                raise KeyboardInterrupt("simulated kill")
            seen.append(ex["id"])
            out.append({"metrics": {"correct": ex["x"] % 2 == 0, "score": float(ex["x"])}, "method": ex["m"]})
        return out

    examples = [{"id": f"ex{i}", "x": i, "m": "a" if i < n // 2 else "b"} for i in range(n)]
    return Task("toy", examples, run_batch, group_by="method")


def test_resume_after_interrupt_runs_each_example_once(tmp_path):
    seen: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_task(_task(10, fail_after=4, seen=seen), tmp_path, batch_size=1, progress=False)
    assert len(read_jsonl(tmp_path / "records.jsonl")) == 4
    summary = run_task(_task(10, seen=seen), tmp_path, batch_size=3, progress=False)
    ids = [r["id"] for r in read_jsonl(tmp_path / "records.jsonl")]
    assert sorted(ids) == sorted(f"ex{i}" for i in range(10)) and len(ids) == 10
    assert sorted(seen) == sorted(ids)  # nothing ran twice
    assert summary["metrics"]["score"]["mean"] == pytest.approx(4.5)
    assert summary["groups"]["a"]["score"]["mean"] == pytest.approx(2.0)
    assert json.loads((tmp_path / "summary.json").read_text())["n_records"] == 10


def test_resume_after_sigkill_and_truncated_line(tmp_path):
    """A real process killed mid-run: the rerun finishes with each example exactly once."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from cmikit.harness.evaluation import Task, run_task
        def run_batch(batch):
            time.sleep(0.15)
            return [{{"metrics": {{"v": 1.0}}}} for _ in batch]
        run_task(Task("slow", [{{"id": i}} for i in range(30)], run_batch), {str(tmp_path / 'out')!r},
                 batch_size=1, progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script)])
    records = tmp_path / "out" / "records.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and len(read_jsonl(records)) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_jsonl(records))
    assert 5 <= done_before < 30
    with open(records, "a") as handle:
        handle.write('{"id": "29", "metr')  # a write cut off by the kill
    subprocess.run([sys.executable, str(script)], check=True)
    ids = [r["id"] for r in read_jsonl(records)]
    assert sorted(ids, key=int) == [str(i) for i in range(30)]


def test_bad_task_inputs(tmp_path):
    with pytest.raises(EvaluationError, match="no examples"):
        run_task(Task("empty", [], lambda b: b), tmp_path)
    with pytest.raises(EvaluationError, match="unique.*'1'"):
        run_task(Task("dup", [{"id": 1}, {"id": 1}], lambda b: b), tmp_path)
    run_task(Task("t", [{"id": 1}], lambda b: [{"metrics": {}}]), tmp_path / "o", progress=False)
    with pytest.raises(EvaluationError, match="resume"):
        run_task(Task("t", [{"id": 1}], lambda b: [{}]), tmp_path / "o", resume=False)


def test_bootstrap_and_summary_numbers():
    lo, hi = bootstrap_ci([0, 1] * 50, seed=0)
    assert lo < 0.5 < hi and hi - lo < 0.3
    assert bootstrap_ci([2.0]) == (2.0, 2.0)
    s = summarize([{"metrics": {"acc": 1}}, {"metrics": {"acc": 0}}, {"metrics": {"acc": True}}])
    assert s["metrics"]["acc"]["mean"] == pytest.approx(2 / 3) and s["metrics"]["acc"]["n"] == 3


def test_plot_curves_writes_png(tmp_path):
    path = plot_curves({"C-IP": {"x": [1, 2, 3], "y": [0.5, 0.7, 0.9], "low": [0.4, 0.6, 0.8],
                                 "high": [0.6, 0.8, 1.0]}}, tmp_path / "p.png", "k", "accuracy", diagonal=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_examples_split_across_two_processes(tmp_path):
    """torchrun with two CPU processes: each example runs on exactly one rank, records are merged."""
    script = tmp_path / "dist_job.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from cmikit.harness.evaluation import Task, run_task
        import time
        if os.environ["RANK"] == "1":
            time.sleep(1.0)  # a slow starter: it must still split the same to-do list as rank 0
        def run_batch(batch):
            return [{"metrics": {"v": 1.0}, "rank": int(os.environ["RANK"])} for _ in batch]
        run_task(Task("dist", [{"id": i} for i in range(10)], run_batch), sys.argv[1], batch_size=2,
                 progress=False)
    """))
    out = tmp_path / "out"
    # --standalone: a free rendezvous port, so that parallel test workers never collide on the default 29500
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                      "MASTER_"))}
    proc = subprocess.run(torchrun, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(out / "records.jsonl")
    assert sorted(int(r["id"]) for r in records) == list(range(10))
    assert {r["rank"] for r in records} == {0, 1}
    assert not list(out.glob("records.rank*.jsonl"))
    assert json.loads((out / "summary.json").read_text())["n_records"] == 10
