"""The layer rule (docs/ARCHITECTURE.md): `import lsr` is light, and the import-linter contract
holds on this tree and fails on a tree that breaks it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def test_import_lsr_loads_no_heavy_dependency():
    code = ("import sys, lsr; heavy = [m for m in ('torch', 'transformers', 'faiss', 'numba', 'scipy', "
            "'pyarrow') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")], cwd=root,
                          env=env, capture_output=True, text=True)


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install 'lsr[test]')")
def test_contract_holds_and_a_violation_breaks_it(tmp_path):
    assert _lint(REPO).returncode == 0
    copy = tmp_path / "tree"
    shutil.copytree(REPO / "lsr", copy / "lsr", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    assert _lint(copy).returncode == 0  # the copy is what is linted
    target = copy / "lsr" / "index" / "maxsim.py"
    target.write_text(target.read_text() + "\nimport lsr.encoders.splade  # noqa: E402\n")
    res = _lint(copy)
    assert res.returncode != 0 and "lsr.index.maxsim -> lsr.encoders.splade" in res.stdout
