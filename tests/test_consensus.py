"""Evidence-accumulation consensus (Fred & Jain 2005): hand-computed co-association and the cut."""
from __future__ import annotations

import numpy as np
import pytest

from imgclust.consensus import co_association, consensus_labels
from imgclust.exceptions import ConfigError
from imgclust.metrics import cluster_accuracy


def test_co_association_by_hand() -> None:
    # rows 0..3; partition A = {0,1},{2,3}; partition B = {0,1,2},{3} (label values differ on purpose)
    p = np.array([[0, 7], [0, 7], [1, 7], [1, 2]])
    expected = np.array([[1.0, 1.0, 0.5, 0.0],
                         [1.0, 1.0, 0.5, 0.0],
                         [0.5, 0.5, 1.0, 0.5],
                         [0.0, 0.0, 0.5, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(co_association(p), expected)


def test_consensus_outvotes_arbitrary_splits() -> None:
    """Three true groups of 30; each of 9 runs agrees on group 0 and cuts the union of groups 1 and 2
    at a random place (what a GMM does inside a blob). Most runs cut at the true border, so the
    consensus recovers the groups although 4 of the 9 runs are wrong."""
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2], 30)
    runs = []
    for r in range(9):
        cut = 60 if r < 5 else int(rng.integers(35, 55))
        lab = np.where(np.arange(90) < 30, 5, np.where(np.arange(90) < cut, 3, 9))
        runs.append(lab)
    p = np.stack(runs, axis=1)
    labels = consensus_labels(p, 3)
    assert cluster_accuracy(truth, labels) == 1.0
    single_wrong = p[:, 5]
    assert cluster_accuracy(truth, single_wrong) < 1.0
    # labels numbered by decreasing size, ties by first row: all sizes 30, so group order
    np.testing.assert_array_equal(labels, truth)


def test_consensus_refuses_bad_input() -> None:
    p = np.zeros((10, 2), dtype=np.int64)
    with pytest.raises(ConfigError, match="cap is 5"):
        consensus_labels(p, 2, max_rows=5)
    with pytest.raises(ConfigError, match="n_clusters"):
        consensus_labels(p, 11)
    with pytest.raises(ConfigError, match="negative"):
        consensus_labels(-np.ones((4, 2), dtype=np.int64), 2)
    with pytest.raises(ConfigError, match="integer"):
        co_association(np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="shape"):
        co_association(np.zeros(4, dtype=np.int64))
