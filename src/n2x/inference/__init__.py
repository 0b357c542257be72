"""Applying a model tile by tile: in memory (tiling) and through dask to zarr (volume)."""
