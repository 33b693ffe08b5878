"""Why is ``u`` matched to ``v``? Evidence for a node's top candidates, in numbers and in words.

For each candidate the evidence is what a person could check by hand:

- **shared anchors**: known anchor pairs ``(a, b)`` with ``a`` near ``u`` and ``b`` near the candidate (within
  ``hops``), with both distances: the same people around both accounts;
- **attribute agreement**: cosine of the two attribute vectors (when both networks have attributes);
- **position agreement**: cosine of the anchor-relative positions (personalised PageRank profiles);
- **embedding score**: cosine of the learned embeddings;
- **transport score**: the published confidence, after the structure-consistent refinement;
- **paths through other networks** (three or more aligned): for each pivot network aligned to both, where
  ``u``'s best match there is matched in turn; a candidate such a path lands on is backed by two alignments.

Anchors count when they join the two nodes' neighbourhoods through any chain of known anchors (an entity
anchored in a ~ b and b ~ c joins a and c), so a pair aligned with no anchors of its own has evidence too.

``evidence_score`` combines only the checkable parts (shared anchors, attributes, positions); how often it
alone ranks the chosen candidate first is the *evidence agreement* that ``dynalign bench`` reports.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from aligner.engine.aligner import Aligner
from aligner.logs import printable
from aligner.matching.cycles import NO_MATCH
from aligner.model.features import anchor_entities
from snapshots.snapshot import Snapshot, pair_key


@dataclass
class SharedAnchor:
    near: str  # the anchor's node in the source network
    near_hops: int
    partner: str  # its partner in the target network
    partner_hops: int


@dataclass
class PivotPath:
    pivot: str  # a third network aligned to both
    via: str  # the node's best match in the pivot network, whose best match in the target is the candidate


@dataclass
class CandidateEvidence:
    candidate: str
    rank: int
    transport: float
    embedding: float
    position: float
    attributes: float | None
    shared_anchors: list[SharedAnchor] = field(default_factory=list)
    through: list[PivotPath] = field(default_factory=list)

    @property
    def evidence_score(self) -> float:
        """Checkable evidence only: each shared anchor counts more the closer it is to both nodes."""
        anchors = sum(1.0 / (a.near_hops + a.partner_hops + 1) for a in self.shared_anchors)
        return anchors + self.position + (self.attributes or 0.0)

    def to_dict(self) -> dict:
        return {**asdict(self), "evidence_score": round(self.evidence_score, 4)}


class Explainer:
    """Evidence for candidates of one aligned pair, from an aligner and the snapshot it last aligned."""

    def __init__(self, aligner: Aligner, snapshot: Snapshot, net: str, to: str, hops: int = 2):
        self.aligner, self.snapshot, self.net, self.to, self.hops = aligner, snapshot, net, to, hops
        self.scorer = aligner.alignments.scorers(net, to)[(net, to)]
        self.neighbours = {n: _adjacency_lists(snapshot, n) for n in (net, to)}
        entities = anchor_entities(snapshot, snapshot.anchors)
        in_to = {key: j for j, key in entities.get(to, [])}
        self.partner = {i: in_to[key] for i, key in entities.get(net, []) if key in in_to}
        matched = aligner.alignments.matchers
        self.pivots = {b: (aligner.alignments.top1(net, b), aligner.alignments.top1(b, to)) for b in sorted(aligner.networks)
                       if b not in (net, to) and pair_key(net, b) in matched and pair_key(b, to) in matched}
        self.ids = {n: snapshot.networks[n].node_ids for n in (net, to, *self.pivots)}

    def explain(self, node: str, k: int = 5) -> list[CandidateEvidence]:
        u = self.snapshot.networks[self.net].index_of(node)
        with torch.no_grad():
            alive = self.aligner.networks[self.to].alive
            scores = self.scorer.rows(torch.tensor([u]))[0].masked_fill(~alive, float("-inf"))
            top = scores.topk(min(k, int(alive.sum()))).indices.tolist()
        return [self._evidence(u, v, rank + 1, float(scores[v])) for rank, v in enumerate(top)]

    def _evidence(self, u: int, v: int, rank: int, transport: float) -> CandidateEvidence:
        src, dst = self.aligner.networks[self.net], self.aligner.networks[self.to]
        near_u = _within(self.neighbours[self.net], u, self.hops)
        near_v = _within(self.neighbours[self.to], v, self.hops)
        shared = [SharedAnchor(self.ids[self.net][x], hx, self.ids[self.to][self.partner[x]], near_v[self.partner[x]])
                  for x, hx in sorted(near_u.items(), key=lambda item: item[1])
                  if x in self.partner and self.partner[x] in near_v]
        xa, xb = src.attrs, dst.attrs
        attributes = None
        if xa is not None and xb is not None:
            width = min(xa.shape[1], xb.shape[1])
            attributes = round(float(xa[u, :width] @ xb[v, :width]), 4)
        through = [PivotPath(b, self.ids[b][first[u]]) for b, (first, second) in self.pivots.items()
                   if first[u] != NO_MATCH and second[first[u]] == v]
        return CandidateEvidence(
            candidate=self.ids[self.to][v], rank=rank, transport=round(transport, 4),
            embedding=round(float(src.embeddings[u] @ dst.embeddings[v]), 4),
            position=round(float(src.positions[u] @ dst.positions[v]), 4),
            attributes=attributes, shared_anchors=shared, through=through,
        )

    def agreement(self, nodes: list[int], k: int = 10) -> float:
        """Fraction of ``nodes`` whose chosen (top-1) candidate also has the best evidence score among its top k."""
        agree = 0
        for u in nodes:
            ev = self.explain(self.ids[self.net][u], k)
            agree += bool(ev) and max(ev, key=lambda e: e.evidence_score) is ev[0]
        return agree / len(nodes) if nodes else float("nan")


def describe(node: str, net: str, to: str, evidence: list[CandidateEvidence]) -> str:
    """The evidence in words, one paragraph per candidate."""
    lines = [f"{net}:{node} -> {to}"]
    for e in evidence:
        parts = [f"confidence {e.transport:.3f}", f"embedding similarity {e.embedding:.3f}",
                 f"anchor-position similarity {e.position:.3f}"]
        if e.attributes is not None:
            parts.append(f"attribute agreement {e.attributes:.3f}")
        lines.append(f"  {e.rank}. {e.candidate}: " + ", ".join(parts))
        if e.shared_anchors:
            shown = "; ".join(f"{s.near} ({s.near_hops} hop{'s' if s.near_hops != 1 else ''}) = {s.partner} "
                              f"({s.partner_hops} hop{'s' if s.partner_hops != 1 else ''})" for s in e.shared_anchors[:5])
            more = f" and {len(e.shared_anchors) - 5} more" if len(e.shared_anchors) > 5 else ""
            lines.append(f"     {len(e.shared_anchors)} known anchor pair(s) around both: {shown}{more}")
        else:
            lines.append("     no known anchor pair around both")
        for path in e.through:
            lines.append(f"     through {path.pivot}: {node} is matched to {path.pivot}:{path.via}, which is matched "
                         f"to {e.candidate}")
    return "\n".join(map(printable, lines))  # ids come from the data: no ESC/CR/newline of theirs reaches a terminal


def _adjacency_lists(snapshot: Snapshot, net: str) -> list[list[int]]:
    s = snapshot.networks[net]
    out: list[list[int]] = [[] for _ in range(s.num_nodes)]
    for x, y in s.edge_index.T.tolist():
        out[x].append(y)
        out[y].append(x)
    return out


def _within(neighbours: list[list[int]], start: int, hops: int) -> dict[int, int]:
    """Nodes within ``hops`` of ``start`` with their distance (``start`` itself at 0)."""
    seen = {start: 0}
    queue = deque([start])
    while queue:
        x = queue.popleft()
        if seen[x] == hops:
            continue
        for y in neighbours[x]:
            if y not in seen:
                seen[y] = seen[x] + 1
                queue.append(y)
    return seen


def evidence_agreement(aligner: Aligner, snapshot: Snapshot, net: str, to: str, sample: int = 200,
                       seed: int = 0) -> float:
    """Evidence agreement over a seeded sample of alive source nodes (see the module docstring)."""
    alive = np.flatnonzero(snapshot.networks[net].alive)
    rng = np.random.default_rng(seed)
    nodes = rng.choice(alive, size=min(sample, len(alive)), replace=False).tolist()
    return Explainer(aligner, snapshot, net, to).agreement(nodes)
