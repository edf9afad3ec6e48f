"""``fcvc info``: what a feature store holds, how it was made, and whether any of it is damaged; or, given a
``.fcvc`` captioner file (``fcvc export``), what that file holds (read and checked whole: a damaged or foreign
file is exit 2 naming it).

The quick check (default) reads only metadata and ``stat``s every chunk file: it finds missing and
truncated chunks. ``--verify`` reads every byte (the Zstd checksum of each chunk and the SHA-256 of
each video), which also finds altered bytes. Damage sets the exit code to 1 and lists each video,
its file and the reason; ``fcvc extract --verify VIDEOS...`` re-extracts them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcvc_pipeline import progress
from fcvc_pipeline.errors import EXIT_ITEM_FAILURES, EXIT_OK, MissingArtifactError
from fcvc_pipeline.features.store import VIDEO_LAYOUT, FeatureStore
from fcvc_pipeline.inference.package import package_summary, read_package
from fcvc_pipeline.workdir import Workdir


@dataclass
class StoreInfo:
    path: Path
    settings: dict[str, Any]
    backbones: dict[str, Any]
    complete: int = 0
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    being_written: list[str] = field(default_factory=list)  # claim held by a live process
    interrupted: list[str] = field(default_factory=list)  # neither complete nor failed, nobody writing
    unverifiable: int = 0  # complete, written before checksums (no digest)
    damaged: dict[str, dict[str, str]] = field(default_factory=dict)  # video -> {file, reason}
    verified: bool = False  # every byte read (--verify), not only the chunk files' sizes
    size_bytes: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_ITEM_FAILURES if self.damaged else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"kind": "feature store", "path": str(self.path), "complete": self.complete,
                "failed": self.failed, "being_written": self.being_written, "interrupted": self.interrupted,
                "unverifiable": self.unverifiable, "damaged": self.damaged, "verified": self.verified,
                "size_bytes": self.size_bytes, "settings": self.settings, "backbones": self.backbones}


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def store_info(path: Path, *, verify: bool = False) -> StoreInfo:
    """Inspect the store at ``path`` (a quick check of every video, or with ``verify`` a full read)."""
    store = FeatureStore.open(path)
    info = StoreInfo(path=Path(path), settings=store.settings, backbones=store.backbone_records(), verified=verify)
    done = store.completed_ids()
    info.complete = len(done)
    info.failed = store.failures()
    for vid in store.incomplete_ids():
        (info.being_written if store.claim_held(vid) else info.interrupted).append(vid)
    for vid in progress.bar(done, desc="verifying" if verify else "checking", unit="video"):
        attrs = store.video_attrs(vid) or {}
        if attrs.get("layout") != VIDEO_LAYOUT:
            info.unverifiable += 1
        err = store.check_video(vid, full=verify)
        if err is not None:
            info.damaged[vid] = {"file": err.path, "reason": err.reason}
    info.size_bytes = _size(Path(path))
    return info


@dataclass
class CaptionerInfo:
    path: Path
    size_bytes: int
    contents: dict[str, Any]  # inference.package.package_summary
    exit_code: int = EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"kind": "captioner", "path": str(self.path), "size_bytes": self.size_bytes, **self.contents}


def captioner_info(path: Path) -> CaptionerInfo:
    """Read ``path`` as a captioner file (every check of ``Captioner.load``, nothing built) and describe it."""
    contents = package_summary(read_package(path))
    info = CaptionerInfo(path=Path(path), size_bytes=Path(path).stat().st_size, contents=contents)
    model, features, prov = contents["model"], contents["features"], contents["provenance"]
    progress.log(f"{path}: fcvc captioner (format {contents['format_version']}), {info.size_bytes / 1e6:.1f} MB")
    progress.log(f"  model: {model['name']}, {model['parameters']:,} parameters, {contents['vocabulary_size']} words, "
                 f"beam {contents['decoding'].get('beam_size')}")
    nets = ", ".join(f"{r} {b['weights']}" + (" (embedded)" if b["weights_embedded"] else "")
                     for r, b in features["backbones"].items()) or "not recorded: stored features only"
    progress.log(f"  features: {features['frames']} frames at {features['frame_size']} px, {features['dtype']}; {nets}")
    progress.log(f"  from run {prov.get('run')}, fcvc {prov.get('fcvc_version')}, torch {prov.get('torch_version')}"
                 + (f"; test CIDEr {prov['test_scores'].get('CIDEr')}" if prov.get("test_scores") else ""))
    return info


def run_info(target: Path | None, workdir: Path, *, verify: bool = False) -> StoreInfo | CaptionerInfo:
    path = Path(target) if target is not None else Workdir(workdir).features
    if path.is_file():
        return captioner_info(path)
    if not FeatureStore.exists(path):
        raise MissingArtifactError(f"{path} is not a feature store (no zarr.json with fcvc's attributes)",
                                   hint="point at <workdir>/features.zarr, or run `fcvc extract` first")
    info = store_info(path, verify=verify)
    report(info)
    return info


def report(info: StoreInfo) -> None:
    s = info.settings
    clip = s.get("clip") or {}
    progress.log(f"{info.path}: feature store, {info.size_bytes / 2**20:.1f} MiB")
    progress.log(f"  settings: {s.get('frames')} frames at {s.get('frame_size')} px, {s.get('dtype')}, "
                 f"inception {(s.get('inception') or {}).get('weights')}, "
                 f"clip {clip.get('model', 'none')} {clip.get('weights', '')}".rstrip())
    progress.log(f"  videos: {info.complete} complete, {len(info.failed)} failed, "
                 f"{len(info.being_written)} being written, {len(info.interrupted)} interrupted")
    if info.unverifiable:
        progress.log(f"  {info.unverifiable} videos were written before checksums: only missing chunks are "
                     f"detected in them (re-extract with --force to checksum them)")
    for vid, f in sorted(info.failed.items()):
        progress.log(f"  failed: {vid!r}: {f.get('path')}: {f.get('stage')}: {f.get('error')}")
    how = "every byte read" if info.verified else "chunk files checked; --verify reads every byte"
    if info.damaged:
        progress.log(f"  DAMAGED: {len(info.damaged)} videos ({how}); `fcvc extract --verify VIDEOS...` "
                     f"re-extracts them:")
        for vid, d in sorted(info.damaged.items()):
            progress.log(f"    {vid!r}: {d['file']}: {d['reason']}")
    else:
        progress.log(f"  no damage found ({how})")
