"""The torchrun command lines the docs show hand every fcvc option to fcvc.

torchrun checks the options after ``-m fcvc_pipeline`` against its own and stops at an abbreviation of
one (``--run`` of ``--run-path``), so the documented form puts ``--`` after the module name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys

import click
import pytest
from torch.distributed import run as torchrun

from fcvc_pipeline.cli import COMMANDS, main
from tests.tiny import make_tiny_workdir

DOCS = ("README.md", "docs/extract.md", "docs/score.md", "docs/vocab.md", "docs/models.md")


def documented_lines(repo_root) -> list[tuple[str, list[str]]]:
    """(where, torchrun's arguments) of every torchrun line in the docs and in the commands' help."""
    texts = {name: (repo_root / name).read_text(encoding="utf-8") for name in DOCS if (repo_root / name).is_file()}
    ctx = click.Context(main)
    for name in COMMANDS:
        texts[f"fcvc {name} --help"] = main.get_command(ctx, name).help or ""
    found = []
    for where, text in texts.items():
        for match in re.finditer(r"torchrun ([^\n#`]*-m fcvc_pipeline[^\n#`]*)", text):
            found.append((where, shlex.split(match.group(1))))
    return found


def _parse(args: list[str]):
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            return torchrun.parse_args(args)
        except SystemExit:
            raise AssertionError(f"torchrun refused {shlex.join(args)}: {err.getvalue().strip().splitlines()[-1]}")


def test_every_option_survives_the_documented_torchrun_lines(repo_root):
    lines = documented_lines(repo_root)
    assert {where for where, _ in lines} >= {"README.md", "docs/extract.md", "fcvc train --help"}
    ctx = click.Context(main)
    for where, args in lines:
        module = args.index("-m") + 1
        assert args[module] == "fcvc_pipeline", where
        shown = args[module + 1:]
        shown = shown[1:] if shown[:1] == ["--"] else shown  # what fcvc should receive
        options = sorted({o for p in main.get_command(ctx, shown[0]).params if isinstance(p, click.Option)
                          for o in p.opts if o.startswith("--")})
        for option in options:  # the line as shown, plus any one option a person might add
            ns = _parse([*args, option, "1"])
            received = ns.training_script_args
            received = received[1:] if received[:1] == ["--"] else received  # argparse may keep the `--`
            assert ns.module and ns.training_script == "fcvc_pipeline", where
            assert received == [*shown, option, "1"], (where, option)
    # the check can fail: without the `--`, torchrun stops at --run
    with pytest.raises(AssertionError, match="ambiguous option: --run"):
        _parse(["--nproc-per-node", "1", "-m", "fcvc_pipeline", "train", "--run", "x"])


def test_fcvc_accepts_the_separator_that_torchrun_may_pass_on():
    # argparse drops the `--` on the Python versions we know, but nothing promises it: fcvc must take both
    out = subprocess.run([sys.executable, "-m", "fcvc_pipeline", "--", "train", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--run TEXT" in out.stdout


@pytest.mark.slow
def test_documented_torchrun_form_trains_a_named_run(tmp_path):
    make_tiny_workdir(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--standalone",
           "-m", "fcvc_pipeline", "--", "train", "--run", "mine", "--workdir", str(tmp_path), "--model", "fcvc-ta",
           "--epochs", "1", "--d-model", "16", "--layers", "2", "--batch-size", "4", "--select-beams", "",
           "--device", "cpu", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FCVC_PROGRESS": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["epochs"] == 1
    assert (tmp_path / "runs" / "mine" / "best.pt").is_file()
