"""Sprite data: the TFDS builder, its sources, and loading a split into memory."""
