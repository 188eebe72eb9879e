"""The pruning search space (groups from the dependency graph) and construction of the compact model."""
