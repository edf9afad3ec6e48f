import torch

from fcvc_pipeline.models import build_model
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
