"""The config file: parsed once from TOML into frozen, typed, validated settings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tomli

from config.errors import ConfigError

_SLUG = re.compile(r"^[a-z0-9][a-z0-9._/-]*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
               "gb": 1000**3, "gib": 1024**3}
CHANGE_KINDS = ("added", "removed", "modified", "moved")
SEVERITIES = ("low", "medium", "high", "critical")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

Selector = str | dict[str, str] | list[str | dict[str, str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentSettings:
    """One watched document."""

    id: str
    platform: str
    title: str
    url: str
    select: Selector | None = None
    remove: Selector | None = None
    interval: float | None = None
    robots: bool = True
    content_type: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSettings:
    """Where events live: a SQLite file or a PostgreSQL database."""

    url: str
    lock_timeout: float = 5.0
    schema: str | None = None

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a sqlite:/// URL."""
        return Path(self.url[len("sqlite:///"):]) if self.url.startswith("sqlite:///") else None

    @property
    def is_postgres(self) -> bool:
        """True for a postgresql:// URL."""
        return self.url.startswith(("postgresql://", "postgres://"))

    @property
    def shared(self) -> bool:
        """True for a store another process can open: a SQLite file or PostgreSQL (a
        memory: store lives in the process that made it)."""
        return self.sqlite_path is not None or self.is_postgres


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerSettings:
    """How often documents are polled and by how many workers."""

    default_interval: float = 6 * 3600
    jitter: float = 60.0
    workers: int = 4
    drain_timeout: float = 30.0
    # PostgreSQL replicas: how long a claimed poll stays claimed if its replica dies.
    lease: float = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchSettings:
    """How pages are fetched: politely, with limits."""

    user_agent: str = "clausewatch/0.1 (+https://github.com/clausewatch/clausewatch)"
    connect_timeout: float = 10.0
    timeout: float = 60.0
    max_body: int = 20 * 1024 * 1024
    max_redirects: int = 5
    concurrency: int = 16
    per_host_concurrency: int = 2
    per_host_delay: float = 1.0
    retries: int = 3
    retry_budget: float = 120.0
    backoff: float = 1.0
    robots: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """The HTTP API: where it listens, and the bearer token's environment variable."""

    listen: str = "127.0.0.1:8080"
    token_env: str | None = None
    public_url: str | None = None

    @property
    def host(self) -> str:
        """The address part of `listen`."""
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        """The port part of `listen`."""
        return int(self.listen.rsplit(":", 1)[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionSettings:
    """Change detection thresholds."""

    min_length_ratio: float = 0.3
    similarity_threshold: float = 0.5
    error_page_max_length: int = 2000
    # Worker processes that parse and walk pages (0: in the polling threads, one core).
    extract_processes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceSettings:
    """How long the bytes of captures that changed nothing are kept."""

    retention: float = 30 * 86400


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelSettings:
    """A delivery channel: email, Slack or webhook, with secrets named by environment variable."""

    id: str
    type: str
    url: str | None = None
    url_env: str | None = None
    secret_env: str | None = None
    host: str | None = None
    port: int | None = None
    tls: str = "starttls"
    username: str | None = None
    password_env: str | None = None
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    timeout: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionSettings:
    """Who wants what, and how often."""

    id: str
    channels: tuple[str, ...]
    platforms: tuple[str, ...] = ()
    documents: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    min_severity: str | None = None
    mode: str = "immediate"
    day: str = "monday"
    time: str = "09:00"
    timezone: str = "UTC"
    send_empty: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifySettings:
    """Delivery retries."""

    give_up_after: float = 24 * 3600
    retry_base: float = 5.0
    retry_max: float = 900.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The whole config."""

    path: Path
    data_dir: Path
    store: StoreSettings
    documents: tuple[DocumentSettings, ...]
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    fetch: FetchSettings = field(default_factory=FetchSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    evidence: EvidenceSettings = field(default_factory=EvidenceSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    channels: tuple[ChannelSettings, ...] = ()
    subscriptions: tuple[SubscriptionSettings, ...] = ()
    log_format: str = "text"
    log_level: str = "info"
    taxonomy: Path | None = None
    replica_id: str | None = None

    def document(self, document_id: str) -> DocumentSettings:
        """The settings of one document; KeyError if it is not configured."""
        for document in self.documents:
            if document.id == document_id:
                return document
        raise KeyError(document_id)

    def interval_of(self, document: DocumentSettings) -> float:
        """A document's polling interval, or the scheduler's default."""
        return document.interval if document.interval is not None else \
            self.scheduler.default_interval


def parse_duration(value: object, *, file: str = "", key: str = "") -> float:
    """Seconds from a number or a string like "6h", "1h30m", "90s", "2d"."""
    if isinstance(value, bool):
        raise ConfigError(file, key, f"expected a duration, got {value!r}", 'write e.g. "6h"')
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ConfigError(file, key, f"{value!r} is not a duration",
                              'write a number of seconds or e.g. "90s", "30m", "6h", "1d"')
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ConfigError(file, key, f"expected a duration, got {type(value).__name__}",
                          'write e.g. "6h"')
    if seconds < 0:
        raise ConfigError(file, key, "a duration cannot be negative", "use a positive value")
    return seconds


def parse_size(value: object, *, file: str = "", key: str = "") -> int:
    """Bytes from a number or a string like "20MB", "512KiB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ConfigError(file, key, f"{value!r} is not a size", 'write e.g. "20MB" or "512KiB"')
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def load_settings(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, parse and validate a config file; raises ConfigError naming the file and key."""
    path = Path(path)
    file = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(file, "", "the config file does not exist",
                          "pass -c FILE or create ./clausewatch.toml "
                          "(see clausewatch.example.toml)") from None
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read the config file: {exc.strerror}") from None
    try:
        data = tomli.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(file, "", "the file is not UTF-8 text", "save it as UTF-8") from None
    except tomli.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"invalid TOML: {exc}", "fix the syntax at that line") \
            from None
    return parse_settings(data, path=path, environ=environ or {})


def parse_settings(data: Mapping[str, Any], *, path: Path,
                   environ: Mapping[str, str] | None = None) -> Settings:
    """Validate an already parsed TOML table."""
    return _Parser(str(path), environ or {}).settings(data, path)


class _Parser:
    """Validation with the file name at hand, so every error names file and key."""

    def __init__(self, file: str, environ: Mapping[str, str]) -> None:
        self.file = file
        self.environ = environ

    def error(self, key: str, problem: str, fix: str = "") -> ConfigError:
        return ConfigError(self.file, key, problem, fix)

    def table(self, data: object, key: str, known: set[str]) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            raise self.error(key, f"expected a table, got {type(data).__name__}",
                             f"write [{key}] with key = value lines")
        unknown = sorted(set(data) - known)
        if unknown:
            name = f"{key}.{unknown[0]}" if key else unknown[0]
            raise self.error(name, "unknown key",
                             f"remove it or check the spelling; known keys: {', '.join(sorted(known))}")
        return data

    def string(self, data: Mapping[str, Any], name: str, key: str, *, required: bool = False,
               default: str | None = None) -> str | None:
        value = data.get(name)
        if value is None:
            if required:
                raise self.error(f"{key}.{name}" if key else name, "is required",
                                 f"add {name} = \"…\"")
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"{key}.{name}" if key else name,
                             f"expected a non-empty string, got {value!r}", f'write {name} = "…"')
        return value

    def number(self, data: Mapping[str, Any], name: str, key: str, default: float,
               *, minimum: float = 0, integer: bool = False) -> Any:
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum \
                or (integer and not isinstance(value, int)):
            kind = "a whole number" if integer else "a number"
            raise self.error(f"{key}.{name}", f"expected {kind} >= {minimum}, got {value!r}",
                             f"write {name} = {default}")
        return value

    def duration(self, data: Mapping[str, Any], name: str, key: str, default: float) -> float:
        if name not in data:
            return default
        return parse_duration(data[name], file=self.file, key=f"{key}.{name}" if key else name)

    def boolean(self, data: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
        value = data.get(name, default)
        if not isinstance(value, bool):
            raise self.error(f"{key}.{name}", f"expected true or false, got {value!r}",
                             f"write {name} = {str(default).lower()}")
        return value

    def strings(self, data: Mapping[str, Any], name: str, key: str) -> tuple[str, ...]:
        value = data.get(name, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(f"{key}.{name}", f"expected a list of strings, got {value!r}",
                             f'write {name} = ["…"]')
        return tuple(value)

    def choice(self, data: Mapping[str, Any], name: str, key: str, choices: tuple[str, ...],
               default: str) -> str:
        value = data.get(name, default)
        if value not in choices:
            raise self.error(f"{key}.{name}", f"{value!r} is not one of {', '.join(choices)}",
                             f'write {name} = "{default}"')
        return str(value)

    def selector(self, value: object, key: str) -> Selector | None:
        if value is None:
            return None
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, Mapping):
            keys = set(value)
            allowed = {"startBefore", "startAfter", "endBefore", "endAfter", "start_before",
                       "start_after", "end_before", "end_after"}
            starts = keys & {"startBefore", "startAfter", "start_before", "start_after"}
            ends = keys & {"endBefore", "endAfter", "end_before", "end_after"}
            if keys - allowed or len(starts) != 1 or len(ends) != 1 or \
                    not all(isinstance(v, str) and v for v in value.values()):
                raise self.error(key, f"invalid range selector {dict(value)!r}",
                                 "a range has one of startBefore/startAfter and one of "
                                 "endBefore/endAfter, each a CSS selector")
            return dict(value)
        if isinstance(value, list) and value:
            return [self.selector(v, f"{key}[{i}]") for i, v in enumerate(value)]  # type: ignore[misc]
        raise self.error(key, f"invalid selector {value!r}",
                         "use a CSS selector string, a range table or a list of them")

    def settings(self, data: Mapping[str, Any], path: Path) -> Settings:
        top = self.table(data, "", {"data_dir", "store", "documents", "scheduler", "fetch",
                                    "http", "detection", "evidence", "notify", "channels",
                                    "subscriptions", "log", "taxonomy", "replica_id"})
        base = path.parent
        data_dir_value = self.string(top, "data_dir", "", default="./clausewatch-data")
        data_dir = (base / str(data_dir_value)).resolve()
        store = self.store(top.get("store", {}), data_dir, base)
        documents = self.documents(top.get("documents", []))
        channels = self.channels(top.get("channels", []))
        subscriptions = self.subscriptions(top.get("subscriptions", []), channels)
        log = self.table(top.get("log", {}), "log", {"format", "level"})
        taxonomy = self.string(top, "taxonomy", "")
        return Settings(
            path=path,
            data_dir=data_dir,
            store=store,
            documents=documents,
            scheduler=self.scheduler(top.get("scheduler", {})),
            fetch=self.fetch(top.get("fetch", {})),
            http=self.http(top.get("http", {})),
            detection=self.detection(top.get("detection", {})),
            evidence=self.evidence(top.get("evidence", {})),
            notify=self.notify(top.get("notify", {})),
            channels=channels,
            subscriptions=subscriptions,
            log_format=self.choice(log, "format", "log", ("text", "json"), "text"),
            log_level=self.choice(log, "level", "log", ("debug", "info", "warning", "error"),
                                  "info"),
            taxonomy=(base / taxonomy).resolve() if taxonomy else None,
            replica_id=self.string(top, "replica_id", ""),
        )

    def store(self, data: object, data_dir: Path, config_dir: Path) -> StoreSettings:
        table = self.table(data, "store", {"url", "lock_timeout", "schema"})
        url = self.string(table, "url", "store", default=f"sqlite:///{data_dir}/events.db")
        assert url is not None
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://", "memory:")):
            raise self.error("store.url", f"unsupported store URL {url!r}",
                             'use "sqlite:///path/to/events.db" or '
                             '"postgresql://user@host:5432/db"')
        if url.startswith("sqlite:///"):
            # As in SQLAlchemy: sqlite:///relative.db is relative (here: to the config file's
            # folder), sqlite:////absolute/path.db is absolute.
            rest = url[len("sqlite:///"):]
            target = Path(rest) if rest.startswith("/") else config_dir / rest
            url = f"sqlite:///{target.resolve()}"
        schema = self.string(table, "schema", "store")
        if schema is not None and not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
            raise self.error("store.schema", f"invalid schema name {schema!r}",
                             "use lower-case letters, digits and underscores")
        return StoreSettings(url=url, schema=schema,
                             lock_timeout=self.duration(table, "lock_timeout", "store", 5.0))

    def documents(self, data: object) -> tuple[DocumentSettings, ...]:
        if not isinstance(data, list):
            raise self.error("documents", "expected [[documents]] entries",
                             "write each document as a [[documents]] table")
        seen: set[str] = set()
        result = []
        for n, item in enumerate(data):
            key = f"documents[{n}]"
            table = self.table(item, key, {"id", "platform", "title", "url", "select", "remove",
                                           "interval", "robots", "content_type"})
            doc_id = self.string(table, "id", key, required=True)
            assert doc_id is not None
            key = f"documents[{n}] ({doc_id})"
            if not _SLUG.match(doc_id):
                raise self.error(f"{key}.id", f"{doc_id!r} is not a slug",
                                 'use lower-case letters, digits, ".", "-", "_" and "/", '
                                 'e.g. "tiktok/privacy-policy"')
            if doc_id in seen:
                raise self.error(f"{key}.id", f"duplicate document id {doc_id!r}",
                                 "give every document its own id")
            seen.add(doc_id)
            url = self.string(table, "url", key, required=True)
            assert url is not None
            if not url.startswith(("http://", "https://")):
                raise self.error(f"{key}.url", f"{url!r} is not an http(s) URL",
                                 'write the full URL, e.g. "https://example.com/privacy"')
            interval = self.duration(table, "interval", key, -1.0)
            if interval == 0:
                raise self.error(f"{key}.interval", "the interval cannot be zero",
                                 'write e.g. "6h"')
            result.append(DocumentSettings(
                id=doc_id,
                platform=self.string(table, "platform", key, required=True) or "",
                title=self.string(table, "title", key, required=True) or "",
                url=url,
                select=self.selector(table.get("select"), f"{key}.select"),
                remove=self.selector(table.get("remove"), f"{key}.remove"),
                interval=None if interval < 0 else interval,
                robots=self.boolean(table, "robots", key, True),
                content_type=self.string(table, "content_type", key),
            ))
        return tuple(result)

    def scheduler(self, data: object) -> SchedulerSettings:
        t = self.table(data, "scheduler", {"default_interval", "jitter", "workers",
                                           "drain_timeout", "lease"})
        interval = self.duration(t, "default_interval", "scheduler", 6 * 3600)
        if interval <= 0:
            raise self.error("scheduler.default_interval", "must be positive", 'write "6h"')
        return SchedulerSettings(
            default_interval=interval,
            jitter=self.duration(t, "jitter", "scheduler", 60.0),
            workers=self.number(t, "workers", "scheduler", 4, minimum=1, integer=True),
            drain_timeout=self.duration(t, "drain_timeout", "scheduler", 30.0),
            lease=self.duration(t, "lease", "scheduler", 300.0),
        )

    def fetch(self, data: object) -> FetchSettings:
        t = self.table(data, "fetch", {"user_agent", "connect_timeout", "timeout", "max_body",
                                       "max_redirects", "concurrency", "per_host_concurrency",
                                       "per_host_delay", "retries", "retry_budget", "backoff",
                                       "robots"})
        d = FetchSettings()
        return FetchSettings(
            user_agent=self.string(t, "user_agent", "fetch", default=d.user_agent) or "",
            connect_timeout=self.duration(t, "connect_timeout", "fetch", d.connect_timeout),
            timeout=self.duration(t, "timeout", "fetch", d.timeout),
            max_body=parse_size(t.get("max_body", d.max_body), file=self.file,
                                key="fetch.max_body"),
            max_redirects=self.number(t, "max_redirects", "fetch", d.max_redirects,
                                      integer=True),
            concurrency=self.number(t, "concurrency", "fetch", d.concurrency, minimum=1,
                                    integer=True),
            per_host_concurrency=self.number(t, "per_host_concurrency", "fetch",
                                             d.per_host_concurrency, minimum=1, integer=True),
            per_host_delay=self.duration(t, "per_host_delay", "fetch", d.per_host_delay),
            retries=self.number(t, "retries", "fetch", d.retries, integer=True),
            retry_budget=self.duration(t, "retry_budget", "fetch", d.retry_budget),
            backoff=self.duration(t, "backoff", "fetch", d.backoff),
            robots=self.boolean(t, "robots", "fetch", d.robots),
        )

    def http(self, data: object) -> HttpSettings:
        t = self.table(data, "http", {"listen", "token_env", "public_url"})
        listen = self.string(t, "listen", "http", default="127.0.0.1:8080") or ""
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise self.error("http.listen", f"{listen!r} is not HOST:PORT",
                             'write e.g. "127.0.0.1:8080"')
        return HttpSettings(listen=listen, token_env=self.string(t, "token_env", "http"),
                            public_url=self.string(t, "public_url", "http"))

    def detection(self, data: object) -> DetectionSettings:
        t = self.table(data, "detection", {"min_length_ratio", "similarity_threshold",
                                           "error_page_max_length", "extract_processes"})
        d = DetectionSettings()
        ratio = self.number(t, "min_length_ratio", "detection", d.min_length_ratio)
        threshold = self.number(t, "similarity_threshold", "detection", d.similarity_threshold)
        for name, value in (("min_length_ratio", ratio), ("similarity_threshold", threshold)):
            if value > 1:
                raise self.error(f"detection.{name}", f"{value} is above 1",
                                 "use a fraction between 0 and 1")
        return DetectionSettings(
            min_length_ratio=ratio, similarity_threshold=threshold,
            error_page_max_length=self.number(t, "error_page_max_length", "detection",
                                              d.error_page_max_length, integer=True),
            extract_processes=self.number(t, "extract_processes", "detection",
                                          d.extract_processes, integer=True))

    def evidence(self, data: object) -> EvidenceSettings:
        t = self.table(data, "evidence", {"retention"})
        return EvidenceSettings(retention=self.duration(t, "retention", "evidence", 30 * 86400))

    def notify(self, data: object) -> NotifySettings:
        t = self.table(data, "notify", {"give_up_after", "retry_base", "retry_max"})
        d = NotifySettings()
        return NotifySettings(
            give_up_after=self.duration(t, "give_up_after", "notify", d.give_up_after),
            retry_base=self.duration(t, "retry_base", "notify", d.retry_base),
            retry_max=self.duration(t, "retry_max", "notify", d.retry_max),
        )

    def channels(self, data: object) -> tuple[ChannelSettings, ...]:
        if not isinstance(data, list):
            raise self.error("channels", "expected [[channels]] entries",
                             "write each channel as a [[channels]] table")
        result: list[ChannelSettings] = []
        for n, item in enumerate(data):
            key = f"channels[{n}]"
            t = self.table(item, key, {"id", "type", "url", "url_env", "secret_env", "host",
                                       "port", "tls", "username", "password_env", "from", "to",
                                       "timeout"})
            channel_id = self.string(t, "id", key, required=True) or ""
            key = f"channels[{n}] ({channel_id})"
            if any(c.id == channel_id for c in result):
                raise self.error(f"{key}.id", f"duplicate channel id {channel_id!r}",
                                 "give every channel its own id")
            kind = self.choice(t, "type", key, ("email", "slack", "webhook"), "webhook")
            if "type" not in t:
                raise self.error(f"{key}.type", "is required", 'write type = "email", "slack" '
                                 'or "webhook"')
            for secret_key in ("url_env", "secret_env", "password_env"):
                name = t.get(secret_key)
                if name is not None and (not isinstance(name, str)
                                         or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)):
                    raise self.error(f"{key}.{secret_key}", f"{name!r} is not an environment "
                                     "variable name", f'write {secret_key} = "MY_SECRET"')
            if "password" in t or "secret" in t:
                raise self.error(f"{key}", "secrets are never written in the config file",
                                 "put the secret in an environment variable and name it with "
                                 "password_env / secret_env / url_env")
            channel = ChannelSettings(
                id=channel_id, type=kind,
                url=self.string(t, "url", key), url_env=self.string(t, "url_env", key),
                secret_env=self.string(t, "secret_env", key),
                host=self.string(t, "host", key),
                port=self.number(t, "port", key, 0, integer=True) or None,
                tls=self.choice(t, "tls", key, ("none", "starttls", "implicit"), "starttls"),
                username=self.string(t, "username", key),
                password_env=self.string(t, "password_env", key),
                sender=self.string(t, "from", key),
                recipients=self.strings(t, "to", key),
                timeout=self.duration(t, "timeout", key, 10.0),
            )
            if kind == "email" and not (channel.host and channel.sender and channel.recipients):
                raise self.error(key, "an email channel needs host, from and to",
                                 'add host = "smtp.example.org", from = "…", to = ["…"]')
            if kind == "slack" and not (channel.url or channel.url_env):
                raise self.error(key, "a slack channel needs its webhook URL",
                                 'name the environment variable: url_env = '
                                 '"CLAUSEWATCH_SLACK_WEBHOOK_URL"')
            if kind == "webhook":
                if not channel.url:
                    raise self.error(f"{key}.url", "is required", 'write url = "https://…"')
                if not channel.secret_env:
                    raise self.error(f"{key}.secret_env", "is required: webhooks are signed",
                                     'write secret_env = "CLAUSEWATCH_HOOK_SECRET"')
            result.append(channel)
        return tuple(result)

    def subscriptions(self, data: object,
                      channels: tuple[ChannelSettings, ...]) -> tuple[SubscriptionSettings, ...]:
        if not isinstance(data, list):
            raise self.error("subscriptions", "expected [[subscriptions]] entries",
                             "write each subscription as a [[subscriptions]] table")
        channel_ids = {c.id for c in channels}
        result: list[SubscriptionSettings] = []
        for n, item in enumerate(data):
            key = f"subscriptions[{n}]"
            t = self.table(item, key, {"id", "channels", "platforms", "documents", "kinds",
                                       "categories", "min_severity", "mode", "day", "time",
                                       "timezone", "send_empty"})
            sub_id = self.string(t, "id", key, required=True) or ""
            key = f"subscriptions[{n}] ({sub_id})"
            if any(s.id == sub_id for s in result):
                raise self.error(f"{key}.id", f"duplicate subscription id {sub_id!r}",
                                 "give every subscription its own id")
            chans = self.strings(t, "channels", key)
            if not chans:
                raise self.error(f"{key}.channels", "a subscription needs at least one channel",
                                 'write channels = ["my-channel"]')
            for c in chans:
                if c not in channel_ids:
                    raise self.error(f"{key}.channels", f"no channel with id {c!r}",
                                     f"define it in [[channels]]; known: "
                                     f"{', '.join(sorted(channel_ids)) or 'none'}")
            kinds = self.strings(t, "kinds", key)
            for k in kinds:
                if k not in CHANGE_KINDS:
                    raise self.error(f"{key}.kinds", f"{k!r} is not a change kind",
                                     f"use some of {', '.join(CHANGE_KINDS)}")
            severity = t.get("min_severity")
            if severity is not None and severity not in SEVERITIES:
                raise self.error(f"{key}.min_severity", f"{severity!r} is not a severity",
                                 f"use one of {', '.join(SEVERITIES)}")
            mode = self.choice(t, "mode", key, ("immediate", "daily", "weekly"), "immediate")
            day = str(t.get("day", "monday")).lower()
            if day not in WEEKDAYS:
                raise self.error(f"{key}.day", f"{day!r} is not a weekday",
                                 f"use one of {', '.join(WEEKDAYS)}")
            time_of_day = self.string(t, "time", key, default="09:00") or "09:00"
            if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", time_of_day):
                raise self.error(f"{key}.time", f"{time_of_day!r} is not HH:MM",
                                 'write time = "09:00"')
            zone = self.string(t, "timezone", key, default="UTC") or "UTC"
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise self.error(f"{key}.timezone", f"unknown time zone {zone!r}",
                                 'use an IANA name such as "Europe/Paris"') from None
            result.append(SubscriptionSettings(
                id=sub_id, channels=chans, platforms=self.strings(t, "platforms", key),
                documents=self.strings(t, "documents", key), kinds=kinds,
                categories=self.strings(t, "categories", key), min_severity=severity,
                mode=mode, day=day, time=time_of_day, timezone=zone,
                send_empty=self.boolean(t, "send_empty", key, False),
            ))
        return tuple(result)
