"""A small HTTP/1.1 server built on :mod:`asyncio` streams.

Only what the provider SDKs need is implemented: keep-alive connections,
``Content-Length`` and ``chunked`` request bodies, ``gzip``/``deflate`` request
content encodings, ``Expect: 100-continue``, fixed-length responses and
chunked streaming responses (used for server-sent events).

The server tracks every connection task so that :meth:`HTTPServer.close` can
close the listening socket, abort every open connection (including ones whose
handler is deliberately hanging) and wait for all handler tasks to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import zlib
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "ClientConnection",
    "Disconnect",
    "HTTPRequest",
    "HTTPResponse",
    "HTTPServer",
    "HandlerResult",
]

_MAX_HEADER_BYTES = 1 << 20
_EXTRA_REASONS = {529: "Site Overloaded"}


@dataclass(frozen=True)
class HTTPRequest:
    """A parsed HTTP request.

    ``headers`` has lower-cased names; repeated headers are joined with ``", "``.
    ``path`` is percent-decoded and excludes the query string.
    """

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    http_version: str = "HTTP/1.1"

    @property
    def keep_alive(self) -> bool:
        """Whether the client allows the connection to be reused."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.http_version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass
class HTTPResponse:
    """A response to send; give either ``body`` or ``stream`` (sent chunked)."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json; charset=UTF-8"
    stream: AsyncIterable[bytes] | None = None


@dataclass(frozen=True)
class Disconnect:
    """Handler result: drop the connection without sending a response."""


class ClientConnection:
    """The connection a request arrived on, as seen by a handler."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def wait_for_disconnect(self) -> None:
        """Wait until the client closes the connection (any further bytes are discarded)."""
        try:
            while await self._reader.read(65536):
                pass
        except ConnectionError:
            pass


HandlerResult = HTTPResponse | Disconnect
Handler = Callable[[HTTPRequest, ClientConnection], Awaitable[HandlerResult]]


class _BadRequestError(Exception):
    pass


def reason_phrase(status: int) -> str:
    """Return the standard reason phrase for ``status``."""
    if status in _EXTRA_REASONS:
        return _EXTRA_REASONS[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class HTTPServer:
    """An HTTP/1.1 server on ``host`` that passes every request to ``handler``."""

    def __init__(self, handler: Handler, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self._host = host
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False

    @property
    def host(self) -> str:
        """The interface the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port; only valid after :meth:`start`."""
        if self._port is None:
            raise RuntimeError("server is not started")
        return self._port

    @property
    def open_connections(self) -> int:
        """Number of client connections currently open."""
        return len(self._writers)

    async def start(self) -> None:
        """Bind the listening socket."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._closing = False
        self._server = await asyncio.start_server(
            self._on_connection, self._host, self._requested_port, limit=_MAX_HEADER_BYTES
        )
        sockname = self._server.sockets[0].getsockname()
        self._port = int(sockname[1])

    async def close(self) -> None:
        """Stop listening, drop all connections and wait for every handler task."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if self._closing or task is None:
            writer.transport.abort()
            return
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # Only :meth:`close` cancels these tasks, and nothing awaits them but
            # ``close`` itself.  Finishing normally matters on Python 3.11, whose
            # ``start_server`` done-callback calls ``task.exception()`` and would
            # log a spurious traceback for a cancelled task.
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            if self._closing:
                writer.transport.abort()
            else:
                writer.close()
            # Also swallow a cancellation that arrives while closing (see above).
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self._closing:
            try:
                request = await _read_request(reader, writer)
            except _BadRequestError as exc:
                await _write_response(
                    writer,
                    HTTPResponse(400, str(exc).encode(), content_type="text/plain"),
                    keep_alive=False,
                )
                return
            if request is None:
                return
            result = await self._handler(request, ClientConnection(reader))
            if isinstance(result, Disconnect):
                writer.transport.abort()
                return
            keep_alive = request.keep_alive and not self._closing
            await _write_response(
                writer, result, keep_alive=keep_alive, head=request.method == "HEAD"
            )
            if not keep_alive:
                return


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> HTTPRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadRequestError("incomplete request head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise _BadRequestError("request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    while lines and not lines[0]:
        lines.pop(0)  # tolerate stray CRLFs between requests
    if not lines:
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequestError(f"malformed request line: {lines[0]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequestError(f"malformed header line: {line!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value

    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()

    body = await _read_body(reader, headers)
    body = _decode_content(body, headers.get("content-encoding", ""))
    split = urlsplit(target)
    return HTTPRequest(
        method=method.upper(),
        target=target,
        path=unquote(split.path),
        query=parse_qs(split.query, keep_blank_values=True),
        headers=headers,
        body=body,
        http_version=version,
    )


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    transfer_encoding = headers.get("transfer-encoding", "").lower()
    if "chunked" in transfer_encoding:
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size_text = size_line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise _BadRequestError("bad chunk size") from exc
            if size == 0:
                # Skip optional trailers up to the terminating empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length_text = headers.get("content-length")
    if length_text is None:
        return b""
    try:
        length = int(length_text)
    except ValueError as exc:
        raise _BadRequestError("bad content-length") from exc
    if length < 0:
        raise _BadRequestError("bad content-length")
    return await reader.readexactly(length)


def _decode_content(body: bytes, encoding: str) -> bytes:
    for coding in reversed([c.strip().lower() for c in encoding.split(",") if c.strip()]):
        if coding in ("gzip", "x-gzip"):
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            try:
                body = zlib.decompress(body)
            except zlib.error:
                body = zlib.decompress(body, -zlib.MAX_WBITS)
        elif coding != "identity":
            raise _BadRequestError(f"unsupported content-encoding: {coding}")
    return body


async def _write_response(
    writer: asyncio.StreamWriter, response: HTTPResponse, *, keep_alive: bool, head: bool = False
) -> None:
    if writer.is_closing():
        return
    lines = [f"HTTP/1.1 {response.status} {reason_phrase(response.status)}"]
    lines.append(f"date: {email.utils.formatdate(usegmt=True)}")
    lines.append(f"content-type: {response.content_type}")
    if response.stream is None:
        lines.append(f"content-length: {len(response.body)}")
    else:
        lines.append("transfer-encoding: chunked")
    lines.append(f"connection: {'keep-alive' if keep_alive else 'close'}")
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if head:
        await writer.drain()
        return
    if response.stream is None:
        writer.write(response.body)
        await writer.drain()
        return
    async for chunk in response.stream:
        if chunk:
            writer.write(f"{len(chunk):x}\r\n".encode("ascii") + chunk + b"\r\n")
            await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()
