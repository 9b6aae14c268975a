"""The suite must never reach the network: the guard in conftest.py refuses it."""

import socket

import pytest


def test_socket_guard_blocks_remote_hosts():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(RuntimeError, match="network access blocked"):
        s.connect(("93.184.216.34", 80))
    s.close()


def test_socket_guard_allows_loopback():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.connect(server.getsockname())
    client.close()
    server.close()
