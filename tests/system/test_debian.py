"""watchd as its users meet it: the .deb built and installed on a booted Debian 13, driven by
systemctl and read with journalctl.

Needs root, systemd-nspawn and debootstrap (`make test` installs the last two when root); the
first run makes the cached image (about a minute), each run then boots a volatile copy.
The commands a user types are the README's "Install as a service" section, checked below.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("systemd-nspawn") or not shutil.which("debootstrap"),
    reason="the system test boots Debian with systemd-nspawn: needs root, systemd-container "
           "and debootstrap",
)

from machine import NOT_SOURCE, Machine, image  # noqa: E402

REPO = Path(__file__).parents[2]
DEADLINE = 20.0
STARTED = "068b4e040e93426f8b3e83d413c3d593"
RELOADED = "0b4317ae335b4a19b8afe5ef16a9a881"
RELOAD_FAILED = "cdac17c011ec46c4ad1fc002220c2217"
ACTION_FAILED = "3dcd49a4ec2442ee945fd086eee85464"
STOPPED = "32ca5750e7b74d2b8cabb1664de3f322"

# What a user types, in order; each line is in the README, as it is here.
INSTALL = "apt install -y ./watchd_0.1.0_all.deb"
ENABLE = "systemctl enable --now watchd"
CHECK = "watchd check"
RELOAD = "systemctl reload watchd"
STATUS = "systemctl status watchd"
JOURNAL = "journalctl -u watchd"
STOP = "systemctl stop watchd"
# This test starts the service more often than systemd's start limit allows (5 in 10 s).
RESTART = "systemctl reset-failed watchd; systemctl restart watchd"
RULES = """\
rules:
  - name: incoming
    paths: [/srv/incoming]
    actions:
      - command: [/usr/bin/cp, "--", "{path}", /srv/processed/]
  - name: reject-bad
    paths: [/srv/incoming]
    include: ["*.bad"]
    actions:
      - command: [/usr/bin/false]
"""


def wait_until(machine: Machine, script: str, what: str, timeout: float = DEADLINE) -> None:
    """Run ``script`` in the machine until it succeeds; fail past ``timeout``."""
    deadline = time.monotonic() + timeout
    while machine.run(["sh", "-c", script], check=False).returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    booted = Machine(image(), REPO, tmp_path_factory.mktemp("machine") / "console.log")
    yield booted
    booted.poweroff()


@pytest.fixture(scope="module")
def built(machine):
    """Build the package from this tree, inside the machine, as a Debian developer would."""
    excludes = " ".join(f"--exclude='{pattern}'" for pattern in NOT_SOURCE)
    machine.sh(f"mkdir -p /build/watchd && tar -C /src {excludes} -cf - . "
               "| tar -C /build/watchd -xf -")
    build = machine.sh("cd /build/watchd && dpkg-buildpackage -us -uc -b 2>&1", check=False)
    assert build.returncode == 0, build.stdout[-4000:]
    return machine


@pytest.fixture(scope="module")
def installed(built):
    built.sh(f"cd /build && {INSTALL}")
    return built


def journal(machine: Machine, *matches: str) -> list[dict]:
    output = machine.run(["journalctl", "-u", "watchd", "-o", "json", "--no-pager",
                          *matches]).stdout
    return [json.loads(line) for line in output.splitlines()]


def field_bytes(value: str | list[int]) -> bytes:
    """journalctl -o json gives a field that is not UTF-8 as an array of its bytes."""
    return bytes(value) if isinstance(value, list) else value.encode()


def test_lintian_finds_no_errors(built):
    report = built.sh("cd /build && lintian --info --pedantic watchd_0.1.0_amd64.changes 2>&1")
    tags = [line for line in report.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    print("lintian:", *tags or ["(nothing)"], sep="\n  ")
    assert not [tag for tag in tags if tag.startswith("E: ")]


# The upgrade: the previous commit's package, then this one installed over it while files
# arrive. Each writes "<job id> <path>" for every file it acts on, one at a time.
UPGRADE_RULES = """\
settings: {workers: 1}
rules:
  - name: upgrade
    paths: [/srv/upgrade/in]
    actions:
      - command: [/bin/sh, -c, 'sleep 0.02; echo "$WATCHD_JOB $WATCHD_PATH" >> /srv/upgrade/done']
