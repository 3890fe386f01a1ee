"""Every public example runs (issue 14): each fenced code block of README.md and docs/*.md is executed here, one
test per block, named ``<file>:<line of the opening fence>``; a failure names that file and line.

The convention (also in docs/harness.md, "Examples that run"):

* A block's language says what it is. ``python`` blocks run as one script; ``bash``/``sh``/``shell`` blocks
  run command by command (``\\`` continuations joined, ``#`` comments dropped). ``text`` marks output or a
  listing, which is not run. A block without a language, or with another one, fails the test: say which it is.
* Shell commands that call a console script (``cip``, ``sami``, ``dlm-decode``, ``cmikit``), optionally after
  ``VAR=value`` assignments, run in this process through the script's ``main(argv)``; any other command (``make``,
  ``python``, command substitution, pipes) runs in ``bash`` with the environment's ``bin`` first on ``PATH``.
  Every command must exit with 0.
* Everything runs in a fresh folder holding links to the checkout's ``configs/``, ``scripts/`` and ``.venv``
  (``runs/...`` outputs land there), with ``$CMIKIT_CACHE`` and ``$CMIKIT_DATA`` as for the rest of the suite.
  ``make`` targets run against the checkout's Makefile with ``DEMO_OUT`` in that folder and without reinstalling.
* Markers: HTML comment lines immediately above the opening fence (several may stack), invisible in the
  rendered page:

  ``<!-- docs-test: skip (reason) -->``
      the block is not run (GPU, 7B models, hour-long runs, network); the reason is required.
  ``<!-- docs-test: skip-line PREFIX (reason) -->``
      the commands (shell) or lines (python; a one-line statement) that start with PREFIX are not run.
  ``<!-- docs-test: replace OLD => NEW -->``
      the block runs with OLD replaced by NEW, to shorten it (fewer games, steps) or to swap a 7B model for a
      tiny one; OLD must occur in the block.
  ``<!-- docs-test: setup CODE -->``
      CODE runs first (Python before a python block, a shell command before a shell block): names the example
      takes as given (``prompts``, ``cfg``), a small input file.
  ``<!-- docs-test: embedded -->``
      the block uses the real embedded SmolLM2 (pytest mark ``embedded``); a block that names ``smollm2`` gets
      the mark without it.

  A marker that does not match (an unknown kind, a PREFIX or OLD not in the block) fails the test, so that a
  changed example cannot silently stop being run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_testing import call_main, cli_env

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"bash", "sh", "shell"}
NOT_CODE = {"text"}
CLIS = {"cip": "cmikit.cip.cli", "sami": "cmikit.sami.cli", "dlm-decode": "cmikit.decoding.cli",
        "cmikit": "cmikit.harness.main_cli"}
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>[\w-]+)\s*(?P<arg>.*?)\s*-->\s*$")
COMMAND_LIKE = re.compile(rf"^\s*(\$ )?({'|'.join(map(re.escape, CLIS))}|make|python|\.venv/bin/|accelerate)\s")
_PASSED: set[str] = set()  # commands that already ran and passed in this session (e.g. `make demo` twice)
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)(?P<lang>[^`\s]*)")


@dataclass
class Block:
    where: str  # file:line of the opening fence
    lang: str
    text: str
    markers: list[tuple[str, str]] = field(default_factory=list)


def find_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file with the markers right above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        close = re.compile(rf"^\s*{re.escape(m['fence'][0])}{{{len(m['fence'])},}}\s*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        markers, k = [], i - 1
        while k >= 0 and MARKER.match(lines[k]):
            mk = MARKER.match(lines[k])
            markers.insert(0, (mk["kind"], mk["arg"]))
            k -= 1
        indent = len(m["indent"])
        body = "\n".join(line[indent:] if line[:indent].isspace() else line for line in lines[i + 1:j])
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        blocks.append(Block(f"{name}:{i + 1}", m["lang"].lower(), body, markers))
        i = j + 1
    return blocks


BLOCKS = [b for path in DOCS for b in find_blocks(path)]


def _reason(arg: str, where: str) -> tuple[str, str]:
    """``PREFIX (reason)`` -> (PREFIX, reason); the reason is required."""
    m = re.fullmatch(r"(?P<head>.*?)\s*\((?P<reason>[^()]*)\)", arg)
    if not m or not m["reason"].strip():
        pytest.fail(f"{where}: a docs-test skip needs a reason in parentheses, got {arg!r}")
    return m["head"].strip(), m["reason"].strip()


def shell_commands(text: str) -> list[str]:
    """A shell block as commands: continuations joined, comment lines and trailing comments dropped."""
    commands, current = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        command = _strip_comment(current + line)
        if command:
            commands.append(command)
        current = ""
    return commands


def _strip_comment(line: str) -> str:
    """The line without a ``#`` comment that is outside quotes (and starts a word)."""
    quote = None
    for pos, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (pos == 0 or line[pos - 1].isspace()):
            return line[:pos].strip()
    return line.strip()


