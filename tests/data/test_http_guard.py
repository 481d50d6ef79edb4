"""The fetch stage against a real HTTP(S) server on 127.0.0.1 and a real S3 endpoint (moto).

Every test runs in a loopback-only namespace: URLs use IP literals and "localhost" only.
"""

from __future__ import annotations

import pytest

from countclip.data.fetch import AddressGuard


@pytest.mark.parametrize("address, allowed", [
    ("169.254.169.254", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("127.0.0.1", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("240.0.0.1", False), ("::1", False), ("fc00::1", False), ("fe80::1%lo", False), ("ff02::1", False),
    ("::ffff:127.0.0.1", False), ("2002:0a00:0001::1", False), ("64:ff9b::a01:203", False),
    ("8.8.8.8", True), ("2606:4700::1111", True), ("10.9.0.7", True),
])
def test_address_guard(address, allowed):
    assert AddressGuard(["10.9.0.0/16"]).is_allowed(address) is allowed


