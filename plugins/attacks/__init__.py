"""Bundled attacks."""
