"""``fcvc bench data``: what training and the data-sized chores cost as the number of videos grows (issue "Scale").

One run measures, side by side on synthetic work directories of ``--sizes`` videos each:

1. **Stores.** ``<data-dir>/videos-<N>/`` holds ``features.zarr`` (random finite features at the paper's
   shapes, written with ``FeatureStore.write_video`` exactly as extraction writes them), a ``vocab/`` with
   ``--captions-per-video`` random captions per video over a ``--words``-word vocabulary (video ``i`` is
   validation when ``i % 20 == 0``, test when ``i % 20 == 1``, training otherwise), an MSR-VTT-like
   ``annotations.json`` of the same captions, a captions file for the test videos, and one empty
   placeholder "video file" per video (its size and modification time recorded in the store, as
   extraction records a real file's). Video ``i``'s numbers depend on the seed and ``i`` only, so a new
   store takes the videos it shares with the existing store that has most of them as hard links of that
   one's chunk files (no second copy on disk); only the others are written, by ``--writers`` processes. ``bench-data.json`` beside
   the store records the generation parameters; a rerun with the same parameters reuses the store.
2. **Training memory and speed.** ``fcvc train --max-steps --steps`` as a subprocess per size and
   ``--features`` mode, in ``--rounds`` interleaved rounds (the median speed, the largest peak): the peak over time of the summed proportional set size (PSS, ``smaps_rollup``) of
   the process and all its descendants (DataLoader workers included), the ``ru_maxrss`` of the main process,
   and steps per second from the run's ``metrics.jsonl`` (training seconds, validation excluded). Each store's
   training videos are read once before each run, so that the page cache holds what fits. The ranks' shared
   bank (memory mode under torchrun) goes to a cache folder of the bench's own, emptied before and after
   each run, so every run builds it the same way (its size is reported).
3. **Two ranks.** The same through ``torch.distributed.run`` with 1 and 2 processes per node (gloo on CPU,
   ``OMP_NUM_THREADS=1``) at ``--ranks-size``: the whole tree's peak PSS, 2 processes against 1.
4. **Costs that grow with the data**, in this process, best of ``--repeats``: the "up to date" check of
   ``fcvc extract`` (list the input files, open the store with its settings, ``video_status`` of every
   video: its attributes, its source file's size and time, its chunk files' sizes), the start of
   ``fcvc train`` before the bank is loaded (vocabulary, caption table, store, the usable videos, the
   features' fingerprint), ``fcvc score``'s set-up for a captions file of the test split (references,
   reading the file, the cache key's hashes) and ``fcvc vocab`` on the annotation file. A least-squares line
   per item (seconds against videos) is projected to 100,000 videos, and the exponent of a log-log fit says
   whether the growth is linear.

Memory mode at a size whose bank would not fit in the available memory (``MEMORY_SKIP_FACTOR`` times the
bank plus ``PROCESS_BYTES``) is skipped with the reason in the JSON, never attempted.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import Manifest, atomic_write_json, file_sha256, fingerprint, write_manifest
from fcvc_pipeline.captions.vocabulary import (
    SPECIALS,
    CaptionRow,
    Vocabulary,
    load_captions,
    load_vocabulary,
    references_by_video,
    save_vocab_dir,
)
from fcvc_pipeline.commands.common import common_options, parse_int_list, run_and_exit
from fcvc_pipeline.errors import ConfigError, FilesystemError, require
from fcvc_pipeline.evaluation.metrics import read_captions_file
from fcvc_pipeline.features.loop import video_status
from fcvc_pipeline.features.store import FLOAT_ARRAYS, FeatureStore
from fcvc_pipeline.features.video import list_videos
from fcvc_pipeline.models.variants import variant
from fcvc_pipeline.naming import safe_name
from fcvc_pipeline.stages.train import BANK_CACHE_ENV
from fcvc_pipeline.stages.vocab import VocabConfig, run_vocab
from fcvc_pipeline.training.batches import resolve_training_videos
from fcvc_pipeline.workdir import Workdir, read_metrics

GENERATOR_VERSION = 1  # bump when the generated data changes for the same parameters
META_FILE = "bench-data.json"
MODES = ("memory", "stream")
PARTS = ("train", "ranks", "growth")
GROWTH_ITEMS = ("up_to_date_check", "train_startup", "score_setup", "vocab")
PROJECT_TO = 100_000
GB = 1e9
GiB = 1 << 30
SOURCE_MTIME_NS = 1_700_000_000_000_000_000  # every placeholder video file's modification time
# memory mode is tried only when this many banks (+ PROCESS_BYTES per process) fit in the available memory (the
# bank is filled in place, and the ranks of one machine share one mapped copy)
MEMORY_SKIP_FACTOR = 1.25
PROCESS_BYTES = 2 * GiB  # what one training process holds besides the bank (torch, model, optimizer)
POOL_AT_LEAST = 64  # fewer new videos than this are written in this process
MSRVTT_SPLIT = {"train": "train", "val": "validate", "test": "test"}

TARGETS = {
    "stream_peak_flat": 0.10,  # |stream peak at N / at the smallest size - 1| at most
    "memory_peak_to_bank": 1.2,  # at most
    "stream_to_memory_steps_per_second": 0.9,  # at least
    "two_ranks_memory": 1.2,  # at most: a node's memory with 2 ranks over 1
    "growth_exponent": 1.15,  # at most: the log-log slope of every data-sized cost ("linear")
    "up_to_date_check_seconds_at_100000": 60.0,  # at most
}


# -- configuration -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataShapes:
    frames: int = 15
    regions: int = 64
    frame_dim: int = 2048
    region_dim: int = 2048
    clip_dim: int = 4096  # 0: no clip features
    dtype: str = "float16"  # the store's dtype setting (what extraction writes by default)

    def arrays(self) -> dict[str, tuple[int, ...]]:
        out = {"frame_features": (self.frames, self.frame_dim),
               "region_features": (self.frames, self.regions, self.region_dim)}
        if self.clip_dim:
            out["clip_features"] = (self.frames, self.clip_dim)
        return out

    def video_bytes(self, *, regions: bool = True) -> int:
        """Bytes of one video's features as the store holds them (decoded), without frame indices."""
        item = np.dtype(self.dtype).itemsize
        return sum(math.prod(s) * item for name, s in self.arrays().items() if regions or name != "region_features")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DataBenchConfig:
    data_dir: Path
    sizes: tuple[int, ...] = (500, 2000, 8000)
    modes: tuple[str, ...] = MODES
    parts: tuple[str, ...] = PARTS
    shapes: DataShapes = field(default_factory=DataShapes)
    captions_per_video: int = 5
    words: int = 500
    model: str = "fcvc-cf-ia"
    d_model: int = 512
    steps: int = 5
    rounds: int = 1
    batch_size: int = 64
    device: str = "auto"
    loader_workers: int | None = None
    ranks_size: int | None = None  # default: the smallest size
    repeats: int = 3
    writers: int = 2
    min_free_gb: float = 10.0
    poll: float = 0.1
    timeout: float = 7200.0
    seed: int = 0

    @property
    def ranks_at(self) -> int:
        return self.ranks_size if self.ranks_size is not None else min(self.sizes)

    def validate(self) -> list[str]:
        p = []
        if not self.sizes:
            p.append("--sizes names no size")
        if any(n < 10 for n in self.sizes):
            p.append(f"--sizes must each be at least 10 videos (got {', '.join(map(str, self.sizes))}): "
                     f"every split needs a video")
        if len(set(self.sizes)) != len(self.sizes):
            p.append("--sizes lists a size twice")
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            p.append(f"--modes must name some of {', '.join(MODES)} (got {', '.join(self.modes) or 'none'})")
        bad = [x for x in self.parts if x not in PARTS]
        if bad:
            p.append(f"--parts must name some of {', '.join(PARTS)} (got {', '.join(bad)})")
        if self.ranks_size is not None and "ranks" in self.parts and self.ranks_size not in self.sizes:
            p.append(f"--ranks-size {self.ranks_size} is not one of --sizes")
        s = self.shapes
        if min(s.frames, s.regions, s.frame_dim, s.region_dim) < 1 or s.clip_dim < 0:
            p.append("--frames, --regions, --frame-dim and --region-dim must be positive, --clip-dim >= 0")
        if self.captions_per_video < 1 or self.words < 10:
            p.append("--captions-per-video must be >= 1 and --words >= 10")
        if min(self.steps, self.rounds, self.batch_size, self.d_model, self.repeats, self.writers) < 1:
            p.append("--steps, --rounds, --batch-size, --d-model, --repeats and --writers must be positive")
        if self.loader_workers is not None and self.loader_workers < 0:
            p.append("--loader-workers must be >= 0")
        if self.min_free_gb < 0 or self.poll <= 0 or self.timeout <= 0:
            p.append("--min-free-gb must be >= 0, --poll and --timeout positive")
        try:
            variant(self.model)
        except ConfigError as e:
            p.extend(e.problems)
        return p


