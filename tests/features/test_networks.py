"""The feature networks' precision and layout: ``--precision auto|fp32|bf16`` resolved per device,
channels-last fp32 equal to the old contiguous fp32 path, bf16 close to it and recorded per video, and
the recorded networks (calibration, state hash) the same whatever the precision."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fcvc_pipeline.devices import CPU_BF16_ENV, cpu_has_bf16, resolve_precision
from fcvc_pipeline.errors import ConfigError
from fcvc_pipeline.features.backbones import (
    CLIP_MODELS,
    InceptionFeatures,
    build_clip_model,
    build_inception_v3,
    calibrate_batchnorm,
    preprocess_frames,
)
from fcvc_pipeline.features.networks import Backbones
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.stages.extract import run_extract
from tests.stages.test_extract import cfg, make_corpus
from tests.videos import random_frames

CPU = torch.device("cpu")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the reference's largest magnitude."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of the feature vectors (last axis)."""
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())


def test_auto_is_bf16_on_cuda_and_on_cpus_with_bf16_units(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert cpu_has_bf16() and resolve_precision("auto", CPU, cpu_bf16_by_default=True) == "bf16"
    assert resolve_precision("auto", CPU) == "bf16"  # extraction's default (devices.py has the quality guard)
    assert resolve_precision("auto", "cpu", cpu_bf16_by_default=False) == "fp32"
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert not cpu_has_bf16() and resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"  # no GPU needed to resolve it
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ConfigError) as e:
        resolve_precision("fp16", CPU)
    assert "--precision" in str(e.value)

    net = InceptionFeatures(build_inception_v3(seed=0))
    assert Backbones(net, None, None, CPU).precision == "fp32"  # auto, no bf16 units
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert Backbones(net, None, None, CPU).precision == "bf16-autocast"  # auto on a CPU with bf16 units
    assert Backbones(net, None, None, CPU, precision="bf16").precision == "bf16-autocast"  # CUDA's string
    assert Backbones(net, None, None, CPU, precision="fp32").precision == "fp32"


@pytest.fixture(scope="module")
def calibrated():
    """A random Inception-V3 with re-estimated BatchNorm statistics (raw, its activations vanish)."""
    net = InceptionFeatures(build_inception_v3(seed=3))
    x = preprocess_frames(torch.from_numpy(random_frames(8, 107, 107, seed=1)))
    calibrate_batchnorm(net, [x[:4], x[4:]])
    return net


