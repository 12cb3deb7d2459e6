"""The crash-resume soak (``soak_kill.py``) at a smaller size, as a soak test.

Runs ``python -m tests.soak.soak_kill`` with 3,000 items, 3 kills and both stores in a
subprocess and asserts it exits 0: nothing lost, duplicated or wrong, no committed success
called again, and nothing paid twice beyond the calls in flight at the kills plus the answers
still waiting for their group commit (``--lenient-commit-window``; see docs/resumable-runs.md).
``make soak`` runs it; the default test run deselects it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LIMIT = 1200.0  # seconds for the whole soak: four child runs per store, on a busy machine

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]


@pytest.mark.timeout(LIMIT + 60)
def test_kill_and_resume_loses_nothing_and_pays_once() -> None:
    command = [
        sys.executable,
        "-m",
        "tests.soak.soak_kill",
        "--items",
        "3000",
        "--kills",
        "3",
        "--store-kind",
        "both",
        "--child-timeout",
        "300",
        "--lenient-commit-window",
    ]
    completed = subprocess.run(
        command,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LIMIT,
        check=False,
    )
    print(completed.stdout)  # the report; pytest shows it with the failure, or with -s
    assert completed.returncode == 0, completed.stderr[-4000:] or "see the captured stdout"
