"""``fcvc bench serve``: ``fcvc serve``'s throughput and latency under concurrent clients, batching on and off.

Set up untimed, in a temporary folder (or ``--workdir``, kept): a captioner ``.fcvc`` made as ``bench
caption`` makes it (:func:`~fcvc_pipeline.bench.caption.prepare_captioner`: a seeded random Inception-V3
work directory, an *untrained* FCVC-CF&IA, ``fcvc export``; smaller than that bench's defaults so the whole
run takes a few minutes on a 2-core CPU: 15 frames at ``--frame-size`` 96, d = ``--d-model`` 256), or the
captioner given with ``--model FILE.fcvc``; and ``--videos`` K distinct synthetic videos (``bench extract``'s
``write_videos``: 320x240, ``--video-frames`` 30 frames, H.264) that the requests cycle through. Untrained
weights rarely stop a caption early, so every caption runs to the longest allowed: the slow side of decoding.

Two servers, each ``python -m fcvc_pipeline serve --model M --port 0 ...`` in its own process, with the same
settings (``--workers``, ``--threads``, ``--max-queue``, ``--device``) but one:

- ``batched``: ``--max-batch 16 --batch-wait-ms 20`` (``--max-batch``, ``--batch-wait-ms``);
- ``unbatched``: ``--max-batch 1`` (each video gets its own backbone forward and beam search).

Both are started at once and waited for (``GET /readyz`` 200); then each is sent warm-up requests, untimed:
one alone, then one from each of max(``--clients``) clients at once (a burst before anything is measured;
how large the batches it makes are is up to the server). A failed warm-up request counts as an error.
Only one server is loaded at a time: for each N in ``--clients``
(default 1,4,16) both are measured in turn, the order alternating from one N to the next (a change in a
shared machine's load reaches both sides alike).

One measurement (a server, N): N client threads (``http.client``, one keep-alive connection each) send
``--requests`` R requests in all (default 32), as fast as they can: each a ``POST /v1/captions`` of one
video (multipart, one ``file`` part; the next video in the cycle), with an attention figure as the API
draws by default (after the answer, in the server's figure thread: it costs the server CPU, not the
request's latency; ``--no-figures`` sends ``figure=false``). Each request's latency is from its first byte
sent to its answer read whole. Reported per server and N:

- ``requests_per_s``: R / wall seconds (from the threads' start to the last answer);
- ``latency_p50_s``, ``latency_p95_s`` (linear interpolation between the R latencies), ``latency_max_s``;
- ``errors``: requests not answered 200 (another status, or no answer at all), with ``first_error`` (the
  status and the start of the body). Every figure assumes none: the bench exits 1 when there is any;
- ``mean_batch_size``: the mean of ``batch_size`` in the 200 answers (videos that shared a forward and a
  beam search), and ``server_seconds``: the mean of each of the answers' ``timings``.

``ratios.batched_to_unbatched_throughput`` is ``requests_per_s`` batched / unbatched, for each N; the
headline is at N = 16 (the largest N when 16 is not among them). Near 1 at N = 1 (nothing to batch with;
each video waits ``--batch-wait-ms`` for company that does not come).

Memory of each server process (Linux ``/proc/<pid>/status``; ``null`` elsewhere), in MiB: ``VmRSS`` after
the warm-up, when its timed answers first reach half of its total (len(``--clients``) x R, rounded up;
sampled by the client that reads that answer, while the others carry on) and at the end (all answers read), and its peak ``VmHWM`` at the
end. The decoder processes are its children: the sum of their ``VmRSS`` (every descendant, found through
``/proc/*/stat``) is reported apart, at the same moments. ``rss_growth_mb`` = end - half; ``memory_stable``
is true when it is at most 50 MiB (``--memory-threshold-mb``): reported, never a failure. The attention
figures the server keeps (a store bounded by its ``--max-figures``, 256 by default) are part of that growth,
not a leak: ``figures_growth_mb_estimate`` is the figures stored between the two samples times the size of
one (``figure_png_bytes``, a figure fetched after the warm-up). A batch larger than any before the half
(``largest_batch_at_half``, ``largest_batch_at_end``) may add a little too: its beam search holds every
video of the batch (its backbone forwards do not: they keep ``fcvc extract``'s batch of whole videos).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import click
import numpy as np
import torch

from fcvc_pipeline import progress
from fcvc_pipeline.bench.caption import CaptionBenchConfig, prepare_captioner
from fcvc_pipeline.bench.extract import write_videos
from fcvc_pipeline.commands.common import parse_int_list, run_and_exit
from fcvc_pipeline.errors import EXIT_ITEM_FAILURES, EXIT_OK, FcvcError, require
from fcvc_pipeline.stages.serve import require_serve_extra

MODES = ("batched", "unbatched")
HEADLINE_CLIENTS = 16
MEMORY_THRESHOLD_MB = 50.0
LISTENING = re.compile(r"fcvc serve: (http://\S+/)")
BOUNDARY = "fcvc-bench-serve-4b1d9c"
TIMING_KEYS = ("wait_for_decoder", "decode", "features", "decoding", "figure", "total")


@dataclass(frozen=True)
class ServeBenchConfig:
    clients: tuple[int, ...] = (1, 4, 16)  # concurrent clients, one measurement each
    requests: int = 32  # requests per measurement (each one video)
    videos: int = 8  # distinct videos the requests cycle through
    max_batch: int = 16  # the batched server's --max-batch (the other's is 1)
    batch_wait_ms: float = 20.0
    workers: int | None = None  # the servers' decoder processes (default: fcvc serve's)
    threads: int | None = None  # the servers' torch threads (default: fcvc serve's)
    max_queue: int = 32
    max_figures: int = 256  # the servers' --max-figures (fcvc serve's default)
    figures: bool = True  # ask for the attention figure (the API's default)
    model: Path | None = None  # bench this captioner instead of making one
    video_frames: int = 30
    video_size: tuple[int, int] = (320, 240)  # W, H
    frames: int = 15
    frame_size: int = 96
    d_model: int = 256
    words: int = 64
    device: str = "cpu"
    memory_threshold_mb: float = MEMORY_THRESHOLD_MB
    start_timeout: float = 600.0  # seconds for a server to listen and be ready
    request_timeout: float = 600.0
    workdir: Path | None = None  # where videos and model go (default: a temporary folder, deleted)

    def problems(self) -> list[str]:
        out = []
        if not self.clients or min(self.clients) < 1:
            out.append("--clients must list at least one number, each at least 1")
        if self.requests < 1 or self.videos < 1 or self.video_frames < 1:
            out.append("--requests, --videos and --video-frames must be at least 1")
        if self.max_batch < 2:
            out.append(f"--max-batch must be at least 2 (the batched server's; got {self.max_batch})")
        if self.batch_wait_ms < 0:
            out.append(f"--batch-wait-ms must be >= 0 (got {self.batch_wait_ms:g})")
        if self.workers is not None and self.workers < 1 or self.threads is not None and self.threads < 1:
            out.append("--workers and --threads must be at least 1")
        if self.max_queue < 1 or self.max_figures < 0:
            out.append("--max-queue must be at least 1 and --max-figures at least 0")
        if self.model is None and self.frame_size < 75:
            out.append("--frame-size must be at least 75 (Inception-V3)")
        if self.model is not None and not Path(self.model).is_file():
            out.append(f"--model {self.model}: no such file")
        return out

    def server_args(self, mode: str) -> list[str]:
        """``fcvc serve`` options of one side, all but ``--model`` and ``--port``."""
        batch = ["--max-batch", str(self.max_batch) if mode == "batched" else "1",
                 "--batch-wait-ms", f"{self.batch_wait_ms:g}"]
        out = batch + ["--max-queue", str(self.max_queue), "--max-figures", str(self.max_figures),
                       "--device", self.device]
        if self.workers is not None:
            out += ["--workers", str(self.workers)]
        if self.threads is not None:
            out += ["--threads", str(self.threads)]
        return out


# -- memory, from /proc ---------------------------------------------------------------------------------
def _status_mb(pid: int, key: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from ``/proc/*/stat``; [] without /proc."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the name may hold spaces and parentheses
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def memory_snapshot(pid: int) -> dict[str, Any]:
    """The process's VmRSS and VmHWM, and its descendants' summed VmRSS (MiB; None where unknown)."""
    kids = [(k, _status_mb(k, "VmRSS")) for k in descendants(pid)]
    rss = _status_mb(pid, "VmRSS")
    return {"rss_mb": None if rss is None else round(rss, 1),
            "hwm_mb": None if (hwm := _status_mb(pid, "VmHWM")) is None else round(hwm, 1),
            "children_rss_mb": round(sum(r for _, r in kids if r is not None), 1) if kids else None,
            "children": len(kids)}


# -- the server -------------------------------------------------------------------------------------------
class ServerProcess:
    """``fcvc serve --model MODEL --port 0 ARGS`` in a subprocess; its URL from its stderr."""

    def __init__(self, label: str, model: Path, args: list[str], threads: int | None,
                 env: Mapping[str, str] | None = None):
        self.label = label
        cmd = [sys.executable, "-m", "fcvc_pipeline", "serve", "--model", str(model), "--port", "0", *args]
        env = {**os.environ, "FCVC_PROGRESS": "0", **({"OMP_NUM_THREADS": str(threads)} if threads is not None else {}),
               **(env or {})}
        self.command = cmd
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env, text=True, errors="replace")
        self.lines: list[str] = []
        self.url = ""
        self._listening = threading.Event()
        threading.Thread(target=self._read, name=f"bench-serve-{label}-stderr", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = LISTENING.search(line)
            if m and not self.url:
                self.url = m.group(1)
                self._listening.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 20) -> str:
        return "".join(self.lines[-lines:]).rstrip()

    def _failed(self, what: str) -> FcvcError:
        code = self.proc.poll()
        state = f"exit {code}" if code is not None else "still running"
        return FcvcError(f"the {self.label} server {what} ({state}); its last lines:\n{self.tail()}")

    def wait_listening(self, deadline: float) -> None:
        """Until the server printed its URL (``deadline``: a ``time.monotonic()`` value)."""
        while not self._listening.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise self._failed("did not start listening")

    def wait_ready(self, deadline: float) -> float:
        """Seconds from the start until /readyz answered 200."""
        self.wait_listening(deadline)
        parts = urllib.parse.urlsplit(self.url)
        while True:
            try:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                conn.request("GET", "/readyz")
                status = conn.getresponse().status
                conn.close()
            except (OSError, http.client.HTTPException):
                status = 0
            if status == 200:
                return time.perf_counter() - self.started
            if status == 500 or self.proc.poll() is not None or time.monotonic() > deadline:
                raise self._failed("did not get ready")
            time.sleep(0.1)

    def get(self, path: str) -> tuple[int, bytes]:
        parts = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# -- the clients ----------------------------------------------------------------------------------------
def multipart_body(files: Sequence[tuple[str, bytes]], fields: Mapping[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body: each (file name, bytes) as a ``file`` part, then the fields."""
    out = bytearray()
    for name, data in files:
        out += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: video/mp4\r\n\r\n").encode()
        out += data + b"\r\n"
    for key, value in fields.items():
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={BOUNDARY}"


