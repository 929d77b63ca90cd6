"""Configuration errors: every problem of a refused file, with its key path."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Problem", "ConfigError"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration file: where and why."""

    source: str
    path: str  # e.g. keyserver.group[1].tek[0].cipher; "" for the whole file
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.path}: {self.reason}" if self.path else (
            f"{self.source}: {self.reason}"
        )


class ConfigError(Exception):
    """The configuration was refused; `problems` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)
