"""Offline tools over a state directory: replay history as of a snapshot, explain an alignment, evaluate on test anchors."""
