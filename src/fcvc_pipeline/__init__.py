"""fcvc: fully convolutional video captioning with coarse-to-fine and inherited attention.

Each pipeline stage is a plain function (``run_extract``, ``run_vocab``, ``run_train``, ...) in
:mod:`fcvc_pipeline.stages`; the ``fcvc`` command line is a thin layer over them.

The Python API of a trained model (docs/api.md)::

    from fcvc_pipeline import Captioner
    cap = Captioner.load("captioner.fcvc")      # written by `fcvc export`
    for c in cap.caption(["a.mp4", "b.mkv"]):
        print(c.video, c.text or c.error)

``Captioner`` and ``Caption`` are imported on first use (they bring torch), so ``import fcvc_pipeline``
and ``fcvc --help`` stay instant; neither pulls in the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Caption", "Captioner", "__version__"]

if TYPE_CHECKING:
    from fcvc_pipeline.inference.captioner import Caption, Captioner


def __getattr__(name: str) -> Any:
    if name in ("Caption", "Captioner"):
        from fcvc_pipeline.inference import captioner  # noqa: PLC0415 -- deferred: torch loads only when the API is used

        return getattr(captioner, name)
    raise AttributeError(f"module 'fcvc_pipeline' has no attribute {name!r}")
