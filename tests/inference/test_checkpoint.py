"""Unit tests of checkpoint files (``inference/checkpoint.py``) and the decoding options (``inference/options.py``).

Checkpoints are untrusted input: every broken, foreign or malicious file must become an ``InputError`` that
names the file, and loading one must never run code. Models are tiny (d=16, 2 layers, vocab 12).
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fcvc_pipeline.captions.vocabulary import SPECIALS, Vocabulary
from fcvc_pipeline.errors import ConfigError, FcvcError, InputError, MissingArtifactError
from fcvc_pipeline.inference.checkpoint import (
    CHECKPOINT_FORMAT,
    DIGEST_KEY,
    content_digest,
    decoding_of,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    vocabulary_of,
)
from fcvc_pipeline.inference.options import DEFAULT_BEAM_SIZE, DecodingOptions
from fcvc_pipeline.models import ModelConfig, VideoBatch, build_model

CFG = ModelConfig(model="fcvc-cf-ia", vocab_size=12, d_model=16, layers=2, heads=2, kernel_size=3, frame_dim=8,
                  clip_dim=0, region_dim=8, num_regions=4, num_frames=3, max_len=6)
VOCAB = Vocabulary(tokens=(*SPECIALS, "a", "man", "dog", "runs", "on", "the", "grass", "car"), max_len=6)


def tiny_model(seed: int = 0, cfg: ModelConfig = CFG):
    torch.manual_seed(seed)
    return build_model(cfg)


def payload(model, **extra) -> dict:
    """What ``Trainer.save`` writes for best.pt (the identity, the weights, and the bookkeeping)."""
    return {"model_config": model.config.to_json(), "vocab": VOCAB.to_json(), "vocab_fingerprint": VOCAB.fingerprint(),
            "store_settings_fingerprint": "f" * 64, "store_path": "/work/features.zarr", "manifest_key": "k" * 64,
            "rng": {"torch": torch.get_rng_state(), "cuda": None},
            "state_dict": model.state_dict(), "ema_state_dict": None, "optimizer": {}, "position": {}, "history": [],
            "best": {"cider": 0.5, "epoch": 3}, "train_seconds": 1.5, **extra}


def tiny_inputs():
    g = torch.Generator().manual_seed(1)
    videos = VideoBatch(frames=torch.randn(2, 3, 8, generator=g), regions=torch.randn(2, 3, 4, 8, generator=g))
    tokens = torch.tensor([[1, 4, 5, 6], [1, 7, 0, 0], [1, 8, 9, 10]])
    return videos, tokens, torch.tensor([0, 1, 1])


@pytest.fixture
def saved(tmp_path):
    model = tiny_model()
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, payload(model))
    return model, path


# -- the round trip --------------------------------------------------------------------------------
def test_save_then_load_round_trips_and_rebuilds_identical_outputs(saved):
    model, path = saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temp file left behind
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == CHECKPOINT_FORMAT
    assert ModelConfig.from_json(ckpt["model_config"]) == CFG
    assert vocabulary_of(ckpt) == VOCAB
    assert ckpt["best"] == {"cider": 0.5, "epoch": 3} and ckpt["store_path"] == "/work/features.zarr"
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][k], v), k

    rebuilt = model_from_checkpoint(ckpt, path)
    assert not rebuilt.training  # eval mode
    model.eval()
    videos, tokens, index = tiny_inputs()
    with torch.no_grad():
        want = model(videos, tokens, index)
        got = rebuilt(videos, tokens, index)
    assert torch.equal(got.logits, want.logits)
    assert torch.equal(got.region_attn, want.region_attn)
    other = tiny_model(seed=1).eval()
    with torch.no_grad():
        assert not torch.allclose(other(videos, tokens, index).logits, want.logits)  # the weights do matter


def test_a_missing_checkpoint_is_a_missing_artifact(tmp_path):
    with pytest.raises(MissingArtifactError) as e:
        load_checkpoint(tmp_path / "best.pt")
    assert str(tmp_path / "best.pt") in str(e.value) and "fcvc train" in str(e.value)
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(MissingArtifactError):
        load_checkpoint(tmp_path / "dir.pt")


# -- broken and hostile files ------------------------------------------------------------------------
def assert_input_error(path: Path, *words: str) -> InputError:
    with pytest.raises(InputError) as e:
        load_checkpoint(path)
    assert e.value.path == str(path) and str(e.value).startswith(f"{path}: ")
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    return e.value


def test_truncated_and_random_files_are_input_errors(saved, tmp_path):
    _, good = saved
    data = good.read_bytes()
    for keep in (0.5, 0.9, 0.02):
        bad = tmp_path / f"truncated_{keep}.pt"
        bad.write_bytes(data[:int(len(data) * keep)])
        assert_input_error(bad, "not a loadable fcvc checkpoint")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_input_error(noise, "not a loadable fcvc checkpoint")
    text = tmp_path / "text.pt"
    text.write_text("model_config: fcvc\n")
    assert_input_error(text, "not a loadable fcvc checkpoint")


@pytest.mark.parametrize("content", [b"", b"\x80\x02"], ids=["empty", "pickle-header-only"])
def test_an_empty_or_header_only_file_is_an_input_error(tmp_path, content):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    assert_input_error(path, "not a loadable fcvc checkpoint")


class _Mkdir:
    """Unpickling this calls os.mkdir(marker): it would leave a visible trace if it ever ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


