"""Errors the library raises. The CLI maps every QwenRecipesError to exit code 2 (one place: cli.main)."""

from __future__ import annotations

from dataclasses import dataclass


class QwenRecipesError(Exception):
    """Base of every error qwenrecipes raises; the CLI maps it to exit code 2."""


@dataclass(frozen=True)
class Problem:
    """One problem in one file, located by a JSON path (``model.name_or_path``)."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        location = f"{self.file}::{self.path}" if self.path else self.file
        return f"{location}: {self.message}"


class RecipeError(QwenRecipesError):
    """A recipe is invalid. Carries every problem found, so the user fixes them all in one go."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class EngineError(QwenRecipesError):
    """An engine, its environment, or one of its runs failed."""
