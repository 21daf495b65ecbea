"""imgclust.deep core: hand-computed losses, network shapes, exact checkpoint resume, AE and DEC on small data."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_deep import assert_same_network, fit_crash_resume

from imgclust.data.datasets import fashion_mnist_available, load_fashion_mnist
from imgclust.deep import DEC, AutoencoderClusterer
from imgclust.deep.dec import initial_centroids
from imgclust.deep.losses import ascae_loss, kl_clustering_loss, student_t, target_distribution
from imgclust.deep.networks import ASCAE, SCAE, ConvAE, build_network
from imgclust.deep.training import (
    CRASH_ENV,
    Checkpointer,
    TrainingConfig,
    batches,
    config_fingerprint,
    seed_everything,
    to_float_images,
)
from imgclust.devices import resolve_device
from imgclust.exceptions import ConfigError, CorruptArtifactError, NotFittedError
from imgclust.metrics import cluster_accuracy, nmi

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ----------------------------------------------------------------------------- losses, by hand


def test_student_t_matches_numpy_formula() -> None:
    z = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    mu = np.array([[0.0, 0.0], [1.0, 1.0]])
    for alpha in (1.0, 3.0):
        expected = np.empty((3, 2))
        for i in range(3):
            for j in range(2):
                expected[i, j] = (1 + np.sum((z[i] - mu[j]) ** 2) / alpha) ** (-(alpha + 1) / 2)
        expected /= expected.sum(axis=1, keepdims=True)
        q = student_t(torch.tensor(z), torch.tensor(mu), alpha=alpha).numpy()
        np.testing.assert_allclose(q, expected, rtol=1e-12)
    # alpha = 1 by hand, row 0: distances 0 and 2 -> kernels 1 and 1/3 -> q = (3/4, 1/4)
    np.testing.assert_allclose(student_t(torch.tensor(z), torch.tensor(mu))[0].numpy(), [0.75, 0.25])


def test_target_distribution_by_hand() -> None:
    q = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
    f = q.sum(0)  # (1.6, 1.4)
    w = q**2 / f
    expected = w / w.sum(1, keepdim=True)
    p = target_distribution(q)
    np.testing.assert_allclose(p.numpy(), expected.numpy(), rtol=1e-12)
    # row 0: (0.25/1.6) / (0.25/1.6 + 0.25/1.4) = 1.4 / 3.0
    assert math.isclose(float(p[0, 0]), 1.4 / 3.0, rel_tol=1e-12)
    assert float(p[1, 0]) > 0.9  # sharpened
    np.testing.assert_allclose(p.sum(1).numpy(), np.ones(3), rtol=1e-12)


def test_kl_loss_by_hand() -> None:
    q = torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=torch.float64)
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    expected = (math.log(1 / 0.5) + 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)) / 2
    assert math.isclose(float(kl_clustering_loss(q, p)), expected, rel_tol=1e-12)
    assert float(kl_clustering_loss(q, q)) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ConfigError):
        kl_clustering_loss(q, p[:1])


def test_ascae_loss_by_hand() -> None:
    x = torch.zeros(2, 1, 2, 2)
    recon = torch.ones(2, 1, 2, 2)  # ||x - recon||² = 4 per sample
    f = torch.zeros(2, 3)
    d3 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # ||b - g||² = 1 and 4 -> mean 2.5
    assert float(ascae_loss(x, recon, f, d3, lam=2.0)) == pytest.approx(4.0 + 2.0 * 2.5)
    assert float(ascae_loss(x, x, f, f, lam=20.0)) == 0.0


# ----------------------------------------------------------------------------- networks


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 64)])
def test_network_shapes(channels: int, size: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(3, channels, size, size)
    for cls in (ASCAE, SCAE):
        net = cls(channels, size, k=7)
        recon, extras = net(x)
        assert recon.shape == x.shape
        assert extras["f"].shape == (3, 50) and extras["d3"].shape == (3, 50)
        assert extras["d2"].shape == (3, 7) and net.d2.out_features == 7
        assert net.encode(x).shape == (3, 50)
        assert (net.d1 is None) == (cls is SCAE)
    net = ConvAE(channels, size, embed_dim=5)
    recon, extras = net(x)
    assert recon.shape == x.shape and extras["z"].shape == (3, 5) and net.encode(x).shape == (3, 5)
    spec = {"arch": "ascae", "in_channels": channels, "image_size": [size, size], "k": 4}
    assert isinstance(build_network(spec), ASCAE)


def test_network_rejects_too_small_images() -> None:
    with pytest.raises(ConfigError, match="21x21"):
        ASCAE(1, 16, k=3)


def test_ascae_paper_init() -> None:
    torch.manual_seed(0)
    net = ASCAE(1, 28, k=10, init="paper")
    assert abs(float(net.c2.weight.detach().std()) - 0.1) < 0.01 and float(net.c2.bias.detach().abs().max()) == 0.0


# ----------------------------------------------------------------------------- training plumbing


def test_training_helpers() -> None:
    g1, g2 = seed_everything(3), seed_everything(3)
    a = [b.tolist() for b in batches(10, 4, g1)]
    assert a == [b.tolist() for b in batches(10, 4, g2)] and sorted(sum(a, [])) == list(range(10))
    assert [len(b) for b in a] == [4, 4, 2]
    t = to_float_images(np.full((2, 5, 6, 3), 255, dtype=np.uint8))
    assert t.shape == (2, 3, 5, 6) and t.dtype == torch.float32 and float(t.max()) == 1.0
    assert to_float_images(np.zeros((2, 5, 6), dtype=np.uint8)).shape == (2, 1, 5, 6)
    with pytest.raises(ConfigError):
        to_float_images(np.zeros((5, 6), dtype=np.uint8))
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")


def _blobs_images(n_per: int = 24, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three easy classes: a bright square in one of three places, plus noise. (N, size, size) uint8."""
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for c, (r, col) in enumerate([(2, 2), (2, size - 7), (size - 7, 5)]):
        for _ in range(n_per):
            img = rng.integers(0, 40, size=(size, size))
            img[r:r + 5, col:col + 5] = 230
            imgs.append(img)
            labels.append(c)
    return np.asarray(imgs, dtype=np.uint8), np.asarray(labels)


