"""RayQuotaBackend: the QuotaBackend semantics (the same checks as the in-process and Redis
backends), and a clear error when its actor is gone."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator

import pytest

ray = pytest.importorskip("ray")

from async_batch_llm.backends import QuotaBackend, QuotaBackendError  # noqa: E402
from async_batch_llm.ray import RayQuotaBackend  # noqa: E402
from tests.backends.test_backend_protocol import (  # noqa: E402, F401
    test_a_debt_delays_later_reservations,
    test_acquire_is_idempotent_per_reservation_id,
    test_acquire_takes_what_fits_and_answers_the_wait_otherwise,
    test_both_backends_satisfy_the_protocol,
    test_consecutive_rate_limits_count_until_reset,
    test_cooldown_is_started_once_and_joined,
    test_every_bucket_or_none_is_taken,
    test_scopes_are_separate_whatever_their_names,
    test_settle_applies_a_refund_once,
    test_settling_an_unknown_reservation_changes_nothing,
    tokens,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(90)]


@pytest.fixture
async def backend(
    ray_runtime: float, request: pytest.FixtureRequest
) -> AsyncIterator[QuotaBackend]:
    """A fresh actor per test (the protocol tests above run against it)."""
    made = RayQuotaBackend(f"protocol-{request.node.name}")
    made.actor()
    await made.ping()
    yield made
    ray.kill(made.actor())


def test_only_the_name_is_pickled(ray_runtime: float) -> None:
    backend = RayQuotaBackend("pickled")
    backend.actor()
    copy = pickle.loads(pickle.dumps(backend))
    assert isinstance(copy, RayQuotaBackend)
    assert copy.name == "pickled"
    assert copy._handle is None
    ray.kill(backend.actor())


async def test_a_dead_actor_fails_admission_instead_of_starting_a_fresh_quota(
    ray_runtime: float,
) -> None:
    driver = RayQuotaBackend("victim")
    handle = driver.actor()
    worker = pickle.loads(pickle.dumps(driver))  # as a Ray worker receives it
    assert await worker.acquire("s", "r1", tokens(15)) == 0.0
    ray.kill(handle, no_restart=True)
    # The death reaches the caller's handle within moments: until then calls may still pass.
    error: QuotaBackendError | None = None
    for _ in range(100):
        try:
            await worker.acquire("s", "r2", tokens(1))
        except QuotaBackendError as exc:
            error = exc
            break
        await asyncio.sleep(0.1)
    assert error is not None, "the quota actor was killed but admissions still succeed"
    assert "'victim'" in str(error)
    fresh = RayQuotaBackend("victim")  # a worker that never saw it: no new actor is made
    with pytest.raises(QuotaBackendError, match="no Ray quota actor named 'victim'"):
        await fresh.acquire("s", "r3", tokens(1))
