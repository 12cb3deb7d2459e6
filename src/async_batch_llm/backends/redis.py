"""A quota shared through Redis: :class:`RedisQuotaBackend` (extra ``redis``).

Every process (or host) whose processor points at the same Redis and namespace shares the
request/token buckets of every quota scope and one rate-limit cooldown. Each operation is one
Lua script, run atomically on Redis's clock: one round trip per attempt to admit it, one to
settle it.

What is guaranteed, and what is not:

- Together, the processes never take more than the buckets allow (the same pacing as one
  process: a per-minute limit refills at limit/60 per second, bursts of ``quota_burst_seconds``).
- Within one process, callers are served in FIFO order (the gate's own line). Across processes,
  fairness is best effort: the process whose head caller retries first after a refill wins.
- A reservation whose process died is never settled: what it took stays taken (the buckets
  refill as usual) and its record expires after ``reservation_ttl``. Nothing leaks forever.
- A connection lost mid-run (Redis restarting) is retried with backoff for up to
  ``reconnect_timeout`` seconds; then the attempt fails with :class:`QuotaBackendError`. A
  reservation is never counted twice: admission is idempotent per reservation id, a settlement
  applies at most once. Redis without persistence forgets every bucket on restart: they start
  full again, and settlements of reservations granted before the restart are dropped.
- A Redis unreachable, or refusing the password, when a run starts fails the run at once with
  :class:`QuotaBackendError` naming the URL (never its password).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from async_batch_llm._internal import redis_scripts
from async_batch_llm._internal.quota_backend import BucketSpec, CooldownTurn, QuotaBackendError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisQuotaBackend"]

logger = logging.getLogger("async_batch_llm.backends.redis")

_SCHEMES = ("redis", "rediss", "unix")
_BUCKET_TTL = 3600.0


def _safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class RedisQuotaBackend:
    """Quota buckets and the rate-limit cooldown kept in Redis, shared by every process.

    Args:
        url: the Redis URL (``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for
            TLS, ``unix://``). Not contacted until a run starts.
        namespace: prefix of every key; processes share a quota when they share the URL and
            the namespace.
        reservation_ttl: seconds an unsettled reservation is kept (a crashed process's records
            go away after this). Longer than your longest attempt.
        reconnect_timeout: seconds to keep retrying a lost connection before failing.
        socket_timeout: seconds to wait for one Redis answer.

    Raises:
        ValueError: a URL without a redis/rediss/unix scheme, an empty namespace or a bad
            number of seconds.
        ImportError: the ``redis`` package is missing (``pip install 'async-batch-llm[redis]'``).
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "async-batch-llm",
        reservation_ttl: float = 900.0,
        reconnect_timeout: float = 30.0,
        socket_timeout: float = 5.0,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in _SCHEMES:
            raise ValueError(
                f"url must start with one of {', '.join(s + '://' for s in _SCHEMES)}, "
                f"got {_safe_url(url)!r}"
            )
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:  # pragma: no cover - the extra is installed in CI
            raise ImportError(
                "RedisQuotaBackend needs the redis package: pip install 'async-batch-llm[redis]'"
            ) from exc
        self._url = url
        self.url = _safe_url(url)
        """The URL without its password (for messages)."""
        self.namespace = namespace
        self._ttl_ms = int(_check_seconds("reservation_ttl", reservation_ttl) * 1000)
        self._reconnect = _check_seconds("reconnect_timeout", reconnect_timeout)
        self._socket_timeout = _check_seconds("socket_timeout", socket_timeout)
        self._client: Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reached = False
        self._shas: dict[str, str] = {}
        self._prefix = quote(namespace, safe="")

    # -- keys --------------------------------------------------------------------------------

    def _scope_key(self, scope: str) -> str:
        return f"{self._prefix}:q:{quote(scope, safe='')}"

    def _reservation_key(self, scope: str, reservation_id: str) -> str:
        return f"{self._prefix}:r:{quote(scope, safe='')}:{quote(reservation_id, safe='')}"

    @property
    def _cooldown_key(self) -> str:
        return f"{self._prefix}:cooldown"

    # -- connection --------------------------------------------------------------------------

    def _redis(self) -> Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            from redis.asyncio import Redis

            self._client = Redis.from_url(
                self._url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._socket_timeout,
                decode_responses=True,
                retry_on_timeout=False,
            )
            self._loop = loop
        return self._client

    async def _eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` (by its SHA, loading it when Redis does not know it), with retries."""
        from redis.exceptions import (
            AuthenticationError,
            BusyLoadingError,
            NoScriptError,
            ResponseError,
        )
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        deadline: float | None = None
        delay = 0.05
        while True:
            client = self._redis()
            try:
                sha = self._shas.get(script)
                if sha is None:
                    sha = self._shas[script] = await client.script_load(script)
                try:
                    result = await client.evalsha(sha, len(keys), *keys, *args)
                except NoScriptError:  # Redis restarted (or SCRIPT FLUSH): load it again
                    self._shas[script] = await client.script_load(script)
                    result = await client.evalsha(self._shas[script], len(keys), *keys, *args)
            except AuthenticationError as exc:
                raise QuotaBackendError(
                    f"Redis at {self.url} refused the credentials: {exc}"
                ) from None
            except ResponseError as exc:
                text = str(exc)
                if text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
                    raise QuotaBackendError(
                        f"Redis at {self.url} refused the credentials: {text}"
                    ) from None
                raise QuotaBackendError(f"Redis at {self.url} failed: {text}") from None
            except (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError) as exc:
                if not self._reached:
                    raise QuotaBackendError(f"cannot reach Redis at {self.url}: {exc}") from None
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._reconnect
                    logger.warning(
                        "lost the connection to Redis at %s (%s); retrying for up to %.0fs",
                        self.url,
                        exc,
                        self._reconnect,
                    )
                if now >= deadline:
                    raise QuotaBackendError(
                        f"Redis at {self.url} unreachable for {self._reconnect:g}s: {exc}"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            if deadline is not None:
                logger.warning("reconnected to Redis at %s", self.url)
            self._reached = True
            return result

    async def ping(self) -> None:
        """Check that Redis answers and accepts the credentials (loads the scripts)."""
        self._reached = False
        await self._eval(redis_scripts.RESET_CONSECUTIVE, [f"{self._prefix}:ping"], [])

    async def aclose(self) -> None:
        """Close this event loop's connections; the next operation reconnects."""
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await client.aclose()

    # -- quota -------------------------------------------------------------------------------

    async def acquire(
        self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]
    ) -> float:
        args: list[Any] = [self._ttl_ms, int(_BUCKET_TTL * 1000)]
        for spec in buckets:
            args += [spec.dimension, repr(spec.amount), repr(spec.rate)]
            args += [repr(spec.capacity), repr(spec.reserve)]
        keys = [
            self._scope_key(scope),
            self._reservation_key(scope, reservation_id),
            self._cooldown_key,
        ]
        return float(await self._eval(redis_scripts.ACQUIRE, keys, args))

    async def settle(self, scope: str, reservation_id: str, buckets: Sequence[BucketSpec]) -> bool:
        args: list[Any] = [int(_BUCKET_TTL * 1000)]
        for spec in buckets:
            args += [spec.dimension, repr(spec.amount), repr(spec.rate), repr(spec.capacity)]
        keys = [self._scope_key(scope), self._reservation_key(scope, reservation_id)]
        return bool(int(await self._eval(redis_scripts.SETTLE, keys, args)))

    # -- cooldown ----------------------------------------------------------------------------

    @staticmethod
    def _cooldown_ttl_ms(seconds: float) -> int:
        return int((max(seconds, 0.0) + _BUCKET_TTL) * 1000)

    async def begin_cooldown(self, floor: float) -> CooldownTurn:
        floor = max(0.0, float(floor))
        leader, consecutive, remaining = await self._eval(
            redis_scripts.BEGIN_COOLDOWN,
            [self._cooldown_key],
            [repr(floor), self._cooldown_ttl_ms(floor)],
        )
        return CooldownTurn(bool(int(leader)), int(consecutive), max(0.0, float(remaining)))

    async def extend_cooldown(self, seconds: float) -> float:
        seconds = max(0.0, float(seconds))
        remaining = await self._eval(
            redis_scripts.EXTEND_COOLDOWN,
            [self._cooldown_key],
            [repr(seconds), self._cooldown_ttl_ms(seconds)],
        )
        return max(0.0, float(remaining))

    async def reset_consecutive(self) -> None:
        await self._eval(redis_scripts.RESET_CONSECUTIVE, [self._cooldown_key], [])

    def __repr__(self) -> str:
        return f"RedisQuotaBackend({self.url!r}, namespace={self.namespace!r})"
