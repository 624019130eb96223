"""A file uploaded as multipart/form-data, streamed into the file storage as it arrives: never
whole in memory, refused (413) as soon as it passes the limit, and by type (415) as soon as its
part's headers are read. FastAPI's UploadFile would spool the whole body first."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import AppError, PayloadTooLargeError, UnsupportedMediaTypeError
from service.jobs.storage import FileStorage

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# The form's own bytes around the file: part headers and boundaries.
ENVELOPE_BYTES = 16 * 1024

UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "text/csv or application/json (or a .csv/.json name).",
                        }
                    },
                    "required": ["file"],
                },
                "encoding": {"file": {"contentType": "text/csv, application/json"}},
            }
        },
    }
}


class MalformedUploadError(AppError):
    status = 400
    code = "malformed_upload"
    title = "Malformed upload"


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    key: str
    media_type: str
    size: int
    sha256: str


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_field: bytes = b""
    header_value: bytes = b""


class _Events:
    """What the parser reported during one write: it calls back synchronously, and the storage
    is written asynchronously after."""

    def __init__(self) -> None:
        self.part: _Part | None = None
        self.file_headers: dict[bytes, bytes] | None = None
        self.in_file = False
        self.data: list[bytes] = []
        self.file_ended = False

    def callbacks(self) -> "MultipartCallbacks":
        def on_part_begin() -> None:
            self.part = _Part()

        def on_header_field(data: bytes, start: int, end: int) -> None:
            assert self.part is not None
            self.part.header_field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            assert self.part is not None
            self.part.header_value += data[start:end]

        def on_header_end() -> None:
            assert self.part is not None
            self.part.headers[self.part.header_field.lower()] = self.part.header_value
            self.part.header_field = self.part.header_value = b""

        def on_headers_finished() -> None:
            assert self.part is not None
            _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
            if options.get(b"name") == b"file" and self.file_headers is None:
                self.file_headers = self.part.headers
                self.in_file = True

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if self.in_file:
                self.data.append(data[start:end])

        def on_part_end() -> None:
            if self.in_file:
                self.in_file = False
                self.file_ended = True

        return {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        }


def _media_type(headers: Mapping[bytes, bytes], accepted: Mapping[str, str]) -> str:
    declared, _ = parse_options_header(headers.get(b"content-type", b""))
    media_type = declared.decode("latin-1").lower()
    if media_type in accepted.values():
        return media_type
    if media_type in ("", "application/octet-stream"):
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"filename", b"").decode("utf-8", "replace").lower()
        for extension, by_extension in accepted.items():
            if name.endswith(extension):
                return by_extension
    raise UnsupportedMediaTypeError(
        f"The file must be one of {', '.join(sorted(set(accepted.values())))}."
    )


async def receive_upload(
    request: Request,
    *,
    storage: FileStorage,
    key: str,
    max_bytes: int,
    accepted: Mapping[str, str],
) -> ReceivedFile:
    """Stores the form's ``file`` part under ``key``. ``accepted``: file extension -> media
    type, e.g. {".csv": "text/csv"}."""
    form_type, options = parse_options_header(request.headers.get("content-type", ""))
    if form_type != b"multipart/form-data":
        raise UnsupportedMediaTypeError(
            "Send the file as multipart/form-data, in a part named file."
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise MalformedUploadError("The multipart/form-data content type names no boundary.")
    events = _Events()
    parser = MultipartParser(boundary, events.callbacks())
    media_type: str | None = None
    try:
        async with storage.open_writer(key) as writer:
            async for chunk in request.stream():
                parser.write(chunk)
                if events.file_headers is not None and media_type is None:
                    media_type = _media_type(events.file_headers, accepted)
                for piece in events.data:
                    await writer.write(piece)
                    if writer.size > max_bytes:
                        raise PayloadTooLargeError(f"The file exceeds {max_bytes} bytes.")
                events.data.clear()
            parser.finalize()
            if media_type is None or not events.file_ended:
                raise MalformedUploadError("The form has no complete part named file.")
            return ReceivedFile(
                key=key, media_type=media_type, size=writer.size, sha256=writer.sha256.hexdigest()
            )
    except FormParserError as exc:
        await storage.delete(key)
        raise MalformedUploadError(f"The multipart body is malformed: {exc}") from None
    except (AppError, ClientDisconnect):
        await storage.delete(key)
        raise
