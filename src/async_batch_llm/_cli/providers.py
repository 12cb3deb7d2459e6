"""The providers the CLI calls: clients, API keys, the model check and the request strategy.

Each input line becomes one item whose prompt is ``{"messages": [...], "params": {...}}``
(:meth:`Request.payload`). :class:`RequestStrategy` sends it through the built-in strategy of the
provider (``OpenAIStrategy``, ``AnthropicStrategy``) or the Gemini model, and returns a
``chat.completion`` body as the item's output, so the artifact store holds exactly what an
output line needs. With ``--mode batch`` the same requests go through the provider's batch
API (OpenAI Files + Batches, Anthropic Message Batches, Gemini batch jobs).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from async_batch_llm._cli.inputs import LineError, Request
from async_batch_llm._cli.output import completion_body
from async_batch_llm._strategies.anthropic import AnthropicStrategy
from async_batch_llm._strategies.base import LLMCallStrategy
from async_batch_llm._strategies.batch_api import BatchBackend, BatchCapable, BatchLine
from async_batch_llm._strategies.openai import OpenAIStrategy
from async_batch_llm._types import LLMResponse, RetryState, TokenUsage
from async_batch_llm.strategies.errors import ErrorClassifier

__all__ = [
    "PROVIDERS",
    "ModelCheckError",
    "ProviderSpec",
    "RequestStrategy",
    "api_key_for",
    "build_strategy",
    "check_model",
]

_STRATEGY_CACHE = 32
"""Built-in strategies kept, one per distinct set of generation parameters."""


class ModelCheckError(Exception):
    """The provider does not know the model, or refused the key, or cannot be reached."""


@dataclass(frozen=True)
class ProviderSpec:
    """What the CLI knows about one provider.

    Attributes:
        name: the ``--provider`` value.
        package: the Python package of its SDK.
        extra: the async-batch-llm extra that installs it.
        key_vars: environment variables read for the API key, in order.
        params: the ``body`` parameters this provider takes (``None``: any the SDK takes).
    """

    name: str
    package: str
    extra: str
    key_vars: tuple[str, ...]
    params: frozenset[str] | None


PROVIDERS: dict[str, ProviderSpec] = {
    "openai": ProviderSpec("openai", "openai", "openai", ("OPENAI_API_KEY",), None),
    "anthropic": ProviderSpec(
        "anthropic",
        "anthropic",
        "anthropic",
        ("ANTHROPIC_API_KEY",),
        frozenset({"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop"}),
    ),
    "gemini": ProviderSpec(
        "gemini",
        "google.genai",
        "gemini",
        ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        frozenset({"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop"}),
    ),
}


def sdk_installed(spec: ProviderSpec) -> bool:
    """Whether the provider's SDK can be imported."""
    try:
        return importlib.util.find_spec(spec.package) is not None
    except ImportError:  # the parent package ("google") is missing
        return False


def api_key_for(spec: ProviderSpec, environ: Mapping[str, str] | None = None) -> str | None:
    """The first non-empty key among the provider's environment variables, or ``None``."""
    env = os.environ if environ is None else environ
    for var in spec.key_vars:
        value = env.get(var, "").strip()
        if value:
            return value
    return None


_ANTHROPIC_NAMES = {"max_completion_tokens": "max_tokens", "stop": "stop_sequences"}
"""Body parameters the Anthropic request names differently."""


@functools.cache
def sdk_parameters(provider: str) -> tuple[frozenset[str], str] | None:
    """The keyword parameters of the SDK's create call and the SDK's version, when readable.

    Imports the SDK (only once a line has parameters to check). ``None`` for Gemini, when the
    SDK is missing, or when its create call takes ``**kwargs``.
    """
    try:
        if provider == "openai":
            import openai
            from openai.resources.chat.completions import AsyncCompletions

            create: Any = AsyncCompletions.create
            version = openai.__version__
        elif provider == "anthropic":
            import anthropic
            from anthropic.resources.messages import AsyncMessages

            create = AsyncMessages.create
            version = anthropic.__version__
        else:
            return None
        parameters = inspect.signature(create).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return frozenset(parameters), version


