"""The suite's loopback-only guard (tests/conftest.py) is on: a test cannot reach the network by accident."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import NetworkRefused


def test_the_network_guard_refuses_anything_but_loopback() -> None:
    with pytest.raises(NetworkRefused), socket.socket() as s:
        s.connect(("192.0.2.1", 443))  # TEST-NET-1: never routed, and refused before any packet
    with pytest.raises(NetworkRefused):
        socket.getaddrinfo("fhir.epic.com", 443)
    assert socket.getaddrinfo("127.0.0.1", 80)
