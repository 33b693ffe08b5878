"""dynalign's aligner package; ``from aligner import AlignmentClient`` reads published alignments from Redis
(without loading torch)."""

import warnings

from aligner.publish.redis_alignments import Announcement, AlignmentClient, Candidate

# CSR matrix products (the encoder's propagation, the plan's structure bonus) are what dynalign uses of torch's
# sparse support; torch's "beta" notice on every such tensor says nothing a user can act on.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

__all__ = ["AlignmentClient", "Announcement", "Candidate"]
