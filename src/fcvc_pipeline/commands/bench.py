"""``fcvc bench``: benchmarks that print JSON with ratios measured side by side in one run."""

from __future__ import annotations

import click

from fcvc_pipeline.commands.common import LazyGroup

BENCHES: dict[str, str] = {
    "extract": "fcvc_pipeline.bench.extract:bench_extract",
    "decode": "fcvc_pipeline.bench.decode:bench_decode",
    "train": "fcvc_pipeline.bench.train:bench_train",
    "checksums": "fcvc_pipeline.bench.checksums:bench_checksums",
    "caption": "fcvc_pipeline.bench.caption:bench_caption",
    "serve": "fcvc_pipeline.bench.serve:bench_serve",
    "data": "fcvc_pipeline.bench.data:bench_data",
}


@click.group(cls=LazyGroup, registry=BENCHES)
def bench():
    """Measure throughput; every figure is a ratio against a baseline timed in the same run."""
