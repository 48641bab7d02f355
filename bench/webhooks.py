"""Webhook benchmark: deliveries per second from a running daemon to a server on 127.0.0.1.

watchd (a real `watchd run` process) sends one signed delivery per file written into a
watched directory; the time runs from the first file to the last delivery the server saw.
The files are made by another process (a writer in this one would take the interpreter lock
from the server) in a tree on tmpfs, as the suite's trees are; the daemon's state directory,
and so its ledger, is on the disk. The reference is a bare loop in one thread POSTing the same
number of bodies with urllib3 over one kept-alive connection: the ceiling for one outbox,
which sends in order. The difference is what watchd adds: the event, matching, the job kept
in the ledger (on disk before it runs), the body, signing, and the delivery kept in the
ledger until acknowledged.

Usage: bench/webhooks.py [--quick]
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import urllib3
from intake import FAST_BASE, write_files


class Sink:
    """An HTTP server that answers 200 at once and counts."""

    def __init__(self) -> None:
        self.count = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                sink.count += 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, target: int, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.count} of {target} deliveries arrived")
            time.sleep(0.001)


def bare_loop(sink: Sink, count: int) -> float:
    pool = urllib3.PoolManager()
    body = b'{"id":"msg_x","rule":"bench","event":"close_write"}'
    started = time.monotonic()
    for _ in range(count):
        pool.request("POST", sink.url, body=body, headers={"Content-Type": "application/json"},
                     retries=False, redirect=False)
    return count / (time.monotonic() - started)


def watchd(sink: Sink, count: int, work: Path, tree: Path) -> float:
    """The daemon's ledger in ``work`` (on the disk: its fsyncs are what durability costs),
    the files it sends for in ``tree`` (tmpfs), written by another process."""
    watched, state = tree / "in", work / "state"
    watched.mkdir()
    secret = work / "secret"
    secret.write_text("whsec_" + base64.b64encode(os.urandom(32)).decode())
    secret.chmod(0o600)
    config = work / "rules.yaml"
    config.write_text(f"""\
settings: {{state_dir: {state}, log_level: warning, webhook_backlog: {count}}}
rules:
  - name: bench
    paths: [{watched}]
    actions:
      - webhook: {{url: '{sink.url}', secret_file: {secret}}}
""")
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ready.bind(str(work / "notify"))
    ready.settimeout(30)
    daemon = subprocess.Popen([sys.executable, "-m", "watchd", "run", "--config", str(config),
                               "--log-target", "stderr"],
                              env={**os.environ, "NOTIFY_SOCKET": str(work / "notify")})
    try:
        while b"READY=1" not in ready.recv(4096):
            pass
        sink.count = 0
        started = time.monotonic()
        write_files(watched, count)
        sink.wait(count)
        return count / (time.monotonic() - started)
    finally:
        daemon.terminate()
        daemon.wait()
        ready.close()


def measure(count: int, runs: int) -> tuple[list[float], list[float]]:
    """Deliveries/s of the bare loop and of watchd, ``runs`` times each, alternating."""
    sink = Sink()
    bare, sent = [], []
    for _ in range(runs):
        bare.append(bare_loop(sink, count))
        with (tempfile.TemporaryDirectory(prefix="watchd-bench-") as work,
              tempfile.TemporaryDirectory(prefix="watchd-bench-", dir=FAST_BASE) as tree):
            sent.append(watchd(sink, count, Path(work), Path(tree)))
    sink.server.shutdown()
    sink.server.server_close()
    return bare, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer deliveries and runs")
    args = parser.parse_args()
    count, runs = (300, 2) if args.quick else (2000, 5)
    bare, sent = measure(count, runs)
    print(f"webhooks, {runs} runs of {count} deliveries to 127.0.0.1")
    print(f"{'sender':<34}{'median /s':>10}{'min':>9}{'max':>9}")
    for name, rates in (("bare urllib3 loop, one connection", bare),
                        ("watchd: match, sign, spool, send", sent)):
        print(f"{name:<34}{statistics.median(rates):>10,.0f}{min(rates):>9,.0f}"
              f"{max(rates):>9,.0f}")
    print(f"watchd / bare: {statistics.median(sent) / statistics.median(bare):.2f}x")


if __name__ == "__main__":
    main()
