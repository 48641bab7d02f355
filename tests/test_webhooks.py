"""Webhooks against a real HTTP server on 127.0.0.1, with a real daemon sending them."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import standardwebhooks
from conftest import PYTHON, Receiver, recorder, records, wait_for

from watchd import __version__
from watchd.service.cli import main

KEY = os.urandom(32)
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def kept(tmp_path: Path, dead: bool = False) -> int:
    """Deliveries the ledger keeps: waiting (or dead letters)."""
    ledger = tmp_path / "state" / "ledger.db"
    if not ledger.exists():
        return 0
    with contextlib.closing(sqlite3.connect(ledger)) as connection:
        return connection.execute("SELECT count(*) FROM deliveries WHERE dead=?",
                                  (int(dead),)).fetchone()[0]


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "hook.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def webhook_rules(tmp_path, watched, url, *, extra="", settings="", more_rules="") -> str:
    return f"""\
settings: {{state_dir: {tmp_path / "state"}{settings}}}
rules:
  - name: hook
    paths: [{watched}]
    actions:
      - webhook: {{url: '{url}', backoff: 50ms{extra}}}
{more_rules}"""


def command_rule(watched, out) -> str:
    return f"""\
  - name: commands
    paths: [{watched}]
    actions:
      - command: {recorder(out)}
"""


@pytest.fixture
def watched(tmp_path):
    path = tmp_path / "in"
    path.mkdir()
    return path


def test_body_headers_and_signature(tmp_path, write_rules, daemon, receiver, watched,
                                    secret_file):
    config = write_rules(webhook_rules(
        tmp_path, watched, f"{receiver.url}/hook",
        extra=f", secret_file: {secret_file}, headers: {{X-Env: prod}}"))
    daemon(config)
    (watched / "report.csv").write_bytes(b"data")
    wait_for(lambda: receiver.to("/hook"))
    request = receiver.to("/hook")[0]
    headers = {name.lower(): value for name, value in request["headers"].items()}
    # Verified by the Standard Webhooks reference library, independently of watchd's code.
    document = standardwebhooks.Webhook(SECRET).verify(request["body"], headers)
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"watchd/{__version__}"
    assert headers["x-env"] == "prod"
    assert headers["webhook-id"] == document["id"] and document["id"].startswith("msg_")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert set(document) == {"id", "rule", "event", "events", "path", "name", "dir", "root",
                             "is_dir", "src_path", "caught_up", "time", "host"}
    assert document["rule"] == "hook" and document["event"] == "close_write"
    assert document["events"] == ["close_write"]
    assert document["path"] == str(watched / "report.csv") and document["name"] == "report.csv"
    assert document["dir"] == str(watched) and document["root"] == str(watched)
    assert document["is_dir"] is False and document["src_path"] == ""
    assert document["caught_up"] is False
    assert document["host"] == socket.gethostname()
    assert document["time"].endswith("Z") and document["time"][10] == "T"


def test_a_name_that_is_not_utf8_is_escaped_and_sent_raw_in_base64(
        tmp_path, write_rules, daemon, receiver, watched):
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/hook"))
    daemon(config)
    name = b"bad\xff\nname"
    with open(os.fsencode(watched) + b"/" + name, "wb") as file:
        file.write(b"x")
    wait_for(lambda: receiver.to("/hook"))
    document = json.loads(receiver.to("/hook")[0]["body"])
    assert document["name"] == "bad\\xff\nname"
    assert base64.b64decode(document["path_b64"]) == os.fsencode(watched) + b"/" + name


def test_server_errors_are_retried_with_the_same_id(tmp_path, write_rules, daemon, receiver,
                                                    watched, secret_file):
    receiver.script["/flaky"] = [500, 503]
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/flaky",
                                       extra=f", secret_file: {secret_file}"))
    process = daemon(config)
    (watched / "f").write_bytes(b"x")
    process.wait_log("webhook delivered")
    attempts = receiver.to("/flaky")
    assert len(attempts) == 3
    assert len({request["headers"]["webhook-id"] for request in attempts}) == 1
    for request in attempts:  # each attempt signed anew, each signature valid
        standardwebhooks.Webhook(SECRET).verify(request["body"], request["headers"])
    log = process.log()
    assert log.count("webhook attempt failed: HTTP 500") == 1
    assert log.count("webhook attempt failed: HTTP 503") == 1
    assert "http_status=200" in log and "attempt=3" in log
    wait_for(lambda: kept(tmp_path) == 0)  # acknowledged: gone from the ledger


def test_retry_after_is_honoured(tmp_path, write_rules, daemon, receiver, watched):
    receiver.script["/busy"] = [429]
    receiver.extra_headers["Retry-After"] = "1"
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/busy"))
    process = daemon(config)
    (watched / "f").write_bytes(b"x")
    process.wait_log("webhook delivered")
    first, second = receiver.to("/busy")
    assert second["at"] - first["at"] >= 0.95  # backoff alone would be 50 ms


def test_client_errors_and_redirects_are_not_retried(tmp_path, write_rules, daemon, receiver,
                                                     watched):
    receiver.script["/gone"] = [404]
    receiver.script["/moved"] = [301]
    config = write_rules(webhook_rules(
        tmp_path, watched, f"{receiver.url}/gone",
        more_rules=f"""\
  - name: moved
    paths: [{watched}]
    actions:
      - webhook: {{url: '{receiver.url}/moved', backoff: 50ms}}
