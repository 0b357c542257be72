"""Data handling: axes, normalisation, patch sampling, the noise probe and synthetic samples."""
