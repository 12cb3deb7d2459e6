"""The Ray snippets of README.md (``scale-out-ray``) and docs/scale-out.md (``ray-openai``).

Each runs as written in a fresh interpreter (it starts and stops its own Ray runtime, as a
user's script would); the test checks what it prints.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from tests.test_readme import snippets

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ray, pytest.mark.timeout(200)]


def run_script(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def docs_block(name: str) -> str:
    text = (ROOT / "docs" / "scale-out.md").read_text(encoding="utf-8")
    marker = f"<!-- run-by: tests/ray_data/test_docs_ray.py {name} -->\n```python\n"
    found = re.search(re.escape(marker) + r"(.*?)```", text, re.DOTALL)
    assert found is not None, f"docs/scale-out.md has no block {name!r}"
    return found.group(1)


def test_readme_ray_snippet_runs_as_written() -> None:
    printed = run_script(snippets()["scale-out-ray"])
    assert printed[-2:] == ["99 REVIEW 7", "ValueError: cannot read this one"], printed


def test_docs_ray_openai_snippet_runs_as_written() -> None:
    printed = run_script(docs_block("ray-openai"))
    assert printed[-2:] == ["40 True", "True"], printed
