from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field

from service.items.models import ItemStatus
from service.items.schemas import ItemSort, Priority
from service.schemas import MAX_JSON_INTEGER, NO_NUL_PATTERN, StrictInput


class FileFormat(StrEnum):
    csv = "csv"
    json = "json"


MEDIA_TYPES = {FileFormat.csv: "text/csv", FileFormat.json: "application/json"}
# What an upload may be: by its part's Content-Type, or else by its file name.
ACCEPTED_UPLOADS = {".csv": "text/csv", ".json": "application/json"}


class ItemExportRequest(StrictInput):
    """The list's filters and sorts: the export holds what the list would show, every page."""

    format: FileFormat = FileFormat.csv
    status: ItemStatus | None = None
    priority: Priority | None = None
    q: Annotated[
        str | None,
        Field(min_length=1, max_length=100, pattern=NO_NUL_PATTERN, description="Title contains"),
    ] = None
    owner_id: Annotated[
        int | None,
        Field(
            ge=1,
            le=MAX_JSON_INTEGER,
            description="Admins only: one owner's items. In a JSON body, at most 2^53 - 1: the "
            "largest integer every JSON parser keeps exact (RFC 7493).",
        ),
    ] = None
    sort: ItemSort = ItemSort.created_desc


class ExportParams(BaseModel):
    """What an export job keeps: the request, and whether it was made with an admin's view."""

    request: ItemExportRequest
    as_admin: bool


class ImportParams(BaseModel):
    format: FileFormat
    filename: str | None = None


class RowError(BaseModel):
    row: int = Field(description="1 for the first item in the file (a CSV's header is row 0).")
    field: str | None = Field(description="The field at fault; null for the row as a whole.")
    message: str
