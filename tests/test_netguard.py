"""The network guard itself: it must refuse non-loopback traffic, here and in child processes, and let loopback pass."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _attempts() -> str:
    return Path(os.environ["RAGTUNE_NETGUARD_LOG"]).read_text()


@pytest.fixture
def clean_log():
    """The attempts this test makes on purpose are taken back out of the log, which would fail the session."""
    log = Path(os.environ["RAGTUNE_NETGUARD_LOG"])
    before = log.read_text()
    yield
    log.write_text(before)


def test_a_non_loopback_connection_fails_here_and_in_a_child_process(clean_log):
    with socket.socket() as sock, pytest.raises(OSError, match="network guard"):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: would never answer anyway
    with pytest.raises(OSError, match="network guard"):
        socket.getaddrinfo("huggingface.co", 443)
    child = subprocess.run([sys.executable, "-c", "import urllib.request; urllib.request.urlopen('http://example.com')"],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode != 0 and "network guard" in child.stderr
    log = _attempts()
    assert "192.0.2.1" in log and "huggingface.co" in log and "example.com" in log


def test_loopback_passes(clean_log):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    socket.getaddrinfo("localhost", 80)
    assert "127.0.0.1" not in _attempts()
