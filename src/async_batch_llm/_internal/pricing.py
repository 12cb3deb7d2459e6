"""List prices of models and the dollar cost of one attempt: :class:`PriceTable`.

Pure and immutable: a table is built once and read by any number of workers. The public home
of these names is :mod:`async_batch_llm.core`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType
from typing import Any, Final, cast

from async_batch_llm._types import TokenUsage

__all__ = ["DEFAULT_PRICES_AS_OF", "ModelPrice", "PriceTable", "UnknownModelPriceError"]

_TOKENS_PER_UNIT: Final = 1_000_000
"""Prices are quoted in dollars per million tokens, as every provider publishes them."""

DEFAULT_PRICES_AS_OF: Final = date(2025, 12, 1)
"""The day the built-in list prices were last checked against the providers' pricing pages."""


def _check_rate(name: str, value: object) -> None:
    # bool subclasses int, but `input_per_million=True` is a mistake, not a price.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"ModelPrice.{name} must be a number of dollars per million tokens, "
            f"got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"ModelPrice.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrice:
    """The list price of one model, in US dollars per million tokens.

    Args:
        input_per_million: price of an input (prompt) token that was not served from a cache.
        output_per_million: price of an output token (reasoning/thinking tokens included).
        cached_input_per_million: price of an input token read from the provider's prompt
            cache; ``None`` (the default) charges cached tokens at the input price, for models
            without a cache discount. Must not exceed ``input_per_million``.
        batch_multiplier: factor applied to every rate when the attempt ran through the
            provider's batch API; ``0.5`` (the default) is the 50% batch discount of OpenAI,
            Anthropic and Gemini, ``1.0`` means no discount. In ``(0, 1]``.
        as_of: the day this price was read from the provider, if known.

    Raises:
        TypeError: if a rate or the multiplier is not a number (``bool`` is rejected), or
            ``as_of`` is neither ``None`` nor a ``datetime.date``.
        ValueError: if a rate is negative, NaN or infinite, the cached rate exceeds the input
            rate, or ``batch_multiplier`` is outside ``(0, 1]``.
    """

    input_per_million: float
    output_per_million: float
    cached_input_per_million: float | None = None
    batch_multiplier: float = 0.5
    as_of: date | None = None

    def __post_init__(self) -> None:
        _check_rate("input_per_million", self.input_per_million)
        _check_rate("output_per_million", self.output_per_million)
        if self.cached_input_per_million is not None:
            _check_rate("cached_input_per_million", self.cached_input_per_million)
            if self.cached_input_per_million > self.input_per_million:
                raise ValueError(
                    "ModelPrice.cached_input_per_million must be <= input_per_million, got "
                    f"cached_input_per_million={self.cached_input_per_million!r} and "
                    f"input_per_million={self.input_per_million!r}"
                )
        multiplier = self.batch_multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, int | float):
            raise TypeError(
                f"ModelPrice.batch_multiplier must be a number in (0, 1], "
                f"got {type(multiplier).__name__} {multiplier!r}"
            )
        if not 0 < multiplier <= 1:  # NaN fails both comparisons
            raise ValueError(
                f"ModelPrice.batch_multiplier must be in (0, 1] (0.5 halves the price in "
                f"batch mode, 1.0 means no discount), got {multiplier!r}"
            )
        if self.as_of is not None and not isinstance(self.as_of, date):
            raise TypeError(
                f"ModelPrice.as_of must be a datetime.date or None, "
                f"got {type(self.as_of).__name__} {self.as_of!r}"
            )

    def cost(self, usage: TokenUsage, *, batch: bool = False) -> float:
        """The dollars one attempt with this usage costs at this price.

        ``input_tokens`` counts every input token; the ``cached_input_tokens`` among them are
        charged at the cached rate and the rest at the input rate. Tokens that
        ``total_tokens`` counts beyond ``input_tokens + output_tokens`` (Gemini's thinking
        tokens, which it leaves out of its output count) are charged at the output rate.
        Missing keys count as 0.

        Args:
            usage: the token counts of the attempt.
            batch: the attempt ran through the provider's batch API (applies
                ``batch_multiplier``).

        Returns:
            The cost in US dollars (>= 0).

        Raises:
            TypeError: if a count is not an ``int`` (``bool`` is rejected).
            ValueError: if a count is negative, or ``cached_input_tokens`` exceeds
                ``input_tokens``.
        """
        input_tokens = _count(usage, "input_tokens")
        output_tokens = _count(usage, "output_tokens")
        cached = _count(usage, "cached_input_tokens")
        total = _count(usage, "total_tokens")
        if cached > input_tokens:
            raise ValueError(
                f"usage has cached_input_tokens={cached} > input_tokens={input_tokens}; "
                "input_tokens must count every input token, cached ones included"
            )
        cached_rate = self.cached_input_per_million
        if cached_rate is None:
            cached_rate = self.input_per_million
        billed_output = max(output_tokens, total - input_tokens)
        dollars = (
            (input_tokens - cached) * self.input_per_million
            + cached * cached_rate
            + billed_output * self.output_per_million
        ) / _TOKENS_PER_UNIT
        return dollars * self.batch_multiplier if batch else dollars


