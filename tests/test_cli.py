"""The command line as a whole: exit codes, and with --json exactly one JSON document on stdout whatever ends
the command (usage errors, stage errors, bugs, Ctrl-C); FCVC_WORKDIR; shell completion of --model and --run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.shell_completion import ShellComplete
from click.testing import CliRunner

from fcvc_pipeline.cli import COMMANDS, main
from fcvc_pipeline.commands.common import (
    MODEL_CHOICES,
    LazyGroup,
    common_options,
    complete_model,
    complete_model_or_all,
    complete_run,
    run_and_exit,
)
from fcvc_pipeline.errors import ConfigError, StoppedBySignal

SCRIPT = Path(sys.executable).with_name("fcvc")  # the console script, beside the interpreter


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FCVC_WORKDIR", "_FCVC_COMPLETE", "COMP_"))}
    return {**env, "OMP_NUM_THREADS": "1", "FCVC_PROGRESS": "0", **extra}


def _run(cmd: list[str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(**extra), timeout=120)


def _one_document(stdout: str) -> dict:
    return json.loads(stdout)  # json.loads refuses anything after the document


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "extract" in result.output


def test_expected_error_exit_code_2_without_traceback(capsys):
    def boom():
        raise ConfigError(["first problem", "second problem"])

    with pytest.raises(SystemExit) as e:
        run_and_exit(boom, json_out=True, verbose=False)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert "first problem" in err and "second problem" in err and "Traceback" not in err
    doc = _one_document(out)
    assert doc["exit_code"] == 2 and doc["error"]["kind"] == "config" and doc["message"] == doc["error"]["message"]
    assert doc["error"]["problems"] == ["first problem", "second problem"] and doc["error"]["hint"] is None


def test_bug_exit_code_3(capsys):
    def bug():
        raise RuntimeError("oops")

    with pytest.raises(SystemExit) as e:
        run_and_exit(bug, json_out=False, verbose=False)
    assert e.value.code == 3
    out, err = capsys.readouterr()
    assert "rerun with -v" in err and out == ""


def test_a_stopped_stage_is_an_interrupted_document(capsys):
    def stopped():
        raise StoppedBySignal(signal.SIGTERM, "SIGTERM: stopped after 3 videos", hint="rerun to continue")

    with pytest.raises(SystemExit) as e:
        run_and_exit(stopped, json_out=True, verbose=False)
    assert e.value.code == 143
    doc = _one_document(capsys.readouterr().out)
    assert doc["error"] == {"kind": "interrupted", "message": "SIGTERM: stopped after 3 videos",
                            "hint": "rerun to continue", "signal": "SIGTERM"} and doc["exit_code"] == 143


# -- --json: one document, whatever ends the command ------------------------------------------------------
@pytest.mark.parametrize("launcher", ["script", "module"])
def test_a_usage_error_with_json_prints_a_usage_document(launcher):
    cmd = [str(SCRIPT)] if launcher == "script" else [sys.executable, "-m", "fcvc_pipeline"]
    proc = _run(cmd + ["train", "--json", "--no-such-option"])
    assert proc.returncode == 2, proc.stderr
    doc = _one_document(proc.stdout)
    assert doc["exit_code"] == 2 and doc["error"]["kind"] == "usage"
    assert "--no-such-option" in doc["error"]["message"] and doc["error"]["hint"].endswith(" train --help`")
    assert "No such option" in proc.stderr and " train [OPTIONS]" in proc.stderr  # Click's own message stays


def test_a_missing_argument_with_json_prints_a_usage_document():
    proc = _run([str(SCRIPT), "vocab", "--json"])
    assert proc.returncode == 2
    doc = _one_document(proc.stdout)
    assert doc["error"]["kind"] == "usage" and "Missing argument 'ANNOTATIONS'" in doc["error"]["message"]
    without = _run([str(SCRIPT), "vocab"])  # without --json stdout stays empty, the exit code is the same
    assert without.returncode == 2 and without.stdout == ""


def test_a_bug_outside_the_stage_is_exit_3_with_a_document(monkeypatch):
    monkeypatch.setitem(COMMANDS, "vocab", "fcvc_pipeline.commands.vocab:no_such_command")  # AttributeError
    res = CliRunner().invoke(main, ["vocab", "ann.csv", "--json"])
    assert res.exit_code == 3
    doc = _one_document(res.stdout)
    assert doc["error"]["kind"] == "internal" and "AttributeError" in doc["error"]["message"]
    assert "rerun with -v" in res.stderr
    verbose = CliRunner().invoke(main, ["vocab", "ann.csv", "--json", "-v"])
    assert verbose.exit_code == 3 and "Traceback" in verbose.stderr


def test_a_bug_inside_the_stage_is_exit_3_with_a_document(monkeypatch, tmp_path):
    import fcvc_pipeline.stages.vocab as stage

    def broken(cfg):
        raise KeyError("a bug")

    monkeypatch.setattr(stage, "run_vocab", broken)
    res = CliRunner().invoke(main, ["vocab", "ann.csv", "--workdir", str(tmp_path), "--json"])
    assert res.exit_code == 3
    doc = _one_document(res.stdout)
    assert doc["error"]["kind"] == "internal" and "KeyError" in doc["message"]


def test_ctrl_c_before_the_stage_is_exit_130_with_a_document(monkeypatch):
    def interrupted(self, ctx, name):
        raise KeyboardInterrupt

    monkeypatch.setattr(LazyGroup, "get_command", interrupted)
    res = CliRunner().invoke(main, ["vocab", "ann.csv", "--json"])
    assert res.exit_code == 130
    doc = _one_document(res.stdout)
    assert doc["error"]["kind"] == "interrupted" and doc["error"]["signal"] == "SIGINT"
    assert "interrupted" in res.stderr and "Aborted!" not in res.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_sigint_to_a_running_command_prints_the_interrupted_document(tmp_path):
    """Ctrl-C while `fcvc vocab` waits on a pipe (`--split-file <(slow producer)`): exit 130, one document."""
    ann = tmp_path / "ann.csv"
    ann.write_text("video_id,caption,split\nv1,a dog runs,train\nv2,a cat sits,test\n", encoding="utf-8")
    fifo = tmp_path / "splits.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([str(SCRIPT), "vocab", str(ann), "--split-file", str(fifo), "--workdir",
                             str(tmp_path / "w"), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())
    writer = None
    try:
        deadline = time.monotonic() + 60
        while writer is None and proc.poll() is None and time.monotonic() < deadline:
            try:  # succeeds once the command has the pipe open for reading: it is now waiting on it
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.02)
        assert writer is not None, f"the command never read the pipe (exit {proc.poll()})"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if writer is not None:
            os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    doc = _one_document(out)
    assert doc["exit_code"] == 130 and doc["error"]["kind"] == "interrupted" and doc["error"]["signal"] == "SIGINT"
    assert "interrupted" in err and "Traceback" not in err


def test_help_and_version_are_not_errors():
    assert CliRunner().invoke(main, ["vocab", "--help", "--json"]).exit_code == 0
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and "fcvc" in res.output


# -- FCVC_WORKDIR ---------------------------------------------------------------------------------------------
def test_fcvc_workdir_is_the_default_of_workdir_and_shown_in_help(tmp_path):
    seen = {}

    @click.command()
    @common_options
    def probe(workdir, json_out, verbose):
        seen["workdir"] = workdir

    assert CliRunner().invoke(probe, [], env={"FCVC_WORKDIR": str(tmp_path)}).exit_code == 0
    assert seen["workdir"] == tmp_path
    assert CliRunner().invoke(probe, ["--workdir", "elsewhere"], env={"FCVC_WORKDIR": str(tmp_path)}).exit_code == 0
    assert seen["workdir"] == Path("elsewhere")
    assert CliRunner().invoke(probe, [], env={"FCVC_WORKDIR": None}).exit_code == 0
    assert seen["workdir"] == Path("fcvc-work")
    help_text = CliRunner().invoke(main, ["vocab", "--help"]).output
    assert "env var:" in help_text and "FCVC_WORKDIR" in help_text


def test_fcvc_workdir_does_not_count_as_workdir_for_a_captioner_file(tmp_path):
    """`fcvc caption --model FILE` reads no work directory and refuses --workdir; the variable is not --workdir."""
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00")
    res = CliRunner().invoke(main, ["caption", str(video), "--model", str(tmp_path / "missing.fcvc"), "--json"],
                             env={"FCVC_WORKDIR": str(tmp_path)})
    doc = _one_document(res.stdout)
    assert res.exit_code == 2 and "drop --workdir" not in doc["message"], doc
    assert "missing.fcvc" in doc["message"]


# -- shell completion -----------------------------------------------------------------------------------------
def test_model_choices_are_the_variant_table():
    from fcvc_pipeline.models import MODEL_ALIASES, MODEL_NAMES

    assert MODEL_CHOICES == (*MODEL_NAMES, *MODEL_ALIASES)


def _complete(cli: click.Command, args: list[str], incomplete: str) -> list[str]:
    return [c.value for c in ShellComplete(cli, {}, "fcvc", "_FCVC_COMPLETE").get_completions(args, incomplete)]


def test_model_and_run_values_complete(tmp_path):
    for name in ("fcvc-cf-ia", "lstm-baseline"):
        (tmp_path / "runs" / name).mkdir(parents=True)
    (tmp_path / "runs" / "ablation.md").write_text("")

    @click.command()
    @common_options
    @click.option("--model", shell_complete=complete_model)
    @click.option("--all-model", shell_complete=complete_model_or_all)
    @click.option("--run", shell_complete=complete_run)
    def probe(**kwargs):
        pass

    assert _complete(probe, ["--model"], "fcvc-") == ["fcvc-cf-ia", "fcvc-ta", "fcvc-ia", "fcvc-all", "fcvc-final"]
    assert _complete(probe, ["--all-model"], "a") == ["all"]
    assert _complete(probe, ["--workdir", str(tmp_path), "--run"], "") == ["fcvc-cf-ia", "lstm-baseline"]
    assert _complete(probe, ["--workdir", str(tmp_path), "--run"], "l") == ["lstm-baseline"]
    assert _complete(probe, ["--workdir", str(tmp_path / "none"), "--run"], "") == []


def test_completion_through_the_installed_script(tmp_path):
    (tmp_path / "runs" / "baseline").mkdir(parents=True)
    models = _run([str(SCRIPT)], _FCVC_COMPLETE="bash_complete", COMP_WORDS="fcvc demo --model fcvc-c", COMP_CWORD="3")
    assert models.returncode == 0 and models.stdout.split() == ["plain,fcvc-cf-ia"], models.stderr
    runs = _run([str(SCRIPT)], _FCVC_COMPLETE="bash_complete", COMP_WORDS="fcvc score --run ", COMP_CWORD="3",
                FCVC_WORKDIR=str(tmp_path))
    assert runs.stdout.split() == ["plain,baseline"], runs.stderr
    train = _run([str(SCRIPT)], _FCVC_COMPLETE="bash_complete", COMP_WORDS="fcvc train --model a", COMP_CWORD="3")
    assert train.stdout.split() == ["plain,all"], train.stderr
    commands = _run([str(SCRIPT)], _FCVC_COMPLETE="bash_complete", COMP_WORDS="fcvc ex", COMP_CWORD="1")
    assert commands.stdout.split() == ["plain,export", "plain,extract"]
    source = _run([str(SCRIPT)], _FCVC_COMPLETE="bash_source")
    assert "_fcvc_completion()" in source.stdout and "complete " in source.stdout
    assert "_FCVC_COMPLETE=bash_source" in CliRunner().invoke(main, ["--help"]).output


def test_a_misspelled_choice_gets_a_suggestion():
    r = CliRunner().invoke(main, ["vocab", "x.json", "--format", "csvv"])
    assert r.exit_code == 2 and "(did you mean 'csv'?)" in r.output
    r = CliRunner().invoke(main, ["train", "--precision", "bf61"])
    assert r.exit_code == 2 and "(did you mean 'bf16'?)" in r.output
    r = CliRunner().invoke(main, ["vocab", "x.json", "--format", "zzzzzz"])
    assert r.exit_code == 2 and "did you mean" not in r.output and "is not one of" in r.output


def test_every_option_of_every_command_has_help_and_the_common_options_come_first():
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            continue
        missing = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and not p.help]
        assert not missing, f"fcvc {name}: options without help: {missing}"
        first = [p.name for p in cmd.params if isinstance(p, click.Option)][:3]
        assert first == ["workdir", "json_out", "verbose"], f"fcvc {name}: {first}"
        assert "Examples:" in (cmd.help or ""), f"fcvc {name} --help has no examples"
