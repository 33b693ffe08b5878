"""From embeddings to ranked candidates: the transport plan, its incremental updates, ranking metrics, and the self-calibration of the plan's settings."""
