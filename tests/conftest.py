"""Shared fixtures. Area-specific fixtures live in their own test modules."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED = REPO.parent / "shared"
BEIR = SHARED / "data" / "beir"
MODELS = SHARED / "models"


@pytest.fixture(scope="session")
def tiny_beir() -> Path:
    return TESTS / "data" / "tiny_beir"


def beir_dataset(name: str) -> Path:
    path = BEIR / name
    if not (path / "corpus.jsonl").is_file():
        pytest.skip(f"shared BEIR data not found at {path}")
    return path


def shared_model(name: str) -> Path:
    path = MODELS / name
    if not path.exists():
        pytest.skip(f"shared model not found at {path}")
    return path
