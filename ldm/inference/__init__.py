"""Rendering: checkpoint loading, conditioning batches, sampling, paste-back and video output."""
