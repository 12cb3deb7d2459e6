"""Reading the CLI's input: JSON Lines of requests, checked line by line, read lazily.

Two line formats are accepted:

- an OpenAI batch request line: ``{"custom_id": "r1", "method": "POST", "url":
  "/v1/chat/completions", "body": {"model": ..., "messages": [...], ...}}``;
- a short line: ``{"id": "r1", "prompt": "text"}`` (an integer ``id`` is taken as its decimal
  string; an optional ``"system"`` string becomes a system message; other keys are ignored).

Both become a :class:`Request`: the custom id, the chat messages and the generation parameters
(the ``body`` without ``model`` and ``messages``). Everything here is pure except
:func:`scan_input` and :func:`iter_requests`, which read the file one line at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_COMPLETIONS_URL",
    "InputFileError",
    "LineError",
    "Request",
    "ScanReport",
    "iter_requests",
    "parse_line",
    "scan_input",
]

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
_ROLES = frozenset({"system", "developer", "user", "assistant"})
_MAX_REPORTED = 20
"""Line errors kept for the report; the rest are only counted."""


class LineError(ValueError):
    """One input line is not a request; the message says what is wrong with it."""


class InputFileError(Exception):
    """The input file cannot be read at all (missing, a directory, unreadable, not UTF-8)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request of the input.

    Attributes:
        custom_id: the line's ``custom_id`` (or ``id``); the result's item id.
        messages: chat messages, each a dict with ``role`` and ``content``.
        params: generation parameters of the ``body`` (``temperature``, ``max_tokens``, ...).
        model: the ``body.model`` of the line, if it gave one (``--model`` is what is called).
    """

    custom_id: str
    messages: tuple[Mapping[str, Any], ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None

    def payload(self) -> dict[str, Any]:
        """The item's prompt as the processor sees (and fingerprints) it: plain JSON data."""
        return {"messages": [dict(m) for m in self.messages], "params": dict(self.params)}


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _check_messages(messages: object) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(messages, list) or not messages:
        raise LineError(f"body.messages must be a non-empty list, got {_type_name(messages)}")
    for index, message in enumerate(messages):
        where = f"body.messages[{index}]"
        if not isinstance(message, dict):
            raise LineError(f"{where} must be an object, got {_type_name(message)}")
        role = message.get("role")
        if role not in _ROLES:
            raise LineError(f"{where}.role must be one of {sorted(_ROLES)}, got {role!r}")
        content = message.get("content")
        if not isinstance(content, str | list):
            raise LineError(
                f"{where}.content must be a string or a list of parts, got {_type_name(content)}"
            )
    return tuple(messages)


