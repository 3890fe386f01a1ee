"""Shared pytest set-up: the installed ``cmikit`` package (never the checkout's top-level folders) and the location
of the real data.

``shared_data`` is ``$CMIKIT_DATA`` (a folder holding awa2/, mediq/, sami-tldr/; ``.ci/run`` sets it), else
``../shared/data`` next to the checkout (this project's development layout). Tests that need it skip without it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `python -m pytest` puts the checkout on sys.path, where `import harness` would still find the folder: drop it,
# so that the suite imports only what the distribution installs (`cmikit.*`) and a leftover old name fails.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

SHARED_DATA = Path(os.environ.get("CMIKIT_DATA") or ROOT.parent / "shared" / "data").expanduser()
if not os.environ.get("CMIKIT_DATA") and SHARED_DATA.is_dir():
    os.environ["CMIKIT_DATA"] = str(SHARED_DATA)  # so `--kb awa2` and the mediq default resolve in tests too


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set CMIKIT_DATA to a folder holding awa2/, mediq/, "
                    f"sami-tldr/)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded_backend():
    """The real embedded SmolLM2 model behind the transformers backend (prepared once per cache)."""
    from cmikit.harness.backends import TransformersBackend

    return TransformersBackend.from_ref("smollm2-135m-instruct", batch_size=16)
