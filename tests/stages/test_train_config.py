"""`fcvc train` as a command: --config files (a run's config.json repeats the run; flags given on the command
line win over the file), help text for every option, and options checked before any work."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from fcvc_pipeline.cli import main
from fcvc_pipeline.commands.train import train
from fcvc_pipeline.stages import train as train_stage
from tests.tiny import make_tiny_workdir

FLAGS = ["--model", "fcvc-ta", "--epochs", "2", "--d-model", "16", "--layers", "2", "--batch-size", "6",
         "--lr", "0.003", "--seed", "1", "--ema", "0.9", "--label-smoothing", "0.05", "--select-beams", "1,2",
         "--device", "cpu"]


def _comparable(path):
    return [{k: v for k, v in json.loads(x).items() if "seconds" not in k and "sec_per" not in k}
            for x in path.read_text().splitlines()]


def test_a_runs_config_json_repeats_the_run(tmp_path, one_thread):
    w = make_tiny_workdir(tmp_path)
    runner = CliRunner()
    a = runner.invoke(main, ["train", "--workdir", str(w), "--run", "a", *FLAGS])
    assert a.exit_code == 0, a.output
    b = runner.invoke(main, ["train", "--config", str(w / "runs" / "a" / "config.json"), "--run", "b"])
    assert b.exit_code == 0, b.output
    conf = {r: json.loads((w / "runs" / r / "config.json").read_text()) for r in "ab"}
    assert conf["b"]["train"] == {**conf["a"]["train"], "run": "b"}
    assert conf["b"]["train"]["select_beams"] == [1, 2] and conf["b"]["train"]["seed"] == 1
    assert conf["b"]["model"] == conf["a"]["model"]
    assert _comparable(w / "runs" / "b" / "metrics.jsonl") == _comparable(w / "runs" / "a" / "metrics.jsonl")


def test_flags_given_on_the_command_line_override_the_file(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(train_stage, "run_train", lambda cfg: seen.append(cfg))
    f = tmp_path / "exp.toml"
    f.write_text(f'workdir = "{tmp_path / "w"}"\nepochs = 7\nlr = 0.01\nseed = 3\nwarmup-steps = 5\n'
                 f'select-beams = [2]\nema = 0.5\n')
    out = CliRunner().invoke(main, ["train", "--config", str(f), "--epochs", "2", "--seed", "0", "--ema", "0.99"])
    assert out.exit_code == 0, out.output
    (cfg,) = seen
    assert (cfg.epochs, cfg.seed, cfg.ema_decay) == (2, 0, 0.99)  # given, even where equal to the default
    assert (cfg.lr, cfg.warmup_steps, cfg.select_beams, cfg.workdir) == (0.01, 5, (2,), tmp_path / "w")  # the file
    assert cfg.batch_size == 64 and cfg.model == "fcvc-cf-ia"  # neither: the defaults


def test_an_unknown_key_or_a_wrong_type_stops_before_any_work(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text(f'workdir = "{tmp_path / "w"}"\nepoch = 3\ndropout = "high"\n')
    out = CliRunner().invoke(main, ["train", "--config", str(f), "--json"])
    assert out.exit_code == 2
    assert f"{f}: unknown key 'epoch' (did you mean 'epochs'?)" in out.output
    assert "'dropout' must be a number" in out.output
    assert not (tmp_path / "w").exists()


def test_every_option_has_help_and_its_default_shown():
    assert train.params[:3] == [p for p in train.params if p.name in ("workdir", "json_out", "verbose")]
    for p in train.params:
        if isinstance(p, click.Option):
            assert p.help, f"{p.opts} has no help"
            if p.default is not None and not p.is_flag:
                assert p.show_default, f"{p.opts} does not show its default"
    assert "Examples:" in train.help and "--config" in train.help and "--resume" in train.help


@pytest.mark.parametrize("args, message", [
    (["--model", "fcvc-ca-ia"], "did you mean 'fcvc-cf-ia'?"),
    (["--epochs", "0", "--dropout", "1.5"], "--dropout must be in [0, 1)"),
])
def test_bad_options_are_named_before_any_work(tmp_path, args, message):
    out = CliRunner().invoke(main, ["train", "--workdir", str(tmp_path / "w"), *args])
    assert out.exit_code == 2 and message in out.output
    assert not (tmp_path / "w").exists()
