"""Listing inputs, sampling, decoding (decord + PyAV fallback) and the decode worker pool."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from fcvc_pipeline.errors import ConfigError
from fcvc_pipeline.features.decode_pool import DecodePool
from fcvc_pipeline.features.video import (
    DECODE_THREADS_ENV,
    ClipSpec,
    DecodeError,
    DecodePlan,
    VideoSource,
    clip_windows,
    decode_video,
    list_videos,
    list_videos_in_order,
    sample_indices,
    unique_ids,
)
from tests.videos import (
    frame_number,
    has_encoder,
    moving_square_frames,
    numbered_frames,
    write_audio_only,
    write_text_as_video,
    write_truncated,
    write_video,
)

C3D_CLIP = ClipSpec(length=16, stride=1, resize=(128, 171), crop=112)


# -- sampling ------------------------------------------------------------------------------------
def test_sample_indices_are_segment_centres():
    assert sample_indices(30, 5).tolist() == [3, 9, 15, 21, 27]
    assert sample_indices(15, 15).tolist() == list(range(15))
    idx = sample_indices(1000, 15)
    assert len(set(idx.tolist())) == 15 and idx.min() >= 0 and idx.max() < 1000


def test_short_videos_repeat_frames_in_order():
    assert sample_indices(1, 4).tolist() == [0, 0, 0, 0]
    assert sample_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    idx = sample_indices(3, 15)
    assert sorted(idx.tolist()) == idx.tolist() and set(idx.tolist()) == {0, 1, 2}


def test_clip_windows_are_centred_and_clamped():
    w = clip_windows(np.array([0, 10, 19]), 20, length=16, stride=1)
    assert w.shape == (3, 16)
    assert w[1].tolist() == list(range(2, 18))  # 10 - 8 .. 10 + 7
    assert w[0].min() == 0 and w[2].max() == 19
    # stride 5, L=4: offsets -10, -5, 0, 5 around 5 -> -5 (clamped to 0), 0, 5, 10
    assert clip_windows(np.array([5]), 100, length=4, stride=5)[0].tolist() == [0, 0, 5, 10]


# -- listing -------------------------------------------------------------------------------------
def test_list_videos_walks_folders_lists_and_odd_names(tmp_path):
    clip = write_video(tmp_path / "src" / "a.mp4", moving_square_frames(2, 32, 32))
    (tmp_path / "src" / "deep" / "er").mkdir(parents=True)
    write_video(tmp_path / "src" / "deep" / "er" / "b clip ü.webm", moving_square_frames(2, 32, 32), codec="libvpx-vp9")
    (tmp_path / "src" / "notes.txt").write_text("not a list given on the command line")
    (tmp_path / "src" / ".hidden.mp4").write_bytes(b"x")
    (tmp_path / "src" / "folder.mp4").mkdir()
    os.symlink(tmp_path / "gone.mp4", tmp_path / "src" / "dangling.mp4")
    listing = tmp_path / "more" / "list.txt"
    listing.parent.mkdir()
    extra = write_video(tmp_path / "more" / "c.avi", moving_square_frames(2, 32, 32), codec="mpeg4")
    listing.write_text(f"# comment\n\nc.avi\n{clip}\n")  # relative to the list; a.mp4 again (deduplicated)
    found = list_videos([tmp_path / "src", listing])
    ids = [v.video_id for v in found]
    assert ids == sorted(ids)
    assert set(ids) == {"a", "b clip ü", "folder", "dangling", "c"}
    assert {v.video_id: v.path for v in found}["c"] == extra


def test_duplicate_ids_and_missing_inputs_are_reported_together(tmp_path):
    write_video(tmp_path / "x" / "same.mp4", moving_square_frames(2, 32, 32))
    write_video(tmp_path / "y" / "same.mkv", moving_square_frames(2, 32, 32))
    with pytest.raises(ConfigError) as e:
        list_videos([tmp_path / "x", tmp_path / "y", tmp_path / "nope"])
    text = str(e.value)
    assert "'same'" in text and str(tmp_path / "x" / "same.mp4") in text and str(tmp_path / "y" / "same.mkv") in text
    assert "nope" in text and "no such file" in text


def test_captioning_lists_inputs_in_the_order_given_with_unique_ids(tmp_path):
    make = lambda rel: write_video(tmp_path / rel, moving_square_frames(2, 32, 32))  # noqa: E731
    z, a_clip, b_clip, deep = make("z.mp4"), make("a/clip.mp4"), make("b/clip.mp4"), make("d/e/f.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("z.mp4\nb/clip.mp4\n")  # a list file keeps its order
    found = list_videos_in_order([deep, tmp_path / "b", a_clip, listing, z])
    assert [(v.video_id, v.path) for v in found] == [("f", deep), ("b/clip", b_clip), ("a/clip", a_clip),
                                                      ("z", tmp_path / "z.mp4")]  # each file once, first place
    assert [v.video_id for v in list_videos_in_order([tmp_path / "list.txt", tmp_path / "a"])] == ["z", "b/clip",
                                                                                                   "a/clip"]
    with pytest.raises(ConfigError, match="nope.mp4: no such file"):
        list_videos_in_order([z, tmp_path / "nope.mp4"])
    with pytest.raises(ConfigError, match="two inputs have the video id 'clip'"):
        list_videos([a_clip, b_clip])  # a feature store keys videos by id: extraction still refuses


def test_unique_ids_use_the_fewest_parent_folders_that_tell_files_apart():
    ids = lambda *paths: unique_ids([Path(p) for p in paths])  # noqa: E731
    assert ids("/v/a/clip.mp4", "/v/b/clip.mp4", "/v/other.mp4") == ["a/clip", "b/clip", "other"]
    assert ids("/x/a/clip.mp4", "/y/a/clip.mp4", "/v/b/clip.mp4") == ["x/a/clip", "y/a/clip", "b/clip"]
    assert ids("/a/clip.mp4", "/a/clip.mkv") == ["clip.mp4", "clip.mkv"]  # one folder: the extension tells
    assert ids("/a/clip.mp4", "/a/clip.mkv", "/b/clip.mp4") == ["a/clip.mp4", "clip.mkv", "b/clip.mp4"]
    assert ids("/clip.mp4", "/a/clip.mp4") == ["clip", "a/clip"]
    # a stem that looks like another file's id: both fall back to their full paths
    assert ids("/a/clip.mp4", "/a/clip.mkv", "/q/clip.mp4.avi") == ["/a/clip.mp4", "clip.mkv", "/q/clip.mp4.avi"]
    assert ids("/p/one.mp4", "/p/two.mp4") == ["one", "two"]


# -- decoding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_decoders_pick_the_sampled_frames(tmp_path, decoder):
    path = write_video(tmp_path / "n.mp4", numbered_frames(20, 32, 32), options={"crf": "0"})
    v = decode_video(path, DecodePlan(frames=5, frame_size=75, decoder=decoder))
    assert v.decoder == decoder and v.num_frames == 20
    assert v.frames.shape == (5, 75, 75, 3) and v.frames.dtype == np.uint8
    assert v.frame_indices.tolist() == [2, 6, 10, 14, 18]
    assert [frame_number(f) for f in v.frames] == v.frame_indices.tolist()
    assert v.clip_frames is None and v.clip_index is None


def test_clip_frames_follow_the_windows(tmp_path):
    path = write_video(tmp_path / "n.mp4", numbered_frames(24, 32, 48), options={"crf": "0"})
    v = decode_video(path, DecodePlan(frames=3, frame_size=75, clip=C3D_CLIP))
    assert v.clip_frames.shape[1:] == (112, 112, 3) and v.clip_index.shape == (3, 16)
    expected = clip_windows(v.frame_indices, 24, 16)
    got = np.vectorize(lambda r: frame_number(v.clip_frames[r]))(v.clip_index)
    assert (got == expected).all()


@pytest.mark.skipif(not has_encoder("libsvtav1"), reason="this FFmpeg build has no AV1 encoder (libsvtav1)")
def test_pyav_fallback_on_a_file_decord_refuses(tmp_path):
    path = write_video(tmp_path / "av1.mp4", moving_square_frames(8, 64, 64), codec="libsvtav1")
    v = decode_video(path, DecodePlan(frames=4, frame_size=75))
    assert v.decoder == "pyav" and v.num_frames == 8
    assert "decord" in v.fallback_reason
    with pytest.raises(DecodeError):
        decode_video(path, DecodePlan(frames=4, frame_size=75, decoder="decord"))


def test_truncated_file_samples_the_frames_that_decode(tmp_path):
    full = write_video(tmp_path / "full.mp4", moving_square_frames(40, 48, 64), faststart=True)
    cut = write_truncated(full, tmp_path / "cut.mp4", keep=0.5)
    v = decode_video(cut, DecodePlan(frames=5, frame_size=75))
    assert v.decoder == "pyav" and 0 < v.num_frames < 40
    assert v.frame_indices.max() < v.num_frames


def test_tiny_short_odd_and_vertical_videos(tmp_path):
    cases = {"one": (1, 32, 32), "three": (3, 32, 32), "odd": (4, 33, 47), "vertical": (4, 96, 48)}
    for name, (t, h, w) in cases.items():
        path = write_video(tmp_path / f"{name}.mp4", moving_square_frames(t, h, w))
        v = decode_video(path, DecodePlan(frames=6, frame_size=75))
        assert v.num_frames == t and (v.height, v.width) == (h, w), name
        assert v.frames.shape == (6, 75, 75, 3)
        assert v.frame_indices.tolist() == sample_indices(t, 6).tolist()


def test_bad_files_fail_with_a_reason(tmp_path):
    good = write_video(tmp_path / "good.mp4", moving_square_frames(6, 32, 32))
    (tmp_path / "empty.mp4").write_bytes(b"")
    write_text_as_video(tmp_path / "text.mp4")
    write_truncated(good, tmp_path / "trunc.mp4", keep=0.3)  # index at the end: cut off
    write_audio_only(tmp_path / "audio.mp4")
    (tmp_path / "dir.mp4").mkdir()
    os.symlink(tmp_path / "missing.mp4", tmp_path / "dangling.mp4")
    expect = {"empty": "empty file", "text": "not a readable video", "trunc": "not a readable video",
              "audio": "no video stream", "dir": "is a directory", "dangling": "dangling symbolic link"}
    for name, words in expect.items():
        with pytest.raises(DecodeError) as e:
            decode_video(tmp_path / f"{name}.mp4", DecodePlan(frames=3, frame_size=75))
        assert words in str(e.value), (name, str(e.value))
        assert "\n" not in str(e.value)


# -- the worker pool -----------------------------------------------------------------------------
def misbehaving_decode(path, plan, on_stage=None):
    """A decoder that hangs on '*hang*', dies on '*crash*' and hangs in 'decord' only on '*flaky*'."""
    name = Path(path).name
    if "flaky" in name and plan.decoder == "auto":
        on_stage("decord")
        time.sleep(60)
    if "hang" in name:
        on_stage("pyav")
        time.sleep(60)
    if "crash" in name:
        os.kill(os.getpid(), signal.SIGKILL)
    return decode_video(path, plan, on_stage=on_stage)


def test_pool_survives_hangs_and_crashes(tmp_path):
    frames = moving_square_frames(4, 32, 32)
    names = ["a", "hang", "b", "crash", "flaky", "c"]
    sources = [VideoSource(n, write_video(tmp_path / f"{n}.mp4", frames)) for n in names]
    pool = DecodePool(DecodePlan(frames=2, frame_size=75), workers=2, timeout=3.0,
                      decode_fn="tests.features.test_video:misbehaving_decode")
    t0 = time.monotonic()
    outcomes = {o.item.video_id: o for o in pool.imap(sources)}
    assert time.monotonic() - t0 < 30
    assert set(outcomes) == set(names)
    for n in ("a", "b", "c", "flaky"):
        assert outcomes[n].video is not None and outcomes[n].video.frames.shape == (2, 75, 75, 3), n
    assert outcomes["flaky"].video.decoder == "pyav"  # retried with PyAV after decord hung
    assert "timed out after 3 s" in outcomes["hang"].error and "pyav" in outcomes["hang"].error
    assert "crashed (SIGKILL)" in outcomes["crash"].error


def threads_reporting_decode(path, plan, on_stage=None):
    """Reports, as its error, the thread settings a decode worker runs under: the math libraries' variables
    and what PyAV's stream is given."""
    from fcvc_pipeline.features.video import _open_pyav

    container, stream = _open_pyav(Path(path))
    try:
        pyav = stream.thread_count
    finally:
        container.close()
    raise DecodeError(" ".join([os.environ.get("OMP_NUM_THREADS", "-"), os.environ.get("MKL_NUM_THREADS", "-"),
                                os.environ.get("OPENBLAS_NUM_THREADS", "-"), str(pyav)]))


