"""Shared by the benchmark scripts: the line that says where and at which commit a table was made."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine_line() -> str:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return (f"commit {commit}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"python {platform.python_version()}")