def _tiny_ae(**kw: object) -> AutoencoderClusterer:
    params = {"arch": "convae", "n_clusters": 3, "epochs": 3, "batch_size": 16, "kmeans_redo": 1,
              "device": "cpu", "seed": 1, **kw}
    return AutoencoderClusterer.with_training(**params)  # type: ignore[arg-type]


def _child_fit(out: Path, *ck: object, crash: int | None = None) -> int:
    """Run tests/helpers_resume.py (one AE fit in a fresh process); its exit status."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash is not None:
        env[CRASH_ENV] = str(crash)
    helper = Path(__file__).resolve().parents[1] / "helpers_resume.py"
    proc = subprocess.run([sys.executable, str(helper), str(out), *map(str, ck)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    return proc.returncode


@pytest.mark.parametrize("every,crash", [(2, 5), pytest.param(3, 3, marks=pytest.mark.slow)])  # mid-epoch / boundary
def test_checkpoint_resume_is_bit_identical(tmp_path: Path, every: int, crash: int) -> None:
    """Reference, crashed and resumed fits each in a fresh process, like a real crash and restart."""
    ck = tmp_path / "ck"
    assert _child_fit(tmp_path / "ref.pt") == 0
    assert _child_fit(tmp_path / "crashed.pt", ck, every, crash=crash) == 3
    assert (ck / "ckpt.pt").exists() and not (ck / "ckpt.tmp").exists() and not (tmp_path / "crashed.pt").exists()
    assert _child_fit(tmp_path / "resumed.pt", ck, every) == 0
    ref, resumed = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("ref", "resumed"))
    assert resumed["resumed_from"] == (crash // every) * every
    assert ref["state"].keys() == resumed["state"].keys()
    for name, tensor in ref["state"].items():
        assert torch.equal(tensor, resumed["state"][name]), name
    assert ref["losses"] == resumed["losses"]
    assert torch.equal(ref["labels"], resumed["labels"])


def test_checkpoint_refuses_other_config(tmp_path: Path) -> None:
    x, _ = _blobs_images(n_per=8)
    _tiny_ae(epochs=1, checkpoint_dir=str(tmp_path)).fit(x)
    with pytest.raises(ConfigError, match="refusing to resume"):
        _tiny_ae(epochs=1, lr=5e-4, checkpoint_dir=str(tmp_path)).fit(x)
    with pytest.raises(ConfigError, match="refusing to resume"):  # other data
        _tiny_ae(epochs=1, checkpoint_dir=str(tmp_path)).fit(255 - x)
    ck = Checkpointer(tmp_path / "raw", fingerprint=config_fingerprint({"a": 1}), every=1)
    ck.save(3, {"w": torch.ones(2)})
    step, state = ck.load()  # type: ignore[misc]
    assert step == 3 and torch.equal(state["w"], torch.ones(2))
    with pytest.raises(ConfigError, match="refusing to resume"):
        Checkpointer(tmp_path / "raw", fingerprint=config_fingerprint({"a": 2})).load()
    (tmp_path / "raw" / "ckpt.pt").write_bytes(b"garbage")
    with pytest.raises(CorruptArtifactError):
        ck.load()


def test_dec_resume_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = _blobs_images(n_per=16)
    ae = _tiny_ae(epochs=1, augment=False).fit(x)
    params = {"n_clusters": 3, "pretrained": ae, "update_interval": 4, "tol": 0.0, "kmeans_redo": 1, "idec": True}
    training = TrainingConfig(max_iter=12, batch_size=16, device="cpu")
    ref, res = fit_crash_resume(lambda **ckpt: DEC(**params, training=replace(training, **ckpt)),  # type: ignore[arg-type]
                                x, tmp_path, monkeypatch, crash_at=7, every=5)
    assert res.resumed_from_step_ == 5
    assert_same_network(ref, res)
    np.testing.assert_array_equal(ref.cluster_centers_, res.cluster_centers_)
    assert ref.refreshes_ == res.refreshes_


# ----------------------------------------------------------------------------- estimators


def test_autoencoder_contract_and_save_load(tmp_path: Path) -> None:
    x, _ = _blobs_images(n_per=10)
    est = _tiny_ae(epochs=1)
    with pytest.raises(NotFittedError):
        est.predict(x)
    assert est.fit(x) is est
    emb = est.transform(x)
    assert emb.shape == (30, 3) and emb.dtype == np.float32 and est.labels_.shape == (30,)
    np.testing.assert_array_equal(est.predict(x), est.labels_)
    np.testing.assert_array_equal(_tiny_ae(epochs=1).fit(x).transform(x), emb)  # same seed, same result
    with pytest.raises(ConfigError, match="fitted on"):
        est.transform(np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(ConfigError):
        _tiny_ae(arch="vae").fit(x)
    est.save(tmp_path / "ae")
    loaded = AutoencoderClusterer.load(tmp_path / "ae")
    np.testing.assert_array_equal(loaded.transform(x), emb)
    np.testing.assert_array_equal(loaded.predict(x), est.predict(x))
    assert loaded.history_ == est.history_ and loaded.get_params() == est.get_params()
    with pytest.raises(ConfigError, match="not a DEC"):
        DEC.load(tmp_path / "ae")
    (tmp_path / "ae" / "weights.pt").write_bytes(b"tampered")
    with pytest.raises(CorruptArtifactError):
        AutoencoderClusterer.load(tmp_path / "ae")


def test_ascae_rgb_fit_predict() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(20, 24, 24, 3), dtype=np.uint8)
    est = AutoencoderClusterer.with_training(arch="ascae", n_clusters=2, epochs=1, batch_size=10, kmeans_redo=1,
                                             device="cpu", augment=False).fit(x)
    assert est.transform(x).shape == (20, 50) and est.embed_dim_ == 50
    assert est.predict(x).shape == (20,)


def test_ascae_clusters_l2_normalised_f_by_default(tmp_path: Path) -> None:
    """ASCAE/SCAE default to cosine k-means on F (ARCH_DEFAULTS); ``spherical=False`` is the
    paper's k-means on raw F; ConvAE keeps plain k-means. Predictions survive save/load."""
    x, _ = _blobs_images(n_per=10, size=24)
    est = AutoencoderClusterer.with_training(arch="scae", n_clusters=3, epochs=1, batch_size=16, kmeans_redo=1,
                                             device="cpu").fit(x)
    assert est.kmeans_ is not None and est.kmeans_.spherical
    norms = np.linalg.norm(est.cluster_centers_, axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-4)
    # labels are the nearest unit centroid of each L2-normalised F row
    f = est.transform(x)
    unit = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-30)
    np.testing.assert_array_equal(est.predict(x), np.argmax(unit @ est.cluster_centers_.T, axis=1))
    est.save(tmp_path / "scae")
    np.testing.assert_array_equal(AutoencoderClusterer.load(tmp_path / "scae").predict(x), est.predict(x))
    paper = AutoencoderClusterer.with_training(arch="scae", n_clusters=3, epochs=1, batch_size=16, kmeans_redo=1, device="cpu",
                                               spherical=False).fit(x)
    assert paper.kmeans_ is not None and not paper.kmeans_.spherical
    assert not AutoencoderClusterer(arch="convae")._spherical()


