"""The three tools under test, each able to set up N watched documents and run one full pass.

- clausewatch: `clausewatch check -c FILE --json`, a subprocess per pass (SQLite store);
- urlwatch 2.29: `urlwatch` with `css` + `html2text` filters, a subprocess per pass;
- changedetection.io: one long-running server; a pass is `GET /api/v1/watch?recheck_all=1`
  and lasts until every watch's `check_count` has moved on.

Each pass reports wall time, CPU seconds, peak RSS and which documents raised an alert.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pages
import procstats

REPO = Path(__file__).resolve().parents[1]
VENVS = REPO / "bench" / ".venvs"
URLWATCH_VERSION = "2.29"


@dataclass(frozen=True, slots=True, kw_only=True)
class PassResult:
    """One full polling pass of one tool."""

    tool: str
    phase: str
    docs: int
    wall: float
    cpu: float
    peak_rss_mb: float  # all the tool's processes, added up
    alerts: tuple[int, ...]  # document numbers the tool reported as changed
    errors: int = 0
    note: str = ""
    main_peak_rss_mb: float | None = None  # its first process alone, where it has several

    @property
    def docs_per_second(self) -> float:
        return self.docs / self.wall if self.wall else 0.0

    def row(self) -> dict[str, Any]:
        return {"tool": self.tool, "phase": self.phase, "docs": self.docs,
                "wall_s": round(self.wall, 3), "docs_per_s": round(self.docs_per_second, 1),
                "cpu_s": round(self.cpu, 2), "peak_rss_mb": round(self.peak_rss_mb, 1),
                "main_peak_rss_mb": None if self.main_peak_rss_mb is None
                else round(self.main_peak_rss_mb, 1),
                "alerts": len(self.alerts), "errors": self.errors, "note": self.note}


class Contender(Protocol):
    name: str

    def setup(self, base_url: str, docs: int, triples: Sequence[pages.Triple]) -> None: ...
    def run_pass(self, phase: str) -> PassResult: ...
    def close(self) -> None: ...


class ToolUnavailableError(RuntimeError):
    """A competitor could not be installed or started here; the message says why."""


def _venv(name: str, requirement: str, *, log: Any) -> Path:
    """A virtualenv of its own under bench/.venvs/, created and filled on first use."""
    path = VENVS / name
    marker = path / ".bench-installed"
    if marker.exists() and marker.read_text() == requirement:
        return path
    log(f"installing {requirement} into {path} …")
    if not (path / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    done = subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", requirement],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ToolUnavailableError(f"pip install {requirement} failed:\n{tail}")
    marker.write_text(requirement)
    return path


def _alerted_docs(names: Sequence[str]) -> tuple[int, ...]:
    found = []
    for name in names:
        match = re.search(r"doc-(\d+)", name)
        if match:
            found.append(int(match.group(1)))
    return tuple(sorted(set(found)))


# clausewatch -------------------------------------------------------------------------------


class ClauseWatchTool:
    """clausewatch's own one-pass command, on a fresh SQLite store."""

    name = "clausewatch"

    def __init__(self, workdir: Path, *, store_url: str | None = None,
                 store_schema: str | None = None, concurrency: int = 16,
                 python: Path = REPO / ".venv" / "bin" / "python", fresh: bool = True,
                 extract_processes: int = 0) -> None:
        self.workdir = workdir
        self.extract_processes = extract_processes
        self.fresh = fresh  # False: keep the store an earlier run left there
        self.store_url = store_url
        self.store_schema = store_schema
        self.concurrency = concurrency
        self.python = python
        self.config = workdir / "clausewatch.toml"
        self.docs = 0

    def setup(self, base_url: str, docs: int, triples: Sequence[pages.Triple]) -> None:
        if self.fresh and self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.docs = docs
        compile_bytecode(self.python)
        self.config.write_text(write_config(self.workdir, base_url, docs, triples,
                                            store_url=self.store_url,
                                            store_schema=self.store_schema,
                                            concurrency=self.concurrency,
                                            extract_processes=self.extract_processes))

    def run_pass(self, phase: str) -> PassResult:
        cmd = [str(self.python.parent / "clausewatch"), "check", "-c", str(self.config), "--json"]
        done = procstats.run_measured(cmd, cwd=REPO, env=_env_without_venv())
        try:
            outcomes = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"clausewatch check failed ({done.returncode}):\n"
                               f"{done.stderr[-2000:]}") from None
        changed = [o["document"] for o in outcomes if o["outcome"] == "changed"]
        failed = sum(1 for o in outcomes if o["outcome"] == "failed")
        return PassResult(tool=self.name, phase=phase, docs=self.docs, wall=done.wall,
                          cpu=done.cpu, peak_rss_mb=done.peak_rss_mb,
                          main_peak_rss_mb=done.main_peak_rss_mb,
                          alerts=_alerted_docs(changed), errors=failed)

    def close(self) -> None:
        pass