@dataclass
class RequestRecord:
    seconds: float
    status: int  # 0: no answer (the connection failed)
    error: str | None = None  # the start of a non-200 body, or the exception
    batch_size: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    figure_url: str | None = None


def _post(conn: http.client.HTTPConnection, body: bytes, ctype: str) -> RequestRecord:
    t0 = time.perf_counter()
    conn.request("POST", "/v1/captions", body=body, headers={"Content-Type": ctype})
    response = conn.getresponse()
    raw = response.read()
    seconds = time.perf_counter() - t0
    if response.status != 200:
        return RequestRecord(seconds, response.status, raw[:500].decode("utf-8", "replace"))
    video = json.loads(raw)["videos"][0]
    return RequestRecord(seconds, 200, None, int(video.get("batch_size") or 0), dict(video.get("timings") or {}),
                         video.get("figure_url"))


def run_clients(url: str, bodies: list[tuple[bytes, str]], clients: int, requests: int, start: int, timeout: float,
                on_done: Callable[[RequestRecord], None] | None = None) -> tuple[float, list[RequestRecord]]:
    """``clients`` threads send ``requests`` requests in all, as fast as they can; (wall seconds, records).

    Request i (0-based) sends ``bodies[(start + i) % len(bodies)]``."""
    parts = urllib.parse.urlsplit(url)
    lock = threading.Lock()
    taken = [0]
    records: list[RequestRecord] = []

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            while True:
                with lock:
                    i = taken[0]
                    if i >= requests:
                        return
                    taken[0] += 1
                body, ctype = bodies[(start + i) % len(bodies)]
                t0 = time.perf_counter()
                try:
                    record = _post(conn, body, ctype)
                except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError) as e:
                    record = RequestRecord(time.perf_counter() - t0, 0, f"{type(e).__name__}: {e}")
                    conn.close()  # reconnects on the next request
                with lock:
                    records.append(record)
                if on_done is not None:
                    on_done(record)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, name=f"bench-serve-client-{k}", daemon=True) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, records


