"""Bundled plugins. Each module is one entry point of the ``invertkit`` group (see ``pyproject.toml``)."""
