"""`deploy.stack up --replicas N`: where the replicas listen and what the gateway is told (the gateway's own
settings class reads it, so the two cannot drift apart)."""

from __future__ import annotations

import pytest

from deploy import stack
from deploy.replicas import gateway_env, replica_name, replica_ports, replica_urls
from services.gateway.config import Settings


def test_one_replica_is_the_stack_as_before() -> None:
    assert replica_ports(8001, 1) == [8001]
    assert replica_name(0) == "inference"


def test_more_replicas_listen_clear_of_the_other_services() -> None:
    ports = replica_ports(8001, 3)
    assert ports == [8001, 8011, 8012]
    assert not set(ports[1:]) & set(stack.DEFAULT_PORTS.values())
    assert [replica_name(n) for n in range(3)] == ["inference", "inference-2", "inference-3"]


def test_the_gateway_reads_every_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in gateway_env(8001, 3).items():
        monkeypatch.setenv(variable, value)
    assert Settings().inference_urls == replica_urls(8001, 3)


@pytest.mark.parametrize("count", ["0", "17", "two"])
def test_bad_replica_counts_are_a_usage_error(count: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        stack.main(["up", "--replicas", count])
    assert stopped.value.code == 2
    assert "--replicas" in capsys.readouterr().err