def test_dec_converges_on_easy_data(tmp_path: Path) -> None:
    x, y = _blobs_images()
    ae = _tiny_ae(epochs=4, augment=False).fit(x)
    # 72 images, 16 per batch: 5 steps per epoch; P is refreshed every 3 epochs
    dec = DEC.with_training(n_clusters=3, pretrained=ae, update_interval=15, tol=0.001, max_iter=300, batch_size=16,
                            kmeans_redo=3, device="cpu").fit(x)
    assert dec.converged_ and dec.refreshes_[-1]["delta_label"] < 0.001
    losses = [h["loss"] for h in dec.history_]
    assert len(losses) >= 3 and losses[2] < losses[1] < losses[0]  # KL(P||Q) falls while P is fixed
    assert cluster_accuracy(y, dec.labels_) > 0.9
    q = dec.predict_proba(x)
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(dec.predict(x), dec.labels_)
    assert ae.network_ is not dec.network_  # the pretrained model is not modified
    dec.save(tmp_path / "dec")
    loaded = DEC.load(tmp_path / "dec")
    assert loaded.pretrained is None
    np.testing.assert_array_equal(loaded.predict(x), dec.predict(x))
    np.testing.assert_array_equal(loaded.predict_proba(x), q)


def test_initial_centroids_kmeans_and_errors() -> None:
    x, _ = _blobs_images(n_per=12)
    ae = _tiny_ae(epochs=1, augment=False).fit(x)
    emb = ae.transform(x)
    km, sweep = initial_centroids(emb, init="kmeans", n_clusters=3, kmeans_redo=1, seed=1)
    assert sweep is None  # k given
    np.testing.assert_allclose(km, ae.kmeans_.cluster_centers_, rtol=1e-5, atol=1e-6)  # same seed, same k-means
    with pytest.raises(ConfigError, match="init must be"):
        initial_centroids(emb, init="pretrained", n_clusters=3, kmeans_redo=1, seed=0)
    with pytest.raises(ConfigError, match="init must be"):
        DEC(n_clusters=3, pretrained=ae, init="n2d").fit(x)
    with pytest.raises(ConfigError, match="more than 20 images"):
        initial_centroids(emb[:20], init="umap", n_clusters=3, kmeans_redo=1, seed=0)


