"""Backbones: shapes, pooled == mean of regions, strict loading of torchvision / DavideA / pytorchvideo
state dicts written by the tests, BatchNorm re-estimation, preprocessing, offline errors."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcvc_pipeline.errors import ConfigError, InputError
from fcvc_pipeline.features.backbones import (
    C3D_MEAN_BGR,
    CLIP_MODELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MIN_SIZE,
    InceptionFeatures,
    batchnorm_state,
    build_c3d,
    build_hub_model,
    build_inception_v3,
    calibrate_batchnorm,
    imagenet_inception_state,
    inception_grid,
    load_batchnorm_state,
    load_state_file,
    parse_weights,
    preprocess_c3d,
    preprocess_frames,
    state_sha256,
)
from tests.videos import random_frames

DAVIDEA_KEYS = [f"{layer}.{p}" for layer in ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a",
                                             "conv5b", "fc6", "fc7", "fc8") for p in ("weight", "bias")]


@pytest.fixture(scope="module")
def random_inception():
    return InceptionFeatures(build_inception_v3(seed=0))


def _frames(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return preprocess_frames(torch.from_numpy(random_frames(n, size, size, seed=seed)))


def test_grid_formula_matches_the_network(random_inception):
    for size in (75, 107, 139):
        with torch.inference_mode():
            pooled, regions = random_inception(torch.zeros(1, 3, size, size))
        g = inception_grid(size)
        assert regions.shape == (1, g * g, 2048) and pooled.shape == (1, 2048)
    assert inception_grid(299) == 8 and inception_grid(75) == 1
    with pytest.raises(ValueError):
        inception_grid(74)


def test_pooled_is_the_mean_of_the_region_map(random_inception):
    calibrate_batchnorm(random_inception, [_frames(8, 139, seed=1)])
    with torch.inference_mode():
        pooled, regions = random_inception(_frames(3, 139, seed=2))  # [3, 2048], [3, 9, 2048]
    assert torch.isfinite(regions).all()
    torch.testing.assert_close(pooled, regions.mean(dim=1), rtol=1e-5, atol=1e-5)


def test_preprocess_frames_normalises_once():
    white = torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)
    x = preprocess_frames(white)
    assert x.shape == (1, 3, 4, 4)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor(expected))


def _assert_same_features(ours: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal up to float rounding, on features that are neither vanishing nor all alike (else vacuous)."""
    scale = reference.abs().max().item()
    assert np.isfinite(scale) and scale > 1e-3, scale
    assert (reference[0] - reference[-1]).abs().max().item() > 1e-3 * scale  # the inputs really differ
    torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-4 * scale)


def test_strict_load_of_a_torchvision_state_dict(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(123)
    reference = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True).eval()
    # BatchNorm statistics estimated on frames: non-default (a wrong load would show) and, unlike arbitrary
    # ones, they keep the random network sensitive to its input (else every frame gives the same features and
    # the comparisons below could not see a preprocessing or layout mistake)
    calibrate_batchnorm(reference, [_frames(4, INCEPTION_MIN_SIZE, seed=7)])
    path = tmp_path / "inception.pth"
    torch.save(reference.state_dict(), path)
    ours = InceptionFeatures(build_inception_v3(load_state_file(path), source=path))
    seen = {}
    reference.Mixed_7c.register_forward_hook(lambda mod, inp, out: seen.__setitem__("map", out))
    reference.avgpool.register_forward_hook(lambda mod, inp, out: seen.__setitem__("pooled", out.flatten(1)))
    x = _frames(2, 107, seed=3)
    with torch.inference_mode():
        reference(x)
        pooled, regions = ours(x)
    torch.testing.assert_close(regions, seen["map"].flatten(2).transpose(1, 2))
    _assert_same_features(pooled, seen["pooled"])

    # The pooled feature at the smallest frame size accepted, against torchvision's network fed the way the
    # Google weights expect: RGB scaled to [-1, 1], transform_input off. Ours gets the project's
    # preprocessing (ImageNet mean/std) and relies on transform_input to undo it -- the two must agree.
    size = INCEPTION_MIN_SIZE
    raw = torch.from_numpy(random_frames(2, size, size, seed=5))  # uint8 [2, S, S, 3] RGB
    with torch.inference_mode():
        pooled, regions = ours(preprocess_frames(raw))
        reference.transform_input = False
        reference(raw.permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0)
    assert pooled.shape == (2, 2048) and regions.shape == (2, inception_grid(size) ** 2, 2048)
    _assert_same_features(pooled, seen["pooled"])

    # without the auxiliary classifier it still loads strictly
    no_aux = {k: v for k, v in reference.state_dict().items() if not k.startswith("AuxLogits.")}
    torch.save(no_aux, tmp_path / "no_aux.pth")
    build_inception_v3(load_state_file(tmp_path / "no_aux.pth"))

    broken = dict(no_aux)
    broken.pop("Mixed_6b.branch1x1.conv.weight")
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(InputError) as e:
        build_inception_v3(load_state_file(tmp_path / "broken.pth"), source=tmp_path / "broken.pth")
    msg = str(e.value)
    assert "broken.pth" in msg and "Mixed_6b.branch1x1.conv.weight" in msg and "extra.weight" in msg


