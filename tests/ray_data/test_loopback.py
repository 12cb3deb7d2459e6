"""The Ray runtime of the tests listens and connects on 127.0.0.1 only.

Two views: the kernel's socket tables (``/proc/net``) for every process of the Ray runtime
(the test process and all its descendants: GCS, raylet, agents, workers), which sees the C++
servers too; and a Python audit hook in the test process and in every Ray worker
(``worker_process_setup_hook``), which sees every connect and bind made from Python over the
whole session, not only the sockets open at the moment of the check.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import NamedTuple

import pytest

ray = pytest.importorskip("ray")

from async_batch_llm import ProcessorConfig  # noqa: E402
from async_batch_llm.ray import process_dataset  # noqa: E402
from async_batch_llm.testing.servers import OpenAIServer  # noqa: E402
from tests.ray_data._support import OpenAIFactory  # noqa: E402
from tests.ray_data.conftest import served_from_a_thread  # noqa: E402

pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(150),
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net"),
]

_LISTEN = "0A"


class Socket(NamedTuple):
    table: str
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str


def _address(text: str) -> tuple[str, int]:
    """``/proc/net`` notation (little-endian 32-bit words in hex) to ``(ip, port)``."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def kernel_sockets() -> dict[str, Socket]:
    """Every TCP/UDP socket of this network namespace, by inode."""
    found: dict[str, Socket] = {}
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            found[fields[9]] = Socket(table, _address(fields[1]), _address(fields[2]), fields[3])
    return found


def process_tree(root: int) -> set[int]:
    """``root`` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree = {root}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return host == "localhost"


def test_every_socket_of_the_ray_runtime_is_on_loopback(
    ray_runtime: float, audit_dir: Path
) -> None:
    # Some traffic first: two workers calling an emulator, sharing the quota actor.
    server = OpenAIServer()
    with served_from_a_thread(server):
        dataset = ray.data.from_items([{"id": i, "prompt": f"p{i}"} for i in range(8)])
        out = process_dataset(
            dataset.repartition(2),
            OpenAIFactory(server.base_url),
            config=ProcessorConfig(max_workers=2, max_requests_per_minute=6_000),
        ).take_all()
    assert len(out) == 8
    assert all(row["success"] for row in out)

    tree = process_tree(os.getpid())
    assert len(tree) >= 4, tree  # the test process, GCS, raylet, workers ...
    table = kernel_sockets()
    mine = [(pid, table[inode]) for pid in tree for inode in socket_inodes(pid) if inode in table]
    listening = [(pid, s) for pid, s in mine if s.table.startswith("tcp") and s.state == _LISTEN]
    assert len(listening) >= 3, mine  # GCS, raylet, ... : the scan does see Ray's servers
    gcs_port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    assert gcs_port in {s.local[1] for _, s in listening}
    off_loopback = [
        (pid, s)
        for pid, s in mine
        if not is_loopback(s.local[0]) or (s.remote[1] != 0 and not is_loopback(s.remote[0]))
    ]
    assert off_loopback == [], off_loopback

    # Every connect/bind made from Python, in this process and every Ray worker, all session.
    lines = [
        line.split()
        for log in audit_dir.glob("*.log")
        for line in log.read_text(encoding="utf-8").splitlines()
    ]
    workers = {pid for pid, *_ in lines} - {str(os.getpid())}
    assert workers, "no Ray worker recorded a socket call: the audit hook did not run"
    connects = [line for line in lines if line[1] == "socket.connect"]
    assert any(line[3] == str(server.port) for line in connects if line[0] in workers)
    elsewhere = [
        line for line in lines if line[2] not in ("", "0.0.0.0", "::") and not is_loopback(line[2])
    ]
    assert elsewhere == [], elsewhere
    unspecified_binds = [
        line for line in lines if line[1] == "socket.bind" and line[2] in ("", "0.0.0.0", "::")
    ]
    assert unspecified_binds == [], unspecified_binds
