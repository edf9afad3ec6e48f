"""The work directory: every path a stage reads or writes, in one place.

``--workdir DIR`` (default ``./fcvc-work``) holds every artifact; a command writes nowhere else unless an
option names another place (``fcvc extract --store``, ``fcvc caption --attention``, ``fcvc score
--captions`` reads a file from anywhere). The layout:

==========================  ============================  ==============================================
path                        written by                    what
==========================  ============================  ==============================================
``features.zarr/``          ``fcvc extract``              per-video features (features/store.py)
``vocab/``                  ``fcvc vocab``                vocabulary, caption table, manifest
``runs/<run>/``             ``fcvc train``                config, metrics, checkpoints, manifest
``runs/<run>/captions/``    ``fcvc score`` / ablation     cached captions of a split (+ their scores)
``runs/ablation.{md,json}`` ``fcvc train --model all``    the paper-style table
``caption-features/``       ``fcvc caption``              a cache of captioned files' features (not --model)
``scores/``                 ``fcvc score --captions F``   scores of a captions file outside the workdir
``demo/``                   ``fcvc demo``                 the constant-caption floor, attention figures
==========================  ============================  ==============================================

``FCVC_WORKDIR`` replaces the default of ``--workdir`` for every command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fcvc_pipeline.errors import ConfigError, MissingArtifactError

DEFAULT_WORKDIR = Path("fcvc-work")
WORKDIR_ENV = "FCVC_WORKDIR"  # the default of --workdir when set
DEFAULT_RUN = "fcvc-cf-ia"  # the run `fcvc caption` / `fcvc score` pick when several exist (= models.DEFAULT_MODEL;
# a leaf cannot import the models room, and tests/test_layout.py checks the two agree)


@dataclass(frozen=True)
class Workdir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def features(self) -> Path:
        return self.root / "features.zarr"

    @property
    def vocab(self) -> Path:
        return self.root / "vocab"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def caption_features(self) -> Path:
        return self.root / "caption-features"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def demo(self) -> Path:
        return self.root / "demo"

    def run(self, name: str) -> Path:
        return self.runs / name

    def trained_runs(self) -> list[Path]:
        """Run directories that hold a ``best.pt``, sorted by name."""
        if not self.runs.is_dir():
            return []
        return sorted(p for p in self.runs.glob("*") if (p / "best.pt").is_file())

    def resolve_run(self, name: str | None) -> Path:
        """The run directory to use: the one named, else ``fcvc-cf-ia``, else the only run there is."""
        have = self.trained_runs()
        if name is not None:
            d = self.run(name)
            if not (d / "best.pt").is_file():
                names = ", ".join(p.name for p in have)
                raise MissingArtifactError(f"no trained run '{name}' in {self.runs}" + (f" (runs: {names})" if have else ""),
                                           hint="train it with `fcvc train --run NAME`")
            return d
        if (self.run(DEFAULT_RUN) / "best.pt").is_file():
            return self.run(DEFAULT_RUN)
        if len(have) == 1:
            return have[0]
        if not have:
            raise MissingArtifactError(f"no trained run in {self.runs}", hint="run `fcvc train` first")
        raise ConfigError(f"several runs in {self.runs} ({', '.join(p.name for p in have)}): pick one with --run NAME")
