"""Video decoding, the feature store, captions and vocabularies."""
