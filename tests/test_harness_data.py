"""``cmikit data``: pinned, resumable downloads (against a local HTTP server on 127.0.0.1 with Range support),
refusal of a wrong checksum, the AwA2 build step, and where datasets are read from (``CMIKIT_DATA``)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import threading
from pathlib import Path

import pytest
from cli_testing import assert_one_line_error, call_main, cli_env, run_module

from cmikit.harness import data
from cmikit.harness.errors import DataFileError

ROOT = Path(__file__).resolve().parents[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    log: list[tuple[str, str | None, int]] = []  # (path, Range header, bytes sent)
    ignore_range = False
    drop_first_after: int | None = None  # the first response for each file stops after this many bytes

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            self.log.append((self.path, None, 0))
            return
        header = self.headers.get("Range")
        start = 0
        if header and not self.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                self.log.append((self.path, header, 0))
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        first = not any(p == self.path for p, _, _ in self.log)
        if first and self.drop_first_after is not None:
            chunk = chunk[: self.drop_first_after]  # then close: the client sees a short read
            self.close_connection = True
        self.log.append((self.path, header, len(chunk)))  # before the body: the client may finish first
        self.wfile.write(chunk)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def server():
    handler = type("Handler", (_Handler,), {"files": {}, "log": [], "ignore_range": False, "drop_first_after": None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler
    httpd.shutdown()
    httpd.server_close()


def _manifest(tmp_path: Path, server, files: dict[str, bytes], name: str = "demo", bad_sha: set[str] = frozenset(),
              derived: list[dict] | None = None) -> Path:
    entries = []
    for rel, body in files.items():
        server.files[f"/{name}/{rel}"] = body
        sha = hashlib.sha256(body if rel not in bad_sha else body + b"x").hexdigest()
        entries.append({"path": rel, "url": f"{server.base}/{name}/{rel}", "size": len(body), "sha256": sha})
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"datasets": {name: {
        "description": "a demo dataset", "source": "the test's server", "licence": "CC0 (demo licence)",
        "citation": "Demo et al. 2026", "files": entries, "derived": derived or []}}}))
    return path


def _files(n: int = 3, size: int = 200_000) -> dict[str, bytes]:
    return {f"part{i}.bin" if i else "nested/readme.txt": bytes((j * (i + 7)) % 251 for j in range(size))
            for i in range(n)}


def test_fresh_download_prints_progress_and_licence(tmp_path, server, capsys):
    files = _files()
    manifest = _manifest(tmp_path, server, files)
    out = io.StringIO()
    folder = data.fetch("demo", root=tmp_path / "cache", manifest=manifest, out=out)
    assert folder == tmp_path / "cache" / "demo"
    for rel, body in files.items():
        assert (folder / rel).read_bytes() == body
    assert not list(folder.rglob("*.part"))
    text = out.getvalue()
    assert "CC0 (demo licence)" in text and "Demo et al. 2026" in text and "0 of 3 files present" in text
    err = capsys.readouterr().err
    assert "demo" in err and "100%" in err  # the tqdm bar
    # A second fetch checks and downloads nothing.
    server.log.clear()
    data.fetch("demo", root=tmp_path / "cache", manifest=manifest, out=io.StringIO(), progress=False)
    assert server.log == []


def test_resume_from_a_partial_file_with_a_range_request(tmp_path, server):
    files = _files(2)
    manifest = _manifest(tmp_path, server, files)
    folder = tmp_path / "cache" / "demo"
    folder.mkdir(parents=True)
    body = files["part1.bin"]
    (folder / "part1.bin.part").write_bytes(body[:123_456])
    data.fetch("demo", root=tmp_path / "cache", manifest=manifest, out=io.StringIO(), progress=False)
    assert (folder / "part1.bin").read_bytes() == body
    ((_, header, sent),) = [entry for entry in server.log if entry[0] == "/demo/part1.bin"]
    assert header == "bytes=123456-" and sent == len(body) - 123_456


def test_server_without_range_support_restarts_the_file(tmp_path, server):
    files = _files(2)
    manifest = _manifest(tmp_path, server, files)
    server.ignore_range = True
    folder = tmp_path / "cache" / "demo"
    folder.mkdir(parents=True)
    (folder / "part1.bin.part").write_bytes(files["part1.bin"][:1000])
    data.fetch("demo", root=tmp_path / "cache", manifest=manifest, out=io.StringIO(), progress=False)
    assert (folder / "part1.bin").read_bytes() == files["part1.bin"]


def test_dropped_connection_resumes_within_the_same_run(tmp_path, server):
    files = _files(2)
    manifest = _manifest(tmp_path, server, files)
    server.drop_first_after = 50_000
    folder = data.fetch("demo", root=tmp_path / "cache", manifest=manifest, out=io.StringIO(), progress=False)
    for rel, body in files.items():
        assert (folder / rel).read_bytes() == body
    ranges = [header for path, header, _ in server.log if path == "/demo/part1.bin"]
    assert ranges == [None, "bytes=50000-"]


def test_checksum_mismatch_is_refused_and_the_file_not_kept(tmp_path, server):
    files = _files(2)
    manifest = _manifest(tmp_path, server, files, bad_sha={"part1.bin"})
    with pytest.raises(DataFileError, match="does not match its pinned checksum.*not kept") as err:
        data.fetch("demo", root=tmp_path / "cache", manifest=manifest, out=io.StringIO(), progress=False)
    assert "part1.bin" in str(err.value) and "\n" not in str(err.value)
    folder = tmp_path / "cache" / "demo"
    assert not (folder / "part1.bin").exists() and not (folder / "part1.bin.part").exists()


def test_a_corrupted_local_copy_is_downloaded_again(tmp_path, server):
    files = _files(2)
    manifest = _manifest(tmp_path, server, files)
    folder = data.fetch("demo", root=tmp_path / "cache", manifest=manifest, out=io.StringIO(), progress=False)
    damaged = bytearray(files["part1.bin"])
    damaged[10] ^= 1
    (folder / "part1.bin").write_bytes(bytes(damaged))
    server.log.clear()
    data.fetch("demo", root=tmp_path / "cache", manifest=manifest, out=io.StringIO(), progress=False)
    assert (folder / "part1.bin").read_bytes() == files["part1.bin"]
    assert [p for p, _, _ in server.log] == ["/demo/part1.bin"]


def test_missing_file_on_the_server_is_one_clear_error(tmp_path, server):
    manifest = _manifest(tmp_path, server, _files(1))
    server.files.clear()
    with pytest.raises(DataFileError, match="HTTP 404"):
        data.fetch("demo", root=tmp_path / "cache", manifest=manifest, out=io.StringIO(), progress=False)


def test_data_dir_prefers_cmikit_data_then_the_cache(tmp_path, monkeypatch, server):
    manifest = _manifest(tmp_path, server, _files(1, 1000))
    monkeypatch.setenv("CMIKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CMIKIT_DATA", raising=False)
    with pytest.raises(DataFileError, match="run `cmikit data fetch demo`"):
        data.data_dir("demo", manifest)
    with pytest.raises(DataFileError, match="unknown dataset 'nope'"):
        data.data_dir("nope", manifest)
    data.fetch("demo", manifest=manifest, out=io.StringIO(), progress=False)
    assert data.data_dir("demo", manifest) == tmp_path / "cache" / "data" / "demo"
    mine = tmp_path / "mine"
    (mine / "demo").mkdir(parents=True)
    monkeypatch.setenv("CMIKIT_DATA", str(mine))
    assert data.data_dir("demo", manifest) == mine / "demo"


def test_built_in_manifest_matches_the_shared_copies_and_builds_awa2(tmp_path, server, shared_data):
    """The pinned sizes and hashes are those of the published files (the shared copies are byte-identical), and
    the AwA2 build step reproduces ``twenty_questions_awa2_20.json`` byte for byte."""
    raw = json.loads(data.MANIFEST.read_text())
    for name, entry in raw["datasets"].items():
        kept = []
        for item in entry["files"]:
            local = shared_data / name / item["path"]
            if not local.is_file():  # LICENSE-C-IP is not among the shared copies
                continue
            body = local.read_bytes()
            assert len(body) == item["size"] and hashlib.sha256(body).hexdigest() == item["sha256"], item["path"]
            assert item["url"].startswith("https://raw.githubusercontent.com/")
            server.files[f"/{name}/{item['path']}"] = body
            kept.append(dict(item, url=f"{server.base}/{name}/{item['path']}"))
        entry["files"] = kept
    manifest = tmp_path / "local.json"
    manifest.write_text(json.dumps(raw))
    folder = data.fetch("awa2", root=tmp_path / "cache", manifest=manifest, out=io.StringIO(), progress=False)
    built = folder / "twenty_questions_awa2_20.json"
    assert built.read_bytes() == (shared_data / "awa2" / "twenty_questions_awa2_20.json").read_bytes()


def test_bad_manifest_names_the_file(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text('{"datasets": {"x": {"files": [{"path": "a"}]}}}')
    with pytest.raises(DataFileError, match="m.json.*not a dataset manifest"):
        data.load_manifest(bad)
    bad.write_text(json.dumps({"datasets": {"x": {"files": [
        {"path": "../escape", "url": "http://127.0.0.1/", "size": 1, "sha256": "0" * 64}]}}}))
    with pytest.raises(DataFileError, match="inside the dataset folder"):
        data.load_manifest(bad)


# ------------------------------------------------------------------------------------ the cmikit command
def _cmikit(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``cmikit args...`` in this process."""
    return call_main("cmikit.harness.main_cli", *args, env=env, cwd=cwd)


