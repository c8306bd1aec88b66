"""Samples in: wav files, sound cards, stdin, the ring buffer and resampling to the model's rate."""
