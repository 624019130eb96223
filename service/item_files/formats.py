"""Items as CSV and JSON files: written a batch at a time, read a row at a time."""

import csv
import io
from collections.abc import Iterator
from typing import IO, Any

import ijson
import orjson

from service.item_files.schemas import FileFormat
from service.items.models import Item

COLUMNS = ("id", "title", "description", "status", "priority", "created_at", "updated_at")
# The fields an import reads; the others an export writes (id, dates) are ignored, so that an
# export imports back. Any other field is an error of its row.
IMPORTED_FIELDS = ("title", "description", "status", "priority")
EXPORT_ONLY_FIELDS = frozenset(set(COLUMNS) - set(IMPORTED_FIELDS))

# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class MalformedFileError(Exception):
    """The file as a whole cannot be read (not UTF-8, not CSV or JSON of items)."""


def escape_cell(value: str) -> str:
    """A leading ' makes a spreadsheet show the text instead of running it. A cell that
    already starts with ' gets one too, so that importing the file gives back the exact text."""
    if value.startswith((*_FORMULA_STARTS, "'")):
        return "'" + value
    return value


def unescape_cell(value: str) -> str:
    return value[1:] if value.startswith("'") else value


def _record(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "title": item.title,
        "description": item.description,
        "status": item.status,
        "priority": item.priority,
        "created_at": item.created_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
    }


class ExportEncoder:
    def __init__(self, file_format: FileFormat) -> None:
        self.format = file_format
        self._first = True

    def header(self) -> bytes:
        if self.format is FileFormat.json:
            return b"["
        return self._csv_rows([list(COLUMNS)])

    def rows(self, items: list[Item]) -> bytes:
        if self.format is FileFormat.json:
            parts = []
            for item in items:
                parts.append(b"\n" if self._first else b",\n")
                parts.append(orjson.dumps(_record(item)))
                self._first = False
            return b"".join(parts)
        return self._csv_rows(
            [
                [
                    escape_cell(value) if isinstance(value, str) else value
                    for value in ("" if v is None else v for v in _record(item).values())
                ]
                for item in items
            ]
        )

    def footer(self) -> bytes:
        return b"\n]\n" if self.format is FileFormat.json else b""

    @staticmethod
    def _csv_rows(rows: list[list[Any]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerows(rows)
        return buffer.getvalue().encode()


def read_rows(file: IO[bytes], file_format: FileFormat) -> Iterator[object]:
    """The file's items, one by one, as the API would receive them (a CSV's cells converted:
    empty means absent, priority a number). Raises MalformedFileError."""
    if file_format is FileFormat.json:
        return _json_rows(file)
    return _csv_rows(file)


def _csv_rows(file: IO[bytes]) -> Iterator[object]:
    text = io.TextIOWrapper(file, encoding="utf-8-sig", newline="")
    try:
        reader = csv.DictReader(text)
        if reader.fieldnames is None or "title" not in reader.fieldnames:
            raise MalformedFileError("The CSV file has no header row with a title column.")
        for row in reader:
            if None in row:
                yield {"__row__": "has more cells than the header has columns"}
                continue
            yield {
                name: _cell(name, row[name])
                for name in IMPORTED_FIELDS
                if row.get(name) not in (None, "")
            }
    except UnicodeDecodeError:
        raise MalformedFileError("The file is not UTF-8 text.") from None
    except csv.Error as exc:
        raise MalformedFileError(
            f"The CSV file is malformed near line {reader.line_num}: {exc}"
        ) from None
    finally:
        text.detach()


def _cell(name: str, value: str) -> object:
    value = unescape_cell(value)
    if name == "priority" and value.strip().isdigit():
        return int(value)
    return value


def _json_rows(file: IO[bytes]) -> Iterator[object]:
    start = file.read(64).lstrip()
    if start.startswith(b"\xef\xbb\xbf"):
        start = start[3:].lstrip()
    if not start.startswith(b"["):
        raise MalformedFileError("The JSON file must be an array of items.")
    file.seek(0)
    try:
        for record in ijson.items(file, "item", use_float=True):
            if isinstance(record, dict):
                record = {k: v for k, v in record.items() if k not in EXPORT_ONLY_FIELDS}
            yield record
    except ijson.JSONError as exc:
        raise MalformedFileError(f"The JSON file is malformed: {exc}") from None
    except UnicodeDecodeError:
        raise MalformedFileError("The file is not UTF-8 text.") from None
