"""A real ``fcvc serve`` in a subprocess on a free loopback port, for the serve tests and nothing else."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

LISTENING = re.compile(r"fcvc serve: (http://\S+/)")


class Server:
    """``fcvc serve --model MODEL --port 0 ARGS`` started and waited for (ready), stopped by :meth:`stop`."""

    def __init__(self, model: Path, *args: str, env: dict[str, str] | None = None, ready: bool = True,
                 timeout: float = 120.0):
        cmd = [sys.executable, "-m", "fcvc_pipeline", "serve", "--model", str(model), "--port", "0", *args]
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, text=True)
        self.lines: list[str] = []
        self._url = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._url.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fcvc serve did not start (exit {self.proc.returncode}):\n{self.stderr()}")
        if ready:
            while self.get("/readyz")[0] != 200:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fcvc serve did not get ready:\n{self.stderr()}")
                time.sleep(0.1)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = LISTENING.search(line)
            if m and not self.url:
                self.url = m.group(1).rstrip("/")
                self._url.set()

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

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None,
              boundary: str = "fcvc-test-boundary-7e3f") -> tuple[bytes, str]:
    """A multipart/form-data body: each (file name, bytes) as a 'file' part, then the fields."""
    out = bytearray()
    for name, data in files:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
        out += data + b"\r\n"
    for key, value in (fields or {}).items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