def generation_params(cfg: DataBenchConfig) -> dict[str, Any]:
    """What the generated data depends on (the number of videos aside: a larger store extends a smaller one)."""
    return {"generator": GENERATOR_VERSION, "seed": cfg.seed, "shapes": cfg.shapes.to_json(),
            "captions_per_video": cfg.captions_per_video, "words": cfg.words}


def store_settings(params: dict[str, Any]) -> dict[str, Any]:
    shapes = params["shapes"]
    return {"frames": shapes["frames"], "dtype": shapes["dtype"], "synthetic": "fcvc bench data",
            "bench_data": fingerprint(params)}


# -- the synthetic data --------------------------------------------------------------------------------------
def video_id(i: int) -> str:
    return f"video{i:06d}"


def split_of(i: int) -> str:
    return "val" if i % 20 == 0 else "test" if i % 20 == 1 else "train"


def split_counts(n: int) -> dict[str, int]:
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(n):
        counts[split_of(i)] += 1
    return counts


def word_list(seed: int, n: int) -> list[str]:
    """``n`` distinct made-up words (two or three consonant-vowel syllables), the same for a seed."""
    rng = np.random.default_rng([seed, 1])
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < n:
        k = 2 + int(rng.integers(0, 2))
        words.add("".join(syllables[j] for j in rng.integers(0, len(syllables), k)))
    return sorted(words)


def video_captions(params: dict[str, Any], words: list[str], i: int) -> list[str]:
    rng = np.random.default_rng([params["seed"], 2, i])
    out = []
    for _ in range(params["captions_per_video"]):
        picked = [words[j] for j in rng.integers(0, len(words), int(rng.integers(5, 13)))]
        out.append(" ".join(picked).capitalize() + ".")
    return out


def video_arrays(params: dict[str, Any], i: int) -> dict[str, np.ndarray]:
    """Video ``i``'s features: uniform in [0, 1) (non-negative like pooled CNN features), finite."""
    rng = np.random.default_rng([params["seed"], 3, i])
    shapes = DataShapes(**params["shapes"])
    arrays: dict[str, np.ndarray] = {"frame_indices": np.arange(shapes.frames, dtype=np.int32) * 2}
    for name, shape in shapes.arrays().items():
        arrays[name] = rng.random(shape, dtype=np.float32).astype(shapes.dtype)
    return arrays


def source_attrs(work: Path, i: int) -> dict[str, Any]:
    """The attributes extraction records about the source file (here: the empty placeholder)."""
    return {"source": str(work / "videos" / f"{video_id(i)}.mp4"), "source_size": 0,
            "source_mtime_ns": SOURCE_MTIME_NS, "num_frames": 30 * 10, "fps": 30.0}


def write_videos(store_path: str, work: str, params: dict[str, Any], indices: list[int]) -> int:
    """Write the given videos into the store (a writer process's share; also run in this process)."""
    store = FeatureStore.open(store_path, mode="a")
    for i in indices:
        store.write_video(video_id(i), video_arrays(params, i), source_attrs(Path(work), i))
    return len(indices)


