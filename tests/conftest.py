"""Shared pytest set-up: the repository root on sys.path and the location of the shared data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded_backend():
    """The real embedded SmolLM2 model behind the transformers backend (prepared once per cache)."""
    from harness.backends import TransformersBackend

    return TransformersBackend.from_ref("smollm2-135m-instruct", batch_size=16)
