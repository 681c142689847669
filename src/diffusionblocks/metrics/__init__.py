"""Offline image-quality metrics: Fréchet distance on features of a classifier trained on the data."""
