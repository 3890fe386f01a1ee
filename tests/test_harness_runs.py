"""Run identity (cmikit.harness.runs.open_run) and the error boundary (cmikit.harness.cli): a rerun never mixes settings, one
run per folder, a killed run leaves no stale lock, user errors are one line with exit code 2, bugs keep their
traceback."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cmikit.harness import cli
from cmikit.harness.embedded import GGUF_SHA256
from cmikit.harness.errors import CmikitError, ConfigError, DataFileError, RunConflictError
from cmikit.harness.runs import RUN_FILE, file_digest, model_identity, open_run, read_run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"max_queries": 3, "methods": ["cip", "ip"], "seed": 0, "progress": True, "out_dir": "x", "batch_size": 8}
KEYS = ("max_queries", "methods", "seed")  # the allowlist: progress, out_dir, batch_size do not change results


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _open(out: Path, config=None, **kwargs):
    return open_run(out, "demo", CONFIG if config is None else config, keys=kwargs.pop("keys", KEYS), **kwargs)


def _finished_run(out: Path, config=None, **kwargs) -> None:
    with _open(out, config, **kwargs) as run:
        run.path("records.jsonl").write_text('{"game": 1}\n')
        (out / "thresholds").mkdir(exist_ok=True)
        (out / "thresholds" / "seed0.json").write_text("{}")


def test_new_run_writes_run_json_and_resume_sets_resumed(tmp_path):
    out = tmp_path / "run"
    with _open(out) as run:
        assert not run.resumed and run.out_dir == out
    record = read_run(out)
    assert record["kind"] == "demo" and record["config"] == CONFIG  # every key, ignored ones too
    assert set(record["identity"]["settings"]) == {"max_queries", "methods", "seed"}
    assert record["fingerprint"] == hashlib.sha256(
        json.dumps(record["identity"], sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    created = record["created"]
    with _open(out) as run:
        assert run.resumed
    again = read_run(out)
    assert again["created"] == created and "resumed" in again and again["fingerprint"] == record["fingerprint"]


def test_changed_settings_are_refused_naming_the_keys_and_nothing_changes(tmp_path):
    out = tmp_path / "run"
    _finished_run(out)
    (out / ".lock").write_text("pid 1 since an earlier run")  # a refused run must not rewrite even this
    before = _snapshot(out)
    changed = dict(CONFIG, max_queries=5, methods=["cip", "ip", "random"])
    with pytest.raises(RunConflictError) as err:
        with _open(out, changed):
            raise AssertionError("the body must not run")
    message = str(err.value)
    assert "settings.max_queries: 3 -> 5" in message and "settings.methods" in message
    assert "--out_dir" in message and "--overwrite" in message and "\n" not in message
    assert _snapshot(out) == before


def test_ignored_keys_do_not_count(tmp_path):
    out = tmp_path / "run"
    _finished_run(out)
    with _open(out, dict(CONFIG, progress=False, out_dir="elsewhere", batch_size=64)) as run:
        assert run.resumed
    assert read_run(out)["config"]["batch_size"] == 64  # the config records what this run used


def test_a_new_listed_setting_absent_before_is_a_difference(tmp_path):
    out = tmp_path / "run"
    _finished_run(out)
    with pytest.raises(RunConflictError, match=r"settings.temperature: \(absent\) -> 0.7"):
        with _open(out, dict(CONFIG, temperature=0.7), keys=(*KEYS, "temperature")):
            pass


def test_a_new_unlisted_setting_does_not_count(tmp_path):
    """Run identity is an allowlist: a key nobody listed (say a field a newer library adds) resumes."""
    out = tmp_path / "run"
    _finished_run(out)
    with _open(out, dict(CONFIG, brand_new_option=1)) as run:
        assert run.resumed
    assert read_run(out)["config"]["brand_new_option"] == 1


def test_package_version_is_recorded_but_an_upgrade_alone_resumes(tmp_path, monkeypatch):
    import cmikit.harness.runs as runs

    out = tmp_path / "run"
    monkeypatch.setattr(runs, "package_version", lambda: "0.1.0")
    _finished_run(out)
    first = read_run(out)
    assert first["package"] == "0.1.0" and "package" not in first["identity"]
    monkeypatch.setattr(runs, "package_version", lambda: "9.9.9")
    with _open(out) as run:
        assert run.resumed
    again = read_run(out)
    assert again["package"] == "9.9.9" and again["created_by_package"] == "0.1.0"
    assert again["fingerprint"] == first["fingerprint"]
    with pytest.raises(RunConflictError, match="settings.seed: 0 -> 1"):  # a listed setting still refuses
        with _open(out, dict(CONFIG, seed=1)):
            pass


def test_overwrite_empties_a_run_folder_and_starts_over(tmp_path):
    out = tmp_path / "run"
    _finished_run(out)
    (out / "notes.txt").write_text("mine")  # a user's own file: --overwrite deletes only what cmikit writes
    with _open(out, dict(CONFIG, max_queries=5), overwrite=True) as run:
        assert not run.resumed
        assert sorted(p.name for p in out.iterdir()) == [".lock", "notes.txt", RUN_FILE]
        assert (out / "notes.txt").read_text() == "mine"
    assert read_run(out)["config"]["max_queries"] == 5


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_non_run_folder_with_files_is_refused_and_left_alone(tmp_path, overwrite):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("precious")
    (out / "sub" / "data.csv").write_text("a,b\n")
    before = _snapshot(out)
    with pytest.raises(RunConflictError, match="no run.json") as err:
        with _open(out, overwrite=overwrite):
            raise AssertionError("the body must not run")
    assert "\n" not in str(err.value)
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["sub", "thesis.tex"]  # no .lock


def test_an_empty_existing_folder_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with _open(out) as run:
        assert not run.resumed


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(RunConflictError, match="is a file"):
        with _open(target):
            pass
    assert target.read_text() == "x"


@pytest.mark.parametrize("text", ["{ not json", "[]", '{"kind": "demo", "fingerprint": "x"}'])
def test_unreadable_run_json_is_refused_with_how_to_recover_even_with_overwrite(tmp_path, text):
    out = tmp_path / "run"
    _finished_run(out)
    (out / RUN_FILE).write_text(text)
    before = _snapshot(out)
    for overwrite in (False, True):  # an unreadable run.json cannot vouch that the folder is a cmikit run
        with pytest.raises(RunConflictError, match=r"run.json.*mv .*run .*run.bad") as err:
            with _open(out, overwrite=overwrite):
                pass
        assert "\n" not in str(err.value)
        assert _snapshot(out) == before
    os.replace(out, tmp_path / "run.bad")  # the recovery the message names
    with _open(out) as run:
        assert not run.resumed
    assert _snapshot(tmp_path / "run.bad") == before  # nothing the user had is deleted


def test_changed_data_file_is_refused(tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text('{"q": 1}\n')
    out = tmp_path / "run"
    _finished_run(out, files={"items": data})
    with _open(out, files={"items": data}) as run:
        assert run.resumed
    data.write_text('{"q": 2}\n')  # same size, other content
    with pytest.raises(RunConflictError, match=r"files.items: \"sha256:"):
        with _open(out, files={"items": data}):
            pass


def test_a_data_file_rewritten_within_one_mtime_tick_is_still_seen(tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text("aaaa\n")
    stamp = data.stat().st_mtime_ns
    first = file_digest(data)
    data.write_text("bbbb\n")
    os.utime(data, ns=(stamp, stamp))  # same path, size and mtime: a memo keyed on them would be stale
    assert file_digest(data) != first


def test_a_run_killed_while_writing_run_json_leaves_a_usable_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("pid 1")
    (out / f".{RUN_FILE}.12345.tmp").write_text('{"half": ')
    with _open(out) as run:
        assert not run.resumed
    assert sorted(p.name for p in out.iterdir()) == [".lock", RUN_FILE]


def test_an_unusable_out_dir_is_one_clear_error(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RunConflictError, match="cannot be used as a run folder.*another --out_dir"):
        with _open(tmp_path / "file.txt" / "sub"):
            pass


def test_changed_model_weights_are_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"weights-1")
    out = tmp_path / "run"
    _finished_run(out, models={"predictor": str(model)})
    (model / "model.safetensors").write_bytes(b"weights-2")
    with pytest.raises(RunConflictError, match="models.predictor.weights"):
        with _open(out, models={"predictor": str(model)}):
            pass


def test_non_main_process_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with _open(out, main_process=False) as run:
        assert run.fingerprint and not run.resumed
    assert not out.exists()


def test_lock_is_released_when_the_body_raises(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyError):
        with _open(out):
            raise KeyError("bug")
    with _open(out) as run:  # not locked any more
        assert run.resumed


def test_second_opener_in_the_same_process_is_refused(tmp_path):
    out = tmp_path / "run"
    with _open(out):
        with pytest.raises(RunConflictError, match=f"in use by another run \\(pid {os.getpid()}"):
            with _open(out):
                pass


_HOLDER = textwrap.dedent("""
    import sys, time
    from cmikit.harness.runs import open_run
    with open_run({out!r}, "demo", {config!r}, keys={keys!r}) as run:
        print("locked", flush=True)
        time.sleep(120)
