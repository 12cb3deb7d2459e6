"""PriceTable and ModelPrice: arithmetic, model-id matching, overrides and bad input."""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_batch_llm import TokenUsage
from async_batch_llm._internal.pricing import DEFAULT_PRICES_AS_OF
from async_batch_llm.core import ModelPrice, PriceTable, UnknownModelPriceError

GPT_4O = ModelPrice(input_per_million=2.5, cached_input_per_million=1.25, output_per_million=10)


def usage(**counts: int) -> TokenUsage:
    return cast(TokenUsage, dict(counts))  # the tests build any key set, bad values included


# --- arithmetic -------------------------------------------------------------------------------
# The rates below are exact binary fractions and the token sums exact integers, so the one
# rounding is the final division by 1e6, the same one the literal on the right undergoes.


def test_uncached_input_and_output_are_charged_at_their_rates() -> None:
    cost = GPT_4O.cost(usage(input_tokens=1000, output_tokens=500, total_tokens=1500))
    assert cost == (1000 * 2.5 + 500 * 10) / 1e6 == 0.0075


def test_cached_input_tokens_are_charged_at_the_cached_rate_and_the_rest_at_the_input_rate() -> (
    None
):
    cost = GPT_4O.cost(usage(input_tokens=1000, cached_input_tokens=400, output_tokens=500))
    assert cost == (600 * 2.5 + 400 * 1.25 + 500 * 10) / 1e6 == 0.007


def test_batch_applies_the_multiplier_to_every_rate() -> None:
    counts = usage(input_tokens=1000, cached_input_tokens=400, output_tokens=500)
    assert GPT_4O.cost(counts, batch=True) == 0.0035
    third = ModelPrice(input_per_million=3, output_per_million=3, batch_multiplier=0.25)
    assert third.cost(usage(input_tokens=1_000_000), batch=True) == 0.75
    assert third.cost(usage(input_tokens=1_000_000)) == 3.0


def test_without_a_cached_rate_cached_tokens_cost_the_input_rate() -> None:
    price = ModelPrice(input_per_million=5, output_per_million=15)
    assert price.cached_input_per_million is None
    cached = price.cost(usage(input_tokens=1000, cached_input_tokens=1000))
    assert cached == price.cost(usage(input_tokens=1000)) == 0.005


def test_tokens_in_the_total_beyond_input_and_output_are_charged_as_output() -> None:
    # Gemini leaves thinking tokens out of candidates_token_count but counts them in the total.
    price = ModelPrice(input_per_million=0.25, output_per_million=2.5)
    thinking = price.cost(usage(input_tokens=100, output_tokens=50, total_tokens=1150))
    assert thinking == (100 * 0.25 + 1050 * 2.5) / 1e6
    # A total smaller than input + output (a strategy that reports it otherwise) is ignored.
    assert price.cost(usage(input_tokens=100, output_tokens=50, total_tokens=10)) == (
        (100 * 0.25 + 50 * 2.5) / 1e6
    )


def test_missing_counts_are_zero() -> None:
    assert GPT_4O.cost(usage()) == 0.0
    assert GPT_4O.cost(usage(output_tokens=1_000_000)) == 10.0


def test_table_cost_equals_the_entry_cost_and_honours_batch() -> None:
    table = PriceTable.default()
    counts = usage(input_tokens=12_345, cached_input_tokens=2_000, output_tokens=678)
    entry = table.prices("gpt-4o")
    assert table.cost("gpt-4o", counts) == entry.cost(counts)
    assert table.cost("gpt-4o", counts, batch=True) == entry.cost(counts) * 0.5


def test_default_cost_is_a_valid_cost_function() -> None:
    cost_function: Callable[[str, TokenUsage], float] = PriceTable.default().cost
    dollars = cost_function("claude-sonnet-4-5", usage(input_tokens=1_000_000))
    assert dollars == 3.0


# --- model-id matching ------------------------------------------------------------------------

