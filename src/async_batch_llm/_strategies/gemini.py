"""Strategies that call an :class:`~async_batch_llm.core.protocols.LLMModel` (spec §5.3, D1)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast, overload

from async_batch_llm._providers.gemini import (
    GeminiCachedModel,
    GeminiModel,
    normalize_gemini_response,
)
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._strategies.batch_api import BatchLimits, BatchLine
from async_batch_llm._strategies.gemini_batch import (
    GEMINI_BATCH_LIMITS,
    GeminiBatchBackend,
    inline_request,
)
from async_batch_llm._types import LLMResponse, RetryState, TokenUsage, TOutput
from async_batch_llm.core.protocols import LLMModel, ManagedLLMModel
from async_batch_llm.strategies.errors import TokenTrackingError

if TYPE_CHECKING:
    from google import genai
    from google.genai import types as genai_types

__all__ = ["GeminiCachedStrategy", "GeminiStrategy"]


def _response_text(response: LLMResponse) -> str:
    return response.text


class GeminiStrategy(LLMCallStrategy[TOutput]):
    """Calls a model once per attempt and parses its response.

    Works with any :class:`~async_batch_llm.core.protocols.LLMModel`, not only Gemini ones. A
    :class:`~async_batch_llm.core.protocols.ManagedLLMModel` (such as
    :class:`~async_batch_llm.models.GeminiCachedModel`) is prepared and cleaned up with the
    strategy.

    Args:
        model: the model to call.
        response_parser: turns the model's :class:`LLMResponse` into the item's output. If it
            raises, the response's token usage is attached to the exception (``__dict__`` key
            ``_failed_token_usage``) and the exception propagates unchanged.
        temperature: sampling temperature sent with every attempt.

    In ``ProcessorConfig(mode="batch")`` the items go through Gemini batch jobs (inline
    requests) when ``model`` is a :class:`~async_batch_llm.models.GeminiModel`, whose
    ``google.genai`` client creates them; any other model is refused before anything is
    submitted.

    Attributes:
        model, response_parser, temperature: the constructor arguments.
        batch_limits: what one batch job may hold (see ``GEMINI_BATCH_LIMITS``).
        batch_poll_interval: seconds before a job's first status read, and the most between
            two reads.
    """

    batch_limits: BatchLimits = GEMINI_BATCH_LIMITS
    batch_poll_interval: tuple[float, float] = (5.0, 60.0)

    def __init__(
        self,
        model: LLMModel,
        response_parser: Callable[[LLMResponse], TOutput],
        *,
        temperature: float = 0.0,
    ) -> None:
        self.model = model
        self.response_parser = response_parser
        self.temperature = temperature

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, temperature={self.temperature!r})"

    async def prepare(self) -> None:
        """Prepare the model when it is a managed one (for example, create its cache)."""
        if isinstance(self.model, ManagedLLMModel):
            await self.model.prepare()

    async def execute(
        self,
        prompt: str,
        attempt: int,
        timeout: float,
        state: RetryState | None = None,
    ) -> tuple[TOutput, TokenUsage]:
        """Generate a response for ``prompt`` and parse it.

        Args:
            prompt: the work item's prompt.
            attempt: 1-based attempt number (not forwarded to the model).
            timeout: per-attempt limit in seconds, enforced by the processor.
            state: the item's retry state (not used).

        Returns:
            The parsed output and the response's token usage.

        Raises:
            Exception: whatever ``model.generate`` raises, unchanged; whatever the parser raises,
                with the token usage attached (or a ``TokenTrackingError`` chained from it when
                the exception object cannot take attributes).
        """
        response = await self.model.generate(prompt, temperature=self.temperature)
        return self._parsed(response)

    def _parsed(self, response: LLMResponse) -> tuple[TOutput, TokenUsage]:
        try:
            output = self.response_parser(response)
        except Exception as exc:
            usage = response.token_usage
            attributes: Any = getattr(exc, "__dict__", None)
            if not isinstance(attributes, dict):
                raise TokenTrackingError(str(exc), token_usage=usage) from exc
            attributes["_failed_token_usage"] = usage
            raise
        return output, response.token_usage

    async def cleanup(self) -> None:
        """Clean up the model when it is a managed one (a cached model keeps its cache)."""
        if isinstance(self.model, ManagedLLMModel):
            await self.model.cleanup()

    @property
    def batch_unavailable(self) -> str | None:
        """Why this strategy cannot run in batch mode, or ``None`` when it can."""
        if type(self.model) is GeminiModel:
            return None
        return (
            f"its model is a {type(self.model).__name__}; Gemini batch jobs need a GeminiModel "
            "(whose google.genai client creates them)"
        )

    def _batch_model(self) -> GeminiModel:
        reason = self.batch_unavailable
        if reason is not None:
            raise TypeError(f"{type(self).__name__} cannot run in batch mode: {reason}")
        return cast("GeminiModel", self.model)

    def batch_backend(self) -> GeminiBatchBackend:
        """Gemini batch jobs through the model's client, for the model's name."""
        model = self._batch_model()
        first, most = self.batch_poll_interval
        return GeminiBatchBackend(model.client, model.model_name, self.batch_limits, first, most)

    def batch_line(self, custom_id: str, prompt: Any) -> BatchLine:
        """The inline request of one item: ``execute``'s contents and config, keyed by id.

        Raises:
            TypeError: the prompt is not JSON data (for example SDK ``Part`` objects).
        """
        model = self._batch_model()
        config = model._request_config(self.temperature, None, None)
        return inline_request(custom_id, model.model_name, prompt, config)

    def batch_output(self, body: Mapping[str, Any]) -> tuple[TOutput, TokenUsage]:
        """Output and usage of one inline response, as ``execute`` returns them."""
        from google.genai import types as genai_types

        response = genai_types.GenerateContentResponse.model_validate(dict(body))
        return self._parsed(normalize_gemini_response(response))


class GeminiCachedStrategy(GeminiStrategy[TOutput]):
    """A :class:`GeminiStrategy` over a :class:`~async_batch_llm.models.GeminiCachedModel`.

    Share one instance across all items: the processor prepares it once (finding or creating
    the context cache) and every call reuses the cache. The cache outlives the processor so
    later runs can reuse it; call :meth:`delete_cache` to remove it.

    Args:
        model: Gemini model name, for example ``"gemini-2.5-flash"``.
        client: a ``google.genai.Client``.
        cached_content: the contents to cache (``google.genai.types.Content`` objects).
        response_parser: turns the :class:`LLMResponse` into the output; by default the
            response text.
        cache_ttl_seconds: lifetime of a new cache, in seconds.
        cache_renewal_buffer_seconds: renew when this many seconds (or fewer) remain.
        auto_renew: renew (or lazily create) the cache when it is about to expire.
        cache_tags: key/value tags a reused cache must carry.
        safety_settings: sent with every request when non-empty.
        temperature: sampling temperature.

    Raises:
        ImportError: google-genai is not installed.
        ValueError: ``cache_renewal_buffer_seconds >= cache_ttl_seconds``.
    """

    model: GeminiCachedModel

    @overload
    def __init__(
        self: GeminiCachedStrategy[str],
        model: str,
        client: genai.Client,
        cached_content: list[genai_types.Content],
        *,
        response_parser: None = None,
        cache_ttl_seconds: int = 3600,
        cache_renewal_buffer_seconds: int = 300,
        auto_renew: bool = True,
        cache_tags: dict[str, str] | None = None,
        safety_settings: list[dict[str, Any]] | None = None,
        temperature: float = 0.0,
    ) -> None: ...

    @overload
    def __init__(
        self,
        model: str,
        client: genai.Client,
        cached_content: list[genai_types.Content],
        *,
        response_parser: Callable[[LLMResponse], TOutput],
        cache_ttl_seconds: int = 3600,
        cache_renewal_buffer_seconds: int = 300,
        auto_renew: bool = True,
        cache_tags: dict[str, str] | None = None,
        safety_settings: list[dict[str, Any]] | None = None,
        temperature: float = 0.0,
    ) -> None: ...

    def __init__(
        self,
        model: str,
        client: genai.Client,
        cached_content: list[genai_types.Content],
        *,
        response_parser: Callable[[LLMResponse], Any] | None = None,
        cache_ttl_seconds: int = 3600,
        cache_renewal_buffer_seconds: int = 300,
        auto_renew: bool = True,
        cache_tags: dict[str, str] | None = None,
        safety_settings: list[dict[str, Any]] | None = None,
        temperature: float = 0.0,
    ) -> None:
        cached_model = GeminiCachedModel(
            model,
            client,
            cached_content,
            cache_ttl_seconds=cache_ttl_seconds,
            cache_renewal_buffer_seconds=cache_renewal_buffer_seconds,
            auto_renew=auto_renew,
            cache_tags=cache_tags,
            safety_settings=safety_settings,
        )
        # The overloads tie TOutput to the parser; without one it is ``str``, the text.
        parser = cast(
            "Callable[[LLMResponse], TOutput]",
            _response_text if response_parser is None else response_parser,
        )
        super().__init__(cached_model, parser, temperature=temperature)

    async def delete_cache(self) -> None:
        """Delete the context cache now (failures are logged, not raised)."""
        await self.model.delete_cache()
