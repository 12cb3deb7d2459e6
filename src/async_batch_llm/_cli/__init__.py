"""The ``async-batch-llm`` console script (``python -m async_batch_llm`` runs the same).

Needs the ``cli`` extra (click and rich); without it, :func:`main` says how to install it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

__all__ = ["INSTALL_HINT", "main"]

INSTALL_HINT = (
    "the async-batch-llm command needs the 'cli' extra (click and rich); install it with:\n"
    "    pip install 'async-batch-llm[cli]'"
)


def main(argv: Sequence[str] | None = None, prog_name: str = "async-batch-llm") -> int:
    """Run the command line; returns the exit code (0 ok, 1 some failed, 2 bad usage)."""
    if importlib.util.find_spec("click") is None or importlib.util.find_spec("rich") is None:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from async_batch_llm._cli.commands import build_cli

    try:
        build_cli().main(args=list(argv) if argv is not None else None, prog_name=prog_name)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
