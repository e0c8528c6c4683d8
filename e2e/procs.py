"""Process helpers: spawn a daemon in its own process group, stop it, pid files."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_parent_death_signal(argv: list[str], sig: str) -> list[str]:
    """Prefix argv so the program gets sig when the thread that started it
    dies (setpriv execs it: the PID stays the program's own). Unchanged
    where util-linux setpriv is missing."""
    setpriv = shutil.which("setpriv")
    return [setpriv, f"--pdeathsig={sig}", "--", *argv] if setpriv else argv


def spawn(
    argv: list[str],
    log_file: Path,
    pid_file: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    parent_death_signal: str | None = None,
) -> subprocess.Popen:
    """Start argv (exec'd directly, so the PID is the program's own) as the
    leader of a new process group, stdout+stderr appended to log_file.
    parent_death_signal: e.g. "TERM", sent to it if its starter dies."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if parent_death_signal:
        argv = with_parent_death_signal(argv, parent_death_signal)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{proc.pid}\n")
    return proc


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> bool:
    """Send sig to a process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def stop_group(pgid: int, grace: float, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the group, wait up to grace seconds, then SIGKILL it; reap proc."""
    if signal_group(pgid, signal.SIGTERM):
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None and not group_alive(pgid):
                break
            if proc is None and not group_alive(pgid):
                break
            time.sleep(0.05)
        signal_group(pgid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    # The group may outlive its leader; give the kernel a moment to clear it.
    deadline = time.monotonic() + 2
    while group_alive(pgid) and time.monotonic() < deadline:
        signal_group(pgid, signal.SIGKILL)
        time.sleep(0.05)


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
