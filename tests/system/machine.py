"""A booted Debian 13 under systemd-nspawn, for testing watchd the way its users meet it.

The image is a minbase trixie made once by debootstrap, with systemd and watchd's build and
run dependencies, kept in a cache directory named after what is in it. Each test session boots
a volatile copy of it (``--volatile=overlay``: every write lands in a tmpfs and is gone at
power-off) and runs commands inside with ``nsenter``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

CACHE = Path(os.environ.get("WATCHD_SYSTEST_CACHE", "/var/cache/watchd-systest"))
SUITE = "trixie"
BOOT_PACKAGES = ["systemd", "systemd-sysv", "dbus"]
PACKAGES = [
    # build
    "build-essential", "debhelper", "dh-python", "pybuild-plugin-pyproject", "python3-all",
    "python3-setuptools", "lintian",
    # run: Debian's own libraries, as the package depends on them
    "python3-pathspec", "python3-prometheus-client", "python3-pyasyncore", "python3-pydantic",
    "python3-pyinotify",
    "python3-systemd", "python3-urllib3", "python3-yaml",
    # the tests' own
    "procps",
]
# Copied into the machine to build the package; none of these belong in a source package.
NOT_SOURCE = (".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "build",
              "*.egg-info")


def mirror() -> str:
    """The Debian mirror this host's apt uses, so the image comes from the same place."""
    if "WATCHD_SYSTEST_MIRROR" in os.environ:
        return os.environ["WATCHD_SYSTEST_MIRROR"]
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    for line in Path("/etc/apt/sources.list").read_text().splitlines():
        fields = line.split()
        if fields[:1] == ["deb"] and "security" not in line:
            return next(field for field in fields[1:] if "://" in field)
    raise RuntimeError("no Debian mirror found in this host's apt sources")


def image() -> Path:
    """The cached root file system, made first if it is not there (about a minute)."""
    key = hashlib.sha256(" ".join([SUITE, *BOOT_PACKAGES, *PACKAGES]).encode()).hexdigest()[:12]
    root = CACHE / f"{SUITE}-{key}"
    if root.is_dir():
        return root
    partial = CACHE / f"{SUITE}-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(BOOT_PACKAGES)}", SUITE,
          str(partial), mirror()])
    _run(["chroot", str(partial), "apt-get", "install", "-y", "-q", "--no-install-recommends",
          *PACKAGES], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    _run(["chroot", str(partial), "apt-get", "clean"])
    # A machine id of its own at each boot; no console login to wait for.
    (partial / "etc" / "machine-id").write_text("")
    partial.rename(root)
    return root


def _run(argv: Sequence[str], **kwargs: object) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


class Machine:
    """One boot of the image; ``run`` executes a command in it as root."""

    def __init__(self, root: Path, source: Path, log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in poweroff()
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--quiet", f"--directory={root}", "--volatile=overlay",
             "--register=no", "--keep-unit", "--boot", f"--bind-ro={source}:/src",
             f"--machine=watchd-systest-{os.getpid()}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.leader = self._wait_for_leader()
        self._wait_for_boot()

    def _wait_for_boot(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            # Fails until systemd listens on its bus; then waits for the boot to finish.
            state = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                             timeout=timeout)
            if state.stdout.strip() in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the machine did not boot: {state.stdout}{state.stderr}")
            time.sleep(0.2)

    def _wait_for_leader(self, timeout: float = 60.0) -> int:
        """The machine's PID 1, as the host sees it: nspawn's child whose namespaced pid is 1."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.nspawn.returncode}")
            for pid in _children(self.nspawn.pid):
                if _namespaced_pid(pid) == 1 and _has_systemd_bus(pid):
                    return pid
            time.sleep(0.1)
        raise RuntimeError("the machine's init did not start")

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 300.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i",
             "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", *argv],
            capture_output=True, text=True, timeout=timeout, input=input, check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["bash", "-euo", "pipefail", "-c", script], check=check)

    def poweroff(self) -> None:
        self.run(["systemctl", "poweroff"], check=False)
        try:
            self.nspawn.wait(60)
        except subprocess.TimeoutExpired:
            self.nspawn.kill()
            self.nspawn.wait()
        self._log.close()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_children(child)]
    return found


def _namespaced_pid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except OSError:
        pass
    return None


def _has_systemd_bus(pid: int) -> bool:
    """Whether PID 1 in there is systemd already, not nspawn's stub before it execs."""
    try:
        return os.readlink(f"/proc/{pid}/exe").endswith("/systemd")
    except OSError:
        return False
