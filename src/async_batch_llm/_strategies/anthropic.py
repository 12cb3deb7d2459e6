"""``AnthropicStrategy``: one Messages API call per attempt through ``anthropic.AsyncAnthropic``.

**Errors are converted at this boundary**, as in
:mod:`async_batch_llm._strategies.openai` (read its docstring for the reasons and the table):
every ``anthropic.APIError`` becomes one of the library's
:class:`~async_batch_llm._strategies._http_api.ProviderAPIError` classes, raised ``from`` the
SDK error, so that the default classifier decides right (a 401 is not retried, a 429 is a rate
limit, a 529 ``overloaded_error`` is retried) and
:class:`~async_batch_llm.classifiers.AnthropicErrorClassifier` still sees the SDK error as the
``__cause__``. A 402 ``billing_error`` (the credit balance is too low) is treated like OpenAI's
``insufficient_quota``: category ``insufficient_quota``, never retried.

Create the client with ``max_retries=0`` so that the processor does all the retrying.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from pydantic import BaseModel

from async_batch_llm._internal.rate_limit_headers import report_rate_limit_headers
from async_batch_llm._strategies._http_api import (
    ProviderAPIError,
    ProviderConnectionError,
    ProviderTimeoutError,
    check_accepted,
    check_async_create,
    check_model,
    check_output_type,
    check_request_params,
    error_for_status,
    jsonable,
    make_error,
    messages_from,
    output_type_name,
    parse_response,
    placeholder_reply,
    schema_digest,
    tool_name,
    unreadable_error,
    validate_reply,
)
from async_batch_llm._strategies.anthropic_batch import (
    ANTHROPIC_BATCH_LIMITS,
    AnthropicBatchBackend,
)
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._strategies.batch_api import BatchLimits, BatchLine
from async_batch_llm._strategies.openai_batch import line_size
from async_batch_llm._types import RetryState, TokenUsage, TOutput

if TYPE_CHECKING:
    import anthropic
    from anthropic.types import Message, Usage

__all__ = ["AnthropicStrategy"]

_INSTALL_HINT = (
    "anthropic is required for AnthropicStrategy; "
    "install it with: pip install 'async-batch-llm[anthropic]'"
)
_PROVIDER = "anthropic"
_LABEL = "Anthropic"
_OUT_OF_CREDIT = "billing_error"

_M = TypeVar("_M", bound=BaseModel)

Messages = Sequence[Mapping[str, Any]]
"""Messages as the API takes them (``[{"role": "user", "content": "..."}]``)."""


class AnthropicStrategy(LLMCallStrategy[TOutput]):
    """Call the Messages API once per attempt; return the text or a validated model.

    Share one instance across items: it holds no per-item state.

    Args:
        client: an ``anthropic.AsyncAnthropic``; create it with ``max_retries=0`` so that the
            processor does all the retrying.
        model: the model name, for example ``"claude-sonnet-4-5"``.
        max_tokens: the most output tokens one reply may have (required by the API).
        output_type: a pydantic model to parse the reply into. The request then offers one
            tool whose ``input_schema`` is the model's JSON schema and forces the model to call
            it (``tool_choice`` of type ``tool``); the tool's input is validated with
            ``model_validate`` (a reply without that tool call has its text validated as JSON).
            A reply that does not validate raises pydantic's ``ValidationError`` (retried at
            once by the built-in classifiers) carrying the tokens it cost.
        **request_params: sent with every request (``system``, ``stop_sequences``,
            ``metadata``, ``extra_headers``, ``extra_body``, ... : whatever the installed SDK's
            ``messages.create`` takes).

    Raises:
        ImportError: the ``anthropic`` package is not installed.
        TypeError: ``client`` is not an async Anthropic client, ``model`` is not a string,
            ``max_tokens`` is not an int, ``output_type`` is not a pydantic model class, or
            the SDK's ``messages.create`` takes no parameter of one of ``request_params``.
        ValueError: ``model`` is empty, ``max_tokens < 1``, or ``request_params`` holds a
            parameter the strategy sets itself (``messages``, ``timeout``, ``stream``; with an
            ``output_type`` also ``tools`` and ``tool_choice``).

    Attributes:
        client, model, max_tokens, output_type, request_params: the constructor arguments.
    """

    @overload
    def __init__(
        self: AnthropicStrategy[str],
        client: anthropic.AsyncAnthropic,
        model: str,
        *,
        max_tokens: int = 1024,
        output_type: None = None,
        **request_params: Any,
    ) -> None: ...

    @overload
    def __init__(
        self: AnthropicStrategy[_M],
        client: anthropic.AsyncAnthropic,
        model: str,
        *,
        max_tokens: int = 1024,
        output_type: type[_M],
        **request_params: Any,
    ) -> None: ...

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        model: str,
        *,
        max_tokens: int = 1024,
        output_type: type[BaseModel] | None = None,
        **request_params: Any,
    ) -> None:
        if importlib.util.find_spec("anthropic") is None:
            raise ImportError(_INSTALL_HINT)
        create = check_async_create(
            client, ("messages", "with_raw_response", "create"), "anthropic.AsyncAnthropic"
        )
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise TypeError(f"max_tokens must be an int, got {type(max_tokens).__name__}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.client = client
        self.model = check_model(model)
        self.max_tokens = max_tokens
        self.output_type = check_output_type(output_type)
        reserved = {
            "messages": "the prompt becomes the messages",
            "timeout": "the processor's per-attempt timeout",
            "stream": "the whole reply is needed",
        }
        if self.output_type is not None:
            reserved["tools"] = "output_type is returned through a forced tool"
            reserved["tool_choice"] = "output_type is returned through a forced tool"
        self.request_params = check_request_params(type(self).__name__, request_params, reserved)
        check_accepted(type(self).__name__, create, self.request_params)

    @property
    def quota_scope(self) -> str:
        """``"anthropic:<model>"``: items calling the same model share its rate limits."""
        return f"{_PROVIDER}:{self.model}"

    def fingerprint(self) -> Mapping[str, object]:
        """What decides the answer besides the prompt: provider, model, output type, parameters.

        Returns:
            ``provider``, ``model``, ``max_tokens``, ``output_type`` (``module.QualifiedName``
            or ``None``), ``output_schema`` (a hash of its JSON schema, or ``None``) and
            ``request_params`` (JSON data). Equal for equal configurations, in every process.
        """
        return {
            "provider": _PROVIDER,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "output_type": output_type_name(self.output_type),
            "output_schema": schema_digest(self.output_type),
            "request_params": jsonable(self.request_params),
        }

    async def execute(
        self,
        prompt: str | Messages,
        attempt: int,
        timeout: float,
        state: RetryState | None = None,
    ) -> tuple[TOutput, TokenUsage]:
        """Send one Messages request and return its output and token usage.

        Args:
            prompt: the user message, or a list of messages sent as they are.
            attempt: 1-based attempt number (not sent).
            timeout: per-attempt limit in seconds, also given to the SDK as the request timeout.
            state: the item's retry state (not used).

        Returns:
            The concatenated text blocks of the reply, or the validated ``output_type``; and
            the usage: ``input_tokens`` counts every input token (uncached, read from the
            cache and written to it), ``cached_input_tokens`` those read from the cache,
            ``output_tokens`` and ``total_tokens``.

        Raises:
            ProviderAPIError: the API answered with an error or not at all (a subclass says
                which). The rate-limit headers of the answer are reported first.
            pydantic.ValidationError: the reply did not validate as ``output_type``; its usage
                is attached under ``_failed_token_usage``.
            TypeError: ``prompt`` is neither a string nor a list of messages.
        """
        import anthropic  # already loaded: the client is an anthropic client

        request = self._request(prompt)
        create: Any = self.client.messages.with_raw_response.create
        try:
            raw = await create(**request, timeout=timeout)
        except anthropic.APIStatusError as exc:
            report_rate_limit_headers(exc.response.headers)
            raise _converted(exc) from exc
        except anthropic.APIError as exc:
            raise _converted(exc) from exc
        report_rate_limit_headers(raw.headers)
        try:
            message = cast("Message", await parse_response(raw))
        except Exception as exc:
            raise unreadable_error(exc, label=_LABEL, provider=_PROVIDER) from exc
        return self._output(message)

    def _request(self, prompt: str | Messages) -> dict[str, Any]:
        request = dict(self.request_params)
        request["model"] = self.model
        request["max_tokens"] = self.max_tokens
        request["messages"] = messages_from(prompt)
        if self.output_type is not None:
            name = tool_name(self.output_type)
            request["tools"] = [_tool(name, self.output_type)]
            request["tool_choice"] = {"type": "tool", "name": name}
        return request

    def _output(self, message: Message) -> tuple[TOutput, TokenUsage]:
        name = None if self.output_type is None else tool_name(self.output_type)
        try:
            blocks = list(message.content)
        except Exception as exc:
            raise unreadable_error(exc, label=_LABEL, provider=_PROVIDER) from exc
        usage = _usage(message.usage)
        text = "".join(block.text for block in blocks if block.type == "text")
        if self.output_type is None:
            return cast("TOutput", text), usage
        tool_input = next(
            (b.input for b in blocks if b.type == "tool_use" and b.name == name),
            None,
        )
        output_type = self.output_type
        output = validate_reply(
            lambda: (
                output_type.model_validate_json(text)
                if tool_input is None
                else output_type.model_validate(tool_input)
            ),
            usage,
        )
        return cast("TOutput", output), usage

    # ----------------------------------------------------------------- batch mode

    batch_limits: BatchLimits = ANTHROPIC_BATCH_LIMITS
    """What one Message Batch may hold (``ProcessorConfig(mode="batch")``)."""
    batch_poll_interval: tuple[float, float] = (5.0, 60.0)
    """Seconds before the first status read of a batch, and the most between two reads."""

    def batch_backend(self) -> AnthropicBatchBackend:
        """Anthropic's Message Batches API through this strategy's client."""
        first, most = self.batch_poll_interval
        return AnthropicBatchBackend(self.client, self.batch_limits, first, most)

    def batch_line(self, custom_id: str, prompt: str | Messages) -> BatchLine:
        """The batch request of one item: ``{"custom_id", "params"}`` with ``execute``'s body.

        ``extra_body`` fields are merged into the params; ``extra_headers`` and
        ``extra_query`` cannot travel in a batch request and are left out.
        """
        params = self._request(prompt)
        for name in ("extra_headers", "extra_query", "timeout"):
            params.pop(name, None)
        extra = params.pop("extra_body", None)
        if isinstance(extra, Mapping):
            params.update(extra)
        payload = {"custom_id": custom_id, "params": jsonable(params)}
        return BatchLine(custom_id, "messages", payload, line_size(payload))

    def batch_output(self, body: Mapping[str, Any]) -> tuple[TOutput, TokenUsage]:
        """Output and usage of one succeeded batch result's message, as ``execute`` returns."""
        from anthropic.types import Message

        try:
            message = Message.model_validate(dict(body))
        except Exception as exc:
            raise unreadable_error(exc, label=_LABEL, provider=_PROVIDER) from exc
        return self._output(message)

    async def dry_run(self, prompt: str) -> tuple[TOutput, TokenUsage]:
        """A placeholder shaped like the output: ``output_type.model_construct()`` or a string."""
        if self.output_type is None:
            return await super().dry_run(prompt)
        return cast("tuple[TOutput, TokenUsage]", placeholder_reply(self.output_type, prompt))

    def __repr__(self) -> str:
        output = None if self.output_type is None else self.output_type.__qualname__
        return (
            f"{type(self).__name__}(model={self.model!r}, max_tokens={self.max_tokens}, "
            f"output_type={output}, request_params={sorted(self.request_params)!r})"
        )


