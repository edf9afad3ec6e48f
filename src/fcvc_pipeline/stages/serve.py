"""``fcvc serve --model FILE.fcvc``: caption uploaded videos over HTTP, with a page at ``/``.

Config -> checks (the model file loads and can compute features; the address can be bound) -> serve until
SIGINT/SIGTERM (uvicorn's graceful shutdown: requests in flight finish, then the decoder processes stop;
the exit code is 0: for a service, stopping when asked is success).
The socket is bound here and handed to uvicorn, so a port in use is a clear error before anything starts,
and ``--port 0`` picks a free port (the URL is printed). One process holds the model: ``--workers`` counts
the decoder processes, not server processes (several would each hold the model and split the batches).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fcvc_pipeline import progress
from fcvc_pipeline.devices import check_device_spec, resolve_device
from fcvc_pipeline.errors import ConfigError, FcvcError, require
from fcvc_pipeline.inference.captioner import Captioner
from fcvc_pipeline.inference.package import check_extractable

DEFAULT_PORT = 8000
TOKEN_ENV = "FCVC_SERVE_TOKEN"


@dataclass(frozen=True)
class ServeConfig:
    model: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    device: str = "auto"
    max_upload_mb: float = 200.0
    max_files: int = 16
    max_batch: int = 8
    batch_wait_ms: float = 20.0
    workers: int | None = None  # decoder processes (default: half the cores, at least 1)
    max_queue: int = 32
    decode_timeout: float = 60.0
    upload_timeout: float = 60.0
    max_figures: int = 256
    figure_ttl: float = 3600.0
    token: str | None = None
    threads: int | None = None  # torch threads for the forward and beam search
    log_level: str = "warning"

    def problems(self) -> list[str]:
        out = []
        if not 0 <= self.port <= 65535:
            out.append(f"--port must be 0..65535 (got {self.port})")
        if self.max_upload_mb <= 0:
            out.append(f"--max-upload-mb must be > 0 (got {self.max_upload_mb:g})")
        if self.upload_timeout <= 0:
            out.append(f"--upload-timeout must be > 0 (got {self.upload_timeout:g})")
        if self.max_files < 1 or self.max_queue < 1:
            out.append("--max-files and --max-queue must be at least 1")
        if self.threads is not None and self.threads < 1:
            out.append(f"--threads must be at least 1 (got {self.threads})")
        if self.token is not None and len(self.token) < 8:
            out.append("--token must be at least 8 characters")
        problem = check_device_spec(self.device)
        if problem:
            out.append(problem)
        out += self.service_settings().problems()
        return out

    def service_settings(self):
        from fcvc_pipeline.serve.engine import ServiceSettings  # noqa: PLC0415 -- the serve room needs the optional [serve] extra

        return ServiceSettings(max_batch=self.max_batch, batch_wait_ms=self.batch_wait_ms,
                               workers=self.workers if self.workers is not None else max(1, (os.cpu_count() or 2) // 2),
                               decode_timeout=self.decode_timeout, max_figures=self.max_figures,
                               figure_ttl=self.figure_ttl)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or a clear error (in use, no such address, not allowed)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}",
                          hint="choose another --port (0 picks a free one)") from None
    return sock


def require_serve_extra() -> Any:
    try:
        import fastapi  # noqa: F401, PLC0415 -- optional dependency, checked only by fcvc serve
        import python_multipart  # noqa: F401, PLC0415
        import uvicorn  # noqa: PLC0415
    except ImportError as e:
        raise ConfigError(f"fcvc serve needs FastAPI, uvicorn and python-multipart ({e.name} is missing)",
                          hint="pip install 'fcvc-pipeline[serve]'") from None
    return uvicorn


def run_serve(cfg: ServeConfig) -> dict[str, Any]:
    require(cfg.problems())
    uvicorn = require_serve_extra()
    from fcvc_pipeline.serve.app import HttpLimits, create_app  # noqa: PLC0415 -- needs the optional [serve] extra
    from fcvc_pipeline.serve.engine import CaptionService  # noqa: PLC0415 -- idem

    token = cfg.token or os.environ.get(TOKEN_ENV) or None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    captioner = Captioner.load(cfg.model, resolve_device(cfg.device))
    if captioner.extraction is None or not captioner.extraction.can_extract:
        raise FcvcError(f"{cfg.model}: this captioner cannot compute features of new videos")
    check_extractable(captioner.extraction)
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    if not is_loopback(cfg.host):
        progress.log(f"WARNING: fcvc serve listens on {cfg.host}, reachable from other machines, "
                     + ("with a token (send it over HTTPS only: this server speaks plain HTTP)"
                        if token else "with NO authentication: anyone who reaches it can use it (--token sets one)"))
    service = CaptionService(captioner, cfg.service_settings())
    service.start()
    limits = HttpLimits(max_upload_bytes=int(cfg.max_upload_mb * 2**20), max_files=cfg.max_files,
                        max_queue=cfg.max_queue, token=token, upload_timeout=cfg.upload_timeout)
    app = create_app(service, limits)
    shown = f"[{host}]" if ":" in str(host) else host
    progress.log(f"fcvc serve: http://{shown}:{port}/ ({cfg.model.name}, {captioner.model.config.model}, "
                 f"device {captioner.device}; {service.settings.workers} decoder process(es)); Ctrl-C stops")
    sys.stderr.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level=cfg.log_level, timeout_graceful_shutdown=10,
                                           access_log=cfg.log_level in ("info", "debug")))
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again under the handlers it
    # found: these record it instead of killing the process, so the decoders are stopped and the exit is 0
    stops: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stops.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        service.close()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    how = f" on {signal.Signals(stops[0]).name}" if stops else ""
    progress.log(f"fcvc serve: stopped{how}; {service.served} video(s) answered in {service.batches} batch(es)")
    return {"served_videos": service.served, "batches": service.batches, "url": f"http://{shown}:{port}/"}
