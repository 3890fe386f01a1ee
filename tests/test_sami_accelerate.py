"""``accelerate launch scripts/train_sami.py`` really runs with two processes (issue 10): sampling and
evaluation split the queries across both ranks with none lost or repeated, training is data parallel (each
step's loss equals a single-process run with the same global batch), and a kill -9 then relaunch resumes.

On a CPU-only machine accelerate starts several processes with ``--multi_gpu`` (torchrun, gloo backend);
``accelerate launch --cpu --num_processes 2`` starts ONE process (its simple launcher needs an MPI hostfile),
which ``scripts/train_sami.py`` refuses with a message instead of silently running single-process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate CLI not installed")]


# Loaded by every Python process of a launch through PYTHONPATH (sitecustomize): after the Trainer saved
# checkpoint-1 the processes stall, so the test's kill -9 always lands mid-training, however fast the machine.
STALL_HOOK = """
import os
if os.environ.get("CMIKIT_TEST_STALL_AFTER_CHECKPOINT"):
    import time
    import transformers.trainer as _trainer

    _save = _trainer.Trainer._save_checkpoint

    def _save_then_stall(self, *args, **kwargs):
        out = _save(self, *args, **kwargs)
        if self.state.global_step == 1:
            time.sleep(600)
        return out

    _trainer.Trainer._save_checkpoint = _save_then_stall
"""


def _env(stall_dir: Path | None = None):
    env = dict(os.environ)
    paths = [str(stall_dir)] if stall_dir else []
    env["PYTHONPATH"] = os.pathsep.join(paths) + os.pathsep + env.get("PYTHONPATH", "")
    if stall_dir:
        env["CMIKIT_TEST_STALL_AFTER_CHECKPOINT"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_cmd(*flags):
    return [str(ACCELERATE), "launch", *flags, "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            str(ROOT / "scripts" / "train_sami.py")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer

    tmp = tmp_path_factory.mktemp("sami-accelerate")
    tiny_causal_lm().save_pretrained(tmp / "model")
    tiny_tokenizer().save_pretrained(tmp / "model")
    (tmp / "q.jsonl").write_text("".join(json.dumps({"query": f"question number {k}?"}) + "\n" for k in range(8)))
    # Seeded sampling, one query per generate call: every query's responses are the same whichever process
    # draws them, so the single-process run sees the same data.
    (tmp / "run.yaml").write_text("\n".join([
        f"model: {tmp / 'model'}", f"queries: {tmp / 'q.jsonl'}", "n_heldout: 3", "queries_per_iteration: 5",
        "iterations: 1", "steps_per_iteration: [2]", "max_new_tokens: 6", "temperature: 1.0", "top_p: 1.0",
        "generation_batch_size: 1", "eval_batch_size: 1", "learning_rate: 0.01", "use_cpu: true",
        "disable_tqdm: true", "save_strategy: steps", "save_steps: 1",
    ]) + "\n")
    return tmp


def _kill_tree(pid: int) -> None:
    """kill -9 the launcher and every process under it: torchrun starts its workers in sessions of their own,
    so killing the launcher's process group alone would leave them running (and holding the run's lock)."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


