"""Test doubles for code that uses async-batch-llm: a fake agent and its strategy.

:class:`~async_batch_llm.testing.clock.FakeClock` (virtual time) lives in
:mod:`async_batch_llm.testing.clock`.
"""

from async_batch_llm.testing.mocks import MockAgent, MockResult
from async_batch_llm.testing.strategies import mock_strategy

__all__ = ["MockAgent", "MockResult", "mock_strategy"]