class _Shell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the plain-pickle cases
def test_forbidden_globals_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "code-ran"
    cases = {
        # torch.save of an arbitrary object (the zip format torch.load expects)
        "torch_reduce.pt": lambda p: torch.save({"format": 1, "model_config": {}, "x": _Mkdir(marker)}, p),
        "torch_shell.pt": lambda p: torch.save({"format": 1, "model_config": {}, "x": _Shell(f"mkdir {marker}")}, p),
        # a pickled reference to os.system, and a function of this module
        "torch_global.pt": lambda p: torch.save({"format": 1, "model_config": {}, "f": os.system}, p),
        "torch_popen.pt": lambda p: torch.save({"format": 1, "model_config": {}, "f": subprocess.Popen}, p),
        # plain pickle (the legacy, non-zip format)
        "pickle_reduce.pt": lambda p: p.write_bytes(pickle.dumps({"format": 1, "x": _Mkdir(marker)})),
        "pickle_global.pt": lambda p: p.write_bytes(pickle.dumps(os.system, protocol=2)),
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        err = assert_input_error(path, "not a loadable fcvc checkpoint")
        assert "\n" not in err.reason, name  # one line
        assert not marker.exists(), f"{name}: loading ran code"


def test_a_refused_pickle_says_why_in_full(tmp_path):
    """torch's long refusal used to be cut mid-sentence, before its condition (trust the file's source)."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "best.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model_config": {}, "x": _Mkdir(marker)}, path)
    err = assert_input_error(path, "not a loadable fcvc checkpoint", "Python objects other than tensors",
                             "weights_only=True", "arbitrary code", f"GLOBAL {os.mkdir.__module__}.mkdir")
    assert "only if you trust the source" in err.hint
    assert "\n" not in err.reason and "\x1b" not in str(err)
    assert not marker.exists()


def test_loadable_files_that_are_not_fcvc_checkpoints(tmp_path, saved):
    model, _ = saved
    cases = {
        "list.pt": [1, 2, 3],
        "tensor.pt": torch.zeros(3),
        "no_format.pt": {"model_config": CFG.to_json(), "state_dict": model.state_dict()},
        "no_config.pt": {"format": CHECKPOINT_FORMAT, "state_dict": model.state_dict()},
        "newer_format.pt": {"format": CHECKPOINT_FORMAT + 1, "model_config": CFG.to_json()},
        "string_format.pt": {"format": "1", "model_config": CFG.to_json()},
        "bare_state_dict.pt": model.state_dict(),
    }
    for name, obj in cases.items():
        path = tmp_path / name
        torch.save(obj, path)
        assert_input_error(path, "not an fcvc checkpoint (missing format/model_config)")


def test_weights_that_do_not_fit_the_config_are_input_errors(tmp_path, saved):
    model, path = saved
    ckpt = load_checkpoint(path)
    bigger = ModelConfig(**{**CFG.to_json(), "d_model": 32})
    other_model = ModelConfig(**{**CFG.to_json(), "model": "fcvc"})
    state = model.state_dict()
    key = sorted(state)[0]
    cases = {
        "wider config": {**ckpt, "model_config": bigger.to_json()},
        "another variant": {**ckpt, "model_config": other_model.to_json()},
        "a missing weight": {**ckpt, "state_dict": {k: v for k, v in state.items() if k != key}},
        "an extra weight": {**ckpt, "state_dict": {**state, "extra.weight": torch.zeros(2)}},
        "a wrong shape": {**ckpt, "state_dict": {**state, key: torch.zeros(*state[key].shape, 2)}},
    }
    for what, bad in cases.items():
        with pytest.raises(InputError) as e:
            model_from_checkpoint(bad, tmp_path / "named.pt")
        assert e.value.path == str(tmp_path / "named.pt"), what
        assert "weights do not fit the model config" in str(e.value), what


@pytest.mark.parametrize("damage", ["no state_dict", "state_dict is a list"])
def test_a_checkpoint_without_usable_weights_is_an_input_error(tmp_path, saved, damage):
    _, path = saved
    ckpt = load_checkpoint(path)
    if damage == "no state_dict":
        del ckpt["state_dict"]
    else:
        ckpt["state_dict"] = [1, 2]
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(InputError) as e:
        model_from_checkpoint(load_checkpoint(bad), bad)
    assert e.value.path == str(bad)


def test_a_foreign_model_config_is_a_clean_error(saved):
    _, path = saved
    ckpt = load_checkpoint(path)
    for bad in ({**CFG.to_json(), "from_the_future": 1}, {**CFG.to_json(), "vocab_size": 0}, "fcvc"):
        with pytest.raises(FcvcError):  # a message for a person, never a traceback
            model_from_checkpoint({**ckpt, "model_config": bad}, path)


# -- decoding options ------------------------------------------------------------------------------
def test_decoding_options_defaults_and_json_round_trip():
    assert DEFAULT_BEAM_SIZE == 5
    default = DecodingOptions.from_json(None)
    assert default == DecodingOptions() and default.beam_size == 5
    assert default.max_len is None and default.length_penalty == 1.0
    assert default.chosen_on is None and default.val_cider_by_beam is None
    assert default.problems() == []
    assert default.to_json() == {"beam_size": 5, "length_penalty": 1.0, "chosen_on": None}  # no max_len key

    chosen = DecodingOptions(beam_size=3, max_len=12, length_penalty=0.7, chosen_on="val",
                             val_cider_by_beam={"1": 0.41, "3": 0.45, "5": 0.44})
    doc = chosen.to_json()
    assert doc == {"beam_size": 3, "max_len": 12, "length_penalty": 0.7, "chosen_on": "val",
                   "val_cider_by_beam": {"1": 0.41, "3": 0.45, "5": 0.44}}
    assert DecodingOptions.from_json(doc) == chosen
    doc["val_cider_by_beam"]["1"] = 0.0
    assert chosen.val_cider_by_beam["1"] == 0.41  # to_json hands out a copy
    assert DecodingOptions.from_json({"beam_size": 4.0}).beam_size == 4
    assert isinstance(DecodingOptions.from_json({"beam_size": 4.0}).beam_size, int)
    assert chosen.search_key() == {"beam_size": 3, "max_len": 12, "length_penalty": 0.7}  # no provenance


def test_from_json_refuses_unknown_fields_and_non_objects():
    with pytest.raises(ConfigError) as e:
        DecodingOptions.from_json({"beam_size": 3, "temperature": 0.7, "top_k": 5})
    assert "temperature" in str(e.value) and "top_k" in str(e.value) and "beam_size" not in str(e.value)
    for raw in ([3], "beam 3", 3):
        with pytest.raises(ConfigError) as e:
            DecodingOptions.from_json(raw)
        assert "object" in str(e.value)


def test_override_replaces_only_what_is_given():
    base = DecodingOptions(beam_size=3, max_len=12, length_penalty=0.7, chosen_on="val", val_cider_by_beam={"3": 0.4})
    assert base.override() is base
    assert base.override(beam_size=None, max_len=None, length_penalty=None) is base
    assert base.override(beam_size=1) == DecodingOptions(1, 12, 0.7, "val", {"3": 0.4})
    assert base.override(max_len=4, length_penalty=0.0) == DecodingOptions(3, 4, 0.0, "val", {"3": 0.4})  # 0 counts
    assert base.override(beam_size=0).beam_size == 0 and base.beam_size == 3  # frozen: a new object


def test_problems_lists_every_bad_value():
    assert DecodingOptions(beam_size=1, max_len=1, length_penalty=0).problems() == []
    probs = DecodingOptions(beam_size=0, max_len=0, length_penalty=-0.5).problems()
    assert len(probs) == 3
    assert "--beam-size" in probs[0] and "--max-len" in probs[1] and "--length-penalty" in probs[2]
    assert len(DecodingOptions(beam_size=2.5).problems()) == 1
    assert len(DecodingOptions(beam_size="3", max_len="7", length_penalty="1").problems()) == 3
    stored = DecodingOptions.from_json({"beam_size": 0})  # read back whole; problems() is the check
    assert stored.beam_size == 0 and len(stored.problems()) == 1


def test_decoding_of_old_and_new_checkpoints(tmp_path):
    model = tiny_model()
    old = tmp_path / "old.pt"
    save_checkpoint(old, payload(model))  # an fcvc from before the beam was chosen: no "decoding"
    assert "decoding" not in load_checkpoint(old)
    opts = decoding_of(load_checkpoint(old), old)
    assert opts == DecodingOptions() and opts.beam_size == 5

    stored = {"beam_size": 3, "length_penalty": 1.0, "chosen_on": "val",
              "val_cider_by_beam": {"1": 0.31, "3": 0.36, "5": 0.35}}
    new = tmp_path / "new.pt"
    save_checkpoint(new, payload(model, decoding=stored))
    opts = decoding_of(load_checkpoint(new), new)
    assert opts == DecodingOptions(beam_size=3, max_len=None, length_penalty=1.0, chosen_on="val",
                                   val_cider_by_beam={"1": 0.31, "3": 0.36, "5": 0.35})
    assert opts.to_json() == stored


def test_decoding_of_a_damaged_entry_names_the_file(tmp_path):
    for bad in ({"beam_size": 3, "sampling": True}, [3], "beam"):
        with pytest.raises(InputError) as e:
            decoding_of({"decoding": bad}, tmp_path / "best.pt")
        assert e.value.path == str(tmp_path / "best.pt") and "unreadable decoding options" in str(e.value)


# -- the content digest ----------------------------------------------------------------------------------
def _overwrite_inside_largest_tensor(path: Path, offsets=(0.2, 0.5, 0.8), n: int = 16) -> None:
    """Overwrite ``n`` bytes at three places inside the stored bytes of the largest tensor, leaving the zip
    structure intact (so torch.load still succeeds and only the digest can notice)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    for f in offsets:
        at = start + int(f * (info.file_size - n))
        raw[at:at + n] = bytes((b ^ 0x5A) for b in raw[at:at + n])
    path.write_bytes(bytes(raw))


def test_every_checkpoint_carries_a_digest_of_its_content(saved):
    _, path = saved
    raw = torch.load(path, weights_only=True)
    assert len(raw[DIGEST_KEY]) == 64
    assert content_digest({k: v for k, v in raw.items() if k != DIGEST_KEY}) == raw[DIGEST_KEY]
    # the digest follows content, not the order or the container of the dict
    assert content_digest({"a": torch.ones(2), "b": [1, "x"]}) == content_digest({"b": [1, "x"], "a": torch.ones(2)})
    assert content_digest({"a": torch.ones(2)}) != content_digest({"a": torch.ones(2, dtype=torch.float64)})
    assert content_digest({"a": torch.ones(2)}) != content_digest({"a": torch.ones(1, 2)})


def test_overwritten_weights_are_refused_naming_the_file(saved):
    _, path = saved
    _overwrite_inside_largest_tensor(path)
    torch.load(path, weights_only=True)  # still a loadable file: only the digest tells
    err = assert_input_error(path, "damaged checkpoint")
    assert "restore it" in (err.hint or "")


def test_a_changed_value_outside_the_tensors_is_refused(saved, tmp_path):
    _, path = saved
    raw = torch.load(path, weights_only=True)
    raw["best"] = {"cider": 9.9, "epoch": 3}  # written back with the old digest
    tampered = tmp_path / "tampered.pt"
    torch.save(raw, tampered)
    assert_input_error(tampered, "damaged checkpoint")


def test_a_checkpoint_from_before_the_digest_still_loads(saved, tmp_path):
    model, path = saved
    raw = torch.load(path, weights_only=True)
    del raw[DIGEST_KEY]
    old = tmp_path / "old.pt"
    torch.save(raw, old)
    ckpt = load_checkpoint(old)
    assert DIGEST_KEY not in ckpt and ckpt["format"] == CHECKPOINT_FORMAT


def test_rewriting_a_loaded_checkpoint_gives_a_fresh_valid_digest(saved):
    _, path = saved
    ckpt = load_checkpoint(path)
    save_checkpoint(path, {**ckpt, "decoding": {"beam_size": 3, "length_penalty": 1.0, "chosen_on": "val"}})
    assert load_checkpoint(path)["decoding"]["beam_size"] == 3