def test_random_weights_need_and_survive_batchnorm_reestimation():
    raw = InceptionFeatures(build_inception_v3(seed=5))
    x = _frames(6, 107, seed=4)
    with torch.inference_mode():
        _, raw_regions = raw(x)
    scale = raw_regions.abs().mean().item()
    assert not np.isfinite(scale) or scale < 1e-3 or scale > 1e3  # vanishing (or exploding): unusable as is

    calibrated = InceptionFeatures(build_inception_v3(seed=5))
    calibrate_batchnorm(calibrated, [x[:3], x[3:]])
    with torch.inference_mode():
        pooled, regions = calibrated(x)
    assert torch.isfinite(regions.to(torch.float16)).all()
    assert 0.01 < regions.abs().mean().item() < 100

    # seed + saved BatchNorm statistics rebuild the very same network
    again = InceptionFeatures(build_inception_v3(seed=5))
    load_batchnorm_state(again, batchnorm_state(calibrated), "test")
    assert state_sha256(again.state_dict()) == state_sha256(calibrated.state_dict())
    assert state_sha256(again.state_dict()) != state_sha256(InceptionFeatures(build_inception_v3(seed=6)).state_dict())


# Sports-1M channel means in BGR order on the 0-255 scale (the Caffe C3D convention; also the usual per-channel
# summary of sport1m_train16_128_mean.binaryproto)
SPORTS1M_MEAN_BGR = (90.25, 97.66, 101.41)


def _c3d_fc6_reference(state: dict[str, torch.Tensor], clips: torch.Tensor) -> torch.Tensor:
    """The Sports-1M C3D feature written out with torch.nn.functional, from a DavideA-layout state dict.

    Caffe input: RGB uint8 [B, 16, 112, 112, 3] -> BGR, 0-255, channel mean removed, [B, 3, 16, 112, 112].
    Then (Tran et al. 2015; DavideA's C3D_model.py): every convolution 3x3x3, stride 1, padding 1, followed
    by a ReLU; pool1 1x2x2 (the 16 frames are kept), pool2-pool5 2x2x2 with stride 2, pool5 padded (0, 1, 1)
    so that the 7x7 map pools to 4x4; flattened channel-major ((C, T, H, W), DavideA's ``view(-1, 8192)``);
    fc6 and its ReLU (Caffe's relu6 runs in place, so the fc6 blob is post-ReLU).
    """
    x = clips[..., [2, 1, 0]].float() - torch.tensor(SPORTS1M_MEAN_BGR)
    h = x.permute(0, 4, 1, 2, 3)

    def conv(h, name):
        return F.relu(F.conv3d(h, state[f"{name}.weight"], state[f"{name}.bias"], stride=1, padding=1))

    h = F.max_pool3d(conv(h, "conv1"), kernel_size=(1, 2, 2), stride=(1, 2, 2))
    assert h.shape[1:] == (64, 16, 56, 56)
    h = F.max_pool3d(conv(h, "conv2"), kernel_size=2, stride=2)
    assert h.shape[1:] == (128, 8, 28, 28)
    h = F.max_pool3d(conv(conv(h, "conv3a"), "conv3b"), kernel_size=2, stride=2)
    assert h.shape[1:] == (256, 4, 14, 14)
    h = F.max_pool3d(conv(conv(h, "conv4a"), "conv4b"), kernel_size=2, stride=2)
    assert h.shape[1:] == (512, 2, 7, 7)
    h = F.max_pool3d(conv(conv(h, "conv5a"), "conv5b"), kernel_size=2, stride=2, padding=(0, 1, 1))
    assert h.shape[1:] == (512, 1, 4, 4)
    return F.relu(F.linear(h.reshape(h.shape[0], 8192), state["fc6.weight"], state["fc6.bias"]))