# clausewatch's own packages.
PACKAGES = ("config", "daemon", "domain", "notifiers")


def compile_bytecode(python: Path, root: Path = REPO) -> None:
    """Byte-compile clausewatch's own packages, as installing it does.

    The checkout is installed editable, and this environment may set PYTHONDONTWRITEBYTECODE:
    then every `check` compiled our modules from source (~0.2 s a pass) while urlwatch's and
    changedetection.io's came compiled by pip, as a real installation of ours would.
    """
    subprocess.run([str(python), "-m", "compileall", "-q",
                    *(str(root / name) for name in PACKAGES)],
                   check=True, stdout=subprocess.DEVNULL)


def write_config(workdir: Path, base_url: str, docs: int, triples: Sequence[pages.Triple], *,
                 store_url: str | None = None, store_schema: str | None = None,
                 concurrency: int = 16, interval: float | None = None, workers: int = 4,
                 jitter: float = 0.0, listen: str = "127.0.0.1:0", log_level: str = "warning",
                 log_format: str = "text", extra: str = "", extract_processes: int = 0) -> str:
    """A clausewatch.toml watching the benchmark's documents on the page server."""
    lines = [f'data_dir = "{workdir / "data"}"', ""]
    if store_url:
        lines += ["[store]", f'url = "{store_url}"']
        if store_schema:
            lines.append(f'schema = "{store_schema}"')
        lines.append("")
    lines += ["[scheduler]", f"workers = {workers}", f'jitter = "{jitter}s"']
    if interval is not None:
        lines.append(f'default_interval = "{interval}s"')
    # Every page is on one loopback host: politeness (one request a second per host by
    # default) would measure the delay, not the tool. The competitors have no such delay.
    lines += ["", "[fetch]", f"concurrency = {concurrency}",
              f"per_host_concurrency = {concurrency}", 'per_host_delay = "0s"', "robots = false",
              "", "[http]", f'listen = "{listen}"', "",
              "[log]", f'level = "{log_level}"', f'format = "{log_format}"', ""]
    if extract_processes:
        lines += ["[detection]", f"extract_processes = {extract_processes}", ""]
    lines.append(extra)
    for doc in range(docs):
        triple = triples[doc % len(triples)]
        lines += ["[[documents]]", f'id = "{pages.doc_id(doc)}"', f'platform = "{triple.document}"',
                  f'title = "Benchmark copy {doc}"', f'url = "{base_url}{pages.doc_path(doc)}"',
                  f"select = {json.dumps(triple.select)}", ""]
    return "\n".join(lines)


def _env_without_venv() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


# urlwatch ----------------------------------------------------------------------------------