"""
UPGRADE_FILES = 300


def previous_release() -> str:
    """The commit the package is upgraded from: the newest release tag, else the commit before
    this one (what the last landed build was made from)."""
    def git(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True,
                              check=False)
    tag = git("describe", "--tags", "--abbrev=0", "--match", "v*")
    commit = git("rev-parse", "--verify", tag.stdout.strip() if tag.returncode == 0 else "HEAD~1")
    assert commit.returncode == 0, f"no previous release to upgrade from: {commit.stderr}"
    return commit.stdout.strip()


def build_previous(machine: Machine) -> str:
    """Build the previous release's package inside the machine, as version 0.1.0~prev (sorted
    before this one); its path there."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar",
                              previous_release()], capture_output=True, check=True).stdout
    machine.run(["sh", "-c", "mkdir -p /build-old/watchd && base64 -d | tar -C /build-old/watchd "
                 "-xf -"], input=base64.b64encode(archive).decode())
    machine.sh("cd /build-old/watchd && sed -i '1s/(0.1.0)/(0.1.0~prev)/' debian/changelog && "
               "dpkg-buildpackage -us -uc -b >/dev/null 2>&1")
    return "/build-old/watchd_0.1.0~prev_all.deb"


def test_an_upgrade_while_files_arrive_acts_on_each_once(built):
    """apt installs the new package over the old while files keep arriving: each file is acted
    on once; the one whose action ran during the restart at least once, as the same job."""
    old = build_previous(built)
    built.sh(f"apt install -y {old} && cp /etc/watchd/rules.yaml /root/rules.yaml.shipped")
    built.sh("mkdir -p /srv/upgrade/in")
    built.run(["tee", "/etc/watchd/rules.yaml"], input=UPGRADE_RULES)
    built.sh(f"{ENABLE} && {RESTART}")
    built.sh("systemd-run --unit=upgrade-writer sh -c 'for i in $(seq 1 "
             f"{UPGRADE_FILES}); do echo x > /srv/upgrade/in/f$i; sleep 0.02; done'")
    wait_until(built, "test $(wc -l < /srv/upgrade/done) -ge 20", "the old version at work")
    built.sh(f"cd /build && {INSTALL}")
    assert "0.1.0~prev" not in built.run(["dpkg-query", "-W", "watchd"]).stdout
    wait_until(built, "! systemctl is-active -q upgrade-writer", "the writer's end", 60)
    wait_until(built, f"test $(sort -u -k2 /srv/upgrade/done | wc -l) -eq {UPGRADE_FILES}",
               "every file acted on", 60)
    runs: defaultdict[str, list[str]] = defaultdict(list)
    for line in built.run(["cat", "/srv/upgrade/done"]).stdout.splitlines():
        job, path = line.split(" ", 1)
        runs[path].append(job)
    again = {path: jobs for path, jobs in runs.items() if len(jobs) > 1}
    assert len(again) <= 1 and all(len(set(jobs)) == 1 for jobs in again.values()), again
    built.sh("cp /root/rules.yaml.shipped /etc/watchd/rules.yaml && systemctl stop watchd && "
             "rm -rf /var/lib/watchd/* /srv/upgrade")


def test_installed_enabled_and_running(installed):
    installed.sh(ENABLE)
    assert installed.run(["systemctl", "is-active", "watchd"]).stdout.strip() == "active"
    assert installed.run(["systemctl", "is-enabled", "watchd"]).stdout.strip() == "enabled"
    shown = installed.run(["systemctl", "show", "watchd", "-p", "Type,NotifyAccess,WatchdogUSec,"
                           "KillMode,StatusText"]).stdout
    assert "Type=notify-reload" in shown and "NotifyAccess=main" in shown
    assert "KillMode=mixed" in shown and "WatchdogUSec=30s" in shown
    assert "StatusText=0 rules, 0 watches" in shown
    assert any(entry.get("MESSAGE_ID") == STARTED for entry in journal(installed))
    # The shipped rules file is a conffile: an admin's edits survive upgrades.
    conffiles = installed.run(["dpkg-query", "-W", "-f=${Conffiles}", "watchd"]).stdout
    assert "/etc/watchd/rules.yaml" in conffiles


def test_reload_puts_new_rules_in_force(installed):
    installed.sh("mkdir -p /srv/incoming /srv/processed")
    installed.run(["tee", "/etc/watchd/rules.yaml"], input=RULES)
    installed.sh(CHECK)
    installed.sh(RELOAD)  # returns once the daemon has said READY=1 again
    assert any(entry.get("MESSAGE_ID") == RELOADED for entry in journal(installed))
    installed.sh("echo hello > /srv/incoming/report.csv")
    wait_until(installed, "test -s /srv/processed/report.csv", "the new rule to copy the file")


