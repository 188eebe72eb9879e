"""Cost metrics: MACs, BOPs, size, and the report."""