"""))
    process = daemon(config)
    (watched / "f").write_bytes(b"x")
    process.wait_log("dead letter", count=2)
    assert len(receiver.to("/gone")) == 1 and len(receiver.to("/moved")) == 1
    assert not receiver.to("/moved-here")  # the redirect was not followed
    log = process.log()
    assert "action failed: webhook: HTTP 404" in log and "(not retried)" in log
    assert "HTTP 301: redirect to '/moved-here' not followed" in log
    wait_for(lambda: kept(tmp_path, dead=True) == 2)


def test_an_endpoint_that_never_answers_ends_as_a_dead_letter_that_can_be_replayed(
        tmp_path, write_rules, daemon, receiver, watched, capsys):
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/silent",
                                       extra=", timeout: 200ms, retries: 2"))
    process = daemon(config)
    (watched / "late.csv").write_bytes(b"x")
    process.wait_log("dead letter")
    assert len(receiver.to("/silent")) == 3
    assert process.log().count("timed out after 0.2s") == 3

    assert main(["webhooks", "list", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "dead letters: 1" in listed and "rule=hook action=1" in listed
    assert "attempts=3" in listed and "late.csv" in listed and "timed out" in listed
    delivery_id = json.loads(receiver.to("/silent")[0]["body"])["id"]

    # The admin points the rule at a working endpoint, then replays.
    config.write_text(config.read_text().replace("/silent", "/fixed"))
    assert main(["webhooks", "replay", "--all", "--config", str(config)]) == 0
    assert f"{delivery_id}: delivered (HTTP 200)" in capsys.readouterr().out
    assert json.loads(receiver.to("/fixed")[0]["body"])["id"] == delivery_id
    assert main(["webhooks", "list", "--config", str(config)]) == 0
    assert "dead letters: 0" in capsys.readouterr().out


def jobs(*args: str) -> subprocess.CompletedProcess[str]:
    """``watchd jobs ARGS``, as an admin runs it (through the daemon when one answers)."""
    return subprocess.run([PYTHON, "-m", "watchd", "jobs", *args], capture_output=True,
                          text=True, timeout=30)


def dead_letters(config: Path) -> list[dict]:
    answered = jobs("list", "--dead", "--json", "--config", str(config))
    assert answered.returncode == 0, answered.stderr
    return json.loads(answered.stdout)["jobs"]


def a_dead_delivery(tmp_path, write_rules, daemon, receiver, watched, name: str):
    """A daemon whose webhook the receiver refuses for good (HTTP 404) for file ``name``: the
    daemon, its rules, and the dead letter as ``watchd jobs list --dead --json`` shows it."""
    receiver.script["/hook"] = [404]
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/hook"))
    process = daemon(config)
    (watched / name).write_bytes(b"x")
    process.wait_log("dead letter")
    (dead,) = dead_letters(config)
    delivery_id = json.loads(receiver.to("/hook")[0]["body"])["id"]
    assert (dead["delivery"], dead["state"], dead["rule"], dead["step"], dead["tries"]) == (
        delivery_id, "dead", "hook", 1, 1)
    assert dead["error"].startswith("HTTP 404") and dead["path"] == str(watched / name)
    assert delivery_id == f"msg_{delivery_id.split('_')[1]}_{dead['id']}_1"  # its job's id
    return process, config, dead


def test_a_webhook_that_fails_is_in_its_rule_s_figures_in_the_status(
        tmp_path, write_rules, daemon, receiver, watched):
    """Its failures, retries, dead letter and last failure, as a command's are: the rule said
    FAILED 0, retried 0, dead letters made 0 and no last failure, beside DEAD 1."""
    receiver.script["/hook"] = [500, 500]
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/hook",
                                       extra=", retries: 1"))
    daemon(config)
    (watched / "f").write_bytes(b"x")

    def status() -> dict:
        answered = subprocess.run([PYTHON, "-m", "watchd", "status", "--json"],
                                  capture_output=True, text=True, timeout=30)
        return json.loads(answered.stdout)

    document = wait_for(lambda: d if (d := status())["ledger"]["dead_letters"] == 1 else None,
                        what="the dead letter kept")
    (rule,) = document["rules"]
    assert (rule["webhooks_failed"], rule["retried"], rule["dead_letters"]) == (1, 1, 1)
    # Each attempt a run that failed, as a command's; none ok (it counted the hand-over).
    assert (rule["actions_ok"], rule["actions_failed"]) == (0, 2)
    failure = rule["last_failure"]
    assert failure["path"] == str(watched / "f") and failure["error"].startswith("HTTP 500")
    assert failure["action"].startswith("webhook msg_")
    human = subprocess.run([PYTHON, "-m", "watchd", "status"], capture_output=True, text=True,
                           timeout=30).stdout
    row = next(line.split() for line in human.splitlines() if line.startswith("hook "))
    assert (row[2], row[3], row[-1]) == ("0", "2", "1"), human  # OK, FAILED, DEAD
    assert "last failure" in human and "HTTP 500" in human, human


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_dead_webhook_is_a_dead_letter_of_its_job_that_watchd_jobs_retries(
        tmp_path, write_rules, daemon, receiver, watched):
    # It was a dead delivery only: watchd jobs list --dead showed nothing, the status counted
    # no dead letter, and watchd jobs retry knew no such id.
    process, config, dead = a_dead_delivery(tmp_path, write_rules, daemon, receiver, watched,
                                            "f")
    listed = jobs("list", "--dead").stdout
    assert "jobs: 1 dead" in listed and f"webhook {dead['delivery']}: HTTP 404" in listed
    document = json.loads(subprocess.run([PYTHON, "-m", "watchd", "status", "--json"],
                                          capture_output=True, text=True, timeout=30).stdout)
    assert document["ledger"]["dead_letters"] == 1
    retried = jobs("retry", str(dead["id"]))
    assert (retried.returncode, retried.stdout) == (0, f"{dead['delivery']}: queued again\n")
    # Sent again at once, under the same id, and gone once acknowledged.
    wait_for(lambda: len(receiver.to("/hook")) == 2, what="the delivery sent again")
    assert json.loads(receiver.to("/hook")[1]["body"])["id"] == dead["delivery"]
    wait_for(lambda: kept(tmp_path) == 0 and kept(tmp_path, dead=True) == 0)
    assert not dead_letters(config)
    # Another one, dropped by its delivery's id; an id that names none fails.
    receiver.script["/hook"] = [404]
    (watched / "g").write_bytes(b"x")
    process.wait_log("dead letter", count=2)
    (second,) = dead_letters(config)
    dropped = jobs("drop", second["delivery"], "msg_nope")
    assert (dropped.returncode, dropped.stdout, dropped.stderr) == (
        1, f"{second['delivery']}: dropped\n", "msg_nope: no such dead letter\n")
    assert not dead_letters(config) and kept(tmp_path, dead=True) == 0
    assert process.stop() == 0


def test_a_dead_webhook_whose_action_a_reload_removed_is_not_queued_again(
        tmp_path, write_rules, daemon, receiver, watched):
    process, config, dead = a_dead_delivery(tmp_path, write_rules, daemon, receiver, watched,
                                            "f")
    config.write_text(webhook_rules(tmp_path, watched, f"{receiver.url}/hook").replace(
        f"webhook: {{url: '{receiver.url}/hook', backoff: 50ms}}", "command: [/bin/true]"))
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")
    retried = jobs("retry", str(dead["id"]))
    assert (retried.returncode, retried.stdout, retried.stderr) == (
        1, "", f"{dead['delivery']}: not queued: its rule 'hook' has no webhook as action 1 "
        "now (fix the rules, reload, retry)\n")
    assert len(receiver.to("/hook")) == 1 and dead_letters(config) == [dead]


def changed_by(change: str, process, daemon, config: Path):
    """The rules rewritten put in force by a reload, or by a restart: the daemon then."""
    if change == "reload":
        process.signal(signal.SIGHUP)
        process.wait_log("reloaded")
        return process
    assert process.stop() == 0
    return daemon(config)


@pytest.mark.parametrize("change", ["reload", "restart"])
def test_a_delivery_whose_webhook_now_posts_elsewhere_is_not_sent_there_unasked(
        tmp_path, write_rules, daemon, receiver, watched, change):
    # Outboxes go by the action's place in its rule: with the first of two webhooks removed,
    # what waited for it was sent to the second one's URL, a second copy under another id.
    receiver.script["/b"] = [503] * 100
    hooks = (f"    actions:\n      - webhook: {{url: '{receiver.url}/b', backoff: 1h}}\n"
             f"      - webhook: {{url: '{receiver.url}/c'}}\n")
    rules = f"settings: {{state_dir: {tmp_path / 'state'}}}\nrules:\n  - name: two\n" \
            f"    paths: [{watched}]\n"
    config = write_rules(rules + hooks)
    process = daemon(config)
    (watched / "f").write_bytes(b"x")
    wait_for(lambda: receiver.to("/b") and receiver.to("/c"), what="an attempt at each")
    config.write_text(rules + hooks.split("      - webhook: ", 2)[0]
                      + f"      - webhook: {{url: '{receiver.url}/c'}}\n")
    process = changed_by(change, process, daemon, config)
    process.wait_log("posts to another URL than when it was made; send it there with: "
                     "watchd jobs retry msg_")
    (dead,) = dead_letters(config)  # the other, delivered, is none
    assert dead["delivery"].endswith("_1") and "another URL" in dead["error"]
    assert len(receiver.to("/c")) == 1  # not a second copy
    # Asked for, it goes where its action now posts.
    assert jobs("retry", dead["delivery"], "--config", str(config)).returncode == 0
    wait_for(lambda: len(receiver.to("/c")) == 2, what="the delivery sent on")
    assert json.loads(receiver.to("/c")[1]["body"])["id"] == dead["delivery"]


@pytest.mark.parametrize("change", ["reload", "restart"])
def test_a_delivery_waiting_for_a_webhook_action_removed_is_a_dead_letter(
        tmp_path, write_rules, daemon, receiver, watched, change):
    receiver.script["/hook"] = [503] * 100
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/hook",
                                       extra=", backoff: 1h").replace(", backoff: 50ms", ""))
    process = daemon(config)
    (watched / "f").write_bytes(b"x")
    process.wait_log("webhook attempt failed")
    config.write_text(config.read_text().replace(
        f"webhook: {{url: '{receiver.url}/hook', backoff: 1h}}", "command: [/bin/true]"))
    process = changed_by(change, process, daemon, config)
    process.wait_log("webhook delivery kept as a dead letter: its rule 'hook' has no webhook "
                     "as action 1 any more")
    (dead,) = dead_letters(config)
    assert dead["error"] == "its rule 'hook' has no webhook as action 1 any more"
    assert len(receiver.to("/hook")) == 1 and kept(tmp_path) == 0


def test_a_dead_webhook_retried_while_the_daemon_is_stopped_is_sent_at_its_start(
        tmp_path, write_rules, daemon, receiver, watched, capsys):
    process, config, dead = a_dead_delivery(tmp_path, write_rules, daemon, receiver, watched,
                                            "f")
    assert process.stop() == 0
    retried = jobs("retry", dead["delivery"], "--config", str(config))
    assert (retried.returncode, retried.stdout) == (0, f"{dead['delivery']}: queued again\n")
    assert main(["webhooks", "list", "--config", str(config)]) == 0
    assert "waiting: 1" in capsys.readouterr().out
    daemon(config)
    wait_for(lambda: len(receiver.to("/hook")) == 2, what="the delivery sent at the start")
    wait_for(lambda: kept(tmp_path) == 0 and kept(tmp_path, dead=True) == 0)


def test_watchd_webhooks_on_a_corrupt_ledger_says_so_without_a_traceback(
        tmp_path, write_rules, receiver, watched, capsys):
    # The list said "dead letters: 0" and exited 0.
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/hook"))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ledger.db").write_bytes(b"this is not an SQLite database\n" * 1000)
    for args in (["list"], ["replay", "--all"]):
        assert main(["webhooks", *args, "--config", str(config)]) == 1
        said = capsys.readouterr()
        assert "cannot read the ledger" in said.err and not said.out


def test_replay_of_an_unknown_id_fails(tmp_path, write_rules, receiver, watched, capsys):
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/hook"))
    assert main(["webhooks", "replay", "msg_nope", "--config", str(config)]) == 1
    assert "msg_nope: no such dead letter" in capsys.readouterr().err


def test_deliveries_pending_at_kill_9_are_sent_after_the_restart(tmp_path, write_rules, daemon,
                                                                  receiver, watched):
    receiver.script["/down"] = [503] * 1000
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/down",
                                       extra=", retries: 100", settings=", workers: 1"))
    first = daemon(config)
    for index in range(5):
        (watched / f"f{index}").write_bytes(b"x")
    wait_for(lambda: kept(tmp_path) == 5)
    wait_for(lambda: receiver.to("/down"))
    sent_before = {json.loads(r["body"])["id"] for r in receiver.to("/down")}
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()

    receiver.script["/down"] = []  # the endpoint is back
    second = daemon(config)
    second.wait_log("webhook delivered", count=5)
    delivered = [json.loads(r["body"]) for r in receiver.to("/down")]
    names = {document["name"] for document in delivered}
    assert names == {f"f{index}" for index in range(5)}
    assert sent_before <= {document["id"] for document in delivered}  # the same ids, resent
    assert [d["name"] for d in delivered[-5:]] == [f"f{index}" for index in range(5)]  # in order
    wait_for(lambda: kept(tmp_path) == 0)


def test_a_slow_endpoint_delays_only_its_own_rule(tmp_path, write_rules, daemon, receiver,
                                                  watched):
    out = tmp_path / "out.jsonl"
    receiver.hold.clear()
    config = write_rules(webhook_rules(
        tmp_path, watched, f"{receiver.url}/held", extra=", timeout: 30s",
        settings=", workers: 1",
        more_rules=command_rule(watched, out)))
    process = daemon(config)
    for index in range(20):
        (watched / f"f{index}").write_bytes(b"x")
    # All twenty commands ran, on a single worker, while the webhook's first request is held.
    wait_for(lambda: len(records(out)) == 20)
    assert len(receiver.to("/held")) == 1
    receiver.hold.set()
    process.wait_log("webhook delivered", count=20)


def test_a_full_backlog_delays_deliveries_and_loses_none(tmp_path, write_rules, daemon, receiver,
                                                         watched):
    receiver.hold.clear()
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/held",
                                       extra=", timeout: 30s",
                                       settings=", webhook_backlog: 3"))
    process = daemon(config)
    for index in range(10):
        (watched / f"f{index}").write_bytes(b"x")
    process.wait_log("webhook backlog full: deliveries dropped")

    def counters() -> list[str]:
        process.signal(signal.SIGUSR1)
        return process.log().rpartition("counters")[2].split()

    # Three accepted (the one being sent counts: it is not acknowledged); the seven refused
    # are counted, and their jobs tried again later rather than lost.
    wait_for(lambda: any(item.startswith("webhooks_dropped=") and int(item.split("=")[1]) >= 7
                         for item in counters()))
    process.wait_log("job retried")
    receiver.hold.set()
    process.wait_log("webhook delivered", count=10, timeout=60)
    assert sorted(json.loads(request["body"])["name"] for request in receiver.to("/held")) == [
        f"f{index}" for index in range(10)]


@pytest.mark.parametrize(("setup", "fragment"), [
    (lambda path: path.chmod(0o644), "is open to group or others (mode 0644): chmod 600"),
    (lambda path: path.chmod(0o640), "is open to group or others (mode 0640)"),
    (lambda path: path.write_text("not base64 at all!"),
     "does not hold a Standard Webhooks secret"),
    (lambda path: path.write_text("whsec_" + base64.b64encode(b"short").decode()),
     "the key is 5 bytes; use at least 16"),
    (lambda path: path.unlink(), "cannot read secret file"),
    (lambda path: (path.rename(path.with_name("real")), path.symlink_to("real")), "is a symlink"),
], ids=["0644", "0640", "not-base64", "short", "missing", "symlink"])
def test_a_secret_file_that_cannot_be_trusted_is_refused(tmp_path, write_rules, receiver, watched,
                                                         secret_file, capsys, setup, fragment):
    setup(secret_file)
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/hook",
                                       extra=f", secret_file: {secret_file}"))
    assert main(["check", "--config", str(config)]) == 1
    errors = capsys.readouterr().err
    assert f"{config}:6:" in errors and fragment in errors
    assert SECRET.removeprefix("whsec_") not in errors


def test_the_secret_is_never_shown(tmp_path, write_rules, daemon, receiver, watched, secret_file):
    out = tmp_path / "env.jsonl"
    config = write_rules(webhook_rules(
        tmp_path, watched, f"{receiver.url}/hook", extra=f", secret_file: {secret_file}",
        settings=", log_level: debug",
        more_rules=command_rule(watched, out)))
    explained = subprocess.run([PYTHON, "-m", "watchd", "explain", str(watched / "f"),
                                "--config", str(config)], capture_output=True, check=True).stdout
    assert f"webhook: POST {receiver.url}/hook, signed with the key in {secret_file}".encode() \
        in explained
    checked = subprocess.run([PYTHON, "-m", "watchd", "check", "--config", str(config)],
                             capture_output=True, check=True)
    process = daemon(config)
    (watched / "f").write_bytes(b"x")
    process.wait_log("webhook delivered")
    wait_for(lambda: records(out))
    process.signal(signal.SIGUSR1)
    process.wait_log("counters")
    encoded = SECRET.removeprefix("whsec_").encode()
    environment = json.dumps(records(out)).encode()
    for text in (explained, checked.stdout + checked.stderr, process.log().encode(), environment):
        assert encoded not in text and KEY not in text and KEY.hex().encode() not in text


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl to make a certificate")
def test_a_certificate_that_does_not_verify_is_refused_not_retried(tmp_path, write_rules, daemon,
                                                                    watched):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", tmp_path / "key.pem", "-out", tmp_path / "cert.pem"],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = Receiver(tls=context)
    try:
        config = write_rules(webhook_rules(tmp_path, watched, f"{server.url}/hook"))
        process = daemon(config)
        (watched / "f").write_bytes(b"x")
        process.wait_log("dead letter")
        assert "action failed: webhook: TLS: " in process.log()
        assert "(not retried)" in process.log() and "CERTIFICATE_VERIFY_FAILED" in process.log()
        assert not server.requests  # nothing was sent over the unverified connection
    finally:
        server.close()


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_an_unwritable_state_directory_degrades_and_loses_nothing(tmp_path, write_rules, daemon,
                                                                  receiver, watched):
    (tmp_path / "state").write_text("a file where the directory should be")
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/hook"))
    process = daemon(config)
    (watched / "f").write_bytes(b"x")
    process.wait_log("webhook delivered")
    log = process.log()
    assert "DEGRADED: cannot open" in log and "jobs are kept in memory" in log
    assert "Traceback" not in log


def spool_of_0_1(state: Path, watched: Path) -> None:
    """What watchd 0.1 left in ``state``: a delivery waiting, and a dead letter."""
    waiting, dead = state / "spool" / "hook" / "1", state / "dead"
    waiting.mkdir(parents=True)
    dead.mkdir()
    for directory, delivery_id, name in ((waiting, "msg_old1", "waited"),
                                         (dead, "msg_old2", "failed")):
        body = json.dumps({"id": delivery_id, "name": name}).encode()
        (directory / f"00000000000000000001-{delivery_id}.json").write_text(json.dumps({
            "id": delivery_id, "rule": "hook", "action": 1, "event": "close_write",
            "path_b64": base64.b64encode(os.fsencode(watched / name)).decode(),
            "body": body.decode(), "created": 1.0, "attempts": 1, "last_error": "HTTP 503"}))


def test_deliveries_of_the_0_1_spool_are_imported_once(tmp_path, write_rules, daemon, receiver,
                                                       watched):
    """watchd 0.1 kept each delivery as a JSON file: the first start sends what waited there,
    keeps its dead letters, and removes the files."""
    state = tmp_path / "state"
    spool_of_0_1(state, watched)
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/hook"))
    process = daemon(config)
    process.wait_log("webhook delivered")
    assert [json.loads(r["body"])["id"] for r in receiver.to("/hook")] == ["msg_old1"]
    assert "imported 2 webhook deliveries of watchd 0.1" in process.log()
    assert not (state / "spool").exists() and not (state / "dead").exists()
    wait_for(lambda: kept(tmp_path, dead=True) == 1)
    process.stop()
    assert daemon(config).log().count("imported") == 0


@pytest.mark.slow  # waits for the ledger's next try: make test runs it, make check does not
def test_a_0_1_spool_that_cannot_be_imported_yet_waits_in_its_files(tmp_path, write_rules,
                                                                      daemon, receiver, watched):
    # The import's error (a ledger locked, read-only or full) ended the start in a traceback.
    state = tmp_path / "state"
    spool_of_0_1(state, watched)
    with contextlib.closing(sqlite3.connect(state / "ledger.db", isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            process = daemon(write_rules(webhook_rules(tmp_path, watched,
                                                       f"{receiver.url}/hook")))
            process.wait_log("cannot be imported into the ledger now")
        finally:
            other.execute("ROLLBACK")
    assert "Traceback" not in process.log()
    assert (state / "spool").exists() and not receiver.to("/hook")
    process.signal(signal.SIGHUP)  # the ledger free again: the reload imports and sends
    process.wait_log("webhook delivered")
    assert "imported 2 webhook deliveries of watchd 0.1" in process.log()
    assert [json.loads(r["body"])["id"] for r in receiver.to("/hook")] == ["msg_old1"]


def test_deliveries_keep_the_order_of_events_with_many_workers(tmp_path, write_rules, daemon,
                                                               receiver, watched):
    daemon(write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/hook",
                                     settings=", workers: 4")))
    names = [f"seq{index:02}" for index in range(40)]
    for name in names:
        (watched / name).write_bytes(b"x")
    wait_for(lambda: len(receiver.to("/hook")) >= 40, what="40 deliveries")
    assert [json.loads(r["body"])["name"] for r in receiver.to("/hook")] == names


def test_ctrl_c_during_a_replay_is_no_traceback(tmp_path, write_rules, daemon, receiver,
                                                 watched):
    receiver.script["/refuses"] = [400]
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/refuses"))
    process = daemon(config)
    (watched / "f.csv").write_bytes(b"x")
    process.wait_log("dead letter")
    process.stop()
    config.write_text(config.read_text().replace("/refuses", "/held"))
    receiver.hold.clear()  # the replay's attempt hangs until Ctrl-C
    replay = subprocess.Popen([PYTHON, "-m", "watchd", "webhooks", "replay", "--all",
                               "--config", str(config)], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: receiver.to("/held"), what="the replay's attempt")
    replay.send_signal(signal.SIGINT)
    _, stderr = replay.communicate(timeout=15)
    assert replay.returncode == 130
    assert stderr == "interrupted\n"


def test_a_file_written_while_down_is_delivered_marked_caught_up(tmp_path, write_rules, daemon,
                                                                 receiver, watched):
    config = write_rules(webhook_rules(tmp_path, watched, f"{receiver.url}/hook"))
    daemon(config).stop()
    (watched / "late").write_bytes(b"x")
    daemon(config).wait_log("webhook delivered")
    (document,) = [json.loads(request["body"]) for request in receiver.to("/hook")]
    assert document["name"] == "late" and document["caught_up"] is True


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare (a UTS namespace of its own)")
def test_a_bodys_host_follows_a_new_machine_name_within_a_second():
    """The name is looked up once a second at most, not for every body: a renamed machine
    is named so soon after (here in a UTS namespace of its own, the real one untouched)."""
    code = textwrap.dedent("""\
        import socket, time
        from watchd.actions.webhook import machine_name
        assert machine_name() == socket.gethostname()
        socket.sethostname("watchd-renamed")
        deadline = time.monotonic() + 10
        while machine_name() != "watchd-renamed":
            assert time.monotonic() < deadline, "the new name never came"
            time.sleep(0.05)
        """)
    subprocess.run(["unshare", "--uts", PYTHON, "-c", code], check=True, timeout=60)