def link_video(src_store: Path, dst_store: Path, work: Path, i: int) -> None:
    """Video ``i`` of a smaller store into this one: chunk files hard-linked (copied where a link is refused),
    metadata copied, its source attribute pointing at this work directory's placeholder; the group's own
    metadata (which says "complete") last."""
    name = safe_name(video_id(i))
    src, dst = src_store / "videos" / name, dst_store / "videos" / name
    for root, _, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            if rel == Path(".") and f == "zarr.json":
                continue
            if f == "zarr.json":
                shutil.copyfile(Path(root) / f, dst / rel / f)
                continue
            try:
                os.link(Path(root) / f, dst / rel / f)
            except OSError:
                shutil.copyfile(Path(root) / f, dst / rel / f)
    meta = json.loads((src / "zarr.json").read_text(encoding="utf-8"))
    meta.setdefault("attributes", {})["source"] = source_attrs(work, i)["source"]
    (dst / "zarr.json").write_text(json.dumps(meta), encoding="utf-8")


@dataclass
class StorePlan:
    videos: int
    work: Path
    reuse: bool
    base: Path | None = None  # a smaller store whose videos this one links
    base_videos: int = 0

    @property
    def new_videos(self) -> int:
        return 0 if self.reuse else self.videos - self.base_videos


