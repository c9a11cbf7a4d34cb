"""The network guard of the tests: fail any connection that leaves this machine.

Loopback stays open: Jupyter kernels talk to their client over it. conftest.py blocks the
network in pytest's process; sitecustomize.py, beside this file, blocks it in every process the
test command starts (the notebook kernels nbval runs included).
"""

from __future__ import annotations

import ipaddress
import socket

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _check(address) -> None:
    if not isinstance(address, tuple):
        return  # a Unix socket stays on this machine
    host = address[0]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise RuntimeError(f"network access attempted while the network is blocked: connect to {address}. "
                           "Everything in the smoke and cpu profiles and the tests must run offline.")


def _guarded_connect(self, address):
    _check(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check(address)
    return _real_connect_ex(self, address)


def block_network() -> None:
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex


def unblock_network() -> None:
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex
