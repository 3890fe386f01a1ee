"""Issue 9: bad inputs to the ``cip`` CLI end with exit code 2 and one ``error:`` line that names the culprit,
before any model loads, with no traceback, and leave an existing output folder untouched. Plus the refused
rerun with changed settings and kill -9 then resume for ``cip eval``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_testing import assert_one_line_error, cli_env, run_module
from cli_testing import snapshot as _snapshot

ROOT = Path(__file__).resolve().parents[1]
TABLE = ["--predictor", "table", "--progress", "false"]


def _env(tmp_path: Path) -> dict[str, str]:
    return cli_env(CMIKIT_CACHE=str(tmp_path / "cache"))


def _cip(args: list[str], tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_module("cmikit.cip.cli", *args, env=_env(tmp_path), cwd=tmp_path, timeout=timeout)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad data files, a finished small run folder and a thresholds folder calibrated for 3 questions."""
    d = tmp_path_factory.mktemp("bad_inputs")
    out: dict[str, Path] = {"dir": d}
    (d / "not_json.json").write_text('{"questions": ["Is it big?"],\n "classes": [oops]}')
    (d / "latin1.json").write_bytes('{"questions": ["Est-ce gros?"], "classes": ["caf\xe9"]}'.encode("latin-1"))
    (d / "short_row.json").write_text(json.dumps({"questions": ["Is it big?", "Is it red?"], "classes": ["a", "b"],
                                                  "answers": {"a": [1, 0], "b": [1]}}))
    (d / "no_answers.json").write_text(json.dumps({"questions": ["Is it big?"], "classes": ["a", "b"]}))
    other = {"questions": ["Is it big?", "Is it red?"], "classes": ["ant", "bus", "rose"],
             "answers": {"ant": [0, 0], "bus": [1, 1], "rose": [0, 1]}}
    (d / "other_kb.json").write_text(json.dumps(other))
    # a MediQ split folder whose test file has a malformed row (line 3 of the CSV)
    split = d / "mediq" / "splits" / "neurology"
    split.mkdir(parents=True)
    header = "id,question,context,options,answer_idx,facts\n"
    good = '1,Which drug?,"[\'A 40-year-old man.\']","{\'A\': \'x\', \'B\': \'y\', \'C\': \'z\', \'D\': \'w\'}",A,"[\'1. fever\']"\n'
    bad = '2,Which test?,"[\'A child.\']","{\'A\': \'x\', \'B\'",A,"[\'1. cough\']"\n'
    for role in ("train", "cal"):
        (split / f"split0_{role}.csv").write_text(header + good)
    (split / "split0_test.csv").write_text(header + good + bad)
    (d / "bad.jsonl").write_text('{"id": 1}\n{"id": 2,\n')
    th = d / "th3"
    r = _cip(["calibrate", *TABLE, "--n_cal", "20", "--max_queries", "3", "--out_dir", str(th)], d)
    assert r.returncode == 0, r.stderr
    out["th3"] = th
    run = d / "run"
    r = _cip(["eval", *TABLE, "--n_cal", "20", "--max_queries", "2", "--n_games", "2", "--methods", "ip",
              "--out_dir", str(run)], d)
    assert r.returncode == 0, r.stderr
    out["run"] = run
    return out


