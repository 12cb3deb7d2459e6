"""What the built-in HTTP-API strategies (OpenAI, Anthropic) share.

- The exceptions an SDK error is converted into (:class:`ProviderAPIError` and its subclasses).
  They are chosen so that the provider-neutral
  :class:`~async_batch_llm.strategies.errors.DefaultErrorClassifier` decides right: a rate limit
  says "rate limit", a timeout is a ``TimeoutError``, a dropped connection a
  ``ConnectionError``, and a request the API rejected (bad key, unknown model, out of credit) is
  a ``ValueError`` whose message carries none of the words the neutral rules look for, so it
  is not retried. Each is raised ``from`` the SDK error, so the provider classifiers
  (``OpenAIErrorClassifier``, ``AnthropicErrorClassifier``), which look at ``__cause__``, and
  the processor's Retry-After lookup, which walks the chain, still see the original.
- Attaching the usage of a rejected reply to the exception (spec §4.7).
- The JSON form of request parameters used by ``fingerprint()``.
- Names and schemas for structured output.

No SDK is imported here.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, cast

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from async_batch_llm._internal.retry_after import retry_after_seconds
from async_batch_llm._internal.tokens import FAILED_USAGE_ATTR
from async_batch_llm._types import TokenUsage
from async_batch_llm.strategies.errors import RATE_LIMIT_PATTERNS, TokenTrackingError

__all__ = [
    "ProviderAPIError",
    "ProviderConnectionError",
    "ProviderRateLimitError",
    "ProviderRequestError",
    "ProviderTimeoutError",
    "attach_failed_usage",
    "check_accepted",
    "check_async_create",
    "check_model",
    "check_output_type",
    "check_request_params",
    "error_for_status",
    "jsonable",
    "make_error",
    "messages_from",
    "output_type_name",
    "parse_response",
    "placeholder_reply",
    "schema_digest",
    "tool_name",
    "unreadable_error",
    "validate_reply",
]

_NOT_RETRIED_WORDS = ("timeout", "connection")
"""Words that would make the neutral rules retry an error (rules 3 and 4)."""


class ProviderAPIError(Exception):
    """An error answer (or no usable answer) from a provider's HTTP API.

    Raised by :class:`~async_batch_llm.llm_strategies.OpenAIStrategy` and
    :class:`~async_batch_llm.llm_strategies.AnthropicStrategy` ``from`` the SDK's own exception,
    which stays reachable as ``__cause__``. This base class is used for retryable failures
    that are neither rate limits nor timeouts nor connection failures: 5xx answers, 409, and
    answers the SDK could not read.

    Args:
        message: the text ``str(error)`` returns.
        provider: ``"openai"`` or ``"anthropic"``.
        category: what went wrong, in the vocabulary of ``WorkItemResult.error_category``
            (``"rate_limit"``, ``"timeout"``, ``"connection"``, ``"authentication"``,
            ``"insufficient_quota"``, ``"model_not_found"``, ``"bad_request"``,
            ``"server_error"``, ``"conflict"``, ``"invalid_response"``, ``"unknown"``).
        status_code: the HTTP status of the answer, if there was one.
        retry_after: seconds the provider asked us to wait, if it said.
        request_id: the provider's request id, if it sent one.
        provider_message: the provider's own error message, if any (``str(error)`` may omit
            it, see :func:`error_for_status`).

    Attributes:
        provider, category, status_code, retry_after, request_id, provider_message: the
            arguments, as given.
        retryable: whether another attempt may succeed (a class attribute).
    """

    retryable: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        category: str,
        status_code: int | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        provider_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.category = category
        self.status_code = status_code
        self.retry_after = retry_after
        self.request_id = request_id
        self.provider_message = provider_message


class ProviderRateLimitError(ProviderAPIError):
    """HTTP 429: the provider asks us to slow down. Starts the shared cooldown."""


class ProviderTimeoutError(ProviderAPIError, TimeoutError):
    """The request timed out (client side, or HTTP 408/504)."""


class ProviderConnectionError(ProviderAPIError, ConnectionError):
    """No answer: the connection could not be made or was dropped."""


class ProviderRequestError(ProviderAPIError, ValueError):
    """The API rejected the request itself (bad key, unknown model, out of credit, bad input).

    Sending the same request again cannot succeed and may be billed, so it is not retried. It is
    a ``ValueError``, which the neutral rules treat as not retryable.
    """

    retryable: ClassVar[bool] = False


_SUMMARIES = {
    "rate_limit": "rate limit",
    "timeout": "timed out",
    "connection": "connection failed",
    "authentication": "authentication failed",
    "insufficient_quota": "out of credit",
    "model_not_found": "not found",
    "bad_request": "bad request",
    "server_error": "server error",
    "conflict": "conflict",
    "invalid_response": "unreadable answer",
    "unknown": "error",
}


def _neutral(text: str, forbidden: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return not any(word in lowered for word in forbidden)


def _message(
    label: str,
    category: str,
    status_code: int | None,
    provider_message: str | None,
    kind: type[ProviderAPIError],
) -> str:
    """``"<label> API <summary> (HTTP <status>): <provider message>"``, safe for the neutral rules.

    A rate limit must say so; anything else must not contain the rate-limit words, and a
    request error not the words that mark a retryable failure either. A status or provider
    message that would break that is left out of the text (it stays on the attributes).
    """
    forbidden: tuple[str, ...] = ()
    if kind is not ProviderRateLimitError:
        forbidden = RATE_LIMIT_PATTERNS
        if not kind.retryable:
            forbidden = (*forbidden, *_NOT_RETRIED_WORDS)
    text = f"{label} API {_SUMMARIES.get(category, category)}"
    if status_code is not None and _neutral(str(status_code), forbidden):
        text += f" (HTTP {status_code})"
    if provider_message and _neutral(provider_message, forbidden):
        text += f": {provider_message}"
    return text


def make_error(
    kind: type[ProviderAPIError],
    *,
    label: str,
    provider: str,
    category: str,
    status_code: int | None = None,
    provider_message: str | None = None,
    request_id: str | None = None,
    cause: BaseException | None = None,
) -> ProviderAPIError:
    """Build a converted error; its ``retry_after`` is read from ``cause``'s response headers."""
    return kind(
        _message(label, category, status_code, provider_message, kind),
        provider=provider,
        category=category,
        status_code=status_code,
        retry_after=retry_after_seconds(cause) if cause is not None else None,
        request_id=request_id,
        provider_message=provider_message,
    )


