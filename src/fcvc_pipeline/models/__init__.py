"""Backbones and captioning models."""
