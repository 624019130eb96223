"""Where job files live: exports for download, uploads for import. A small interface, so an
object store can replace the local directory; the directory must be one every API and worker
pod mounts (a ReadWriteMany volume in Kubernetes, deploy/k8s/base/files-pvc.yaml)."""

import hashlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import PurePosixPath
from typing import IO, Protocol

import anyio
from anyio import to_thread
from starlette.responses import FileResponse, Response


class StoredFileWriter:
    """Appends to a file being stored, counting its bytes and hashing them on the way."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.size = 0
        self.sha256 = hashlib.sha256()

    async def write(self, chunk: bytes) -> None:
        await to_thread.run_sync(self._file.write, chunk)
        self.size += len(chunk)
        self.sha256.update(chunk)


class FileStorage(Protocol):
    def open_writer(self, key: str) -> AbstractAsyncContextManager[StoredFileWriter]: ...
    def open_sync(self, key: str) -> IO[bytes]: ...
    def download(self, key: str, *, filename: str, media_type: str) -> Response: ...
    async def delete(self, key: str) -> None: ...


class LocalDirectoryStorage:
    """Files under one directory. A file appears under its key only once it is complete (it
    is written beside it and renamed), so a reader never sees half a file."""

    chunk_bytes = 64 * 1024

    def __init__(self, root: str) -> None:
        self.root = anyio.Path(root)

    def _path(self, key: str) -> anyio.Path:
        parts = PurePosixPath(key).parts
        if not parts or any(part in ("", ".", "..") or part.startswith("/") for part in parts):
            raise ValueError(f"not a storage key: {key!r}")
        return self.root.joinpath(*parts)

    @asynccontextmanager
    async def open_writer(self, key: str) -> AsyncIterator[StoredFileWriter]:
        path = self._path(key)
        await path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        # Opened and closed here rather than in a thread: a job cancelled half-way (its time
        # limit) would otherwise leave the file open. Unbuffered, so closing writes nothing.
        file = open(str(partial), "wb", buffering=0)  # noqa: ASYNC230, SIM115
        try:
            yield StoredFileWriter(file)
            file.close()
            await partial.rename(path)
        finally:
            file.close()
            await partial.unlink(missing_ok=True)

    def open_sync(self, key: str) -> IO[bytes]:
        """For parsers that read synchronously (csv, ijson): call it and read from a worker
        thread, never the event loop."""
        return open(str(self._path(key)), "rb")

    def download(self, key: str, *, filename: str, media_type: str) -> Response:
        """Streamed from disk with Content-Disposition, ETag, Last-Modified and Range."""
        return FileResponse(
            str(self._path(key)),
            filename=filename,
            media_type=media_type,
        )

    async def delete(self, key: str) -> None:
        await self._path(key).unlink(missing_ok=True)
