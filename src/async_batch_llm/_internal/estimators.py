"""Token estimators: a fixed characters-per-token rule and one that learns from usage.

Both are pure (no clock, no I/O) and satisfy the ``TokenEstimator`` call signature
``(prompt, *, strategy, attempt, state) -> TokenEstimate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from async_batch_llm._internal.quota_types import TokenEstimate

if TYPE_CHECKING:
    from async_batch_llm._types import RetryState

__all__ = [
    "DEFAULT_SCOPE",
    "CharacterTokenEstimator",
    "LearningEstimator",
    "prompt_characters",
    "scope_of",
]

DEFAULT_SCOPE = "default"
"""The quota scope of a strategy that declares none."""

_MAX_DEPTH = 8


def scope_of(strategy: object) -> str:
    """The strategy's ``quota_scope`` if it is a non-empty ``str``, else ``"default"``."""
    scope = getattr(strategy, "quota_scope", DEFAULT_SCOPE)
    return scope if isinstance(scope, str) and scope else DEFAULT_SCOPE


def _text_length(value: object, depth: int) -> int:
    if isinstance(value, str):
        return len(value)
    if depth >= _MAX_DEPTH:
        return 0
    if isinstance(value, Mapping):
        return sum(_text_length(part, depth + 1) for part in value.values())
    if isinstance(value, list | tuple):
        return sum(_text_length(part, depth + 1) for part in value)
    return 0


def prompt_characters(prompt: object) -> int:
    """How many characters a prompt counts as when estimating its tokens.

    A ``str`` counts its length. A list, tuple or mapping (messages, content parts) counts the
    total length of the strings inside it, nested up to 8 levels; if it holds no text at all,
    and for any other object, the length of its ``repr`` counts instead.
    """
    if isinstance(prompt, str):
        return len(prompt)
    text = _text_length(prompt, 0) if isinstance(prompt, Mapping | list | tuple) else 0
    return text if text > 0 else len(repr(prompt))


def _check_characters_per_token(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"characters_per_token must be an int or a float, got {type(value).__name__} {value!r}"
        )
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"characters_per_token must be a finite number > 0, got {value!r}")
    return float(value)


def _check_output_tokens(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"expected_output_tokens must be an int, got {type(value).__name__} {value!r}"
        )
    if value < 0:
        raise ValueError(f"expected_output_tokens must be >= 0, got {value!r}")
    return value


def _input_tokens(characters: int, characters_per_token: float) -> int:
    return max(1, math.ceil(characters / characters_per_token))


class CharacterTokenEstimator:
    """Estimate input tokens from the prompt's length and reserve a fixed output allowance.

    ``input_tokens = max(1, ceil(characters / characters_per_token))`` where ``characters`` is
    :func:`prompt_characters` of the prompt; ``output_tokens = expected_output_tokens``.

    Args:
        characters_per_token: characters per token (finite, > 0); about 4 for English text.
        expected_output_tokens: tokens reserved for each answer (>= 0).

    Raises:
        TypeError: if an argument has the wrong type (``bool`` is rejected).
        ValueError: if an argument is out of range.
    """

    __slots__ = ("characters_per_token", "expected_output_tokens")

    def __init__(
        self, characters_per_token: float = 4.0, expected_output_tokens: int = 256
    ) -> None:
        self.characters_per_token = _check_characters_per_token(characters_per_token)
        self.expected_output_tokens = _check_output_tokens(expected_output_tokens)

    def __call__(
        self,
        prompt: Any,
        *,
        strategy: object = None,
        attempt: int = 1,
        state: RetryState | None = None,
    ) -> TokenEstimate:
        """Estimate one attempt of ``prompt`` (the other arguments are ignored)."""
        characters = prompt_characters(prompt)
        return TokenEstimate(
            _input_tokens(characters, self.characters_per_token), self.expected_output_tokens
        )

    def __repr__(self) -> str:
        return (
            f"CharacterTokenEstimator(characters_per_token={self.characters_per_token!r}, "
            f"expected_output_tokens={self.expected_output_tokens!r})"
        )


@dataclass(slots=True)
class _ScopeModel:
    # Exponentially weighted averages of prompt characters and input tokens per observation;
    # their ratio is the characters per token (robust to short prompts, unlike a mean of ratios).
    characters: float
    input_tokens: float
    # What estimates use now, recomputed by each observation: characters per token and the
    # output allowance.
    cpt: float
    allowance: int
    input_observations: int = 0
    output_mean: float = 0.0
    output_deviation: float = 0.0
    output_observations: int = 0


