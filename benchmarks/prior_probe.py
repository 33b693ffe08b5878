"""How much a pair's structure alone says, before any learning: diagnostics for accuracy work (issue 15).

For each pair folder it prints what bounds a structure-based aligner there — per network the mean and median
degree of the test nodes, the share of isolated ones, of ones in the giant component and of ones with an
anchored neighbour, and the share of edges between anchored nodes that the other network also has — and how well
three untrained priors rank the test anchors from the train anchors alone: the cosine of personalised PageRank
profiles over the train anchors, raw and log-scaled at two scales (the position sketch uses ``log1p(n ppr)``,
``n`` the network's nodes), and the count of shared anchored neighbours. Ties count as half a rank each (the
expected rank under random tie-breaking), so a prior that scores most pairs 0 is not credited for it.

    .venv/bin/python benchmarks/prior_probe.py ../shared/data/sacchcere ../shared/data/douban
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aligner.model.features import personalized_pagerank  # noqa: E402
from stream.datasets import load_dataset  # noqa: E402

RESTART, STEPS = 0.15, 20  # the model's rwr_restart and rwr_steps defaults


class _Walk:
    """The two fields of GraphTensors that :func:`personalized_pagerank` reads."""

    def __init__(self, adjacency: sp.csr_matrix):
        degree = np.asarray(adjacency.sum(1)).ravel()
        inverse = np.where(degree > 0, 1.0 / np.maximum(degree, 1e-12), 0.0)
        self.walk = (adjacency @ sp.diags(inverse)).tocsr().astype(np.float32)


def adjacency(edges: np.ndarray, n: int) -> sp.csr_matrix:
    a = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    return ((a + a.T) > 0).astype(np.float32).tocsr()


def ranks(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    true = scores[np.arange(len(truth)), truth]
    return (scores > true[:, None]).sum(1) + ((scores == true[:, None]).sum(1) - 1) / 2


def cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return x @ y.T


def probe(folder: str) -> None:
    data = load_dataset(folder)
    assert data.train is not None and data.test is not None, f"{folder}: needs train.tsv and test.tsv"
    nets = (adjacency(data.source_edges, data.num_source), adjacency(data.target_edges, data.num_target))
    train, test = data.train, data.test
    print(f"== {data.name}")
    for side, a in enumerate(nets):
        degree = np.asarray(a.sum(1)).ravel()
        _, label = connected_components(a)
        giant = np.bincount(label).argmax()
        anchored = np.zeros(a.shape[0], np.float32)
        anchored[train[:, side]] = 1
        near = (a @ anchored) > 0
        t = test[:, side]
        print(f"  {('source', 'target')[side]}: {a.shape[0]} nodes, mean degree {degree.mean():.2f}; test nodes: "
              f"median degree {np.median(degree[t]):.0f}, isolated {np.mean(degree[t] == 0):.3f}, giant component "
              f"{np.mean(label[t] == giant):.3f}, an anchored neighbour {np.mean(near[t]):.3f}")
    partner = dict(map(tuple, data.anchors.tolist()))
    upper = sp.triu(nets[0]).tocoo()
    kept = [(partner[u], partner[v]) for u, v in zip(upper.row, upper.col) if u in partner and v in partner]
    shared = sum(1 for u, v in kept if nets[1][u, v] > 0)
    print(f"  source edges between anchored nodes also in the target: {shared}/{len(kept)}")
    profiles = []
    for side, a in enumerate(nets):
        signal = torch.zeros(a.shape[0], len(train))
        signal[torch.from_numpy(train[:, side]), torch.arange(len(train))] = 1.0
        profiles.append(personalized_pagerank(_Walk(a), signal, RESTART, STEPS).numpy())  # type: ignore[arg-type]
    src, dst = profiles
    k = len(train)
    anchored_src = (nets[0] @ sp.csr_matrix((np.ones(k), (train[:, 0], np.arange(k))), shape=(nets[0].shape[0], k)))
    anchored_dst = (nets[1] @ sp.csr_matrix((np.ones(k), (train[:, 1], np.arange(k))), shape=(nets[1].shape[0], k)))
    priors = {
        "cosine of raw PPR profiles": cosine(src, dst),
        "cosine of log1p(n PPR) (the sketch's)": cosine(np.log1p(len(src) * src), np.log1p(len(dst) * dst)),
        "cosine of log1p(anchors PPR)": cosine(np.log1p(k * src), np.log1p(k * dst)),
        "shared anchored neighbours": (anchored_src @ anchored_dst.T).toarray(),
    }
    for name, scores in priors.items():
        r = ranks(scores[test[:, 0]], test[:, 1])
        print(f"  {name:40s} Hits@1 {np.mean(r < 0.5):.3f}  Hits@10 {np.mean(r < 9.5):.3f}  MRR {np.mean(1 / (r + 1)):.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="pair folders in the exchange format")
    for folder in parser.parse_args(argv).folders:
        probe(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