def test_journal_fields_carry_rule_path_and_message_ids(installed):
    installed.sh("printf x > \"$(printf '/srv/incoming/na\\377me\\nwith newline.bad')\"")
    hostile = b"/srv/incoming/na\xffme\nwith newline.bad"
    wait_until(installed, f"journalctl -u watchd MESSAGE_ID={ACTION_FAILED} | grep -q bad",
               "the failed action in the journal")
    failed = journal(installed, f"MESSAGE_ID={ACTION_FAILED}")[-1]
    assert failed["WATCHD_RULE"] == "reject-bad"
    assert field_bytes(failed["WATCHD_PATH"]) == hostile  # the name's exact bytes
    assert failed["WATCHD_EXIT_STATUS"] == "1" and failed["PRIORITY"] == "3"
    assert failed["WATCHD_ACTION"] == "command" and failed["WATCHD_EVENT"] == "close_write"
    assert "\n" not in failed["MESSAGE"]  # escaped for the human reader
    wait_until(installed, f"{JOURNAL} -o cat | grep -q 'action ok rule=incoming.*with newline'",
               "the copy of the hostile name")
    ok = [e for e in journal(installed) if e.get("WATCHD_RULE") == "incoming"
          and field_bytes(e.get("WATCHD_PATH", "")) == hostile]
    assert ok and ok[-1]["WATCHD_DURATION_MS"].isdigit()
    # The catalog is installed and explains the MESSAGE_IDs.
    explained = installed.sh(f"journalctl --catalog --list-catalog | grep -c {ACTION_FAILED}")
    assert explained.stdout.strip() == "1"


def test_status_and_one_rules_journal_as_an_admin_reads_them(installed):
    """After the runs above: ``watchd status`` over the unit's control socket, and one rule's
    whole life in the journal."""
    assert installed.sh("stat -c %a /run/watchd/control").stdout.strip() == "600"
    shown = installed.sh("watchd status").stdout
    assert shown.startswith("● watchd ") and all(len(line) <= 80 for line in shown.splitlines())
    rows = {line.split()[0]: line.split()[1:] for line in shown.splitlines()
            if line.startswith(("incoming ", "reject-bad "))}
    assert int(rows["incoming"][1]) >= 1 and int(rows["reject-bad"][2]) >= 1, shown
    assert "last failure" in shown
    document = json.loads(installed.sh("watchd status --json").stdout)
    assert document["config"]["path"] == "/etc/watchd/rules.yaml"
    assert document["ledger"]["file"] == "/var/lib/watchd/ledger.db"
    life = installed.sh(f"{JOURNAL} WATCHD_RULE=incoming -o cat --no-pager").stdout
    assert "action ok rule=incoming" in life and "reject-bad" not in life


def test_a_broken_rules_file_fails_the_reload_and_keeps_the_old_rules(installed):
    installed.run(["tee", "/etc/watchd/rules.yaml"], input="rules:\n  - name: [\n")
    assert installed.sh(CHECK, check=False).returncode == 1
    assert installed.sh(RELOAD, check=False).returncode != 0
    assert installed.run(["systemctl", "is-active", "watchd"]).stdout.strip() == "active"
    wait_until(installed, f"journalctl -u watchd MESSAGE_ID={RELOAD_FAILED} | grep -q rules.yaml",
               "the reload failure in the journal")
    status = installed.sh(STATUS, check=False).stdout
    assert "last reload FAILED, previous rules in force: /etc/watchd/rules.yaml:" in status
    installed.sh("echo again > /srv/incoming/after-broken.csv")
    wait_until(installed, "test -s /srv/processed/after-broken.csv", "the old rules to fire")
    installed.run(["tee", "/etc/watchd/rules.yaml"], input=RULES)
    installed.sh(RELOAD)


def test_invalid_rules_at_start_fail_once_without_a_restart_loop(installed):
    installed.run(["tee", "/etc/watchd/rules.yaml"], input="rules:\n  - name: [\n")
    assert installed.sh("systemctl restart watchd", check=False).returncode != 0
    wait_until(installed, "systemctl is-failed -q watchd", "the service to be failed, not looping")
    shown = installed.run(["systemctl", "show", "watchd", "-p", "NRestarts,ExecMainStatus"]).stdout
    assert "NRestarts=0" in shown and "ExecMainStatus=78" in shown
    assert journal(installed, "MESSAGE_ID=6147e902439d4327be3df311bcd76e7b")
    installed.run(["tee", "/etc/watchd/rules.yaml"], input=RULES)
    installed.sh(RESTART)


