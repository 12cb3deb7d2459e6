"""The package works without any provider SDK, and never loads one just by being imported.

Two child interpreters:

- **without the SDKs**: ``python -S`` (no site-packages) with a path holding only the required
  dependencies (pydantic and its own dependencies, aiolimiter) and ``src``. pydantic-ai,
  google-genai, openai, anthropic and LangChain are then genuinely absent, exactly as after
  ``pip install async-batch-llm`` without extras. Every module imports, the core runs a batch,
  and each integration raises ``ImportError`` naming the extra to install.
- **with the SDKs installed** (this virtualenv): importing every module loads none of them.

Each child prints a JSON report that the test asserts on, so a failure shows what happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiolimiter
import annotated_types
import pydantic
import pydantic_core
import typing_extensions
import typing_inspection

SRC = Path(__file__).resolve().parents[1] / "src"

REQUIRED = [
    pydantic,
    pydantic_core,
    annotated_types,
    typing_extensions,
    typing_inspection,
    aiolimiter,
]
"""The required dependencies (and theirs) made visible to the child without SDKs."""

SDK_ROOTS = [
    "pydantic_ai",
    "google.genai",
    "openai",
    "anthropic",
    "langchain",
    "langchain_core",
    "langchain_openai",
    "httpx",
    "httpx2",
    "prometheus_client",
    "click",
    "rich",
    "opentelemetry",
    "ray",
    "pyarrow",
]

# Runs in the child. Imports every module of the package, records what got loaded, then tries
# each integration. Prints one JSON object.
CHILD = r"""
import asyncio, importlib, importlib.util, json, pkgutil, sys

SDK_ROOTS = SDK_ROOTS_PLACEHOLDER

def loaded_sdks():
    return sorted(
        name for name in sys.modules
        if any(name == root or name.startswith(root + ".") for root in SDK_ROOTS)
    )

def findable(root):
    try:
        return importlib.util.find_spec(root) is not None
    except ImportError:  # the parent package (e.g. "google") is missing
        return False

report = {"findable": [root for root in SDK_ROOTS if findable(root)]}
import async_batch_llm
report["after_top_level_import"] = loaded_sdks()
modules = sorted(
    info.name
    for info in pkgutil.walk_packages(async_batch_llm.__path__, "async_batch_llm.")
)
failed = {}
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
report["modules"] = modules
report["import_failures"] = failed
report["after_every_import"] = loaded_sdks()
report["version"] = async_batch_llm.__version__

if INTEGRATIONS_PLACEHOLDER:
    from async_batch_llm import (
        AnthropicStrategy, GeminiCachedStrategy, GeminiStrategy, LLMCallStrategy, LLMResponse,
        LLMWorkItem, OpenAIStrategy, ParallelBatchProcessor, ProcessorConfig, PydanticAIStrategy,
    )
    from async_batch_llm.classifiers import (
        AnthropicErrorClassifier, GeminiErrorClassifier, OpenAIErrorClassifier,
    )
    from async_batch_llm.models import GeminiCachedModel, GeminiModel
    from async_batch_llm.observers import OpenTelemetryObserver
    from async_batch_llm.testing import MockAgent, mock_strategy

    attempts = {
        "PydanticAIStrategy": lambda: PydanticAIStrategy(MockAgent()),
        "mock_strategy": lambda: mock_strategy(MockAgent()),
        "GeminiModel": lambda: GeminiModel("gemini-2.5-flash", None),
        "GeminiCachedModel": lambda: GeminiCachedModel("gemini-2.5-flash", None, []),
        "GeminiStrategy(GeminiModel)": lambda: GeminiStrategy(
            GeminiModel("gemini-2.5-flash", None), lambda response: response.text
        ),
        "GeminiCachedStrategy": lambda: GeminiCachedStrategy("gemini-2.5-flash", None, []),
        "OpenAIStrategy": lambda: OpenAIStrategy(None, "gpt-4o-mini"),
        "AnthropicStrategy": lambda: AnthropicStrategy(None, "claude-sonnet-4-5"),
        "OpenTelemetryObserver": lambda: OpenTelemetryObserver(),
    }
    errors = {}
    for name, build in attempts.items():
        try:
            build()
        except Exception as exc:
            errors[name] = [type(exc).__name__, str(exc)]
        else:
            errors[name] = None
    report["integration_errors"] = errors

    report["classified"] = {
        type(classifier).__name__: classifier.classify(RuntimeError("boom")).error_category
        for classifier in (
            OpenAIErrorClassifier(), AnthropicErrorClassifier(), GeminiErrorClassifier()
        )
    }

    class EchoModel:
        async def generate(self, prompt, *, temperature=0.0):
            return LLMResponse(text=prompt.upper(), input_tokens=1, output_tokens=1, total_tokens=2)

    class Echo(LLMCallStrategy):
        async def execute(self, prompt, attempt, timeout):
            return prompt[::-1], {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}

    async def batch():
        config = ProcessorConfig(max_workers=2)
        async with ParallelBatchProcessor(config=config) as processor:
            await processor.add_work(LLMWorkItem(item_id="a", strategy=Echo(), prompt="abc"))
            model_strategy = GeminiStrategy(EchoModel(), lambda response: response.text)
            await processor.add_work(LLMWorkItem(item_id="b", strategy=model_strategy, prompt="xy"))
            result = await processor.process_all()
        return sorted((r.item_id, r.output) for r in result.results), result.total_input_tokens

    report["batch"] = asyncio.run(batch())
    report["after_batch"] = loaded_sdks()

