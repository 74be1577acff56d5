"""Analysis of finished runs: what the pipeline reports, and nothing it computes for training."""
