"""The errors a user can cause, each carrying where and what was expected.

The CLI turns any `Yolo8Error` into one line on stderr and a non-zero exit; anything
else that escapes is an internal bug and is reported as such (with a traceback).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike


class Yolo8Error(Exception):
    """A problem with the user's input: a file, a line in it, a key, an option.

    The message names the file (and line and key where known) and says what was
    expected, so the user can fix the input without reading our code.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | PathLike | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        key = f"'{self.key}': " if self.key else ""
        return f"{where}{key}{self.message}"


class ConfigError(Yolo8Error):
    """A .cfg file that does not describe a network yolo8 can build."""


class WeightsError(Yolo8Error):
    """A .weights file that does not fit its cfg."""


class InputError(Yolo8Error):
    """An image, video, list, folder or data set that cannot be read."""


class CalibrationError(Yolo8Error):
    """A calibration that is missing, damaged or made for another model."""


class ModelFetchError(Yolo8Error):
    """The default model could not be fetched or verified."""


@contextmanager
def reading(path: str | PathLike, what: str, error: type[Yolo8Error]) -> Iterator[None]:
    """Turn the system's refusals to read `path` into one `error` naming it and what it is."""
    try:
        yield
    except FileNotFoundError:
        raise error(f"{what} not found", path=path) from None
    except IsADirectoryError:
        raise error(f"is a directory, expected a {what}", path=path) from None
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror}", path=path) from None


@contextmanager
def writing(path: str | PathLike) -> Iterator[None]:
    """Turn the system's refusal to write `path` into one Yolo8Error naming it."""
    try:
        yield
    except OSError as exc:
        raise Yolo8Error(f"cannot write: {exc.strerror}", path=path) from None