def test_the_watchdog_restarts_a_daemon_that_stopped_answering(installed):
    # A short watchdog so the test need not wait the shipped 30 s.
    installed.sh("mkdir -p /etc/systemd/system/watchd.service.d && printf "
                 "'[Service]\\nWatchdogSec=2s\\n' > /etc/systemd/system/watchd.service.d/t.conf"
                 f" && systemctl daemon-reload && {RESTART}")
    before = installed.run(["systemctl", "show", "-P", "MainPID", "watchd"]).stdout.strip()
    installed.run(["kill", "-STOP", before])
    wait_until(installed, f"test \"$(systemctl show -P MainPID watchd)\" != {before} -a "
               "\"$(systemctl show -P MainPID watchd)\" != 0 && systemctl is-active -q watchd",
               "systemd to restart the silent daemon", timeout=30)
    assert installed.run(["systemctl", "show", "-P", "NRestarts", "watchd"]).stdout.strip() == "1"
    assert "Failed with result 'watchdog'" in installed.sh(f"{JOURNAL} --no-pager").stdout
    installed.sh("echo after > /srv/incoming/after-restart.csv")
    wait_until(installed, "test -s /srv/processed/after-restart.csv", "the restarted daemon")
    installed.sh("rm /etc/systemd/system/watchd.service.d/t.conf && systemctl daemon-reload")


# A receiver inside the machine: answers 200 to every POST, and keeps each body in a file.
RECEIVER = """
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open("/run/received.jsonl", "ab") as out:
            out.write(body + b"\\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", 8099), Handler).serve_forever()
"""
WEBHOOK_RULE = """\
  - name: notify
    paths: [/srv/incoming]
    actions:
      - webhook: {url: "http://127.0.0.1:8099/hook"}
"""


def test_the_hardened_drop_in_still_runs_reading_and_webhook_rules(installed):
    installed.run(["systemd-run", "--unit=receiver", "/usr/bin/python3", "-c", RECEIVER])
    wait_until(installed, "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", "
               "8099)).close()'", "the receiver listening")
    installed.sh("cp /usr/share/doc/watchd/examples/hardened.conf "
                 "/etc/systemd/system/watchd.service.d/ && systemctl daemon-reload "
                 f"&& {RESTART}")
    installed.run(["tee", "/etc/watchd/rules.yaml"], input=RULES.replace(
        "/usr/bin/cp, \"--\", \"{path}\", /srv/processed/", "/usr/bin/md5sum, \"--\", \"{path}\"")
        + WEBHOOK_RULE)
    installed.sh(RELOAD)
    installed.sh("echo read-me > /srv/incoming/read.csv")
    wait_until(installed, f"{JOURNAL} -o cat | grep -q 'action ok rule=incoming.*read.csv'",
               "a reading rule under the hardened sandbox")
    wait_until(installed, "grep -q read.csv /run/received.jsonl", "the webhook's delivery")
    wait_until(installed, "journalctl -u watchd WATCHD_RULE=notify WATCHD_HTTP_STATUS=200 "
               "| grep -q 'webhook delivered'", "the delivery in the journal")
    assert "notify" in installed.sh("watchd status").stdout  # the socket, in the sandbox
    score = installed.sh("systemd-analyze security watchd | tail -1").stdout
    assert float(re.search(r"level for watchd.service: ([0-9.]+)", score)[1]) <= 2.5
    installed.sh("rm -r /etc/systemd/system/watchd.service.d && systemctl daemon-reload "
                 f"&& {RESTART}")
    score = installed.sh("systemd-analyze security watchd | tail -1").stdout
    assert float(re.search(r"level for watchd.service: ([0-9.]+)", score)[1]) <= 5.0


