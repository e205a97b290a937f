"""The installed clausewatch version (the CLI's --version, the daemon's build info, the API)."""

from __future__ import annotations


def installed_version() -> str:
    """The version pip installed, or 0+unknown when running from an uninstalled checkout."""
    # Here, not at the top: importlib.metadata is ~13 ms that most commands never need.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clausewatch")
    except PackageNotFoundError:
        return "0+unknown"
