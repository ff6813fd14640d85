"""Inference: predicting on new texts in bounded memory, and merging adapters for deployment."""
