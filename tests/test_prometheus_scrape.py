"""A real Prometheus (Debian's package) scrapes a running daemon and evaluates our alert rules."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback only)
        return json.loads(response.read())


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        reason = "Debian's prometheus package is not installed (scripts/ci-deps.sh installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


def test_prometheus_scrapes_the_daemon_and_evaluates_the_rules(
        tmp_path: Path, prometheus_binary: str) -> None:
    # A daemon watching one page that does not exist: its failures feed the rules.
    api_port, prom_port = free_port(), free_port()
    config = tmp_path / "clausewatch.toml"
    config.write_text("\n".join([
        f'data_dir = "{tmp_path / "data"}"',
        "[scheduler]", 'default_interval = "1s"', 'jitter = "0s"',
        "[fetch]", "retries = 0", "robots = false", 'per_host_delay = "0s"', 'timeout = "1s"',
        "[http]", f'listen = "127.0.0.1:{api_port}"',
        "[[documents]]", 'id = "acme/missing"', 'platform = "Acme"', 'title = "Missing"',
        'url = "http://127.0.0.1:9/nothing-listens-here"',
    ]) + "\n")
    daemon = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "-c", str(config)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The project's own scrape config and rules, pointed at this daemon.
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    scrape["global"]["scrape_interval"] = "1s"
    scrape["global"]["evaluation_interval"] = "1s"
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "clausewatch")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{api_port}"]}]
    scrape["scrape_configs"] = [job]
    shutil.copy(REPO / "deploy/prometheus/alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    prometheus = subprocess.Popen(
        [prometheus_binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        def target_up() -> bool:
            targets = get_json(f"{base}/targets")["data"]["activeTargets"]
            return any(t["health"] == "up" and t["labels"]["job"] == "clausewatch"
                       for t in targets)

        wait_for(target_up, 60, "the clausewatch target to be up")

        def scraped_failures() -> bool:
            result = get_json(f"{base}/query?query=clausewatch_captures_total"
                              "%7Boutcome%3D%22failed%22%7D")["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) >= 1

        wait_for(scraped_failures, 30, "failed captures in Prometheus")

        def rules_evaluated() -> list[dict]:  # type: ignore[type-arg]
            groups = get_json(f"{base}/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r["health"] == "ok" and r["lastEvaluation"][:4] != "0001"
                             for r in rules):
                return rules
            return []

        rules = wait_for(rules_evaluated, 30, "every alert rule to evaluate cleanly")
        names = {r["name"] for r in rules}
        assert {"ClausewatchDown", "ClausewatchDocumentStale",
                "ClausewatchCaptureFailureRatio"} <= names
        up = get_json(f"{base}/query?query=up%7Bjob%3D%22clausewatch%22%7D")["data"]["result"]
        assert up and up[0]["value"][1] == "1"
        # The daemon keeps failing to capture: the failure-ratio alert becomes pending/firing.
        ratio = next(r for r in rules if r["name"] == "ClausewatchCaptureFailureRatio")
        assert ratio["type"] == "alerting"

        def failure_alert_active() -> bool:
            alerts = get_json(f"{base}/alerts")["data"]["alerts"]
            return any(a["labels"]["alertname"] == "ClausewatchCaptureFailureRatio"
                       for a in alerts)

        wait_for(failure_alert_active, 30, "the failure-ratio alert to become active")
    finally:
        prometheus.terminate()
        daemon.terminate()
        prometheus.wait(20)
        assert daemon.wait(20) == 0