def test_channels_last_fp32_equals_contiguous_and_bf16_stays_close(calibrated, one_thread):
    """A random Inception-V3 with re-estimated BatchNorm is chaotic: it amplifies rounding differences some
    500x through its depth (trained weights do not: 2e-8 in fp32 and 3e-3 in bf16 were measured with the
    ImageNet weights). So fp32 channels-last agrees with the old contiguous path to a few 1e-5 here, and bf16
    moves its features by tens of percent (cosine ~0.95): bounds for this network, not for trained ones."""
    frames = random_frames(4, 107, 107, seed=2)
    old = Backbones(copy.deepcopy(calibrated), None, None, CPU, precision="fp32", channels_last=False)
    new = Backbones(copy.deepcopy(calibrated), None, None, CPU, precision="fp32")
    bf16 = Backbones(copy.deepcopy(calibrated), None, None, CPU, precision="bf16")
    assert new.frame_inputs(frames).is_contiguous(memory_format=torch.channels_last)
    conv = next(m for m in new.inception.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    ref_pooled, ref_regions = old.frames(frames)
    pooled, regions = new.frames(frames)
    assert pooled.dtype == regions.dtype == np.float32 and regions.shape == ref_regions.shape == (4, 4, 2048)
    assert _rel(pooled, ref_pooled) < 2e-4 and _rel(regions, ref_regions) < 2e-4
    assert _cosine(pooled, ref_pooled) > 1 - 1e-6 and _cosine(regions, ref_regions) > 1 - 1e-6
    b_pooled, b_regions = bf16.frames(frames)
    assert b_pooled.dtype == b_regions.dtype == np.float32
    assert _rel(b_pooled, ref_pooled) > 1e-3  # bf16 did run
    assert _cosine(b_pooled, ref_pooled) > 0.85 and _cosine(b_regions, ref_regions) > 0.85


def test_c3d_in_channels_last_3d_and_bf16(one_thread):
    net = build_clip_model("c3d", seed=0)
    info = CLIP_MODELS["c3d"]
    clips = np.stack([random_frames(16, 112, 112, seed=s) for s in range(2)])  # uint8 [2, 16, 112, 112, 3]
    old = Backbones(InceptionFeatures(build_inception_v3(seed=0)), copy.deepcopy(net), info, CPU,
                    precision="fp32", channels_last=False)
    new = Backbones(InceptionFeatures(build_inception_v3(seed=0)), copy.deepcopy(net), info, CPU, precision="fp32")
    bf16 = Backbones(InceptionFeatures(build_inception_v3(seed=0)), copy.deepcopy(net), info, CPU, precision="bf16")
    assert new.clip_inputs(clips).is_contiguous(memory_format=torch.channels_last_3d)
    ref = old.clips(clips)
    assert ref.dtype == np.float32 and ref.shape == (2, 4096)
    assert _rel(new.clips(clips), ref) < 1e-5  # C3D (random, no BatchNorm) is not chaotic: as with trained weights
    assert 1e-4 < _rel(bf16.clips(clips), ref) < 1e-2 and _cosine(bf16.clips(clips), ref) > 0.9999


@pytest.mark.slow
@pytest.mark.parametrize("name", ["x3d_m", "slow_r50", "r2plus1d_r50"])
def test_pytorchvideo_models_in_channels_last_3d_give_the_contiguous_features(name, one_thread):
    """One clip at the model's own size (random weights): the layout changes no value beyond fp32 rounding."""
    info = CLIP_MODELS[name]
    net = build_clip_model(name, seed=0)
    clips = random_frames(info.clip.length, info.clip.crop, info.clip.crop, seed=4)[None]
    inception = InceptionFeatures(build_inception_v3(seed=0))
    old = Backbones(inception, copy.deepcopy(net), info, CPU, precision="fp32", channels_last=False)
    new = Backbones(inception, copy.deepcopy(net), info, CPU, precision="fp32")
    assert new.clips_channels_last and new.clip_inputs(clips).is_contiguous(memory_format=torch.channels_last_3d)
    conv = next(m for m in new.clip.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d) and conv.weight.dim() == 5
    ref = old.clips(clips)
    assert ref.shape == (1, info.dim) and np.abs(ref).max() > 0
    assert _rel(new.clips(clips), ref) < 1e-5


def test_precision_is_recorded_per_video_and_leaves_the_networks_as_recorded(tmp_path):
    make_corpus(tmp_path / "v", 2)
    make_corpus(tmp_path / "more", 3)  # clip00, clip01 again and clip02
    (tmp_path / "more" / "clip00.mp4").unlink()
    (tmp_path / "more" / "clip01.mp4").unlink()
    fp32_path, bf16_path = tmp_path / "fp32.zarr", tmp_path / "bf16.zarr"
    assert run_extract(cfg([tmp_path / "v"], fp32_path, precision="fp32")).completed == 2
    assert run_extract(cfg([tmp_path / "v"], bf16_path, precision="bf16")).completed == 2
    fp32, bf16 = FeatureStore.open(fp32_path), FeatureStore.open(bf16_path)
    # calibration (BatchNorm re-estimation) and the recorded state hash do not depend on the precision
    assert fp32.backbone_records() == bf16.backbone_records()
    assert fp32.get_blob("inception_bn") == bf16.get_blob("inception_bn")
    for vid in ("clip00", "clip01"):
        assert fp32.video_attrs(vid)["precision"] == "fp32"
        assert bf16.video_attrs(vid)["precision"] == "bf16-autocast"
        a = fp32.read_video(vid).region_features.astype(np.float32)
        b = bf16.read_video(vid).region_features.astype(np.float32)
        # a random Inception-V3 is chaotic (see above), the more so this tiny one (75x75, calibrated on 6 frames)
        assert _rel(b, a) > 0 and _cosine(b, a) > 0.5

    # bf16 videos added to an fp32 store: allowed, and each video says how it was computed
    mixed = run_extract(cfg([tmp_path / "v", tmp_path / "more"], fp32_path, precision="bf16"))
    assert mixed.completed == 1 and mixed.up_to_date == 2
    store = FeatureStore.open(fp32_path)
    assert {vid: store.video_attrs(vid)["precision"] for vid in store.completed_ids()} == {
        "clip00": "fp32", "clip01": "fp32", "clip02": "bf16-autocast"}
    assert store.precision_counts() == {"fp32": 2, "bf16": 1}


@pytest.mark.parametrize("kept", ["fp32", "bf16"])
def test_auto_adds_videos_to_a_store_in_its_own_precision(tmp_path, kept):
    """Whatever ``auto`` would pick on this machine, a store that has videos keeps their precision."""
    make_corpus(tmp_path / "v", 2)
    make_corpus(tmp_path / "more", 3)
    (tmp_path / "more" / "clip00.mp4").unlink()
    (tmp_path / "more" / "clip01.mp4").unlink()
    path = tmp_path / "s.zarr"
    assert run_extract(cfg([tmp_path / "v"], path, precision=kept)).completed == 2
    assert run_extract(cfg([tmp_path / "v", tmp_path / "more"], path, precision="auto")).completed == 1
    assert FeatureStore.open(path).precision_counts() == {kept: 3}
