"""The Aligner: snapshots in, alignments out; its drift monitor, its plain-data state, and the one factory that builds it."""