print(json.dumps(report))
"""


def run_child(*, isolated: bool, path: list[Path]) -> dict[str, Any]:
    code = CHILD.replace("SDK_ROOTS_PLACEHOLDER", repr(SDK_ROOTS)).replace(
        "INTEGRATIONS_PLACEHOLDER", repr(isolated)
    )
    prelude = f"import sys; sys.path[:0] = {[str(p) for p in path]!r}\n"
    # -S: no site-packages (only in the isolated child); -E: ignore PYTHON* variables.
    flags = ["-S", "-E"] if isolated else ["-E"]
    completed = subprocess.run(
        [sys.executable, *flags, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report: dict[str, Any] = json.loads(completed.stdout.splitlines()[-1])
    return report


def required_only(tmp_path: Path) -> Path:
    """A directory holding links to the required dependencies only."""
    site = tmp_path / "site"
    site.mkdir()
    for module in REQUIRED:
        assert module.__file__ is not None
        source = Path(module.__file__)
        if source.name == "__init__.py":
            source = source.parent
        (site / source.name).symlink_to(source)
    return site


def test_without_the_sdks_the_package_imports_and_integrations_name_their_extra(
    tmp_path: Path,
) -> None:
    report = run_child(isolated=True, path=[required_only(tmp_path), SRC])

    assert report["findable"] == []  # really not installed, as far as the child can tell
    assert report["import_failures"] == {}
    assert "async_batch_llm.classifiers.openai" in report["modules"]
    assert "async_batch_llm.testing.servers" in report["modules"]
    assert report["after_every_import"] == []
    assert report["version"] == "0.0.0+dev"  # no installed distribution on this path

    pydantic_ai_hint = (
        "pydantic-ai is required for PydanticAIStrategy; "
        "install it with: pip install 'async-batch-llm[pydantic-ai]'"
    )

    def gemini_hint(name: str) -> str:
        return (
            f"google-genai is required to use {name}. "
            "Install it with: pip install 'async-batch-llm[gemini]'"
        )

    assert report["integration_errors"] == {
        "PydanticAIStrategy": ["ImportError", pydantic_ai_hint],
        "mock_strategy": ["ImportError", pydantic_ai_hint],
        "GeminiModel": ["ImportError", gemini_hint("GeminiModel")],
        "GeminiCachedModel": ["ImportError", gemini_hint("GeminiCachedModel")],
        "GeminiStrategy(GeminiModel)": ["ImportError", gemini_hint("GeminiModel")],
        "GeminiCachedStrategy": ["ImportError", gemini_hint("GeminiCachedModel")],
        "OpenAIStrategy": [
            "ImportError",
            "openai is required for OpenAIStrategy; "
            "install it with: pip install 'async-batch-llm[openai]'",
        ],
        "AnthropicStrategy": [
            "ImportError",
            "anthropic is required for AnthropicStrategy; "
            "install it with: pip install 'async-batch-llm[anthropic]'",
        ],
        "OpenTelemetryObserver": [
            "ImportError",
            "OpenTelemetryObserver needs opentelemetry-api; "
            "install it with: pip install 'async-batch-llm[otel]'",
        ],
    }
    assert report["classified"] == {
        "OpenAIErrorClassifier": "unknown",
        "AnthropicErrorClassifier": "unknown",
        "GeminiErrorClassifier": "unknown",
    }
    # The core needs no SDK: a custom strategy and GeminiStrategy over a custom model both run.
    assert report["batch"] == [[["a", "cba"], ["b", "XY"]], 2]
    assert report["after_batch"] == []


def test_importing_every_module_loads_no_sdk() -> None:
    report = run_child(isolated=False, path=[SRC])

    # The SDKs are installed in this environment...
    assert {"pydantic_ai", "google.genai", "openai", "anthropic", "langchain_openai"} <= set(
        report["findable"]
    )
    assert report["import_failures"] == {}
    assert report["after_top_level_import"] == []  # ...and none is loaded
    assert report["after_every_import"] == []