# (case id, arguments (with {placeholders} for the fixture's files), what the message must name)
CASES = [
    ("n_games-0", ["eval", "--n_games", "0"], "--n_games 0"),
    ("max_candidates-0", ["eval", "--max_candidates", "0"], "--max_candidates 0"),
    ("n_est-0", ["eval", "--n_est", "0"], "--n_est 0"),
    ("alphas-0-1.5", ["eval", "--alphas", "0", "1.5"], "--alphas 0"),
    ("alphas-1.5", ["eval", "--alphas", "0.1", "1.5"], "--alphas 1.5"),
    ("alpha-1", ["eval", "--alpha", "1"], "--alpha 1"),
    ("max_queries-0", ["eval", "--max_queries", "0"], "--max_queries 0"),
    ("n_cal-too-small", ["eval", "--n_cal", "5", "--alpha", "0.05"], "--n_cal 5"),
    ("table_noise-0.5", ["eval", "--table_noise", "0.5"], "--table_noise 0.5"),
    ("batch_size-0", ["eval", "--batch_size", "0"], "--batch_size 0"),
    ("unknown-method", ["eval", "--methods", "cip-floor", "entropy"], "entropy"),
    ("strict-bool", ["eval", "--nonempty_sets", "ture"], "ture"),
    ("unknown-option", ["eval", "--max_query", "5"], "--max_query"),
    ("kb-missing", ["eval", "--kb", "{dir}/nope.json"], "nope.json"),
    ("kb-not-json", ["eval", "--kb", "{dir}/not_json.json"], "not_json.json"),
    ("kb-not-utf8", ["eval", "--kb", "{dir}/latin1.json"], "latin1.json"),
    ("kb-short-row", ["eval", "--kb", "{dir}/short_row.json"], "'b'"),
    ("kb-no-answers", ["eval", "--kb", "{dir}/no_answers.json"], "'answers'"),
    ("thresholds-too-short", ["eval", "--thresholds", "{th3}", "--max_queries", "5"], "--max_queries 5"),
    ("thresholds-other-labels", ["eval", "--kb", "{dir}/other_kb.json", "--thresholds", "{th3}", "--max_queries", "3"],
     "another label set"),
    ("thresholds-other-predictor", ["eval", "--thresholds", "{th3}", "--max_queries", "3", "--table_noise", "0.1"],
     "predictor.noise is 0.05 there and 0.1 here"),
    ("thresholds-missing", ["eval", "--thresholds", "{dir}/none.json"], "none.json"),
    ("mediq-malformed-row", ["eval", "--task", "mediq", "--mediq_dir", "{dir}/mediq"], "split0_test.csv:3"),
    ("mediq-missing-split", ["eval", "--task", "mediq", "--mediq_dir", "{dir}/mediq", "--split", "1"],
     "split1_train.csv"),
    ("play-n_cal-0", ["play", "--n_cal", "0"], "--n_cal 0"),
    ("play-criterion", ["play", "--criterion", "entropy"], "--criterion 'entropy'"),
    ("play-eval-option", ["play", "--n_games", "3"], "--n_games"),
    ("calibrate-n_est-0", ["calibrate", "--n_est", "0"], "--n_est 0"),
]


@pytest.mark.parametrize("name, args, culprit", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(files, tmp_path, name, args, culprit):
    run = files["run"]
    before = _snapshot(run)
    args = [a.format(dir=files["dir"], th3=files["th3"]) for a in args]
    if args[0] in ("eval", "calibrate"):
        args += ["--out_dir", str(run)]
    start = time.perf_counter()
    r = _cip([*args, "--progress", "false"] if args[0] != "play" else args, tmp_path)
    elapsed = time.perf_counter() - start
    assert_one_line_error(r, culprit)
    assert _snapshot(run) == before
    assert elapsed < 30  # no model was loaded


def test_mediq_jsonl_line_numbers(files):
    from cmikit.cip.environments import load_mediq_jsonl
    from cmikit.harness.errors import DataFileError

    with pytest.raises(DataFileError, match=r"bad\.jsonl:1: not a MediQ case.*the key 'question' is required"):
        load_mediq_jsonl(files["dir"] / "bad.jsonl")
    (files["dir"] / "bad2.jsonl").write_text("\n" + '{"id": 2,\n')
    with pytest.raises(DataFileError, match=r"bad2\.jsonl:2: not valid JSON"):
        load_mediq_jsonl(files["dir"] / "bad2.jsonl")


def test_rerun_with_changed_settings_is_refused_and_overwrite_starts_over(tmp_path):
    out = tmp_path / "run"
    base = ["eval", *TABLE, "--n_cal", "20", "--n_games", "2", "--methods", "ip", "--out_dir", str(out)]
    assert _cip([*base, "--max_queries", "3"], tmp_path).returncode == 0
    before = _snapshot(out)
    r = _cip([*base, "--max_queries", "5"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "max_queries: 3 -> 5" in last and "--overwrite" in last and "--out_dir" in last
    assert _snapshot(out) == before
    # the same settings resume (nothing to do); --overwrite starts over with the new ones
    assert _cip([*base, "--max_queries", "3"], tmp_path).returncode == 0
    assert _cip([*base, "--max_queries", "5", "--overwrite", "true"], tmp_path).returncode == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["trace"]["n_queries"] == 5 for r in records)


def test_kill_9_then_resume_equals_a_clean_run(tmp_path):
    args = [*TABLE, "--kb", "everyday", "--n_cal", "30", "--max_queries", "20", "--methods", "cip-floor", "ip",
            "random", "--seeds", "0"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert _cip(["eval", *args, "--out_dir", str(clean)], tmp_path, timeout=300).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "cmikit.cip.cli", "eval", *args, "--out_dir", str(killed)],
                            env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = killed / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not records.is_file() or len(records.read_bytes().splitlines()) < 10):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(records.read_bytes().splitlines())
    assert 10 <= n_before < 72, n_before  # killed mid-run
    r = _cip(["eval", *args, "--out_dir", str(killed)], tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

    def by_id(folder: Path) -> dict[str, dict]:
        rows = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
        return {row["id"]: {k: v for k, v in row.items() if k != "elapsed_s"} for row in rows}

    a, b = by_id(clean), by_id(killed)
    assert len(a) == 72 and a.keys() == b.keys()
    assert a == b