# systemd_run: each run a transient unit of its own, with the rule's properties. One rules
# file for every case; what a run of "sandboxed" does is chosen by its file's name: usr-* writes
# under /usr (read-only there), wait-* waits for a line on its gate (a FIFO the test makes in
# /srv/gate, under the same name), and every run that gets so far writes /srv/out/<name>.
SYSTEMD_RUN_RULES = """\
settings:
  stop_grace: 1s
rules:
  - name: sandboxed
    paths: [/srv/units]
    include: ["*.job"]
    actions:
      - systemd_run:
          command:
            - /usr/bin/sh
            - -c
            - |
              name=$(basename "$1")
              echo "unit output: $name, rule $WATCHD_RULE"
              case $name in
                usr-*) echo probe > /usr/watchd-probe || exit 3 ;;
                wait-*) read line < "/srv/gate/$name" ;;
              esac
              echo "$name" > "/srv/out/$name"
            - sh
            - "{path}"
          timeout: 25s
          properties:
            ProtectSystem: strict
            ReadWritePaths: /srv/out
            MemoryMax: 64M
  - name: logged
    paths: [/srv/units]
    include: ["*.logged"]
    actions:
      - systemd_run:
          command:
            - /usr/bin/sh
            - -c
            - 'echo "to stdout: $(basename "$1")"; echo "to stderr: $(basename "$1")" >&2'
            - sh
            - "{path}"
          log_output: true
          properties:
            ProtectSystem: strict
  - name: slow
    paths: [/srv/units]
    include: ["*.slow"]
    actions:
      - systemd_run:
          # SIGTERM is ignored, by the shell and the sleeps it starts: only SIGKILL ends them.
          command: [/usr/bin/sh, -c, "trap '' TERM; sleep 301 & sleep 302; wait", sh]
          timeout: 3s
          user: nobody
"""
UNIT = r"watchd-{rule}-[0-9a-f]{{12}}\.service"


@pytest.fixture(scope="module")
def units(installed):
    """The systemd_run rules in force (started, should no earlier test have done it)."""
    installed.sh("mkdir -p /srv/units /srv/out /srv/gate")
    installed.run(["tee", "/etc/watchd/rules.yaml"], input=SYSTEMD_RUN_RULES)
    installed.sh(CHECK)
    installed.sh("systemctl reset-failed watchd; systemctl reload-or-restart watchd")
    return installed


def logged(machine: Machine, rule: str, name: str, message_id: str | None = None) -> dict:
    """watchd's last line for a run of ``rule`` on /srv/units/``name``, once it is there."""
    matches = [f"WATCHD_RULE={rule}", f"WATCHD_PATH=/srv/units/{name}",
               *([f"MESSAGE_ID={message_id}"] if message_id else [])]
    wait_until(machine, f"{JOURNAL} {' '.join(matches)} -o cat | grep -q '^action '",
               f"watchd's log of {rule} on {name}")
    return [entry for entry in journal(machine, *matches)
            if entry["MESSAGE"].startswith("action ")][-1]


def unit_journal(machine: Machine, unit: str) -> str:
    return machine.run(["journalctl", "-u", unit, "-o", "cat", "--no-pager"]).stdout


def loaded_units(machine: Machine, pattern: str, *options: str) -> list[str]:
    listed = machine.run(["systemctl", "list-units", "--plain", "--no-legend", *options,
                          pattern]).stdout
    return [line.replace("●", "").split()[0] for line in listed.splitlines() if line.strip()]