@pytest.mark.parametrize("setting, expected", [(None, "1 1 1 1"), ("3", "3 3 3 3")])
def test_decode_workers_use_their_share_of_the_threads(tmp_path, monkeypatch, setting, expected):
    path = write_video(tmp_path / "a.mp4", moving_square_frames(3, 32, 32))
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # the parent's own setting does not reach the workers
    if setting is None:
        monkeypatch.delenv(DECODE_THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(DECODE_THREADS_ENV, setting)
    pool = DecodePool(DecodePlan(frames=1, frame_size=75), workers=1, timeout=30,
                      decode_fn="tests.features.test_video:threads_reporting_decode")
    (outcome,) = list(pool.imap([VideoSource("a", path)]))
    assert outcome.error == expected


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_a_bad_decode_thread_setting_fails_before_any_worker(monkeypatch, bad):
    monkeypatch.setenv(DECODE_THREADS_ENV, bad)
    with pytest.raises(ConfigError, match=DECODE_THREADS_ENV):
        DecodePool(DecodePlan(frames=1, frame_size=75), workers=1)


def test_pool_consumer_can_stop_early(tmp_path):
    frames = moving_square_frames(3, 32, 32)
    sources = [VideoSource(str(i), write_video(tmp_path / f"{i}.mp4", frames)) for i in range(6)]
    pool = DecodePool(DecodePlan(frames=1, frame_size=75), workers=2, timeout=10)
    it = pool.imap(sources)
    first = next(it)
    assert first.video is not None
    it.close()  # workers are stopped, nothing hangs