@pytest.mark.slow  # UMAP's numba JIT compilation alone takes ~30 s of CPU
def test_initial_centroids_umap_are_means_of_the_n2d_partition() -> None:
    x, y = _blobs_images(n_per=20)
    ae = _tiny_ae(epochs=3, augment=False).fit(x)
    emb = ae.transform(x)
    mu, _ = initial_centroids(emb, init="umap", n_clusters=3, kmeans_redo=1, seed=0)
    assert mu.shape == (3, emb.shape[1]) and mu.dtype == np.float32
    near = ((emb[:, None, :] - mu[None]) ** 2).sum(-1).argmin(1)
    assert cluster_accuracy(y, near) > 0.9  # three easy blobs: the means separate them
    dec = DEC.with_training(n_clusters=3, pretrained=ae, init="umap", max_iter=0, kmeans_redo=1, device="cpu").fit(x)
    np.testing.assert_allclose(dec.cluster_centers_, mu, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed (apt-get install "
                    "dataset-fashion-mnist); `make test` installs it")
def test_short_training_beats_random_encoder_on_fashion_mnist() -> None:
    x, y = load_fashion_mnist("test")
    idx = np.random.default_rng(0).choice(len(x), 2000, replace=False)
    x, y = x[idx], y[idx]
    # the paper's ASCAE settings (raw 0..255 pixels, N(0, 0.1²) init, λ = 20, k-means on raw F), small batches
    params = {"arch": "ascae", "n_clusters": 10, "batch_size": 32, "device": "cpu", "seed": 0, "kmeans_redo": 3,
              "spherical": False}
    untrained = AutoencoderClusterer.with_training(epochs=0, **params).fit(x)  # type: ignore[arg-type]
    trained = AutoencoderClusterer.with_training(epochs=4, **params).fit(x)  # type: ignore[arg-type]
    acc0, acc1 = cluster_accuracy(y, untrained.labels_), cluster_accuracy(y, trained.labels_)
    assert trained.history_[-1]["loss"] < trained.history_[0]["loss"]
    assert acc1 > acc0 + 0.02, (acc0, acc1)
    # the library default, cosine k-means on F: a random encoder's F is already a fair feature for it
    # (ACC 0.50 here), so training is measured by NMI (0.474 -> 0.507 when this test was written)
    params["spherical"] = None
    nmi0 = nmi(y, AutoencoderClusterer.with_training(epochs=0, **params).fit(x).labels_)  # type: ignore[arg-type]
    nmi1 = nmi(y, AutoencoderClusterer.with_training(epochs=4, **params).fit(x).labels_)  # type: ignore[arg-type]
    assert nmi1 > nmi0 + 0.02, (nmi0, nmi1)


@pytest.mark.slow  # UMAP's numba JIT compilation alone takes ~30 s of CPU
@pytest.mark.parametrize("clusterer", ["kmeans", "gmm"])
def test_umap_option_n2d_save_load(tmp_path: Path, clusterer: str) -> None:
    x, _ = _blobs_images(n_per=12)
    est = _tiny_ae(epochs=1, umap_components=2, umap_neighbors=5, clusterer=clusterer).fit(x)
    assert est.umap_ is not None and est.cluster_centers_.shape == (3, 2)
    assert est.cluster_features(x).shape == (36, 2)
    est.save(tmp_path / "n2d")
    assert (tmp_path / "n2d" / "umap" / "estimator.json").exists()
    assert (tmp_path / "n2d" / clusterer / "estimator.json").exists()
    loaded = AutoencoderClusterer.load(tmp_path / "n2d")
    np.testing.assert_array_equal(loaded.predict(x), est.predict(x))


def test_gmm_clusterer_option_labels_by_posterior_and_round_trips(tmp_path: Path) -> None:
    x, y = _blobs_images(n_per=20)
    est = _tiny_ae(epochs=2, augment=False, clusterer="gmm").fit(x)
    assert est.kmeans_ is None and est.gmm_ is not None and est.cluster_centers_.shape == (3, est.embed_dim_)
    np.testing.assert_array_equal(est.labels_, est.gmm_.predict(est.transform(x)))
    assert cluster_accuracy(y, est.labels_) > 0.9  # three easy blobs
    est.save(tmp_path / "g")
    loaded = AutoencoderClusterer.load(tmp_path / "g")
    np.testing.assert_array_equal(loaded.predict(x), est.predict(x))
    with pytest.raises(ConfigError, match="clusterer must be"):
        _tiny_ae(clusterer="dbscan").fit(x)


def test_training_config_defaults_validation_and_routing() -> None:
    """One TrainingConfig per deep estimator: ``None`` fields take the class's defaults, the common fields are
    validated once (in the config), and flat keywords (create_deep, ``with_training``) are routed into it."""
    from imgclust.deep.deepcluster import DeepCluster
    from imgclust.deep.methods import create_deep
    from imgclust.deep.nnc import NeighbourConsistency

    assert NeighbourConsistency(training=TrainingConfig(batch_size=64)).training == TrainingConfig(
        max_iter=2000, batch_size=64, lr=1e-4, seed=0, device="auto", checkpoint_every=500)
    assert DEC().training.max_iter == 20000 and AutoencoderClusterer().training.epochs == 50
    assert DeepCluster().training.lr == 0.05 and DeepCluster().training.checkpoint_every is None
    est = create_deep("nnc", k=4, max_iter=7, seed=2, device="cpu", lr=1e-3, knn_interval=3)
    assert isinstance(est, NeighbourConsistency) and est.knn_interval == 3
    assert (est.training.max_iter, est.training.seed, est.training.lr, est.seed) == (7, 2, 1e-3, 2)
    assert "lr" not in est.get_params() and est.get_params()["training"] is est.training
    x = np.zeros((10, 8, 8), dtype=np.uint8)
    for bad, match in ((TrainingConfig(epochs=3), "trains for training.max_iter"),
                       (TrainingConfig(lr=0.0), "training.lr"), (TrainingConfig(batch_size=0), "training.batch_size"),
                       (TrainingConfig(seed=-1), "training.seed"), (TrainingConfig(device="tpu"), "training.device"),
                       (TrainingConfig(checkpoint_every=0), "training.checkpoint_every")):
        with pytest.raises(ConfigError, match=match):
            DEC(training=bad).fit(x)
    with pytest.raises(ConfigError, match="TrainingConfig"):
        DEC(training={"lr": 1.0}).fit(x)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="inside training="):
        DEC.with_training(lr=1.0, training=TrainingConfig())


