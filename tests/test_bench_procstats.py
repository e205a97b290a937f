"""bench/procstats.run_measured counts every process a measured command starts.

A clausewatch with extraction workers is a main process, a forkserver that outlives it and
the workers the forkserver forks: wait4 on the main process alone did not count the
workers. These commands leave such processes behind on purpose. Nothing here asserts a
time: the CPU below is burnt until the process's own clock says so, and the memory is
held until the parent is gone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import procstats

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="procstats reads Linux's /proc and prctl")

# A process that burns `seconds` of its own CPU time.
BURN = "import sys, time\nwhile time.process_time() < float(sys.argv[1]): pass\n"
# A process that starts `child` and exits at once, leaving it behind (like a forkserver).
LEAVE = ("import subprocess, sys\n"
         "subprocess.Popen([sys.executable, '-c', sys.argv[1], *sys.argv[2:]])\n")
# A process that holds `mb` MiB resident until its parent is gone, then a little longer.
HOLD = ("import os, sys, time\n"
        "parent = os.getppid()\n"
        "block = b'\\x01' * (int(sys.argv[1]) << 20)\n"
        "open(sys.argv[2], 'w').close()\n"
        "deadline = time.monotonic() + 60\n"
        "while os.getppid() == parent and time.monotonic() < deadline: time.sleep(0.05)\n"
        "time.sleep(0.5)\n")
# A parent that waits until its child says it holds the memory, then exits.
WAIT_FOR = ("import os, subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', sys.argv[1], *sys.argv[2:]])\n"
            "while not os.path.exists(sys.argv[-1]): time.sleep(0.02)\n"
            "time.sleep(0.5)\n")


def test_the_cpu_of_a_process_left_behind_is_counted() -> None:
    done = procstats.run_measured([sys.executable, "-c", LEAVE, BURN, "0.6"])
    assert done.returncode == 0, done.stderr
    # The command itself ran for a few tens of milliseconds; its orphan burnt 0.6 s.
    assert done.cpu >= 0.6, done


def test_the_cpu_of_waited_children_is_still_counted_once() -> None:
    waited = ("import subprocess, sys\n"
              "subprocess.run([sys.executable, '-c', sys.argv[1], '0.4'], check=True)\n")
    done = procstats.run_measured([sys.executable, "-c", waited, BURN])
    assert done.returncode == 0, done.stderr
    # Counted (>= 0.4), and not twice (>= 0.8): the two interpreters' start-up is the rest.
    assert 0.4 <= done.cpu < 0.8, done


def test_peak_memory_adds_up_every_process_of_the_command(tmp_path: Path) -> None:
    ready = tmp_path / "holding"
    done = procstats.run_measured([sys.executable, "-c", WAIT_FOR, HOLD, "200", str(ready)],
                                  sample_every=0.05)
    assert done.returncode == 0, done.stderr
    assert ready.exists()
    # The child held 200 MiB while its parent, the command, stayed small.
    assert done.main_peak_rss_mb < 100, done
    assert done.peak_rss_mb >= 200, done


def test_the_command_s_exit_status_and_output_come_through() -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    done = procstats.run_measured([sys.executable, "-c", code])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