def _records(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _losses(run: Path) -> dict[int, float]:
    log = json.loads((run / "iteration-1" / "model" / "train_log.json").read_text())
    return {e["step"]: e["loss"] for e in log if "loss" in e}


def test_cpu_flag_with_several_processes_is_refused(setup):
    proc = subprocess.run([*_launch_cmd("--cpu", "--num_processes", "2"), "--config", setup / "run.yaml",
                           "--output_dir", setup / "never"], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode != 0
    assert "error: accelerate launch --cpu --num_processes N starts a single process" in proc.stderr
    assert not (setup / "never").exists()


def test_two_processes_split_queries_train_data_parallel_and_resume_after_kill(setup):
    tmp = setup
    run2, run1 = tmp / "two-processes", tmp / "one-process"
    cmd2 = [*_launch_cmd("--multi_gpu", "--num_processes", "2"), "--config", tmp / "run.yaml",
            "--output_dir", run2, "--per_device_train_batch_size", "1"]
    cmd2 = [str(c) for c in cmd2]
    # 1. Launch on two processes and kill -9 the whole process group once training saved its first checkpoint
    # (the stall hook holds the processes there, so the kill never comes after the run finished).
    hook = tmp / "stall-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(STALL_HOOK)
    proc = subprocess.Popen(cmd2, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(hook),
                            start_new_session=True)
    marker = run2 / "iteration-1" / "train" / "checkpoint-1" / "trainer_state.json"  # written last
    deadline = time.time() + 600
    while not marker.exists():
        assert proc.poll() is None, f"run ended before the kill point: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    _kill_tree(proc.pid)
    proc.wait()
    assert not (run2 / "iteration-1" / "model" / "DONE").exists()
    samples_before = (run2 / "iteration-1" / "samples" / "records.jsonl").read_text()
    # 2. Relaunch the same command: it resumes (the lock died with the processes; finished stages are kept).
    again = subprocess.run(cmd2, capture_output=True, text=True, env=_env(), timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run2 / "iteration-1" / "samples" / "records.jsonl").read_text() == samples_before
    assert (run2 / "iteration-1" / "train" / "checkpoint-2").is_dir()
    results = json.loads((run2 / "results.json").read_text())
    assert [r["iteration"] for r in results["iterations"]] == [0, 1]
    # 3. The same global batch (2 queries per step) on one process.
    one = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_sami.py"), "--config", str(tmp / "run.yaml"),
                          "--output_dir", str(run1), "--per_device_train_batch_size", "2"],
                         capture_output=True, text=True, env=_env(), timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]

    # Sampling and evaluation: every query exactly once, both processes did a share, same responses.
    expected = {"samples": 5, "eval": 3}
    for stage in ("samples", "eval"):
        recs2 = _records(run2 / "iteration-1" / stage / "records.jsonl")
        recs1 = _records(run1 / "iteration-1" / stage / "records.jsonl")
        ids2 = [r["id"] for r in recs2]
        assert len(ids2) == len(set(ids2)) == expected[stage]
        assert set(ids2) == {r["id"] for r in recs1}
        by_process = {p: sorted(r["id"] for r in recs2 if r["process"] == p) for p in (0, 1)}
        assert by_process[0] and by_process[1] and not set(by_process[0]) & set(by_process[1])
        assert {r["id"]: r["responses"] for r in recs2} == {r["id"]: r["responses"] for r in recs1}
        assert {r["process"] for r in recs1} == {0}
    # Training: data parallel, the per-step loss equals the single-process run's.
    l2, l1 = _losses(run2), _losses(run1)
    assert sorted(l2) == sorted(l1) == [1, 2]
    for step in (1, 2):
        assert abs(l2[step] - l1[step]) <= 1e-5, (step, l2[step], l1[step])
    assert abs(l1[2] - l1[1]) > 1e-4  # the weights moved between the steps: step 2 compares trained models


def test_scripts_sami_round_on_two_processes_with_trls_multi_gpu_config(tmp_path):
    """One SAMI round (scripts/sami.py, TRL's script shape) under TRL's own multi_gpu accelerate config, two
    gloo processes, embedded model: both processes train (one RNG state per process in the checkpoint), the
    adapter and model card are saved. One step, one row per process: kept as cheap as a launch can be."""
    import trl

    config = Path(trl.__file__).parent / "accelerate_configs" / "multi_gpu.yaml"
    out = tmp_path / "round"
    cmd = [str(ACCELERATE), "launch", "--config_file", str(config), "--num_processes", "2", "--mixed_precision", "no",
           "--main_process_port", str(_free_port()), str(ROOT / "scripts" / "sami.py"),
           "--config", str(ROOT / "configs" / "sami" / "smollm2-round.yaml"), "--output_dir", str(out),
           "--max_steps", "1", "--per_device_train_batch_size", "1", "--use_cpu", "true", "--disable_tqdm", "true",
           "--lora_target_modules", "q_proj", "v_proj", "--save_strategy", "steps", "--save_steps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "checkpoint-1"
    assert sorted(p.name for p in ckpt.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and "mi_bound" in state["log_history"][0]
    assert (out / "adapter_model.safetensors").is_file()
    assert "- sami" in (out / "README.md").read_text()
