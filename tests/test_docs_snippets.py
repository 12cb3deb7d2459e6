"""The marked Python snippets of docs/*.md run as written and print what the docs say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tests.backends.conftest import require_redis_server

DOCS = Path(__file__).resolve().parents[1] / "docs"
_SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```python\n(.*?)```", re.DOTALL)
_EXPECTED = re.compile(r"print\(.*\)\s*# (.+)$")


def _snippets() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for page in sorted(DOCS.rglob("*.md")):
        for name, code in _SNIPPET.findall(page.read_text(encoding="utf-8")):
            found.append((f"{page.relative_to(DOCS)}:{name}", code))
    return found


@pytest.mark.parametrize(("name", "code"), _snippets(), ids=[n for n, _ in _snippets()])
def test_docs_snippet_prints_what_its_comments_promise(name: str, code: str) -> None:
    if "LocalRedisServer" in code:
        require_redis_server()  # skips (fails under CI_REQUIRE_REDIS=1) without redis-server
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, name, "exec", dont_inherit=True), {"__name__": "docs_snippet"})
    expected = [m.group(1).strip() for line in code.splitlines() if (m := _EXPECTED.search(line))]
    assert expected, f"{name} documents no output to check"
    assert out.getvalue().splitlines() == expected


def test_docs_have_snippets() -> None:
    assert _snippets()
