"""``fcvc serve``: the Click wrapper around :func:`fcvc_pipeline.stages.serve.run_serve`."""

from __future__ import annotations

from pathlib import Path

import click

from fcvc_pipeline.commands.common import Choice, common_options, run_and_exit


@click.command()
@common_options
@click.option("--model", "model", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The captioner file to serve (written by `fcvc export`).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback prints a warning: there is no authentication "
                   "without --token.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: a free one, printed).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--max-upload-mb", type=float, default=200.0, show_default=True,
              help="Largest request body; refused (413) while it streams, never buffered whole.")
@click.option("--max-files", type=int, default=16, show_default=True, help="Most videos in one request.")
@click.option("--max-batch", type=int, default=8, show_default=True,
              help="Most videos sharing one backbone forward and one beam search (1: no batching).")
@click.option("--batch-wait-ms", type=float, default=20.0, show_default=True,
              help="How long the first video of a batch waits for others.")
@click.option("--workers", type=int, default=None,
              help="Decoder processes (default: half the cores, at least 1). The model lives in one process.")
@click.option("--max-queue", type=int, default=32, show_default=True,
              help="Requests in flight before new ones get 503 with Retry-After.")
@click.option("--decode-timeout", type=float, default=60.0, show_default=True,
              help="Seconds one video may take to decode before its decoder process is killed.")
@click.option("--upload-timeout", type=float, default=60.0, show_default=True,
              help="Seconds an upload may send nothing before it is dropped (408): stalled clients do not hold "
                   "queue places.")
@click.option("--max-figures", type=int, default=256, show_default=True,
              help="Attention figures kept in memory (the oldest go first).")
@click.option("--figure-ttl", type=float, default=3600.0, show_default=True, help="Seconds a figure is kept.")
@click.option("--token", default=None,
              help="Require `Authorization: Bearer TOKEN` on /v1/ routes (or set FCVC_SERVE_TOKEN, which other "
                   "users cannot read from the process list).")
@click.option("--threads", type=int, default=None, help="Torch threads for the forward and the beam search.")
@click.option("--log-level", type=Choice(["critical", "error", "warning", "info", "debug"]), default="warning",
              show_default=True, help="uvicorn's log level (info: one line per request).")
def serve(workdir: Path, json_out: bool, verbose: bool, model: Path, host: str, port: int, device: str,
          max_upload_mb: float, max_files: int, max_batch: int, batch_wait_ms: float, workers: int | None,
          max_queue: int, decode_timeout: float, upload_timeout: float, max_figures: int, figure_ttl: float,
          token: str | None, threads: int | None, log_level: str):
    """Caption uploaded videos over HTTP, with a page to use it from a browser.

    Needs the optional extra: pip install 'fcvc-pipeline[serve]'. The API is described at /docs;
    POST /v1/captions takes videos as multipart file parts and answers with each caption, its
    per-word frame attention, timings and the URL of its attention figure.

    \b
    Examples:
      fcvc serve --model captioner.fcvc                 # http://127.0.0.1:8000/
      curl -F file=@clip.mp4 http://127.0.0.1:8000/v1/captions
      FCVC_SERVE_TOKEN=... fcvc serve --model captioner.fcvc --host 0.0.0.0
    """
    from fcvc_pipeline.stages.serve import ServeConfig, run_serve  # noqa: PLC0415 -- torch loads only when the command runs, so --help stays instant

    cfg = ServeConfig(model=model, host=host, port=port, device=device, max_upload_mb=max_upload_mb,
                      max_files=max_files, max_batch=max_batch, batch_wait_ms=batch_wait_ms, workers=workers,
                      max_queue=max_queue, decode_timeout=decode_timeout, upload_timeout=upload_timeout,
                      max_figures=max_figures, figure_ttl=figure_ttl, token=token, threads=threads, log_level=log_level)
    run_and_exit(lambda: run_serve(cfg), json_out=json_out, verbose=verbose)