def _count(usage: TokenUsage, key: str) -> int:
    value: object = cast("Mapping[str, object]", usage).get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"usage[{key!r}] must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"usage[{key!r}] must be >= 0, got {value!r}")
    return value


class UnknownModelPriceError(KeyError):
    """The price table has no entry that matches a model id.

    A ``KeyError`` (so also a ``LookupError``) whose message names the model, the closest
    known models and how to add a price.

    Attributes:
        model: the model id as given.
        suggestions: the closest model names the table knows (possibly empty).
        as_of: the table's date, if it has one.
    """

    def __init__(
        self, model: str, suggestions: tuple[str, ...] = (), as_of: date | None = None
    ) -> None:
        self.model = model
        self.suggestions = suggestions
        self.as_of = as_of
        super().__init__(model)

    def __str__(self) -> str:
        dated = f" (list prices as of {self.as_of.isoformat()})" if self.as_of else ""
        closest = (
            f"; closest known: {', '.join(repr(s) for s in self.suggestions)}"
            if self.suggestions
            else ""
        )
        return (
            f"no price for model {self.model!r} in the price table{dated}{closest}. Add one: "
            f"PriceTable.default().with_prices({{{self.model!r}: ModelPrice("
            "input_per_million=..., output_per_million=..., cached_input_per_million=...)})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.model, self.suggestions, self.as_of))


# "openai:gpt-4o", "google-gla:gemini-2.5-flash", "vertex_ai:...": a provider name without
# digits, so that a versioned id such as "...-v1:0" is left alone.
_PROVIDER_PREFIX = re.compile(r"^[a-z][a-z_-]*:")
_SEGMENT = re.compile(r"[-@_.]")


def _normalize(model: object, *, what: str) -> str:
    if not isinstance(model, str):
        raise TypeError(f"{what} must be a str, got {type(model).__name__} {model!r}")
    name = model.strip().lower()
    name = name.rsplit("/", 1)[-1]  # "models/gemini-2.5-flash", "openai/gpt-4o"
    name = _PROVIDER_PREFIX.sub("", name, count=1).strip()
    if not name:
        raise ValueError(f"{what} must be a non-empty model name, got {model!r}")
    return name


_ALIAS_WORDS = frozenset({"latest", "preview", "exp"})
"""Words that may follow a model's name and still mean that model (``claude-3-5-haiku-latest``)."""


def _is_variant_of(name: str, key: str) -> bool:
    """``name`` is ``key`` itself or a dated/aliased id of it, not a different version.

    ``gpt-4o-2024-08-06`` and ``claude-sonnet-4-5@20250929`` are variants of ``gpt-4o`` and
    ``claude-sonnet-4-5``; ``gpt-5.1`` is not one of ``gpt-5`` (no separator) and
    ``claude-opus-4-6`` is not one of ``claude-opus-4`` (a short number names another version),
    nor ``gpt-4o-minii`` one of ``gpt-4o`` (only a date, a snapshot number or an alias word such
    as ``latest`` may follow the name).
    """
    if name == key:
        return True
    if not name.startswith(key):
        return False
    rest = name[len(key) :]
    if rest[0] not in "-@_":
        return False
    first = _SEGMENT.split(rest[1:], maxsplit=1)[0]
    if first.isdigit():
        return len(first) > 2  # a date or snapshot number; 1-2 digits name another version
    # A word after the name is an alias only when it is one of these: anything else (a typo
    # such as "gpt-4o-minii", or a different product such as "gpt-4o-search-preview") must not
    # be priced silently as the base model.
    return first in _ALIAS_WORDS


class PriceTable:
    """Dated list prices per model, and the cost of one attempt.

    Model ids are matched case-insensitively after dropping a provider prefix (``openai:``,
    ``anthropic/``, ``models/``); a dated or suffixed id matches its base entry
    (``gpt-4o-2024-08-06`` → ``gpt-4o``, ``claude-sonnet-4-5-20250929`` →
    ``claude-sonnet-4-5``) and the longest matching entry wins (``gpt-4o-mini`` over
    ``gpt-4o``). A different version is never matched to its neighbour: ``gpt-5.1`` is not
    ``gpt-5`` and ``claude-opus-4-6`` is not ``claude-opus-4``; they need their own entry. Only a
    date, a snapshot number or ``latest``/``preview``/``exp`` may follow a base name, so a typo
    (``gpt-4o-minii``) is an unknown model, not ``gpt-4o``.

    :meth:`cost` has the signature of ``GuardrailConfig.cost_function``, so
    ``PriceTable.default().cost`` can be passed as one.

    Args:
        prices: entries by model name (a base name such as ``"gpt-4o"``, or an exact id).
        as_of: the day the list was read, if known.

    Raises:
        TypeError: if a name is not a ``str`` or a price not a :class:`ModelPrice`.
        ValueError: if a name is empty, or two names are the same after normalization.
    """

    __slots__ = ("_as_of", "_prices")

    def __init__(
        self, prices: Mapping[str, ModelPrice] | None = None, *, as_of: date | None = None
    ) -> None:
        if as_of is not None and not isinstance(as_of, date):
            raise TypeError(
                f"PriceTable as_of must be a datetime.date or None, "
                f"got {type(as_of).__name__} {as_of!r}"
            )
        self._as_of = as_of
        self._prices: Mapping[str, ModelPrice] = MappingProxyType(_entries(prices or {}))

    @classmethod
    def default(cls) -> PriceTable:
        """The built-in list prices of current OpenAI, Anthropic and Gemini models.

        Standard tier, text tokens, prompts up to 200k tokens (Gemini 2.5/3 Pro charge more
        above that), as published on :data:`DEFAULT_PRICES_AS_OF`. Prices change: check
        :attr:`as_of` and override what differs with :meth:`with_prices`.
        """
        return _DEFAULT_TABLE

    def with_prices(
        self, prices: Mapping[str, ModelPrice], *, as_of: date | None = None
    ) -> PriceTable:
        """A new table with ``prices`` added; an entry of ``prices`` replaces one of the same
        name. This table is unchanged.

        Args:
            prices: entries by model name.
            as_of: the new table's date; by default this table's.
        """
        merged = dict(self._prices)
        merged.update(_entries(prices))
        return PriceTable(merged, as_of=self._as_of if as_of is None else as_of)

    @property
    def as_of(self) -> date | None:
        """The day the list was read, if known (the built-in table's is
        :data:`DEFAULT_PRICES_AS_OF`)."""
        return self._as_of

    @property
    def entries(self) -> Mapping[str, ModelPrice]:
        """Every entry by its normalized name (read-only)."""
        return self._prices

    def match(self, model: str) -> str | None:
        """The name of the entry that prices ``model``, or ``None`` if none does.

        Raises:
            TypeError: if ``model`` is not a ``str``.
            ValueError: if ``model`` is empty.
        """
        name = _normalize(model, what="model")
        if name in self._prices:
            return name
        best: str | None = None
        for key in self._prices:
            if _is_variant_of(name, key) and (best is None or len(key) > len(best)):
                best = key
        return best

    def prices(self, model: str) -> ModelPrice:
        """The price of ``model``.

        Raises:
            UnknownModelPriceError: if no entry matches, naming the closest known models.
            TypeError: if ``model`` is not a ``str``.
            ValueError: if ``model`` is empty.
        """
        key = self.match(model)
        if key is None:
            name = _normalize(model, what="model")
            raise UnknownModelPriceError(model, _closest(name, self._prices), self._as_of)
        return self._prices[key]

    def cost(self, model: str, usage: TokenUsage, *, batch: bool = False) -> float:
        """The dollars one attempt of ``model`` with ``usage`` costs (see
        :meth:`ModelPrice.cost` for how tokens are charged).

        Args:
            model: the model id the attempt called.
            usage: the attempt's token counts.
            batch: the attempt ran through the provider's batch API.

        Raises:
            UnknownModelPriceError: if no entry matches ``model``.
            TypeError, ValueError: if ``model`` or a count in ``usage`` is invalid.
        """
        return self.prices(model).cost(usage, batch=batch)

    def __getitem__(self, model: str) -> ModelPrice:
        return self.prices(model)

    def __contains__(self, model: object) -> bool:
        if not isinstance(model, str):
            return False
        try:
            return self.match(model) is not None
        except ValueError:  # an empty name matches nothing
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        dated = self._as_of.isoformat() if self._as_of else None
        return f"PriceTable({len(self._prices)} models, as_of={dated})"


def _closest(name: str, known: Collection[str], n: int = 3) -> tuple[str, ...]:
    """Up to ``n`` known names most like ``name``: the longest shared beginning first (the same
    family, such as ``claude-opus-4-...``), then overall similarity."""

    def shared(key: str) -> int:
        return next(
            (i for i, (a, b) in enumerate(zip(name, key, strict=False)) if a != b),
            min(len(name), len(key)),
        )

    family = sorted(
        (key for key in known if shared(key) >= 3),
        key=lambda key: (-shared(key), -difflib.SequenceMatcher(None, name, key).ratio(), key),
    )
    if family:
        return tuple(family[:n])
    return tuple(difflib.get_close_matches(name, list(known), n=n, cutoff=0.6))


def _entries(prices: Mapping[str, ModelPrice]) -> dict[str, ModelPrice]:
    if not isinstance(prices, Mapping):
        raise TypeError(
            f"prices must be a mapping of model name to ModelPrice, got {type(prices).__name__}"
        )
    entries: dict[str, ModelPrice] = {}
    given: dict[str, str] = {}
    for model, price in prices.items():
        name = _normalize(model, what="price table model name")
        if not isinstance(price, ModelPrice):
            raise TypeError(
                f"the price of {model!r} must be a ModelPrice, got {type(price).__name__} {price!r}"
            )
        if name in entries:
            raise ValueError(
                f"price table model names {given[name]!r} and {model!r} are the same model "
                f"({name!r}); give it once"
            )
        entries[name] = price
        given[name] = model
    return entries


def _list(inp: float, cached: float | None, out: float) -> ModelPrice:
    return ModelPrice(
        input_per_million=inp,
        cached_input_per_million=cached,
        output_per_million=out,
        batch_multiplier=0.5,
        as_of=DEFAULT_PRICES_AS_OF,
    )


# Standard-tier text prices in dollars per million tokens: input, cached input, output.
# `None` for the cached rate: the model has no cache discount. All three providers take 50%
# off in their batch APIs. Anthropic's cache writes (1.25x input) are not in TokenUsage and are
# charged as plain input.
_DEFAULT_PRICES: Final[dict[str, ModelPrice]] = {
    # OpenAI
    "gpt-5.1": _list(1.25, 0.125, 10.00),
    "gpt-5.1-codex-mini": _list(0.25, 0.025, 2.00),
    "gpt-5": _list(1.25, 0.125, 10.00),
    "gpt-5-mini": _list(0.25, 0.025, 2.00),
    "gpt-5-nano": _list(0.05, 0.005, 0.40),
    "gpt-5-pro": _list(15.00, None, 120.00),
    "gpt-4.1": _list(2.00, 0.50, 8.00),
    "gpt-4.1-mini": _list(0.40, 0.10, 1.60),
    "gpt-4.1-nano": _list(0.10, 0.025, 0.40),
    "gpt-4o": _list(2.50, 1.25, 10.00),
    "gpt-4o-2024-05-13": _list(5.00, None, 15.00),
    "gpt-4o-mini": _list(0.15, 0.075, 0.60),
    "o1": _list(15.00, 7.50, 60.00),
    "o1-mini": _list(1.10, 0.55, 4.40),
    "o1-pro": _list(150.00, None, 600.00),
    "o3": _list(2.00, 0.50, 8.00),
    "o3-mini": _list(1.10, 0.55, 4.40),
    "o3-pro": _list(20.00, None, 80.00),
    "o3-deep-research": _list(10.00, 2.50, 40.00),
    "o4-mini": _list(1.10, 0.275, 4.40),
    "o4-mini-deep-research": _list(2.00, 0.50, 8.00),
    # Anthropic (cached input = cache reads)
    "claude-opus-4-5": _list(5.00, 0.50, 25.00),
    "claude-opus-4-1": _list(15.00, 1.50, 75.00),
    "claude-opus-4": _list(15.00, 1.50, 75.00),
    "claude-opus-4-0": _list(15.00, 1.50, 75.00),
    "claude-sonnet-4-5": _list(3.00, 0.30, 15.00),
    "claude-sonnet-4": _list(3.00, 0.30, 15.00),
    "claude-sonnet-4-0": _list(3.00, 0.30, 15.00),
    "claude-3-7-sonnet": _list(3.00, 0.30, 15.00),
    "claude-haiku-4-5": _list(1.00, 0.10, 5.00),
    "claude-3-5-haiku": _list(0.80, 0.08, 4.00),
    "claude-3-haiku": _list(0.25, 0.03, 1.25),
    # Gemini (paid tier; Pro models: prompts up to 200k tokens)
    "gemini-3-pro": _list(2.00, 0.20, 12.00),
    "gemini-2.5-pro": _list(1.25, 0.125, 10.00),
    "gemini-2.5-flash": _list(0.30, 0.03, 2.50),
    "gemini-2.5-flash-lite": _list(0.10, 0.01, 0.40),
    "gemini-2.0-flash": _list(0.10, 0.025, 0.40),
    "gemini-2.0-flash-lite": _list(0.075, None, 0.30),
}

_DEFAULT_TABLE: Final = PriceTable(_DEFAULT_PRICES, as_of=DEFAULT_PRICES_AS_OF)
