"""Bundled targets."""
