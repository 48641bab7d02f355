"""The daemon's figures as Prometheus metrics (``prometheus_client``), read when scraped.

Counters and gauges are not kept twice: each scrape (or textfile write) asks for the status
document, made on the main loop and counted in the ledger on the asking thread, and turns it
into metric families. Only what a document cannot hold is observed as it happens: how long
each action ran, and each ledger commit (histograms). Names and labels follow Prometheus'
conventions: base units, ``_total`` counters, a ``rule`` label, never a path. Every metric is
listed in watchd(8).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler

from watchd.core.logs import log
from watchd.core.rules import MetricsSettings, RuleSet

ACTION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
JOB_STATES = ("queued", "running", "retrying", "debouncing", "settling", "batching")
# Each rule's counters in the status document, and the metric and label each becomes.
_RULE_COUNTERS = (
    ("watchd_events_matched_total", "events matched by the rule", None,
     (("matched", None),)),
    ("watchd_actions_total", "actions run, by result", "result",
     (("actions_ok", "ok"), ("actions_failed", "failed"), ("actions_skipped", "skipped"))),
    ("watchd_events_dropped_total", "matched events dropped: the queue was full", None,
     (("dropped", None),)),
    ("watchd_retries_total", "failed runs tried again", None, (("retried", None),)),
    ("watchd_dead_letters_total", "jobs given up on after their last try", None,
     (("dead_letters", None),)),
    ("watchd_webhook_deliveries_total", "webhook deliveries, by result", "result",
     (("webhooks_ok", "ok"), ("webhooks_failed", "failed"), ("webhooks_dropped", "dropped"))),
)

Document = Callable[[], dict[str, Any]]


class Metrics:
    """The registry, the histograms observed as things happen, and the document read at
    each scrape. ``start`` serves and writes as the settings say."""

    def __init__(self, document: Document) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.action_seconds = Histogram(
            "watchd_action_duration_seconds", "how long each action ran", ["rule"],
            buckets=ACTION_BUCKETS, registry=self.registry)
        self.commit_seconds = Histogram(
            "watchd_ledger_commit_seconds", "how long each ledger commit took (the fsync "
            "included)", buckets=COMMIT_BUCKETS, registry=self.registry)
        self.registry.register(_FromDocument(document))
        self._server: ThreadingHTTPServer | None = None
        self._rules: set[str] = set()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def ran(self, rule: str, seconds: float) -> None:
        self.action_seconds.labels(rule).observe(seconds)

    def committed(self, seconds: float) -> None:
        self.commit_seconds.observe(seconds)

    def rules_loaded(self, ruleset: RuleSet) -> None:
        """Every rule's histogram exists from its load (a rule that never ran shows 0), and a
        rule a reload removed has none any more."""
        names = {rule.name for rule in ruleset.rules}
        for gone in self._rules - names:
            self.action_seconds.remove(gone)
        for name in names - self._rules:
            self.action_seconds.labels(name)
        self._rules = names

    def start(self, settings: MetricsSettings) -> None:
        """Write and listen as ``settings`` say; OSError if the address cannot be had (the
        textfile is written all the same)."""
        if settings.textfile is not None:
            self._spawn(lambda: self._write_every(settings.textfile or "", settings.interval),
                        "watchd-metrics-textfile")
        if settings.listen is not None:
            host, port = settings.listen
            handler = type("Handler", (_QuietHandler,), {"registry": self.registry})
            server_class = _server_for(host)
            self._server = server_class((host, port), handler)
            self._spawn(self._server.serve_forever, "watchd-metrics-http")

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(2.0)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _write_every(self, path: str, interval: float) -> None:
        failing = False
        while True:
            try:
                write_to_textfile(path, self.registry)  # a temporary file, then a rename
                if failing:
                    log(logging.INFO, "metrics textfile written again", path=path)
                failing = False
            except Exception as error:  # a full disk or a bug: say it once, keep trying
                if not failing:
                    log(logging.ERROR, f"cannot write the metrics textfile: {error}", path=path)
                failing = True
            if self._stopping.wait(interval):
                return


class _QuietHandler(MetricsHandler):
    """``MetricsHandler``, without a line on stderr for each request."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def _server_for(host: str) -> type[ThreadingHTTPServer]:
    if ":" not in host:
        return ThreadingHTTPServer
    return type("IPv6Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})


class _FromDocument:
    """A collector that reads the status document at each collection."""

    def __init__(self, document: Document) -> None:
        self.document = document

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: the names are fixed here

    def collect(self) -> Iterator[Metric]:
        try:
            document = self.document()
        except Exception as error:
            log(logging.WARNING, f"metrics: the daemon did not answer: {error}")
            return
        yield from _daemon_metrics(document)
        yield from _rule_metrics(document["rules"])


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name.removesuffix("_total"), help_text, value=value)


def _daemon_metrics(document: dict[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily("watchd_build_info", "the running version", labels=["version"])
    info.add_metric([document["version"]], 1)
    yield info
    config = document["config"]
    yield _gauge("watchd_start_time_seconds", "when the daemon started (Unix time)",
                 document["started"])
    yield _gauge("watchd_rules_loaded_time_seconds", "when the rules in force were read",
                 config["loaded"])
    yield _gauge("watchd_rules", "rules in force", config["rules"])
    yield _counter("watchd_events_total", "events handed to the rules", document["events"])
    yield _counter("watchd_overflows_total", "inotify queue overflows (each followed by a "
                   "rescan)", document["overflows"])
    yield _counter("watchd_ledger_failures_total", "writes to the ledger that failed",
                   document["ledger_failures"])
    reloads = CounterMetricFamily("watchd_reloads", "reloads of the rules, by result",
                                  labels=["result"])
    for result in ("ok", "failed"):
        reloads.add_metric([result], config["reloads"][result])
    yield reloads
    yield _gauge("watchd_watches", "inotify watches held", document["watches"])
    yield _gauge("watchd_degraded_directories", "directories the inotify watch limit left "
                 "unwatched (polled instead)", document["unwatched"]["count"])
    yield _gauge("watchd_degraded", "1 while anything is degraded (watchd status says what)",
                 1 if document["degraded"] else 0)
    yield _gauge("watchd_webhooks_waiting", "webhook deliveries not yet acknowledged",
                 document["webhooks"]["waiting"])
    dead = document["ledger"]["dead_letters"]
    if dead is not None:
        yield _gauge("watchd_dead_letters", "dead letters kept in the ledger", dead)


def _rule_metrics(rules: list[dict[str, Any]]) -> Iterator[Metric]:
    for name, help_text, label, fields in _RULE_COUNTERS:
        family = CounterMetricFamily(name.removesuffix("_total"), help_text,
                                     labels=["rule"] + ([label] if label else []))
        for rule in rules:
            for field, value in fields:
                family.add_metric([rule["name"]] + ([value] if value else []), rule[field])
        yield family
    jobs = GaugeMetricFamily("watchd_jobs", "jobs and held paths now, by rule and state",
                             labels=["rule", "state"])
    for rule in rules:
        for state in JOB_STATES:
            jobs.add_metric([rule["name"], state], rule[state])
    yield jobs