class LearningEstimator:
    """Characters-per-token and an output allowance per quota scope, learned from usage.

    It starts like ``CharacterTokenEstimator(characters_per_token, expected_output_tokens)``.
    Each :meth:`observe` of an attempt's reported usage updates the scope's model:

    - characters per token: the ratio of exponentially weighted averages of prompt characters
      and reported ``input_tokens``. Template and system-prompt tokens count against the
      prompt, which errs toward over-estimating.
    - output allowance: an exponentially weighted mean of reported ``output_tokens`` plus
      ``output_deviations`` times their weighted mean absolute deviation, so the reservation
      sits above most answers and rarely undershoots.

    The first observations are averaged evenly (weight ``1/n``); from ``1/smoothing``
    observations on each new one has weight ``smoothing``, so the model follows drift.

    Args:
        characters_per_token: the starting characters per token (finite, > 0).
        expected_output_tokens: the starting output allowance (>= 0).
        smoothing: the weight of a new observation once warmed up (0 < smoothing <= 1).
        output_deviations: how many mean absolute deviations the allowance adds (>= 0).

    Raises:
        TypeError / ValueError: if an argument is of the wrong type or out of range.
    """

    def __init__(
        self,
        characters_per_token: float = 4.0,
        expected_output_tokens: int = 256,
        *,
        smoothing: float = 0.1,
        output_deviations: float = 2.0,
    ) -> None:
        self._initial_cpt = _check_characters_per_token(characters_per_token)
        self._initial_output = _check_output_tokens(expected_output_tokens)
        if not (isinstance(smoothing, int | float) and 0 < smoothing <= 1):
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing!r}")
        if not (
            isinstance(output_deviations, int | float)
            and math.isfinite(output_deviations)
            and output_deviations >= 0
        ):
            raise ValueError(
                f"output_deviations must be a finite number >= 0, got {output_deviations!r}"
            )
        self._smoothing = float(smoothing)
        # From this many observations on, 1/n is below smoothing (and a deviation exists).
        self._warm = max(2, math.ceil(1.0 / self._smoothing) + 1)
        self._deviations = float(output_deviations)
        self._scopes: dict[str, _ScopeModel] = {}

    def characters_per_token(self, scope: str) -> float:
        """The scope's current characters per token."""
        model = self._scopes.get(scope)
        return self._initial_cpt if model is None else model.cpt

    def output_allowance(self, scope: str) -> int:
        """The output tokens currently reserved for each attempt of the scope."""
        model = self._scopes.get(scope)
        return self._initial_output if model is None else model.allowance

    def estimate(self, scope: str, prompt: object) -> TokenEstimate:
        """The estimate of one attempt of ``prompt`` in ``scope``."""
        return self.estimate_characters(scope, prompt_characters(prompt))

    def estimate_characters(self, scope: str, characters: int) -> TokenEstimate:
        """The estimate of one attempt of a prompt of ``characters`` characters in ``scope``."""
        return TokenEstimate(*self.estimate_counts(scope, characters))

    def estimate_counts(self, scope: str, characters: int) -> tuple[int, int]:
        """:meth:`estimate_characters` as ``(input_tokens, output_tokens)``."""
        model = self._scopes.get(scope)
        if model is None:
            cpt, allowance = self._initial_cpt, self._initial_output
        else:
            cpt, allowance = model.cpt, model.allowance
        input_tokens = math.ceil(characters / cpt)
        return (input_tokens if input_tokens > 1 else 1), allowance

    def __call__(
        self,
        prompt: Any,
        *,
        strategy: object = None,
        attempt: int = 1,
        state: RetryState | None = None,
    ) -> TokenEstimate:
        """Estimate one attempt in the strategy's quota scope (``"default"`` without one)."""
        return self.estimate(scope_of(strategy), prompt)

    def observe(self, scope: str, prompt_chars: int, usage: Mapping[str, int] | None) -> None:
        """Learn from the usage one attempt of ``prompt_chars`` characters reported.

        Missing, non-int or negative figures are ignored; ``input_tokens`` teaches the
        characters per token only when both it and ``prompt_chars`` are > 0.
        """
        if not usage:
            return
        model = self._scopes.get(scope)
        if model is None:
            model = self._scopes[scope] = _ScopeModel(
                self._initial_cpt, 1.0, self._initial_cpt, self._initial_output
            )
        smoothing = self._smoothing
        warm = self._warm  # observations from which on each weighs ``smoothing``
        input_tokens: Any = usage.get("input_tokens")
        if (
            (type(input_tokens) is int or _is_count(input_tokens))
            and input_tokens > 0
            and prompt_chars > 0
        ):
            observations = model.input_observations
            if observations < warm:  # once warm, 1/n stays below smoothing: stop counting
                model.input_observations = observations = observations + 1
            weight = 1.0 / observations
            if weight < smoothing:
                weight = smoothing
            model.characters = characters = model.characters + weight * (
                prompt_chars - model.characters
            )
            model.input_tokens = tokens = model.input_tokens + weight * (
                input_tokens - model.input_tokens
            )
            model.cpt = characters / tokens
        output_tokens: Any = usage.get("output_tokens")
        if output_tokens >= 0 if type(output_tokens) is int else _is_count(output_tokens):
            observations = model.output_observations
            if observations < warm:
                model.output_observations = observations = observations + 1
            weight = 1.0 / observations
            if weight < smoothing:
                weight = smoothing
            mean = model.output_mean
            error = output_tokens - mean
            model.output_mean = mean = mean + weight * error
            deviation = model.output_deviation
            if observations > 1:
                model.output_deviation = deviation = deviation + weight * (abs(error) - deviation)
            model.allowance = math.ceil(mean + self._deviations * deviation)

    def __repr__(self) -> str:
        scopes = ", ".join(
            f"{scope!r}: {self.characters_per_token(scope):.3g} chars/token, "
            f"{self.output_allowance(scope)} output"
            for scope in self._scopes
        )
        return f"LearningEstimator({{{scopes}}})"


def _is_count(value: object) -> TypeGuard[int]:
    if type(value) is int:
        return value >= 0
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
