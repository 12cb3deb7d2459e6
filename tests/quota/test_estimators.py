"""Token estimators: the fixed characters-per-token rule and the learning one."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_batch_llm._internal.estimators import (
    CharacterTokenEstimator,
    LearningEstimator,
    prompt_characters,
    scope_of,
)
from async_batch_llm._internal.quota_types import TokenEstimate


class Scoped:
    quota_scope = "openai:gpt-x"


@pytest.mark.parametrize(
    ("prompt", "characters"),
    [
        ("abcd", 4),
        ("", 0),
        (["ab", "cde"], 5),
        ({"role": "user", "content": "hello"}, 9),
        ([{"role": "user", "content": ["hi", {"text": "there"}]}], 11),
        ((1, 2), len(repr((1, 2)))),
        (12345, 5),
        (b"bytes", len(repr(b"bytes"))),
    ],
    ids=["str", "empty", "list", "message", "nested", "no-text", "int", "bytes"],
)
def test_prompt_characters(prompt: object, characters: int) -> None:
    assert prompt_characters(prompt) == characters


@given(text=st.text(max_size=500), cpt=st.floats(min_value=0.1, max_value=20.0))
def test_character_estimate_is_ceil_of_length_over_cpt_and_at_least_one(
    text: str, cpt: float
) -> None:
    estimate = CharacterTokenEstimator(cpt, 7)(text, strategy=None, attempt=1, state=None)
    assert estimate == TokenEstimate(max(1, math.ceil(len(text) / cpt)), 7)


def test_character_estimator_defaults() -> None:
    estimator = CharacterTokenEstimator()
    assert estimator("x" * 401) == TokenEstimate(101, 256)
    assert repr(estimator) == (
        "CharacterTokenEstimator(characters_per_token=4.0, expected_output_tokens=256)"
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"characters_per_token": 0}, ValueError, "characters_per_token must be a finite"),
        ({"characters_per_token": math.nan}, ValueError, "characters_per_token must be a finite"),
        ({"characters_per_token": True}, TypeError, "characters_per_token must be an int or"),
        ({"expected_output_tokens": -1}, ValueError, "expected_output_tokens must be >= 0"),
        ({"expected_output_tokens": 2.5}, TypeError, "expected_output_tokens must be an int"),
    ],
)
def test_character_estimator_validates(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{message}"):
        CharacterTokenEstimator(**kwargs)


def test_scope_of_reads_quota_scope_or_defaults() -> None:
    assert scope_of(Scoped()) == "openai:gpt-x"
    assert scope_of(object()) == "default"
    assert scope_of(None) == "default"


def test_learning_estimator_starts_like_the_character_estimator() -> None:
    estimator = LearningEstimator()
    assert estimator("x" * 400, strategy=Scoped(), attempt=1, state=None) == TokenEstimate(100, 256)


@pytest.mark.parametrize("true_cpt", [2.5, 3.3, 6.0])
def test_learning_estimator_converges_to_the_observed_ratio(true_cpt: float) -> None:
    rng = random.Random(7)
    estimator = LearningEstimator()
    for _ in range(200):
        chars = rng.randint(200, 4000)
        tokens = round(chars / true_cpt * rng.uniform(0.95, 1.05))
        output = rng.randint(80, 120)
        estimator.observe("s", chars, {"input_tokens": tokens, "output_tokens": output})
    assert estimator.characters_per_token("s") == pytest.approx(true_cpt, rel=0.10)
    prompt = "y" * 3000
    assert estimator.estimate("s", prompt).input_tokens == pytest.approx(3000 / true_cpt, rel=0.10)
    # The output allowance sits at or above most observed answers (80..120), not far above.
    allowance = estimator.output_allowance("s")
    assert 110 <= allowance <= 180


def test_learning_estimator_output_allowance_rarely_undershoots() -> None:
    rng = random.Random(3)
    estimator = LearningEstimator()
    outputs = [max(0, round(rng.gauss(500, 100))) for _ in range(400)]
    undershoots = 0
    for index, output in enumerate(outputs):
        if index >= 50 and estimator.output_allowance("s") < output:
            undershoots += 1
        estimator.observe("s", 100, {"output_tokens": output})
    assert undershoots / 350 < 0.10


def test_learning_estimator_keeps_scopes_apart_and_ignores_bad_usage() -> None:
    estimator = LearningEstimator()
    estimator.observe("a", 1000, {"input_tokens": 500, "output_tokens": 10})
    estimator.observe("b", 1000, None)
    estimator.observe("b", 0, {"input_tokens": 100})
    estimator.observe("b", 1000, {"input_tokens": 0})
    assert estimator.characters_per_token("a") == 2.0
    assert estimator.output_allowance("a") == 10
    assert estimator.characters_per_token("b") == 4.0
    assert estimator.output_allowance("b") == 256
    assert estimator("x" * 100, strategy=None, attempt=1, state=None) == TokenEstimate(25, 256)
    assert "'a': 2 chars/token, 10 output" in repr(estimator)


def test_learning_estimator_follows_drift() -> None:
    estimator = LearningEstimator()
    for _ in range(100):
        estimator.observe("s", 1000, {"input_tokens": 250})
    for _ in range(100):
        estimator.observe("s", 1000, {"input_tokens": 500})
    assert estimator.characters_per_token("s") == pytest.approx(2.0, rel=0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"smoothing": 0.0}, "smoothing must be in"),
        ({"smoothing": 1.5}, "smoothing must be in"),
        ({"output_deviations": -1.0}, "output_deviations must be a finite number >= 0"),
    ],
)
def test_learning_estimator_validates(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        LearningEstimator(**kwargs)


@given(
    st.floats(min_value=0.01, max_value=1.0),
    st.lists(st.tuples(st.integers(1, 5_000), st.integers(1, 2_000), st.integers(0, 4_000))),
)
def test_learning_estimator_is_the_documented_weighted_averages(
    smoothing: float, observations: list[tuple[int, int, int]]
) -> None:
    # The model the docstring describes, written plainly: weight max(1/n, smoothing) for the
    # n-th observation; the deviation moves from the second output observation on.
    estimator = LearningEstimator(4.0, 256, smoothing=smoothing, output_deviations=2.0)
    characters, tokens, mean, deviation = 4.0, 1.0, 0.0, 0.0
    for n, (chars, input_tokens, output_tokens) in enumerate(observations, start=1):
        estimator.observe(
            "s", chars, {"input_tokens": input_tokens, "output_tokens": output_tokens}
        )
        weight = max(1.0 / n, smoothing)
        characters += weight * (chars - characters)
        tokens += weight * (input_tokens - tokens)
        error = output_tokens - mean
        mean += weight * error
        if n > 1:
            deviation += weight * (abs(error) - deviation)
        assert estimator.characters_per_token("s") == pytest.approx(characters / tokens)
        assert estimator.output_allowance("s") == math.ceil(mean + 2.0 * deviation)
