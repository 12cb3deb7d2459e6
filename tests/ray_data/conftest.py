"""One local Ray runtime for every Ray test, on 127.0.0.1 only (see ``ray_runtime``).

Ray starts once per session (about 5-10 s on two cores) and every test of this folder shares
it. Each test has its own timeout: a Ray Data job that stops making progress fails the test
with pytest-timeout's traceback instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from async_batch_llm.testing.servers import ProviderServer
from tests.ray_data import _support as support
from tests.ray_data._support import AUDIT_DIR_ENV, audit_connections

# Set before Ray is imported (it reads them then) and started (its processes inherit them).
RAY_ENV = {
    # Without it, Ray turns the node address 127.0.0.1 into the machine's external address
    # (so that other nodes could reach it) and its servers listen there.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray runs its workers at nice 15 by default: next to any busy process (another test run,
    # a build) they get a small fraction of a CPU and a test that takes 10 s takes minutes.
    "RAY_worker_niceness": "0",
}
os.environ.update(RAY_ENV)

ray = pytest.importorskip("ray")


STARTUP: dict[str, float] = {}

S = TypeVar("S", bound=ProviderServer)


@pytest.fixture(scope="session")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this process and every Ray worker log their Python socket connects and binds."""
    folder = tmp_path_factory.mktemp("socket-audit")
    os.environ[AUDIT_DIR_ENV] = str(folder)
    audit_connections()
    return folder


@pytest.fixture(scope="session")
def ray_runtime(audit_dir: Path) -> Iterator[float]:
    """Start Ray (2 CPUs, loopback, no dashboard) once; yield how long it took to start."""
    # Ray unpickles the setup hook before the worker can import this repository's tests: send
    # the support module's code with it (and with the strategies and factories it defines).
    ray.cloudpickle.register_pickle_by_value(support)
    started = time.perf_counter()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"worker_process_setup_hook": audit_connections},
    )
    if ray.util.get_node_ip_address() != "127.0.0.1":  # e.g. ray imported before this file
        ray.shutdown()
        pytest.fail(f"Ray runs on {ray.util.get_node_ip_address()}, not 127.0.0.1")
    STARTUP["ray.init"] = time.perf_counter() - started
    with warnings.catch_warnings():  # Ray's own deprecations, from building its defaults
        warnings.simplefilter("ignore", DeprecationWarning)
        ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield STARTUP["ray.init"]
    finally:
        ray.shutdown()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if "ray.init" in STARTUP:
        terminalreporter.write_line(f"Ray runtime started in {STARTUP['ray.init']:.1f} s")


@contextmanager
def served_from_a_thread(server: S) -> Iterator[S]:
    """Run an emulator on its own event loop in a thread (the driver blocks in Ray calls)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="emulator", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
