"""Alignments out to Redis: the publisher and the client users query with, and the embedded redis-server."""
