"""Data shipped with mailgate, read with importlib.resources (see mailgate.config.data_path)."""
