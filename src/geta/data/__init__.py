"""Real data sets with deterministic splits."""
