"""Issue 16: resume that repairs, run folders that can't be turned against their owner, faults in one line,
and cache integrity that matches the docs."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from cli_testing import snapshot

from cmikit.harness.errors import DataFileError, RunConflictError
from cmikit.harness.evaluation import REJECTED_FILE, Task, read_jsonl, run_task
from cmikit.harness.runs import open_run, read_run


def _task(calls: list[str]) -> Task:
    def run_batch(batch):
        calls.extend(e["id"] for e in batch)
        return [{"value": e["x"] * 2, "metrics": {"double": e["x"] * 2.0}} for e in batch]

    return Task("toy", [{"id": f"e{k}", "x": k} for k in range(8)], run_batch)


def _by_id(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(path)}


# --------------------------------------------------------------------------------- resume that repairs
def test_three_corrupt_record_lines_are_set_aside_and_rerun_to_a_clean_result(tmp_path, capsys):
    clean_calls: list[str] = []
    clean = run_task(_task(clean_calls), tmp_path / "clean", batch_size=3, progress=False)
    out = tmp_path / "damaged"
    run_task(_task([]), out, batch_size=3, progress=False)
    lines = (out / "records.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = b'{"id": "e1", "value": 2, "metr\xff\xfe\n'  # not UTF-8
    lines[4] = b"42\n"  # not an object
    lines[6] = b'{"id"\n'  # cut short
    (out / "records.jsonl").write_bytes(b"".join(lines))
    capsys.readouterr()
    calls: list[str] = []
    summary = run_task(_task(calls), out, batch_size=3, progress=False)
    err = capsys.readouterr().err
    assert sorted(calls) == ["e1", "e4", "e6"]  # only the damaged items ran again
    assert "records.jsonl:2:" in err and "records.jsonl:5:" in err and "records.jsonl:7:" in err
    assert _by_id(out / "records.jsonl") == _by_id(tmp_path / "clean" / "records.jsonl")
    assert summary["metrics"] == clean["metrics"]
    rejected = [json.loads(line) for line in (out / REJECTED_FILE).read_text().splitlines()]
    assert [r["line"] for r in rejected] == [2, 5, 7]  # nothing the run had is deleted: set aside, with the bytes
    assert rejected[0]["text"].encode("utf-8", "surrogateescape") == lines[1].rstrip(b"\n")
    assert rejected[1]["text"] == "42"


def test_a_complete_last_record_without_newline_counts_as_done(tmp_path):
    out = tmp_path / "run"
    run_task(_task([]), out, batch_size=8, progress=False)
    path = out / "records.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    calls: list[str] = []
    run_task(_task(calls), out, batch_size=8, progress=False)
    assert calls == [] and len(read_jsonl(path)) == 8


# ------------------------------------------------------------------------- run folders and their owner
def _open(out: Path, **kwargs):
    return open_run(out, "demo", {"a": 1}, keys=("a",), **kwargs)


@pytest.mark.parametrize("link, message", [
    (lambda victim, lock: lock.symlink_to(victim), "symbolic link"),
    (lambda victim, lock: os.link(victim, lock), "not a plain lock file"),
], ids=["symlinked", "hard-linked"])
def test_a_linked_lock_is_refused_and_its_target_left_byte_identical(tmp_path, link, message):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious bytes\n")
    out = tmp_path / "run"
    out.mkdir()
    link(victim, out / ".lock")
    with pytest.raises(RunConflictError, match=message):
        with _open(out):
            pass
    assert victim.read_bytes() == b"precious bytes\n"


def test_overwrite_refuses_a_run_json_this_toolkit_did_not_write(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "run.json").write_text('{"name": "another tool", "version": 3}')
    (out / "results.csv").write_text("a,b\n1,2\n")
    before = snapshot(out)
    with pytest.raises(RunConflictError, match="not written by cmikit"):
        with _open(out, overwrite=True):
            pass
    assert snapshot(out) == before


def test_overwrite_deletes_only_the_files_the_toolkit_writes(tmp_path, capsys):
    out = tmp_path / "run"
    with _open(out) as run:
        run.path("records.jsonl").write_text('{"id": "1"}\n')
        run.path("summary.json").write_text("{}")
    (out / "results.csv").write_text("mine\n")
    with open_run(out, "demo", {"a": 2}, keys=("a",), overwrite=True):
        pass
    assert sorted(p.name for p in out.iterdir()) == [".lock", "results.csv", "run.json"]
    assert "kept 1 file(s)" in capsys.readouterr().err and read_run(out)["config"] == {"a": 2}


def test_a_dotdot_dataset_name_is_refused_and_nothing_lands_outside(tmp_path, monkeypatch):
    from cmikit.harness import data

    monkeypatch.setenv("CMIKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("outside")
    before = snapshot(tmp_path)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"datasets": {"../../x": {"files": [
        {"path": "a.txt", "url": "http://127.0.0.1:9/a.txt", "size": 1, "sha256": "0" * 64}]}}}))
    before = snapshot(tmp_path)
    for call in (lambda: data.fetch("../../x", manifest=manifest, progress=False),
                 lambda: data.data_dir("../../x", manifest)):
        with pytest.raises(DataFileError, match=r"m.json.*\.\./\.\./x.*plain name"):
            call()
    assert snapshot(tmp_path) == before and not (tmp_path / "cache").exists()


def test_train_tiny_output_checks(tmp_path):
    from cmikit.decoding.tiny_dlm import TRAIN_LOG, asset_dir, check_output_dir
    from cmikit.harness.errors import ConfigError

    with pytest.raises(ConfigError, match="inside the cmikit package"):
        check_output_dir(asset_dir())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a folder this command made"):
        check_output_dir(foreign)
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / TRAIN_LOG).write_text(json.dumps({"train_config": {}}))
    assert check_output_dir(ours) == ours and check_output_dir(tmp_path / "new") == tmp_path / "new"


# ---------------------------------------------------------------------------------- faults in one line
def test_disk_full_while_writing_records_is_one_line(tmp_path, capsys, monkeypatch):
    from cmikit.harness import evaluation
    from cmikit.harness.cli import run_cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "records.jsonl"))

    monkeypatch.setattr(evaluation.os, "fsync", full)
    assert run_cli(lambda: run_task(_task([]), tmp_path / "run", progress=False)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write") and "records.jsonl" in err[0]
    assert "No space left on device" in err[0] and "rerun" in err[0]


def test_a_bug_still_keeps_its_traceback():
    from cmikit.harness.cli import run_cli

    def bug():
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError):
        run_cli(bug)


def test_play_with_an_unwritable_cache_plays_without_caching(tmp_path, monkeypatch):
    import io

    from cmikit.cip.cli import play

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("CMIKIT_CACHE", str(blocker / "cache"))  # mkdir fails there, as on a read-only disk
    out = io.StringIO()
    code = play(["--n_cal", "10", "--max_queries", "2", "--progress", "false", "--transcript",
                 str(tmp_path / "t.json")], stdin=io.StringIO("y\nn\n"), stdout=out)
    text = out.getvalue()
    assert code == 0 and text.count("cannot be written") == 1 and "calibrating without caching" in text
    assert json.loads((tmp_path / "t.json").read_text())["turns"]


# ------------------------------------------------------------------------------------ cache integrity
def _fake_cache(folder: Path) -> None:
    from cmikit.harness.embedded import write_ready

    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(3 << 20))
    write_ready(folder)


def _settle(folder: Path) -> None:
    """Age the files (stamps are kept only for files settled for 2 s) and record the stamps."""
    from cmikit.harness.embedded import check_prepared

    old = 1_600_000_000
    for p in folder.iterdir():
        os.utime(p, (old, old))
    (folder / ".verified").unlink(missing_ok=True)
    assert check_prepared(folder, full=True) is None


def _flip(path: Path, where: int) -> None:
    """Flip 4 bytes in place, then put the mtime back (the size never changes)."""
    st = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(where)
        old = handle.read(4)
        handle.seek(where)
        handle.write(bytes(b ^ 0xFF for b in old))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_flipped_bytes_with_size_and_mtime_kept_are_caught(tmp_path):
    from cmikit.harness.embedded import check_prepared

    folder = tmp_path / "m"
    _fake_cache(folder)
    _settle(folder)
    assert check_prepared(folder) is None  # the cheap path: stamps match, edges match
    _flip(folder / "model.safetensors", (3 << 20) // 2)  # the middle: neither edge; the ctime moved
    assert "model.safetensors has sha256" in (check_prepared(folder) or "")


def test_bit_rot_in_an_edge_is_caught_by_the_cheap_check(tmp_path):
    from cmikit.harness.embedded import _stamp, check_prepared

    folder = tmp_path / "m"
    _fake_cache(folder)
    _settle(folder)
    weights = folder / "model.safetensors"
    _flip(weights, 10)
    stamps = json.loads((folder / ".verified").read_text())  # rot on disk changes no metadata: re-stamp
    stamps["model.safetensors"][:4] = _stamp(weights)
    (folder / ".verified").write_text(json.dumps(stamps))
    assert "changed in its first or last MiB" in (check_prepared(folder) or "")


def test_cache_verify_hashes_every_file(tmp_path, monkeypatch, capsys):
    from cmikit.harness import embedded
    from cmikit.harness.main_cli import main

    monkeypatch.setenv("CMIKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CMIKIT_DATA", "")
    folder = embedded.embedded_model_dir()
    _fake_cache(folder)
    assert main(["cache", "verify"]) == 0
    assert f"models/{folder.name}: ok" in capsys.readouterr().out
    (folder / "config.json").write_text("[]")  # same size, other bytes
    assert main(["cache", "verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json has sha256" in err[0]


def test_judge_records_out_of_range_on_resume_are_set_aside_and_judged_again(tmp_path, capsys):
    from cmikit.harness.schemas import JudgeRecord

    def task(calls: list[str]) -> Task:
        def run_batch(batch):
            calls.extend(e["id"] for e in batch)
            return [{"len_candidate": e["x"], "len_baseline": 3, "judgements": [],
                     "metrics": {"win": float(e["x"] % 2), "unparsed": 0.0}} for e in batch]

        return Task("judge-like", [{"id": f"p{k}", "x": k} for k in range(5)], run_batch, record_schema=JudgeRecord)

    clean = run_task(task([]), tmp_path / "clean", progress=False)
    out = tmp_path / "edited"
    run_task(task([]), out, progress=False)
    text = (out / "records.jsonl").read_text()
    text = text.replace('"win": 1.0', '"win": 7', 1).replace('"len_candidate": 2', '"len_candidate": NaN', 1)
    (out / "records.jsonl").write_text(text)
    calls: list[str] = []
    summary = run_task(task(calls), out, progress=False)
    assert sorted(calls) == ["p1", "p2"] and summary["metrics"] == clean["metrics"]
    err = capsys.readouterr().err
    assert "metrics.win: found 7" in err and "len_candidate: found nan" in err
