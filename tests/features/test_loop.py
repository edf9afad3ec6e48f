"""Unit tests of the extraction loop (``features/loop.py``): the real decode pool (one worker process) on a few
tiny real video files, and a fake in place of :class:`~fcvc_pipeline.features.networks.Backbones`.

The fake computes cheap, checkable features: ``pooled`` is the mean colour of a frame (R, G, B repeated to 8
dims) and ``regions`` the mean colour of each quadrant (4 regions), so a test can tell which video's frames
ended up in which group of the store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fcvc_pipeline.features.loop import ExtractionLoop, LoopStats, source_stat, video_status
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.features.video import ClipSpec, DecodePlan, VideoSource
from tests.videos import moving_square_frames, write_text_as_video, write_truncated, write_video

N, S, D, M, C = 3, 16, 8, 4, 5  # frames per video, frame size, feature dim, regions, clip dim
PLAN = DecodePlan(frames=N, frame_size=S)
CLIP_PLAN = DecodePlan(frames=N, frame_size=S, clip=ClipSpec(length=2, stride=1, resize=(12, 12), crop=8))
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


class FakeBar:
    def __init__(self):
        self.updates = 0
        self.postfix = {}

    def update(self, n: int = 1) -> None:
        self.updates += n

    def set_postfix(self, refresh: bool = True, **kwargs) -> None:
        self.postfix.update(kwargs)


class FakeBackbones:
    """What the loop uses of ``Backbones``: ``frames()``, ``clip`` / ``clips()`` and ``precision``."""

    precision = "fake-fp32"

    def __init__(self, *, clip: bool = False, poison: dict[str, float] | None = None):
        self.clip = object() if clip else None
        self.poison = poison or {}  # "red"/"green"/"blue" -> value written into frames of that dominant colour
        self.frame_calls: list[tuple] = []
        self.clip_calls: list[tuple] = []

    def frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.frame_calls.append((frames.dtype, frames.shape))
        x = frames.astype(np.float32) / 255.0
        h = x.shape[1] // 2
        mean = x.mean(axis=(1, 2))  # [B, 3]
        pooled = np.tile(mean, 3)[:, :D]
        quads = [x[:, :h, :h], x[:, :h, h:], x[:, h:, :h], x[:, h:, h:]]
        regions = np.stack([np.tile(q.mean(axis=(1, 2)), 3)[:, :D] for q in quads], axis=1)
        for colour, value in self.poison.items():
            rows = mean.argmax(axis=1) == "rgb".index(colour[0])
            pooled[rows, 0] = value
        return pooled, regions

    def clips(self, clips: np.ndarray) -> np.ndarray:
        self.clip_calls.append((clips.dtype, clips.shape))
        x = clips.astype(np.float32) / 255.0
        return np.concatenate([x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3))[:, :2]], axis=1)  # [B, 5]


def make_loop(store: FeatureStore, backbones, *, plan: DecodePlan = PLAN, batch_size: int = 4, dtype="float16"):
    return ExtractionLoop(store, backbones, plan, workers=1, timeout=60, batch_size=batch_size, clip_batch=2,
                          dtype=dtype, bar=FakeBar(), run_attrs={"device": "cpu", "precision": backbones.precision})


def sources(*paths: Path) -> list[VideoSource]:
    return [VideoSource(p.name.rsplit(".", 1)[0], p) for p in paths]


def colour_of(features: np.ndarray) -> str:
    return "rgb"[int(np.asarray(features, dtype=np.float32)[:, :3].mean(axis=0).argmax())]


def claims_are_free(store: FeatureStore, ids) -> bool:
    out = True
    for vid in ids:
        claim = store.claim(vid)
        out = out and claim is not None
        if claim is not None:
            claim.release()
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    red = write_video(d / "red.mp4", moving_square_frames(6, 32, 48, colour=RED, background=(40, 0, 0), square=20))
    return {
        "red": red,
        "green": write_video(d / "green.mp4", moving_square_frames(9, 32, 48, colour=GREEN, background=(0, 40, 0),
                                                                   square=20)),
        "blue": write_video(d / "blue.mp4", moving_square_frames(4, 32, 48, colour=BLUE, background=(0, 0, 40),
                                                                 square=20)),
        "truncated": write_truncated(red, d / "truncated.mp4", keep=0.4),  # mp4 index at the end: unreadable
        "text": write_text_as_video(d / "text.mp4"),
        "missing": d / "missing.mp4",
    }


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    return FeatureStore.create(tmp_path / "features.zarr", {"frames": N, "dtype": "float16"})


# -- a run ---------------------------------------------------------------------------------------
def test_good_videos_are_written_complete_and_broken_ones_fail_alone(store, videos):
    fake = FakeBackbones(clip=True)
    loop = make_loop(store, fake, plan=CLIP_PLAN, batch_size=4)
    todo = sources(videos["truncated"], videos["red"], videos["text"], videos["green"], videos["missing"],
                   videos["blue"])
    stats = loop.run(todo)

    assert isinstance(stats, LoopStats)
    assert stats.completed == 3 and stats.busy == 0 and stats.late_up_to_date == 0
    assert stats.frames == 3 * N and stats.compute_seconds > 0
    assert loop.bar.updates == len(todo) and loop.bar.postfix == {"failed": 3}
    assert store.completed_ids() == ["blue", "green", "red"]

    # the failures: reported with path and reason, recorded in the store, nothing else lost
    assert set(stats.failed) == {"truncated", "text", "missing"}
    for vid in ("truncated", "text", "missing"):
        path, reason = stats.failed[vid]
        assert path == str(videos[vid]) and reason.startswith("decode: ")
    assert "not a readable video" in stats.failed["truncated"][1]
    assert "not a readable video" in stats.failed["text"][1]
    assert "file not found" in stats.failed["missing"][1]
    failures = store.failures()
    assert set(failures) == set(stats.failed)
    assert failures["truncated"]["path"] == str(videos["truncated"]) and failures["truncated"]["stage"] == "decode"
    assert failures["truncated"]["error"] in stats.failed["truncated"][1]

    # what was written: shapes, dtypes, the right video's features, the provenance attrs
    expected_indices = {"red": [1, 3, 5], "green": [1, 4, 7], "blue": [0, 2, 3]}  # floor((k + 0.5) T / N)
    num_frames = {"red": 6, "green": 9, "blue": 4}
    for vid in ("red", "green", "blue"):
        v = store.read_video(vid)
        assert v.frame_indices.dtype == np.int32 and v.frame_indices.tolist() == expected_indices[vid]
        assert v.frame_features.dtype == np.float16 and v.frame_features.shape == (N, D)
        assert v.region_features.dtype == np.float16 and v.region_features.shape == (N, M, D)
        assert v.clip_features.dtype == np.float16 and v.clip_features.shape == (N, C)
        assert colour_of(v.frame_features) == vid[0]  # rows were not mixed up between videos of one batch
        assert colour_of(v.clip_features) == vid[0]
        a = v.attrs
        assert a["complete"] is True and a["video_id"] == vid and a["source"] == str(videos[vid])
        assert a["num_frames"] == num_frames[vid] and a["fps"] == 25.0
        assert (a["width"], a["height"]) == (48, 32) and a["decoder"] in ("decord", "pyav")
        assert a["device"] == "cpu" and a["precision"] == "fake-fp32"
        assert {k: a[k] for k in ("source_size", "source_mtime_ns")} == source_stat(videos[vid])

    # the backbones saw uint8 frames in batches of at most batch_size, and clips of at most clip_batch
    assert all(dt == np.uint8 and shape[0] <= 4 and shape[1:] == (S, S, 3) for dt, shape in fake.frame_calls)
    assert sum(shape[0] for _, shape in fake.frame_calls) == 3 * N
    assert all(dt == np.uint8 and shape[0] <= 2 and shape[1:] == (2, 8, 8, 3) for dt, shape in fake.clip_calls)

    # afterwards: every claim released, and the status of each video is what a rerun needs
    assert claims_are_free(store, [s.video_id for s in todo])
    for s in todo:
        assert video_status(store, s) == (None if s.video_id in ("red", "green", "blue") else "failed before")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the float16 cast, on purpose
def test_non_finite_features_fail_that_video_only(store, videos):
    # green overflows float16 (finite as float32), blue is NaN; all three share one forward batch
    fake = FakeBackbones(poison={"green": 1e6, "blue": np.nan})
    loop = make_loop(store, fake, batch_size=9)
    stats = loop.run(sources(videos["red"], videos["green"], videos["blue"]))
    assert len(fake.frame_calls) == 1 and fake.frame_calls[0][1][0] == 3 * N
    assert stats.completed == 1 and store.completed_ids() == ["red"]
    assert set(stats.failed) == {"green", "blue"}
    for vid in ("green", "blue"):
        reason = stats.failed[vid][1]
        assert reason.startswith("features: non-finite values") and "frame_features" in reason, reason
        assert "region_features" not in reason and "float16" in reason
        assert store.failures()[vid]["stage"] == "features"
        assert store.video_attrs(vid).get("complete") is False
        with pytest.raises(KeyError):
            store.read_video(vid)
    assert np.isfinite(store.read_video("red").frame_features).all()
    assert claims_are_free(store, ["red", "green", "blue"])


def test_a_rerun_skips_done_videos_waits_for_busy_ones_and_redoes_changed_and_failed_ones(store, videos):
    def write_done(vid: str, **stat_changes) -> None:
        arrays = {"frame_indices": np.zeros(N, np.int32), "frame_features": np.zeros((N, D), np.float32)}
        store.write_video(vid, arrays, {"source": str(videos[vid]), **source_stat(videos[vid]), **stat_changes})

    write_done("red")  # extracted, unchanged: another writer finished it
    write_done("green", source_size=1)  # extracted from a file that has changed since
    store.record_failure("blue", path=str(videos["blue"]), stage="decode", error="earlier trouble")
    red_written = store.video_attrs("red")["written"]
    other_writer = store.claim("text")  # being written by another writer, which finishes it a little later
    assert other_writer is not None

    def finish_elsewhere() -> None:
        write_done("text")
        other_writer.release()

    timer = threading.Timer(1.0, finish_elsewhere)
    timer.start()
    loop = make_loop(store, FakeBackbones())
    stats = loop.run(sources(videos["red"], videos["green"], videos["blue"], videos["text"]))
    timer.join()
    assert (stats.completed, stats.late_up_to_date, stats.busy, stats.taken_over) == (2, 2, 1, 0)
    assert stats.failed == {} and stats.left == [] and stats.stopped_by is None
    assert loop.bar.updates == 4
    assert store.video_attrs("red")["written"] == red_written  # left alone
    assert store.read_video("green").attrs["source_size"] == os.path.getsize(videos["green"])
    assert colour_of(store.read_video("green").frame_features) == "g"
    assert store.is_complete("blue") and store.failures() == {}
    assert not store.read_video("text").frame_features.any()  # the other writer's, not rewritten here


HOLDER = """
import os, sys, time
import numpy as np
from fcvc_pipeline.features.store import FeatureStore
store = FeatureStore.open(sys.argv[1], mode="a")
finished, abandoned, stat = sys.argv[2], sys.argv[3], dict(size=int(sys.argv[4]), mtime=int(sys.argv[5]))
claims = {vid: store.claim(vid) for vid in (finished, abandoned)}
assert all(claims.values()), "the claims should be free"
print("holding", flush=True)
time.sleep(1.5)
store.write_video(finished, {"frame_indices": np.zeros(3, np.int32), "frame_features": np.zeros((3, 8))},
                  {"source": "elsewhere", "source_size": stat["size"], "source_mtime_ns": stat["mtime"]})
