"""Bad inputs to the ``sami`` CLI (issue 9): each is refused at start-up with exit code 2 and one line
``error: ...`` naming the culprit, no traceback, no model loaded, and an existing output folder unchanged.
Plus: a rerun with changed settings is refused (iterate, judge), and kill -9 then rerun resumes (iterate,
judge).

The cases run ``main(argv)`` in this process (issue 14: fast); one case and the kill -9 tests run a real
process, for the process's own exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_testing import assert_one_line_error, call_main, cli_env, run_module
from cli_testing import snapshot as _snapshot

ROOT = Path(__file__).resolve().parents[1]


_env = cli_env


def _sami(*args):
    """``sami args...`` in this process."""
    return call_main("cmikit.sami.cli", *args)


def _sami_process(*args, timeout=600):
    """``python -m cmikit.sami.cli args...``: a real process."""
    return run_module("cmikit.sami.cli", *args, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny saved model, small query/response files, and bad files of every kind."""
    from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer

    tmp = tmp_path_factory.mktemp("sami-bad")
    model = tmp / "tiny-model"
    tiny_causal_lm().save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    queries = tmp / "queries.jsonl"
    queries.write_text("".join(json.dumps({"query": f"question number {k}?"}) + "\n" for k in range(7)))
    (tmp / "empty.jsonl").write_text("")
    (tmp / "broken.json").write_text('{"queries": ["a", "b",\n  oops]}\n')
    (tmp / "latin1.jsonl").write_bytes('{"query": "caf\xe9 au lait?"}\n'.encode("latin-1"))
    (tmp / "constitution-list.json").write_text("[]")
    (tmp / "no-constitutions").mkdir()
    resp = {"question": {"0": "What is a cat?", "1": "What is a dog?"},
            "response": {"0": "A small animal.", "1": "A loyal animal that barks."},
            "constitution": {"0": "1. Be brief.", "1": "1. Be brief."}}
    (tmp / "cand.json").write_text(json.dumps(resp))
    base = dict(resp, response={"0": "An animal.", "1": "A pet."})
    (tmp / "base.json").write_text(json.dumps(base))
    (tmp / "judged-bad.json").write_text(json.dumps([[1, 20, 30], [1, "long", 3]]))
    out = tmp / "existing-out"
    out.mkdir()
    (out / "run.json").write_text('{"kind": "sami-iterate", "fingerprint": "x"}')
    (out / "results.json").write_text('{"iterations": []}')
    config = tmp / "run.yaml"
    config.write_text("\n".join([
        f"model: {model}", f"queries: {queries}", "n_heldout: 2", "queries_per_iteration: 4", "iterations: 1",
        "steps_per_iteration: [1]", "use_lora: true", "lora_r: 2", "lora_alpha: 4",
        "lora_target_modules: [q_proj, v_proj]", "max_new_tokens: 4", "generation_batch_size: 8",
        "eval_batch_size: 2", "drop_identical: false", "per_device_train_batch_size: 2", "learning_rate: 0.01",
        "use_cpu: true", "disable_tqdm: true", "save_strategy: steps", "save_steps: 1",
    ]) + "\n")
    return tmp


