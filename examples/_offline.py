"""Where the examples send their requests: the real provider, or a local emulator of it.

Every example opens one of :func:`openai_backend`, :func:`anthropic_backend` or
:func:`gemini_backend` and builds its SDK client from the :class:`Backend` it gets:

* the provider's API key is set (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY`` or
  ``GOOGLE_API_KEY``): the real API. ``base_url`` and ``api_key`` are ``None`` so the SDK reads
  its usual environment variables, ``*_BASE_URL`` included;
* no key, but the SDK's base-URL variable is set (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``,
  ``GOOGLE_GEMINI_BASE_URL``): that endpoint, for example a proxy or a compatible server;
* neither: a local HTTP server from :mod:`async_batch_llm.testing.servers` that speaks the
  provider's wire format (offline mode). The SDK talks to it unchanged, so the example exercises
  the same client code as with the real API. ``backend.server`` is that server: examples script
  faults on it (a 429 with ``Retry-After``, malformed output) to show what the processor does.

Each backend prints one line saying which mode runs, and :meth:`Backend.print_server_stats`
one line on what the emulator saw (offline only). The options (``respond``, ``fault_fn``,
``latency``, ...) configure the local server and are ignored otherwise.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from async_batch_llm.testing.servers import (
    AnthropicServer,
    FaultFn,
    GeminiServer,
    OpenAIServer,
    ProviderServer,
    Respond,
)

__all__ = ["Backend", "anthropic_backend", "gemini_backend", "openai_backend"]

ServerT = TypeVar("ServerT", bound=ProviderServer)

Mode = Literal["real", "endpoint", "offline"]

PLACEHOLDER_KEY = "offline-example-key"
"""What the SDK is given as a key when none is needed (the local server accepts any)."""


@dataclass(frozen=True)
class Backend(Generic[ServerT]):
    """Where requests go; pass ``base_url`` and ``api_key`` to the SDK client as they are.

    Attributes:
        provider: ``"OpenAI"``, ``"Anthropic"`` or ``"Gemini"``.
        mode: ``"real"``, ``"endpoint"`` (the ``*_BASE_URL`` you set) or ``"offline"``.
        server: the local emulator in offline mode, else ``None``.
        base_url: the client's base URL; ``None`` lets the SDK use its default or the
            ``*_BASE_URL`` environment variable.
        api_key: the client's key; ``None`` lets the SDK read its key variable.
    """

    provider: str
    mode: Mode
    server: ServerT | None
    base_url: str | None
    api_key: str | None

    @property
    def offline(self) -> bool:
        """True when requests go to the local emulator."""
        return self.server is not None

    def print_server_stats(self) -> None:
        """Offline only: print how many requests the emulator saw, and its HTTP statuses."""
        if self.server is not None:
            statuses = dict(sorted(self.server.status_counts.items()))
            print(f"server saw {self.server.request_count} requests, statuses {statuses}")


def _first_set(names: tuple[str, ...]) -> str | None:
    return next((name for name in names if os.environ.get(name)), None)


@asynccontextmanager
async def _backend(
    provider: str,
    key_vars: tuple[str, ...],
    url_var: str,
    server: ServerT,
) -> AsyncIterator[Backend[ServerT]]:
    key_var = _first_set(key_vars)
    if key_var is not None or os.environ.get(url_var):
        if key_var is not None:
            where = f" via {url_var}={os.environ[url_var]}" if os.environ.get(url_var) else ""
            print(f"mode: real — {key_var} is set; calling the {provider} API{where}")
            yield Backend(provider, "real", None, None, None)
        else:
            print(f"mode: endpoint — {url_var}={os.environ[url_var]} (no API key set)")
            yield Backend(provider, "endpoint", None, None, PLACEHOLDER_KEY)
        return
    async with server:
        print(
            f"mode: offline — {' / '.join(key_vars)} not set; "
            f"local {provider} emulator at {server.base_url}"
        )
        yield Backend(provider, "offline", server, server.base_url, PLACEHOLDER_KEY)


def openai_backend(
    *, respond: Respond | None = None, fault_fn: FaultFn | None = None, latency: float = 0.0
) -> AbstractAsyncContextManager[Backend[OpenAIServer]]:
    """The OpenAI API, or a local :class:`OpenAIServer` (base URL ends in ``/v1``)."""
    server = OpenAIServer(respond=respond, fault_fn=fault_fn, latency=latency)
    return _backend("OpenAI", ("OPENAI_API_KEY",), "OPENAI_BASE_URL", server)


def anthropic_backend(
    *, respond: Respond | None = None, fault_fn: FaultFn | None = None, latency: float = 0.0
) -> AbstractAsyncContextManager[Backend[AnthropicServer]]:
    """The Anthropic API, or a local :class:`AnthropicServer`."""
    server = AnthropicServer(respond=respond, fault_fn=fault_fn, latency=latency)
    return _backend("Anthropic", ("ANTHROPIC_API_KEY",), "ANTHROPIC_BASE_URL", server)


def gemini_backend(
    *,
    respond: Respond | None = None,
    fault_fn: FaultFn | None = None,
    latency: float = 0.0,
    min_cache_tokens: int = 1024,
) -> AbstractAsyncContextManager[Backend[GeminiServer]]:
    """The Gemini Developer API, or a local :class:`GeminiServer`.

    ``min_cache_tokens`` mirrors the real API, which refuses context caches smaller than
    1,024 tokens for the 2.5 Flash models.
    """
    server = GeminiServer(
        respond=respond, fault_fn=fault_fn, latency=latency, min_cache_tokens=min_cache_tokens
    )
    return _backend(
        "Gemini", ("GEMINI_API_KEY", "GOOGLE_API_KEY"), "GOOGLE_GEMINI_BASE_URL", server
    )