MATCHES = [
    ("gpt-4o", "gpt-4o"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("GPT-4.1-Mini", "gpt-4.1-mini"),
    ("gpt-4.1-2025-04-14", "gpt-4.1"),
    ("gpt-5-2025-08-07", "gpt-5"),
    ("gpt-5.1", "gpt-5.1"),
    ("o3-mini", "o3-mini"),
    ("o3-2025-04-16", "o3"),
    ("o4-mini-2025-04-16", "o4-mini"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4"),
    ("claude-sonnet-4-0", "claude-sonnet-4-0"),
    ("claude-opus-4-1-20250805", "claude-opus-4-1"),
    ("claude-opus-4-5-20251101", "claude-opus-4-5"),
    ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
    ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ("openai:gpt-4o", "gpt-4o"),
    ("anthropic:claude-3-7-sonnet-20250219", "claude-3-7-sonnet"),
    ("openai/gpt-4.1-nano", "gpt-4.1-nano"),
    ("models/gemini-2.5-flash", "gemini-2.5-flash"),
    ("google-gla:gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
    ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
    ("gemini-2.0-flash-001", "gemini-2.0-flash"),
    ("gemini-3-pro-preview", "gemini-3-pro"),
    ("  Gemini-2.5-Pro  ", "gemini-2.5-pro"),
]


@pytest.mark.parametrize(("model", "entry"), MATCHES, ids=[m for m, _ in MATCHES])
def test_model_ids_match_their_entry_longest_prefix_first(model: str, entry: str) -> None:
    table = PriceTable.default()
    assert table.match(model) == entry
    assert model in table
    assert table.prices(model) is table.entries[entry]
    assert table[model] is table.entries[entry]


NO_MATCH = [
    "gpt-5.2",  # another version, not gpt-5 with a suffix
    "gpt-4",  # a legacy model the list leaves out, not a prefix of gpt-4o
    "gpt-4o1",  # no separator after the entry's name
    "claude-opus-4-6",  # a short number after the name is another version
    "claude-sonnet-5",
    "gemini-1.5-pro",
    "llama-3-70b",
]


@pytest.mark.parametrize("model", NO_MATCH)
def test_other_versions_never_match_a_neighbouring_entry(model: str) -> None:
    table = PriceTable.default()
    assert table.match(model) is None
    assert model not in table
    with pytest.raises(UnknownModelPriceError):
        table.prices(model)


def test_contains_is_false_for_non_strings_and_empty_names() -> None:
    table = PriceTable.default()
    assert 42 not in table
    assert "" not in table
    assert "openai:" not in table


# --- the default table ------------------------------------------------------------------------


def test_default_table_is_dated_and_covers_the_three_providers() -> None:
    table = PriceTable.default()
    assert table.as_of == date(2025, 12, 1)
    assert PriceTable.default() is table
    for model in (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o3",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "claude-opus-4-5",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "gemini-2.0-flash",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.5-pro",
    ):
        assert model in table.entries
    assert repr(table) == f"PriceTable({len(table)} models, as_of=2025-12-01)"


@pytest.mark.parametrize("model", list(PriceTable.default()))
def test_every_default_entry_is_valid_and_non_negative(model: str) -> None:
    price = PriceTable.default().entries[model]
    assert model == model.strip().lower()
    assert PriceTable.default().match(model) == model  # no entry is shadowed by another
    rates = [price.input_per_million, price.output_per_million]
    if price.cached_input_per_million is not None:
        rates.append(price.cached_input_per_million)
        assert price.cached_input_per_million <= price.input_per_million
    assert all(math.isfinite(rate) and rate >= 0 for rate in rates)
    assert price.output_per_million >= price.input_per_million  # output never costs less
    assert price.batch_multiplier == 0.5
    assert price.as_of == date(2025, 12, 1)
    # Re-validating the entry through the constructor accepts it.
    assert (
        ModelPrice(
            input_per_million=price.input_per_million,
            output_per_million=price.output_per_million,
            cached_input_per_million=price.cached_input_per_million,
            batch_multiplier=price.batch_multiplier,
            as_of=price.as_of,
        )
        == price
    )


def test_a_few_list_prices() -> None:
    table = PriceTable.default()
    million_each = usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert table.cost("gpt-4o-mini", million_each) == pytest.approx(0.75)
    assert table.cost("claude-opus-4-5-20251101", million_each) == pytest.approx(30.0)
    assert table.cost("claude-opus-4-1", million_each) == pytest.approx(90.0)
    assert table.cost("gemini-2.5-flash", million_each) == pytest.approx(2.80)
    assert table.cost("gpt-5", million_each, batch=True) == pytest.approx(5.625)


# --- overrides --------------------------------------------------------------------------------


def test_user_entries_override_the_default_and_leave_it_unchanged() -> None:
    default = PriceTable.default()
    mine = ModelPrice(input_per_million=1, output_per_million=2, as_of=date(2026, 12, 7))
    table = default.with_prices({"GPT-4o": mine, "my-finetune": mine})
    assert table.prices("gpt-4o-2024-08-06") is mine
    assert table.prices("my-finetune-20261207") is mine
    assert table.match("my-finetune-v2") is None  # another version needs its own entry
    assert table.prices("gpt-4o-mini") is default.prices("gpt-4o-mini")
    assert default.prices("gpt-4o").cost(usage(input_tokens=1)) == GPT_4O.cost(
        usage(input_tokens=1)
    )
    assert len(table) == len(default) + 1
    assert table.as_of == default.as_of
    assert table.with_prices({}, as_of=date(2026, 1, 1)).as_of == date(2026, 1, 1)


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("gpt-4o-minii", None),  # a typo is unknown, not gpt-4o
        ("gpt-4o-mimi", None),
        ("gpt-4o-search-preview", None),  # another product, not gpt-4o
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ],
)
def test_only_a_date_a_snapshot_or_an_alias_word_may_follow_a_name(
    model: str, entry: str | None
) -> None:
    assert PriceTable.default().match(model) == entry


def test_a_user_entry_for_an_exact_id_beats_the_base_entry() -> None:
    pinned = ModelPrice(input_per_million=9, output_per_million=9)
    table = PriceTable.default().with_prices({"gpt-4o-2024-11-20": pinned})
    assert table.prices("gpt-4o-2024-11-20") is pinned
    assert table.prices("gpt-4o-2024-08-06") is PriceTable.default().prices("gpt-4o")


def test_a_table_built_from_entries_alone_knows_only_those() -> None:
    table = PriceTable({"local-llm": ModelPrice(input_per_million=0, output_per_million=0)})
    assert table.as_of is None
    assert list(table) == ["local-llm"]
    assert table.cost("local-llm", usage(input_tokens=10**9, output_tokens=10**9)) == 0.0
    assert "gpt-4o" not in table
    assert repr(table) == "PriceTable(1 models, as_of=None)"


# --- errors -----------------------------------------------------------------------------------


def test_unknown_model_error_names_the_model_the_closest_ones_and_the_fix() -> None:
    table = PriceTable.default()
    with pytest.raises(UnknownModelPriceError) as caught:
        table.cost("gpt-4.5-preview", usage(input_tokens=1))
    error = caught.value
    assert isinstance(error, KeyError)
    assert isinstance(error, LookupError)
    assert error.model == "gpt-4.5-preview"
    assert sorted(error.suggestions) == ["gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"]
    message = str(error)
    assert "'gpt-4.5-preview'" in message
    assert "2025-12-01" in message
    assert "'gpt-4.1'" in message
    assert "with_prices({'gpt-4.5-preview': ModelPrice(" in message
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == message


def test_unknown_model_error_without_suggestions_or_date() -> None:
    table = PriceTable({"a-model": ModelPrice(input_per_million=1, output_per_million=1)})
    with pytest.raises(UnknownModelPriceError) as caught:
        table.prices("zzzz")
    assert caught.value.suggestions == ()
    assert "closest" not in str(caught.value)
    assert "as of" not in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("input_per_million", -1.0, ValueError),
        ("input_per_million", math.nan, ValueError),
        ("output_per_million", math.inf, ValueError),
        ("output_per_million", "10", TypeError),
        ("input_per_million", True, TypeError),
        ("cached_input_per_million", -0.5, ValueError),
        ("cached_input_per_million", 3.0, ValueError),  # above the input rate
        ("cached_input_per_million", None, None),
        ("batch_multiplier", 0.0, ValueError),
        ("batch_multiplier", 1.5, ValueError),
        ("batch_multiplier", -0.5, ValueError),
        ("batch_multiplier", math.nan, ValueError),
        ("batch_multiplier", "half", TypeError),
        ("batch_multiplier", 1, None),
        ("as_of", "2025-12-01", TypeError),
    ],
    ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__,
)
def test_bad_prices_are_refused_naming_the_field(
    field: str, value: Any, error: type[Exception] | None
) -> None:
    kwargs: dict[str, Any] = {"input_per_million": 2.0, "output_per_million": 8.0, field: value}
    if error is None:
        ModelPrice(**kwargs)
        return
    with pytest.raises(error, match=f"ModelPrice.{field}"):
        ModelPrice(**kwargs)


