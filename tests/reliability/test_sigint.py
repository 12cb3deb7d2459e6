"""Ctrl-C during a batch, for real: SIGINT to a child process running ``asyncio.run`` (G6).

The child (``sigint_child.py``) runs a batch whose calls block forever and reports, line by
line, every call start and end, strategy cleanup and the tasks left at the end. Once all its
workers are in calls, the parent sends SIGINT and checks that the child stops promptly, dies of
KeyboardInterrupt, cancelled every in-flight call, started no call after the signal, ran strategy
cleanup after the last call ended, and left no task pending.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

import pytest

CHILD = Path(__file__).with_name("sigint_child.py")
WORKERS = 4
ITEMS = 50
STARTUP_LIMIT = 30.0  # real seconds for the child to import the library and start its calls
EXIT_LIMIT = 10.0  # real seconds from SIGINT to exit: a wide margin; it takes milliseconds

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _reader(stream: object, lines: Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]  # a text-mode pipe
        lines.put(line.rstrip("\n"))
    lines.put(None)


def test_ctrl_c_under_asyncio_run_stops_the_batch_cleanly() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(WORKERS), str(ITEMS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: Queue[str | None] = Queue()
    threading.Thread(target=_reader, args=(child.stdout, lines), daemon=True).start()
    before: list[str] = []
    after: list[str] = []
    try:
        # Wait until every worker is inside a call.
        deadline = time.monotonic() + STARTUP_LIMIT
        while sum(line.startswith("CALL_START") for line in before) < WORKERS:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"child never started {WORKERS} calls: {before}"
            line = lines.get(timeout=remaining)
            assert line is not None, f"child exited early: {before} {child.stderr.read()}"  # type: ignore[union-attr]  # stderr is a pipe
            before.append(line)
        # Give the workers a moment in which they could (wrongly) start more calls.
        time.sleep(0.2)
        while True:
            try:
                line = lines.get_nowait()
            except Empty:
                break
            assert line is not None
            before.append(line)

        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        returncode = child.wait(timeout=EXIT_LIMIT)
        elapsed = time.monotonic() - sent
        while (line := lines.get(timeout=5.0)) is not None:
            after.append(line)
        stderr = child.stderr.read()  # type: ignore[union-attr]  # stderr is a pipe
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()

    starts_before = [line for line in before if line.startswith("CALL_START")]
    assert len(starts_before) == WORKERS, before  # one call per worker, all blocked

    # Killed by SIGINT, the way an uncaught KeyboardInterrupt ends a Python program, promptly.
    assert returncode == -signal.SIGINT, (returncode, after, stderr)
    assert elapsed < EXIT_LIMIT
    assert "KEYBOARD_INTERRUPT" in after
    assert "KeyboardInterrupt" in stderr

    # No new call after the signal; every in-flight call was cancelled.
    assert [line for line in after if line.startswith("CALL_START")] == []
    ends = [line for line in after if line.startswith("CALL_END")]
    assert sorted(ends) == sorted(f"CALL_END {line.split()[1]} cancelled" for line in starts_before)

    # Strategy cleanup ran once, after the last call had ended; nothing was left pending.
    cleanups = [i for i, line in enumerate(after) if line.startswith("CLEANUP")]
    assert len(cleanups) == 1, after
    assert after[cleanups[0]] == "CLEANUP in_flight=0"
    last_end = max(i for i, line in enumerate(after) if line.startswith("CALL_END"))
    assert last_end < cleanups[0]
    assert "PENDING_TASKS 0" in after
    assert "FINISHED" not in after