def test_cli_fetch_then_path_and_list(tmp_path, server):
    manifest = _manifest(tmp_path, server, _files(2, 5000))
    env = {"CMIKIT_CACHE": str(tmp_path / "cache"), "CMIKIT_DATA": ""}
    result = _cmikit("data", "fetch", "all", "--manifest", str(manifest), env=env)
    assert result.returncode == 0, result.stderr
    assert "licence:  CC0 (demo licence)" in result.stdout and "citation: Demo et al. 2026" in result.stdout
    result = _cmikit("data", "path", "demo", "--manifest", str(manifest), env=env)
    assert result.returncode == 0 and result.stdout.strip() == str(tmp_path / "cache" / "data" / "demo")
    result = _cmikit("data", "list", "--manifest", str(manifest), env=env)
    assert result.returncode == 0 and str(tmp_path / "cache" / "data" / "demo") in result.stdout


@pytest.mark.parametrize("args, culprit", [
    (["data", "fetch", "imagenet"], "'imagenet'"),
    (["data", "fetch"], "name"),
    (["data", "fetch", "awa2", "--bogus"], "--bogus"),
    (["data", "download", "awa2"], "'download'"),
    (["datasets"], "'datasets'"),
    (["data", "path", "mediq"], "cmikit data fetch mediq"),
    (["data", "list", "--manifest", "no/such/manifest.json"], "manifest.json"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, culprit):
    result = _cmikit(*args, env={"CMIKIT_CACHE": str(tmp_path / "cache"), "CMIKIT_DATA": ""})
    assert_one_line_error(result, culprit, max_lines=1)
    assert not (tmp_path / "cache" / "data").exists() or not any((tmp_path / "cache" / "data").rglob("*"))


def test_cli_bad_input_in_a_real_process_exits_2(tmp_path):
    """The smoke test of the process boundary: ``python -m cmikit.harness.main_cli`` itself exits with code 2."""
    env = cli_env(CMIKIT_CACHE=str(tmp_path / "cache"), CMIKIT_DATA="")
    result = run_module("cmikit.harness.main_cli", "data", "fetch", "imagenet", env=env, timeout=120)
    assert_one_line_error(result, "'imagenet'", max_lines=1)


# --------------------------------------------------------------------- defaults that read the datasets
def test_awa2_alias_and_mediq_default_resolve_through_the_datasets(tmp_path, monkeypatch, shared_data):
    import cmikit.cip.predictors
    from cmikit.cip.evaluate import CIPConfig, build
    from cmikit.cip.knowledge import KnowledgeBase

    monkeypatch.setattr(cmikit.cip.predictors, "LLMPredictor", lambda backend, prompt: None)  # no model needed here
    monkeypatch.setenv("CMIKIT_DATA", str(shared_data))
    kb = KnowledgeBase.load("awa2")
    assert len(kb.classes) == 20 and len(kb.questions) == 85
    setup = build(CIPConfig(task="mediq", specialty="neurology", predictor="table", answerer="table"),
                  backend=object())
    assert len(setup.test_items) > 0
    # Without CMIKIT_DATA and with an empty cache: one error naming the command that fetches the data.
    monkeypatch.delenv("CMIKIT_DATA")
    monkeypatch.setenv("CMIKIT_CACHE", str(tmp_path / "empty"))
    with pytest.raises(DataFileError, match="cmikit data fetch awa2"):
        KnowledgeBase.load("awa2")
    with pytest.raises(DataFileError, match="cmikit data fetch mediq"):
        build(CIPConfig(task="mediq", predictor="table"), backend=object())
