"""Training recipes and the scenario builder (targets, evaluation models and priors, cached)."""
