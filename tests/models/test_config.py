import json

import pytest

from fcvc_pipeline.errors import ConfigError
from fcvc_pipeline.models import MODEL_NAMES, ModelConfig, build_model, canonical_model_name
from fcvc_pipeline.models.fcvc import choose_region_mode
from tests.models.tiny_models import tiny_config


def test_canonical_names_and_alias():
    assert canonical_model_name("fcvc-final") == "fcvc-cf-ia"
    assert canonical_model_name("FCVC-TA") == "fcvc-ta"
    for name in MODEL_NAMES:
        assert canonical_model_name(name) == name


def test_unknown_model_lists_the_names():
    with pytest.raises(ConfigError) as e:
        canonical_model_name("transformer")
    for name in MODEL_NAMES:
        assert name in str(e.value)
    assert "fcvc-final" in str(e.value)


def test_alias_is_stored_canonically():
    assert ModelConfig(model="fcvc-final", vocab_size=10).model == "fcvc-cf-ia"


def test_validate_reports_every_problem_at_once():
    cfg = ModelConfig(model="nope", vocab_size=2, d_model=30, heads=8, dropout=1.5, clip_dim=-1, eos_id=0)
    problems = cfg.validate()
    text = "\n".join(problems)
    for needle in ("unknown name", "vocab_size", "dropout", "clip_dim", "must differ"):
        assert needle in text, text
    with pytest.raises(ConfigError) as e:
        build_model(cfg)
    assert len(e.value.problems) == len(problems)


def test_heads_must_divide_d_for_attention_models_only():
    assert any("divisible" in p for p in ModelConfig(model="fcvc-ta", vocab_size=10, d_model=30).validate())
    assert ModelConfig(model="fcvc", vocab_size=10, d_model=30).validate() == []


def test_cf_ia_needs_two_layers():
    assert any("layers >= 2" in p for p in ModelConfig(model="fcvc-cf-ia", vocab_size=10, layers=1).validate())


def test_json_round_trip_and_unknown_fields():
    cfg = tiny_config("fcvc-all", attn_mu=0.5)
    again = ModelConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        ModelConfig.from_json({**cfg.to_json(), "colour": "red"})


def test_layer_plans_follow_table_4():
    def kinds(model):
        out = []
        for p in tiny_config(model).layer_plan():
            k = ("TA" if p.temporal_context else "ta" if p.temporal else "") + ("+IA" if p.inherited else "")
            out.append(k or "-")
        return out

    assert kinds("fcvc") == ["-"] * 4
    assert kinds("fcvc-ta") == ["TA"] * 4
    assert kinds("fcvc-ia") == ["ta+IA"] * 4  # TA only supplies alpha
    assert kinds("fcvc-all") == ["TA", "TA", "TA+IA", "TA+IA"]
    assert kinds("fcvc-cf-ia") == ["TA", "TA", "+IA", "+IA"]
    # IA inherits from the last TA layer at or below it
    assert [p.alpha_from for p in tiny_config("fcvc-cf-ia").layer_plan()] == [None, None, 1, 1]
    assert [p.alpha_from for p in tiny_config("fcvc-all").layer_plan()] == [None, None, 2, 3]


def test_uses_regions_and_frame_attention():
    assert [tiny_config(m).uses_regions for m in MODEL_NAMES] == [True, False, False, True, True, False]
    assert [tiny_config(m).uses_frame_attention for m in MODEL_NAMES] == [True, False, True, True, True, False]


def test_region_mode_choice_follows_the_cost():
    # one caption of 21 steps per video: scoring raw regions is cheaper than projecting all 960 of them
    assert choose_region_mode(64, 960, 2048, 512, row_steps=64 * 21, ia_layers=2) == "fold"
    # 40 captions per video (a training batch packs whole videos): project once, share
    assert choose_region_mode(2, 960, 2048, 512, row_steps=80 * 21, ia_layers=2) == "project"
