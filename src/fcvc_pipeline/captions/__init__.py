"""Captions in: annotation formats, splits, text normalisation, the vocabulary and caption table, and the
generator of the bundled synthetic sample set."""
