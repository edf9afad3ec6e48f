"""The ``.fcvc`` captioner file: a trained model and everything needed to caption new videos the way it
was trained, in one file that runs no code when it is read (``fcvc export`` writes it,
:meth:`fcvc_pipeline.inference.captioner.Captioner.load` reads it).

The file is a plain safetensors file (any safetensors reader opens it). Its tensors:

- ``model/<name>``: the captioner's weights (its state dict);
- ``backbone/<role>/batchnorm/<name>``: the BatchNorm statistics re-estimated for a ``random:<seed>``
  backbone (always: they are small, and without them the network cannot be rebuilt);
- ``backbone/<role>/weights/<name>``: the weights a file-, ``imagenet``- or ``hub``-backed backbone was
  built from, only when exported with ``--embed-backbones`` (otherwise the file is identified by its
  sha256 and the downloads by their URL).

Its safetensors metadata (strings only) holds ``format`` (``fcvc-captioner``), ``format_version``,
``header`` (JSON, below) and ``digest``: :func:`~fcvc_pipeline.inference.checkpoint.content_digest` over
the format, the version, the header text and every tensor, checked on every read, so a flipped bit
anywhere is an error naming the file. The header::

    model_config   ModelConfig.to_json()
    vocabulary     Vocabulary.to_json()
    decoding       DecodingOptions.to_json(): the run's chosen decoding
    features       settings             the store's settings, as recorded (frames, frame size, sampling
                                        rule, dtype, preprocessing, each backbone's weights identity)
                   settings_fingerprint what a checkpoint of the same model records
                   backbones            per role: the store's record (kind, seed / file sha256 / url,
                                        state_sha256 of the final network) and the names of its
                                        embedded tensor groups
                   precision            fp32 or bf16: what most training videos' features were computed
                                        in (absent in files written before it was recorded), and
                   precision_counts     the store's complete videos per precision; new videos' features
                                        are computed in ``precision`` by default
    provenance     run, checkpoint sha256, training config, best validation CIDEr, test scores (when the
                   run's test split was scored with this checkpoint), fcvc / torch versions, ...

Reading is for untrusted input: the header is parsed as JSON, the tensors by safetensors (which checks
every offset against the file's length); nothing is unpickled or evaluated. A pickle, a zip (a PyTorch
checkpoint), a text file, a truncated or damaged file, or one from a newer format version is an
:class:`~fcvc_pipeline.errors.InputError` naming the file. The BatchNorm statistics a feature store
keeps as a ``torch.save`` blob are converted to plain tensors on export (read there with
``weights_only=True``) and loaded into the rebuilt network as tensors, so no pickle ever travels inside a
``.fcvc`` file. :func:`build_backbones` rebuilds the recipe's networks in memory (no store, no file).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from fcvc_pipeline.artifacts import atomic_write_bytes, fingerprint
from fcvc_pipeline.captions.vocabulary import Vocabulary
from fcvc_pipeline.devices import COMPUTED_PRECISIONS, dominant_precision, resolve_feature_precision
from fcvc_pipeline.errors import ConfigError, InputError, MismatchError, MissingArtifactError
from fcvc_pipeline.features.backbones import CLIP_MODELS
from fcvc_pipeline.features.networks import Backbones, network_from_record
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.inference.checkpoint import content_digest
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.models import ModelConfig
from fcvc_pipeline.workdir import Workdir

PACKAGE_FORMAT = "fcvc-captioner"
PACKAGE_VERSION = 1
PACKAGE_SUFFIX = ".fcvc"
MAX_HEADER_BYTES = 64 << 20  # a safetensors header (tensor table + our metadata) larger than this is not ours
ROLES = ("inception", "clip")
MODEL_PREFIX = "model/"
_PICKLE_PROTOCOLS = tuple(bytes([0x80, p]) for p in range(2, 6))
_HINT_EXPORT = "a captioner file is written by `fcvc export`; a training checkpoint (best.pt) is read with " \
               "Captioner.from_checkpoint or `fcvc caption --checkpoint`"


@dataclass
class BackboneRecipe:
    """One feature network, as the store that fed the model recorded it, with what the file embeds."""

    role: str  # "inception" | "clip"
    record: dict[str, Any]  # the store's record: kind, weights label, seed / file_sha256 / url, state_sha256
    batchnorm: dict[str, torch.Tensor] | None = None  # re-estimated statistics of a random network
    weights: dict[str, torch.Tensor] | None = None  # the state it was built from (--embed-backbones)

    @property
    def identity(self) -> str:
        """``imagenet`` | ``hub`` | ``random:<seed>`` | ``sha256:<file hash>``."""
        return str(self.record.get("weights"))

    def summary(self) -> dict[str, Any]:
        return {"weights": self.identity, "kind": self.record.get("kind"),
                "state_sha256": self.record.get("state_sha256"),
                "batchnorm_embedded": self.batchnorm is not None, "weights_embedded": self.weights is not None}


@dataclass
class FeatureRecipe:
    """How the model's features are computed: the store's settings and its networks."""

    settings: dict[str, Any]
    settings_fingerprint: str
    backbones: dict[str, BackboneRecipe] = field(default_factory=dict)
    # what the training features were computed in (devices.dominant_precision of the store's videos); None:
    # not recorded (a file exported before the record, or a store whose videos predate it)
    precision: str | None = None
    precision_counts: dict[str, int] = field(default_factory=dict)

    def missing_networks(self) -> list[str]:
        """Roles the settings use whose network was not recorded (a store written before records)."""
        return [role for role in ROLES if self.settings.get(role) and role not in self.backbones]

    @property
    def can_extract(self) -> bool:
        return bool(self.settings.get("inception")) and not self.missing_networks()


@dataclass
class CaptionerPackage:
    """The content of a ``.fcvc`` file."""

    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    vocab: Vocabulary
    decoding: DecodingOptions
    features: FeatureRecipe
    provenance: dict[str, Any] = field(default_factory=dict)


def package_summary(package: CaptionerPackage) -> dict[str, Any]:
    """What a captioner file holds, as JSON (``fcvc export --json``, ``fcvc info FILE.fcvc --json``)."""
    s = package.features.settings
    parameters = sum(int(t.numel()) for t in package.state_dict.values())
    p = package.provenance
    return {"format_version": PACKAGE_VERSION,
            "model": {"name": package.model_config.model, "parameters": parameters,
                      "config": package.model_config.to_json()},
            "vocabulary_size": len(package.vocab), "decoding": package.decoding.to_json(),
            "features": {"frames": s.get("frames"), "frame_size": s.get("frame_size"), "dtype": s.get("dtype"),
                         "settings_fingerprint": package.features.settings_fingerprint,
                         "can_caption_videos": package.features.can_extract,
                         "precision": package.features.precision,
                         "precision_counts": package.features.precision_counts,
                         "backbones": {role: b.summary() for role, b in package.features.backbones.items()}},
            "provenance": {k: p.get(k) for k in ("run", "checkpoint", "training", "test_scores", "fcvc_version",
                                                 "torch_version", "torchvision_version")}}


# -- writing ---------------------------------------------------------------------------------------------
def training_store(ckpt: Mapping[str, Any], workdir: str | Path, checkpoint_path: str | Path) -> FeatureStore:
    """The store whose features a checkpoint was trained on: the work directory's, else the one it recorded;
    either must have the settings fingerprint the checkpoint recorded."""
    for candidate in (Workdir(Path(workdir)).features, Path(str(ckpt.get("store_path") or ""))):
        if str(candidate) not in ("", ".") and FeatureStore.exists(candidate):
            store = FeatureStore.open(candidate)
            if store.settings_fingerprint == ckpt.get("store_settings_fingerprint"):
                return store
            raise MismatchError(f"{checkpoint_path} was trained on features extracted with other settings than "
                                f"{candidate}", hint="pass --workdir of the run's training work directory")
    raise MissingArtifactError(f"the feature store {checkpoint_path} was trained on is gone "
                               f"({ckpt.get('store_path')})",
                               hint="its settings and network records are what makes new videos' features match "
                                    "the training ones; pass --workdir of the training run")


def recipe_from_store(store: FeatureStore, *, embed: Mapping[str, dict[str, torch.Tensor]] | None = None
                      ) -> FeatureRecipe:
    """The recipe of ``store``: its settings, each network's record and its BatchNorm statistics (the
    ``torch.save`` blob read with ``weights_only=True`` into tensors); ``embed`` adds source weights."""
    records = store.backbone_records()
    backbones: dict[str, BackboneRecipe] = {}
    for role in ROLES:
        record = records.get(role)
        if not isinstance(record, dict):
            continue
        bn = None
        if record.get("bn_blob"):
            blob = store.get_blob(record["bn_blob"])
            try:
                bn = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            except Exception as e:  # a damaged blob: the store itself is unusable for this network
                raise InputError(f"{store.path}/backbones/{record['bn_blob']}",
                                 f"unreadable BatchNorm statistics ({type(e).__name__})") from None
            if not isinstance(bn, Mapping) or not all(isinstance(v, torch.Tensor) for v in bn.values()):
                raise InputError(f"{store.path}/backbones/{record['bn_blob']}", "BatchNorm statistics are not tensors")
            bn = dict(bn)
        backbones[role] = BackboneRecipe(role, dict(record), batchnorm=bn, weights=(embed or {}).get(role))
    counts = store.precision_counts()
    return FeatureRecipe(settings=store.settings, settings_fingerprint=store.settings_fingerprint,
                         backbones=backbones, precision=dominant_precision(counts), precision_counts=counts)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy owning its memory (safetensors refuses views and tensors that share storage)."""
    return t.detach().to("cpu").contiguous().clone()


