"""The trainer's state: its checkpoint layout (extensions included, absent in older files) and where early
stopping counts its patience from."""

from fcvc_pipeline.training.state import TrainState

EXTENSION = {"epoch": 8, "batch": 0, "step": 80, "changed": {"epochs": {"old": 8, "new": 20}},
             "total_steps": {"old": 80, "new": 200}}


def test_the_extensions_travel_with_the_checkpoint_and_older_files_have_none():
    s = TrainState(epoch=8, step=80, best_epoch=5, best_cider=0.5, extensions=[EXTENSION])
    ckpt = s.to_checkpoint()
    assert TrainState.from_checkpoint(ckpt) == s
    del ckpt["extensions"]  # a last.pt written before extensions existed
    assert TrainState.from_checkpoint(ckpt).extensions == []


def test_an_extension_restarts_the_patience_count_and_the_schedule_changes():
    stopped_early = TrainState(epoch=8, best_epoch=5)
    assert stopped_early.patience_start() == 5
    extended = TrainState(epoch=8, best_epoch=5, extensions=[EXTENSION])
    assert extended.patience_start() == 8  # `patience` more epochs before it can stop again
    assert TrainState(epoch=12, best_epoch=10, extensions=[EXTENSION]).patience_start() == 10  # a later best counts
    assert TrainState(epoch=8, extensions=[EXTENSION]).patience_start() is None  # no validation: no early stop
    assert extended.schedule_changes() == [(80, 200)] and extended.initial_total_steps(200) == 80
    same_total = {**EXTENSION, "total_steps": {"old": 80, "new": 80}}  # e.g. --epochs grown under a --max-steps
    assert TrainState(extensions=[same_total]).schedule_changes() == []
    assert TrainState().initial_total_steps(123) == 123
