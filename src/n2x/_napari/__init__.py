"""napari front door: dock widgets, workers and sample data. Only this package imports napari and Qt."""
