"""Captioning with a trained model: decoding options, beam search, checkpoint files, the Captioner, and the
attention figure."""
