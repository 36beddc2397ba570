"""Bundled priors."""