def summarize(wall: float, records: list[RequestRecord]) -> dict[str, Any]:
    """One measurement's figures (module docstring)."""
    latencies = np.array([r.seconds for r in records])
    ok = [r for r in records if r.status == 200]
    failed = [r for r in records if r.status != 200]
    timings = {k: [r.timings[k] for r in ok if k in r.timings] for k in TIMING_KEYS}
    return {
        "requests": len(records),
        "seconds": round(wall, 3),
        "requests_per_s": round(len(records) / wall, 3),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 3),
        "latency_max_s": round(float(latencies.max()), 3),
        "errors": len(failed),
        "first_error": None if not failed else f"HTTP {failed[0].status or 'no answer'}: {failed[0].error}",
        "mean_batch_size": round(sum(r.batch_size or 0 for r in ok) / len(ok), 2) if ok else None,
        "server_seconds": {k: round(sum(v) / len(v), 4) for k, v in timings.items() if v},
    }


class _HalfwaySampler:
    """Samples a server's memory when its timed answers first reach ``half``; the largest batch seen before."""

    def __init__(self, pid: int, half: int, largest: int):
        self.pid = pid
        self.half = half
        self.count = 0
        self.snapshot: dict[str, Any] | None = None
        self.largest = largest  # the largest batch_size answered so far
        self.largest_at_half = largest
        self._lock = threading.Lock()

    def __call__(self, record: RequestRecord) -> None:
        with self._lock:
            self.count += 1
            self.largest = max(self.largest, record.batch_size or 0)
            if self.count != self.half:
                return
            self.largest_at_half = self.largest
        self.snapshot = memory_snapshot(self.pid)


