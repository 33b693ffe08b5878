"""dynalign's aligner package; ``from aligner import AlignmentClient`` reads published alignments from Redis
(without loading torch)."""

from aligner.publish.redis_alignments import AlignmentClient, Announcement, Candidate

__all__ = ["AlignmentClient", "Announcement", "Candidate"]