def running_unit(machine: Machine, marker: str, rule: str) -> str:
    """The transient unit of ``rule`` that runs a process with ``marker`` in its command
    line, once it runs (the systemd-run client, in watchd.service, has it too)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        for pid in machine.run(["pgrep", "-f", marker], check=False).stdout.split():
            cgroup = machine.run(["cat", f"/proc/{pid}/cgroup"], check=False).stdout
            if found := re.search(rf"/({UNIT.format(rule=rule)})$", cgroup, re.MULTILINE):
                return found[1]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE}s waiting for a unit of {rule} running "
                        f"{marker!r}")
        time.sleep(0.1)


def wait_until_gone(machine: Machine, unit: str) -> None:
    """--collect: a unit that has ended, failed or not, is unloaded."""
    wait_until(machine, f"test -z \"$(systemctl list-units --all --plain --no-legend {unit})\"",
               f"{unit} to be gone")


def test_systemd_run_units_have_the_rules_properties(units):
    units.sh("echo x > /srv/units/usr-1.job && echo x > /srv/units/out-1.job")
    # ProtectSystem=strict: /usr is read-only in the unit; root writes there outside it.
    failed = logged(units, "sandboxed", "usr-1.job")
    assert failed.get("MESSAGE_ID") == ACTION_FAILED, failed["MESSAGE"]
    assert failed["MESSAGE"].startswith("action failed: exited with status 3")
    assert failed["WATCHD_ACTION"] == "systemd_run" and failed["WATCHD_EXIT_STATUS"] == "3"
    assert re.fullmatch(UNIT.format(rule="sandboxed"), failed["WATCHD_UNIT"])
    assert "/usr/watchd-probe: Read-only file system" in unit_journal(units, failed["WATCHD_UNIT"])
    assert units.run(["test", "-e", "/usr/watchd-probe"], check=False).returncode == 1
    assert units.run(["test", "-e", "/srv/out/usr-1.job"], check=False).returncode == 1
    units.sh("touch /usr/watchd-probe && rm /usr/watchd-probe")
    # ReadWritePaths=/srv/out: writable there (and nowhere else in /srv).
    ok = logged(units, "sandboxed", "out-1.job")
    assert ok["MESSAGE"].startswith("action ok"), ok["MESSAGE"]
    assert units.sh("cat /srv/out/out-1.job").stdout == "out-1.job\n"


def test_a_running_units_memory_max_is_the_rules(units):
    units.sh("mkfifo /srv/gate/wait-memory.job && echo x > /srv/units/wait-memory.job")
    unit = running_unit(units, "/srv/units/wait-memory.job", "sandboxed")
    shown = units.run(["systemctl", "show", "-p", "MemoryMax,ProtectSystem,ReadWritePaths,"
                       "TimeoutStopUSec", unit]).stdout.splitlines()
    assert sorted(shown) == [f"MemoryMax={64 * 1024 * 1024}", "ProtectSystem=strict",
                             "ReadWritePaths=/srv/out", "TimeoutStopUSec=2s"]
    assert loaded_units(units, unit, "--state=active") == [unit]
    # The kernel's limit too, where the machine has the memory controller (cgroup v2; not in
    # an nspawn container on a host of the legacy or hybrid hierarchy).
    limit = units.sh(f"cat $(find /sys/fs/cgroup -path '*/{unit}/memory.max') /dev/null").stdout
    assert limit in ("", f"{64 * 1024 * 1024}\n")
    units.run(["timeout", "10", "sh", "-c", "echo go > /srv/gate/wait-memory.job"])
    assert logged(units, "sandboxed", "wait-memory.job")["MESSAGE"].startswith("action ok")
    assert units.sh("cat /srv/out/wait-memory.job").stdout == "wait-memory.job\n"
    wait_until_gone(units, unit)


def test_a_unit_past_its_timeout_is_killed_whole(units):
    units.sh("echo x > /srv/units/t.slow")
    unit = running_unit(units, "sleep 302", "slow")
    # Both sleeps, as the rule's user, before the timeout (3 s; SIGKILL 2 s after SIGTERM).
    wait_until(units, "test \"$(pgrep -c -u nobody -f '^sleep 30[12]$')\" = 2",
               "the unit's two processes", timeout=3)
    failed = logged(units, "slow", "t.slow", ACTION_FAILED)
    assert failed["MESSAGE"].startswith("action failed: timed out after 3s"), failed["MESSAGE"]
    assert failed["WATCHD_UNIT"] == unit
    # Gone by the time watchd logs it: the SIGKILL went to every process of the unit, not
    # only to its main one (systemd would stop the others, but TimeoutStopSec=2s later).
    assert units.run(["pgrep", "-f", "^sleep 30[12]$"], check=False).returncode == 1
    wait_until_gone(units, unit)
    # It ignored SIGTERM: what ended it was the SIGKILL, to every process of the unit.
    assert "status=9/KILL" in unit_journal(units, unit)


def test_the_journal_holds_a_units_output_under_its_name(units):
    units.sh("echo x > /srv/units/out-journal.job")
    ok = logged(units, "sandboxed", "out-journal.job")
    assert ok["MESSAGE"].startswith("action ok rule=sandboxed"), ok["MESSAGE"]
    assert ok["WATCHD_ACTION"] == "systemd_run" and ok["WATCHD_DURATION_MS"].isdigit()
    unit = ok["WATCHD_UNIT"]
    output = "unit output: out-journal.job, rule sandboxed"
    by_unit = units.run(["journalctl", f"_SYSTEMD_UNIT={unit}", "-o", "json", "--no-pager"])
    assert output in [json.loads(line)["MESSAGE"] for line in by_unit.stdout.splitlines()]
    assert output in units.sh("journalctl -u 'watchd-sandboxed-*' -o cat --no-pager").stdout


def test_log_output_brings_a_units_lines_to_watchd_with_their_stream(units):
    units.sh("echo x > /srv/units/say.logged")
    ok = logged(units, "logged", "say.logged")
    assert ok["MESSAGE"].startswith("action ok rule=logged"), ok["MESSAGE"]
    wait_until(units, f"{JOURNAL} WATCHD_RULE=logged WATCHD_STREAM=stderr -o cat | grep -q "
               "'^to stderr: say.logged'", "the unit's stderr line in watchd's journal")
    lines = {entry["WATCHD_STREAM"]: entry for entry in journal(
        units, "WATCHD_RULE=logged", f"WATCHD_JOB={ok['WATCHD_JOB']}") if "WATCHD_STREAM" in entry}
    assert lines["stdout"]["MESSAGE"].startswith("to stdout: say.logged rule=logged")
    assert lines["stderr"]["MESSAGE"].startswith("to stderr: say.logged rule=logged")
    assert "to stdout: say.logged" not in unit_journal(units, ok["WATCHD_UNIT"])  # not the unit's
    assert units.sh("ls /run/watchd/output | wc -l").stdout.strip() == "0"  # FIFOs removed


def test_the_hardened_drop_in_leaves_systemd_run_units_their_own_sandbox(units):
    units.sh("mkdir -p /etc/systemd/system/watchd.service.d && cp "
             "/usr/share/doc/watchd/examples/hardened.conf /etc/systemd/system/watchd.service.d/"
             f" && systemctl daemon-reload && {RESTART}")
    try:
        # watchd itself cannot write to /srv/out now; the unit, with a sandbox of its own, can.
        main_pid = units.run(["systemctl", "show", "-P", "MainPID", "watchd"]).stdout.strip()
        own = units.run(["nsenter", "-t", main_pid, "-m", "touch", "/srv/out/by-watchd"],
                        check=False)
        assert own.returncode != 0 and "Read-only file system" in own.stderr
        units.sh("echo x > /srv/units/out-hardened.job")
        ok = logged(units, "sandboxed", "out-hardened.job")
        assert ok["MESSAGE"].startswith("action ok"), ok["MESSAGE"]
        assert units.sh("cat /srv/out/out-hardened.job").stdout == "out-hardened.job\n"
    finally:
        units.sh("rm -r /etc/systemd/system/watchd.service.d && systemctl daemon-reload "
                 f"&& {RESTART}")


def test_stopping_watchd_stops_its_running_units(units):
    units.sh("mkfifo /srv/gate/wait-stop.job && echo x > /srv/units/wait-stop.job")
    unit = running_unit(units, "/srv/units/wait-stop.job", "sandboxed")
    started = time.monotonic()
    units.sh(STOP)
    took = time.monotonic() - started
    assert loaded_units(units, "watchd-*.service", "--state=active") == []
    assert took < 10, f"the stop took {took:.1f}s: stop_grace is 1s, the unit's timeout 25s"
    wait_until_gone(units, unit)
    assert units.run(["pgrep", "-f", "/srv/gate/"], check=False).returncode == 1
    killed = logged(units, "sandboxed", "wait-stop.job")
    # Cut short by the stop: a warning, not a failed action; its job runs again at the start.
    assert killed["MESSAGE"].startswith("action cut short by the stop"), killed["MESSAGE"]
    assert killed["PRIORITY"] == "4" and killed["WATCHD_UNIT"] == unit
    assert units.run(["test", "-e", "/srv/out/wait-stop.job"], check=False).returncode == 1
    units.sh(RESTART)


def test_stop_is_clean(installed):
    installed.sh(STOP)
    assert installed.run(["systemctl", "is-active", "watchd"], check=False).stdout.strip() \
        == "inactive"
    shown = installed.run(["systemctl", "show", "watchd", "-p", "Result,ExecMainStatus"]).stdout
    assert "Result=success" in shown and "ExecMainStatus=0" in shown
    assert journal(installed, f"MESSAGE_ID={STOPPED}")


def test_readme_shows_the_commands_run_here():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Install as a service", 1)[1].split("\n## ", 1)[0]
    for command in (INSTALL, ENABLE, CHECK, RELOAD, STATUS, JOURNAL, STOP, *RULES.splitlines()):
        assert command in section, f"README's Install as a service lacks {command!r}"
