"""Scoring captions: pycocoevalcap metrics (BLEU, METEOR, ROUGE-L, CIDEr), score tables, and the
constant-caption floor."""
