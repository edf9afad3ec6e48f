import io
import json

import pytest
import torch

from fcvc_pipeline.models import MODEL_NAMES, ModelConfig, build_model
from tests.models.tiny_models import tiny_captions, tiny_config, tiny_videos


def _model(**overrides):
    torch.manual_seed(0)
    return build_model(tiny_config("lstm", **overrides)).eval()


def test_encoder_state_initialises_the_decoder():
    m = _model(lstm_layers=2)
    videos = tiny_videos(2)
    f = m.video(videos)
    _, (h, c) = m.encoder(f)  # Eq. 1 over the projected frames
    enc = m.encode(videos)
    torch.testing.assert_close(enc.h, h)
    state = m.init_state(enc, torch.tensor([1, 0, 1]))
    torch.testing.assert_close(state.h, h[:, [1, 0, 1]])
    # Eq. 2 by hand for the first word
    inputs = tiny_captions(2, 3)[0]
    y, _ = m.decoder(m.embed(inputs[:, :1]), (h, c))
    out = m(videos, inputs)
    torch.testing.assert_close(out.logits[:, 0], m.out(y[:, 0]))
    assert out.frame_attn is None and out.region_attn is None


def test_the_video_changes_the_caption_distribution():
    m = _model()
    inputs = tiny_captions(2, 4)[0]
    a = m(tiny_videos(2, seed=0), inputs).logits
    b = m(tiny_videos(2, seed=5), inputs).logits
    assert not torch.allclose(a, b)


def test_regions_are_not_needed():
    m = _model()
    out = m(tiny_videos(2, regions=False), tiny_captions(2, 4)[0])
    assert out.logits.isfinite().all()


# -- frame positions: Eq. 1 reads f_t alone by default; old checkpoints (frame_positions=True) still load ----
def test_lstm_encoder_reads_the_projected_frames_alone_by_default():
    cfg = tiny_config("lstm")
    assert cfg.frame_positions is False and not cfg.use_frame_positions  # None resolved to the variant's default
    m = _model()
    assert m.video.position is None and not any("position" in k for k in m.state_dict())
    videos = tiny_videos(2)
    f = m.video.frame(videos.frames) + m.video.clip(videos.clips)  # W_f [pooled ; clip] + b, nothing added
    torch.testing.assert_close(m.video(videos), f)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_frame_positions_default_per_variant_and_explicit_values_win(model):
    lstm = model == "lstm"
    assert tiny_config(model).use_frame_positions is (not lstm)
    assert tiny_config(model, frame_positions=True).use_frame_positions is True
    assert tiny_config(model, frame_positions=False).use_frame_positions is False
    torch.manual_seed(0)
    has = build_model(tiny_config(model)).video.position is not None
    assert has is (not lstm)


def test_frame_positions_round_trip_and_validation():
    for value, stored in ((None, False), (True, True), (False, False)):
        cfg = tiny_config("lstm", frame_positions=value)
        assert cfg.to_json()["frame_positions"] is stored  # saved configs hold the resolved bool
        again = ModelConfig.from_json(json.loads(json.dumps(cfg.to_json())))
        assert again == cfg and again.frame_positions is stored
    assert any("frame_positions" in p for p in tiny_config("lstm", frame_positions="yes").validate())


@pytest.mark.parametrize("drop_conv_mask", [False, True])
def test_old_lstm_checkpoint_with_frame_positions_reloads_strictly(drop_conv_mask):
    """A checkpoint saved while frame_positions defaulted to True for every variant: its config says True
    explicitly (and, written before conv_mask existed, may lack that key); its weights hold video.position."""
    torch.manual_seed(0)
    cfg = tiny_config("lstm", frame_positions=True)
    model = build_model(cfg).eval()
    assert model.video.position is not None
    buffer = io.BytesIO()
    torch.save({"model_config": cfg.to_json(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    saved_cfg = json.loads(json.dumps(ckpt["model_config"]))
    if drop_conv_mask:
        saved_cfg.pop("conv_mask", None)  # the legacy "causal" is not even written
    loaded_cfg = ModelConfig.from_json(saved_cfg)
    assert loaded_cfg.use_frame_positions
    again = build_model(loaded_cfg).eval()
    again.load_state_dict(ckpt["model"], strict=True)
    videos, inputs = tiny_videos(2), tiny_captions(2, 4)[0]
    torch.testing.assert_close(again(videos, inputs).logits, model(videos, inputs).logits, rtol=0, atol=0)
    # and a default (position-free) LSTM refuses those weights instead of silently dropping them
    with pytest.raises(RuntimeError, match="position"):
        build_model(tiny_config("lstm")).load_state_dict(ckpt["model"], strict=True)
