"""async_batch_llm.ray.process_dataset on a local Ray runtime (marked ``ray``: `make test-ray`)."""

from __future__ import annotations

from typing import Any

import pytest

ray = pytest.importorskip("ray")

from async_batch_llm import ProcessorConfig, RetryConfig  # noqa: E402
from async_batch_llm.ray import RESULT_COLUMNS, RayQuotaBackend, process_dataset  # noqa: E402
from async_batch_llm.testing.servers import OpenAIServer  # noqa: E402
from tests.backends.conftest import require_redis_server  # noqa: E402
from tests.ray_data._support import OpenAIFactory, Stamping, rows  # noqa: E402
from tests.ray_data.conftest import served_from_a_thread  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]


def by_id(dataset: Any) -> list[dict[str, Any]]:
    return sorted(dataset.take_all(), key=lambda row: row["id"])


def test_every_row_gets_result_columns_and_row_errors_do_not_fail_the_job(
    ray_runtime: float,
) -> None:
    dataset = ray.data.from_items(rows(30, failing=frozenset({4, 17})))
    config = ProcessorConfig(max_workers=4, retry=RetryConfig(max_attempts=1))
    out = by_id(process_dataset(dataset, Stamping, config=config))
    assert [r["id"] for r in out] == list(range(30))
    assert all(set(RESULT_COLUMNS) <= set(r) for r in out)
    assert [r["extra"] for r in out] == [i * 10 for i in range(30)]  # input columns kept
    assert [r["id"] for r in out if not r["success"]] == [4, 17]
    assert "cannot answer fail4" in out[4]["error"]
    assert out[4]["error_category"] is not None
    assert out[4]["output"] is None
    ok = out[0]
    assert ok["output"].endswith("|p0")
    assert (ok["input_tokens"], ok["output_tokens"], ok["total_tokens"]) == (3, 4, 7)
    assert ok["error"] is None
    assert ok["error_category"] is None


def test_a_dataset_without_the_columns_is_refused_before_anything_runs(
    ray_runtime: float,
) -> None:
    calls: list[str] = []

    def factory() -> Stamping:  # pragma: no cover - must never be called
        calls.append("built")
        return Stamping()

    dataset = ray.data.from_items([{"key": 1, "text": "hello"}])
    with pytest.raises(ValueError, match=r"no 'id' column \(id_column\).*\['key', 'text'\]"):
        process_dataset(dataset, factory)
    with pytest.raises(ValueError, match=r"no 'prompt' column \(prompt_column\)"):
        process_dataset(dataset, factory, id_column="key")
    with pytest.raises(ValueError, match="concurrency must be an int >= 1, got 0"):
        process_dataset(dataset, factory, id_column="key", prompt_column="text", concurrency=0)
    with pytest.raises(TypeError, match="strategy_factory must be callable"):
        process_dataset(dataset, "Stamping", id_column="key", prompt_column="text")  # type: ignore[arg-type]
    assert calls == []


def test_a_schema_known_only_by_running_fails_the_job_naming_the_column(
    ray_runtime: float,
) -> None:
    # A map upstream: the schema is unknown until it runs; the workers check it then.
    dataset = ray.data.from_items([{"key": 1}, {"key": 2}], override_num_blocks=2)
    dataset = dataset.map(lambda row: {"key": row["key"], "q": "hi"})
    planned = process_dataset(dataset, Stamping, id_column="key")
    # Ray raises its own exception type for a failed job; the message carries ours.
    with pytest.raises(ray.exceptions.RayError) as failed:
        planned.take_all()
    assert (
        "ValueError: the dataset has no 'prompt' column (prompt_column); its columns: ['key', 'q']"
        in str(failed.value)
    )


TPM = 60_000  # 1,000 tokens a second, for both workers together
WORDS = 30


def test_two_workers_share_one_tpm_through_the_ray_actor(ray_runtime: float) -> None:
    config = ProcessorConfig(
        max_workers=8,
        max_tokens_per_minute=TPM,
        quota_burst_seconds=0.5,
        quota_backend=RayQuotaBackend("test-shared-tpm"),
    )
    run_against_tpm_emulator(config)


def test_two_workers_share_one_tpm_through_redis(ray_runtime: float) -> None:
    require_redis_server()
    from async_batch_llm.backends.redis import RedisQuotaBackend
    from async_batch_llm.testing.redis_server import LocalRedisServer

    with LocalRedisServer() as redis:
        config = ProcessorConfig(
            max_workers=8,
            max_tokens_per_minute=TPM,
            quota_burst_seconds=0.5,
            quota_backend=RedisQuotaBackend(redis.url, namespace="ray-test"),
        )
        run_against_tpm_emulator(config)


def run_against_tpm_emulator(config: ProcessorConfig) -> None:
    """80 rows of ~65 tokens each through 2 workers against an emulator enforcing ``TPM``."""
    items = [{"id": i, "prompt": f"row {i} " + "word " * WORDS} for i in range(80)]
    server = OpenAIServer(tokens_per_minute=TPM, rate_limit_window_seconds=1.0)
    with served_from_a_thread(server):
        dataset = ray.data.from_items(items).repartition(8)
        out = by_id(
            process_dataset(dataset, OpenAIFactory(server.base_url), config=config, concurrency=2)
        )
    assert [r["id"] for r in out] == list(range(80))
    assert all(r["success"] for r in out), [r["error"] for r in out if not r["success"]][:3]
    # The emulator refused nothing: together the workers stayed under its TPM ...
    assert server.status_counts[429] == 0
    assert server.counts["chat_completions"] == 80
    # ... and that limit did bind: the calls were spread over the time it allows.
    rate = TPM / 60
    charged = server.rate_limit_charged["tokens"]
    ideal = (charged - rate * 1.0) / rate
    assert ideal > 2.0, charged
    arrivals = sorted(request.received_at for request in server.requests)
    assert arrivals[-1] - arrivals[0] >= 0.85 * ideal
    # Both workers took part (each row's worker is its process id, seen in the logs only;
    # the quota is what matters here, asserted above).
