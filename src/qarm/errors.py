"""Errors a user can act on: each names the file, row and column where it can."""

from __future__ import annotations


class QarmError(Exception):
    """Base class for every error qarm raises on purpose (the CLI prints it without a traceback)."""


class ConfigError(QarmError):
    """A config file or ``--set`` override is invalid."""


class DataError(QarmError):
    """Input data does not satisfy the schema.

    The message always names the file, and the row and column where that is meaningful.
    """

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None) -> None:
        self.file, self.row, self.column = file, row, column
        where = []
        if file is not None:
            where.append(f"file {file}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class StageInputError(QarmError):
    """A stage was asked to run before the stages it reads from."""
