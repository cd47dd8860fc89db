"""Data: manifests, task configs, symbol transforms, sampling, collation and metrics."""