def unreadable_error(exc: BaseException, *, label: str, provider: str) -> ProviderAPIError:
    """The error of a reply the SDK could not read (``exc``), for either provider."""
    return make_error(
        ProviderAPIError,
        label=label,
        provider=provider,
        category="invalid_response",
        provider_message=type(exc).__name__,
    )


def error_for_status(
    status: int,
    *,
    label: str,
    provider: str,
    provider_message: str | None,
    out_of_credit: bool,
    request_id: str | None,
    cause: BaseException,
) -> ProviderAPIError:
    """The converted error for an HTTP error answer.

    Args:
        status: the HTTP status.
        label: the provider's name for messages (``"OpenAI"``).
        provider: the provider's id (``"openai"``).
        provider_message: the error message of the answer's body.
        out_of_credit: the provider said the account has no credit left (OpenAI's 429
            ``insufficient_quota``, Anthropic's 402 ``billing_error``): never retried, and not
            a rate limit even when the status is 429.
        request_id: the provider's request id.
        cause: the SDK error (read for a Retry-After).

    Returns:
        ``ProviderRequestError`` for out of credit and 4xx other than 408/409/429;
        ``ProviderRateLimitError`` for 429; ``ProviderTimeoutError`` for 408 and 504;
        ``ProviderAPIError`` for 409 and other 5xx.
    """
    kind: type[ProviderAPIError]
    if out_of_credit:
        kind, category = ProviderRequestError, "insufficient_quota"
    elif status == 429:
        kind, category = ProviderRateLimitError, "rate_limit"
    elif status in (408, 504):
        kind, category = ProviderTimeoutError, "timeout"
    elif status == 409:  # a conflict (a lock held by a concurrent request) clears by itself
        kind, category = ProviderAPIError, "conflict"
    elif status >= 500:
        kind, category = ProviderAPIError, "server_error"
    elif status in (401, 403):
        kind, category = ProviderRequestError, "authentication"
    elif status == 404:
        kind, category = ProviderRequestError, "model_not_found"
    elif status >= 400:
        kind, category = ProviderRequestError, "bad_request"
    else:
        kind, category = ProviderAPIError, "unknown"
    return make_error(
        kind,
        label=label,
        provider=provider,
        category=category,
        status_code=status,
        provider_message=provider_message,
        request_id=request_id,
        cause=cause,
    )


def attach_failed_usage(exc: Exception, usage: TokenUsage) -> Exception:
    """Attach what a rejected reply cost to ``exc`` and return the exception to raise.

    Returns ``exc`` itself with the usage under ``_failed_token_usage`` when it can take
    attributes (pydantic's ``ValidationError`` can, and keeps its type, which the classifiers
    treat as a retryable validation error); otherwise a ``TokenTrackingError`` carrying the
    usage, to be raised ``from exc``.
    """
    attributes: Any = getattr(exc, "__dict__", None)
    if isinstance(attributes, dict):
        attributes[FAILED_USAGE_ATTR] = usage
        return exc
    return TokenTrackingError(str(exc), token_usage=usage)


def validate_reply(validate: Callable[[], BaseModel], usage: TokenUsage) -> BaseModel:
    """Run ``validate``; a ``ValidationError`` is raised carrying what the reply cost."""
    try:
        return validate()
    except ValidationError as exc:
        error = attach_failed_usage(exc, usage)
        if error is exc:
            raise
        raise error from exc


