"""Google Gemini models backed by the ``google-genai`` SDK.

This is the only module that imports ``google-genai``, and it does so lazily: importing it (and
therefore ``import async_batch_llm``) works without the SDK installed. Constructing a model
without it raises :class:`ImportError` naming the extra to install.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import pydantic

from async_batch_llm._types import LLMResponse

if TYPE_CHECKING:
    from google import genai
    from google.genai import errors as genai_errors
    from google.genai import types as genai_types

__all__ = [
    "GeminiCachedModel",
    "GeminiModel",
    "genai_installed",
    "loaded_genai_errors",
    "normalize_gemini_response",
]

logger = logging.getLogger(__name__)

_INSTALL_HINT = "pip install 'async-batch-llm[gemini]'"
_EMPTY_RESPONSE_MESSAGE = "Empty response from model (likely blocked by safety filter)."
_SHORT_TTL_WARNING_FLOOR = 10
_SHORT_TTL_WARNING_CEILING = 60


def _require_genai(class_name: str) -> None:
    """Import google-genai or explain how to install it.

    Raises:
        ImportError: google-genai is not installed.
    """
    try:
        import google.genai  # noqa: F401 - imported for its availability only
    except ImportError as exc:
        raise ImportError(
            f"google-genai is required to use {class_name}. Install it with: {_INSTALL_HINT}"
        ) from exc


@cache
def genai_installed() -> bool:
    """Whether google-genai can be imported, answered without importing it."""
    try:
        return importlib.util.find_spec("google.genai") is not None
    except (ImportError, ValueError):
        return False


def loaded_genai_errors() -> tuple[type[genai_errors.ClientError], type[genai_errors.ServerError]]:
    """The SDK's ``ClientError`` and ``ServerError`` classes if the SDK is already loaded.

    An instance of these classes can only exist once ``google.genai.errors`` has been imported,
    so looking it up in :data:`sys.modules` is exact and never pays for a slow import.

    Returns:
        The two classes, or an empty tuple when the module is not loaded.
    """
    module = sys.modules.get("google.genai.errors")
    if module is None:
        return cast("tuple[Any, Any]", ())
    return module.ClientError, module.ServerError


def _as_int(value: object) -> int:
    # Missing counts arrive as None; anything that is not a real int counts as nothing.
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _response_metadata(response: genai_types.GenerateContentResponse) -> dict[str, Any] | None:
    """Safety ratings and finish reason of the first candidate, as far as they can be read."""
    metadata: dict[str, Any] = {}
    try:
        candidates = response.candidates
        if candidates:
            candidate = candidates[0]
            ratings = candidate.safety_ratings
            if ratings:
                metadata["safety_ratings"] = {
                    str(rating.category): str(rating.probability) for rating in ratings
                }
            if candidate.finish_reason:
                metadata["finish_reason"] = str(candidate.finish_reason)
    except Exception:
        logger.warning("Could not read Gemini response metadata", exc_info=True)
    return metadata or None


def normalize_gemini_response(response: genai_types.GenerateContentResponse) -> LLMResponse:
    """Turn a ``generate_content`` response into an :class:`LLMResponse`.

    Args:
        response: the SDK response (anything with the same attributes works).

    Returns:
        Text, token counts (missing counts are 0), ``metadata`` with ``safety_ratings`` and
        ``finish_reason`` when present (else ``None``) and ``raw`` set to ``response``.

    Raises:
        ValueError: the response has no text (for example a safety block). The tokens the call
            cost are attached under ``_failed_token_usage`` so the processor still counts them.
    """
    usage = response.usage_metadata
    input_tokens = _as_int(getattr(usage, "prompt_token_count", None))
    output_tokens = _as_int(getattr(usage, "candidates_token_count", None))
    total_tokens = _as_int(getattr(usage, "total_token_count", None))
    cached_tokens = _as_int(getattr(usage, "cached_content_token_count", None))
    metadata = _response_metadata(response)

    text = response.text
    if text is None:
        message = _EMPTY_RESPONSE_MESSAGE
        if metadata and "safety_ratings" in metadata:
            message += f" Safety ratings: {metadata['safety_ratings']}"
        error = ValueError(message)
        spent = LLMResponse("", input_tokens, output_tokens, total_tokens, cached_tokens)
        error.__dict__["_failed_token_usage"] = spent.token_usage
        raise error

    return LLMResponse(
        text=text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens,
        cached_input_tokens=cached_tokens,
        metadata=metadata,
        raw=response,
    )


async def _generate(
    client: genai.Client, model: str, prompt: str | list[Any], config: dict[str, Any]
) -> LLMResponse:
    response = await client.aio.models.generate_content(
        model=model,
        contents=prompt,
        # A plain dict is what the SDK documents; its TypedDict view is too narrow for extras.
        config=cast("genai_types.GenerateContentConfigDict", config),
    )
    return normalize_gemini_response(response)


class GeminiModel:
    """A Gemini model called through ``client.aio.models.generate_content``.

    Satisfies :class:`~async_batch_llm.core.protocols.LLMModel`. The constructor does no I/O.

    Args:
        model: model name, for example ``"gemini-2.5-flash"``.
        client: a ``google.genai.Client``.
        safety_settings: sent with every request when non-empty.
        system_instruction: default system instruction for every request.

    Raises:
        ImportError: google-genai is not installed.
    """

    def __init__(
        self,
        model: str,
        client: genai.Client,
        *,
        safety_settings: list[dict[str, Any]] | None = None,
        system_instruction: str | None = None,
    ) -> None:
        _require_genai(type(self).__name__)
        self._model = model
        self._client = client
        self._safety_settings = safety_settings
        self._system_instruction = system_instruction

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self._model!r})"

    @property
    def model_name(self) -> str:
        """The model name requests go to (what ``cost_function`` prices)."""
        return self._model

    @property
    def client(self) -> genai.Client:
        """The ``google.genai.Client`` requests go through."""
        return self._client

    def _request_config(
        self, temperature: float, system_instruction: str | None, config: dict[str, Any] | None
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"temperature": temperature}
        instruction = system_instruction if system_instruction else self._system_instruction
        if instruction is not None:
            request["system_instruction"] = instruction
        if self._safety_settings:
            request["safety_settings"] = self._safety_settings
        if config:
            request.update(config)
        return request

    async def generate(
        self,
        prompt: str | list[Any],
        *,
        temperature: float = 0.0,
        system_instruction: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> LLMResponse:
        """Generate one response.

        Args:
            prompt: text, or a list of content parts for multimodal input.
            temperature: sampling temperature.
            system_instruction: overrides the constructor's instruction for this call when truthy.
            config: extra request config entries, merged last (they win over everything).

        Returns:
            The normalised response.

        Raises:
            ValueError: the response has no text (likely a safety block).
            google.genai.errors.APIError: the API call failed (propagated unchanged).
        """
        request = self._request_config(temperature, system_instruction, config)
        return await _generate(self._client, self._model, prompt, request)


def _is_missing_cache_error(exc: BaseException) -> bool:
    """Whether the API said the named cache does not exist (the real API answers 403
    ``CachedContent not found (or permission denied)``; 404 is accepted too)."""
    code = getattr(exc, "code", None)
    return code in (403, 404) and "cachedcontent not found" in str(exc).lower()


class GeminiCachedModel:
    """A Gemini model whose requests use an explicit context cache holding ``cached_content``.

    Satisfies :class:`~async_batch_llm.core.protocols.ManagedLLMModel`. :meth:`prepare` finds a
    reusable cache for this model (matching ``cache_tags``) or creates one; with ``auto_renew``
    the cache is replaced once its remaining lifetime falls to ``cache_renewal_buffer_seconds``.
    Concurrent callers share one lookup/creation (an internal lock). :meth:`cleanup` never
    deletes the cache, so later runs can reuse it; :meth:`delete_cache` does.

    The cache age is measured from a local wall-clock timestamp read through the ``_clock``
    attribute (``time.time`` by default). Tests may assign another zero-argument callable that
    returns epoch seconds to it after construction.

    Args:
        model: model name, for example ``"gemini-2.5-flash"``.
        client: a ``google.genai.Client``.
        cached_content: the contents to cache (``google.genai.types.Content`` objects).
        cache_ttl_seconds: lifetime requested for a new cache, in seconds.
        cache_renewal_buffer_seconds: renew when this many seconds (or fewer) remain.
        auto_renew: renew (or lazily create) the cache from :meth:`generate`.
        cache_tags: key/value tags a reused cache must carry. google-genai up to at least 3.6
            cannot store them; the cache is then created without them (with a warning).
        safety_settings: sent with every request when non-empty.

    Raises:
        ImportError: google-genai is not installed.
        ValueError: ``cache_renewal_buffer_seconds >= cache_ttl_seconds``.

    Warns:
        UserWarning: ``10 <= cache_ttl_seconds < 60`` (too short to pay off; 300 s is a sensible
            minimum).
    """

    def __init__(
        self,
        model: str,
        client: genai.Client,
        cached_content: list[genai_types.Content],
        *,
        cache_ttl_seconds: int = 3600,
        cache_renewal_buffer_seconds: int = 300,
        auto_renew: bool = True,
        cache_tags: dict[str, str] | None = None,
        safety_settings: list[dict[str, Any]] | None = None,
    ) -> None:
        _require_genai(type(self).__name__)
        if cache_renewal_buffer_seconds >= cache_ttl_seconds:
            raise ValueError(
                "cache_renewal_buffer_seconds must be less than cache_ttl_seconds, got "
                f"cache_renewal_buffer_seconds={cache_renewal_buffer_seconds} and "
                f"cache_ttl_seconds={cache_ttl_seconds}"
            )
        if _SHORT_TTL_WARNING_FLOOR <= cache_ttl_seconds < _SHORT_TTL_WARNING_CEILING:
            warnings.warn(
                f"cache_ttl_seconds={cache_ttl_seconds} is less than 60 seconds; a cache this "
                "short-lived rarely pays for its creation (300 seconds is a sensible minimum)",
                UserWarning,
                stacklevel=2,
            )
        self._model = model
        self._client = client
        self._cached_content = cached_content
        self._ttl = cache_ttl_seconds
        self._renewal_buffer = cache_renewal_buffer_seconds
        self._auto_renew = auto_renew
        self._cache_tags: dict[str, str] = dict(cache_tags) if cache_tags else {}
        self._safety_settings = safety_settings
        self._clock: Callable[[], float] = time.time
        self._lock = asyncio.Lock()
        self._cache_name: str | None = None
        self._created_at: float | None = None
        self._prepared = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self._model!r}, cache_name={self._cache_name!r}, "
            f"prepared={self._prepared})"
        )

    @property
    def cache_name(self) -> str | None:
        """Name of the cache in use (``cachedContents/...``), ``None`` before one exists."""
        return self._cache_name

    def _lifetime_over(self, created_at: float | None) -> bool:
        """The expiry rule for a cache created at ``created_at`` (``None``: no cache)."""
        if created_at is None:
            return True
        remaining = self._ttl - (self._clock() - created_at)
        return remaining <= self._renewal_buffer

    def _is_expired(self) -> bool:
        return self._cache_name is None or self._lifetime_over(self._created_at)

    def _forget_cache(self) -> None:
        self._cache_name = None
        self._created_at = None

    def _tags_match(self, cache_entry: genai_types.CachedContent) -> bool:
        if not self._cache_tags:
            return True
        entry_tags: Mapping[str, object] = getattr(cache_entry, "metadata", None) or {}
        return all(
            key in entry_tags and entry_tags[key] == value
            for key, value in self._cache_tags.items()
        )

    async def _find_existing(self, *, renewing: bool) -> bool:
        """Adopt the first listed cache for this model whose tags match.

        When renewing, caches that would count as expired are skipped: adopting the cache being
        replaced (it is still listed until the server drops it) would renew nothing.

        Returns:
            Whether a cache was adopted.
        """
        try:
            pager = await self._client.aio.caches.list()
            async for entry in pager:
                if not entry.model or not entry.model.endswith(self._model):
                    continue
                if not entry.name or not self._tags_match(entry):
                    continue
                if entry.create_time is not None:
                    created_at = entry.create_time.timestamp()
                else:
                    created_at = self._clock() - self._ttl
                if renewing and self._lifetime_over(created_at):
                    continue
                self._cache_name = entry.name
                self._created_at = created_at
                logger.info("Reusing Gemini cache %s for model %s", entry.name, self._model)
                return True
        except Exception:
            logger.warning(
                "Listing Gemini caches failed; creating a new cache instead", exc_info=True
            )
        return False

    def _create_config(self) -> genai_types.CreateCachedContentConfig:
        from google.genai import types

        ttl = f"{self._ttl}s"
        if self._cache_tags:
            tagged: dict[str, Any] = {"metadata": dict(self._cache_tags)}
            try:
                return types.CreateCachedContentConfig(
                    contents=self._cached_content, ttl=ttl, **tagged
                )
            except (pydantic.ValidationError, TypeError):
                logger.warning(
                    "This google-genai version cannot store cache_tags on a cache; creating "
                    "the cache without them (it will not be found again by tag)"
                )
        return types.CreateCachedContentConfig(contents=self._cached_content, ttl=ttl)

    async def _create(self) -> None:
        created = await self._client.aio.caches.create(
            model=self._model, config=self._create_config()
        )
        if not created.name:
            raise RuntimeError(f"Gemini returned a cache without a name: {created!r}")
        self._cache_name = created.name
        self._created_at = self._clock()
        logger.info("Created Gemini cache %s for model %s", created.name, self._model)

    async def _find_or_create(self, *, renewing: bool = False) -> None:
        if not await self._find_existing(renewing=renewing):
            await self._create()

    async def prepare(self) -> None:
        """Find a reusable cache or create one. Idempotent; concurrent calls do one lookup.

        Raises:
            google.genai.errors.APIError: cache creation failed.
        """
        async with self._lock:
            if self._prepared:
                return
            await self._find_or_create()
            self._prepared = True

    async def generate(
        self,
        prompt: str | list[Any],
        *,
        temperature: float = 0.0,
        system_instruction: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> LLMResponse:
        """Generate one response using the cached context.

        Args:
            prompt: text, or a list of content parts for multimodal input.
            temperature: sampling temperature.
            system_instruction: must be ``None``; instructions are fixed inside the cache.
            config: extra request config entries, merged last.

        Returns:
            The normalised response; ``cached_input_tokens`` counts the cached context.

        Raises:
            ValueError: ``system_instruction`` was given, or the response has no text.
            RuntimeError: no cache exists (``auto_renew=False`` and :meth:`prepare` not run).
            google.genai.errors.APIError: the API call failed (propagated unchanged).
        """
        if system_instruction is not None:
            raise ValueError(
                "system_instruction cannot be overridden on GeminiCachedModel: the system "
                f"instruction is fixed inside the cache, got {system_instruction!r}"
            )
        if self._auto_renew and self._is_expired():
            async with self._lock:
                if self._is_expired():
                    renewing = self._cache_name is not None
                    self._forget_cache()
                    await self._find_or_create(renewing=renewing)
                    self._prepared = True
        cache_name = self._cache_name
        if cache_name is None:
            raise RuntimeError(
                "GeminiCachedModel has no cache: call prepare() before generate() "
                "(or construct it with auto_renew=True)"
            )
        request: dict[str, Any] = {"cached_content": cache_name, "temperature": temperature}
        if self._safety_settings:
            request["safety_settings"] = self._safety_settings
        if config:
            request.update(config)
        try:
            return await _generate(self._client, self._model, prompt, request)
        except Exception as exc:
            if self._auto_renew and _is_missing_cache_error(exc):
                # The cache vanished server-side (deleted elsewhere, or expired early): forget
                # it so the next attempt finds or creates a live one instead of failing again.
                async with self._lock:
                    if self._cache_name == cache_name:
                        logger.warning(
                            "Gemini cache %s no longer exists; the next call creates a new one",
                            cache_name,
                        )
                        self._forget_cache()
            raise

    async def cleanup(self) -> None:
        """Leave the cache to expire on its own so later runs can reuse it (logs only)."""
        if self._cache_name is not None:
            logger.debug(
                "Leaving Gemini cache %s to expire; call delete_cache() to remove it now",
                self._cache_name,
            )

    async def delete_cache(self) -> None:
        """Delete the cache in use, if any; failures are logged, never raised.

        After a successful delete the model is unprepared: the next :meth:`prepare` (or
        auto-renewing :meth:`generate`) finds or creates a cache again.
        """
        async with self._lock:
            name = self._cache_name
            if name is None:
                return
            try:
                await self._client.aio.caches.delete(name=name)
            except Exception:
                logger.warning("Deleting Gemini cache %s failed", name, exc_info=True)
                return
            self._forget_cache()
            self._prepared = False
            logger.info("Deleted Gemini cache %s", name)
