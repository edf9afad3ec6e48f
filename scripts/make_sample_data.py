#!/usr/bin/env python3
"""Write the synthetic sample set (coloured shapes doing actions) in the MSR-VTT format.

    python scripts/make_sample_data.py --out data/sample            # the committed set (450 videos)
    python scripts/make_sample_data.py --out /tmp/big --n 2000      # a larger set for benchmarks

A thin wrapper over :func:`fcvc_pipeline.captions.synthetic.generate_sample`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fcvc_pipeline.captions.synthetic import DEFAULT_N, DEFAULT_SIZE, generate_sample
from fcvc_pipeline.errors import FcvcError


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/sample"),
              show_default=True, help="Output folder (created; an earlier sample set there is replaced).")
@click.option("--n", type=int, default=DEFAULT_N, show_default=True, help="Number of videos.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same set.")
@click.option("--size", type=int, default=DEFAULT_SIZE, show_default=True, help="Frame width and height.")
def main(out: Path, n: int, seed: int, size: int) -> None:
    try:
        path = generate_sample(out, n=n, seed=seed, size=size)
    except FcvcError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    click.echo(f"wrote {path} and {out / 'videos'}/", err=True)


if __name__ == "__main__":
    main()
