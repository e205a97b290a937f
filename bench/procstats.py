"""Wall time, CPU seconds and resident memory of processes, read from the kernel (Linux)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """A subprocess that ran to its end: what it cost and what it printed."""

    returncode: int
    wall: float
    cpu: float  # user + system seconds, the process and the children it waited for
    peak_rss_mb: float
    stdout: str
    stderr: str


def run_measured(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, timeout: float = 3600) -> Finished:
    """Run a command to its end and measure it with wait4 (its own rusage, not the parent's)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None,
                                cwd=cwd, stdout=out, stderr=err)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Finished(returncode=proc.returncode, wall=wall,
                        cpu=usage.ru_utime + usage.ru_stime,
                        peak_rss_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
                        stdout=out.read().decode("utf-8", "replace"),
                        stderr=err.read().decode("utf-8", "replace"))


def busy_share(seconds: float = 0.5) -> float:
    """The share of the machine's CPU time (all cores) spent busy over the next `seconds`."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    total = total1 - total0
    return 0.0 if total <= 0 else 1.0 - (idle1 - idle0) / total


def wait_quiet(*, below: float = 0.1, timeout: float = 20.0) -> tuple[float, float]:
    """Wait until the machine is quiet (under `below` of its CPU busy over half a second),
    at most `timeout` seconds: a tool's server still busy with its last pass (a datastore
    written after the API said done) must not be measured as the next tool's cost.
    Returns the seconds waited and the last busy share seen."""
    started = time.monotonic()
    while True:
        busy = busy_share()
        waited = time.monotonic() - started
        if busy < below or waited >= timeout:
            return waited, busy


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """The process and every process below it."""
    tree = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree so far (live processes only)."""
    total = 0.0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime are fields 14-17 (1-based) of /proc/PID/stat.
        total += sum(int(v) for v in fields[11:15]) / _TICK
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of a process tree now, in MiB."""
    total = 0
    for p in descendants(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * _PAGE
        except OSError:
            continue
    return total / 2**20


class RssSampler:
    """Samples a process tree's resident memory in a thread; keeps the peak and the series."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid = pid
        self.every = every
        self.peak = 0.0
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        value = rss_mb(self.pid)
        self.peak = max(self.peak, value)
        self.samples.append((time.monotonic(), value))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()
