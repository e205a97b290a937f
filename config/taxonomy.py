"""Load the clause taxonomy from TOML and validate it into the domain's Taxonomy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn, cast

import tomli

from config.errors import ConfigError
from domain.classify import SEVERITIES, Category, Rule, Severity, Taxonomy, term_regex

DEFAULT_PATH = Path(__file__).with_name("taxonomy.toml")

_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_CATEGORY_KEYS = {"id", "name", "description", "severity", "regulations", "rules"}
_RULE_KEYS = {"id", "phrases", "patterns", "require", "exclude", "weight"}


class TaxonomyError(ConfigError):
    """A taxonomy file that cannot be used: names the file, the key, the problem and the fix."""


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """Read and validate a taxonomy TOML file (None: the one packaged with clausewatch)."""
    path = DEFAULT_PATH if path is None else path
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise TaxonomyError(
            str(path),
            "",
            f"cannot read the file ({error.strerror or error})",
            "check the path, or pass None to use the packaged taxonomy",
        ) from None
    try:
        document = tomli.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomli.TOMLDecodeError) as error:
        raise TaxonomyError(
            str(path), "", f"not valid TOML: {error}", "fix the syntax at the line and column shown"
        ) from None
    return parse_taxonomy(document, source=str(path))


def parse_taxonomy(document: dict[str, Any], *, source: str) -> Taxonomy:
    """Validate an already-parsed TOML document into a Taxonomy; `source` names it in errors."""
    check = _Checker(source)
    unknown = sorted(set(document) - {"categories"})
    if unknown:
        check.fail(unknown[0], "unknown top-level key", "the file holds only [[categories]] tables")
    tables = document.get("categories")
    if not isinstance(tables, list) or not tables:
        check.fail(
            "categories",
            "missing or empty",
            "add at least one [[categories]] table with id, name, severity and rules",
        )
    categories: list[Category] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        key = f"categories[{index}]"
        category = _category(check, key, table)
        if category.id in seen:
            check.fail(
                f"{key}.id",
                f"duplicate category id {category.id!r} (also categories[{seen[category.id]}].id)",
                "give each category its own id",
            )
        seen[category.id] = index
        categories.append(category)
    return Taxonomy(categories=tuple(categories))


class _Checker:
    """Raises TaxonomyError for one source file."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str, fix: str) -> NoReturn:
        """Raise the error for this key."""
        raise TaxonomyError(self.source, key, problem, fix)

    def table(self, key: str, value: object) -> dict[str, Any]:
        """The value as a TOML table."""
        if not isinstance(value, dict):
            self.fail(
                key, f"expected a table, got {type(value).__name__}", "write it as a [[...]] table"
            )
        return value

    def text(self, key: str, value: object) -> str:
        """The value as a non-empty string."""
        if not isinstance(value, str) or not value.strip():
            self.fail(key, "missing or not a non-empty string", "set it to a quoted string")
        return value

    def texts(self, key: str, value: object) -> tuple[str, ...]:
        """The value as a list of non-empty strings (missing: empty)."""
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(
                key,
                f"expected a list of strings, got {type(value).__name__}",
                'write it as ["…", "…"]',
            )
        return tuple(self.text(f"{key}[{index}]", item) for index, item in enumerate(value))

    def unknown_keys(self, key: str, table: dict[str, Any], allowed: set[str]) -> None:
        """Refuse keys the format does not know (usually a typo)."""
        extra = sorted(set(table) - allowed)
        if extra:
            self.fail(
                f"{key}.{extra[0]}",
                "unknown key",
                f"use only {', '.join(sorted(allowed))} (check the spelling)",
            )


def _category(check: _Checker, key: str, value: object) -> Category:
    """One validated category."""
    table = check.table(key, value)
    check.unknown_keys(key, table, _CATEGORY_KEYS)
    category_id = check.text(f"{key}.id", table.get("id"))
    if not _SLUG.fullmatch(category_id):
        check.fail(
            f"{key}.id",
            f"{category_id!r} is not a slug",
            'use lower-case words joined by hyphens, like "ai-model-training"',
        )
    severity = check.text(f"{key}.severity", table.get("severity"))
    if severity not in SEVERITIES:
        check.fail(
            f"{key}.severity",
            f"unknown severity {severity!r}",
            f"use one of {', '.join(SEVERITIES)}",
        )
    rule_tables = table.get("rules")
    if not isinstance(rule_tables, list) or not rule_tables:
        check.fail(
            f"{key}.rules",
            f"category {category_id!r} has no rules",
            "add at least one [[categories.rules]] table with phrases or patterns",
        )
    rules = [
        _rule(check, f"{key}.rules[{i}]", category_id, i, rule)
        for i, rule in enumerate(rule_tables)
    ]
    rule_ids = [rule.id for rule in rules]
    for index, rule_id in enumerate(rule_ids):
        if rule_ids.index(rule_id) != index:
            check.fail(
                f"{key}.rules[{index}].id",
                f"duplicate rule id {rule_id!r}",
                "give each rule of a category its own id",
            )
    return Category(
        id=category_id,
        name=check.text(f"{key}.name", table.get("name")),
        description=check.text(f"{key}.description", table.get("description")),
        severity=cast(Severity, severity),
        regulations=check.texts(f"{key}.regulations", table.get("regulations")),
        rules=tuple(rules),
    )


def _rule(check: _Checker, key: str, category_id: str, index: int, value: object) -> Rule:
    """One validated rule; its id defaults to CATEGORY-ID/INDEX."""
    table = check.table(key, value)
    check.unknown_keys(key, table, _RULE_KEYS)
    rule_id = table.get("id", f"{category_id}/{index}")
    check.text(f"{key}.id", rule_id)
    lists = {
        name: check.texts(f"{key}.{name}", table.get(name))
        for name in ("phrases", "patterns", "require", "exclude")
    }
    if not lists["phrases"] and not lists["patterns"]:
        check.fail(
            key, "rule has neither phrases nor patterns", 'add phrases = ["…"] or patterns = ["…"]'
        )
    for name in ("phrases", "require", "exclude"):
        for i, term in enumerate(lists[name]):
            if not term.rstrip("*").strip():
                check.fail(f"{key}.{name}[{i}]", "empty term", "remove it or write the words")
            term_regex(term)
    for i, pattern in enumerate(lists["patterns"]):
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as error:
            check.fail(
                f"{key}.patterns[{i}]",
                f"invalid regular expression {pattern!r}: {error}",
                "fix the regex (TOML literal strings '…' need no backslash escaping)",
            )
        if compiled.fullmatch(""):
            check.fail(
                f"{key}.patterns[{i}]",
                f"pattern {pattern!r} matches the empty string",
                "make the pattern require at least one character",
            )
    weight = table.get("weight", 0.6)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1:
        check.fail(
            f"{key}.weight",
            f"weight {weight!r} is not a number in (0, 1]",
            "use a strength such as 0.4 (weak hint) to 0.95 (unmistakable)",
        )
    return Rule(id=rule_id, weight=float(weight), **lists)