# -- the bench ------------------------------------------------------------------------------------------
def _environment(cfg: ServeBenchConfig) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or None,
            "server_threads": cfg.threads, "server_device": cfg.device}


def _prepare(cfg: ServeBenchConfig, root: Path) -> tuple[Path, list[Path]]:
    """(the captioner file, the videos): made as bench caption makes them, or --model and new videos."""
    w, h = cfg.video_size
    if cfg.model is not None:
        write_videos(root / "videos", cfg.videos, cfg.video_frames, h, w)
        return Path(cfg.model), sorted((root / "videos").glob("*.mp4"))
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    videos, _, _, exported = prepare_captioner(
        CaptionBenchConfig(videos=cfg.videos, rounds=1, video_frames=cfg.video_frames, video_size=cfg.video_size,
                           frames=cfg.frames, frame_size=cfg.frame_size, d_model=cfg.d_model, words=cfg.words,
                           device="cpu" if cfg.device == "auto" else cfg.device, threads=cfg.threads), root)
    return exported, videos


def run_serve_bench(cfg: ServeBenchConfig) -> dict[str, Any]:
    require(cfg.problems())
    require_serve_extra()  # exit 2 with the pip line when FastAPI, uvicorn or python-multipart is missing
    started = time.perf_counter()
    root = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="fcvc-bench-serve-"))
    root.mkdir(parents=True, exist_ok=True)
    servers: dict[str, ServerProcess] = {}
    try:
        t0 = time.perf_counter()
        progress.log(f"bench serve: writing {cfg.videos} videos" + ("" if cfg.model else " and a captioner")
                     + f" in {root}")
        model, videos = _prepare(cfg, root)
        setup_seconds = time.perf_counter() - t0
        fields = {} if cfg.figures else {"figure": "false"}
        bodies = [multipart_body([(v.name, v.read_bytes())], fields) for v in videos]

        progress.log("bench serve: starting the batched and the unbatched server")
        for mode in MODES:
            servers[mode] = ServerProcess(mode, model, cfg.server_args(mode), cfg.threads)
        deadline = time.monotonic() + cfg.start_timeout
        ready_seconds = {mode: round(s.wait_ready(deadline), 2) for mode, s in servers.items()}
        described = {mode: json.loads(s.get("/v1/model")[1]) for mode, s in servers.items()}

        top = max(cfg.clients)
        warmup: dict[str, list[RequestRecord]] = {}
        memory: dict[str, dict[str, Any]] = {}
        figure_bytes: dict[str, int | None] = {}
        for mode, server in servers.items():
            progress.log(f"bench serve: {mode}: warm-up (1 request, then {top} at once; untimed)")
            _, first = run_clients(server.url, bodies, 1, 1, 0, cfg.request_timeout)
            _, burst = run_clients(server.url, bodies, top, top, 1, cfg.request_timeout)
            warmup[mode] = first + burst
            memory[mode] = {"after_warmup": memory_snapshot(server.pid)}
            url = next((r.figure_url for r in warmup[mode] if r.figure_url), None)
            status, png = server.get(url) if url else (0, b"")
            figure_bytes[mode] = len(png) if status == 200 else None

        total = len(cfg.clients) * cfg.requests
        samplers = {mode: _HalfwaySampler(s.pid, (total + 1) // 2, max(r.batch_size or 0 for r in warmup[mode]))
                    for mode, s in servers.items()}
        points: dict[str, dict[str, dict[str, Any]]] = {mode: {} for mode in MODES}
        for k, n in enumerate(cfg.clients):
            for mode in (MODES if k % 2 == 0 else MODES[::-1]):
                wall, records = run_clients(servers[mode].url, bodies, n, cfg.requests, k * cfg.requests,
                                            cfg.request_timeout, samplers[mode])
                points[mode][str(n)] = row = summarize(wall, records)
                progress.log(f"bench serve: {mode}, {n} client(s): {row['requests_per_s']:.2f} requests/s, "
                             f"p50 {row['latency_p50_s']:.2f} s, p95 {row['latency_p95_s']:.2f} s, "
                             f"mean batch {row['mean_batch_size']}, errors {row['errors']}")
        modes: dict[str, Any] = {}
        for mode, server in servers.items():
            end = memory_snapshot(server.pid)
            half = samplers[mode].snapshot
            mem = {**memory[mode], "after_half": half, "end": end}
            growth = (None if half is None or half["rss_mb"] is None or end["rss_mb"] is None
                      else round(end["rss_mb"] - half["rss_mb"], 1))
            mem["peak_hwm_mb"] = end["hwm_mb"]
            mem["rss_growth_mb"] = growth
            mem["memory_stable"] = None if growth is None else growth <= cfg.memory_threshold_mb
            limits = described[mode].get("limits", {})
            # the figures the server keeps between the two samples: a bounded store, not a leak
            kept = lambda answered: min(cfg.max_figures, len(warmup[mode]) + answered)  # noqa: E731
            mem["largest_batch_at_half"] = samplers[mode].largest_at_half  # warm-up included
            mem["largest_batch_at_end"] = samplers[mode].largest
            mem["figure_png_bytes"] = figure_bytes[mode]
            mem["figures_growth_mb_estimate"] = (0.0 if not cfg.figures else None if figure_bytes[mode] is None
                                                 else round((kept(total) - kept(samplers[mode].half))
                                                            * figure_bytes[mode] / 2**20, 1))
            modes[mode] = {"server_args": cfg.server_args(mode), "ready_seconds": ready_seconds[mode],
                           "decoder_processes": limits.get("workers"), "max_batch": limits.get("max_batch"),
                           "warmup_errors": sum(1 for r in warmup[mode] if r.status != 200),
                           "clients": points[mode], "memory": mem}
        for mode, server in servers.items():
            modes[mode]["server_exit_code"] = server.stop()
        model_bytes = model.stat().st_size
    finally:
        for server in servers.values():
            server.stop()
        if cfg.workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    ratio = {str(n): round(points["batched"][str(n)]["requests_per_s"] / points["unbatched"][str(n)]["requests_per_s"],
                           3) for n in cfg.clients}
    p50 = {str(n): round(points["batched"][str(n)]["latency_p50_s"] / points["unbatched"][str(n)]["latency_p50_s"], 3)
           for n in cfg.clients}
    headline = HEADLINE_CLIENTS if HEADLINE_CLIENTS in cfg.clients else max(cfg.clients)
    failures = [(f"{mode}, warm-up", r) for mode in MODES for r in warmup[mode] if r.status != 200]
    errors = sum(modes[m]["clients"][str(n)]["errors"] for m in MODES for n in cfg.clients) + len(failures)
    first_error = next((f"{where}: HTTP {r.status or 'no answer'}: {r.error}" for where, r in failures), None)
    if first_error is None:
        first_error = next((f"{m}, {n} client(s): {modes[m]['clients'][str(n)]['first_error']}"
                            for n in cfg.clients for m in MODES if modes[m]["clients"][str(n)]["errors"]), None)
    stable = [modes[m]["memory"]["memory_stable"] for m in MODES]
    return {
        "config": {"clients": list(cfg.clients), "requests": cfg.requests, "videos": cfg.videos,
                   "video": f"{cfg.video_size[0]}x{cfg.video_size[1]}, {cfg.video_frames} frames, H.264",
                   "model": str(cfg.model) if cfg.model else
                   f"untrained, d={cfg.d_model}, {cfg.frames} frames at {cfg.frame_size} px, random Inception-V3",
                   "max_batch": cfg.max_batch, "batch_wait_ms": cfg.batch_wait_ms, "workers": cfg.workers,
                   "threads": cfg.threads, "max_queue": cfg.max_queue, "max_figures": cfg.max_figures,
                   "figures": cfg.figures,
                   "memory_threshold_mb": cfg.memory_threshold_mb},
        "environment": _environment(cfg),
        "setup_seconds": round(setup_seconds, 2),
        "model_file_bytes": model_bytes,
        "modes": modes,
        "ratios": {"batched_to_unbatched_throughput": ratio, "batched_to_unbatched_latency_p50": p50},
        "headline": {"clients": headline, "batched_to_unbatched_throughput": ratio[str(headline)]},
        "errors": errors,
        "first_error": first_error,
        "memory_stable": None if None in stable else all(stable),
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(report: dict[str, Any]) -> str:
    """The report as a few readable lines."""
    cfg = report["config"]
    lines = [f"fcvc bench serve: {cfg['requests']} requests per point, {cfg['videos']} videos ({cfg['video']}); "
             f"{cfg['model']}; {report['environment']['cpus']} CPUs",
             f"{'server':<10} {'clients':>7} {'req/s':>8} {'p50 s':>7} {'p95 s':>7} {'batch':>6} {'errors':>6}"]
    for mode, side in report["modes"].items():
        for n, row in side["clients"].items():
            lines.append(f"{mode:<10} {n:>7} {row['requests_per_s']:>8.2f} {row['latency_p50_s']:>7.2f} "
                         f"{row['latency_p95_s']:>7.2f} {row['mean_batch_size'] or 0:>6.2f} {row['errors']:>6}")
    ratio = report["ratios"]["batched_to_unbatched_throughput"]
    lines.append("throughput batched / unbatched: " + ", ".join(f"{n} client(s) {v:.3f}" for n, v in ratio.items()))
    for mode, side in report["modes"].items():
        m = side["memory"]

        def mb(snap: dict[str, Any] | None, key: str = "rss_mb") -> str:
            return "?" if snap is None or snap.get(key) is None else f"{snap[key]:.0f}"
        lines.append(f"memory {mode}: RSS {mb(m['after_warmup'])} MiB after warm-up, {mb(m['after_half'])} at half, "
                     f"{mb(m['end'])} at the end (growth {m['rss_growth_mb']} MiB, stable: {m['memory_stable']}); "
                     f"peak {mb(m['end'], 'hwm_mb')}; decoders {mb(m['end'], 'children_rss_mb')} MiB")
    lines.append(f"errors: {report['errors']}" + (f" (first: {report['first_error']})" if report["errors"] else ""))
    return "\n".join(lines)


@dataclass
class ServeBenchOutcome:
    """The report, and exit 1 when any request failed (``run_and_exit`` reads ``exit_code``)."""

    report: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return EXIT_ITEM_FAILURES if self.report["errors"] else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return self.report


@click.command("serve")
@click.option("--clients", default="1,4,16", show_default=True, help="Concurrent clients, one measurement each.")
@click.option("--requests", type=int, default=32, show_default=True, help="Requests per measurement (one video each).")
@click.option("--videos", type=int, default=8, show_default=True, help="Distinct videos the requests cycle through.")
@click.option("--max-batch", type=int, default=16, show_default=True, help="The batched server's --max-batch.")
@click.option("--batch-wait-ms", type=float, default=20.0, show_default=True)
@click.option("--workers", type=int, default=None, help="The servers' decoder processes (default: fcvc serve's).")
@click.option("--threads", type=int, default=None, help="The servers' torch threads (default: fcvc serve's).")
@click.option("--max-queue", type=int, default=32, show_default=True)
@click.option("--max-figures", type=int, default=256, show_default=True,
              help="The servers' --max-figures (a small value shows memory staying flat once the store is full).")
@click.option("--figures/--no-figures", default=True, show_default=True,
              help="Ask for the attention figure (the API's default) or send figure=false.")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Bench this captioner (default: an untrained one made as bench caption makes it).")
@click.option("--video-frames", type=int, default=30, show_default=True, help="Frames per synthetic video.")
@click.option("--frames", type=int, default=15, show_default=True, help="Frames per video of the made captioner.")
@click.option("--frame-size", type=int, default=96, show_default=True, help="The made captioner's frame size.")
@click.option("--d-model", type=int, default=256, show_default=True, help="The made captioner's width d.")
@click.option("--device", default="cpu", show_default=True, help="The servers' --device.")
@click.option("--memory-threshold-mb", type=float, default=MEMORY_THRESHOLD_MB, show_default=True,
              help="Largest RSS growth from half to the end still reported as memory_stable.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write videos and model here, kept (default: a temporary folder, deleted).")
@click.option("--json", "json_out", is_flag=True, help="Print the figures as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True)
def bench_serve(clients, requests, videos, max_batch, batch_wait_ms, workers, threads, max_queue, max_figures, figures, model,
                video_frames, frames, frame_size, d_model, device, memory_threshold_mb, workdir, json_out, verbose):
    """fcvc serve under 1..16 concurrent clients, batching on (--max-batch 16) and off (--max-batch 1):
    requests/s, p50/p95 latency, errors, mean batch size, the server's memory. Exit 1 if any request failed."""
    cfg = ServeBenchConfig(clients=parse_int_list(clients, "--clients"), requests=requests, videos=videos,
                           max_batch=max_batch, batch_wait_ms=batch_wait_ms, workers=workers, threads=threads,
                           max_queue=max_queue, max_figures=max_figures, figures=figures, model=model, video_frames=video_frames,
                           frames=frames, frame_size=frame_size, d_model=d_model, device=device,
                           memory_threshold_mb=memory_threshold_mb, workdir=workdir)

    def run() -> ServeBenchOutcome:
        outcome = ServeBenchOutcome(run_serve_bench(cfg))
        if not json_out:
            click.echo(table(outcome.report))
        if outcome.report["errors"]:
            click.echo(f"error: {outcome.report['errors']} request(s) failed; the first: "
                       f"{outcome.report['first_error']}", err=True)
        return outcome

    run_and_exit(run, json_out=json_out, verbose=verbose)
