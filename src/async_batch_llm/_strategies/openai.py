"""``OpenAIStrategy``: one Chat Completions call per attempt through ``openai.AsyncOpenAI``.

Works against the OpenAI API and any OpenAI-compatible server (vLLM, Ollama, LiteLLM, ...):
point the client's ``base_url`` at it.

**Errors are converted at this boundary.** The processor asks one classifier about every
failed attempt, by default the provider-neutral
:class:`~async_batch_llm.strategies.errors.DefaultErrorClassifier`, which cannot read
``openai`` errors: it would retry a 401 three times and take an out-of-credit 429 for a rate
limit. So the strategy converts every ``openai.APIError`` into one of the library's
:class:`~async_batch_llm._strategies._http_api.ProviderAPIError` classes, raised ``from`` the
SDK error, whose type and message the neutral rules classify right:

- 429 → ``ProviderRateLimitError``: a rate limit (the shared cooldown honours its Retry-After);
- 429 with code ``insufficient_quota`` (out of credit), 400, 401, 403, 404, 422 and other 4xx →
  ``ProviderRequestError``, a ``ValueError``: not retried (the same request cannot succeed);
- 408, 504 and a client-side timeout → ``ProviderTimeoutError``, a ``TimeoutError``: retried;
- a failed or dropped connection → ``ProviderConnectionError``, a ``ConnectionError``: retried;
- 409, other 5xx and an answer the SDK cannot read → ``ProviderAPIError``: retried.

The SDK error stays the ``__cause__``, so
:class:`~async_batch_llm.classifiers.OpenAIErrorClassifier` (finer categories) classifies the
converted errors exactly as it classifies the SDK's, and the processor's cooldown still reads the
``retry-after``/``retry-after-ms`` headers off the chain.

Create the client with ``max_retries=0``: the SDK otherwise retries on its own, and a 429 it
swallows never reaches the shared cooldown (nor do its rate-limit headers reach the quota gate).
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
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._strategies.batch_api import BatchLimits, BatchLine
from async_batch_llm._strategies.openai_batch import (
    OPENAI_BATCH_LIMITS,
    OPENAI_BATCH_URL,
    OpenAIBatchBackend,
    line_size,
)
from async_batch_llm._types import RetryState, TokenUsage, TOutput

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletion
    from openai.types.completion_usage import CompletionUsage

__all__ = ["OpenAIStrategy"]

_INSTALL_HINT = (
    "openai is required for OpenAIStrategy; install it with: pip install 'async-batch-llm[openai]'"
)
_PROVIDER = "openai"
_LABEL = "OpenAI"
_OUT_OF_CREDIT = "insufficient_quota"

_M = TypeVar("_M", bound=BaseModel)

Messages = Sequence[Mapping[str, Any]]
"""Chat messages as the API takes them (``[{"role": "user", "content": "..."}]``)."""


class OpenAIStrategy(LLMCallStrategy[TOutput]):
    """Call the Chat Completions API once per attempt; return the text or a validated model.

    Share one instance across items: it holds no per-item state.

    Args:
        client: an ``openai.AsyncOpenAI`` (or ``AsyncAzureOpenAI``); create it with
            ``max_retries=0`` so that the processor does all the retrying.
        model: the model name, for example ``"gpt-4o-mini"``.
        output_type: a pydantic model to parse the reply into. The request then asks for
            structured output (``response_format`` of type ``json_schema``, strict, built from
            the model's JSON schema) and the reply is validated with ``model_validate_json``;
            a reply that does not validate raises pydantic's ``ValidationError`` (retried at
            once by the built-in classifiers) carrying the tokens it cost. A
            ``response_format`` given in ``request_params`` replaces the generated one (for
            servers without strict JSON schema support, say).
        **request_params: sent with every request (``temperature``, ``max_completion_tokens``,
            ``seed``, ``extra_headers``, ...).

    Raises:
        ImportError: the ``openai`` package is not installed.
        TypeError: ``client`` is not an async OpenAI client, ``model`` is not a string,
            ``output_type`` is not a pydantic model class, or the SDK's
            ``chat.completions.create`` takes no parameter of one of ``request_params``.
        ValueError: ``model`` is empty, or ``request_params`` holds a parameter the strategy
            sets itself (``messages``, ``timeout``, ``stream``).

    Attributes:
        client, model, output_type, request_params: the constructor arguments.
    """

    @overload
    def __init__(
        self: OpenAIStrategy[str],
        client: openai.AsyncOpenAI,
        model: str,
        *,
        output_type: None = None,
        **request_params: Any,
    ) -> None: ...

    @overload
    def __init__(
        self: OpenAIStrategy[_M],
        client: openai.AsyncOpenAI,
        model: str,
        *,
        output_type: type[_M],
        **request_params: Any,
    ) -> None: ...

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        *,
        output_type: type[BaseModel] | None = None,
        **request_params: Any,
    ) -> None:
        if importlib.util.find_spec("openai") is None:
            raise ImportError(_INSTALL_HINT)
        create = check_async_create(
            client, ("chat", "completions", "with_raw_response", "create"), "openai.AsyncOpenAI"
        )
        self.client = client
        self.model = check_model(model)
        self.output_type = check_output_type(output_type)
        self.request_params = check_request_params(
            type(self).__name__,
            request_params,
            {
                "messages": "the prompt becomes the messages",
                "timeout": "the processor's per-attempt timeout",
                "stream": "the whole reply is needed",
            },
        )
        check_accepted(type(self).__name__, create, self.request_params)

    @property
    def quota_scope(self) -> str:
        """``"openai:<model>"``: items calling the same model share its rate limits."""
        return f"{_PROVIDER}:{self.model}"

    def fingerprint(self) -> Mapping[str, object]:
        """What decides the answer besides the prompt: provider, model, output type, parameters.

        Returns:
            ``provider``, ``model``, ``output_type`` (``module.QualifiedName`` or ``None``),
            ``output_schema`` (a hash of its JSON schema, or ``None``) and ``request_params``
            (JSON data). Equal for equal configurations, in every process.
        """
        return {
            "provider": _PROVIDER,
            "model": self.model,
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
        """Send one chat completion request and return its output and token usage.

        Args:
            prompt: the user message, or a list of chat messages sent as they are.
            attempt: 1-based attempt number (not sent).
            timeout: per-attempt limit in seconds, also given to the SDK as the request timeout.
            state: the item's retry state (not used).

        Returns:
            The reply text (``""`` when the reply has no text), or the validated
            ``output_type``; and ``input_tokens``, ``output_tokens``, ``total_tokens`` and
            ``cached_input_tokens`` (the part of the input served from OpenAI's prompt cache).

        Raises:
            ProviderAPIError: the API answered with an error or not at all (a subclass says
                which; see the module docstring). The rate-limit headers of the answer are
                reported first.
            pydantic.ValidationError: the reply did not validate as ``output_type``; its usage
                is attached under ``_failed_token_usage``.
            TypeError: ``prompt`` is neither a string nor a list of messages.
        """
        import openai  # already loaded: the client is an openai client

        request = self._request(prompt)
        create: Any = self.client.chat.completions.with_raw_response.create
        try:
            raw = await create(**request, timeout=timeout)
        except openai.APIStatusError as exc:
            report_rate_limit_headers(exc.response.headers)
            raise _converted(exc) from exc
        except openai.APIError as exc:
            raise _converted(exc) from exc
        report_rate_limit_headers(raw.headers)
        try:
            completion = cast("ChatCompletion", await parse_response(raw))
        except Exception as exc:
            raise unreadable_error(exc, label=_LABEL, provider=_PROVIDER) from exc
        return self._output(completion)

    def _request(self, prompt: str | Messages) -> dict[str, Any]:
        request = dict(self.request_params)
        request["model"] = self.model
        request["messages"] = messages_from(prompt)
        if self.output_type is not None and "response_format" not in request:
            request["response_format"] = _response_format(self.output_type)
        return request

    def _output(self, completion: ChatCompletion) -> tuple[TOutput, TokenUsage]:
        try:
            choices = completion.choices
            text = (choices[0].message.content if choices else None) or ""
        except Exception as exc:
            raise unreadable_error(exc, label=_LABEL, provider=_PROVIDER) from exc
        usage = _usage(completion.usage)
        if self.output_type is None:
            return cast("TOutput", text), usage
        output_type = self.output_type
        output = validate_reply(lambda: output_type.model_validate_json(text), usage)
        return cast("TOutput", output), usage

    # ----------------------------------------------------------------- batch mode

    batch_limits: BatchLimits = OPENAI_BATCH_LIMITS
    """What one batch job may hold (``ProcessorConfig(mode="batch")``); OpenAI's limits."""
    batch_poll_interval: tuple[float, float] = (5.0, 60.0)
    """Seconds before the first status read of a job, and the most between two reads."""

    def batch_backend(self) -> OpenAIBatchBackend:
        """OpenAI's Batch API (Files + Batches) through this strategy's client."""
        first, most = self.batch_poll_interval
        return OpenAIBatchBackend(self.client, self.batch_limits, first, most)

    def batch_line(self, custom_id: str, prompt: str | Messages) -> BatchLine:
        """The JSONL request line of one item: the body ``execute`` would send.

        ``extra_body`` fields are merged into the body; ``extra_headers`` and ``extra_query``
        cannot travel in a line and are left out. Lines are grouped by model (one model per
        input file, as OpenAI requires).
        """
        body = self._request(prompt)
        for name in ("extra_headers", "extra_query", "timeout"):
            body.pop(name, None)
        extra = body.pop("extra_body", None)
        if isinstance(extra, Mapping):
            body.update(extra)
        payload = {
            "custom_id": custom_id,
            "method": "POST",
            "url": OPENAI_BATCH_URL,
            "body": jsonable(body),
        }
        return BatchLine(custom_id, str(body["model"]), payload, line_size(payload))

    def batch_output(self, body: Mapping[str, Any]) -> tuple[TOutput, TokenUsage]:
        """Output and usage of one result line's chat completion, as ``execute`` returns them."""
        from openai.types.chat import ChatCompletion

        try:
            completion = ChatCompletion.model_validate(dict(body))
        except Exception as exc:
            raise unreadable_error(exc, label=_LABEL, provider=_PROVIDER) from exc
        return self._output(completion)

    async def dry_run(self, prompt: str) -> tuple[TOutput, TokenUsage]:
        """A placeholder shaped like the output: ``output_type.model_construct()`` or a string."""
        if self.output_type is None:
            return await super().dry_run(prompt)
        return cast("tuple[TOutput, TokenUsage]", placeholder_reply(self.output_type, prompt))

    def __repr__(self) -> str:
        output = None if self.output_type is None else self.output_type.__qualname__
        return (
            f"{type(self).__name__}(model={self.model!r}, output_type={output}, "
            f"request_params={sorted(self.request_params)!r})"
        )


def _response_format(output_type: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": tool_name(output_type),
            "schema": strict_json_schema(output_type.model_json_schema()),
            "strict": True,
        },
    }


