"""The broker reports on itself: ``GET /metrics`` of its admin listener,
scraped over HTTP and read with the Prometheus text parser of the
``prometheus_client`` package, and ``python -m pystrands stats``, which
prints the JSON of ``GET /stats``."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from contextlib import ExitStack
from typing import Any, Callable, Dict, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TIMEOUT, Broker, Events, TabBackend, next_frames, open_tab, wait_for
from test_launcher import NEUTRAL_CWD, env_with

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def stats_command(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, "-m", "pystrands", "stats", *args],
        env=env_with(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=TIMEOUT * 2,
        text=True,
        cwd=NEUTRAL_CWD,
    )


@pytest.fixture
def monitored(broker_factory: Callable[..., Broker], unused_port: int) -> Tuple[Broker, int]:
    """A broker whose admin listener is on, and the listener's port."""
    return broker_factory(extra_args=["--admin-port", str(unused_port)]), unused_port


@pytest.fixture
def backend(monitored: Tuple[Broker, int], clients: Any, events: Events) -> TabBackend:
    broker, _ = monitored
    made = TabBackend(events, "127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
    clients.append(made)
    assert made.connect()
    return made


def test_metrics_follow_connections_rooms_and_messages(
    monitored: Tuple[Broker, int], backend: TabBackend, events: Events
) -> None:
    broker, port = monitored
    before = scrape(port)
    assert before[("pystrands_connections", (("state", "open"),))] == 0
    assert before[("pystrands_backends", (("kind", "events"),))] == 1
    with ExitStack() as stack:
        ada, _ = open_tab(stack, broker, events, "/lobby", "ada")
        bob, _ = open_tab(stack, broker, events, "/lobby", "bob")
        ada.send("hello")
        events.get("message")
        backend.send_room_message("lobby", "to both")
        assert next_frames(ada, 1) == ["to both"]
        assert next_frames(bob, 1) == ["to both"]
        during = scrape(port)
        assert during[("pystrands_connections", (("state", "open"),))] == 2
        assert during[("pystrands_rooms", ())] == 1
        assert during[("pystrands_upgrades_total", (("outcome", "accepted"),))] == 2
        assert during[("pystrands_client_messages_received_total", ())] == 1
        assert during[("pystrands_deliveries_total", ())] >= 2
        assert during[("pystrands_process_open_fds", ())] > 0
        assert during[("pystrands_process_resident_memory_bytes", ())] > 0
        assert during[("pystrands_healthy", ())] == 1
        turns = during[("pystrands_turn_duration_seconds_count", ())]
        assert turns > 0
        assert during[("pystrands_turn_duration_seconds_bucket", (("le", "+Inf"),))] == turns
    # Both gone: the gauges come back down.
    wait_for(
        lambda: scrape(port)[("pystrands_connections", (("state", "open"),))] == 0,
        TIMEOUT,
        "the open connections gauge back to 0",
    )
    assert scrape(port)[("pystrands_rooms", ())] == 0


def test_stats_command_prints_the_json_figures(
    monitored: Tuple[Broker, int], backend: TabBackend, events: Events
) -> None:
    broker, port = monitored
    with ExitStack() as stack:
        open_tab(stack, broker, events, "/lobby", "ada")
        done = stats_command("--admin-port", str(port))
        assert done.returncode == 0, done.stderr
        figures: Dict[str, Any] = json.loads(done.stdout)
    assert figures["healthy"] is True
    assert figures["gauges"]["connections_open"] == 1
    assert figures["gauges"]["rooms"] == 1
    assert figures["gauges"]["backends_events"] == 1
    assert figures["counters"]["upgrades_accepted"] == 1
    assert figures["process"]["open_fds"] > 0


def test_stats_command_names_the_admin_port_when_nothing_listens(unused_port: int) -> None:
    done = stats_command("--admin-port", str(unused_port))
    assert done.returncode == 1
    assert f"127.0.0.1:{unused_port}" in done.stderr
    assert "--admin-port" in done.stderr
    assert done.stdout == ""