def placeholder_reply(output_type: type[BaseModel], prompt: str) -> tuple[Any, TokenUsage]:
    """A dry run's answer for a structured strategy: ``output_type.model_construct()``."""
    words = len(prompt.split())
    usage: TokenUsage = {
        "input_tokens": words,
        "output_tokens": 50,
        "total_tokens": words + 50,
        "cached_input_tokens": 0,
    }
    return output_type.model_construct(), usage


def check_async_create(
    client: object, path: tuple[str, ...], sdk_client: str
) -> Callable[..., Any]:
    """``client.<path>`` if it is an async function, else a ``TypeError`` naming ``sdk_client``."""
    create: object = client
    for name in path:
        create = getattr(create, name, None)
    if not inspect.iscoroutinefunction(create):
        raise TypeError(
            f"client must be an {sdk_client} (a client whose {'.'.join(path)} is async), "
            f"got {type(client).__name__}"
        )
    return cast("Callable[..., Any]", create)


def messages_from(prompt: object) -> list[dict[str, Any]]:
    """A ``str`` prompt as one user message; a list of message dicts as is (copied)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        return [dict(m) for m in prompt]
    raise TypeError(f"prompt must be a str or a list of message dicts, got {type(prompt).__name__}")


def jsonable(value: object) -> Any:
    """``value`` as JSON data, for fingerprints: stable across runs for the same parameters.

    Mappings, sequences, pydantic models, dataclasses, enums and the other types pydantic can
    serialise are converted; anything else becomes its ``repr``.
    """
    return json.loads(json.dumps(to_jsonable_python(value, fallback=repr), sort_keys=True))


def schema_digest(output_type: type[BaseModel] | None) -> str | None:
    """A short hash of ``output_type``'s JSON schema, so a changed model changes a fingerprint."""
    if output_type is None:
        return None
    schema = json.dumps(output_type.model_json_schema(), sort_keys=True)
    return hashlib.sha256(schema.encode()).hexdigest()[:16]


def output_type_name(output_type: type[BaseModel] | None) -> str | None:
    """``module.QualifiedName`` of the output type, or ``None``."""
    if output_type is None:
        return None
    return f"{output_type.__module__}.{output_type.__qualname__}"


_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]")


def tool_name(output_type: type[BaseModel]) -> str:
    """The model's class name in the form the APIs accept for a schema or tool name.

    Both APIs allow ``[A-Za-z0-9_-]{1,64}``; other characters (``Page[int]``) become ``_``.
    """
    return _NAME_CHARACTERS.sub("_", output_type.__name__)[:64] or "output"


def check_model(model: object) -> str:
    """Return ``model`` if it is a non-empty string, else raise a ``TypeError``/``ValueError``."""
    if not isinstance(model, str):
        raise TypeError(f"model must be a str, got {type(model).__name__}")
    if not model.strip():
        raise ValueError(f"model must be a non-empty model name, got {model!r}")
    return model


def check_output_type(output_type: object) -> type[BaseModel] | None:
    """Return ``output_type`` if it is ``None`` or a pydantic model class, else raise."""
    if output_type is None:
        return None
    if not (isinstance(output_type, type) and issubclass(output_type, BaseModel)):
        raise TypeError(
            f"output_type must be a pydantic BaseModel subclass or None, got {output_type!r}"
        )
    return output_type


def check_request_params(
    owner: str, params: Mapping[str, Any], reserved: Mapping[str, str]
) -> dict[str, Any]:
    """A copy of ``params``, or a ``ValueError`` naming a parameter the strategy sets itself.

    Args:
        owner: the strategy's class name, for the message.
        params: the extra request parameters given to the constructor.
        reserved: parameter name → why the strategy owns it.
    """
    for name, why in reserved.items():
        if name in params:
            raise ValueError(f"{owner} sets {name!r} itself ({why}); remove it from the arguments")
    return dict(params)


def check_accepted(owner: str, create: Callable[..., Any], params: Mapping[str, Any]) -> None:
    """A ``TypeError`` at construction for a parameter the SDK's ``create`` would refuse.

    Without it every item of the batch would fail with the same ``TypeError``. Nothing is
    checked when ``create`` takes ``**kwargs`` or has no readable signature.
    """
    try:
        parameters = inspect.signature(create).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(name for name in params if name not in parameters)
    if unknown:
        raise TypeError(
            f"{owner}: the installed SDK's create() takes no parameter {unknown[0]!r}; "
            "pass provider-specific fields through extra_body"
        )


async def parse_response(raw: Any) -> Any:
    """The parsed body of a raw SDK response (``parse()`` is a coroutine in some SDK lines)."""
    parsed = raw.parse()
    if inspect.isawaitable(parsed):
        parsed = await parsed
    return parsed
