"""Evidence-accumulation consensus (Fred & Jain 2005): hand-computed co-association and the cut."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from imgclust.cluster.consensus import MIN_CLUSTER_FRACTION, co_association, consensus_labels
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


def _groups_with_stragglers() -> tuple[np.ndarray, np.ndarray]:
    """Groups A, B, C of 40 rows and 3 straggler rows of A: truth ``(123,)``, partitions ``(123, 6)``.

    Every run keeps A apart; B and C are merged in 2 of the 6 runs (co-association 2/6, so the tree
    joins them at distance 0.67); the stragglers sit in a cluster of their own in 5 runs and in A in one
    (as rows a GMM run gives to a small extra component): at distance >= 0.83 from every group."""
    truth = np.concatenate([np.repeat([0, 1, 2], 40), [0, 0, 0]])
    runs = []
    for r in range(6):
        lab = truth.copy()
        if r < 2:
            lab[lab == 2] = 1  # B and C merged
        lab[120:] = 0 if r == 5 else 3
        runs.append(lab)
    return truth, np.stack(runs, axis=1)


def test_outlier_rows_do_not_take_a_cluster(caplog: pytest.LogCaptureFixture) -> None:
    """The plain average-linkage cut spends one of the 3 clusters on the 3 stragglers and merges B and
    C, and warns about the 3-row cluster; the outlier-aware cut keeps A, B, C and gives each straggler the
    group it co-occurs with most (A), with no warning."""
    truth, p = _groups_with_stragglers()
    with caplog.at_level(logging.WARNING, logger="imgclust.cluster.consensus"):
        plain = consensus_labels(p, 3)  # the default: Fred & Jain's plain cut
    assert sorted(np.bincount(plain).tolist()) == [3, 40, 80]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "1 of 3 clusters" in warned[0] and "(sizes [3])" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imgclust.cluster.consensus"):
        labels = consensus_labels(p, 3, min_cluster_fraction=MIN_CLUSTER_FRACTION)
    assert cluster_accuracy(truth, labels) == 1.0
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # no outlier-size cluster left


def test_no_warning_when_the_cut_already_has_a_minimum_size(caplog: pytest.LogCaptureFixture) -> None:
    """With ``min_cluster_fraction > 0`` the cut itself chose its clusters: a kept 4-row group (the minimum,
    int(0.1 * 125 / 3) = 4 rows, below a tenth of the mean size 41.7) is not reported as outliers."""
    p = np.repeat(np.concatenate([np.repeat([0, 1, 2], [60, 61, 4])])[:, None], 8, axis=1)
    with caplog.at_level(logging.WARNING, logger="imgclust.cluster.consensus"):
        labels = consensus_labels(p, 3, min_cluster_fraction=MIN_CLUSTER_FRACTION)
    assert sorted(np.bincount(labels).tolist()) == [4, 60, 61]
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    with caplog.at_level(logging.WARNING, logger="imgclust.cluster.consensus"):
        consensus_labels(p, 3)  # the plain cut gives the same clusters, and does report the small one
    assert [r for r in caplog.records if r.levelno == logging.WARNING]


def test_min_size_that_no_cut_meets_is_an_error() -> None:
    p = np.repeat(np.arange(4), 5)[:, None]  # 4 groups of 5 rows
    assert len(np.unique(consensus_labels(p, 4, min_cluster_fraction=1.0))) == 4  # exactly the mean size
    with pytest.raises(ConfigError, match="no cut of the consensus tree has 5 clusters"):
        consensus_labels(p, 5, min_cluster_fraction=1.0)
    with pytest.raises(ConfigError, match="min_cluster_fraction"):
        consensus_labels(p, 2, min_cluster_fraction=1.5)
