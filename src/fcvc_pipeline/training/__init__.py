"""Training a captioner: its config, the Trainer and its state (what last.pt resumes), batches, the Eq. 7 loss,
the schedule and weight average, and torchrun support."""
