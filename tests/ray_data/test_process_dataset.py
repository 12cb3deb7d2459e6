"""async_batch_llm.ray.process_dataset on a local Ray runtime (marked ``ray``: `make test-ray`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from async_batch_llm import LLMCallStrategy, ProcessorConfig, RetryConfig, TokenUsage  # noqa: E402
from async_batch_llm.ray import RESULT_COLUMNS, RayQuotaBackend, process_dataset  # noqa: E402

pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(300),
    # Ray's own deprecations (its internals, not our calls) must not fail these tests.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"),
    pytest.mark.filterwarnings("ignore::FutureWarning:ray"),
]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # Two CPUs, no dashboard, the node on loopback only.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


class Stamping(LLMCallStrategy[str]):
    """Answers with the wall time of the call; fails the prompts that say so."""

    async def execute(
        self, prompt: str, attempt: int, timeout: float, state: Any = None
    ) -> tuple[str, TokenUsage]:
        if prompt.startswith("fail"):
            raise ValueError(f"cannot answer {prompt}")
        return f"{time.time():.6f}|{prompt}", {
            "input_tokens": 3,
            "output_tokens": 4,
            "total_tokens": 7,
        }


def rows(count: int, failing: set[int] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    return [
        {"id": i, "prompt": f"{'fail' if i in failing else 'p'}{i}", "extra": i * 10}
        for i in range(count)
    ]


def test_every_row_gets_result_columns_and_row_errors_do_not_fail_the_job(
    local_ray: None,
) -> None:
    dataset = ray.data.from_items(rows(30, failing={4, 17}))
    config = ProcessorConfig(max_workers=4, retry=RetryConfig(max_attempts=1))
    out = sorted(
        process_dataset(dataset, Stamping, config=config).take_all(), key=lambda r: r["id"]
    )
    assert [r["id"] for r in out] == list(range(30))
    assert all(set(RESULT_COLUMNS) <= set(r) for r in out)
    assert [r["extra"] for r in out] == [i * 10 for i in range(30)]  # input columns kept
    failed = [r["id"] for r in out if not r["success"]]
    assert failed == [4, 17]
    assert "cannot answer fail4" in out[4]["error"]
    assert out[4]["output"] is None
    ok = out[0]
    assert ok["output"].endswith("|p0")
    assert (ok["input_tokens"], ok["output_tokens"], ok["total_tokens"]) == (3, 4, 7)
    assert ok["error"] is None


def test_workers_share_one_quota_through_the_ray_actor(local_ray: None) -> None:
    # 600 requests a minute: 10 a second, a burst of 10, for both workers together.
    dataset = ray.data.from_items(rows(40)).repartition(4)
    config = ProcessorConfig(
        max_workers=4,
        max_requests_per_minute=600,
        quota_backend=RayQuotaBackend("test-shared-quota"),
    )
    out = process_dataset(dataset, Stamping, config=config, concurrency=2).take_all()
    assert len(out) == 40
    assert all(r["success"] for r in out)
    stamps = sorted(float(r["output"].split("|")[0]) for r in out)
    # Each worker alone would have taken 10 at once and 10 a second: 40 in about 1.5 s in all.
    # Together they are paced at 10 a second after the burst: at least about 3 s.
    assert stamps[-1] - stamps[0] > 2.6
    for start in stamps:
        in_one_second = sum(1 for s in stamps if start <= s < start + 1.0)
        assert in_one_second <= 21


def test_a_dataset_without_the_columns_is_refused_naming_them(local_ray: None) -> None:
    dataset = ray.data.from_items([{"key": 1, "text": "hello"}])
    with pytest.raises(ValueError, match=r"no 'id' column \(id_column\).*\['key', 'text'\]"):
        process_dataset(dataset, Stamping)
    with pytest.raises(ValueError, match=r"no 'prompt' column \(prompt_column\)"):
        process_dataset(dataset, Stamping, id_column="key")
    with pytest.raises(ValueError, match="concurrency"):
        process_dataset(dataset, Stamping, id_column="key", prompt_column="text", concurrency=0)