def _tensors_and_header(package: CaptionerPackage) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {MODEL_PREFIX + k: _plain(v) for k, v in package.state_dict.items()}
    backbones = {}
    for role, b in package.features.backbones.items():
        entry: dict[str, Any] = {"record": b.record, "batchnorm": None, "weights": None}
        for group, state in (("batchnorm", b.batchnorm), ("weights", b.weights)):
            if state is None:
                continue
            prefix = f"backbone/{role}/{group}/"
            tensors.update({prefix + k: _plain(v) for k, v in state.items()})
            entry[group] = prefix
        backbones[role] = entry
    header = {"model_config": package.model_config.to_json(), "vocabulary": package.vocab.to_json(),
              "vocabulary_fingerprint": package.vocab.fingerprint(), "decoding": package.decoding.to_json(),
              "features": {"settings": package.features.settings,
                           "settings_fingerprint": package.features.settings_fingerprint,
                           "backbones": backbones, "precision": package.features.precision,
                           "precision_counts": package.features.precision_counts},
              "provenance": package.provenance}
    return tensors, header


def _digest(header_text: str, tensors: Mapping[str, torch.Tensor]) -> str:
    return "sha256:" + content_digest({"format": PACKAGE_FORMAT, "format_version": PACKAGE_VERSION,
                                       "header": header_text, "tensors": dict(tensors)})


