"""Bundled metrics."""