def line_checker(provider: str) -> Callable[[Request], None]:
    """A check of one request against what ``provider`` can send; raises :class:`LineError`."""
    spec = PROVIDERS[provider]

    def check(request: Request) -> None:
        if spec.params is not None:
            unknown = sorted(set(request.params) - spec.params)
            if unknown:
                raise LineError(
                    f"body parameter(s) {unknown} not supported with --provider {provider} "
                    f"(supported: {sorted(spec.params)})"
                )
        if request.params and (sdk := sdk_parameters(provider)) is not None:
            accepted, version = sdk
            names = {
                _ANTHROPIC_NAMES.get(name, name) if provider == "anthropic" else name: name
                for name in request.params
            }
            refused = sorted(body for sent, body in names.items() if sent not in accepted)
            if refused:
                raise LineError(
                    f"body parameter(s) {refused} not taken by the installed {spec.package} "
                    f"SDK ({version})"
                )
        if provider == "gemini":
            turns = [m for m in request.messages if m["role"] not in ("system", "developer")]
            if len(turns) != 1 or turns[0]["role"] != "user":
                raise LineError(
                    "with --provider gemini a line must hold exactly one user message "
                    "(plus optional system messages)"
                )
        if provider != "openai":
            for index, message in enumerate(request.messages):
                if not isinstance(_text_of(message["content"]), str):
                    raise LineError(
                        f"body.messages[{index}].content: only text is supported with "
                        f"--provider {provider}"
                    )

    return check


def _text_of(content: object) -> str | None:
    """The text of a message's content (a string or a list of text parts), else ``None``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict) and "text" in part]
        if len(texts) == len(content) and all(isinstance(t, str) for t in texts):
            return "".join(str(t) for t in texts)
    return None


def _max_tokens(params: Mapping[str, Any]) -> int | None:
    value = params.get("max_completion_tokens", params.get("max_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _unpack(prompt: str | Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], Mapping[str, Any]]:
    """The messages and parameters of :meth:`Request.payload` (a ``str`` is one user message)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}], {}
    return list(prompt["messages"]), prompt["params"]


def _system_text(messages: list[Mapping[str, Any]]) -> str | None:
    parts = [str(_text_of(m["content"])) for m in messages if m["role"] in ("system", "developer")]
    return "\n\n".join(parts) if parts else None


