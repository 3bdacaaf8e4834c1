"""The test suite's network guard: any attempt to connect to (or resolve) a non-loopback address fails.

Loaded by tests/conftest.py in the pytest process, and, through PYTHONPATH, as `sitecustomize` in every
Python process a test starts (servers, workers, the CLI). An attempt raises OSError in the process that
made it and is appended to the file named by RAGTUNE_NETGUARD_LOG, which conftest checks at the end of
the session: one attempt anywhere fails the whole session.
"""

import ipaddress
import os
import socket

LOCAL_NAMES = {"localhost", "ip6-localhost", "ip6-loopback", socket.gethostname(), socket.getfqdn()}
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _is_local(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host in LOCAL_NAMES or host == "":
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _refuse(what: str) -> None:
    path = os.environ.get("RAGTUNE_NETGUARD_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(f"pid {os.getpid()}: {what}\n")
    raise OSError(f"network guard: {what} (tests reach nothing but 127.0.0.1)")


def _check(sock: socket.socket, address: object) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        _refuse(f"connect to {address!r}")


def _guarded_connect(self, address):
    _check(self, address)
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and not _is_local(name):
        _refuse(f"resolve {name!r}")
    return _getaddrinfo(host, *args, **kwargs)


def install() -> None:
    socket.socket.connect, socket.socket.connect_ex = _guarded_connect, _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo


if os.environ.get("RAGTUNE_NETGUARD_LOG"):
    install()
