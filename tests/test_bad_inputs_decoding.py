"""Bad inputs to ``dlm-decode``: each ends as one ``error:`` line naming the culprit, exit code 2, no traceback,
found before any model loads, and an existing output folder untouched. Plus a refused ``bench`` rerun into a
folder made with other settings.

The cases run ``main(argv)`` in this process (issue 14: fast); one case runs a real process, for the process's own
exit code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli_testing import assert_one_line_error, call_main, cli_env, run_module, snapshot

ROOT = Path(__file__).resolve().parents[1]


def dlm_decode(*args: str) -> subprocess.CompletedProcess:
    """``dlm-decode args...`` in this process."""
    return call_main("cmikit.decoding.cli", *args, env={"TQDM_DISABLE": "1"})


TINY = ["generate", "--model", "tiny"]
PROMPT = ["--prompt", "abcdefghabcdefghabcdefgh,abcdefghAbcdefghabcdefGh="]

CASES = {
    # strict booleans: a typo must not quietly mean False
    "bool-typo": (TINY + PROMPT + ["--seek-mode", "ture"], ["--seek-mode", "ture"]),
    "bool-typo-bench": (["bench", "--quick", "ture"], ["--quick", "ture"]),
    # counts where 0 has no meaning are refused, not reinterpreted
    "n-problems-0": (["bench", "--n-problems", "0"], ["--n-problems", "0"]),
    "batch-size-0": (["bench", "--batch-size", "0"], ["--batch-size", "0"]),
    "threads-0": (["bench", "--threads", "0"], ["--threads", "0"]),
    "negative-temperature-bench": (["bench", "--temperatures", "0", "-1"], ["--temperatures", "-1"]),
    "gen-length-0": (TINY + PROMPT + ["--gen-length", "0"], ["--gen-length", "0"]),
    "block-not-dividing": (TINY + PROMPT + ["--gen-length", "24", "--block-length", "5"], ["block_length=5"]),
    "threshold-out-of-range": (TINY + PROMPT + ["--threshold", "1.5"], ["--threshold", "1.5", "(0, 1]"]),
    "temperature-nan": (TINY + PROMPT + ["--temperature", "nan"], ["--temperature", "NaN"]),
    "steps-not-a-number": (TINY + PROMPT + ["--steps", "many"], ["--steps", "many"]),
    "steps-fraction": (TINY + PROMPT + ["--steps", "2.5"], ["--steps", "2.5"]),
    "cache-unknown": (TINY + PROMPT + ["--cache", "full"], ["--cache", "full"]),
    "cache-refresh-0": (TINY + PROMPT + ["--cache", "dual", "--cache-refresh", "0"], ["--cache-refresh", "0"]),
    "numerics-unknown": (TINY + PROMPT + ["--numerics", "bf16"], ["--numerics", "bf16"]),
    "strategy-unknown": (TINY + PROMPT + ["--strategy", "greedy"], ["--strategy", "greedy"]),
    # prompts
    "unequal-prompts": (TINY + ["--prompt", "abc,", "--prompt", "abcdef,"], ["--prompt", "equal length"]),
    "empty-prompt": (TINY + ["--prompt", ""], ["--prompt", "empty"]),
    "prompt-outside-vocabulary": (TINY + ["--prompt", "abc\u20ac"], ["--prompt", "'\u20ac'"]),
    "prompt-too-long-for-context": (TINY + ["--prompt", "a" * 120, "--gen-length", "24"], ["--gen-length", "128"]),
    "missing-prompt": (TINY, ["--prompt"]),
    # files, dtypes, commands
    "dtype-unknown": (["generate", "--model", "some/model", *PROMPT, "--dtype", "fp8"], ["--dtype", "fp8"]),
    "mask-id-negative": (TINY + PROMPT + ["--mask-token-id", "-3"], ["--mask-token-id", "-3"]),
    "model-path-missing": (["bench", "--model-path", "/nonexistent/tiny"], ["--model-path", "/nonexistent/tiny"]),
    "bench-parts-unknown": (["bench", "--parts", "speed"], ["--parts", "speed"]),
    "nothing-to-run": (["bench", "--parts", "overhead", "--no-overhead"], ["--parts"]),
    "unknown-command": (["decode"], ["decode"]),
}


@pytest.fixture
def existing_out(tmp_path: Path) -> Path:
    out = tmp_path / "bench_out"
    out.mkdir()
    (out / "bench.json").write_text('{"kept": true}')
    (out / "notes.txt").write_text("do not touch")
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_before_any_model_load(name, existing_out):
    args, culprits = CASES[name]
    if args[0] == "bench":
        args = [*args, "--out", str(existing_out)]
    before = snapshot(existing_out)
    result = dlm_decode(*args)
    assert_one_line_error(result, *culprits)
    assert "Loading weights" not in result.stderr  # refused before any model loaded
    assert snapshot(existing_out) == before


def test_bad_input_in_a_real_process_exits_2(existing_out):
    """The smoke test of the process boundary: ``python -m cmikit.decoding.cli`` itself exits with code 2."""
    before = snapshot(existing_out)
    result = run_module("cmikit.decoding.cli", "bench", "--n-problems", "0", "--out", existing_out,
                        env=cli_env(TQDM_DISABLE="1"))
    assert_one_line_error(result, "--n-problems", "0")
    assert snapshot(existing_out) == before


def test_bench_rerun_with_other_settings_is_refused_and_overwrite_starts_over(tmp_path):
    out = tmp_path / "run"
    tiny = ["bench", "--quick", "--parts", "accuracy", "--n-problems", "2", "--batch-size", "2",
            "--temperatures", "0", "--out", str(out)]
    first = dlm_decode(*tiny)
    assert first.returncode == 0, first.stderr[-3000:]
    assert {"bench.json", "run.json"} <= {p.name for p in out.iterdir()}
    before = snapshot(out)

    again = dlm_decode(*tiny)  # same settings: accepted (threads and progress do not count)
    assert again.returncode == 0, again.stderr[-3000:]

    before = snapshot(out)
    changed = dlm_decode(*[a if a != "2" else "3" for a in tiny])  # --n-problems 3 --batch-size 3
    last = assert_one_line_error(changed, "n_problems", "--overwrite", "--out")
    assert "other settings" in last
    assert snapshot(out) == before

    over = dlm_decode(*[a if a != "2" else "3" for a in tiny], "--overwrite")
    assert over.returncode == 0, over.stderr[-3000:]
    assert b'"n_problems": 3' in (out / "run.json").read_bytes()
