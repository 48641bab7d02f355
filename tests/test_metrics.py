"""Prometheus metrics, from the real daemon: fetched over HTTP and read from the textfile, each
checked by the real ``promtool``."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request

import pytest
from conftest import COMMAND_PYTHON, wait_for
from prometheus_client.parser import text_string_to_metric_families

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def promtool_accepts(text: str) -> None:
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture
def watched_rules(tmp_path, write_rules):
    def rules(metrics: str) -> tuple:
        watched = tmp_path / "in"
        watched.mkdir(exist_ok=True)
        failing = [COMMAND_PYTHON, "-c", "import sys; sys.exit(2)"]
        config = write_rules(f"""
            settings:
              metrics:
            {metrics}
            rules:
              - name: ok-rule
                paths: [{watched}]
                include: ["*.ok"]
                actions:
                  - command: ["/bin/true"]
              - name: failing-rule
                paths: [{watched}]
                include: ["*.bad"]
                actions:
                  - command: {json.dumps(failing)}
              - name: held-rule
                paths: [{watched}]
                include: ["*.held"]
                batch: {{window: 60s}}
                actions:
                  - command: ["/bin/true", "{{paths}}"]
        """)
        return watched, config
    return rules


def act_on_some_files(watched) -> None:
    for name in ("a.ok", "b.ok", "c.bad", "d.held"):
        (watched / name).write_text("x")


def test_metrics_over_http_are_valid_and_say_what_happened(watched_rules, daemon):
    port = free_port()
    watched, config = watched_rules(f"    listen: 127.0.0.1:{port}")
    daemon(config)
    act_on_some_files(watched)
    url = f"http://127.0.0.1:{port}/metrics"

    def fetched() -> str | None:
        """Once each file is told: the ok rule's runs are not ordered with the failing one."""
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        found = samples(text)
        told = (found.get(("watchd_dead_letters", ())) == 1
                and found.get(("watchd_action_duration_seconds_count", (("rule", "ok-rule"),)))
                == 2 and found.get(("watchd_jobs", (("rule", "held-rule"),
                                                    ("state", "batching")))) == 1
                and found.get(("watchd_events_total", ())) == 4)
        return text if told else None

    text = wait_for(fetched, what="each file told in the metrics")
    promtool_accepts(text)
    found = samples(text)
    assert found[("watchd_actions_total", (("result", "ok"), ("rule", "ok-rule")))] == 2
    assert found[("watchd_actions_total", (("result", "failed"), ("rule", "failing-rule")))] == 1
    assert found[("watchd_actions_total", (("result", "ok"), ("rule", "held-rule")))] == 0
    assert found[("watchd_events_matched_total", (("rule", "ok-rule"),))] == 2
    assert found[("watchd_dead_letters_total", (("rule", "failing-rule"),))] == 1
    assert found[("watchd_jobs", (("rule", "held-rule"), ("state", "batching")))] == 1
    assert found[("watchd_action_duration_seconds_count", (("rule", "ok-rule"),))] == 2
    assert found[("watchd_action_duration_seconds_count", (("rule", "held-rule"),))] == 0
    assert found[("watchd_watches", ())] == 1 and found[("watchd_degraded", ())] == 0
    assert found[("watchd_rules", ())] == 3 and found[("watchd_events_total", ())] == 4
    assert found[("watchd_reloads_total", (("result", "failed"),))] == 0
    assert found[("watchd_ledger_commit_seconds_count", ())] >= 1
    # Conventions: no path ever labels a series; counters end in _total.
    assert not any(label == "path" for _, labels in found for label, _ in labels)


def test_the_textfile_is_written_atomically_and_valid(watched_rules, daemon, tmp_path):
    textfile = tmp_path / "node-exporter" / "watchd.prom"
    textfile.parent.mkdir()
    watched, config = watched_rules(f"    textfile: {textfile}\n                interval: 0.2s")
    daemon(config)
    act_on_some_files(watched)
    wait_for(lambda: textfile.exists() and samples(textfile.read_text()).get(
        ("watchd_actions_total", (("result", "failed"), ("rule", "failing-rule")))) == 1)
    promtool_accepts(textfile.read_text())
    assert [path.name for path in textfile.parent.iterdir()] == ["watchd.prom"]


def test_a_metrics_address_in_use_costs_only_the_http_metrics(watched_rules, daemon, tmp_path):
    textfile = tmp_path / "watchd.prom"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        watched, config = watched_rules(f"    listen: 127.0.0.1:{port}\n"
                                        f"                textfile: {textfile}\n"
                                        "                interval: 0.2s")
        process = daemon(config)
        process.wait_log(f"no metrics served over HTTP: cannot listen on 127.0.0.1:{port}: "
                         "Address already in use")
        (watched / "late.ok").write_text("x")
        process.wait_log("action ok")
        wait_for(lambda: textfile.exists() and samples(textfile.read_text()).get(
            ("watchd_actions_total", (("result", "ok"), ("rule", "ok-rule")))) == 1)
