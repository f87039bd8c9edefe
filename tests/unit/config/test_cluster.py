"""`[cluster]`: where a replica's shard comes from, and what a split fleet refuses."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from bridge.config.cluster import ordinal
from bridge.config.settings import load
from bridge.core.shards import Shard
from bridge.exceptions import ConfigError

STREAM = {"enabled": True, "authorization": "Bearer " + "x" * 32}


def settings(**cluster: Any) -> Any:
    return load(overrides={"flespi": {"token": "t"}, "cluster": cluster}, environment=False)


def problems(**cluster: Any) -> str:
    with pytest.raises(ConfigError) as err:
        settings(**cluster)
    return str(err.value)


@pytest.mark.parametrize(("host", "expected"), [
    ("flespi-bridge-2", 2), ("flespi-bridge-12.flespi-bridge.ns.svc", 12), ("bridge", None),
    ("bridge-x", None), ("node-3a", None),
])
def test_the_ordinal_is_the_number_ending_the_pods_name(host: str, expected: int | None
                                                         ) -> None:
    assert ordinal(host) == expected


def test_a_single_bridge_keeps_its_client_ids() -> None:
    s = settings()
    assert s.cluster.place == Shard(0, 1)
    assert (s.flespi.client_id, s.local.client_id) == ("flespi-bridge", "flespi-bridge")


def test_each_replica_has_client_ids_of_its_own() -> None:
    s = settings(shards=3, shard=2)
    assert s.cluster.place == Shard(2, 3)
    assert (s.flespi.client_id, s.local.client_id) == ("flespi-bridge-2", "flespi-bridge-2")


def test_the_shard_comes_from_a_statefulset_pods_host_name(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "flespi-bridge-1")
    assert settings(shards=2).cluster.place == Shard(1, 2)
    monkeypatch.setattr(socket, "gethostname", lambda: "flespi-bridge-4")
    assert "shard = 4 (from the host name 'flespi-bridge-4') is not in 0..1" in problems(
        shards=2)
    monkeypatch.setattr(socket, "gethostname", lambda: "laptop")
    assert "needs shard = 0..1, or a host name ending in -<ordinal>" in problems(shards=2)


def test_a_shard_out_of_range_is_refused() -> None:
    assert "shard = 3 is not in 0..2" in problems(shards=3, shard=3)
    assert "shard = 1 is not in 0..0" in problems(shard=1)


def test_the_http_stream_cannot_be_split() -> None:
    with pytest.raises(ConfigError) as err:
        load(overrides={"flespi": {"token": "t"}, "cluster": {"shards": 2, "shard": 0},
                        "stream": STREAM}, environment=False)
    assert "flespi pushes the whole fleet to one URL" in str(err.value)
    load(overrides={"flespi": {"token": "t"}, "stream": STREAM}, environment=False)
