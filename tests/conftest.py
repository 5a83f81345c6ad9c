"""Shared fixtures. Area-specific fixtures live in their own test modules."""
from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
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
        pytest.skip(f"needs the BEIR {name} dataset at {path} (checkout without ../shared beside it)")
    return path


def shared_model(name: str) -> Path:
    path = MODELS / name
    if not path.exists():
        pytest.skip(f"needs the {name} model at {path} (checkout without ../shared beside it)")
    return path


# Skips are for a user's partial checkout (no ../shared, an extra not installed) or a machine
# without a GPU. Under CI (CI set, as .ci/run runs) everything but the GPU is there, so any other
# skip means a test silently stopped running: report it as a failure instead.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and os.environ.get("CI")) or item.get_closest_marker("gpu"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI, where ../shared and every extra must be present: {reason}"


@contextlib.contextmanager
def deadline(seconds: int):
    """Raise TimeoutError in this (the main) thread after ``seconds``, with every thread's stack
    (bounds the Ray tests: a hung cluster fails the test instead of the suite)."""
    def fail(signum, frame):
        faulthandler.dump_traceback(all_threads=True)
        raise TimeoutError(f"ran past {seconds}s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