_NAMED_SCHEMAS = ("properties", "$defs", "definitions", "patternProperties")
"""Keywords whose value maps names (which may be anything) to schemas."""
_LITERAL_VALUES = ("enum", "const", "examples", "required")
"""Keywords whose value is data, not a schema."""


def strict_json_schema(schema: Any) -> Any:
    """The schema in the form OpenAI's strict structured output accepts.

    Strict mode wants every object closed (``additionalProperties: false``) and every property
    listed in ``required``, and has no use for ``default``: a field with a default must then be
    sent by the model, which validation accepts. Objects that already say something about
    ``additionalProperties`` (``dict`` fields) keep it.

    Args:
        schema: a JSON schema, for example ``Model.model_json_schema()`` (not modified).

    Returns:
        A new schema.
    """
    if isinstance(schema, list):
        return [strict_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "default":
            continue
        if key in _NAMED_SCHEMAS and isinstance(value, dict):
            strict[key] = {name: strict_json_schema(sub) for name, sub in value.items()}
        elif key in _LITERAL_VALUES:
            strict[key] = value
        else:
            strict[key] = strict_json_schema(value)
    properties = strict.get("properties")
    if isinstance(properties, dict):
        strict.setdefault("additionalProperties", False)
        strict["required"] = list(properties)
    return strict


def _usage(usage: CompletionUsage | None) -> TokenUsage:
    if usage is None:  # some OpenAI-compatible servers leave it out
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cached_input_tokens": 0}
    input_tokens = usage.prompt_tokens or 0
    output_tokens = usage.completion_tokens or 0
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens if details is not None else None) or 0
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": usage.total_tokens or input_tokens + output_tokens,
        "cached_input_tokens": cached,
    }


