"""Adversarial review of live collections (issue 12): each test failed before its fix.

Durability of tombstones, refresh racing commits, a collection replaced under a reader, bad
documents through the API and ``lsr add``, hostile segment manifests. References are fresh
builds over the surviving documents or the file system calls themselves.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from lsr.collection import Collection
from lsr.errors import DataFormatError, IndexFormatError


@pytest.fixture
def no_fsync(monkeypatch):
    monkeypatch.setenv("LSR_COLLECTION_FSYNC", "0")


def _docs(prefix: str, n: int, words: str = "heart disease") -> list[dict]:
    return [{"_id": f"{prefix}{i}", "text": f"{words} {prefix}{i}", "metadata": {"n": i}} for i in range(n)]


def _same(a, b) -> bool:
    if [d for d, _ in a] != [d for d, _ in b]:
        return False
    return np.allclose([s for _, s in a], [s for _, s in b], rtol=1e-5, atol=1e-7)


def _fresh(path: Path, docs: list[dict]) -> Collection:
    col = Collection.create(path, "bm25", merge_policy=None)
    col.add(docs)
    return col


# ---------------------------------------------------------------------- durability
def test_every_renamed_file_has_its_directory_fsynced_before_the_commit(tmp_path, monkeypatch):
    """A tombstone file renamed into deletes/ must have deletes/ fsynced before the commit that
    names it is renamed in: otherwise a power loss can keep the commit and lose the tombstone."""
    monkeypatch.setenv("LSR_COLLECTION_FSYNC", "1")
    col = Collection.create(tmp_path / "c", "bm25", merge_policy=None)
    col.add(_docs("a", 4))
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("rename", os.path.realpath(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    col.delete(["a1"])
    monkeypatch.undo()
    col.close()
    renames = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    commit_at = next(i for i in renames if os.path.basename(events[i][1]).startswith("commit_"))
    for i in renames:
        parent = os.path.dirname(events[i][1])
        synced = [j for j, e in enumerate(events) if e == ("fsync", parent) and j > i]
        assert synced, f"{events[i][1]}: its directory is never fsynced after the rename"
        if i < commit_at:
            assert synced[0] < commit_at, f"{events[i][1]}: directory fsynced only after the commit"
