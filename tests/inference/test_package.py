"""The ``.fcvc`` captioner file (``inference/package.py``) and ``Captioner.load`` / ``caption_features``.

A tiny run is trained on the tiny work directory (seconds), exported with ``run_export``, and read back
from another directory: same weights, vocabulary, decoding and feature records, and token-identical
captions to the captioner of the work directory on the same features. Every damaged, truncated, foreign
or malicious file is an ``InputError`` naming the file (exit 2 through ``fcvc info FILE``), and reading
one never runs code.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch

from fcvc_pipeline.captions.vocabulary import load_captions
from fcvc_pipeline.errors import InputError, MismatchError, MissingArtifactError
from fcvc_pipeline.features.bank import load_feature_bank
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.inference.captioner import Caption, Captioner, caption_split
from fcvc_pipeline.inference.checkpoint import load_checkpoint
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.inference.package import PACKAGE_VERSION, read_package
from fcvc_pipeline.stages.export import ExportConfig, run_export
from fcvc_pipeline.stages.train import TrainConfig, run_train
from tests.stages.test_train import TINY
from tests.tiny import make_tiny_workdir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(work directory, run directory, the exported file copied into a directory of its own)."""
    root = tmp_path_factory.mktemp("package")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        w = make_tiny_workdir(root / "work")
        res = run_train(TrainConfig(workdir=w, model="fcvc-cf-ia", epochs=4, select_beams=(), **TINY))
        run_export(ExportConfig(output=root / "out" / "tiny.fcvc", workdir=w))
    finally:
        torch.set_num_threads(threads)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(root / "out" / "tiny.fcvc", elsewhere / "tiny.fcvc")
    return w, res.run, elsewhere / "tiny.fcvc"


def test_the_file_holds_the_checkpoint_whole(exported):
    w, run, path = exported
    ckpt = load_checkpoint(run / "best.pt")
    package = read_package(path)
    assert package.model_config.to_json() == ckpt["model_config"]
    assert set(package.state_dict) == set(ckpt["state_dict"])
    for name, t in ckpt["state_dict"].items():
        assert torch.equal(package.state_dict[name], t), name
    assert package.vocab.to_json() == ckpt["vocab"]
    assert package.decoding == DecodingOptions.from_json(ckpt.get("decoding"))
    store = FeatureStore.open(w / "features.zarr")
    assert package.features.settings == store.settings
    assert package.features.settings_fingerprint == ckpt["store_settings_fingerprint"]
    assert not package.features.can_extract  # the tiny store records no networks: features only
    prov = package.provenance
    assert prov["run"] == run.name and prov["train_config"]["model"] == "fcvc-cf-ia"
    assert prov["checkpoint"]["sha256"] and prov["torch_version"] == torch.__version__ and prov["fcvc_version"]
    assert prov["training"]["epochs"] == 4


def _by_video(captions: list[Caption]) -> dict[str, Caption]:
    return {c.video: c for c in captions}


def test_captions_are_token_identical_to_the_work_directory_captioner(exported, one_thread):
    w, run, path = exported
    store = FeatureStore.open(w / "features.zarr")
    ids = sorted({r.video_id for r in load_captions(w / "vocab", split="val")})
    loaded = Captioner.load(path, device="cpu")
    assert loaded.extraction is not None and loaded.provenance["run"] == run.name

    # the same features, three ways in: a mapping of VideoFeatures, of plain arrays, and a FeatureBank
    from_store = loaded.caption_features({v: store.read_video(v) for v in ids})
    as_arrays = loaded.caption_features({v: {"frame_features": store.read_video(v).frame_features,
                                             "clip_features": store.read_video(v).clip_features,
                                             "region_features": store.read_video(v).region_features}
                                         for v in reversed(ids)})
    bank = load_feature_bank(store, ids, regions=True)
    from_bank = loaded.caption_features(bank)
    assert [c.video for c in from_store] == ids and [c.video for c in as_arrays] == ids[::-1]

    in_workdir = Captioner.from_checkpoint(run / "best.pt")
    hyps = in_workdir.caption_bank(bank)
    split = {d["video"]: d for d in json.loads(caption_split(w, run.name, "val", device="cpu").read_text())}
    assert set(split) == set(ids)
    for captions in (from_store, as_arrays, from_bank):
        for c in captions:
            h = hyps[c.video]
            assert c.ok and c.words == in_workdir.vocab.decode_tokens(h.tokens)
            assert c.text == split[c.video]["caption"] and c.score == pytest.approx(split[c.video]["score"], abs=1e-6)
            assert c.score == h.score
            np.testing.assert_array_equal(c.frame_attention, h.frame_attn[:len(c.words)])
            np.testing.assert_array_equal(c.region_attention, h.region_attn[:len(c.words)])
    assert any(c.words for c in from_store)  # a model that says something, so the comparison means something
    c = from_store[0]
    assert c.frame_attention.shape == (len(c.words), 4) and c.region_attention.shape == (len(c.words), 4, 4)