def test_prices_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ModelPrice(2.0, 8.0)  # type: ignore[call-arg]  # positional rates are refused


@pytest.mark.parametrize(
    ("prices", "error", "match"),
    [
        ({"": GPT_4O}, ValueError, "non-empty model name"),
        ({"openai:": GPT_4O}, ValueError, "non-empty model name"),
        ({3: GPT_4O}, TypeError, "model name must be a str"),
        ({"x": {"input_per_million": 1}}, TypeError, "price of 'x' must be a ModelPrice"),
        ({"gpt-x": GPT_4O, "GPT-X ": GPT_4O}, ValueError, "same model"),
        ([("x", GPT_4O)], TypeError, "mapping of model name to ModelPrice"),
    ],
    ids=["empty", "only-prefix", "not-str", "not-price", "duplicate", "not-mapping"],
)
def test_bad_tables_are_refused(prices: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        PriceTable(prices)
    with pytest.raises(error, match=match):
        PriceTable.default().with_prices(prices)


def test_bad_table_date_is_refused() -> None:
    with pytest.raises(TypeError, match="as_of"):
        PriceTable({}, as_of="2025-12-01")  # type: ignore[arg-type]  # a str is refused


@pytest.mark.parametrize(
    ("model", "error"), [("", ValueError), ("   ", ValueError), (None, TypeError)]
)
def test_bad_model_names_are_refused(model: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="model must be"):
        PriceTable.default().cost(model, usage(input_tokens=1))


@pytest.mark.parametrize(
    ("counts", "error", "match"),
    [
        ({"input_tokens": -1}, ValueError, r"usage\['input_tokens'\] must be >= 0"),
        ({"output_tokens": 1.5}, TypeError, r"usage\['output_tokens'\] must be an int"),
        ({"total_tokens": True}, TypeError, r"usage\['total_tokens'\] must be an int"),
        (
            {"input_tokens": 10, "cached_input_tokens": 11},
            ValueError,
            "cached_input_tokens=11 > input_tokens=10",
        ),
    ],
    ids=["negative", "float", "bool", "cached-above-input"],
)
def test_bad_usage_is_refused_naming_the_count(
    counts: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        PriceTable.default().cost("gpt-4o", usage(**counts))


# --- properties -------------------------------------------------------------------------------

rates = st.floats(min_value=0, max_value=1000, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=10**9)


@st.composite
def model_prices(draw: st.DrawFn) -> ModelPrice:
    input_rate = draw(rates)
    cached = draw(st.none() | st.floats(min_value=0, max_value=input_rate))
    return ModelPrice(
        input_per_million=input_rate,
        output_per_million=draw(rates),
        cached_input_per_million=cached,
        batch_multiplier=draw(st.floats(min_value=1e-6, max_value=1.0)),
    )


def _usage(uncached: int, cached: int, output: int, extra: int) -> TokenUsage:
    # `extra`: tokens the total counts beyond input and output (Gemini's thinking tokens).
    return {
        "input_tokens": uncached + cached,
        "cached_input_tokens": cached,
        "output_tokens": output,
        "total_tokens": uncached + cached + output + extra,
    }


@settings(max_examples=300, deadline=None)
@given(
    price=model_prices(),
    base=st.tuples(counts, counts, counts, counts),
    which=st.integers(min_value=0, max_value=3),
    more=st.integers(min_value=1, max_value=10**6),
    batch=st.booleans(),
)
def test_cost_is_monotone_in_each_token_count(
    price: ModelPrice, base: tuple[int, int, int, int], which: int, more: int, batch: bool
) -> None:
    grown = list(base)
    grown[which] += more
    before = price.cost(_usage(*base), batch=batch)
    after = price.cost(_usage(*grown), batch=batch)
    assert 0 <= before <= after
    assert price.cost(_usage(*base), batch=True) <= price.cost(_usage(*base))


def test_the_docs_list_every_default_price() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "pricing.md").read_text("utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| ([\d.]+) \| ([\d.]+|—) \| ([\d.]+) \|$", page, re.M)
    documented = {
        name: (float(inp), None if cached == "—" else float(cached), float(out))
        for name, inp, cached, out in rows
    }
    expected = {
        name: (p.input_per_million, p.cached_input_per_million, p.output_per_million)
        for name, p in PriceTable.default().entries.items()
    }
    assert documented == expected
    assert f"`PriceTable.default().as_of` is **{DEFAULT_PRICES_AS_OF.isoformat()}**" in page