def _tool(name: str, output_type: type[BaseModel]) -> dict[str, Any]:
    schema = output_type.model_json_schema()
    description = schema.get("description")
    if not isinstance(description, str) or not description.strip():
        description = f"Return the answer as a {name} object."
    return {"name": name, "description": description, "input_schema": schema}


def _usage(usage: Usage | None) -> TokenUsage:
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cached_input_tokens": 0}
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    input_tokens = (usage.input_tokens or 0) + read + written
    output_tokens = usage.output_tokens or 0
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "cached_input_tokens": read,
    }


def _converted(exc: anthropic.APIError) -> ProviderAPIError:
    """The library's exception for an ``anthropic`` error (the one place they are converted)."""
    import anthropic

    if isinstance(exc, anthropic.APITimeoutError):  # a subclass of APIConnectionError
        return make_error(
            ProviderTimeoutError, label=_LABEL, provider=_PROVIDER, category="timeout"
        )
    if isinstance(exc, anthropic.APIConnectionError):
        return make_error(
            ProviderConnectionError, label=_LABEL, provider=_PROVIDER, category="connection"
        )
    if isinstance(exc, anthropic.APIStatusError):
        kind, message = _body_error(exc.body)
        return error_for_status(
            exc.status_code,
            label=_LABEL,
            provider=_PROVIDER,
            provider_message=message,
            out_of_credit=exc.status_code == 402 or kind == _OUT_OF_CREDIT,
            request_id=exc.request_id,
            cause=exc,
        )
    category = (
        "invalid_response" if isinstance(exc, anthropic.APIResponseValidationError) else "unknown"
    )
    return make_error(
        ProviderAPIError,
        label=_LABEL,
        provider=_PROVIDER,
        category=category,
        provider_message=exc.message,
    )


def _body_error(body: object) -> tuple[str | None, str | None]:
    """The error ``type`` and ``message`` of an error body (``{"type": "error", "error": ...}``)."""
    if not isinstance(body, Mapping):
        return None, None
    nested = body.get("error", body)
    if not isinstance(nested, Mapping):
        return None, None
    kind, message = nested.get("type"), nested.get("message")
    return (
        kind if isinstance(kind, str) else None,
        message if isinstance(message, str) else None,
    )