def test_a_bad_video_gets_an_error_and_the_others_are_captioned(exported, one_thread):
    w, _, path = exported
    store = FeatureStore.open(w / "features.zarr")
    good = store.read_video("v000")
    arrays = {"frame_features": good.frame_features, "clip_features": good.clip_features,
              "region_features": good.region_features}
    loaded = Captioner.load(path, device="cpu")
    captions = loaded.caption_features({
        "ok": arrays,
        "short": {**arrays, "frame_features": good.frame_features[:2]},
        "no-regions": {**arrays, "region_features": None},
        "nan": {**arrays, "clip_features": np.full_like(good.clip_features, np.nan)},
        "words": {**arrays, "frame_features": np.array([["a"] * 16] * 4)},
        "tensor": {k: torch.from_numpy(v) for k, v in arrays.items()},
    })
    by = _by_video(captions)
    assert [c.video for c in captions] == ["ok", "short", "no-regions", "nan", "words", "tensor"]
    assert by["ok"].ok and by["tensor"].ok and by["ok"].words == by["tensor"].words
    assert "frame_features has shape [2, 16], the model expects [4, 16]" in by["short"].error
    assert "no region_features" in by["no-regions"].error and "NaN" in by["nan"].error
    assert "not numbers" in by["words"].error
    assert all(by[v].text is None for v in ("short", "no-regions", "nan", "words"))


def test_features_only_captioner_refuses_video_files_clearly(exported, tmp_path):
    _, _, path = exported
    loaded = Captioner.load(path, device="cpu")
    with pytest.raises(MismatchError, match="does not record the feature networks"):
        loaded.caption([tmp_path / "some.mp4"])


def test_attention_figure_of_features_alone_is_a_picture(exported, one_thread):
    w, _, path = exported
    loaded = Captioner.load(path, device="cpu")
    (c,) = loaded.caption_features({"v000": FeatureStore.open(w / "features.zarr").read_video("v000")})
    img = loaded.attention_figure(c)
    assert img.mode == "RGB" and img.size[0] > 300 and img.size[1] > 100
    with pytest.raises(MismatchError, match="no caption"):
        loaded.attention_figure(Caption(video="x", text=None, error="broken"))


