import json

import pytest

from fcvc_pipeline.artifacts import Manifest, atomic_write_json, check_manifest, fingerprint, read_json, write_manifest
from fcvc_pipeline.errors import InputError


def test_fingerprint_is_order_independent():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_manifest_up_to_date_and_reasons(tmp_path):
    m = Manifest("vocab", 1, {"min_count": 2}, {"annotations": "abc"})
    assert not check_manifest(tmp_path, m).up_to_date
    write_manifest(tmp_path, m)
    assert check_manifest(tmp_path, Manifest("vocab", 1, {"min_count": 2}, {"annotations": "abc"})).up_to_date
    changed = check_manifest(tmp_path, Manifest("vocab", 1, {"min_count": 3}, {"annotations": "abc"}))
    assert not changed.up_to_date and "min_count" in changed.reason and "2 -> 3" in changed.reason
    changed = check_manifest(tmp_path, Manifest("vocab", 1, {"min_count": 2}, {"annotations": "xyz"}))
    assert "input 'annotations' changed" in changed.reason
    assert "version" in check_manifest(tmp_path, Manifest("vocab", 2, {"min_count": 2}, {"annotations": "abc"})).reason


def test_corrupt_manifest_means_rerun(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    assert not check_manifest(tmp_path, Manifest("x", 1, {})).up_to_date


def test_atomic_json_and_read_errors(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "bad.json").write_text('{\n "a": 1,\n oops}')
    with pytest.raises(InputError) as e:
        read_json(tmp_path / "bad.json")
    assert "bad.json:3" in str(e.value)