def read_meta(work: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((work / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def reusable(work: Path, params: dict[str, Any], videos: int) -> bool:
    meta = read_meta(work)
    if meta is None or meta.get("params") != params or meta.get("videos") != videos:
        return False
    if not FeatureStore.exists(work / "features.zarr") or not (work / "vocab" / "manifest.json").is_file():
        return False
    return len(FeatureStore.open(work / "features.zarr").completed_ids()) == videos


def plan_stores(cfg: DataBenchConfig) -> list[StorePlan]:
    """Reuse, extend or generate each size; the free disk is checked before anything is written."""
    params = generation_params(cfg)
    done: dict[int, Path] = {}  # stores with these parameters: existing ones, and those planned in this run
    planned: set[Path] = set()
    if cfg.data_dir.is_dir():
        for d in cfg.data_dir.iterdir():
            meta = read_meta(d) if d.is_dir() else None
            if meta and meta.get("params") == params and isinstance(meta.get("videos"), int):
                done[meta["videos"]] = d
    plans = []
    for n in sorted(cfg.sizes):
        work = cfg.data_dir / f"videos-{n}"
        if reusable(work, params, n):
            plans.append(StorePlan(n, work, True))
        else:  # link the most videos any other complete store (smaller or larger) has in common with this one
            others = [m for m, d in done.items() if d != work and (d in planned or reusable(d, params, m))]
            best = max(others, key=lambda m: min(m, n), default=None)
            plans.append(StorePlan(n, work, False, done[best] if best is not None else None,
                                   min(best, n) if best is not None else 0))
        done[n] = work
        planned.add(work)
    new = sum(p.new_videos for p in plans)
    need = new * (cfg.shapes.video_bytes() + 4 * cfg.shapes.frames) * 1.02  # raw size: an upper bound
    probe = cfg.data_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if new and free - need < cfg.min_free_gb * GB:
        sizes = ", ".join(f"{p.videos} ({p.new_videos} new videos)" for p in plans if p.new_videos)
        raise FilesystemError(
            str(cfg.data_dir), f"generating the stores of {sizes} needs up to {need / GB:.1f} GB, which would "
                               f"leave {(free - need) / GB:.1f} GB of the {free / GB:.1f} GB free (at least "
                               f"{cfg.min_free_gb:g} GB must stay free)", errno_code=28,
            hint="pick smaller --sizes or shapes, another --data-dir, or free some space")
    return plans


def generate_store(cfg: DataBenchConfig, plan: StorePlan) -> dict[str, Any]:
    params = generation_params(cfg)
    work = plan.work
    if work.exists():
        shutil.rmtree(work)  # a stale or partial store of this bench (its name is the bench's)
    t0 = time.perf_counter()
    (work / "videos").mkdir(parents=True)
    for i in range(plan.videos):
        placeholder = work / "videos" / f"{video_id(i)}.mp4"
        placeholder.touch()
        os.utime(placeholder, ns=(SOURCE_MTIME_NS, SOURCE_MTIME_NS))
    store = FeatureStore.create(work / "features.zarr", store_settings(params))
    linked_from = None
    t_link = time.perf_counter()
    if plan.base is not None and plan.base_videos:
        linked_from = str(plan.base)
        for i in progress.bar(range(plan.base_videos), desc=f"linking {plan.base_videos} videos", unit="video"):
            link_video(plan.base / "features.zarr", store.path, work, i)
    link_seconds = time.perf_counter() - t_link
    todo = list(range(plan.base_videos, plan.videos))
    writers = min(cfg.writers, max(1, len(todo) // 16))
    t_write = time.perf_counter()
    if len(todo) < POOL_AT_LEAST or writers == 1:
        writers = 1
        for k in progress.bar(range(0, len(todo), 16), desc=f"writing {len(todo)} videos", unit="batch"):
            write_videos(str(store.path), str(work), params, todo[k:k + 16])
    else:
        chunks = [todo[k:k + 16] for k in range(0, len(todo), 16)]
        with multiprocessing.get_context("spawn").Pool(writers) as pool, \
                progress.bar(total=len(todo), desc=f"writing {len(todo)} videos ({writers} writers)",
                             unit="video") as bar:
            for written in pool.imap_unordered(_write_chunk, [(str(store.path), str(work), params, c) for c in chunks]):
                bar.update(written)
    write_seconds = time.perf_counter() - t_write
    write_captions(cfg, params, work, plan.videos)
    meta = {"params": params, "videos": plan.videos, "seconds": time.perf_counter() - t0,
            "write_seconds": write_seconds, "written_videos": len(todo), "writers": writers,
            "link_seconds": link_seconds, "linked_videos": plan.base_videos, "linked_from": linked_from,
            "generated_at": time.time()}
    atomic_write_json(work / META_FILE, meta)
    return meta


def _write_chunk(job: tuple[str, str, dict[str, Any], list[int]]) -> int:
    return write_videos(*job)


def write_captions(cfg: DataBenchConfig, params: dict[str, Any], work: Path, n: int) -> None:
    """vocab/ (as ``fcvc vocab`` leaves it), the same captions as an MSR-VTT-like annotation file, and a
    captions file for the test videos (what ``fcvc score --captions`` reads)."""
    words = word_list(params["seed"], params["words"])
    rows: list[CaptionRow] = []
    sentences, videos, test_captions = [], [], {}
    for i in range(n):
        vid, split = video_id(i), split_of(i)
        caps = video_captions(params, words, i)
        videos.append({"video_id": vid, "split": MSRVTT_SPLIT[split]})
        for k, text in enumerate(caps):
            tokens = tuple(text.rstrip(".").lower().split())
            rows.append(CaptionRow(vid, split, text, tokens[:20]))
            sentences.append({"video_id": vid, "caption": text, "sen_id": i * len(caps) + k})
        if split == "test":
            test_captions[vid] = caps[0].rstrip(".").lower()
    seen = sorted({w for r in rows if r.split == "train" for w in r.tokens})
    vocab = Vocabulary(tokens=SPECIALS + tuple(seen), min_count=1, max_len=20)
    save_vocab_dir(work / "vocab", vocab, rows)
    write_manifest(work / "vocab", Manifest("vocab", 1, {"bench_data": params}, {"annotations": "synthetic"}))
    atomic_write_json(work / "annotations.json", {"videos": videos, "sentences": sentences})
    atomic_write_json(work / "test-captions.json", test_captions)


def prepare_stores(cfg: DataBenchConfig) -> dict[int, dict[str, Any]]:
    plans = plan_stores(cfg)
    out = {}
    for plan in plans:
        if plan.reuse:
            meta = read_meta(plan.work) or {}
            progress.log(f"bench data: {plan.videos} videos: reusing {plan.work} "
                         f"(generated in {meta.get('seconds', 0):.1f} s)")
        else:
            how = f", linking {plan.base_videos} from {plan.base}" if plan.base_videos else ""
            progress.log(f"bench data: {plan.videos} videos: generating {plan.work} "
                         f"({plan.new_videos} new{how})")
            meta = generate_store(cfg, plan)
            progress.log(f"  {plan.videos} videos in {meta['seconds']:.1f} s ({meta['written_videos']} written by "
                         f"{meta['writers']} writer(s) in {meta['write_seconds']:.1f} s, "
                         f"{meta['linked_videos']} linked in {meta['link_seconds']:.1f} s)")
        out[plan.videos] = describe_store(cfg, plan.work, meta, reused=plan.reuse)
    return out


def describe_store(cfg: DataBenchConfig, work: Path, meta: dict[str, Any], *, reused: bool) -> dict[str, Any]:
    n = meta["videos"]
    counts = split_counts(n)
    store = FeatureStore.open(work / "features.zarr")
    probe = store.read_video(video_id(0))
    regions = variant(cfg.model).uses_regions
    per_video = sum(getattr(probe, name).nbytes for name in FLOAT_ARRAYS
                    if getattr(probe, name) is not None and (regions or name != "region_features"))
    on_disk = sum(sum((store.video_attrs(video_id(i)) or {}).get("chunks", {}).values()) for i in range(n))
    return {"workdir": str(work), "reused": reused, "generation": meta, "videos": n, "splits": counts,
            "video_bytes": per_video, "bank_videos": counts["train"] + counts["val"],
            "bank_bytes": per_video * (counts["train"] + counts["val"]), "store_bytes": on_disk}


# -- watching a process tree's memory --------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def memory_of(pid: int) -> dict[str, int] | None:
    """Rss, Pss, Pss_Anon, Pss_File, Pss_Shmem of a process in bytes (None once it has gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
            out[key] = int(rest.split()[0]) * 1024
    return out or None


class TreeWatch(threading.Thread):
    """Samples the summed memory of a process and its descendants every ``interval`` seconds; keeps the
    sample with the largest PSS; kills the tree (SIGKILL, pid by pid) past ``timeout``."""

    def __init__(self, root: int, interval: float, timeout: float):
        super().__init__(daemon=True)
        self.root, self.interval, self.timeout = root, interval, timeout
        self.stop = threading.Event()
        self.peak: dict[str, int] = {"Pss": 0}
        self.samples = 0
        self.max_processes = 0
        self.timed_out = False
        self.t0 = time.monotonic()

    def sample(self) -> list[int]:
        pids = process_tree(self.root)
        total: dict[str, int] = {}
        alive = 0
        for pid in pids:
            mem = memory_of(pid)
            if mem is None:
                continue
            alive += 1
            for k, v in mem.items():
                total[k] = total.get(k, 0) + v
        self.samples += 1
        self.max_processes = max(self.max_processes, alive)
        if total.get("Pss", 0) > self.peak["Pss"]:
            self.peak = {**total, "processes": alive, "at": time.monotonic() - self.t0}
        return pids

    def run(self) -> None:
        while not self.stop.is_set():
            pids = self.sample()
            if time.monotonic() - self.t0 > self.timeout:
                self.timed_out = True
                kill_pids(pids)
                return
            self.stop.wait(self.interval)


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def run_watched(cmd: list[str], env: dict[str, str], *, interval: float, timeout: float) -> dict[str, Any]:
    """Run ``cmd``; its exit code, stdout, stderr's tail, wall seconds, the tree's peak memory, ru_maxrss."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        watch = TreeWatch(proc.pid, interval, timeout)
        watch.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            kill_pids(process_tree(proc.pid))
            proc.wait()
            raise
        finally:
            watch.stop.set()
            watch.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    peak = watch.peak
    return {"command": cmd, "returncode": proc.returncode, "timed_out": watch.timed_out, "wall_seconds": wall,
            "peak_pss_bytes": peak.get("Pss", 0), "peak_pss_anon_bytes": peak.get("Pss_Anon"),
            "peak_pss_file_bytes": peak.get("Pss_File"), "peak_pss_shmem_bytes": peak.get("Pss_Shmem"),
            "peak_rss_sum_bytes": peak.get("Rss"), "peak_processes": peak.get("processes", 0),
            "peak_at_seconds": peak.get("at"),
            "max_processes": watch.max_processes, "samples": watch.samples,
            "ru_maxrss_bytes": usage.ru_maxrss * 1024,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,  # with the processes it waited for (loader workers)
            "stdout": stdout, "stderr_tail": stderr[-3000:]}


def mem_info() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def warm_store(work: Path, ids: list[str]) -> dict[str, Any]:
    """Read every file of the given videos once (so that the page cache holds what fits)."""
    t0, total = time.perf_counter(), 0
    for vid in ids:
        for root, _, files in os.walk(work / "features.zarr" / "videos" / safe_name(vid)):
            for f in files:
                with open(Path(root) / f, "rb") as fh:
                    while block := fh.read(1 << 22):
                        total += len(block)
    return {"bytes": total, "seconds": time.perf_counter() - t0}


# -- training ------------------------------------------------------------------------------------------------
def train_args(cfg: DataBenchConfig, work: Path, run: str, mode: str) -> list[str]:
    args = ["train", "--workdir", str(work), "--run", run, "--model", cfg.model, "--d-model", str(cfg.d_model),
            "--max-steps", str(cfg.steps), "--batch-size", str(cfg.batch_size), "--select-beams", "",
            "--device", cfg.device, "--force", "--json", "--features", mode]
    if cfg.loader_workers is not None:
        args += ["--loader-workers", str(cfg.loader_workers)]
    return args


def skip_reason(store: dict[str, Any], mode: str, processes: int = 1) -> str | None:
    if mode == "memory":
        need = MEMORY_SKIP_FACTOR * store["bank_bytes"] + processes * PROCESS_BYTES
        available = mem_info().get("MemAvailable", 0)
        if need > available:
            return (f"the bank ({store['bank_bytes'] / GiB:.1f} GiB) would not fit: {MEMORY_SKIP_FACTOR:g} x the bank + "
                    f"{processes} x {PROCESS_BYTES / GiB:.0f} GiB = {need / GiB:.1f} GiB, "
                    f"{available / GiB:.1f} GiB available")
    return None


def training_figures(run_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Steps and training seconds from the run's metrics.jsonl; the checkpoints are deleted (disk)."""
    history = read_metrics(run_dir)
    steps = history[-1]["step"] if history else None
    seconds = sum(h["seconds"] for h in history) if history else None
    out = {"run_dir": str(run_dir), "epochs": len(history), "steps": steps, "train_seconds": seconds,
           "steps_per_second": steps / seconds if steps and seconds else None}
    try:
        doc = json.loads(result["stdout"])
        out["parameters"] = doc.get("parameters")
    except ValueError:
        out["parameters"] = None
    out["outside_training_seconds"] = result["wall_seconds"] - seconds if seconds is not None else None
    for f in run_dir.glob("*.pt"):
        f.unlink()
    return out


def train_once(cfg: DataBenchConfig, store: dict[str, Any], mode: str, *, processes: int | None = None) -> dict[str, Any]:
    """One ``fcvc train`` (``processes``: through torchrun with that many per node), watched."""
    work = Path(store["workdir"])
    n = store["videos"]
    ids = [video_id(i) for i in range(n) if split_of(i) != "test"]
    warm = warm_store(work, ids)
    cache = work / "cache" / "bench-banks"  # torchrun ranks' shared bank: built by each run, then deleted
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "FCVC_PROGRESS": "0", BANK_CACHE_ENV: str(cache)}
    if processes is None:
        run = f"bench-{mode}"
        cmd = [sys.executable, "-m", "fcvc_pipeline", *train_args(cfg, work, run, mode)]
    else:
        run = f"bench-{mode}-{processes}p"
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-port", str(free_port()), "-m", "fcvc_pipeline", "--",
               *train_args(cfg, work, run, mode)]
    load = list(os.getloadavg())  # a shared machine's other work, for reading the speed
    result = run_watched(cmd, env, interval=cfg.poll, timeout=cfg.timeout)
    row = {k: v for k, v in result.items() if k != "stdout"}
    row["warm"], row["loadavg_before"], row["loadavg_after"] = warm, load, list(os.getloadavg())
    row["bank_cache_bytes"] = sum(f.stat().st_size for f in cache.rglob("*.npy")) if cache.is_dir() else 0
    shutil.rmtree(cache, ignore_errors=True)
    if result["returncode"] != 0:
        row["error"] = f"exit code {result['returncode']}" + (" (timed out)" if result["timed_out"] else "")
        return row
    row.pop("stderr_tail")
    row.update(training_figures(Path(Workdir(work).run(run)), result))
    return row


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_training(cfg: DataBenchConfig, stores: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each size's modes in ``cfg.rounds`` interleaved rounds (the order reversed every other round), so that
    a shared machine's changing load reaches both modes alike."""
    out: dict[int, dict[str, Any]] = {}
    for n in sorted(stores):
        out[n], modes = {}, []
        for mode in cfg.modes:
            reason = skip_reason(stores[n], mode)
            if reason is not None:
                progress.log(f"bench data: {n} videos, {mode}: skipped: {reason}")
                out[n][mode] = {"skipped": reason}
            else:
                modes.append(mode)
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for r in range(cfg.rounds):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                progress.log(f"bench data: {n} videos, {mode}: training {cfg.steps} steps (round {r + 1}/{cfg.rounds})")
                rows[mode].append(row := train_once(cfg, stores[n], mode))
                log_training(f"{n} videos, {mode}", row, stores[n]["bank_bytes"])
        for mode in modes:
            out[n][mode] = combine_rounds(rows[mode])
    return out


PEAK_KEYS = ("peak_pss_bytes", "peak_pss_anon_bytes", "peak_pss_file_bytes", "peak_pss_shmem_bytes",
             "peak_rss_sum_bytes", "peak_processes", "peak_at_seconds")


def combine_rounds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode's rounds: the median steps per second, the largest peak (with that round's breakdown, and its
    index as ``peak_round``), the largest ``ru_maxrss``; every round's own row under ``rounds``. A failed
    round makes the whole an error."""
    failed = [r for r in rows if "error" in r]
    if failed:
        return {"error": failed[0]["error"], "rounds": rows}
    peak_round = max(range(len(rows)), key=lambda k: rows[k]["peak_pss_bytes"])
    speeds = [r["steps_per_second"] for r in rows]
    return {"steps_per_second": statistics.median(speeds) if None not in speeds else None,
            **{k: rows[peak_round][k] for k in PEAK_KEYS}, "peak_round": peak_round,
            "ru_maxrss_bytes": max(r["ru_maxrss_bytes"] for r in rows), "rounds": rows}


def measure_ranks(cfg: DataBenchConfig, store: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"videos": store["videos"]}
    for mode in cfg.modes:
        reason = skip_reason(store, mode, processes=2)
        if reason is not None:
            progress.log(f"bench data: two ranks, {mode}: skipped: {reason}")
            out[mode] = {"skipped": reason}
            continue
        rows = {}
        for processes in (1, 2):
            progress.log(f"bench data: {store['videos']} videos, {mode}, torchrun with {processes} process(es)")
            rows[str(processes)] = row = train_once(cfg, store, mode, processes=processes)
            log_training(f"{mode}, {processes} process(es)", row, store["bank_bytes"])
        ok = all("error" not in r for r in rows.values())
        out[mode] = {"processes": rows,
                     "two_to_one": rows["2"]["peak_pss_bytes"] / rows["1"]["peak_pss_bytes"] if ok else None}
    return out


def log_training(what: str, row: dict[str, Any], bank: int) -> None:
    if "error" in row:
        progress.warn(f"  {what}: {row['error']}: {row.get('stderr_tail', '')[-600:]}")
        return
    sps = row.get("steps_per_second")
    progress.log(f"  {what}: peak PSS {row['peak_pss_bytes'] / GiB:.2f} GiB over {row['peak_processes']} "
                 f"process(es) ({row['peak_pss_bytes'] / bank:.2f}x the {bank / GiB:.2f} GiB bank), ru_maxrss "
                 f"{row['ru_maxrss_bytes'] / GiB:.2f} GiB, {sps:.3f} steps/s, {row['wall_seconds']:.1f} s in all"
                 if sps else f"  {what}: no steps recorded")


# -- costs that grow with the data -----------------------------------------------------------------------------
def timed_parts(parts: list[tuple[str, Callable[[], Any]]]) -> dict[str, float]:
    out = {}
    for name, fn in parts:
        t0 = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t0
    return out


def growth_once(work: Path) -> dict[str, dict[str, float]]:
    """One timing of every data-sized cost at this work directory, piece by piece."""
    w = Workdir(work)
    settings = FeatureStore.open(w.features).settings  # what extraction would derive from its options
    held: dict[str, Any] = {}

    def statuses():
        bad = [s.video_id for s in held["sources"] if video_status(held["store"], s) is not None]
        if bad:
            raise RuntimeError(f"{len(bad)} videos are not up to date (e.g. {bad[:3]}): the bench's store is broken")

    out = {"up_to_date_check": timed_parts([
        ("list_videos", lambda: held.__setitem__("sources", list_videos([work / "videos"]))),
        ("store_create", lambda: held.__setitem__("store", FeatureStore.create(w.features, settings))),
        ("video_status", statuses)])}
    rows: dict[str, Any] = {}

    def resolve():
        rows["usable"] = resolve_training_videos(rows["store"], rows["rows"], w.features)[0]
        rows["read_ids"] = sorted({r.video_id for r in rows["rows"] if r.split in ("train", "val")} & set(rows["usable"]))

    out["train_startup"] = timed_parts([
        ("load_vocabulary", lambda: load_vocabulary(w.vocab)),
        ("load_captions", lambda: rows.__setitem__("rows", load_captions(w.vocab))),
        ("store_open", lambda: rows.__setitem__("store", FeatureStore.open(w.features))),
        ("resolve_training_videos", resolve),
        ("content_fingerprint", lambda: rows["store"].content_fingerprint(rows["read_ids"]))])
    score: dict[str, Any] = {}
    captions_file = work / "test-captions.json"
    out["score_setup"] = timed_parts([
        ("load_references", lambda: score.__setitem__("refs", references_by_video(load_captions(w.vocab, "test")))),
        ("read_captions_file", lambda: read_captions_file(captions_file)),
        ("references_fingerprint", lambda: fingerprint(score["refs"])),
        ("captions_sha256", lambda: file_sha256(captions_file))])
    out["vocab"] = timed_parts([
        ("run_vocab", lambda: run_vocab(VocabConfig(annotations=work / "annotations.json", workdir=work / "vocab-bench",
                                                    min_count=1, force=True)))])
    return out


def measure_growth(cfg: DataBenchConfig, stores: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    verbose = progress.is_verbose()
    for n in sorted(stores):
        progress.log(f"bench data: {n} videos: timing the data-sized costs ({cfg.repeats} repeats)")
        runs = []
        progress.configure(verbose=verbose, quiet=True)  # run_vocab's own lines, once per repeat
        try:
            for _ in range(cfg.repeats):
                runs.append(growth_once(Path(stores[n]["workdir"])))
        finally:
            progress.configure(verbose=verbose)
        out[n] = {}
        for item in GROWTH_ITEMS:
            totals = [sum(r[item].values()) for r in runs]
            best = min(range(len(runs)), key=lambda k: totals[k])
            out[n][item] = {"seconds": totals[best], "parts": runs[best][item], "all_seconds": totals}
        progress.log("  " + ", ".join(f"{item} {out[n][item]['seconds']:.3f} s" for item in GROWTH_ITEMS))
    return out


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least squares y = a + b x: (a, b); None with fewer than two distinct x."""
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def growth_fit(sizes: list[int], seconds: list[float]) -> dict[str, Any]:
    line = fit_line([float(n) for n in sizes], seconds)
    loglog = fit_line([math.log(n) for n in sizes], [math.log(s) for s in seconds]) if min(seconds) > 0 else None
    return {"sizes": sizes, "seconds": seconds,
            "intercept_seconds": line[0] if line else None, "seconds_per_video": line[1] if line else None,
            f"projected_seconds_at_{PROJECT_TO}": line[0] + line[1] * PROJECT_TO if line else None,
            "loglog_exponent": loglog[1] if loglog else None}


# -- the result ----------------------------------------------------------------------------------------------
@dataclass
class DataBenchResult:
    config: dict[str, Any]
    environment: dict[str, Any]
    stores: dict[str, Any]
    training: dict[str, Any]
    ranks: dict[str, Any] | None
    growth: dict[str, Any]
    fits: dict[str, Any]
    ratios: dict[str, Any]
    targets: dict[str, Any]
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "exit_code"}


def ratios_of(training: dict[int, dict[str, Any]], stores: dict[int, dict[str, Any]],
              ranks: dict[str, Any] | None) -> dict[str, Any]:
    def ok(row: dict[str, Any] | None) -> bool:
        return row is not None and "skipped" not in row and "error" not in row

    speed, to_bank, flat, extra = {}, {}, {}, {}
    stream_sizes = sorted(n for n in training if ok(training[n].get("stream")))
    for n in sorted(training):
        mem, stream = training[n].get("memory"), training[n].get("stream")
        if ok(mem) and ok(stream) and mem["steps_per_second"] and stream["steps_per_second"]:
            speed[str(n)] = stream["steps_per_second"] / mem["steps_per_second"]
        if ok(mem):
            to_bank[str(n)] = mem["peak_pss_bytes"] / stores[n]["bank_bytes"]
        if ok(stream):
            flat[str(n)] = stream["peak_pss_bytes"] / training[stream_sizes[0]]["stream"]["peak_pss_bytes"]
        if ok(mem) and ok(stream):
            extra[str(n)] = (mem["peak_pss_bytes"] - stream["peak_pss_bytes"]) / stores[n]["bank_bytes"]
    out: dict[str, Any] = {"stream_to_memory_steps_per_second": speed, "memory_peak_to_bank": to_bank,
                           "stream_peak_to_smallest": flat, "memory_minus_stream_peak_to_bank": extra}
    for mode in MODES:
        entry = (ranks or {}).get(mode)
        out[f"two_ranks_{mode}"] = entry.get("two_to_one") if isinstance(entry, dict) else None
    return out


def targets_of(ratios: dict[str, Any], fits: dict[str, Any]) -> dict[str, Any]:
    def verdict(values: dict[str, float], test: Callable[[float], bool]) -> bool | None:
        return all(test(v) for v in values.values()) if values else None

    flat = ratios["stream_peak_to_smallest"]
    exponents = {k: f["loglog_exponent"] for k, f in fits.items() if f["loglog_exponent"] is not None}
    projection = fits.get("up_to_date_check", {}).get(f"projected_seconds_at_{PROJECT_TO}")
    two = ratios["two_ranks_memory"]
    return {
        "stream_peak_flat": {"target": "stream peak within 10% of the smallest size's at every size",
                             "within": TARGETS["stream_peak_flat"], "values": flat,
                             "met": verdict(flat, lambda r: abs(r - 1) <= TARGETS["stream_peak_flat"])
                             if len(flat) > 1 else None},
        "memory_peak_to_bank": {"target": "memory peak <= 1.2x the bank", "at_most": TARGETS["memory_peak_to_bank"],
                                "values": ratios["memory_peak_to_bank"],
                                "met": verdict(ratios["memory_peak_to_bank"],
                                               lambda r: r <= TARGETS["memory_peak_to_bank"])},
        "stream_to_memory_steps_per_second": {
            "target": "stream/memory steps per second >= 0.9",
            "at_least": TARGETS["stream_to_memory_steps_per_second"],
            "values": ratios["stream_to_memory_steps_per_second"],
            "met": verdict(ratios["stream_to_memory_steps_per_second"],
                           lambda r: r >= TARGETS["stream_to_memory_steps_per_second"])},
        "two_ranks_memory": {"target": "memory mode, 2 ranks on one node <= 1.2x the memory of 1",
                             "at_most": TARGETS["two_ranks_memory"], "value": two,
                             "met": None if two is None else two <= TARGETS["two_ranks_memory"]},
        "growth_linear": {"target": "every data-sized cost grows linearly (log-log exponent <= 1.15)",
                          "at_most": TARGETS["growth_exponent"], "values": exponents,
                          "met": verdict(exponents, lambda k: k <= TARGETS["growth_exponent"])},
        "up_to_date_check_at_100000": {"target": "fcvc extract's up-to-date check under a minute at 100,000 videos",
                                       "at_most": TARGETS["up_to_date_check_seconds_at_100000"], "value": projection,
                                       "met": None if projection is None
                                       else projection <= TARGETS["up_to_date_check_seconds_at_100000"]},
    }


def environment() -> dict[str, Any]:
    mem = mem_info()

    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"cpus": os.cpu_count(), "mem_total_bytes": mem.get("MemTotal"),
            "mem_available_bytes": mem.get("MemAvailable"), "loadavg": list(os.getloadavg()),
            "python": platform.python_version(), "torch": pkg("torch"), "zarr": pkg("zarr"),
            "machine": platform.machine(), "kernel": platform.release(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def run_data_bench(cfg: DataBenchConfig) -> DataBenchResult:
    require(cfg.validate())
    env = environment()
    stores = prepare_stores(cfg)
    training = measure_training(cfg, stores) if "train" in cfg.parts else {}
    ranks = measure_ranks(cfg, stores[cfg.ranks_at]) if "ranks" in cfg.parts else None
    growth = measure_growth(cfg, stores) if "growth" in cfg.parts else {}
    fits = {item: growth_fit(sorted(growth), [growth[n][item]["seconds"] for n in sorted(growth)])
            for item in GROWTH_ITEMS} if growth else {}
    ratios = ratios_of(training, stores, ranks)
    targets = targets_of(ratios, fits)
    env["loadavg_after"] = list(os.getloadavg())
    failed = [row for rows in training.values() for row in rows.values() if "error" in row]
    failed += [r for m in MODES if isinstance((ranks or {}).get(m), dict)
               for r in ranks[m].get("processes", {}).values() if "error" in r]  # type: ignore[index]
    result = DataBenchResult(
        config={"data_dir": str(cfg.data_dir), "sizes": sorted(cfg.sizes), "modes": list(cfg.modes),
                "parts": list(cfg.parts), "shapes": cfg.shapes.to_json(), "captions_per_video": cfg.captions_per_video,
                "words": cfg.words, "model": cfg.model, "d_model": cfg.d_model, "steps": cfg.steps, "rounds": cfg.rounds,
                "batch_size": cfg.batch_size, "device": cfg.device, "loader_workers": cfg.loader_workers,
                "ranks_size": cfg.ranks_at if "ranks" in cfg.parts else None, "repeats": cfg.repeats,
                "writers": cfg.writers, "min_free_gb": cfg.min_free_gb, "poll_seconds": cfg.poll, "seed": cfg.seed,
                "memory_skip_rule": f"memory mode runs only when MemAvailable >= {MEMORY_SKIP_FACTOR:g} x the bank "
                                    f"+ processes x {PROCESS_BYTES / GiB:.0f} GiB"},
        environment=env, stores={str(n): s for n, s in stores.items()},
        training={str(n): rows for n, rows in training.items()}, ranks=ranks,
        growth={str(n): g for n, g in growth.items()}, fits=fits, ratios=ratios, targets=targets,
        exit_code=1 if failed else 0)
    summarize(result)
    return result


def summarize(r: DataBenchResult) -> None:
    progress.log("bench data: summary")
    for name, t in r.targets.items():
        shown = t.get("values", t.get("value"))
        if isinstance(shown, dict):
            shown = ", ".join(f"{k}: {v:.3g}" for k, v in shown.items()) or "not measured"
        elif isinstance(shown, float):
            shown = f"{shown:.3g}"
        met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        progress.log(f"  {t['target']}: {shown if shown is not None else 'not measured'} -> {met}")
    for item, f in r.fits.items():
        proj = f[f"projected_seconds_at_{PROJECT_TO}"]
        if proj is not None:
            progress.log(f"  {item}: {f['seconds_per_video'] * 1e3:.3f} ms/video, {proj:.1f} s projected at "
                         f"{PROJECT_TO:,} videos, log-log exponent {f['loglog_exponent']:.2f}")


@click.command("data")
@click.option("--sizes", default="500,2000,8000", show_default=True,
              help="Comma-separated numbers of videos (at least 10 each); one synthetic work directory each.")
@click.option("--modes", default="memory,stream", show_default=True, help="fcvc train --features modes to measure.")
@click.option("--parts", default=",".join(PARTS), show_default=True,
              help="What to measure besides making the stores: train (memory and speed per size and mode), "
                   "ranks (torchrun, 2 processes against 1), growth (the data-sized costs).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the synthetic work directories live (default: <workdir>/bench-data); reused by reruns.")
@click.option("--frames", type=int, default=15, show_default=True)
@click.option("--regions", type=int, default=64, show_default=True)
@click.option("--frame-dim", type=int, default=2048, show_default=True)
@click.option("--region-dim", type=int, default=2048, show_default=True)
@click.option("--clip-dim", type=int, default=4096, show_default=True, help="0: no clip features.")
@click.option("--captions-per-video", type=int, default=5, show_default=True)
@click.option("--words", type=int, default=500, show_default=True, help="Words of the captions' vocabulary.")
@click.option("--model", default="fcvc-cf-ia", show_default=True)
@click.option("--d-model", type=int, default=512, show_default=True)
@click.option("--steps", type=int, default=5, show_default=True, help="Training steps per run (--max-steps).")
@click.option("--rounds", type=int, default=1, show_default=True,
              help="Training runs per size and mode, in interleaved rounds (median steps/s, largest peak).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="fcvc train --device")
@click.option("--loader-workers", type=int, default=None, help="fcvc train --loader-workers (default: its own).")
@click.option("--ranks-size", type=int, default=None, help="The size the two-rank runs use (default: the smallest).")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timings of each data-sized cost (best kept).")
@click.option("--writers", type=int, default=min(4, os.cpu_count() or 1), show_default=True,
              help="Processes writing a new store's videos.")
@click.option("--min-free-gb", type=float, default=10.0, show_default=True,
              help="Refuse to generate stores that would leave less free disk than this.")
@click.option("--poll", type=float, default=0.1, show_default=True, help="Seconds between memory samples.")
@click.option("--timeout", type=float, default=7200.0, show_default=True, help="Seconds per training run.")
@click.option("--seed", type=int, default=0, show_default=True)
@common_options
def bench_data(sizes, modes, parts, data_dir, frames, regions, frame_dim, region_dim, clip_dim, captions_per_video,
               words, model, d_model, steps, rounds, batch_size, device, loader_workers, ranks_size, repeats, writers,
               min_free_gb, poll, timeout, seed, workdir, json_out, verbose):
    """Training memory and speed by --features mode, two ranks against one, and the costs that grow with the
    number of videos, on synthetic stores of --sizes videos."""

    size_list = parse_int_list(sizes, "--sizes")  # a usage error (exit 2) when not integers

    def run():
        cfg = DataBenchConfig(
            data_dir=data_dir if data_dir is not None else Path(workdir) / "bench-data",
            sizes=size_list, modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
            parts=tuple(x.strip() for x in parts.split(",") if x.strip()),
            shapes=DataShapes(frames=frames, regions=regions, frame_dim=frame_dim, region_dim=region_dim,
                              clip_dim=clip_dim),
            captions_per_video=captions_per_video, words=words, model=model, d_model=d_model, steps=steps,
            rounds=rounds, batch_size=batch_size, device=device, loader_workers=loader_workers, ranks_size=ranks_size,
            repeats=repeats, writers=writers, min_free_gb=min_free_gb, poll=poll, timeout=timeout, seed=seed)
        return run_data_bench(cfg)

    run_and_exit(run, json_out=json_out, verbose=verbose)
