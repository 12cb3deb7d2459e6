"""Every reliability test ends with no task pending but its own (guarantee G9).

The check runs after the test body and after the test's own fixtures have been torn down. A
task the library started and did not finish (a worker, an in-flight call, a progress callback)
fails the test at teardown; the leaked tasks are then cancelled so later tests start clean.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ._support import no_task_left_behind


@pytest.fixture(autouse=True)
async def _no_task_left_behind() -> AsyncIterator[None]:
    async with no_task_left_behind():
        yield
