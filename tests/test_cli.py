import json

import pytest
from click.testing import CliRunner

from fcvc_pipeline.cli import main
from fcvc_pipeline.commands.common import run_and_exit
from fcvc_pipeline.errors import ConfigError


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
    assert json.loads(out)["exit_code"] == 2


def test_bug_exit_code_3(capsys):
    def bug():
        raise RuntimeError("oops")

    with pytest.raises(SystemExit) as e:
        run_and_exit(bug, json_out=False, verbose=False)
    assert e.value.code == 3
    assert "rerun with -v" in capsys.readouterr().err
