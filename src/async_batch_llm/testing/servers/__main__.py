"""Serve one local provider emulator until interrupted, for trying the CLI offline.

``python -m async_batch_llm.testing.servers openai --port 8765`` prints the base URL to pass
as ``--base-url`` (``http://127.0.0.1:8765/v1``) and answers ``"echo: <prompt>"`` to every
request, with word-count token usage, until Ctrl-C. ``--batch-time-scale 3600`` runs the
batch jobs of the emulators an hour of simulated time a second (a job of
a few lines is done within a second instead of about 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

from async_batch_llm.testing.servers import (
    AnthropicServer,
    BatchTiming,
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
    parser.add_argument(
        "--batch-time-scale",
        type=_positive,
        default=1.0,
        metavar="X",
        help="simulated seconds of a batch job per second (default 1; 3600: an hour a second)",
    )
    return parser.parse_args(argv)


def _positive(value: str) -> float:
    import math

    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number")
    return number


def build_server(args: argparse.Namespace) -> ProviderServer:
    """The emulator the parsed command line asks for (not started)."""
    timing = BatchTiming(time_scale=args.batch_time_scale)
    if args.provider == "gemini":
        return GeminiServer(latency=args.latency, port=args.port, batch_timing=timing)
    if args.provider == "openai":
        return OpenAIServer(latency=args.latency, port=args.port, batch_timing=timing)
    return AnthropicServer(latency=args.latency, port=args.port, batch_timing=timing)


async def _serve(args: argparse.Namespace) -> None:
    server = build_server(args)
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
