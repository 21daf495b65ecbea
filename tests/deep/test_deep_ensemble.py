"""imgclust.deep.ensemble (``n2d-ensemble``): the multi-view net, the members, the pooled consensus, save / load."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fashion_test_subset

from imgclust.deep.autoencoder import AutoencoderClusterer
from imgclust.deep.ensemble import MultiViewClusterer
from imgclust.deep.methods import create_deep, load_deep
from imgclust.deep.networks import MultiViewNet, build_network
from imgclust.exceptions import ConfigError
from imgclust.extract.backbones import create_backbone
from imgclust.metrics import cluster_accuracy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 64)])
def test_multiview_net_shapes_and_scaled_views(channels: int, size: int) -> None:
    torch.manual_seed(0)
    spec = {"arch": "multiview", "in_channels": channels, "image_size": [size, size], "k": 4, "members": 2,
            "pixel_components": 5}
    net = build_network(spec)
    assert isinstance(net, MultiViewNet) and net.view_dims == [5, 50, 50] and net.embed_dim == 105
    d = channels * size * size
    net.pca_mean.copy_(torch.rand(d))
    net.pca_components.copy_(torch.randn(5, d))
    net.scales.copy_(torch.tensor([2.0, 4.0, 0.5]))
    x = torch.rand(3, channels, size, size) * 255
    out = net.encode(x)
    assert out.shape == (3, 105)
    pixels = (x.flatten(1) - net.pca_mean) @ net.pca_components.T
    torch.testing.assert_close(out[:, :5], pixels / 2.0)
    torch.testing.assert_close(out[:, 5:55], net.members[0].encode(x) / 4.0)
    torch.testing.assert_close(out[:, 55:], net.members[1].encode(x) / 0.5)
    without_pixels = build_network({**spec, "pixel_components": 0})
    assert without_pixels.view_dims == [50, 50]  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="members >= 1"):
        build_network({**spec, "members": 0})


def test_bad_parameters_fail_before_training() -> None:
    x = np.zeros((30, 28, 28), dtype=np.uint8)
    with pytest.raises(ConfigError, match="members must be at most 16"):
        MultiViewClusterer(members=17).fit(x)
    with pytest.raises(ConfigError, match="pixel_components=50 exceeds"):
        MultiViewClusterer.with_training(members=1, epochs=0).fit(x)  # 30 images < 50 components
    with pytest.raises(ConfigError, match="min_cluster_fraction"):
        MultiViewClusterer(min_cluster_fraction=2.0).fit(x)


@pytest.fixture(scope="module")
def fashion() -> tuple[np.ndarray, np.ndarray]:
    return fashion_test_subset(500)


def test_fit_members_consensus_save_load(tmp_path: Path, fashion: tuple[np.ndarray, np.ndarray]) -> None:
    """On 500 real images: each member is exactly the SCAE its seed trains alone; the labels are the pooled
    consensus of (1 + members) views x gmm_runs partitions and beat chance; predict reproduces most of them
    through the joint mixture; a saved model predicts the same after loading."""
    x, y = fashion
    est = create_deep("n2d-ensemble", k=10, epochs=2, seed=1, device="cpu", members=2, gmm_runs=3,
                      checkpoint_dir=str(tmp_path / "ckpt"))
    assert isinstance(est, MultiViewClusterer)
    est.fit(x)
    assert est.view_seeds_ == [1, 2, 3]  # pixels: seed; member i: seed * members + i
    assert sorted((tmp_path / "ckpt").iterdir()) == [tmp_path / "ckpt" / "member0", tmp_path / "ckpt" / "member1"]
    alone = AutoencoderClusterer.with_training(arch="scae", n_clusters=10, epochs=2, seed=3, device="cpu").fit(x)
    for name, value in alone.network_.state_dict().items():
        torch.testing.assert_close(est.network_.members[1].state_dict()[name], value, rtol=0, atol=0)
    assert est.labels_.shape == (500,) and set(np.unique(est.labels_)) == set(range(10))
    assert cluster_accuracy(y, est.labels_) > 0.35  # chance is ~0.1-0.2 for 10 balanced classes
    emb = est.transform(x[:20])
    assert emb.shape == (20, 50 + 2 * 50)
    joint = est.cluster_features(x)
    assert joint.shape == (500, 30) and est.cluster_centers_.shape == (10, 30)
    pred = est.predict(x)
    assert np.mean(pred == est.labels_) > 0.8
    est.save(tmp_path / "model")
    loaded = load_deep(tmp_path / "model")
    assert isinstance(loaded, MultiViewClusterer) and loaded.view_seeds_ == [1, 2, 3]
    # UMAP's out-of-sample transform depends on the batch it is given (shared negative sampling), so compare
    # the same batch
    np.testing.assert_array_equal(loaded.predict(x[:100]), est.predict(x[:100]))
    np.testing.assert_array_equal(loaded.labels_, est.labels_)
    backbone = create_backbone(f"deep:{tmp_path / 'model'}")  # the refine flow's extractor: raw-pixel scale
    feats = backbone.embed(torch.stack([backbone.preprocess(im) for im in x[:8]]))
    np.testing.assert_allclose(feats, est.transform(x[:8]), rtol=1e-4, atol=1e-4)
