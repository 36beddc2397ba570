"""Bundled defenses: each module is a pluggy plugin registered through the ``invertkit`` entry-point group."""