# -- bad files ---------------------------------------------------------------------------------------------
class _Mkdir:
    """Unpickling this calls os.mkdir(marker) (the ``posix.mkdir`` global): a visible trace if it ever ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _table(data: bytes) -> tuple[dict, int]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), 8 + n


def _flip_in_model_tensor(data: bytes) -> bytes:
    table, start = _table(data)
    name = max((k for k in table if k.startswith("model/")), key=lambda k: table[k]["data_offsets"][1]
               - table[k]["data_offsets"][0])
    pos = start + (table[name]["data_offsets"][0] + table[name]["data_offsets"][1]) // 2
    out = bytearray(data)
    out[pos] ^= 0x10
    return bytes(out)


def _edit_metadata(data: bytes, **changes) -> bytes:
    tensors = safetensors.torch.load(data)
    table, _ = _table(data)
    return safetensors.torch.save(tensors, metadata={**table["__metadata__"], **changes})


def _edit_header(data: bytes) -> bytes:
    """The JSON header with one word of the vocabulary changed (same length): valid JSON, wrong digest."""
    table, _ = _table(data)
    header = json.loads(table["__metadata__"]["header"])
    tokens = header["vocabulary"]["tokens"]
    tokens[-1] = tokens[-1][::-1] if tokens[-1] != tokens[-1][::-1] else tokens[-1].upper()
    return _edit_metadata(data, header=json.dumps(header, sort_keys=True))


BAD = {
    "truncated-in-tensors": (lambda d, m: d[:len(d) - 1000], "truncated"),
    "truncated-in-header": (lambda d, m: d[:200], "truncated"),
    "eight-bytes": (lambda d, m: d[:8], "not an fcvc captioner file"),
    "empty": (lambda d, m: b"", "empty"),
    "garbled": (lambda d, m: np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
                "not an fcvc captioner file"),
    "garbled-header": (lambda d, m: d[:20] + b"\xff" * 40 + d[60:], "header is not valid JSON"),
    "text": (lambda d, m: b"model: fcvc-cf-ia\nweights: somewhere else\n", "a text file"),
    "json": (lambda d, m: b'{"format": "fcvc-captioner"}', "not an fcvc captioner file"),
    "newer-version": (lambda d, m: _edit_metadata(d, format_version=str(PACKAGE_VERSION + 1)),
                      f"newer fcvc (captioner format version {PACKAGE_VERSION + 1}"),
    "flipped-bit-in-tensor": (lambda d, m: _flip_in_model_tensor(d), "does not match the digest"),
    "edited-header": (lambda d, m: _edit_header(d), "does not match the digest"),
    "other-safetensors": (lambda d, m: safetensors.torch.save({"w": torch.zeros(3)}), "not an fcvc captioner file"),
    "pickle": (lambda d, m: pickle.dumps({"format": "fcvc-captioner", "x": _Mkdir(m)}), "Python pickle"),
    "torch-save": (lambda d, m: _torch_save({"format": 1, "x": _Mkdir(m)}), "zip archive"),
}


def _torch_save(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _fcvc(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FCVC_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "fcvc_pipeline", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_file_is_an_input_error_naming_it_and_runs_nothing(exported, tmp_path, case):
    _, _, good = exported
    make, expected = BAD[case]
    marker = tmp_path / "code-ran"
    path = tmp_path / f"{case}.fcvc"
    path.write_bytes(make(good.read_bytes(), marker))
    with pytest.raises(InputError) as e:
        Captioner.load(path, device="cpu")
    assert e.value.path == str(path) and str(path) in str(e.value)
    assert expected in e.value.reason, e.value.reason
    assert "\n" not in e.value.reason
    assert not marker.exists(), "reading the file ran code"


def test_bad_files_through_the_command_line_exit_2_naming_them(exported, tmp_path):
    _, _, good = exported
    marker = tmp_path / "code-ran"
    for case in ("pickle", "truncated-in-tensors", "flipped-bit-in-tensor", "newer-version", "text"):
        path = tmp_path / f"{case}.fcvc"
        path.write_bytes(BAD[case][0](good.read_bytes(), marker))
        proc = _fcvc("info", str(path))
        assert proc.returncode == 2, (case, proc.stderr)
        assert f"error: {path}: " in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    doc = json.loads(_fcvc("info", str(tmp_path / "pickle.fcvc"), "--json").stdout)
    assert doc["exit_code"] == 2 and str(tmp_path / "pickle.fcvc") in doc["message"]
    assert not marker.exists()
    ok = _fcvc("info", str(good), "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["kind"] == "captioner" and doc["model"]["name"] == "fcvc-cf-ia"
    assert doc["features"]["can_caption_videos"] is False


def test_a_missing_file_or_a_directory(tmp_path):
    with pytest.raises(MissingArtifactError, match="no captioner file"):
        Captioner.load(tmp_path / "nothing.fcvc")
    with pytest.raises(InputError, match="is a directory"):
        Captioner.load(tmp_path)
