"""Config files for `fcvc train --config`: keys, aliases, types, the config.json layout, and the errors that
name the file and the key."""

import json
from pathlib import Path

import pytest

from fcvc_pipeline.errors import ConfigError, InputError
from fcvc_pipeline.training.config import TrainConfig, read_config_file


def test_toml_keys_take_flag_or_field_spellings(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text('model = "fcvc-ta"\nmax-steps = 40\nema = 0.5\nlr = 1\nselect_beams = [1, 2]\nwarmup_steps = 3\n'
                 'workdir = "work"\n')
    assert read_config_file(f) == {"model": "fcvc-ta", "max_steps": 40, "ema_decay": 0.5, "lr": 1.0,
                                   "select_beams": (1, 2), "warmup_steps": 3, "workdir": Path("work")}


def test_unknown_keys_are_named_with_a_suggestion(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text("epoch = 3\nmax-step = 4\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError) as e:
        read_config_file(f)
    problems = e.value.problems
    assert f"{f}: unknown key 'epoch' (did you mean 'epochs'?)" in problems
    assert f"{f}: unknown key 'max-step' (did you mean 'max-steps'?)" in problems
    assert any("'learning_rate'" in p for p in problems) and len(problems) == 3


def test_a_wrong_type_is_named(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text('epochs = "3"\nbatch-size = 2.5\nlr = true\nselect_beams = "1,3"\n')
    with pytest.raises(ConfigError) as e:
        read_config_file(f)
    text = str(e.value)
    for key, what in (("epochs", "an integer"), ("batch-size", "an integer"), ("lr", "a number"),
                      ("select_beams", "a list of integers")):
        assert f"'{key}' must be {what}" in text
    assert str(f) in text


def test_a_runs_config_json_is_read_from_its_train_table(tmp_path):
    cfg = TrainConfig(workdir=tmp_path, run="a", epochs=3, max_steps=None, resume=True, force=True)
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"train": {**cfg.settings_json(), "resume": True, "force": True},  # older files had these
                             "model": {"d_model": 512}, "inputs": {}, "extensions": []}))
    values = read_config_file(f)
    assert TrainConfig(**values) == TrainConfig(workdir=tmp_path, run="a", epochs=3)  # resume/force: not settings
    f.write_text(json.dumps({"train": {}, "modle": {}}))
    with pytest.raises(ConfigError, match="unknown key 'modle' \\(did you mean 'model'\\?\\)"):
        read_config_file(f)


def test_unreadable_files_are_input_errors(tmp_path):
    for name, text, match in (("exp.yaml", "a: 1", ".toml or .json"), ("exp.toml", "epochs = ", "not valid TOML"),
                              ("exp.json", "{", "not valid JSON"), ("exp.json", "[1]", "table of options")):
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=match):
            read_config_file(tmp_path / name)


def test_a_misspelled_model_gets_a_suggestion():
    problems = TrainConfig(model="fcvc-ca-ia").validate()
    assert any("did you mean 'fcvc-cf-ia'?" in p for p in problems)
    assert any("did you mean 'bf16'?" in p for p in TrainConfig(precision="bf61").validate())
