"""Free loopback ports for the servers the platform starts on this machine (local predictor, Spark standalone, tests).

A port the kernel hands out for `bind(0)` comes from its ephemeral range, the range outgoing connections take their
local ports from. Between choosing such a port and the server binding it, any client socket on the machine may
take it (or take port + 1, which a predictor's gRPC needs): under a parallel test run that happened. So ports are
drawn at random from below the ephemeral range, where the kernel never assigns, and every port of the run is
checked free at the time of the draw.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000  # above the well-known and most registered service ports
_DRAWS = 200


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _all_free(host: str, first: int, count: int) -> bool:
    for port in range(first, first + count):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port(count: int = 1, host: str = LOOPBACK) -> int:
    """The first of `count` consecutive ports that are free on `host` now, outside the kernel's ephemeral range."""
    highest = _ephemeral_start() - count
    draw = random.SystemRandom()  # independent of any seeded `random` state: parallel processes must not agree
    if highest > _LOWEST:
        for _ in range(_DRAWS):
            first = draw.randint(_LOWEST, highest)
            if _all_free(host, first, count):
                return first
    for _ in range(_DRAWS):  # no room below the ephemeral range: the kernel's choice, then its neighbours checked
        with socket.socket() as sock:
            sock.bind((host, 0))
            first = sock.getsockname()[1]
        if first + count <= 65536 and _all_free(host, first, count):
            return first
    raise OSError(f"no {count} consecutive free ports on {host}")
