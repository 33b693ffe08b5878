"""The long-running service: the loop that ingests, cuts snapshots, aligns, publishes and checkpoints; its settings, savepoints, metrics endpoint and status."""
