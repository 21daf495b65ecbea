"""imgclust.deep.contrastive (``simclr``): NT-Xent by hand, the augmentation, the net, training and resume;
the deep methods' mixed precision on CUDA."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import fashion_test_subset
from helpers_deep import assert_same_network, fit_crash_resume

from imgclust.deep import contrastive
from imgclust.deep.contrastive import ContrastiveClusterer
from imgclust.deep.losses import nt_xent
from imgclust.deep.methods import create_deep, load_deep
from imgclust.deep.networks import ContrastiveNet, build_network
from imgclust.deep.resnet import BasicBlock
from imgclust.exceptions import ConfigError
from imgclust.metrics import cluster_accuracy, nmi

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_nt_xent_by_hand() -> None:
    # two orthogonal images, identical views: each anchor sees its positive at cosine 1, the other
    # image's two views at cosine 0, so every anchor costs -log(e^(1/τ) / (e^(1/τ) + 2)).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for tau in (1.0, 0.5):
        expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2))
        # float32 log-sum-exp of logits (1/τ, 0, 0): 1-ulp exp and log, a 3-term sum, the rounding of 1/τ + log s
        # (u = 2**-24): |error| <= (9 + 1/τ) u; the old rel=1e-6 was below that for τ = 0.5 (loss 0.24)
        assert nt_xent(z, z.clone(), tau).item() == pytest.approx(expected, abs=(9 + 1 / tau) * 2**-24)
    # projections are normalised first: scaling rows changes nothing
    assert nt_xent(z * torch.tensor([[2.0], [3.0]]), z, 1.0).item() == pytest.approx(math.log((math.e + 2) / math.e))
    # anti-aligned positives cost more than aligned ones
    z2 = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    assert nt_xent(z, z2, 0.5) > nt_xent(z, z, 0.5)


def test_nt_xent_matches_a_loop_over_anchors() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    u = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    tau, total = 0.7, 0.0
    for a in range(10):
        pos = (a + 5) % 10
        denom = sum(math.exp(float(u[a] @ u[b]) / tau) for b in range(10) if b != a)
        total += -math.log(math.exp(float(u[a] @ u[pos]) / tau) / denom)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(total / 10, rel=1e-5)


def test_nt_xent_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="N >= 2"):
        nt_xent(torch.ones(1, 3), torch.ones(1, 3), 0.5)
    with pytest.raises(ConfigError, match="N >= 2"):
        nt_xent(torch.ones(4, 3), torch.ones(4, 2), 0.5)
    with pytest.raises(ConfigError, match="temperature"):
        nt_xent(torch.ones(4, 3), torch.ones(4, 3), 0.0)


def test_contrastive_view_keeps_shape_range_and_background() -> None:
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    out = contrastive.contrastive_view(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, contrastive.contrastive_view(x))  # fresh draws
    torch.manual_seed(0)
    torch.testing.assert_close(contrastive.contrastive_view(x), out)  # reproducible from the torch RNG
    # a flat grey image: any crop of it is flat; contrast and brightness keep it flat, within their ranges
    flat = torch.full((32, 3, 8, 8), 0.5)
    views = contrastive.contrastive_view(flat, min_crop_area=0.5, jitter=0.4, tone_curve="none")
    per_image = views.flatten(1)
    torch.testing.assert_close(per_image.max(1).values, per_image.min(1).values)
    assert per_image.min() >= 0.5 * 0.6 - 0.2 - 1e-6 and per_image.max() <= 0.5 * 1.4 + 0.2 + 1e-6
    assert per_image[:, 0].std() > 0.05  # the jitter does vary between images
    # a tone curve maps one grey level to one grey level: still flat
    for kind in ("monotone", "random"):
        per_image = contrastive.contrastive_view(flat, min_crop_area=0.5, tone_curve=kind).flatten(1)
        torch.testing.assert_close(per_image.max(1).values, per_image.min(1).values)
        assert per_image.min() >= 0 and per_image.max() <= 1
    # the black background gets no brightness shift, and every tone curve keeps black black
    for kind in ("none", "monotone", "random"):
        black = torch.zeros(8, 1, 28, 28)
        assert torch.equal(contrastive.contrastive_view(black, tone_curve=kind), torch.zeros_like(black))


def test_apply_tone_curve_by_hand() -> None:
    # S = 4 pieces: knots are the outputs at 0, 0.25, 0.5, 0.75, 1; linear in between
    knots = torch.tensor([[0.0, 0.5, 0.6, 0.9, 1.0], [0.0, 1.0, 0.2, 0.2, 0.4]])
    x = torch.tensor([0.0, 0.125, 0.3, 0.5, 0.8, 1.0]).view(1, 1, 1, 6).expand(2, 2, 1, 6)  # two channels alike
    out = contrastive.apply_tone_curve(x, knots)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.25, 0.52, 0.6, 0.92, 1.0]))
    torch.testing.assert_close(out[1, 0, 0], torch.tensor([0.0, 0.5, 0.84, 0.2, 0.24, 0.4]))
    torch.testing.assert_close(out[:, 1], out[:, 0])
    with pytest.raises(ConfigError, match="knots must be"):
        contrastive.apply_tone_curve(x, knots[:1])
    with pytest.raises(ConfigError, match=r"images \(N, C, H, W\) and knots \(N, S \+ 1\)"):
        contrastive.apply_tone_curve(x, knots[0])
    with pytest.raises(ConfigError, match=r"images \(N, C, H, W\)"):
        contrastive.apply_tone_curve(x[:, 0], knots)


def test_tone_curve_knots() -> None:
    torch.manual_seed(0)
    mono = contrastive.tone_curve_knots(500, "monotone", 4)
    assert mono.shape == (500, 5) and (mono[:, 0] == 0).all()
    assert (mono.diff(dim=1) >= 0).all()  # keeps the order of grey levels
    assert (mono[:, -1] == 1).all()  # exactly: every curve maps white to white
    rnd = contrastive.tone_curve_knots(500, "random", 8)
    assert rnd.shape == (500, 9) and (rnd[:, 0] == 0).all() and (rnd[:, 1:] >= 0.2).all() and (rnd <= 1).all()
    assert (rnd.diff(dim=1) < 0).any(dim=1).float().mean() > 0.9  # almost every curve reorders grey levels
    for bad in ("none", "gamma"):
        with pytest.raises(ConfigError, match="tone curve kind"):
            contrastive.tone_curve_knots(2, bad)


def _check_contrastive_net(spec: dict[str, Any], embed_dim: int) -> ContrastiveNet:
    """Build ``spec`` and check: unit-norm ``(3, embed_dim)`` representations, ``(3, proj_dim)`` projections."""
    torch.manual_seed(0)
    net = build_network(spec)
    assert isinstance(net, ContrastiveNet) and net.embed_dim == embed_dim
    x = torch.rand(3, spec["in_channels"], *spec["image_size"])
    z = net.encode(x)
    assert z.shape == (3, embed_dim)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    assert net(x).shape == (3, spec["proj_dim"])
    # the extractor's columns: encode's exactly, the pooled output before normalisation, the spatial spread
    stats = net.encode_with_statistics(x)
    assert stats.shape == (3, 3 * embed_dim) and net.statistics_dim == 2 * embed_dim
    torch.testing.assert_close(stats[:, :embed_dim], z, rtol=0, atol=0)
    torch.testing.assert_close(stats[:, embed_dim:2 * embed_dim], net.encoder(x))
    assert (stats[:, 2 * embed_dim:] >= 0).all()
    return net


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 64)])
def test_contrastive_net_shapes(channels: int, size: int) -> None:
    _check_contrastive_net({"arch": "contrastive", "in_channels": channels, "image_size": [size, size], "width": 8,
                            "proj_dim": 16}, 32)
    with pytest.raises(ConfigError, match="at least 4x4"):
        ContrastiveNet(1, 3)
    with pytest.raises(ConfigError, match="width and proj_dim"):
        build_network({"arch": "contrastive", "in_channels": 1, "image_size": 28})


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 33)])
def test_resnet18_encoder_shapes(channels: int, size: int) -> None:
    """The CIFAR-stem ResNet-18: 8·width representation, any size >= 4 (stages at size, /2, /4, /8)."""
    spec = {"arch": "contrastive", "in_channels": channels, "image_size": [size, size], "width": 4, "proj_dim": 16,
            "encoder": "resnet18"}
    net = _check_contrastive_net(spec, 32)
    blocks = [m for m in net.encoder.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and [b.conv2.out_channels for b in blocks[::2]] == [4, 8, 16, 32]
    # width 64 is the published ResNet-18 (11.17M encoder parameters with one input channel: torchvision's 11.69M
    # less its 1000-class fc and 7x7 RGB stem)
    published = ContrastiveNet(1, 28, width=64, encoder="resnet18")
    assert sum(p.numel() for p in published.encoder.parameters()) == 11_167_680
    # a spec saved before encoders existed builds the small encoder
    old = build_network({k: v for k, v in spec.items() if k != "encoder"})
    assert isinstance(old, ContrastiveNet) and not [m for m in old.modules() if isinstance(m, BasicBlock)]
    with pytest.raises(ConfigError, match="encoder must be one of"):
        ContrastiveNet(1, 28, encoder="vgg")


def test_resnet18_simclr_fits_saves_and_loads(tmp_path: Path) -> None:
    x, _ = fashion_test_subset(120)
    est = ContrastiveClusterer.with_training(n_clusters=3, encoder="resnet18", width=4, epochs=1, batch_size=32,
                                             umap_components=None, clusterer="kmeans", kmeans_redo=1, device="cpu", seed=0).fit(x)
    assert est.embed_dim_ == 32 and est.transform(x).shape == (120, 32) and est.labels_.shape == (120,)
    est.save(tmp_path / "m")
    loaded = load_deep(tmp_path / "m")
    assert isinstance(loaded, ContrastiveClusterer) and loaded.encoder == "resnet18"
    np.testing.assert_array_equal(loaded.transform(x), est.transform(x))


def test_bad_parameters_fail_before_training() -> None:
    x = np.zeros((10, 28, 28), dtype=np.uint8)
    for bad, match in (({"temperature": 0.0}, "temperature"), ({"min_crop_area": 0.0}, "min_crop_area"),
                       ({"jitter": 1.0}, "jitter"), ({"batch_size": 1}, "batch_size"),
                       ({"tone_curve": "gamma"}, "tone_curve"), ({"tone_segments": 0}, "tone_segments"),
                       ({"clusterer": "dbscan"}, "clusterer"), ({"encoder": "vgg"}, "encoder")):
        with pytest.raises(ConfigError, match=match):
            ContrastiveClusterer.with_training(**bad).fit(x)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 2 images"):
        ContrastiveClusterer.with_training(epochs=0).fit(x[:1])


def test_short_training_beats_the_random_encoder_on_fashion_mnist() -> None:
    x, y = fashion_test_subset(1000)
    params = {"n_clusters": 10, "width": 16, "batch_size": 128, "umap_components": None, "clusterer": "kmeans",
              "kmeans_redo": 3, "device": "cpu", "seed": 0}
    untrained = ContrastiveClusterer.with_training(epochs=0, **params).fit(x)  # type: ignore[arg-type]
    trained = ContrastiveClusterer.with_training(epochs=6, **params).fit(x)  # type: ignore[arg-type]
    assert trained.history_[-1]["loss"] < trained.history_[0]["loss"]
    acc0, acc1 = cluster_accuracy(y, untrained.labels_), cluster_accuracy(y, trained.labels_)
    nmi0, nmi1 = nmi(y, untrained.labels_), nmi(y, trained.labels_)
    # 0.486 / 0.470 -> 0.551 / 0.506 when this test was written
    assert acc1 > acc0 + 0.03 and nmi1 > nmi0 + 0.02, (acc0, acc1, nmi0, nmi1)


def test_resume_after_a_crash_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = fashion_test_subset(200)  # 4 steps per epoch of 50; crash mid-epoch 2
    params = {"n_clusters": 4, "width": 4, "proj_dim": 8, "epochs": 3, "batch_size": 50, "umap_components": None,
              "clusterer": "kmeans", "kmeans_redo": 1, "device": "cpu", "seed": 3}
    ref, res = fit_crash_resume(lambda **ckpt: ContrastiveClusterer.with_training(**params, **ckpt),  # type: ignore[arg-type]
                                x, tmp_path, monkeypatch, crash_at=6, every=5)
    assert res.resumed_from_step_ == 5
    assert_same_network(ref, res)
    assert [h["loss"] for h in ref.history_] == [h["loss"] for h in res.history_]
    np.testing.assert_array_equal(ref.labels_, res.labels_)
    with pytest.raises(ConfigError, match="refusing to resume"):
        ContrastiveClusterer.with_training(**{**params, "temperature": 0.2}, checkpoint_dir=str(tmp_path),  # type: ignore[arg-type]
                                           checkpoint_every=5).fit(x)


def test_simclr_method_fit_predict_save_load(tmp_path: Path) -> None:
    x, y = fashion_test_subset(300)
    est = create_deep("simclr", k=10, epochs=2, seed=0, device="cpu", width=8, consensus_runs=2)
    assert isinstance(est, ContrastiveClusterer) and est.umap_components == 10 and est.clusterer == "gmm"
    est.fit(x)
    assert est.labels_.shape == (300,) and est.umap_ is not None and est.gmm_ is not None
    assert cluster_accuracy(y, est.labels_) > 0.3  # chance is ~0.1
    assert est.transform(x).shape == (300, 32) and est.cluster_features(x).shape == (300, 10)
    est.save(tmp_path / "simclr")
    loaded = load_deep(tmp_path / "simclr")
    assert isinstance(loaded, ContrastiveClusterer) and loaded.get_params()["tone_curve"] == "monotone"
    np.testing.assert_array_equal(loaded.predict(x), est.predict(x))
    # a model saved before the tone curve existed was trained without one, and says so when loaded
    manifest = tmp_path / "simclr" / "estimator.json"
    doc = json.loads(manifest.read_text())
    del doc["params"]["tone_curve"], doc["params"]["tone_segments"]
    manifest.write_text(json.dumps(doc))
    old = load_deep(tmp_path / "simclr")
    assert isinstance(old, ContrastiveClusterer)
    assert (old.get_params()["tone_curve"], old.get_params()["tone_segments"]) == ("none", 4)
    np.testing.assert_array_equal(old.predict(x), est.predict(x))


def test_create_deep_simclr_takes_its_own_umap_components() -> None:
    """``create_deep`` sets UMAP to ``k`` dims for simclr unless the caller overrides it (the GPU test passes
    ``umap_components=None``; a duplicate keyword used to raise TypeError)."""
    assert create_deep("simclr", k=4, epochs=1).umap_components == 4
    assert create_deep("simclr", k=4, epochs=1, umap_components=None).umap_components is None


def test_mixed_precision_is_bf16_autocast_on_cuda_only() -> None:
    from imgclust.devices import mixed_precision

    x = torch.randn(4, 4)
    with mixed_precision(torch.device("cpu")):
        assert (x @ x).dtype == torch.float32  # CPU training stays float32 (exact resume)
    with pytest.warns(UserWarning, match="CUDA"), pytest.MonkeyPatch.context() as mp:  # the context itself, no GPU needed
        mp.setattr(torch.cuda, "is_available", lambda: False)
        ctx = mixed_precision(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["simclr", "simclr-resnet18", "convae", "idec", "nnc", "deepcluster"])
def test_training_on_cuda_runs_under_bf16_autocast(method: str) -> None:
    """On a GPU the training forward passes run in bf16 (a conv's output dtype, seen by a hook) and converge
    to finite weights; inference (transform) stays float32."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x, _ = fashion_test_subset(256)
    extra: dict[str, object] = {}
    if method.startswith("simclr"):
        extra = {"umap_components": None, "clusterer": "kmeans"}
        if method == "simclr-resnet18":
            method, extra["encoder"], extra["width"] = "simclr", "resnet18", 8
    est = create_deep(method, k=4, epochs=1, max_iter=4, seed=0, device="cuda", **extra)
    seen: set[torch.dtype] = set()
    original = torch.nn.Conv2d.forward

    def spy(self: torch.nn.Conv2d, inp: torch.Tensor) -> torch.Tensor:
        out = original(self, inp)
        if self.training:
            seen.add(out.dtype)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.Conv2d, "forward", spy)
        est.fit(x)
    assert torch.bfloat16 in seen, seen
    assert all(torch.isfinite(t).all() for t in est.network_.state_dict().values() if t.is_floating_point())
    assert est.transform(x[:8]).dtype == np.float32