def _converted(exc: openai.APIError) -> ProviderAPIError:
    """The library's exception for an ``openai`` error (the one place they are converted)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError
        return make_error(
            ProviderTimeoutError, label=_LABEL, provider=_PROVIDER, category="timeout"
        )
    if isinstance(exc, openai.APIConnectionError):
        return make_error(
            ProviderConnectionError, label=_LABEL, provider=_PROVIDER, category="connection"
        )
    if isinstance(exc, openai.APIStatusError):
        return error_for_status(
            exc.status_code,
            label=_LABEL,
            provider=_PROVIDER,
            provider_message=_body_message(exc.body),
            out_of_credit=exc.status_code == 429 and exc.code == _OUT_OF_CREDIT,
            request_id=exc.request_id,
            cause=exc,
        )
    invalid = isinstance(exc, openai.APIResponseValidationError)
    category = "invalid_response" if invalid else "unknown"
    return make_error(
        ProviderAPIError,
        label=_LABEL,
        provider=_PROVIDER,
        category=category,
        provider_message=exc.message,
    )


def _body_message(body: object) -> str | None:
    """The ``message`` of an error body (the SDK keeps the ``error`` object of the answer)."""
    if isinstance(body, Mapping):
        nested = body.get("error", body)
        if isinstance(nested, Mapping) and isinstance(nested.get("message"), str):
            return str(nested["message"])
    return None