def _batch_line(data: dict[str, Any]) -> Request:
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError(f"custom_id must be a non-empty string, got {custom_id!r}")
    method = data.get("method", "POST")
    if method != "POST":
        raise LineError(f"method must be 'POST', got {method!r}")
    url = data.get("url", CHAT_COMPLETIONS_URL)
    if url != CHAT_COMPLETIONS_URL:
        raise LineError(f"url must be {CHAT_COMPLETIONS_URL!r} (chat completions), got {url!r}")
    body = data.get("body")
    if not isinstance(body, dict):
        raise LineError(f"body must be an object, got {_type_name(body)}")
    messages = _check_messages(body.get("messages"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise LineError(f"body.model must be a string, got {_type_name(model)}")
    if body.get("stream"):
        raise LineError("body.stream is not supported: every reply is collected whole")
    params = {k: v for k, v in body.items() if k not in ("model", "messages", "stream")}
    return Request(custom_id, messages, params, model)


def _short_line(data: dict[str, Any]) -> Request:
    raw_id = data["id"]
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        raise LineError(f"id must be a string or an integer, got {_type_name(raw_id)}")
    custom_id = str(raw_id)
    if not custom_id:
        raise LineError("id must not be empty")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise LineError(f"prompt must be a non-empty string, got {prompt!r}")
    messages: list[dict[str, Any]] = []
    system = data.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise LineError(f"system must be a string, got {_type_name(system)}")
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return Request(custom_id, tuple(messages))


def parse_line(text: str) -> Request:
    """Parse one input line.

    Args:
        text: the line, without its line number (a trailing newline is fine).

    Returns:
        The request.

    Raises:
        LineError: the line is not JSON, not an object, or not one of the two formats; the
            message names the field and what was wrong.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise LineError(f"a line must be a JSON object, got {_type_name(data)}")
    if "custom_id" in data or "body" in data:
        return _batch_line(data)
    if "id" in data:
        return _short_line(data)
    raise LineError(
        "expected an OpenAI batch request line (custom_id, method, url, body) or "
        f'{{"id": ..., "prompt": ...}}; got the keys {sorted(data)}'
    )


def _id_key(custom_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=8).digest(), "big")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of every non-blank line, one at a time."""
    try:
        with path.open("r", encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if text.strip():
                    yield number, text
    except FileNotFoundError:
        raise InputFileError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise InputFileError(f"input {path} is a directory, not a JSON Lines file") from None
    except PermissionError:
        raise InputFileError(f"input file {path} is not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(f"input file {path} is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InputFileError(f"cannot read input file {path}: {exc.strerror or exc}") from None


@dataclass
class ScanReport:
    """What a first pass over the input found.

    Attributes:
        valid: lines that are requests (duplicates included).
        errors: ``(line_number, message)`` of the first malformed lines (at most 20).
        error_count: how many lines are malformed in all.
        duplicates: ``(custom_id, first_line, repeated_line)`` for the first repeated ids.
        models: every distinct ``body.model`` the lines named.
    """

    valid: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    error_count: int = 0
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)
    models: set[str] = field(default_factory=set)

    def add_error(self, line: int, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < _MAX_REPORTED:
            self.errors.append((line, message))


def scan_input(
    path: str | os.PathLike[str], check: Callable[[Request], None] | None = None
) -> ScanReport:
    """Read the whole input once, checking every line, without keeping the requests.

    To find repeated custom ids it keeps one small integer (a 64-bit hash of the id) per line,
    about 70 bytes each; ids whose hashes repeat are compared exactly in a second pass, which
    also finds their line numbers.

    Args:
        path: the input file.
        check: called with every valid request; a :class:`LineError` it raises marks the line
            malformed (used for provider-specific checks).

    Raises:
        InputFileError: the file cannot be read.
    """
    source = Path(os.fspath(path))
    report = ScanReport()
    seen: set[int] = set()
    suspects: set[int] = set()
    for number, text in _lines(source):
        try:
            request = _checked(text, check)
        except LineError as exc:
            report.add_error(number, str(exc))
            continue
        report.valid += 1
        if request.model is not None and len(report.models) < _MAX_REPORTED:
            report.models.add(request.model)
        key = _id_key(request.custom_id)
        if key in seen:
            suspects.add(key)
        else:
            seen.add(key)
    if suspects:
        report.duplicates = _confirm_duplicates(source, suspects, check)
    return report


def _checked(text: str, check: Callable[[Request], None] | None) -> Request:
    request = parse_line(text)
    if check is not None:
        check(request)
    return request


def _confirm_duplicates(
    path: Path, suspects: set[int], check: Callable[[Request], None] | None
) -> list[tuple[str, int, int]]:
    first: dict[str, int] = {}
    found: list[tuple[str, int, int]] = []
    for number, text in _lines(path):
        try:
            custom_id = _checked(text, check).custom_id
        except LineError:
            continue
        if _id_key(custom_id) not in suspects:
            continue
        seen = first.setdefault(custom_id, number)
        if seen != number and len(found) < _MAX_REPORTED:
            found.append((custom_id, seen, number))
    return found


def iter_requests(
    path: str | os.PathLike[str], check: Callable[[Request], None] | None = None
) -> Iterator[Request]:
    """Yield the requests of the input in file order, skipping malformed lines.

    Call :func:`scan_input` first (with the same ``check``) to report the malformed lines;
    this pass only reads.

    Raises:
        InputFileError: the file cannot be read.
    """
    for _, text in _lines(Path(os.fspath(path))):
        try:
            request = _checked(text, check)
        except LineError:
            continue
        yield request
