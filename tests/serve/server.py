"""A real ``fcvc serve`` in a subprocess on a free loopback port, for the serve tests: the serve bench's
:class:`~fcvc_pipeline.bench.serve.ServerProcess` (start, URL, readiness, stop), plus request helpers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fcvc_pipeline.bench.serve import ServerProcess, multipart_body


class Server(ServerProcess):
    """``fcvc serve --model MODEL --port 0 ARGS`` (one torch thread), started and waited for (ready, unless
    ``ready=False``: listening only), stopped by :meth:`stop` or at the end of a ``with`` block."""

    def __init__(self, model: Path, *args: str, env: dict[str, str] | None = None, ready: bool = True,
                 timeout: float = 120.0):
        super().__init__("test", model, list(args), threads=1, env=env)
        deadline = time.monotonic() + timeout
        try:
            if ready:
                self.wait_ready(deadline)
            else:
                self.wait_listening(deadline)
        except BaseException:
            self.stop()
            raise
        self.url = self.url.rstrip("/")  # set once by the stderr reader; paths are appended to it

    def stderr(self) -> str:
        return "".join(self.lines)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        try:
            return self.request("GET", path, headers=headers, timeout=10)
        except (urllib.error.URLError, ConnectionError):
            return 0, {}, b""

    def post_videos(self, files: list[tuple[str, bytes]], fields: dict[str, str] | None = None,
                    headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        body, ctype = multipart(files, fields)
        status, _, raw = self.request("POST", "/v1/captions", body, {"Content-Type": ctype, **(headers or {})})
        return status, json.loads(raw)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body: each (file name, bytes) as a 'file' part, then the fields."""
    return multipart_body(files, fields or {})