# (id, command, arguments, text the last stderr line must contain). {t} is the fixture folder.
CASES = [
    ("empty-query-file", "iterate", ["--queries", "{t}/empty.jsonl"], "empty.jsonl"),
    ("bad-json-query-file", "iterate", ["--queries", "{t}/broken.json"], "broken.json:2"),
    ("non-utf8-query-file", "iterate", ["--queries", "{t}/latin1.jsonl"], "latin1.jsonl"),
    ("empty-constitution-list", "iterate", ["--constitutions", "{t}/constitution-list.json"],
     "constitution-list.json"),
    ("constitution-folder-without-files", "iterate", ["--constitutions", "{t}/no-constitutions"],
     "no-constitutions"),
    ("mistyped-model-folder", "iterate", ["--model", "{t}/tiny-modle"], "tiny-modle"),
    ("negative-learning-rate", "iterate", ["--learning_rate", "-1"], "--learning_rate"),
    ("negatives-foo", "iterate", ["--negatives", "foo"], "--negatives 'foo'"),
    ("judge-mode-foo", "iterate", ["--judge_mode", "foo"], "--judge_mode 'foo'"),
    ("train-batch-size-0", "iterate", ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0"),
    ("generation-batch-size-0", "iterate", ["--generation_batch_size", "0"], "--generation_batch_size 0"),
    ("steps-per-iteration-0", "iterate", ["--steps_per_iteration", "0"], "--steps_per_iteration 0"),
    ("grad-accum-0", "iterate", ["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0"),
    ("boolean-typo", "iterate", ["--use_lora", "ture"], "ture"),
    ("top-p-above-1", "iterate", ["--top_p", "1.5"], "--top_p 1.5"),
    ("schedule-foo", "iterate", ["--schedule", "foo"], "--schedule 'foo'"),
    ("unknown-option", "iterate", ["--learnin_rate", "0.1"], "--learnin_rate"),
    ("evaluate-limit-0", "evaluate", ["--limit", "0"], "--limit 0"),
    ("evaluate-one-constitution", "evaluate", ["--n_constitutions", "1"], "--n_constitutions 1"),
    ("judge-mode-foo-cli", "judge", ["--mode", "foo"], "--mode 'foo'"),
    ("judge-order-foo", "judge", ["--order", "sideways"], "--order 'sideways'"),
    ("judge-batch-size-0", "judge", ["--batch_size", "0"], "--batch_size 0"),
    ("judge-missing-candidate", "judge", ["--candidate", "{t}/nope.json"], "nope.json"),
    ("judge-bad-json-candidate", "judge", ["--candidate", "{t}/broken.json"], "broken.json"),
    ("judge-bad-released-rows", "judge", ["--judged", "{t}/judged-bad.json", "--candidate", ""], "judged-bad.json"),
]


@pytest.mark.parametrize("name,command,args,culprit", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_at_start_up(world, name, command, args, culprit):
    t = world
    args = [a.format(t=t) for a in args]
    out = t / "existing-out"
    before = _snapshot(out)
    if command == "iterate":
        base = ["--config", t / "run.yaml", "--output_dir", out]
    elif command == "evaluate":
        base = ["--model", t / "tiny-model", "--queries", t / "queries.jsonl", "--out_dir", out]
    else:
        base = ["--judge", t / "tiny-model", "--candidate", t / "cand.json", "--baseline", t / "base.json",
                "--out_dir", out]
        if "--judged" in args:
            base = ["--out_dir", out]
            args = args[:2]
    start = time.perf_counter()
    proc = _sami(command, *base, *args)
    elapsed = time.perf_counter() - start
    assert_one_line_error(proc, culprit)
    assert _snapshot(out) == before  # nothing written into an existing folder
    assert elapsed < 60  # no model load, no sampling (the 5 s target is measured on an idle machine)


def test_bad_input_in_a_real_process_exits_2(world):
    """The smoke test of the process boundary: ``python -m cmikit.sami.cli`` itself exits with code 2."""
    t = world
    out = t / "existing-out"
    before = _snapshot(out)
    proc = _sami_process("iterate", "--config", t / "run.yaml", "--output_dir", out, "--top_p", "1.5")
    assert_one_line_error(proc, "--top_p 1.5")
    assert _snapshot(out) == before


# ------------------------------------------------------------------------------------ refused reruns
def test_judge_rerun_with_other_settings_is_refused(world, tmp_path):
    t = world
    out = tmp_path / "judge"
    common = ["judge", "--judge", t / "tiny-model", "--candidate", t / "cand.json", "--baseline", t / "base.json",
              "--out_dir", out, "--max_new_tokens", "2", "--task", "dialogue"]
    first = _sami(*common)
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "run.json").read_text())["identity"]["models"]["judge"]["weights"].startswith("sha256")
    before = _snapshot(out)
    for extra, key in ((["--mode", "logprob"], "mode"), (["--order", "both"], "order"),
                       (["--max_new_tokens", "3"], "max_new_tokens")):
        proc = _sami(*common, *extra)
        assert proc.returncode == 2 and f"settings.{key}" in proc.stderr.splitlines()[-1], proc.stderr
        assert "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
        assert _snapshot(out) == before
    # A changed data file is refused too; --overwrite starts over with the new settings.
    proc = _sami(*common[:-2], "--task", "summarization")
    assert proc.returncode == 2 and "settings.task" in proc.stderr
    proc = _sami(*common, "--mode", "logprob", "--overwrite", "true")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "win_rates.json").read_text())["mode"] == "logprob"


