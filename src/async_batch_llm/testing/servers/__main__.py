"""Serve one local provider emulator until interrupted, for trying the CLI offline.

``python -m async_batch_llm.testing.servers openai --port 8765`` prints the base URL to pass
as ``--base-url`` (``http://127.0.0.1:8765/v1``) and answers ``"echo: <prompt>"`` to every
request, with word-count token usage, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

from async_batch_llm.testing.servers import (
    AnthropicServer,
    GeminiServer,
    OpenAIServer,
    ProviderServer,
)

_SERVERS: dict[str, type[ProviderServer]] = {
    "openai": OpenAIServer,
    "anthropic": AnthropicServer,
    "gemini": GeminiServer,
}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m async_batch_llm.testing.servers",
        description="Serve a local provider emulator (loopback only) until Ctrl-C.",
    )
    parser.add_argument("provider", choices=sorted(_SERVERS))
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds each answer takes (default 0)"
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    server = _SERVERS[args.provider](latency=args.latency, port=args.port)
    async with server:
        print(server.base_url, flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator; returns 0 after Ctrl-C."""
    args = _parse(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