class RequestStrategy(LLMCallStrategy[dict[str, Any]]):
    """Send one request line and return a ``chat.completion`` body.

    Args:
        provider: ``"openai"``, ``"anthropic"`` or ``"gemini"``.
        model: the model called for every line.
        client: the provider's async client (``google.genai.Client`` for Gemini).
    """

    def __init__(self, provider: str, model: str, client: Any) -> None:
        self.provider = provider
        self.model = model
        self.client = client
        self._strategies: OrderedDict[str, OpenAIStrategy[str] | AnthropicStrategy[str]] = (
            OrderedDict()
        )
        self._gemini_batch: BatchCapable | None = None  # built on the first Gemini batch line

    @property
    def quota_scope(self) -> str:
        """``"<provider>:<model>"``, the same scope as the built-in strategies."""
        return f"{self.provider}:{self.model}"

    def fingerprint(self) -> Mapping[str, object]:
        """Provider and model; the messages and parameters are part of each prompt."""
        return {"provider": self.provider, "model": self.model}

    def _inner(self, params: Mapping[str, Any]) -> OpenAIStrategy[str] | AnthropicStrategy[str]:
        import json

        key = json.dumps(params, sort_keys=True, default=repr)
        strategy = self._strategies.get(key)
        if strategy is not None:
            self._strategies.move_to_end(key)
            return strategy
        if self.provider == "openai":
            strategy = OpenAIStrategy(self.client, self.model, **params)
        else:
            extra = {k: v for k, v in params.items() if k in ("temperature", "top_p", "system")}
            if "stop" in params:
                stop = params["stop"]
                extra["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
            strategy = AnthropicStrategy(
                self.client, self.model, max_tokens=_max_tokens(params) or 1024, **extra
            )
        self._strategies[key] = strategy
        if len(self._strategies) > _STRATEGY_CACHE:
            self._strategies.popitem(last=False)
        return strategy

    async def execute(
        self,
        prompt: str | Mapping[str, Any],
        attempt: int,
        timeout: float,
        state: RetryState | None = None,
    ) -> tuple[dict[str, Any], TokenUsage]:
        """Call the model once with the line's messages and parameters.

        Args:
            prompt: :meth:`Request.payload` of the line (a ``str`` is one user message).
            attempt, timeout, state: as for every strategy.

        Returns:
            A ``chat.completion`` body and the attempt's token usage.
        """
        if self.provider == "gemini":
            messages, params = _unpack(prompt)
            text, usage = await self._gemini(messages, params)
        else:
            inner, messages = self._prepare(prompt)
            output, usage = await inner.execute(messages, attempt, timeout, state)
            text = str(output)
        return completion_body(text, usage, self.model), usage

    def _prepare(
        self, prompt: str | Mapping[str, Any]
    ) -> tuple[OpenAIStrategy[str] | AnthropicStrategy[str], list[Mapping[str, Any]]]:
        """The built-in strategy a line goes through and the messages it sends (not Gemini)."""
        messages, params = _unpack(prompt)
        if self.provider == "anthropic":
            system = _system_text(messages)
            messages = [m for m in messages if m["role"] not in ("system", "developer")]
            if system is not None:
                params = {**params, "system": system}
        return self._inner(params), messages

    # ----------------------------------------------------------------- batch mode (--mode batch)

    def _batch_strategy(self) -> BatchCapable:
        """The built-in strategy whose batch API the lines go through (its job API and result
        lines; each line's own request is built by :meth:`batch_line`)."""
        if self.provider != "gemini":
            return self._inner({})
        if self._gemini_batch is None:
            from async_batch_llm._providers.gemini import GeminiModel
            from async_batch_llm._strategies.gemini import GeminiStrategy

            self._gemini_batch = GeminiStrategy(GeminiModel(self.model, self.client), _text)
        return self._gemini_batch

    def batch_backend(self) -> BatchBackend:
        """The batch API of the provider's built-in strategy (Gemini: batch jobs with inline
        requests)."""
        return self._batch_strategy().batch_backend()

    def batch_line(self, custom_id: str, prompt: str | Mapping[str, Any]) -> BatchLine:
        """The line's request as one line of the provider's batch job: what :meth:`execute`
        would send for it."""
        if self.provider == "gemini":
            from async_batch_llm._providers.gemini import GeminiModel
            from async_batch_llm._strategies.gemini_batch import inline_request

            text, temperature, system, config = _gemini_request(*_unpack(prompt))
            model = GeminiModel(self.model, self.client)
            request = model._request_config(temperature, system, config)
            return inline_request(custom_id, self.model, text, request)
        inner, messages = self._prepare(prompt)
        return inner.batch_line(custom_id, messages)

    def batch_output(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], TokenUsage]:
        """A ``chat.completion`` body and the usage of one successful result line."""
        output, usage = self._batch_strategy().batch_output(body)
        return completion_body(str(output), usage, self.model), usage

    async def _gemini(
        self, messages: list[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> tuple[str, TokenUsage]:
        from async_batch_llm._providers.gemini import GeminiModel

        text, temperature, system, config = _gemini_request(messages, params)
        model = GeminiModel(self.model, self.client)
        response = await model.generate(
            text, temperature=temperature, system_instruction=system, config=config
        )
        return response.text, response.token_usage


def _text(response: LLMResponse) -> str:
    return response.text


def _gemini_request(
    messages: list[Mapping[str, Any]], params: Mapping[str, Any]
) -> tuple[str, float, str | None, dict[str, Any] | None]:
    """What a line sends to Gemini: the user text, temperature, system instruction and the
    extra request config (``max_output_tokens``, ``top_p``, ``stop_sequences``)."""
    system = _system_text(messages)
    user = next(m for m in messages if m["role"] == "user")
    config: dict[str, Any] = {}
    if (limit := _max_tokens(params)) is not None:
        config["max_output_tokens"] = limit
    if "top_p" in params:
        config["top_p"] = params["top_p"]
    if "stop" in params:
        stop = params["stop"]
        config["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    temperature = float(params.get("temperature", 0.0))
    return str(_text_of(user["content"])), temperature, system, config or None


def build_client(provider: str, api_key: str, base_url: str | None) -> Any:
    """The provider's async client, with SDK retries off (the processor retries)."""
    if provider == "openai":
        import openai

        return openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)
    if provider == "anthropic":
        import anthropic

        return anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0)
    from google import genai
    from google.genai import types

    options = types.HttpOptions(base_url=base_url) if base_url else None
    return genai.Client(api_key=api_key, http_options=options)


async def close_client(client: Any) -> None:
    """Close the client's connections (any client; ``None`` is fine)."""
    if client is None:
        return
    aio = getattr(client, "aio", None)  # google-genai keeps its async side there
    target = aio if aio is not None else client
    close = getattr(target, "aclose", None) or getattr(target, "close", None)
    if close is None:
        return
    outcome = close()
    if hasattr(outcome, "__await__"):
        await outcome


def build_strategy(provider: str, model: str, client: Any) -> RequestStrategy:
    """The strategy every item of a run uses."""
    return RequestStrategy(provider, model, client)


def error_classifier(provider: str) -> ErrorClassifier:
    """The provider's own classifier (finer error categories than the neutral one)."""
    from async_batch_llm import classifiers

    if provider == "openai":
        return classifiers.OpenAIErrorClassifier()
    if provider == "anthropic":
        return classifiers.AnthropicErrorClassifier()
    return classifiers.GeminiErrorClassifier()


async def list_models(provider: str, client: Any) -> list[str]:
    """The model names the server lists (Gemini: without the ``models/`` prefix)."""
    names: list[str] = []
    if provider == "gemini":
        pager = await client.aio.models.list()
        async for model in pager:
            names.append(str(model.name).removeprefix("models/"))
        return names
    async for model in client.models.list():
        names.append(str(model.id))
    return names


async def check_model(provider: str, model: str, client: Any, key_vars: tuple[str, ...]) -> str:
    """Ask the server whether it knows ``model``, before any paid call.

    Returns:
        ``""`` when the model is listed, else a warning to print (the list could not be read,
        so the model is not checked).

    Raises:
        ModelCheckError: the model is not listed (the message lists what is), the key was
            refused, or the server cannot be reached.
    """
    try:
        known = await list_models(provider, client)
    except Exception as exc:
        status = getattr(exc, "status_code", None) or getattr(exc, "code", None)
        name = type(exc).__name__
        if status in (401, 403) or "Authentication" in name or "PermissionDenied" in name:
            raise ModelCheckError(
                f"{provider} refused the API key ({name}: {_short(exc)}); set "
                f"{' or '.join(key_vars)} to a valid key"
            ) from exc
        if "Connection" in name or isinstance(exc, ConnectionError | OSError):
            raise ModelCheckError(f"cannot reach {provider} ({name}: {_short(exc)})") from exc
        return f"could not list the models of {provider} ({name}); the model is not checked"
    if model in known:
        return ""
    shown = ", ".join(sorted(known)[:30]) or "none"
    more = f" (and {len(known) - 30} more)" if len(known) > 30 else ""
    raise ModelCheckError(
        f"unknown model {model!r} for --provider {provider}; the server knows: {shown}{more}"
    )


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]