""")


def test_lock_refuses_another_process_and_is_released_by_kill_9(tmp_path):
    out = tmp_path / "run"
    code = _HOLDER.format(root=str(ROOT), out=str(out), config=CONFIG, keys=KEYS)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunConflictError) as err:
            with _open(out):
                pass
        assert f"pid {holder.pid}" in str(err.value) and "another --out_dir" in str(err.value)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert holder.returncode == -signal.SIGKILL
    with _open(out) as run:  # the OS dropped the dead process's lock: no stale lock to clean up
        assert run.resumed


# -------------------------------------------------------------------------------------- model identity
def test_model_identity_embedded_folder_gguf_hub(tmp_path):
    assert model_identity("smollm2-135m-instruct") == {"ref": "smollm2-135m-instruct",
                                                       "weights": f"sha256:{GGUF_SHA256}"}
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w1")
    first = model_identity(str(folder))
    assert first["path"] == str(folder.resolve()) and first["weights"].startswith("sha256:")
    (folder / "model.safetensors").write_bytes(b"w2")
    assert model_identity(str(folder))["weights"] != first["weights"]
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF....")
    assert model_identity(str(gguf)) == {"ref": str(gguf), "weights": file_digest(gguf)}
    assert file_digest(gguf) == "sha256:" + hashlib.sha256(b"GGUF....").hexdigest()
    hub = model_identity("some-org/some-model")
    assert hub == {"ref": "some-org/some-model", "hub_id": "some-org/some-model", "revision": "main"}
    assert model_identity("some-org/some-model", revision="abc123")["revision"] == "abc123"
    assert model_identity("mistral-7b")["hub_id"] == "mistralai/Mistral-7B-v0.1"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"lora")
    assert model_identity("smollm2-135m-instruct", adapter=str(adapter))["adapter"].startswith("sha256:")
    assert model_identity("./no/such/folder") == {"ref": "./no/such/folder"}  # the loader reports it
    assert model_identity(None) == {"ref": None}


# ----------------------------------------------------------------------------------------- error boundary
def test_run_cli_prints_one_line_and_exits_2_for_user_errors(capsys):
    def bad():
        raise DataFileError("not valid JSON\n(expected an object)", path="items.jsonl", line=7)

    assert cli.run_cli(bad) == 2
    err = capsys.readouterr().err
    assert err == "error: items.jsonl:7: not valid JSON (expected an object)\n"
    for error in (ConfigError("--n_games: 0 is not allowed; must be >= 1"), RunConflictError("busy")):
        assert cli.run_cli(lambda e=error: (_ for _ in ()).throw(e)) == 2
    assert capsys.readouterr().err.count("error: ") == 2
    assert cli.run_cli(lambda: (_ for _ in ()).throw(ConfigError())) == 2
    assert capsys.readouterr().err == "error: ConfigError\n"  # never a bare "error: "


def test_run_cli_lets_bugs_keep_their_traceback():
    def bug():
        raise ZeroDivisionError("a real bug")

    with pytest.raises(ZeroDivisionError):
        cli.run_cli(bug)
    assert cli.run_cli(lambda: None) == 0 and cli.run_cli(lambda: 3) == 3


def test_run_cli_interrupt_is_one_line_exit_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert cli.run_cli(interrupted, interrupted_hint="rerun to resume") == 130
    assert capsys.readouterr().err.strip() == "interrupted; rerun to resume"


def test_dispatch_routes_and_guards(capsys):
    seen = []
    commands = {"go": lambda argv: seen.append(list(argv)) or 0,
                "fail": lambda argv: (_ for _ in ()).throw(ConfigError("bad --x")),
                "bug": lambda argv: (_ for _ in ()).throw(TypeError("bug"))}
    assert cli.dispatch("prog", "usage: prog", commands, ["go", "--a", "1"]) == 0 and seen == [["--a", "1"]]
    assert cli.dispatch("prog", "usage: prog", commands, ["--help"]) == 0
    assert cli.dispatch("prog", "usage: prog", commands, []) == 0
    assert capsys.readouterr().out.count("usage: prog") == 2
    assert cli.dispatch("prog", "usage: prog", commands, ["fail"]) == 2
    assert cli.dispatch("prog", "usage: prog", commands, ["nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: bad --x", "error: prog: unknown command 'nope'; choose one of go, fail, bug "
                                     "(`prog --help` lists them)."]
    with pytest.raises(TypeError):
        cli.dispatch("prog", "usage: prog", commands, ["bug"])


def test_every_project_error_is_a_cmikit_error():
    from cmikit.harness.embedded import EmbeddedModelError
    from cmikit.harness.errors import ModelRefError, ThresholdsError
    from cmikit.harness.models import ModelLoadError

    for cls in (ConfigError, ModelRefError, DataFileError, ThresholdsError, RunConflictError, ModelLoadError,
                EmbeddedModelError):
        assert issubclass(cls, CmikitError)