class UrlwatchTool:
    """urlwatch 2.29, one process per pass, conditional GET on (its default)."""

    name = "urlwatch"

    def __init__(self, workdir: Path, *, log: Any = print) -> None:
        self.workdir = workdir
        self.log = log
        self.docs = 0
        self.binary: Path | None = None

    def setup(self, base_url: str, docs: int, triples: Sequence[pages.Triple]) -> None:
        venv = _venv("urlwatch", f"urlwatch=={URLWATCH_VERSION}", log=self.log)
        self.binary = venv / "bin" / "urlwatch"
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.docs = docs
        jobs = []
        for doc in range(docs):
            triple = triples[doc % len(triples)]
            jobs.append("\n".join([
                f"name: {pages.doc_id(doc)}",
                f"url: {base_url}{pages.doc_path(doc)}",
                "filter:",
                f"  - css: {json.dumps(triple.css)}",
                "  - html2text",
            ]))
        (self.workdir / "urls.yaml").write_text("\n---\n".join(jobs) + "\n")
        (self.workdir / "urlwatch.yaml").write_text(
            "display:\n  new: true\n  error: true\n  unchanged: false\n  empty-diff: true\n"
            "report:\n  stdout:\n    enabled: true\n    color: false\n")
        (self.workdir / "hooks.py").write_text("")

    def run_pass(self, phase: str) -> PassResult:
        assert self.binary is not None
        cmd = [str(self.binary), "--urls", str(self.workdir / "urls.yaml"),
               "--config", str(self.workdir / "urlwatch.yaml"),
               "--hooks", str(self.workdir / "hooks.py"),
               "--cache", str(self.workdir / "cache.db")]
        env = dict(os.environ, HOME=str(self.workdir))
        done = procstats.run_measured(cmd, env=env, cwd=self.workdir)
        if done.returncode != 0:
            raise RuntimeError(f"urlwatch failed ({done.returncode}):\n{done.stderr[-2000:]}")
        changed = re.findall(r"^\d+\. CHANGED: (.+)$", done.stdout, re.MULTILINE)
        errors = re.findall(r"^\d+\. ERROR: (.+)$", done.stdout, re.MULTILINE)
        return PassResult(tool=self.name, phase=phase, docs=self.docs, wall=done.wall,
                          cpu=done.cpu, peak_rss_mb=done.peak_rss_mb,
                          main_peak_rss_mb=done.main_peak_rss_mb,
                          alerts=_alerted_docs(changed), errors=len(errors))

    def close(self) -> None:
        pass


# changedetection.io ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Watch:
    uuid: str
    doc: int
    checks: int = 0
    history: int = 0