def package_bytes(package: CaptionerPackage) -> bytes:
    """The ``.fcvc`` file's bytes."""
    tensors, header = _tensors_and_header(package)
    header_text = json.dumps(header, sort_keys=True, ensure_ascii=False, allow_nan=False)
    metadata = {"format": PACKAGE_FORMAT, "format_version": str(PACKAGE_VERSION), "header": header_text,
                "digest": _digest(header_text, tensors)}
    return safetensors.torch.save(tensors, metadata=metadata)


def write_package(path: str | Path, package: CaptionerPackage) -> int:
    """Write ``package`` to ``path`` atomically; returns the file's size in bytes."""
    data = package_bytes(package)
    atomic_write_bytes(path, data)
    return len(data)


# -- reading ---------------------------------------------------------------------------------------------
def _not_ours(data: bytes) -> str | None:
    """What a file that is clearly no safetensors file is, from its first bytes (None: it may be one)."""
    if not data:
        return "the file is empty"
    if data[:2] in _PICKLE_PROTOCOLS:
        return ("it is a Python pickle, not an fcvc captioner file; it was not unpickled (unpickling can run "
                "arbitrary code)")
    if data[:4] == b"PK\x03\x04":
        return "it is a zip archive (a PyTorch checkpoint such as best.pt?), not an fcvc captioner file"
    return None


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(sample) - 4:  # a character cut by the sample's end is still text
            return False
    return b"\x00" not in sample


