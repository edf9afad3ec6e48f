"""Uploaded videos, streamed to a private folder as they arrive: never held whole in memory.

:func:`receive_uploads` reads a ``multipart/form-data`` body chunk by chunk (python-multipart's
push parser) and writes each file part to ``folder/upload-<k><suffix>`` (mode 0600; the folder is the
request's own ``mkdtemp``, mode 0700). The client's file name is kept for display only, cleaned of
control characters and cut to 200 characters; it never becomes part of a path, so ``../`` or shell
characters in it are harmless. The suffix comes from a fixed list of video extensions or is ``.bin``.

Limits, each an :class:`UploadError` with its HTTP status and a message naming the file:

- the whole body over ``max_bytes`` (413): refused from ``Content-Length`` before anything is read,
  or as soon as the streamed bytes pass it (chunked uploads), never after buffering the rest;
- more than ``max_files`` files (413), more than ``MAX_FIELDS`` form fields or a field over
  ``MAX_FIELD_BYTES`` (413);
- no bytes for ``idle_timeout`` seconds (408): a client that stalls does not hold its place forever;
- not ``multipart/form-data`` (415), a malformed or cut body (400), no file at all (400).

An empty file is not refused here: it is that video's error (the web layer says so, 422).
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from python_multipart.multipart import MultipartParseError, MultipartParser, MultipartState, parse_options_header

MAX_FIELDS = 16
MAX_FIELD_BYTES = 1024
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                  ".ogv", ".ts", ".gif"}


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    name: str  # the client's file name, for display only
    path: Path  # where its bytes are
    size: int = 0


@dataclass
class ReceivedForm:
    files: list[Upload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def display_name(raw: str | None, index: int) -> str:
    """The client's file name made safe to show: printable characters only, at most 200 of them."""
    text = re.sub(r"[\x00-\x1f\x7f]", "", raw or "").strip()
    return text[:200] or f"upload-{index}"


def _suffix(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    return suffix if suffix in VIDEO_SUFFIXES else ".bin"


class _Receiver:
    """python-multipart callbacks: one part at a time to a file or to a small field buffer."""

    def __init__(self, folder: Path, max_files: int):
        self.folder = folder
        self.max_files = max_files
        self.form = ReceivedForm()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._fd: int | None = None
        self._field: tuple[str, bytearray] | None = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end}

    def part_begin(self) -> None:
        self._headers = {}

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = self._header_value = b""

    def headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition")
        if disposition is None:
            raise UploadError(400, "a part of the form has no Content-Disposition header")
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if filename is None:
            if len(self.form.fields) >= MAX_FIELDS:
                raise UploadError(413, f"too many form fields (at most {MAX_FIELDS})")
            self._field = (name, bytearray())
            return
        index = len(self.form.files)
        if index >= self.max_files:
            raise UploadError(413, f"too many files in one request (at most {self.max_files}; send the others "
                                   f"in another request)")
        shown = display_name(filename.decode("utf-8", "replace"), index)
        path = self.folder / f"upload-{index}{_suffix(shown)}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.form.files.append(Upload(shown, path))

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._fd is not None:
            view = memoryview(data)[start:end]
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self.form.files[-1].size += end - start
        elif self._field is not None:
            name, buf = self._field
            buf += data[start:end]
            if len(buf) > MAX_FIELD_BYTES:
                raise UploadError(413, f"form field '{name[:40]}' is over {MAX_FIELD_BYTES} bytes")

    def part_end(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        elif self._field is not None:
            name, buf = self._field
            self.form.fields[name] = buf.decode("utf-8", "replace")
            self._field = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def receive_uploads(headers: dict[str, str], body: AsyncIterator[bytes], folder: Path, *,
                          max_bytes: int, max_files: int, idle_timeout: float = 60.0) -> ReceivedForm:
    """Stream the form in ``body`` (the request's chunks) into ``folder``; see the module docstring.

    ``headers`` are the request's (lower-case names). A client that goes away raises whatever the body
    iterator raises (Starlette's ``ClientDisconnect``); the caller deletes ``folder`` in every case.
    """
    ctype, params = parse_options_header(headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(415, "send the videos as multipart/form-data (one 'file' part per video)")
    limit_mb = max_bytes / 2**20
    declared = headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise UploadError(400, f"Content-Length is not a number: {declared[:40]!r}") from None
        if length > max_bytes:
            raise UploadError(413, f"the upload is {length / 2**20:.1f} MB, over the limit of {limit_mb:g} MB "
                                   f"(fcvc serve --max-upload-mb)")
    receiver = _Receiver(folder, max_files)
    parser = MultipartParser(params[b"boundary"], receiver.callbacks())
    received = 0
    chunks = body.__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), timeout=idle_timeout)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise UploadError(408, f"the upload stalled: no data for {idle_timeout:g} s") from None
            received += len(chunk)
            if received > max_bytes:
                raise UploadError(413, f"the upload is over the limit of {limit_mb:g} MB (fcvc serve --max-upload-mb)")
            if chunk:
                parser.write(chunk)
        parser.finalize()
        if parser.state != MultipartState.END:
            raise UploadError(400, "the form data ends before its closing boundary (a cut upload?)")
    except MultipartParseError as e:
        raise UploadError(400, f"the form data is malformed: {e}") from None
    finally:
        receiver.close()
    form = receiver.form
    if not form.files:
        raise UploadError(400, "no video in the request: send each as a form part with a file name "
                               "(curl -F file=@video.mp4)")
    return form