def test_iterate_rerun_with_other_settings_is_refused(world, tmp_path):
    t = world
    out = tmp_path / "run"
    first = _sami("iterate", "--config", t / "run.yaml", "--output_dir", out)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _snapshot(out)
    for extra, key in ((["--max_new_tokens", "6"], "max_new_tokens"), (["--learning_rate", "0.02"], "learning_rate"),
                       (["--n_constitutions", "3"], "n_constitutions"), (["--negatives", "all"], "negatives")):
        proc = _sami("iterate", "--config", t / "run.yaml", "--output_dir", out, *extra)
        last = proc.stderr.splitlines()[-1]
        assert proc.returncode == 2 and f"settings.{key}" in last and "--overwrite" in last, proc.stderr
        assert _snapshot(out) == before
    # The same settings resume (nothing to do) instead of being refused; progress settings do not count.
    proc = _sami("iterate", "--config", t / "run.yaml", "--output_dir", out, "--eval_batch_size", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["iterations"][-1]["iteration"] == 1
    # A judge can be added to a finished run; its settings are then fixed for that run's judge folder.
    judge = ["--judge_model", t / "tiny-model", "--judge_mode", "generate"]
    proc = _sami("iterate", "--config", t / "run.yaml", "--output_dir", out, *judge)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads((out / "results.json").read_text())["iterations"][-1]
    assert last["win_rate_vs_base"]["length_unit"].startswith("tokens:")
    before = _snapshot(out)
    proc = _sami("iterate", "--config", t / "run.yaml", "--output_dir", out, *judge, "--judge_order", "random")
    assert proc.returncode == 2 and "settings.judge_order" in proc.stderr.splitlines()[-1], proc.stderr
    assert _snapshot(out) == before


# ---------------------------------------------------------------------------------- kill -9 and resume
def _launch(*args):
    return subprocess.Popen([sys.executable, "-m", "cmikit.sami.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT, start_new_session=True)


def _kill_when(proc, condition, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the run never reached the kill point")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def test_judge_killed_then_rerun_resumes(world, tmp_path):
    t = world
    n = 120
    resp = {"question": {str(k): f"What is thing {k}?" for k in range(n)},
            "response": {str(k): f"It is thing {k}, a fine thing." for k in range(n)},
            "constitution": {str(k): "1. Be brief." for k in range(n)}}
    (tmp_path / "c.json").write_text(json.dumps(resp))
    (tmp_path / "b.json").write_text(json.dumps(dict(resp, response={str(k): "A thing." for k in range(n)})))
    out = tmp_path / "judge"
    args = ["judge", "--judge", t / "tiny-model", "--candidate", tmp_path / "c.json", "--baseline",
            tmp_path / "b.json", "--out_dir", out, "--max_new_tokens", "4", "--batch_size", "1", "--task", "dialogue"]
    records = out / "records.jsonl"
    proc = _launch(*args)
    assert _kill_when(proc, lambda: len(_lines(records)) >= 3), "judge finished before the kill"
    kept = _lines(records)
    kept = [ln for ln in kept if ln.endswith("}")]  # a line cut by the kill is not a record
    assert 3 <= len(kept) < n
    rerun = _sami(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    final = [json.loads(ln) for ln in _lines(records) if ln.strip()]
    ids = [r["id"] for r in final]
    assert sorted(ids, key=int) == [str(k) for k in range(n)]  # no item lost, none judged twice
    assert [json.loads(ln) for ln in kept] == final[: len(kept)]  # finished records were kept, not redone
    assert json.loads((out / "win_rates.json").read_text())["win_rate"]["n"] == n


def test_iterate_killed_then_rerun_resumes(world, tmp_path):
    t = world
    out = tmp_path / "run"
    args = ["iterate", "--config", t / "run.yaml", "--output_dir", out, "--iterations", "2",
            "--steps_per_iteration", "2", "2"]
    proc = _launch(*args)
    samples = out / "iteration-1" / "samples"
    assert _kill_when(proc, lambda: (samples / "DONE").exists()), "the run finished before the kill"
    first = (samples / "records.jsonl").read_text()
    rerun = _sami(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (samples / "records.jsonl").read_text() == first  # finished sampling was not redone
    results = json.loads((out / "results.json").read_text())
    assert [r["iteration"] for r in results["iterations"]] == [0, 1, 2]
    assert (out / "iteration-2" / "model" / "DONE").exists()