def _params():
    for block in BLOCKS:
        marks = []
        if ("embedded", "") in block.markers or "smollm2" in block.text.lower():
            marks.append(pytest.mark.embedded)
        yield pytest.param(block, id=block.where, marks=marks)


def test_blocks_are_found():
    assert len(BLOCKS) > 10 and any(b.where.startswith("README.md") for b in BLOCKS)
    # a marker that is not directly above a fence is a mistake (it would silently do nothing)
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if MARKER.match(line):
                k = n + 1
                while k < len(lines) and MARKER.match(lines[k]):
                    k += 1
                assert k < len(lines) and FENCE.match(lines[k]), \
                    f"{path.relative_to(ROOT)}:{n + 1}: a docs-test marker must sit right above a code fence"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("configs", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


@pytest.mark.parametrize("block", list(_params()))
def test_docs_example_runs(block: Block, workdir: Path):
    run_block(block, workdir)


def run_block(block: Block, workdir: Path) -> None:
    """Run one block as the module docstring says (pytest.skip for a skipped one)."""
    where = block.where
    if block.lang in NOT_CODE:
        assert not block.markers, f"{where}: docs-test markers on a text block (it is never run)"
        commands = [line for line in block.text.splitlines() if COMMAND_LIKE.match(line)]
        assert not commands, f"{where}: a text block holds commands ({commands[0]!r}); tag it bash so that it runs"
        return
    if block.lang not in SHELLS | {"python"}:
        pytest.fail(f"{where}: a code block needs a language: python, bash, or text for output/listings "
                    f"(got {block.lang!r})")
    text, setup, skip_lines = block.text, [], []
    for kind, arg in block.markers:
        if kind == "skip":
            _, reason = _reason(arg, where)
            pytest.skip(f"{where}: {reason}")
        elif kind == "skip-line":
            prefix, _ = _reason(arg, where)
            skip_lines.append(prefix)
        elif kind == "replace":
            old, sep, new = arg.partition(" => ")
            assert sep and old, f"{where}: replace needs 'OLD => NEW', got {arg!r}"
            assert old in text, f"{where}: replace: {old!r} is not in the block"
            text = text.replace(old, new)
        elif kind == "setup":
            setup.append(arg)
        elif kind != "embedded":
            pytest.fail(f"{where}: unknown docs-test marker {kind!r}")
    if block.lang == "python":
        _run_python(where, text, setup, skip_lines, workdir)
    else:
        _run_shell(where, text, setup, skip_lines, workdir)


def _run_python(where: str, text: str, setup: list[str], skip_lines: list[str], workdir: Path) -> None:
    lines = text.splitlines()
    for prefix in skip_lines:
        hit = [n for n, line in enumerate(lines) if line.lstrip().startswith(prefix)]
        assert hit, f"{where}: skip-line: no line starts with {prefix!r}"
        for n in hit:
            lines[n] = lines[n][: len(lines[n]) - len(lines[n].lstrip())] + "pass  # skipped by docs-test"
    source = "\n".join(setup)
    # a module of its own, as a script has (dataclasses and pickling look their module up in sys.modules)
    module = types.ModuleType("__docs_example__")
    namespace = module.__dict__
    cwd = os.getcwd()
    os.chdir(workdir)
    sys.modules[module.__name__] = module
    try:
        if source:
            exec(compile(source, f"{where} (docs-test setup)", "exec"), namespace)
        # line numbers of the traceback are the block's own (offset by the fence's line)
        fence_line = int(where.rsplit(":", 1)[1])
        code = compile("\n" * fence_line + "\n".join(lines), where.rsplit(":", 1)[0], "exec")
        exec(code, namespace)
    finally:
        os.chdir(cwd)
        sys.modules.pop(module.__name__, None)


def _run_shell(where: str, text: str, setup: list[str], skip_lines: list[str], workdir: Path) -> None:
    commands = shell_commands(text)
    for prefix in skip_lines:
        assert any(c.startswith(prefix) for c in commands), f"{where}: skip-line: no command starts with {prefix!r}"
    env = cli_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for command in setup:
        _bash(where, command, env, workdir)
    for command in commands:
        if any(command.startswith(prefix) for prefix in skip_lines) or command in _PASSED:
            continue
        words = _plain_words(command)
        assignments = {}
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
            key, _, value = words.pop(0).partition("=")
            assignments[key] = value
        if words and words[0] in CLIS:
            result = call_main(CLIS[words[0]], *words[1:], env={"TQDM_DISABLE": "1", **assignments}, cwd=workdir)
            assert result.returncode == 0, f"{where}: `{command}` exited {result.returncode}:\n" \
                                           f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        else:
            _bash(where, command, env, workdir)
        _PASSED.add(command)


def _plain_words(command: str) -> list[str]:
    """The words of a command that needs no shell (else an empty list)."""
    if re.search(r"[$`|;&<>(){}*?]", command):
        return []
    try:
        return shlex.split(command)
    except ValueError:
        return []


def _bash(where: str, command: str, env: dict[str, str], workdir: Path) -> None:
    if command.startswith("make "):
        stamp = Path(sys.prefix) / ".cmikit-installed"
        command = (f"make -C {shlex.quote(str(ROOT))} VENV={shlex.quote(sys.prefix)} -o {shlex.quote(str(stamp))} "
                   f"DEMO_OUT={shlex.quote(str(workdir / 'runs' / 'demo'))} {command[5:]}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{where}: `{command}` exited {result.returncode}:\n" \
                                   f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def _resolve(dotted: str):
    """Import the longest module prefix of ``a.b.c`` and get the rest as attributes."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_names_in_the_prose_exist():
    """Every ``cmikit.x.y`` the prose names (in inline code, e.g. the README's
    ``custom_generate=cmikit.decoding.plugin.diffusion_generate``) imports and resolves as written."""
    names = {}
    for path in DOCS:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for span in re.findall(r"`([^`]+)`", line):
                for dotted in re.findall(r"\bcmikit(?:\.[A-Za-z_]\w*)+", span):
                    names.setdefault(dotted, f"{path.relative_to(ROOT)}:{n}")
    assert len(names) > 5
    failed = []
    for dotted, where in sorted(names.items()):
        try:
            _resolve(dotted)
        except (ImportError, AttributeError) as err:
            failed.append(f"{where}: {dotted}: {type(err).__name__}: {err}")
    assert not failed, "\n".join(failed)


def test_a_broken_example_fails_naming_its_file_and_line(tmp_path, workdir):
    """The mechanism itself: a failing command, a failing Python line, a block without a language and a marker
    that no longer applies each fail with the block's file:line."""
    doc = tmp_path / "guide.md"
    doc.write_text("\n".join([
        "# Guide", "", "```bash", "cmikit data list", "cmikit data fetch nothing-such", "```", "",  # fence at 3
        "```python", "x = 1", "assert x == 2, 'wrong'", "```", "",  # 8
        "```", "cip eval --quick", "```", "",  # 13
        "<!-- docs-test: replace --n_games 9 => --n_games 1 -->", "```bash", "cip eval --help", "```",  # 18
        "<!-- docs-test: skip-line cip play (interactive) -->", "```bash", "cip eval --help", "```",  # 22
        "<!-- docs-test: skip (a GPU) -->", "```python", "raise SystemExit(1)", "```",  # 26
    ]) + "\n")
    blocks = find_blocks(doc)
    assert [b.where.rsplit(":", 1)[1] for b in blocks] == ["3", "8", "13", "18", "22", "26"]
    expected = [r"guide\.md:3: `cmikit data fetch nothing-such` exited 2", None, r"guide\.md:13: .*needs a language",
                r"guide\.md:18: replace: '--n_games 9' is not in the block",
                r"guide\.md:22: skip-line: no command starts with 'cip play'"]
    for block, pattern in zip(blocks[:5], expected):
        with pytest.raises((AssertionError, pytest.fail.Exception)) as info:
            run_block(block, workdir)
        if pattern is None:  # a Python failure keeps its traceback, with the file and the line in the Markdown
            assert info.value.args[0] == "wrong"
            tb = [entry for entry in info.traceback if str(entry.path).endswith("guide.md")]
            assert tb and tb[-1].lineno + 1 == 10, [(str(e.path), e.lineno) for e in info.traceback]
        else:
            assert re.search(pattern, str(info.value)), str(info.value)
    with pytest.raises(pytest.skip.Exception, match=r"guide\.md:26: a GPU"):
        run_block(blocks[5], workdir)
