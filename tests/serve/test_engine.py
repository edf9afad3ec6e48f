"""The engine behind ``fcvc serve`` in process: hostile files cost only themselves, batches stay bounded,
figures are bounded in count and age."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from fcvc_pipeline import Captioner
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.serve.engine import CaptionService, FigureStore, ServiceSettings

pytestmark = pytest.mark.timeout(180)
MISBEHAVING = "tests.features.test_video:misbehaving_decode"  # hangs on *hang*, dies on *crash*


@pytest.fixture(scope="module")
def captioner(tiny_captioner):
    return Captioner.load(tiny_captioner[0], device="cpu")


def start(captioner, **settings) -> CaptionService:
    service = CaptionService(captioner, ServiceSettings(**settings), decode_fn=MISBEHAVING)
    service.start()
    assert service.ready.wait(60), service.error
    return service


def copy_as(video: Path, folder: Path, name: str) -> Path:
    target = folder / name
    target.write_bytes(video.read_bytes())
    return target


def test_a_hanging_or_crashing_decoder_costs_only_its_own_video(captioner, tiny_captioner, tmp_path):
    _, videos = tiny_captioner
    service = start(captioner, workers=2, decode_timeout=4.0, max_batch=4, batch_wait_ms=10)
    try:
        options = captioner.options
        hang = service.submit(copy_as(videos[0], tmp_path, "hang.mp4"), "hang.mp4", options)
        crash = service.submit(copy_as(videos[0], tmp_path, "crash.mp4"), "crash.mp4", options)
        t0 = time.monotonic()
        good = [service.submit(v, v.name, options, figure=False) for v in videos[:3]]
        for job in good:
            outcome = job.future.result(timeout=60)
            assert outcome.error is None and outcome.caption.text
        assert not hang.future.done(), "the hanging video should still be decoding"
        assert time.monotonic() - t0 < 4.0, "the good videos waited for the hanging one"
        assert "the decoder process crashed (SIGKILL)" in crash.future.result(timeout=60).error
        assert "decoding timed out after 4 s" in hang.future.result(timeout=60).error
        after = service.submit(videos[3], videos[3].name, options, figure=False).future.result(timeout=60)
        assert after.error is None  # the killed decoders were replaced
    finally:
        service.close()


def test_batches_never_exceed_max_batch_and_options_are_kept_apart(captioner, tiny_captioner):
    _, videos = tiny_captioner
    service = start(captioner, workers=2, max_batch=2, batch_wait_ms=2000)
    try:
        beam1 = DecodingOptions(beam_size=1)
        # a run's options carry how the beam was chosen (a dict): still grouped by the search settings
        chosen = dataclasses.replace(captioner.options, chosen_on="val", val_cider_by_beam={"1": 0.1, "5": 0.2})
        jobs = [service.submit(v, v.name, beam1 if i % 2 else chosen, figure=False)
                for i, v in enumerate(videos)]
        outcomes = [j.future.result(timeout=60) for j in jobs]
        assert all(o.error is None for o in outcomes)
        assert max(o.batch_size for o in outcomes) == 2 and service.batches >= 3
        for video, job, outcome in zip(videos, jobs, outcomes):
            want = captioner.caption([video], beam_size=job.options.beam_size)[0]
            assert outcome.caption.text == want.text and outcome.caption.video == video.name
    finally:
        service.close()
    late = service.submit(videos[0], videos[0].name, captioner.options)
    assert late.future.result(timeout=5).error == "the server is shutting down"


def test_figure_store_keeps_the_latest_and_forgets_old_ones():
    store = FigureStore(capacity=2, ttl=0.5)
    a, b, c = (store.put(bytes([i]) * 10) for i in range(3))
    assert len({a, b, c}) == 3 and store.get(a) is None and store.get(b).result() == b"\x01" * 10
    assert len(store) == 2 and store.nbytes() == 20
    time.sleep(0.6)
    assert store.get(c) is None and len(store) == 0 and store.nbytes() == 0
    assert FigureStore(capacity=0, ttl=10).put(b"x") is None
    by_size = FigureStore(capacity=100, ttl=60, max_bytes=25)
    first, second, third = (by_size.put(b"x" * 10) for _ in range(3))
    assert by_size.get(first) is None and by_size.get(third).result() == b"x" * 10 and by_size.nbytes() == 20
    fid, future = by_size.reserve()
    assert by_size.pending() == 1 and not by_size.get(fid).done()
    future.set_result(b"y" * 10)
    assert by_size.pending() == 0 and by_size.get(second) is None and by_size.nbytes() == 20


def test_figures_are_drawn_after_the_caption_and_a_backlog_is_bounded(captioner, tiny_captioner):
    _, videos = tiny_captioner
    service = start(captioner, workers=1)
    try:
        outcome = service.submit(videos[0], videos[0].name, captioner.options).future.result(timeout=60)
        png = service.figures.get(outcome.figure_id).result(timeout=60)
        assert png.startswith(b"\x89PNG") and "figure" not in outcome.timings
    finally:
        service.close()
    service = start(captioner, workers=1, max_pending_figures=0)
    try:
        outcome = service.submit(videos[0], videos[0].name, captioner.options).future.result(timeout=60)
        assert outcome.error is None and outcome.figure_id is None and service.figures_skipped == 1
    finally:
        service.close()
