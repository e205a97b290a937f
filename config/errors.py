"""The config package's exception tree."""

from __future__ import annotations


class ConfigError(Exception):
    """A config file that cannot be used: names the file, the key, the problem and the fix."""

    def __init__(self, file: str, key: str, problem: str, fix: str = "") -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.fix = fix
        where = f"{file}: {key}" if key else file
        message = f"{where}: {problem}"
        if fix:
            message += f" (fix: {fix})"
        super().__init__(message)
