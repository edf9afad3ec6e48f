"""The precision of the training features travels with the model: ``fcvc export`` records it, and
``Captioner.load`` / ``fcvc caption --run`` compute new videos' features in it unless told otherwise.

A work directory extracted in bf16 (random Inception-V3, 75 px, 4 frames, six generated videos): the
exported file says bf16, the captioner's networks run in bf16, and the features it computes for the
training videos equal the stored ones exactly (an fp32 forward does not give them). A file that predates
the record keeps the rule it was made under (fp32 on CPUs).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fcvc_pipeline.cli import main
from fcvc_pipeline.devices import CPU_BF16_ENV, dominant_precision, resolve_feature_precision
from fcvc_pipeline.errors import ConfigError
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.features.video import list_videos_in_order
from fcvc_pipeline.inference.captioner import Captioner
from fcvc_pipeline.inference.package import read_package, write_package
from fcvc_pipeline.stages.caption import CaptionConfig, run_caption
from fcvc_pipeline.stages.export import ExportConfig, run_export
from tests.tiny import generated_workdir


@pytest.fixture(scope="module")
def bf16_work(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    work, videos = generated_workdir(root, epochs=1, inception_weights="random", precision="bf16")
    out = root / "model.fcvc"
    run_export(ExportConfig(output=out, workdir=work))
    return work, videos, out


def test_dominant_precision_and_the_caption_choice(monkeypatch):
    assert dominant_precision({}) is None and dominant_precision({"unrecorded": 4}) is None
    assert dominant_precision({"bf16": 3, "fp32": 2, "unrecorded": 9}) == "bf16"
    assert dominant_precision({"bf16": 2, "fp32": 2}) == "fp32"  # a tie: the exact one
    assert dominant_precision({"fp32": 1, "bf16": 0}) == "fp32"
    assert resolve_feature_precision("recorded", "bf16", "cpu") == "bf16"
    # a model that does not record it: the rule of its time, fp32 on CPUs whatever auto is now
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert resolve_feature_precision("recorded", None, "cpu") == "fp32"
    assert resolve_feature_precision("auto", None, "cpu") == "bf16"
    assert resolve_feature_precision("recorded", None, "cuda") == "bf16"
    assert resolve_feature_precision("fp32", "bf16", "cpu") == "fp32"
    with pytest.raises(ConfigError, match="--precision"):
        resolve_feature_precision("fp16", "bf16", "cpu")


def test_the_export_records_the_precision_and_the_captioner_uses_it(bf16_work, tmp_path, one_thread):
    work, videos, out = bf16_work
    store = FeatureStore.open(work / "features.zarr")
    assert store.precision_counts() == {"bf16": 6}
    package = read_package(out)
    assert package.features.precision == "bf16" and package.features.precision_counts == {"bf16": 6}
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0 and "computed in bf16" in info.stderr, info.output
    doc = json.loads(CliRunner().invoke(main, ["info", str(out), "--json"]).stdout)
    assert doc["features"]["precision"] == "bf16"

    recorded = Captioner.load(out, device="cpu")
    assert recorded.backbones().precision == "bf16-autocast"
    overridden = Captioner.load(out, device="cpu", precision="fp32")
    assert overridden.backbones().precision == "fp32"
    with pytest.raises(ConfigError, match="precision"):
        Captioner.load(out, device="cpu", precision="half")

    # the whole corpus in its order (the store's batches): bf16 gives the stored features bit for bit
    sources = list_videos_in_order(videos)
    for captioner, equal in ((recorded, True), (overridden, False)):
        for result in captioner.in_memory_features(workers=1)(sources):
            stored = store.read_video(result.source.video_id)
            same = np.array_equal(result.arrays["region_features"], stored.region_features)
            assert same is equal, (captioner.feature_precision, result.source.video_id)


def test_caption_in_the_workdir_keeps_bf16_features_apart(bf16_work, one_thread):
    work, videos, out = bf16_work
    res = run_caption(CaptionConfig(inputs=(videos[0],), workdir=work, device="cpu", workers=1))
    caches = sorted(p.name for p in (work / "caption-features").glob("*.zarr"))
    assert len(caches) == 1 and caches[0].endswith("-bf16.zarr")
    cache = FeatureStore.open(work / "caption-features" / caches[0])
    assert cache.precision_counts() == {"bf16": 1}
    from_file = Captioner.load(out, device="cpu").caption([videos[0]], workers=1)
    assert res.items[0]["caption"] == from_file[0].text
    fp32 = run_caption(CaptionConfig(inputs=(videos[0],), workdir=work, device="cpu", workers=1, precision="fp32"))
    assert fp32.items[0]["caption"] is not None
    caches = sorted(p.name for p in (work / "caption-features").glob("*.zarr"))
    plain = [c for c in caches if not c.endswith("-bf16.zarr")]  # named as caches were before precisions
    assert len(caches) == 2 and len(plain) == 1  # fp32 went to a cache of its own
    assert FeatureStore.open(work / "caption-features" / plain[0]).precision_counts() == {"fp32": 1}
    bad = CliRunner().invoke(main, ["caption", str(videos[0]), "--workdir", str(work), "--precision", "fp16"])
    assert bad.exit_code == 2


def test_a_file_without_the_record_keeps_the_rule_of_its_time(bf16_work, tmp_path, monkeypatch, one_thread):
    """Exported before the record, its features were fp32 on a CPU: that stays, though auto is bf16 now."""
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    _, _, out = bf16_work
    package = read_package(out)
    package.features.precision, package.features.precision_counts = None, {}
    old = tmp_path / "old.fcvc"
    write_package(old, package)
    assert read_package(old).features.precision is None
    assert Captioner.load(old, device="cpu").backbones().precision == "fp32"
    info = CliRunner().invoke(main, ["info", str(old)])
    assert "precision not recorded" in info.stderr