def test_c3d_loads_the_davidea_layout_strictly(tmp_path):
    donor = build_c3d(seed=1)
    torch.manual_seed(0)
    full = {k: v.clone() for k, v in donor.state_dict().items()}
    for name in DAVIDEA_KEYS:  # seeded init leaves biases at zero: give them values, so they must be used
        if name.endswith(".bias") and name in full:
            full[name].normal_(0.0, 2.0)
    full.update({"fc7.weight": torch.randn(4096, 4096) * 0.01, "fc7.bias": torch.zeros(4096),
                 "fc8.weight": torch.randn(487, 4096) * 0.01, "fc8.bias": torch.zeros(487)})
    assert sorted(full) == sorted(DAVIDEA_KEYS)
    path = tmp_path / "c3d.pickle"
    torch.save(full, path)
    net = build_c3d(load_state_file(path), source=path)
    assert net.fc7 is None and net.fc8 is None  # trimmed after the strict load
    clips = torch.randint(0, 256, (1, 16, 112, 112, 3), dtype=torch.uint8)  # the real input size, one clip
    with torch.inference_mode():
        out = net(preprocess_c3d(clips))
        ref = _c3d_fc6_reference(full, clips)
    assert out.shape == (1, 4096) and torch.isfinite(out).all() and (out >= 0).all()
    scale = ref.abs().max().item()
    assert 0 < (ref > 0).float().mean() < 1 and scale > 1.0  # a live feature: some units on, some off
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * scale)

    renamed = {k.replace("conv", "features.conv"): v for k, v in full.items()}
    torch.save(renamed, tmp_path / "other.pth")
    with pytest.raises(InputError) as e:
        build_c3d(load_state_file(tmp_path / "other.pth"), source=tmp_path / "other.pth")
    assert "other.pth" in str(e.value) and "conv1.weight" in str(e.value)


def test_c3d_caffe_preprocessing():
    red = torch.zeros(1, 16, 112, 112, 3, dtype=torch.uint8)
    red[..., 0] = 255  # RGB red
    x = preprocess_c3d(red)
    assert x.shape == (1, 3, 16, 112, 112)
    b, g, r = (x[0, c, 0, 0, 0].item() for c in range(3))
    assert b == pytest.approx(0 - C3D_MEAN_BGR[0]) and g == pytest.approx(0 - C3D_MEAN_BGR[1])
    assert r == pytest.approx(255 - C3D_MEAN_BGR[2])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_hub_models_build_without_classifier_and_load_strictly(tmp_path):
    for name in ("slow_r50", "r2plus1d_r50"):
        net = build_hub_model(name, seed=0)
        head = net.net.blocks[-1]
        assert head.proj is None and head.activation is None
    # a pytorchvideo checkpoint ({"model_state": ...}) round trip
    import pytorchvideo.models.hub as hub

    torch.manual_seed(3)
    raw = hub.x3d_m(pretrained=False)
    torch.save({"model_state": raw.state_dict(), "epoch": 1}, tmp_path / "x3d.pyth")
    loaded = build_hub_model("x3d_m", load_state_file(tmp_path / "x3d.pyth"))
    assert state_sha256(loaded.net.state_dict()) == state_sha256(
        {k: v for k, v in raw.state_dict().items() if not k.startswith("blocks.5.proj")})


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_x3d_m_feature_at_its_real_input_size():
    net = build_hub_model("x3d_m", seed=0)
    info = CLIP_MODELS["x3d_m"]
    with torch.inference_mode():
        out = net(torch.randn(1, 3, info.clip.length, info.clip.crop, info.clip.crop))
    assert out.shape == (1, info.dim) and torch.isfinite(out).all()


def test_weights_options_and_offline_errors(tmp_path, monkeypatch):
    assert parse_weights("random", named=("imagenet",), option="--x").seed == 0
    assert parse_weights("random:7", named=("imagenet",), option="--x").seed == 7
    assert parse_weights("imagenet", named=("imagenet",), option="--x").kind == "imagenet"
    with pytest.raises(ConfigError) as e:
        parse_weights(str(tmp_path / "nope.pth"), named=("imagenet",), option="--inception-weights")
    assert "nope.pth" in str(e.value) and "random" in str(e.value)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(ConfigError) as e:
        imagenet_inception_state()
    assert "random" in str(e.value) and "PATH" in str(e.value)


def test_state_files_are_loaded_as_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": torch.zeros(1), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(InputError):
        load_state_file(tmp_path / "evil.pt")
    np.save(tmp_path / "not_torch.npy", np.zeros(3))
    with pytest.raises(InputError):
        load_state_file(tmp_path / "not_torch.npy")


def test_a_refused_weights_file_says_it_holds_other_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": torch.zeros(1), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(InputError) as e:
        load_state_file(tmp_path / "evil.pt")
    message = str(e.value)
    assert "Python objects other than tensors" in message and "GLOBAL" in message and "print" in message
    assert "weights_only=True" in message and "only if you trust the source" in e.value.hint