@dataclass
class ChangeDetectionTool:
    """changedetection.io as a server of its own; driven through its REST API."""

    workdir: Path
    log: Any = print
    requirement: str = "changedetection.io"
    start_timeout: float = 120.0
    pass_timeout: float = 7200.0
    name: str = "changedetection.io"
    docs: int = 0
    port: int = 0
    key: str = ""
    process: subprocess.Popen[bytes] | None = None
    watches: dict[str, _Watch] = field(default_factory=dict)

    @property
    def datastore(self) -> Path:
        return self.workdir / "datastore"

    def setup(self, base_url: str, docs: int, triples: Sequence[pages.Triple]) -> None:
        venv = _venv("changedetection", self.requirement, log=self.log)
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.datastore.mkdir(parents=True)
        self.docs = docs
        self.port = _free_port()
        first = triples[0]
        env = dict(os.environ, ALLOW_IANA_RESTRICTED_ADDRESSES="true",
                   DISABLE_VERSION_CHECK="true", LISTEN_HOST="127.0.0.1")
        # A URL given on the command line keeps its default watches (two internet sites) out.
        cmd = [str(venv / "bin" / "python"), str(venv / "bin" / "changedetection.py"),
               "-d", str(self.datastore), "-p", str(self.port), "-h", "127.0.0.1",
               "-l", "WARNING",
               "-u", f"{base_url}{pages.doc_path(0)}",
               "-u0", json.dumps({"include_filters": [first.css],
                                  "fetch_backend": "html_requests",
                                  "title": pages.doc_id(0)})]
        log_file = (self.workdir / "server.log").open("wb")
        self.process = subprocess.Popen(cmd, env=env, cwd=self.workdir, stdout=log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_started()
        for doc in range(1, docs):
            triple = triples[doc % len(triples)]
            self._api("POST", "/api/v1/watch", {
                "url": f"{base_url}{pages.doc_path(doc)}", "include_filters": [triple.css],
                "fetch_backend": "html_requests", "title": pages.doc_id(doc)})
        listing = self._api("GET", "/api/v1/watch")
        for uuid, watch in listing.items():
            doc = int(re.search(r"/d/(\d+)$", watch["url"]).group(1))  # type: ignore[union-attr]
            self.watches[uuid] = _Watch(uuid=uuid, doc=doc)
        # New watches are checked at once by its own scheduler: that is the baseline pass.
        self._wait_checked(1, time.monotonic() + self.pass_timeout)
        self._read_history()

    def run_pass(self, phase: str) -> PassResult:
        assert self.process is not None
        target = {u: w.checks + 1 for u, w in self.watches.items()}
        before = {u: w.history for u, w in self.watches.items()}
        cpu_before = procstats.cpu_seconds(self.process.pid)
        started = time.perf_counter()
        with procstats.RssSampler(self.process.pid) as rss:
            self._api("GET", "/api/v1/watch?recheck_all=1")
            self._wait_checked(target, time.monotonic() + self.pass_timeout)
        wall = time.perf_counter() - started
        cpu = procstats.cpu_seconds(self.process.pid) - cpu_before
        self._read_history()
        alerts = [w.doc for u, w in self.watches.items() if w.history > before[u]]
        errors = sum(1 for w in self._listing().values() if w.get("last_error"))
        return PassResult(tool=self.name, phase=phase, docs=self.docs, wall=wall, cpu=cpu,
                          peak_rss_mb=rss.peak, alerts=tuple(sorted(alerts)), errors=errors,
                          note="completion polled every 0.25 s from its datastore")

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    # Helpers ---------------------------------------------------------------------------

    def _wait_started(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        settings = self.datastore / "changedetection.json"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.workdir / "server.log").read_text(errors="replace")[-3000:]
                raise ToolUnavailableError(f"changedetection.io exited at start:\n{log}")
            if settings.exists():
                try:
                    data = json.loads(settings.read_text())
                    self.key = data["settings"]["application"]["api_access_token"]
                    self._api("GET", "/api/v1/systeminfo")
                    return
                except (OSError, ValueError, KeyError):
                    pass
            time.sleep(0.5)
        raise ToolUnavailableError("changedetection.io did not answer on its API within "
                                   f"{self.start_timeout:.0f} s")

    def _api(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"x-api-key": self.key, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def _listing(self) -> dict[str, Any]:
        return dict(self._api("GET", "/api/v1/watch"))

    def _check_count(self, uuid: str) -> int:
        try:
            return int(json.loads((self.datastore / uuid / "watch.json").read_text())
                       .get("check_count") or 0)
        except (OSError, ValueError):
            return 0

    def _wait_checked(self, target: int | dict[str, int], deadline: float) -> None:
        """Until every watch has been checked `target` times (its own check_count)."""
        # Cheap first: its queue drains long before the last checks end; only then read files.
        settle = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if time.monotonic() > settle and self._api("GET", "/api/v1/systeminfo")["queue_size"] == 0:
                break
            time.sleep(0.5)
        waiting = set(self.watches)
        while waiting:
            if time.monotonic() > deadline:
                raise RuntimeError(f"changedetection.io: {len(waiting)} watches unchecked "
                                   "at the deadline")
            for uuid in list(waiting):
                count = self._check_count(uuid)
                want = target if isinstance(target, int) else target[uuid]
                if count >= want:
                    self.watches[uuid].checks = count
                    waiting.discard(uuid)
            if waiting:
                time.sleep(0.25)

    def _read_history(self) -> None:
        for uuid, watch in self.watches.items():
            try:
                text = (self.datastore / uuid / "history.txt").read_text()
            except OSError:
                text = ""
            watch.history = sum(1 for line in text.splitlines() if line.strip())