claims[finished].release()
time.sleep(1.0)
os.kill(os.getpid(), 9)  # dies holding the other claim: the OS releases it
"""


def test_videos_held_by_a_live_process_are_waited_for_and_taken_over_when_it_dies(store, videos, tmp_path):
    """Another process holds two claims: it finishes one video and dies holding the other. The loop waits
    for both instead of returning; the finished one is left alone, the abandoned one is extracted here."""
    green_stat = source_stat(videos["green"])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.path), "green", "blue",
                               str(green_stat["source_size"]), str(green_stat["source_mtime_ns"])],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        t0 = time.monotonic()
        loop = make_loop(store, FakeBackbones(), batch_size=3)
        stats = loop.run(sources(videos["red"], videos["green"], videos["blue"]))
        waited = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert holder.returncode == -9
    assert waited > 2.0, f"returned after {waited:.1f} s: it did not wait for the holder"
    assert (stats.completed, stats.late_up_to_date, stats.busy, stats.taken_over) == (2, 1, 2, 1)
    assert stats.failed == {} and stats.left == [] and loop.bar.updates == 3
    assert store.completed_ids() == ["blue", "green", "red"]
    assert store.read_video("green").attrs["source"] == "elsewhere"  # the holder's work, kept
    assert colour_of(store.read_video("blue").frame_features) == "b"  # taken over and extracted here
    assert claims_are_free(store, ["red", "green", "blue"])


class SignalDuringForward(FakeBackbones):
    """Sends this process a real signal during the forward of its ``at``-th batch."""

    def __init__(self, sig: int, at: int):
        super().__init__()
        self.sig, self.at = sig, at

    def frames(self, frames):
        if len(self.frame_calls) + 1 == self.at:
            os.kill(os.getpid(), self.sig)
        return super().frames(frames)


@pytest.fixture
def signal_guard():
    """While a test sends this process signals: one that the code under test does not take fails the test
    (instead of stopping pytest)."""

    def escaped(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} reached the test's own handler")

    previous = {sig: signal.signal(sig, escaped) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_writes_what_was_computed_and_leaves_the_rest_untouched(store, videos, sig, signal_guard):
    before = signal.getsignal(sig)
    fake = SignalDuringForward(sig, at=2)
    loop = make_loop(store, fake, batch_size=3)  # one video per forward
    stats = loop.run(sources(videos["red"], videos["green"], videos["blue"]))
    assert signal.getsignal(sig) is before  # the handler is the loop's only while it runs
    assert stats.stopped_by == sig
    assert len(fake.frame_calls) == 2  # the forward under way finished; no further one started
    assert stats.completed == 2 and store.completed_ids() == ["green", "red"]
    assert stats.left == ["blue"] and stats.failed == {}
    assert store.video_attrs("blue") is None  # nothing of it was written
    assert claims_are_free(store, ["red", "green", "blue"])


def failing_writes(store: FeatureStore, monkeypatch) -> None:
    def disk_full(video_id, arrays, attrs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "write_video", disk_full)


def test_a_write_error_stops_the_run(store, videos, monkeypatch):
    failing_writes(store, monkeypatch)
    loop = make_loop(store, FakeBackbones(), batch_size=3)
    with pytest.raises(OSError, match="No space left"):
        loop.run(sources(videos["red"], videos["green"], videos["blue"]))
    assert store.completed_ids() == [] and store.failures() == {}
    assert claims_are_free(store, ["red"])  # the video the writer failed on


class AfterFirstWriteFails(FakeBackbones):
    """Computes the second video only once the writer has failed on the first (no race in the test)."""

    def __init__(self, store: FeatureStore, first: str):
        super().__init__()
        self.store, self.first = store, first

    def frames(self, frames):
        if self.frame_calls:
            deadline = time.monotonic() + 20
            while not claims_are_free(self.store, [self.first]):  # the writer releases it after recording its error
                assert time.monotonic() < deadline, "the writer never got to the first video"
                time.sleep(0.01)
        return super().frames(frames)


def test_every_claim_is_released_after_a_write_error(store, videos, monkeypatch):
    failing_writes(store, monkeypatch)
    loop = make_loop(store, AfterFirstWriteFails(store, "red"), batch_size=3)
    with pytest.raises(OSError, match="No space left"):
        loop.run(sources(videos["red"], videos["green"], videos["blue"]))
    assert claims_are_free(store, ["red", "green", "blue"])


def test_a_video_named_like_zarr_metadata_does_not_stop_the_run(store, videos, tmp_path):
    odd = tmp_path / "zarr.json.mp4"
    odd.write_bytes(videos["red"].read_bytes())
    stats = make_loop(store, FakeBackbones(), batch_size=3).run(sources(odd, videos["green"]))
    assert "green" in store.completed_ids()
    assert stats.completed + len(stats.failed) == 2


# -- video_status ----------------------------------------------------------------------------------
def test_video_status_says_why_a_video_must_be_extracted(store, tmp_path, videos):
    path = tmp_path / "clip.mp4"
    path.write_bytes(videos["red"].read_bytes())
    src = VideoSource("clip", path)
    assert video_status(store, src) == "new"

    store.write_video("clip", {"frame_indices": np.zeros(N, np.int32), "frame_features": np.zeros((N, D))},
                      {"source": str(path), **source_stat(path)})
    assert video_status(store, src) is None  # up to date

    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert video_status(store, src) == "changed on disk"  # touched
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert video_status(store, src) is None  # back as it was
    with open(path, "ab") as f:
        f.write(b"\0")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert video_status(store, src) == "changed on disk"  # same mtime, another size

    path.unlink()
    assert video_status(store, src) is None  # gone since: the features stay valid

    store.record_failure("clip", path=str(path), stage="decode", error="boom")
    assert video_status(store, src) == "failed before"
    store.discard_video("clip")
    assert video_status(store, src) == "new"

    # a writer killed after the arrays, before the final ``complete: true``
    store.write_video("clip", {"frame_indices": np.zeros(N, np.int32)}, {"source": str(path)})
    meta = store.path / "videos" / "clip" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["complete"] = False
    meta.write_text(json.dumps(doc))
    assert video_status(store, src) == "interrupted before"


def test_source_stat(tmp_path):
    p = tmp_path / "v.mp4"
    p.write_bytes(b"12345")
    st = os.stat(p)
    assert source_stat(p) == {"source_size": 5, "source_mtime_ns": st.st_mtime_ns}
    assert source_stat(tmp_path / "missing.mp4") is None
