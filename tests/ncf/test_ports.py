"""ncf.ports.free_port: runs of ports free now, drawn from below the kernel's ephemeral range, real sockets."""

from __future__ import annotations

import contextlib
import socket

from ncf import ports


def _held_block(size: int) -> tuple[int, list[socket.socket]]:
    """`size` consecutive loopback ports below the ephemeral range, bound (held) by this test."""
    for _ in range(50):
        first = ports.free_port(count=size)
        held = []
        try:
            for port in range(first, first + size):
                sock = socket.socket()
                held.append(sock)
                sock.bind((ports.LOOPBACK, port))
            return first, held
        except OSError:  # taken between the draw and these binds: draw again
            for sock in held:
                sock.close()
    raise AssertionError("no free block of ports to test with")


def _ports_only_from(monkeypatch, tmp_path, first: int, last: int) -> None:
    """Make [first, last] the only ports free_port may draw (the ephemeral range then starts at last + 1)."""
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text(f"{last + 1}\t65535\n")
    monkeypatch.setattr(ports, "_EPHEMERAL_RANGE", ranges)
    monkeypatch.setattr(ports, "_LOWEST", first)


def _binds(port: int) -> bool:
    with socket.socket() as sock, contextlib.suppress(OSError):
        sock.bind((ports.LOOPBACK, port))
        return True
    return False


def test_a_run_of_ports_is_free_and_below_the_ephemeral_range():
    first = ports.free_port(count=3)
    assert ports._LOWEST <= first and first + 3 <= ports._ephemeral_start()
    assert all(_binds(port) for port in range(first, first + 3))


def test_ports_in_use_are_never_drawn(monkeypatch, tmp_path):
    first, held = _held_block(6)
    try:
        _ports_only_from(monkeypatch, tmp_path, first, first + 5)
        held.pop(3).close()  # first + 3 is the only free port; first + 4 and first + 5 stay busy
        assert {ports.free_port() for _ in range(20)} == {first + 3}
        # first + 3 is free but its neighbour is not: no run of two there, so the kernel's pick, checked, instead
        pair = ports.free_port(count=2)
        assert pair not in range(first - 1, first + 6) and _binds(pair) and _binds(pair + 1)
    finally:
        for sock in held:
            sock.close()


def test_without_room_below_the_ephemeral_range_the_kernel_picks_and_the_run_is_checked(monkeypatch, tmp_path):
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("1024\t65535\n")
    monkeypatch.setattr(ports, "_EPHEMERAL_RANGE", ranges)
    first = ports.free_port(count=2)
    assert all(_binds(port) for port in (first, first + 1))