def read_package_header(path: str | Path, data: bytes) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(safetensors tensor table, our metadata, where the tensor data starts), checked; InputError if not."""
    path = Path(path)
    refused = _not_ours(data)
    if refused is not None:
        raise InputError(path, refused, hint=_HINT_EXPORT)
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if n < 2 or n > MAX_HEADER_BYTES or data[8:9] != b"{":
        what = "a text file" if _looks_like_text(data) else "not a safetensors file"
        raise InputError(path, f"not an fcvc captioner file ({what}: it does not start with a safetensors header)",
                         hint=_HINT_EXPORT)
    if 8 + n > len(data):
        raise InputError(path, f"truncated: the file ends at byte {len(data)}, inside its {n}-byte header",
                         hint="copy or download the file again")
    try:
        table = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(path, f"damaged: its header is not valid JSON ({type(e).__name__})",
                         hint="copy or download the file again") from None
    meta = table.pop("__metadata__", None) if isinstance(table, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != PACKAGE_FORMAT:
        raise InputError(path, "a safetensors file, but not an fcvc captioner file (no 'fcvc-captioner' format tag)",
                         hint=_HINT_EXPORT)
    version = meta.get("format_version")
    if not (isinstance(version, str) and version.isdigit() and int(version) >= 1):
        raise InputError(path, f"damaged: unreadable format version {version!r}", hint="copy the file again")
    if int(version) > PACKAGE_VERSION:
        raise InputError(path, f"written by a newer fcvc (captioner format version {version}; this fcvc reads "
                               f"version {PACKAGE_VERSION} and older)",
                         hint="upgrade fcvc-pipeline, or export the model again with this version")
    end = 0
    for name, entry in table.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise InputError(path, f"damaged: tensor {name!r} has no valid data offsets", hint="copy the file again")
        end = max(end, offsets[1])
    have = len(data) - 8 - n
    if have < end:
        raise InputError(path, f"truncated: {have} bytes of tensor data, its table needs {end}",
                         hint="copy or download the file again")
    if have > end:
        raise InputError(path, f"damaged: {have - end} bytes after the last tensor", hint="copy the file again")
    return table, meta, 8 + n


def read_package(path: str | Path) -> CaptionerPackage:
    """Read and check a ``.fcvc`` file (format, version, digest, every field); nothing is executed."""
    path = Path(path)
    if not path.exists():
        raise MissingArtifactError(f"no captioner file at {path}", hint="write one with `fcvc export -o FILE.fcvc`")
    if path.is_dir():
        raise InputError(path, "is a directory, not an fcvc captioner file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(path, f"cannot be read ({e.strerror or e})") from None
    _, meta, _ = read_package_header(path, data)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors' own checks (dtypes, shapes against offsets, overlaps)
        raise InputError(path, f"damaged: the tensors cannot be read ({type(e).__name__}: {str(e)[:200]})",
                         hint="copy or download the file again") from None
    header_text = meta.get("header")
    if not isinstance(header_text, str) or meta.get("digest") != _digest(header_text, tensors):
        raise InputError(path, "damaged: its content does not match the digest written with it (the file was "
                               "changed or corrupted after it was exported)",
                         hint="copy the file again, or export it again (`fcvc export`)")
    try:
        header = json.loads(header_text)
        return _from_header(header, tensors)
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as e:
        detail = e.message if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        raise InputError(path, f"not a valid fcvc captioner file: {detail[:300]}",
                         hint="export it again with this version of fcvc") from None


def _group(tensors: Mapping[str, torch.Tensor], prefix: str | None) -> dict[str, torch.Tensor] | None:
    if prefix is None:
        return None
    if not isinstance(prefix, str) or not prefix.startswith("backbone/"):
        raise ValueError(f"bad tensor group {prefix!r}")
    group = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not group:
        raise KeyError(f"the tensor group {prefix!r} named in the header is missing")
    return group


def _from_header(header: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> CaptionerPackage:
    if not isinstance(header, dict):
        raise TypeError("the header is not a JSON object")
    missing = [k for k in ("model_config", "vocabulary", "decoding", "features") if k not in header]
    if missing:
        raise KeyError(f"missing header field(s) {', '.join(missing)}")
    vocab = Vocabulary.from_json(header["vocabulary"])
    if header.get("vocabulary_fingerprint") not in (None, vocab.fingerprint()):
        raise ValueError("the vocabulary does not match its recorded fingerprint")
    features = header["features"]
    backbones = {}
    for role, entry in (features.get("backbones") or {}).items():
        if role not in ROLES or not isinstance(entry.get("record"), dict):
            raise ValueError(f"unknown or malformed backbone entry {role!r}")
        backbones[role] = BackboneRecipe(role, entry["record"], batchnorm=_group(tensors, entry.get("batchnorm")),
                                         weights=_group(tensors, entry.get("weights")))
    settings = features["settings"]
    if not isinstance(settings, dict) or not isinstance(features.get("settings_fingerprint"), str):
        raise TypeError("the feature settings are not recorded")
    precision = features.get("precision")
    if precision is not None and precision not in COMPUTED_PRECISIONS:
        raise ValueError(f"unknown feature precision {precision!r}")
    counts = features.get("precision_counts") or {}
    if not isinstance(counts, dict) or not all(isinstance(k, str) and type(v) is int and v >= 0
                                               for k, v in counts.items()):
        raise TypeError("the feature precision counts are malformed")
    state = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    if not state:
        raise KeyError("no model weights")
    return CaptionerPackage(model_config=ModelConfig.from_json(header["model_config"]), state_dict=state,
                            vocab=vocab, decoding=DecodingOptions.from_json(header["decoding"]),
                            features=FeatureRecipe(settings, features["settings_fingerprint"], backbones,
                                                   precision=precision, precision_counts=dict(counts)),
                            provenance=dict(header.get("provenance") or {}))


# -- using the recipe: the feature networks, without a store -------------------------------------------------
def check_extractable(recipe: FeatureRecipe) -> None:
    """A :class:`MismatchError` unless the recipe can compute features of new videos."""
    if not recipe.can_extract:
        raise MismatchError(f"this captioner does not record the feature networks it was trained with "
                            f"({', '.join(recipe.missing_networks()) or 'no extraction settings'}): it can "
                            f"caption stored features only",
                            hint="re-extract the training features with this version of fcvc, retrain and "
                                 "export again, or use Captioner.caption_features")


def build_backbones(recipe: FeatureRecipe, device: torch.device, *,
                    weights_paths: Mapping[str, str | Path] | None = None, where: str = "the captioner file",
                    precision: str = "recorded") -> Backbones:
    """The recipe's feature networks on ``device``, rebuilt with no store and no file written: a random
    network from its seed and the BatchNorm statistics the recipe carries, a file network from the
    embedded weights or else from its file (at ``weights_paths[role]`` or its recorded path; missing: a
    :class:`MissingArtifactError` saying how to point at it; changed: a :class:`MismatchError`),
    ``imagenet``/``hub`` from the embedded weights or torch's download cache. Every network is checked
    against the ``state_sha256`` recorded when the training features were extracted. ``precision``
    (``recorded|auto|fp32|bf16``, :func:`~fcvc_pipeline.devices.resolve_feature_precision`): the forward's;
    ``recorded`` is the training features' own."""
    check_extractable(recipe)
    settings = recipe.settings
    if fingerprint(settings) != recipe.settings_fingerprint:
        raise MismatchError(f"{where}: the recorded feature settings do not reproduce their fingerprint "
                            f"({fingerprint(settings)[:12]}... != {recipe.settings_fingerprint[:12]}...)",
                            hint="export the model again with this version of fcvc")
    overrides = {k: Path(v) for k, v in (weights_paths or {}).items()}
    unknown = sorted(set(overrides) - set(ROLES))
    if unknown:
        raise ConfigError(f"unknown feature network(s) {', '.join(map(repr, unknown))} for a weights file; "
                          f"the roles are {', '.join(ROLES)}")
    modules: dict[str, nn.Module] = {}
    for role in ROLES:
        if not settings.get(role):
            continue
        b = recipe.backbones[role]
        hint = (f"point at the file (same content): --backbone-weights {role}=PATH (fcvc caption) or "
                f"weights_paths={{{role!r}: PATH}} (Captioner.caption); or export with --embed-backbones")
        modules[role] = network_from_record(role, b.record, where=f"{where} ({role} network)", batchnorm=b.batchnorm,
                                            weights=b.weights, path_override=overrides.get(role), missing_hint=hint)
    clip_info = CLIP_MODELS[settings["clip"]["model"]] if settings.get("clip") else None
    return Backbones(modules["inception"], modules.get("clip"), clip_info, device,
                     precision=resolve_feature_precision(precision, recipe.precision, device))
