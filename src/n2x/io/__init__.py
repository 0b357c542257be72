"""Reading images lazily and reading/writing model files."""
