"""Graph encoder, Meta-SGD learner and node features: torch only, nothing of the stream or Redis."""
