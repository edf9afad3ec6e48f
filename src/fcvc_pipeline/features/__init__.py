"""From a video file to stored features: decode and sample, the decode worker pool, the backbones and their
weights identity, the extraction engine, the Zarr store and the in-memory feature bank."""
