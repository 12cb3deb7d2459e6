"""The documentation site: every Python block is run, the site builds with no warning.

Every ```` ```python ```` block under docs/ is preceded by one of three markers:

- ``<!-- snippet: NAME -->``: run by tests/test_docs_snippets.py, which checks what it prints;
- ``<!-- run-by: tests/FILE.py NAME -->``: run by that test module, which names the snippet;
- ``<!-- not-run: REASON -->``: shown only (it needs a real API key, say); the reason is said.

The site is built with ``mkdocs build --strict`` (what ``make docs`` runs), so a broken link,
a page missing from the nav or a docstring the API reference cannot parse fails this test.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli._support import SCRIPT, child_env

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```[ \t]*(?P<lang>[\w+-]*)", re.MULTILINE)
_PYTHON = {"python", "py", "python3", "pycon"}
_SNIPPET = re.compile(r"<!-- snippet: [\w-]+ -->")
_RUN_BY = re.compile(r"<!-- run-by: (?P<path>tests/[\w/]+\.py) (?P<name>[\w-]+) -->")
_NOT_RUN = re.compile(r"<!-- not-run: (?P<reason>\S.*\S) -->")


def blocks_of(text: str) -> list[tuple[int, str]]:
    """``(line number, the line before it)`` of every Python block of a markdown text."""
    lines = text.splitlines()
    found: list[tuple[int, str]] = []
    inside = False
    for number, line in enumerate(lines, start=1):
        match = _FENCE.match(line)
        if match is None:
            continue
        if inside:
            inside = False  # a closing fence
            continue
        inside = True
        if match.group("lang").lower() in _PYTHON:
            found.append((number, lines[number - 2].strip() if number >= 2 else ""))
    return found


def python_blocks() -> list[tuple[str, str]]:
    """``(page:line, marker line)`` of every Python block under docs/."""
    return [
        (f"{page.relative_to(DOCS)}:{number}", before)
        for page in sorted(DOCS.rglob("*.md"))
        for number, before in blocks_of(page.read_text(encoding="utf-8"))
    ]


def test_the_docs_have_python_blocks() -> None:
    assert len(python_blocks()) >= 15


@pytest.mark.parametrize(("where", "marker"), python_blocks(), ids=[w for w, _ in python_blocks()])
def test_every_python_block_is_run_or_says_why_not(where: str, marker: str) -> None:
    if _SNIPPET.fullmatch(marker):
        return  # tests/test_docs_snippets.py runs it (it finds every marked block)
    if (run_by := _RUN_BY.fullmatch(marker)) is not None:
        runner = ROOT / run_by.group("path")
        assert runner.is_file(), f"{where}: {runner} does not exist"
        assert run_by.group("name") in runner.read_text(encoding="utf-8"), (
            f"{where}: {runner.name} never names snippet {run_by.group('name')!r}"
        )
        return
    assert _NOT_RUN.fullmatch(marker), (
        f"{where}: a python block must follow <!-- snippet: NAME --> (with `print(...)  # "
        "expected` lines), <!-- run-by: tests/FILE.py NAME --> or <!-- not-run: REASON -->; "
        f"found {marker!r}"
    )


def test_the_block_scanner_finds_unmarked_blocks() -> None:
    """The scanner is not blind: a block with no marker is reported with what precedes it."""
    page = (
        "text\n\n```python\nprint(1)\n```\n\n```bash\nls\n```\n"
        "<!-- not-run: needs a key -->\n```py\nx = '```'\n```\n"
    )
    assert blocks_of(page) == [(3, ""), (11, "<!-- not-run: needs a key -->")]
    assert _NOT_RUN.fullmatch("<!-- not-run: needs a key -->")
    assert not _NOT_RUN.fullmatch("<!-- not-run:  -->")


# ------------------------------------------------------------------ docs/reference/cli.md

_HELP = re.compile(r"<!-- cli-help: (\w+) -->\n```console\n\$ (.*?)\n(.*?)```", re.DOTALL)


def test_the_cli_reference_is_the_scripts_help() -> None:
    blocks = _HELP.findall((DOCS / "reference" / "cli.md").read_text(encoding="utf-8"))
    assert [name for name, _, _ in blocks] == ["main", "run", "status", "export"]
    env = child_env(COLUMNS="80")
    for _, command, shown in blocks:
        args = command.split()
        assert args[0] == "async-batch-llm"
        done = subprocess.run(
            [str(SCRIPT), *args[1:]],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=True,
        )
        assert done.stdout == shown, f"docs/reference/cli.md is stale for `{command}`"


# ----------------------------------------------------------------------- mkdocs build


PUBLIC_MODULES = (
    "async_batch_llm.core",
    "async_batch_llm.artifacts",
    "async_batch_llm.quota",
    "async_batch_llm.backends",
    "async_batch_llm.streaming",
    "async_batch_llm.observers",
    "async_batch_llm.llm_strategies",
    "async_batch_llm.strategies",
    "async_batch_llm.middleware",
    "async_batch_llm.classifiers",
    "async_batch_llm.testing",
    "async_batch_llm.testing.clock",
    "async_batch_llm.testing.mocks",
    "async_batch_llm.testing.strategies",
    "async_batch_llm.testing.servers",
)


def public_names(module_name: str) -> list[str]:
    """The classes and functions a public module exports (its ``__all__``, else its names)."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    return [
        name
        for name in names
        if inspect.isclass(obj := getattr(module, name))
        or (inspect.isfunction(obj) and obj.__module__.startswith("async_batch_llm"))
    ]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_site_builds_strictly_with_every_public_name(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    took = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    print(f"mkdocs build --strict: {took:.1f}s")

    pages = {p.relative_to(DOCS).with_suffix("") for p in DOCS.rglob("*.md")}
    for page in pages:
        built = site / (page.parent if page.name == "index" else page) / "index.html"
        assert built.is_file(), f"docs/{page}.md was not built"

    ids: set[str] = set()
    for html in (site / "reference").rglob("*.html"):
        ids |= set(re.findall(r'id="(async_batch_llm[\w.]*)"', html.read_text(encoding="utf-8")))
    missing = [
        f"{module}.{name}"
        for module in PUBLIC_MODULES
        for name in public_names(module)
        if f"{module}.{name}" not in ids
    ]
    assert not missing, f"not in the API reference: {missing}"
    top = importlib.import_module("async_batch_llm")
    assert not [n for n in top.__all__ if not any(i.endswith(f".{n}") for i in ids)]


def test_the_overview_links_every_page() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w/-]+\.md)\)", index))
    pages = {p.name for p in DOCS.glob("*.md")} - {"index.md"}
    assert pages <= linked, f"docs/index.md does not link {sorted(pages - linked)}"
    assert "reference/index.md" in linked