def test_training_config_round_trips_and_flat_artifacts_load(tmp_path: Path) -> None:
    """``params["training"]`` is saved as a JSON object and loads back as the same config; an artifact written
    before the config existed (training fields flat among the params) loads with them moved into it and
    predicts the same; the checkpoint fingerprint still sees the flat parameters (old checkpoints resume)."""
    import json

    x, _ = _blobs_images(n_per=10)
    est = _tiny_ae(epochs=1).fit(x)
    est.save(tmp_path / "new")
    doc = json.loads((tmp_path / "new" / "estimator.json").read_text())
    assert doc["params"]["training"] == est.training.to_dict() and "epochs" not in doc["params"]
    loaded = AutoencoderClusterer.load(tmp_path / "new")
    assert loaded.training == est.training and loaded.get_params() == est.get_params()
    old = dict(doc["params"])
    old.update({k: v for k, v in old.pop("training").items() if k != "max_iter"})  # the pre-config layout
    (tmp_path / "new" / "estimator.json").write_text(json.dumps({**doc, "params": old}))
    flat = AutoencoderClusterer.load(tmp_path / "new")
    assert flat.training == est.training
    np.testing.assert_array_equal(flat.predict(x), est.predict(x))
    fp = est._fingerprint_params()
    assert fp["lr"] == est.training.lr and fp["seed"] == est.training.seed and fp["batch_size"] == 16
    assert not {"training", "epochs", "max_iter", "device", "checkpoint_dir", "checkpoint_every"} & set(fp)
