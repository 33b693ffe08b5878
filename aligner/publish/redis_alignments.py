"""Alignments in Redis: the publisher the service writes with, and the client users read with.

The names callers import, from their own modules: :mod:`~aligner.publish.redis_layout` (the key layout, read it
first), :mod:`~aligner.publish.redis_publisher` (atomic versions) and :mod:`~aligner.publish.alignment_client`
(reads, the versions stream, following it).
"""

from aligner.publish.alignment_client import AlignmentClient, Announcement, Candidate, VersionRead
from aligner.publish.redis_layout import pair_tag
from aligner.publish.redis_publisher import CHANGED_INLINE, PENDING_TTL_S, RedisPublisher

__all__ = ["AlignmentClient", "Announcement", "CHANGED_INLINE", "Candidate", "PENDING_TTL_S", "RedisPublisher",
           "VersionRead", "pair_tag"]
