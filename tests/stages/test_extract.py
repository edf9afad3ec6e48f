"""``fcvc extract`` end to end on tiny synthetic videos: store layout, caching, bad inputs, kill -9 and
resume, concurrent writers, ``extract_like``, and one full-size (15 x 299 x 299, C3D 16 x 112 x 112) run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fcvc_pipeline.cli import main
from fcvc_pipeline.errors import ConfigError, InputError, MismatchError
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.features.video import DECODE_THREADS_ENV
from fcvc_pipeline.stages.extract import ExtractConfig, extract_like, run_extract
from tests.videos import (
    has_encoder,
    moving_square_frames,
    random_frames,
    write_audio_only,
    write_text_as_video,
    write_truncated,
    write_video,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
           (255, 255, 255), (128, 64, 0), (0, 128, 64), (64, 0, 128)]
TINY = dict(frames=3, frame_size=75, inception_weights="random", c3d_weights="none", workers=1, batch_size=6,
            calibration_frames=6)
TINY_CLI = ["--frames", "3", "--frame-size", "75", "--inception-weights", "random", "--c3d-weights", "none",
            "--workers", "1", "--batch-size", "6", "--calibration-frames", "6"]


def make_corpus(folder: Path, n: int, *, frames: int = 8, height: int = 48, width: int = 64) -> list[Path]:
    return [write_video(folder / f"clip{i:02d}.mp4",
                        moving_square_frames(frames + i % 3, height, width, colour=COLOURS[i % len(COLOURS)]))
            for i in range(n)]


def cfg(inputs, store: Path, **overrides) -> ExtractConfig:
    return ExtractConfig(inputs=tuple(Path(p) for p in inputs), store=store, **{**TINY, **overrides})


def read_all(store_path: Path) -> dict[str, dict[str, np.ndarray]]:
    store = FeatureStore.open(store_path)
    out = {}
    for vid in store.completed_ids():
        v = store.read_video(vid)
        out[vid] = {"frame_indices": v.frame_indices, "frame_features": v.frame_features,
                    "region_features": v.region_features}
    return out


def cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FCVC_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-m", "fcvc_pipeline", "extract", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


# -- the store -----------------------------------------------------------------------------------
def test_store_layout_settings_and_records(tmp_path):
    make_corpus(tmp_path / "v", 3)
    result = run_extract(cfg([tmp_path / "v"], tmp_path / "f.zarr"))
    assert result.exit_code == 0 and result.completed == 3 and result.failed == {}
    doc = result.to_json()
    assert set(doc) >= {"store", "completed", "up_to_date", "failed", "seconds"}

    store = FeatureStore.open(tmp_path / "f.zarr")
    s = store.settings
    assert s["frames"] == 3 and s["frame_size"] == 75 and s["dtype"] == "float16"
    assert s["inception"]["weights"] == "random:0" and s["clip"] is None
    assert s["frame_dim"] == 2048 and s["region_grid"] == [1, 1] and s["num_regions"] == 1 and s["clip_dim"] == 0
    assert store.completed_ids() == ["clip00", "clip01", "clip02"]
    v = store.read_video("clip01")
    assert v.frame_indices.dtype == np.int32 and v.frame_indices.tolist() == [1, 4, 7]  # T = 9
    assert v.frame_features.shape == (3, 2048) and v.frame_features.dtype == np.float16
    assert v.region_features.shape == (3, 1, 2048) and v.clip_features is None
    assert np.isfinite(v.frame_features).all() and np.isfinite(v.region_features).all()
    assert 0.01 < float(np.abs(v.frame_features.astype(np.float32)).mean()) < 100
    assert v.attrs["source"].endswith("clip01.mp4") and v.attrs["num_frames"] == 9 and v.attrs["decoder"] == "decord"
    rec = store.backbone_records()["inception"]
    assert rec["kind"] == "random" and rec["seed"] == 0 and rec["calibration"]["frames"] == 6
    assert len(store.get_blob(rec["bn_blob"])) > 1000


def test_rerun_is_up_to_date_adds_new_and_redoes_changed_videos(tmp_path):
    paths = make_corpus(tmp_path / "v", 3)
    store_path = tmp_path / "f.zarr"
    run_extract(cfg([tmp_path / "v"], store_path))
    written = {vid: FeatureStore.open(store_path).video_attrs(vid)["written"] for vid in ("clip00", "clip01", "clip02")}

    again = run_extract(cfg([tmp_path / "v"], store_path))
    assert (again.completed, again.up_to_date, again.failed) == (0, 3, {})
    store = FeatureStore.open(store_path)
    assert {vid: store.video_attrs(vid)["written"] for vid in written} == written  # nothing recomputed

    write_video(tmp_path / "v" / "zz_new.mp4", moving_square_frames(5, 32, 48))
    write_video(paths[1], moving_square_frames(12, 32, 48, colour=(9, 9, 9)))  # changed on disk
    more = run_extract(cfg([tmp_path / "v"], store_path))
    assert (more.completed, more.up_to_date) == (2, 2)
    store = FeatureStore.open(store_path)
    assert store.video_attrs("clip00")["written"] == written["clip00"]
    assert store.video_attrs("clip01")["num_frames"] == 12
    assert "zz_new" in store.completed_ids()


def test_other_settings_are_refused_and_force_rebuilds(tmp_path):
    make_corpus(tmp_path / "v", 2)
    store_path = tmp_path / "f.zarr"
    run_extract(cfg([tmp_path / "v"], store_path))
    with pytest.raises(MismatchError) as e:
        run_extract(cfg([tmp_path / "v"], store_path, frames=2))
    assert "frames" in str(e.value) and "--force" in str(e.value)
    rebuilt = run_extract(cfg([tmp_path / "v"], store_path, frames=2, force=True))
    assert rebuilt.completed == 2
    assert FeatureStore.open(store_path).read_video("clip00").frame_features.shape == (2, 2048)


def test_every_config_problem_is_reported_at_once(tmp_path):
    bad = ExtractConfig(inputs=(tmp_path / "missing",), frames=0, frame_size=50, inception_weights="random:x",
                        clip_model="i3d", device="gpu", batch_size=0, shard="3/2", dtype="int8")
    with pytest.raises(ConfigError) as e:
        bad.check()
    text = str(e.value)
    for word in ("--frames", "--frame-size", "random:", "--clip-model", "--device", "--batch-size", "--shard",
                 "--dtype", "missing"):
        assert word in text, word


def test_shards_split_the_sorted_inputs_and_follow_torchrun(tmp_path, monkeypatch):
    make_corpus(tmp_path / "v", 5)
    parts = [ExtractConfig(inputs=(tmp_path / "v",), shard=f"{i}/2", **{**TINY, "c3d_weights": "none"}).check().mine()
             for i in range(2)]
    assert [v.video_id for v in parts[0]] == ["clip00", "clip02", "clip04"]
    assert [v.video_id for v in parts[1]] == ["clip01", "clip03"]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert ExtractConfig(inputs=(tmp_path / "v",), **TINY).check().mine() == parts[1]
    with pytest.raises(ConfigError) as e:
        ExtractConfig(inputs=(tmp_path / "v",), force=True, **TINY).check()
    assert "--force" in str(e.value)


def test_c3d_default_without_weights_names_the_options(tmp_path, monkeypatch):
    monkeypatch.setenv("FCVC_C3D_WEIGHTS", str(tmp_path / "no_c3d.pickle"))
    make_corpus(tmp_path / "v", 1)
    with pytest.raises(ConfigError) as e:
        ExtractConfig(inputs=(tmp_path / "v",), inception_weights="random").check()
    text = str(e.value)
    assert "no_c3d.pickle" in text and "does not exist" in text
    # where the file comes from (fcvc cannot fetch it) and what runs without it
    assert "DavideA/c3d-pytorch" in text and "download the file yourself" in text and "Sports-1M" in text
    assert "--c3d-weights none" in text and "--c3d-weights random" in text and "--c3d-weights PATH" in text


def test_no_videos_found_is_an_error_that_creates_nothing(tmp_path):
    """A folder without videos used to make a store that fixed the settings, refusing the corrected run."""
    empty, work = tmp_path / "videos", tmp_path / "work"
    (empty / "notes").mkdir(parents=True)
    (empty / "notes" / "readme.txt").write_text("no videos here\n")
    (empty / ".hidden.mp4").write_bytes(b"")
    out = CliRunner().invoke(main, ["extract", str(empty), "--workdir", str(work), "--json", *TINY_CLI])
    assert out.exit_code == 2, out.output
    assert json.loads(out.stdout)["exit_code"] == 2
    assert f"{empty}: no videos found" in out.stderr and ".mp4" in out.stderr and ".mkv" in out.stderr
    assert "internal error" not in out.stderr
    assert not work.exists()  # no work directory, no store

    work.mkdir()
    (tmp_path / "list.txt").write_text("# an empty list\n")
    out = CliRunner().invoke(main, ["extract", str(empty), str(tmp_path / "list.txt"), "--workdir", str(work),
                                    *TINY_CLI])
    assert out.exit_code == 2 and "list.txt: no videos found" in out.stderr and str(empty) in out.stderr
    assert os.listdir(work) == []

    make_corpus(empty, 2)  # the corrected run, with other settings, is not refused
    fixed = CliRunner().invoke(main, ["extract", str(empty), "--workdir", str(work), "--json", *TINY_CLI,
                                      "--frames", "2"])
    assert fixed.exit_code == 0, fixed.output
    assert json.loads(fixed.stdout)["completed"] == 2
    assert FeatureStore.open(work / "features.zarr").settings["frames"] == 2


def test_into_a_log_extraction_and_batchnorm_reestimation_report_progress_lines(tmp_path):
    """stderr a pipe (nohup, SLURM, CI): plain progress lines, the failures counted, BatchNorm included."""
    make_corpus(tmp_path / "v", 3)
    write_text_as_video(tmp_path / "v" / "broken.mp4")
    env = {k: v for k, v in os.environ.items() if k != "FCVC_PROGRESS"}
    done = subprocess.run([sys.executable, "-m", "fcvc_pipeline", "extract", str(tmp_path / "v"),
                           "--store", str(tmp_path / "f.zarr"), *TINY_CLI],
                          env={**env, "OMP_NUM_THREADS": "1", "FCVC_PROGRESS_INTERVAL": "0"},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # one video failed
    lines = done.stderr.splitlines()
    assert "\r" not in done.stderr
    assert "inception BatchNorm: 0/6 frames (0%)" in lines
    assert any(line.startswith("inception BatchNorm: 6/6 frames (100%) in ") for line in lines), lines
    assert "extract: 0/4 videos (0%)" in lines
    middle = [line for line in lines if line.startswith("extract: ") and " after " in line]
    assert middle and all(" video/s" in line or " s/video" in line for line in middle), lines
    assert all("ETA " in line for line in middle), lines
    final = [line for line in lines if line.startswith("extract: 4/4 videos (100%) in ")]
    assert len(final) == 1 and final[0].endswith("failed=1"), lines


def test_non_finite_features_fail_loudly_and_write_nothing(tmp_path, monkeypatch):
    from fcvc_pipeline.features import networks as extract_backbones

    make_corpus(tmp_path / "v", 2)
    real = extract_backbones.Backbones.frames

    def poisoned(self, frames):
        pooled, regions = real(self, frames)
        pooled[0, 0] = np.inf  # the first frame of each batch
        return pooled, regions

    monkeypatch.setattr(extract_backbones.Backbones, "frames", poisoned)
    result = run_extract(cfg([tmp_path / "v"], tmp_path / "f.zarr", batch_size=3))  # one video per batch
    assert result.completed == 0 and set(result.failed) == {"clip00", "clip01"}
    assert all("non-finite" in r for r in result.failed.values())
    store = FeatureStore.open(tmp_path / "f.zarr")
    assert store.completed_ids() == [] and set(store.failures()) == {"clip00", "clip01"}


# -- bad inputs ----------------------------------------------------------------------------------
def test_bad_inputs_fail_per_file_and_every_good_file_is_extracted(tmp_path):
    d = tmp_path / "mixed"
    good = {
        "plain": write_video(d / "plain.mp4", moving_square_frames(6, 32, 48)),
        "one frame": write_video(d / "one frame.mp4", moving_square_frames(1, 32, 32)),
        "three": write_video(d / "three.mp4", moving_square_frames(3, 32, 32)),
        "tiny": write_video(d / "tiny.mkv", moving_square_frames(4, 32, 32)),
        "hd": write_video(d / "hd.mp4", random_frames(2, 1080, 1920)),
        "odd": write_video(d / "odd.mp4", moving_square_frames(4, 33, 47)),
        "vertical": write_video(d / "vertical.mp4", moving_square_frames(4, 96, 48)),
        "vp9": write_video(d / "vp9.webm", moving_square_frames(4, 32, 48), codec="libvpx-vp9"),
        "vidéo ñ 日本": write_video(d / "sub dir" / "vidéo ñ 日本.mp4", moving_square_frames(4, 32, 48)),
        "truncated_fs": write_truncated(write_video(tmp_path / "full.mp4", moving_square_frames(30, 32, 48),
                                                    faststart=True), d / "truncated_fs.mp4", keep=0.6),
    }
    if has_encoder("libsvtav1"):
            good["av1"] = write_video(d / "av1.mp4", moving_square_frames(4, 64, 64), codec="libsvtav1")
    bad = {"empty": "empty file", "text": "not a readable video", "truncated": "not a readable video",
           "audio": "no video stream", "folder": "is a directory", "dangling": "dangling symbolic link"}
    (d / "empty.mp4").write_bytes(b"")
    write_text_as_video(d / "text.mp4")
    write_truncated(good["plain"], d / "truncated.mp4", keep=0.4)
    write_audio_only(d / "audio.mp4")
    (d / "folder.mp4").mkdir()
    os.symlink(tmp_path / "nowhere.mp4", d / "dangling.mp4")

    store_path = tmp_path / "f.zarr"
    out = CliRunner().invoke(main, ["extract", str(d), "--store", str(store_path), "--json", *TINY_CLI])
    assert out.exit_code == 1, out.output
    doc = json.loads(out.stdout)
    assert doc["completed"] == len(good) and doc["store"] == str(store_path)
    assert set(doc["failed"]) == set(bad)
    for vid, words in bad.items():
        assert words in doc["failed"][vid], (vid, doc["failed"][vid])
    for vid in bad:
        assert f"{vid}" in out.stderr  # the closing summary names each failed file
    store = FeatureStore.open(store_path)
    assert sorted(store.completed_ids()) == sorted(good)
    assert set(store.failures()) == set(bad)
    assert store.failures()["audio"]["path"].endswith("audio.mp4")
    if "av1" in good:
        assert store.read_video("av1").attrs["decoder"] == "pyav"
    assert store.read_video("one frame").frame_indices.tolist() == [0, 0, 0]

    # a rerun retries only the failures and leaves the good ones alone
    again = CliRunner().invoke(main, ["extract", str(d), "--store", str(store_path), "--json", *TINY_CLI])
    doc2 = json.loads(again.stdout)
    assert doc2["completed"] == 0 and doc2["up_to_date"] == len(good) and set(doc2["failed"]) == set(bad)


# -- interruption and concurrency ---------------------------------------------------------------
def _assert_complete_means_whole(store_path: Path, frames: int) -> list[str]:
    store = FeatureStore.open(store_path)
    done = store.completed_ids()
    for vid in done:
        v = store.read_video(vid)
        assert v.frame_features.shape == (frames, 2048) and np.isfinite(v.frame_features).all()
        assert v.region_features.shape[0] == frames
    return done


@pytest.mark.slow
def test_kill_minus_9_then_rerun_completes(tmp_path):
    make_corpus(tmp_path / "v", 10)
    store_path = tmp_path / "f.zarr"
    args = [str(tmp_path / "v"), "--store", str(store_path), *TINY_CLI, "--frame-size", "139", "--batch-size", "3"]
    proc = cli(args)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (store_path / "videos").is_dir() and FeatureStore.open(store_path).completed_ids():
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    before = _assert_complete_means_whole(store_path, 3)
    assert len(before) < 10, "the run finished before it could be killed; the test proves nothing"

    proc = cli(args + ["--json"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["completed"] == 10 - len(before) and doc["up_to_date"] == len(before)
    assert len(_assert_complete_means_whole(store_path, 3)) == 10


@pytest.mark.slow
def test_two_concurrent_writers_equal_a_single_process_run(tmp_path):
    make_corpus(tmp_path / "v", 8)
    common = [str(tmp_path / "v"), *TINY_CLI, "--json"]
    single = cli(common + ["--store", str(tmp_path / "single.zarr")])
    assert single.wait(timeout=300) == 0, single.stderr.read()

    results = {}
    for name, extra in (("sharded", [["--shard", "0/2"], ["--shard", "1/2"]]), ("unsharded", [[], []])):
        store = tmp_path / f"{name}.zarr"
        procs = [cli(common + ["--store", str(store), *e]) for e in extra]
        docs = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            docs.append(json.loads(out))
        results[name] = docs
    assert [d["completed"] for d in results["sharded"]] == [4, 4]
    unsharded = results["unsharded"]
    assert sum(d["completed"] for d in unsharded) == 8  # each video written exactly once

    ref = read_all(tmp_path / "single.zarr")
    ref_hash = FeatureStore.open(tmp_path / "single.zarr").backbone_records()["inception"]["state_sha256"]
    for name in ("sharded", "unsharded"):
        got = read_all(tmp_path / f"{name}.zarr")
        assert sorted(got) == sorted(ref) and len(got) == 8
        assert FeatureStore.open(tmp_path / f"{name}.zarr").backbone_records()["inception"]["state_sha256"] == ref_hash
        for vid in ref:
            for key in ref[vid]:
                np.testing.assert_allclose(got[vid][key].astype(np.float32), ref[vid][key].astype(np.float32),
                                           rtol=2e-3, atol=2e-3, err_msg=f"{name} {vid} {key}")


def _held_elsewhere(store: FeatureStore, vid: str) -> bool:
    """True when another process holds the claim of ``vid`` (probing takes it for an instant if it is free)."""
    claim = store.claim(vid)
    if claim is None:
        return True
    claim.release()
    return False


def _wait_for_first_complete(proc: subprocess.Popen, store_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (store_path / "videos").is_dir() and FeatureStore.open(store_path).completed_ids():
            return
        time.sleep(0.02)
    raise AssertionError(f"no video was complete within {timeout:g} s (exit code {proc.poll()})")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_keeps_finished_videos_says_so_and_a_rerun_extracts_only_the_rest(tmp_path, sig):
    """What a cluster scheduler (SIGTERM) or Ctrl-C (SIGINT) does: the signal reaches the whole process group,
    decode workers included. The run stops soon, writes nothing half, says what was kept; exit 128 + signal."""
    make_corpus(tmp_path / "v", 8)
    store_path = tmp_path / "f.zarr"
    ids = [f"clip{i:02d}" for i in range(8)]
    args = [str(tmp_path / "v"), "--store", str(store_path), *TINY_CLI, "--frame-size", "139", "--batch-size", "3"]
    proc = cli(args, start_new_session=True)  # its own process group, like a job's
    try:
        _wait_for_first_complete(proc, store_path)
        sent = time.monotonic()
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
        stop_seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    name = signal.Signals(sig).name
    print(f"{name}: exit {proc.returncode} {stop_seconds:.2f} s after the signal")
    assert proc.returncode == 128 + sig, err
    before = _assert_complete_means_whole(store_path, 3)
    assert 1 <= len(before) < 8, "the run finished before it could be stopped; the test proves nothing"
    assert f"{name}: extraction stopped; this run extracted {len(before)} video" in err, err
    assert f"{len(before)} of the 8 videos are complete in {store_path}, {8 - len(before)} left" in err, err
    assert "rerun the same `fcvc extract` command to continue" in err, err
    assert stop_seconds < 30, f"stopping took {stop_seconds:.1f} s"
    store = FeatureStore.open(store_path)
    for vid in ids:  # each video is complete or absent: nothing half-written, no failure recorded
        attrs = store.video_attrs(vid)
        assert attrs is None or attrs.get("complete") is True, (vid, attrs)
    assert not any(_held_elsewhere(store, vid) for vid in ids)  # every claim was released
    written = {vid: store.video_attrs(vid)["written"] for vid in before}

    again = cli(args + ["--json"])
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    doc = json.loads(out)
    assert (doc["completed"], doc["up_to_date"], doc["failed"]) == (8 - len(before), len(before), {})
    assert len(_assert_complete_means_whole(store_path, 3)) == 8
    store = FeatureStore.open(store_path)
    assert {vid: store.video_attrs(vid)["written"] for vid in before} == written  # kept, not redone


@pytest.mark.slow
def test_a_stop_signal_while_the_networks_are_prepared_says_so(tmp_path):
    make_corpus(tmp_path / "v", 8)
    store_path = tmp_path / "f.zarr"
    # full-size frames and 64 calibration frames: preparing the random network takes a while
    args = [str(tmp_path / "v"), "--store", str(store_path), *TINY_CLI, "--frame-size", "299",
            "--calibration-frames", "64"]
    proc = cli(args)
    deadline = time.monotonic() + 120
    while not FeatureStore.exists(store_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM: extraction stopped; this run extracted 0 videos, 0 of the 8 videos are complete" in err, err
    assert "rerun the same `fcvc extract` command" in err
    assert FeatureStore.open(store_path).completed_ids() == []


@pytest.mark.slow
def test_a_survivor_takes_over_the_videos_a_killed_writer_held_and_exits_0_with_all_complete(tmp_path):
    """Two unsharded writers into one store. The first is frozen (SIGSTOP) while it holds claims of unfinished
    videos, so the second finds them busy; then the first is killed (SIGKILL). The second must not report
    success for an incomplete store: it waits, takes the freed videos over, and exits 0 with all complete."""
    make_corpus(tmp_path / "v", 8)
    store_path = tmp_path / "f.zarr"
    ids = [f"clip{i:02d}" for i in range(8)]
    args = [str(tmp_path / "v"), "--store", str(store_path), *TINY_CLI, "--frame-size", "139", "--batch-size", "3",
            "--json"]
    victim = cli(args)
    survivor = None
    try:
        deadline = time.monotonic() + 120
        held: list[str] = []
        while not held:
            assert time.monotonic() < deadline and victim.poll() is None, "the first writer never held a claim"
            time.sleep(0.05)
            if not (store_path / "videos").is_dir():
                continue
            victim.send_signal(signal.SIGSTOP)
            store = FeatureStore.open(store_path)
            held = [vid for vid in ids if not store.is_complete(vid) and _held_elsewhere(store, vid)]
            if not held:
                victim.send_signal(signal.SIGCONT)
        done_by_victim = FeatureStore.open(store_path).completed_ids()

        survivor = cli(args)
        others = [vid for vid in ids if vid not in held]
        while not all(FeatureStore.open(store_path).is_complete(vid) for vid in others):
            assert time.monotonic() < deadline + 120 and survivor.poll() is None, survivor.communicate()[1]
            time.sleep(0.1)
        time.sleep(1.0)
        assert survivor.poll() is None, "the survivor ended while another process still held videos"
        assert not any(FeatureStore.open(store_path).is_complete(vid) for vid in held)
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
        out, err = survivor.communicate(timeout=300)
    finally:
        for p in (victim, survivor):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    assert survivor.returncode == 0, err
    doc = json.loads(out)
    assert doc["taken_over"] == len(held) and doc["waited_for"] >= len(held), doc
    assert doc["in_progress_elsewhere"] == 0 and doc["left"] == [] and doc["failed"] == {}
    assert doc["completed"] == 8 - len(done_by_victim), doc
    assert "waiting for" in err and "taking over" in err and all(vid in err for vid in held), err
    assert sorted(_assert_complete_means_whole(store_path, 3)) == ids


def test_a_weights_file_that_does_not_load_leaves_no_store_to_block_the_retry(tmp_path):
    """A weights file that fails to load stops the run before the store records it as a setting, so the
    corrected rerun (other weights) needs no --force."""
    make_corpus(tmp_path / "v", 2)
    text = tmp_path / "inception.pt"
    text.write_text("these are not weights\n")
    other_layout = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, other_layout)
    cases = [(dict(inception_weights=str(text)), text, "cannot load as a PyTorch state dict"),
             (dict(inception_weights=str(other_layout)), other_layout, "torchvision Inception-V3 layout"),
             (dict(c3d_weights=str(text)), text, "cannot load as a PyTorch state dict")]
    for k, (options, path, words) in enumerate(cases):
        store_path = tmp_path / f"f{k}.zarr"
        with pytest.raises(InputError) as e:
            run_extract(cfg([tmp_path / "v"], store_path, **options))
        assert str(path) in str(e.value) and words in str(e.value), str(e.value)
        assert not FeatureStore.exists(store_path), options
        fixed = run_extract(cfg([tmp_path / "v"], store_path))  # random weights, no --force
        assert fixed.exit_code == 0 and fixed.completed == 2


# -- extract_like: the same networks for new videos ----------------------------------------------
def test_extract_like_rebuilds_the_exact_networks(tmp_path):
    paths = make_corpus(tmp_path / "v", 3)
    ref_path = tmp_path / "ref.zarr"
    run_extract(cfg([tmp_path / "v"], ref_path))
    single = tmp_path / "new" / "clip01.mp4"
    single.parent.mkdir()
    single.write_bytes(paths[1].read_bytes())
    out = extract_like(ref_path, [single], tmp_path / "one.zarr", device="cpu", workers=1)
    assert out.completed == 1
    ref, new = FeatureStore.open(ref_path), FeatureStore.open(tmp_path / "one.zarr")
    assert new.settings == ref.settings
    assert new.backbone_records()["inception"]["state_sha256"] == ref.backbone_records()["inception"]["state_sha256"]
    a, b = ref.read_video("clip01"), new.read_video("clip01")
    np.testing.assert_allclose(b.frame_features.astype(np.float32), a.frame_features.astype(np.float32),
                               rtol=2e-3, atol=2e-3)

    # a store with the same settings but networks calibrated on another corpus is not extended
    make_corpus(tmp_path / "other", 2, frames=5, height=64, width=64)
    run_extract(cfg([tmp_path / "other"], tmp_path / "other.zarr"))
    with pytest.raises(MismatchError) as e:
        extract_like(ref_path, [single], tmp_path / "other.zarr", device="cpu", workers=1)
    assert "another inception network" in str(e.value)


def test_extract_like_refuses_a_changed_weights_file(tmp_path):
    import torch
    from torchvision.models import inception_v3

    make_corpus(tmp_path / "v", 1)
    weights = tmp_path / "inception.pth"
    torch.manual_seed(1)
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    ref_path = tmp_path / "ref.zarr"
    result = run_extract(cfg([tmp_path / "v"], ref_path, inception_weights=str(weights)))
    assert result.completed == 1
    s = FeatureStore.open(ref_path).settings
    assert s["inception"]["weights"].startswith("sha256:")
    assert FeatureStore.open(ref_path).backbone_records()["inception"]["path"] == str(weights.resolve())

    torch.manual_seed(2)
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    with pytest.raises(MismatchError) as e:
        extract_like(ref_path, [tmp_path / "v"], tmp_path / "out.zarr", device="cpu", workers=1)
    assert "inception.pth" in str(e.value) and "changed" in str(e.value)


# -- the full-size path --------------------------------------------------------------------------
@pytest.mark.slow
def test_full_size_inception_and_c3d_on_one_short_video(tmp_path):
    write_video(tmp_path / "v" / "short.mp4", random_frames(20, 120, 160, seed=3))
    full = run_extract(cfg([tmp_path / "v"], tmp_path / "full.zarr", frames=15, frame_size=299, batch_size=15,
                           calibration_frames=15))
    assert full.completed == 1
    store = FeatureStore.open(tmp_path / "full.zarr")
    assert store.settings["region_grid"] == [8, 8] and store.settings["num_regions"] == 64
    v = store.read_video("short")
    assert v.frame_features.shape == (15, 2048) and v.region_features.shape == (15, 64, 2048)
    assert np.isfinite(v.region_features).all()
    np.testing.assert_allclose(v.frame_features.astype(np.float32),
                               v.region_features.astype(np.float32).mean(axis=1), rtol=1e-2, atol=1e-2)

    # C3D at its real input (16 frames of 112x112) on a few clips
    clips = run_extract(cfg([tmp_path / "v"], tmp_path / "c3d.zarr", frames=2, c3d_weights="random"))
    assert clips.completed == 1
    store = FeatureStore.open(tmp_path / "c3d.zarr")
    assert store.settings["clip"]["model"] == "c3d" and store.settings["clip_dim"] == 4096
    c = store.read_video("short").clip_features
    assert c.shape == (2, 4096) and c.dtype == np.float16 and np.isfinite(c).all() and (c >= 0).all()


def test_random_weights_with_no_decodable_video_say_why(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "empty.mp4").write_bytes(b"")
    write_text_as_video(tmp_path / "v" / "text.mp4")
    with pytest.raises(ConfigError) as e:
        run_extract(cfg([tmp_path / "v"], tmp_path / "f.zarr"))
    assert "could not be decoded" in str(e.value) and "empty file" in str(e.value)


@pytest.mark.slow
def test_bench_extract_prints_side_by_side_figures(monkeypatch):
    monkeypatch.setenv(DECODE_THREADS_ENV, "1")  # the bench sets it for its run: monkeypatch restores it after
    out = CliRunner().invoke(main, ["bench", "extract", "--json", "--videos", "2", "--c3d-videos", "0",
                                    "--frames", "2", "--frame-size", "75", "--video-frames", "10",
                                    "--workers", "1", "--decode-threads", "2"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["decode_threads"] == 2
    fig = doc["frames_only"]
    assert fig["videos"] == 2 and fig["frames"] == 4 and fig["bare_frames_per_s"] > 0 and fig["ratio"] > 0
    assert 0 < fig["e2e_compute_share"] <= 1 and "frames_and_c3d" not in doc
    modes = fig["modes"]
    assert list(modes) == ["fp32_contiguous", "fp32_channels_last", "bf16_channels_last"]
    assert modes["fp32_contiguous"]["e2e_speedup"] == 1.0 and modes["fp32_contiguous"]["agreement"]["pooled"]["max_rel_diff"] == 0
    assert modes["fp32_channels_last"]["agreement"]["regions"]["cosine_mean"] > 0.9999
    assert all(m["e2e_frames_per_s"] > 0 and m["bare_frames_per_s"] > 0 for m in modes.values())
