"""The distribution installs one top-level import name, ``cmikit`` (issue 14): the wheel holds nothing else at top
level, and it installs beside an unrelated distribution that owns the import name ``decoding`` without either
overwriting the other's files."""

from __future__ import annotations

import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel .`` of the checkout (offline: no build isolation, no dependencies), built from a copy so that
    the checkout gets no ``build/`` folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True)
    if ignore.returncode != 0:
        pytest.skip("not a git checkout")
    for rel in ignore.stdout.splitlines():
        if not (ROOT / rel).is_file():
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((ROOT / rel).read_bytes())
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
         tmp / "dist", src)
    (found,) = (tmp / "dist").glob("cmikit-*.whl")
    return found


def test_the_wheel_installs_only_cmikit_at_top_level(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"cmikit"}, sorted(top)
    assert len(dist_info) == 1 and dist_info.pop().startswith("cmikit-")
    # every file of the four packages the repository tracks (code and data) is in it, under cmikit/
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "harness", "sami", "cip", "decoding"],
                             capture_output=True, text=True, check=True).stdout.split()
    missing = [rel for rel in tracked if f"cmikit/{rel}" not in names]
    assert len(tracked) > 40 and not missing, missing
    assert "cmikit/decoding/custom_generate/generate.py" in names


@pytest.mark.slow
def test_the_wheel_installs_beside_another_decoding_distribution(wheel, tmp_path):
    # a dummy distribution that owns the top-level name `decoding`, as one on PyPI does
    other = tmp_path / "other"
    (other / "decoding").mkdir(parents=True)
    (other / "decoding" / "__init__.py").write_text('WHO = "the other decoding"\n')
    (other / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "decoding"\nversion = "9.9"\n[tool.setuptools]\npackages = ["decoding"]\n')
    venv = tmp_path / "venv"
    # A fresh venv; torch, transformers, ... come from the outer environment through a .pth line (a plain path
    # line: the outer environment's own .pth files, among them an editable cmikit, are not processed).
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    site_dir = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site_dir / "zz_outer_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", py, "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--no-index"]
    _run(*pip, other)
    _run(*pip, wheel)
    # a neutral folder: neither the checkout nor the outer editable install may be what is imported
    code = ("import sys, cmikit.decoding, cmikit.harness, cmikit.sami, cmikit.cip, decoding\n"
            "assert decoding.WHO == 'the other decoding', decoding.__file__\n"
            "assert callable(cmikit.decoding.diffusion_generate)\n"
            "print(cmikit.decoding.__file__); print(decoding.__file__)\n")
    out = _run(py, "-I", "-c", code, cwd=tmp_path).stdout.splitlines()
    assert out[0].startswith(str(venv)) and out[1].startswith(str(venv)), out
    # uninstalling the other distribution leaves cmikit whole
    _run(sys.executable, "-m", "pip", "--python", py, "uninstall", "--yes", "--quiet", "decoding")
    _run(py, "-I", "-c", "import cmikit.decoding; assert cmikit.decoding.diffusion_generate", cwd=tmp_path)
