"""Wall time, CPU seconds and resident memory of processes, read from the kernel (Linux)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
    wall: float  # from its start to its own exit (not its leftover children's)
    # User + system seconds of every process it started, however they ended: the ones it
    # waited for and the ones it left behind (a forkserver and the workers it forked).
    cpu: float
    peak_rss_mb: float  # the peak of all its processes' resident memory added up (sampled)
    main_peak_rss_mb: float  # the peak of the command's own process (exact)
    stdout: str
    stderr: str


def run_measured(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, timeout: float = 3600,
                 sample_every: float = 0.1) -> Finished:
    """Run a command to its end and measure it and every process it starts.

    wait4 alone counts the command and the children it waited for: a process pool's
    workers forked by a forkserver that outlives the command were not counted, so a
    clausewatch with extraction workers looked ~2x cheaper in CPU than it was. The command
    runs under a small reaper (`_reaper`, a child subreaper: what the command leaves behind
    becomes its child, is waited for, and so counted); the wait4 of the reaper then holds
    everything. Resident memory is the sum over the process tree, sampled every
    `sample_every` seconds (pages shared between processes count once per process).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(suffix=".json") as report:
        reaper = [sys.executable, "-I", "-S", __file__, "--reap", report.name, "--", *cmd]
        started = time.perf_counter()
        proc = subprocess.Popen(reaper, env=dict(env) if env is not None else None,
                                cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        reaped = False
        try:
            with RssSampler(proc.pid, every=sample_every, include_root=False) as rss:
                deadline = started + timeout
                while True:
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        break
                    if time.perf_counter() > deadline:
                        os.killpg(proc.pid, signal.SIGKILL)
                        _, status, usage = os.wait4(proc.pid, 0)
                        break
                    time.sleep(0.02)
            reaped = True
        finally:
            if not reaped:  # interrupted: leave nothing running behind
                os.killpg(proc.pid, signal.SIGKILL)
                os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        try:
            facts = json.loads(Path(report.name).read_text())
        except (OSError, ValueError):  # killed before it wrote: the reaper's own figures
            facts = {"returncode": os.waitstatus_to_exitcode(status), "wall": wall,
                     "main_maxrss_kb": usage.ru_maxrss, "reaper_cpu": 0.0}
        proc.returncode = facts["returncode"]
        out.seek(0)
        err.seek(0)
        main_peak = facts["main_maxrss_kb"] / 1024  # kilobytes on Linux
        return Finished(returncode=proc.returncode, wall=facts["wall"],
                        cpu=usage.ru_utime + usage.ru_stime - facts["reaper_cpu"],
                        peak_rss_mb=max(rss.peak, main_peak), main_peak_rss_mb=main_peak,
                        stdout=out.read().decode("utf-8", "replace"),
                        stderr=err.read().decode("utf-8", "replace"))


_PR_SET_CHILD_SUBREAPER = 36
# How long the reaper waits for what the command left behind (a forkserver notices at once).
_LEFTOVER_SECONDS = 30.0


def _reaper(report: str, cmd: Sequence[str]) -> int:
    """Run `cmd`, then wait for every process it left behind; write what it measured."""
    import ctypes
    import resource

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    started = time.perf_counter()
    command = subprocess.Popen(list(cmd))
    _, status, usage = os.wait4(command.pid, 0)
    wall = time.perf_counter() - started
    deadline = time.monotonic() + _LEFTOVER_SECONDS
    while True:
        try:
            pid, _, _ = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break  # none left
        if pid == 0:
            if time.monotonic() > deadline:
                # This reaper goes too: run_measured then reports what wait4 saw.
                os.killpg(os.getpgid(0), signal.SIGKILL)
            time.sleep(0.005)
    own = resource.getrusage(resource.RUSAGE_SELF)
    Path(report).write_text(json.dumps({
        "returncode": os.waitstatus_to_exitcode(status), "wall": wall,
        "main_maxrss_kb": usage.ru_maxrss, "reaper_cpu": own.ru_utime + own.ru_stime}))
    return 0


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


def rss_mb(pid: int, *, include_root: bool = True) -> float:
    """Resident memory of a process tree now, in MiB (without `pid`'s own: include_root)."""
    total = 0
    for p in descendants(pid):
        if p == pid and not include_root:
            continue
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * _PAGE
        except OSError:
            continue
    return total / 2**20


class RssSampler:
    """Samples a process tree's resident memory in a thread; keeps the peak and the series."""

    def __init__(self, pid: int, every: float = 0.25, *, include_root: bool = True) -> None:
        self.pid = pid
        self.every = every
        self.include_root = include_root
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
        value = rss_mb(self.pid, include_root=self.include_root)
        self.peak = max(self.peak, value)
        self.samples.append((time.monotonic(), value))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()


if __name__ == "__main__":
    # The reaper run_measured puts between itself and a command: procstats.py --reap FILE -- CMD
    if len(sys.argv) > 4 and sys.argv[1] == "--reap" and sys.argv[3] == "--":
        sys.exit(_reaper(sys.argv[2], sys.argv[4:]))
    sys.exit("usage: procstats.py --reap REPORT.json -- COMMAND [ARG ...]")
