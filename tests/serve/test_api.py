"""``fcvc serve``'s API through a real uvicorn server in a subprocess, real videos and real bad files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from fcvc_pipeline import Captioner
from tests.serve.server import Server, multipart

pytestmark = pytest.mark.timeout(300)


def write_audio_only(path: Path) -> Path:
    """One second of a 440 Hz tone in an MP4 with no video stream."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=22050)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)).astype(np.float32)[None, :]
        for start in range(0, tone.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp",
                                               layout="mono")
            frame.sample_rate = 22050
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def uploads_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def server(tiny_captioner, uploads_dir):
    """One server for the tests that do not need special options; its temporary folder is ``uploads_dir``."""
    model, _ = tiny_captioner
    with Server(model, "--max-upload-mb", "1", "--max-files", "3", "--batch-wait-ms", "300", "--workers", "2",
                env={"TMPDIR": str(uploads_dir)}) as s:
        yield s


@pytest.fixture(scope="module")
def reference(tiny_captioner):
    """Captions of the sample videos by ``Captioner.caption`` in this process, one video per call."""
    model, videos = tiny_captioner
    captioner = Captioner.load(model, device="cpu")
    return {v.name: captioner.caption([v])[0] for v in videos}, captioner


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def wait_empty(folder: Path, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while leftovers(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    return leftovers(folder)


def test_health_readiness_and_model_description(server, tiny_captioner):
    model, _ = tiny_captioner
    assert server.get("/healthz")[0] == 200
    status, _, body = server.get("/readyz")
    assert status == 200 and json.loads(body) == {"ready": True}
    status, _, body = server.get("/v1/model")
    info = json.loads(body)
    assert status == 200
    assert info["model"] == model.name and info["variant"] == "fcvc-cf-ia"
    assert info["vocabulary_size"] > 10 and info["num_frames"] == 4
    assert info["extraction"]["frame_size"] == 75 and info["backbones"]["inception"]["weights"] == "random:0"
    assert info["decoding"]["beam_size"] == 5
    status, _, body = server.get("/openapi.json")
    assert status == 200 and "/v1/captions" in json.loads(body)["paths"]
    status, headers, body = server.get("/")
    assert status == 200 and b"<title>fcvc" in body
    assert "default-src 'none'" in headers["content-security-policy"]  # the page loads nothing from elsewhere


def test_a_video_gets_the_caption_the_python_api_gives(server, tiny_captioner, reference, uploads_dir):
    _, videos = tiny_captioner
    captions, _ = reference
    video = videos[0]
    status, body = server.post_videos([(video.name, video.read_bytes())])
    assert status == 200, body
    [v] = body["videos"]
    want = captions[video.name]
    assert v["name"] == video.name and v["error"] is None
    assert v["caption"] == want.text and v["words"] == want.words
    assert v["score"] == pytest.approx(want.score, abs=1e-4)
    attention = np.asarray(v["frame_attention"])
    assert attention.shape == (len(want.words), 4)
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=2e-3)
    assert {"decode", "features", "decoding", "total"} <= set(v["timings"])
    assert body["decoding"]["beam_size"] == 5
    status, headers, png = server.get(v["figure_url"])
    assert status == 200 and headers["content-type"] == "image/png" and png.startswith(b"\x89PNG\r\n\x1a\n")
    assert wait_empty(uploads_dir) == []


def test_decoding_options_come_from_form_fields(server, tiny_captioner, reference):
    _, videos = tiny_captioner
    _, captioner = reference
    video = videos[1]
    want = captioner.caption([video], beam_size=1, max_len=3)[0]
    status, body = server.post_videos([(video.name, video.read_bytes())],
                                      {"beam_size": "1", "max_len": "3", "figure": "false"})
    assert status == 200, body
    [v] = body["videos"]
    assert v["caption"] == want.text and len(v["words"]) <= 3
    assert v["figure_url"] is None and body["decoding"]["beam_size"] == 1
    for fields, message in (({"beam_size": "0"}, "beam_size must be at least 1"),
                            ({"beam_size": "five"}, "beam_size must be a number"),
                            ({"colour": "red"}, "unknown form field 'colour'")):
        status, body = server.post_videos([(video.name, video.read_bytes())], fields)
        assert status == 422 and message in body["error"], body


def test_concurrent_requests_share_a_batch_and_keep_their_captions(server, tiny_captioner, reference):
    _, videos = tiny_captioner
    captions, _ = reference
    results: dict[str, tuple[int, dict]] = {}

    def one(video: Path) -> None:
        results[video.name] = server.post_videos([(video.name, video.read_bytes())])

    threads = [threading.Thread(target=one, args=(v,)) for v in videos[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sizes = []
    for name, (status, body) in results.items():
        assert status == 200, body
        [v] = body["videos"]
        assert v["caption"] == captions[name].text, name
        sizes.append(v["batch_size"])
    assert max(sizes) >= 2, f"no two of four concurrent videos shared a batch (batch sizes {sizes})"


def test_bad_files_fail_alone_with_the_decoders_reason(server, tiny_captioner, reference, tmp_path, uploads_dir):
    _, videos = tiny_captioner
    captions, _ = reference
    good = videos[2]
    cases = [("empty.mp4", b"", "the upload is empty"),
             ("notes.mp4", b"these are my notes, not a video\n" * 20, "not a readable video file"),
             ("cut.mp4", good.read_bytes()[:len(good.read_bytes()) // 2], "not a readable video file"),
             ("tone.mp4", write_audio_only(tmp_path / "tone.mp4").read_bytes(), "no video stream")]
    for name, data, reason in cases:
        status, body = server.post_videos([(name, data)])
        assert status == 422, (name, body)
        [v] = body["videos"]
        assert v["caption"] is None and reason in v["error"], (name, v)
        assert body["error"] == "1 of 1 videos could not be captioned"
    # in one request with a good video: the good one is still captioned
    status, body = server.post_videos([("notes.mp4", b"not a video"), (good.name, good.read_bytes())])
    assert status == 422
    bad, ok = body["videos"]
    assert bad["error"] and ok["error"] is None and ok["caption"] == captions[good.name].text
    assert wait_empty(uploads_dir) == []


def test_hostile_file_names_are_shown_never_used_as_paths(server, tiny_captioner, reference, uploads_dir):
    _, videos = tiny_captioner
    captions, _ = reference
    video = videos[3]
    names = ["../../../../tmp/fcvc-escaped.mp4", "$(touch pwned)`id`; rm -rf ~.mp4", "a\tb\x1bc.mp4"]
    status, body = server.post_videos([(n, video.read_bytes()) for n in names])
    assert status == 200, body
    shown = [v["name"] for v in body["videos"]]
    assert shown == ["../../../../tmp/fcvc-escaped.mp4", "$(touch pwned)`id`; rm -rf ~.mp4", "abc.mp4"]
    assert all(v["caption"] == captions[video.name].text for v in body["videos"])
    assert not Path("/tmp/fcvc-escaped.mp4").exists() and not (uploads_dir.parent / "fcvc-escaped.mp4").exists()
    assert not Path("pwned").exists()
    assert wait_empty(uploads_dir) == []


def raw_request(server: Server, head: str, body: bytes = b"", *, read: bool = True) -> tuple[socket.socket, bytes]:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head.encode() + body)
    answer = b""
    if read:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return sock, answer


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (headers, then Content-Length bytes of body), however the packets split it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_an_upload_over_the_limit_is_refused_while_it_streams(server, uploads_dir):
    # declared too large: refused from the header, before a byte of the body is sent
    head = ("POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {50 * 2**20}\r\nConnection: close\r\n\r\n")
    sock, answer = raw_request(server, head)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"over the limit of 1 MB" in answer, answer[:300]
    # chunked, no length: refused once the streamed bytes pass 1 MB, long before the 64 MB we would send
    head = ("POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    sock, _ = raw_request(server, head, read=False)
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n'
    sent = 0
    chunk = os.urandom(64 * 1024)
    try:
        sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        while sent < 64 * 2**20:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(30)
    answer = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    assert sent < 64 * 2**20, "the server read 64 MB without refusing"
    assert answer.startswith(b"HTTP/1.1 413") and b"over the limit of 1 MB" in answer, answer[:300]
    assert wait_empty(uploads_dir) == []


def test_too_many_files_in_one_request(server, tiny_captioner):
    _, videos = tiny_captioner
    status, body = server.post_videos([(f"v{i}.mp4", videos[0].read_bytes()) for i in range(4)])
    assert status == 413 and "too many files in one request (at most 3" in body["error"]


def test_not_a_form_and_no_file(server):
    status, _, raw = server.request("POST", "/v1/captions", b'{"video": "x"}', {"Content-Type": "application/json"})
    assert status == 415 and "multipart/form-data" in json.loads(raw)["error"]
    body, ctype = multipart([], {"beam_size": "2"})
    status, _, raw = server.request("POST", "/v1/captions", body, {"Content-Type": ctype})
    assert status == 400 and "no video in the request" in json.loads(raw)["error"]
    cut = body[:-10]
    status, _, raw = server.request("POST", "/v1/captions", cut, {"Content-Type": ctype})
    assert status == 400 and "closing boundary" in json.loads(raw)["error"]
    status, _, raw = server.get("/v1/figures/nothing-here.png")
    assert status == 404 and "no figure" in json.loads(raw)["error"]


def test_a_client_that_goes_away_mid_upload_costs_nothing(server, tiny_captioner, reference, uploads_dir):
    _, videos = tiny_captioner
    captions, _ = reference
    body, ctype = multipart([(videos[0].name, videos[0].read_bytes())])
    head = (f"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    for _ in range(3):
        sock, _ = raw_request(server, head, body[:len(body) // 2], read=False)
        time.sleep(0.3)
        sock.close()
    assert wait_empty(uploads_dir) == []
    status, answer = server.post_videos([(videos[0].name, videos[0].read_bytes())])
    assert status == 200 and answer["videos"][0]["caption"] == captions[videos[0].name].text


def test_a_full_queue_answers_503_with_retry_after(tiny_captioner, uploads_dir):
    model, videos = tiny_captioner
    with Server(model, "--max-queue", "1", "--upload-timeout", "3", env={"TMPDIR": str(uploads_dir)}) as s:
        body, ctype = multipart([(videos[0].name, videos[0].read_bytes())])
        head = (f"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        stalled, _ = raw_request(s, head, body[:100], read=False)  # in flight until we send the rest
        time.sleep(0.5)
        status, headers, raw = s.request("POST", "/v1/captions", body, {"Content-Type": ctype})
        assert status == 503 and headers["retry-after"] == "2" and "busy" in json.loads(raw)["error"]
        stalled.sendall(body[100:])
        answer = b""
        while b'"videos"' not in answer or not answer.rstrip().endswith(b"}"):
            chunk = stalled.recv(65536)
            if not chunk:
                break
            answer += chunk
        stalled.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        status, _ = s.post_videos([(videos[0].name, videos[0].read_bytes())])
        assert status == 200
        # a client that stalls holds its place for --upload-timeout seconds only
        stalled, _ = raw_request(s, head, body[:100], read=False)
        time.sleep(0.5)
        assert s.request("POST", "/v1/captions", body, {"Content-Type": ctype})[0] == 503
        t0 = time.monotonic()
        answer = read_response(stalled)
        stalled.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"no data for 3 s" in answer, answer[:200]
        assert 1.5 < time.monotonic() - t0 < 10
        status, _ = s.post_videos([(videos[0].name, videos[0].read_bytes())])
        assert status == 200
    assert wait_empty(uploads_dir) == []


def test_a_token_guards_the_api_and_figures_expire(tiny_captioner, uploads_dir):
    model, videos = tiny_captioner
    token = "sekrit-token-123"
    with Server(model, "--max-figures", "1", "--figure-ttl", "3", env={"FCVC_SERVE_TOKEN": token}) as s:
        auth = {"Authorization": f"Bearer {token}"}
        assert s.get("/healthz")[0] == 200 and s.get("/")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {token}"}):
            status, h, raw = s.get("/v1/model", headers)
            assert status == 401 and h["www-authenticate"] == "Bearer" and "needs a token" in json.loads(raw)["error"]
        body, ctype = multipart([(videos[0].name, videos[0].read_bytes())])
        status, _, _ = s.request("POST", "/v1/captions", body, {"Content-Type": ctype})
        assert status == 401
        assert s.get("/v1/model", auth)[0] == 200
        urls = []
        for video in videos[:2]:
            status, answer = s.post_videos([(video.name, video.read_bytes())], headers=auth)
            assert status == 200
            urls.append(answer["videos"][0]["figure_url"])
        assert s.get(urls[1])[0] == 401
        assert s.get(urls[0], auth)[0] == 404  # only the latest figure is kept
        assert s.get(urls[1], auth)[0] == 200
        time.sleep(3.2)
        assert s.get(urls[1], auth)[0] == 404  # and for 3 s


def test_listening_beyond_loopback_warns(tiny_captioner):
    model, _ = tiny_captioner
    with Server(model, "--host", "0.0.0.0", ready=False) as s:
        assert "NO authentication" in s.stderr()
    with Server(model, "--host", "0.0.0.0", "--token", "long-enough-token", ready=False) as s:
        assert "with a token" in s.stderr() and "NO authentication" not in s.stderr()
    with Server(model, ready=False) as s:
        assert "WARNING" not in s.stderr()


def fcvc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fcvc_pipeline", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_bad_model_files_and_busy_ports_are_clear_errors(tiny_captioner, tmp_path):
    model, _ = tiny_captioner
    junk = tmp_path / "junk.fcvc"
    junk.write_bytes(b"not a captioner" * 10)
    r = fcvc("serve", "--model", str(junk), "--port", "0")
    assert r.returncode == 2 and str(junk) in r.stderr and "http://" not in r.stderr
    r = fcvc("serve", "--model", str(tmp_path / "missing.fcvc"), "--port", "0")
    assert r.returncode == 2 and "missing.fcvc" in r.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = fcvc("serve", "--model", str(model), "--port", str(port))
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr
    r = fcvc("serve", "--model", str(model), "--max-batch", "0", "--workers", "0")
    assert r.returncode == 2 and "--max-batch must be at least 1" in r.stderr and "--workers must be" in r.stderr


def test_sigterm_stops_the_server_and_its_decoders(tiny_captioner, tmp_path):
    model, videos = tiny_captioner
    with Server(model, "--workers", "2") as s:
        status, _ = s.post_videos([(videos[0].name, videos[0].read_bytes())])
        assert status == 200
        children = [c for task in Path(f"/proc/{s.proc.pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
        assert len(children) == 2  # the decoder processes (started by the feed thread)
        assert s.stop(signal.SIGTERM) == 0
        assert "stopped on SIGTERM; 1 video(s) answered" in s.stderr()
    time.sleep(0.5)
    assert [c for c in children if Path(f"/proc/{c}").exists() and "zombie" not in _state(c)] == []


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "gone"
