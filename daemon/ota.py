"""`clausewatch import-ota`: Open Terms Archive declarations to [[documents]] entries."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from config.errors import ConfigError


def slugify(text: str) -> str:
    """A lower-case slug: letters and digits joined by hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "document"


def read_declarations(folder: Path) -> Iterator[dict[str, Any]]:
    """Documents from every declaration file in a folder (OTA service files or single terms)."""
    if not folder.is_dir():
        raise ConfigError(str(folder), "", "not a folder of declarations",
                          "pass the declarations/ folder of an Open Terms Archive collection")
    files = sorted(p for p in folder.rglob("*.json")
                   if not p.name.endswith((".history.json", ".filters.js")))
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), "", f"not a JSON declaration: {exc}",
                              "fix or remove the file") from None
        if not isinstance(data, dict):
            continue
        if "terms" in data:
            service = str(data.get("name") or path.stem)
            for terms_type, terms in sorted(data["terms"].items()):
                yield from _documents(service, terms_type, terms, path)
        elif "fetch" in data:
            service = str(data.get("service") or data.get("name") or path.parent.name)
            yield from _documents(service, str(data.get("terms_type", path.stem)), data, path)


def _documents(service: str, terms_type: str, terms: dict[str, Any],
               path: Path) -> Iterator[dict[str, Any]]:
    # A terms entry is one source document, or several combined ("combine": [...]).
    sources = terms.get("combine") or [terms]
    for n, source in enumerate(sources):
        url = source.get("fetch") or terms.get("fetch")
        if not isinstance(url, str):
            raise ConfigError(str(path), f"terms.{terms_type}.fetch", "missing URL",
                              "every OTA document needs a fetch URL")
        slug = f"{slugify(service)}/{slugify(terms_type)}"
        if len(sources) > 1:
            slug += f"-{n + 1}"
        entry: dict[str, Any] = {"id": slug, "platform": service, "title": terms_type,
                                 "url": url}
        for key in ("select", "remove"):
            value = source.get(key, terms.get(key))
            if value is not None:
                entry[key] = value
        yield entry


def to_toml(entries: list[dict[str, Any]]) -> str:
    """Render [[documents]] tables (JSON string escapes are valid TOML basic strings)."""
    lines = [f"# {len(entries)} documents imported from Open Terms Archive declarations."]
    for entry in entries:
        lines += ["", "[[documents]]"]
        for key in ("id", "platform", "title", "url", "select", "remove"):
            if key in entry:
                lines.append(f"{key} = {_value(entry[key])}")
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value)
