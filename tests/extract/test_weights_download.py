"""Weights that download, verified, and the offline story, against a loopback hub the test serves itself.

A real ``http.server`` on 127.0.0.1 (random ports) plays the Hugging Face hub the way huggingface_hub
2.x talks to it (``HEAD /{repo}/resolve/main/{file}`` -> a 302 to a second "CDN" server carrying
``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256), ``X-Linked-Size``; ``GET`` on the CDN; no xet
headers) and the torch hub's checkpoint URLs. It serves small checkpoints the test writes (timm's
tiny test ViT, a 2-layer CNN), and can corrupt or truncate what it sends; it counts requests, so
"offline makes no request" is checked, not assumed. Caches are private temp folders per test.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from imgclust.exceptions import ConfigError, WeightsDownloadError, WeightsNotFoundError
from imgclust.extract.backbones import clear_backbone_cache, create_backbone
from imgclust.extract.backbones.download import probe_url
from imgclust.extract.backbones.pretrained import choose_default_extractor, published_weights
from imgclust.extract.backbones.weights import build_with_weights, parse_weights
from imgclust_cli.main import _pipeline_config, _print_summary, build_parser, main

timm = pytest.importorskip("timm")  # the `test` extra installs timm (and huggingface_hub with it)
import huggingface_hub  # noqa: E402,F401  (imported now: it reads HF_HUB_OFFLINE once, at import)

REPO = Path(__file__).resolve().parents[2]
TEST_VIT_REPO = "timm/test_vit.r160_in1k"
COMMIT = hashlib.sha1(b"imgclust-test-commit").hexdigest()


class LoopbackHub:
    """Two loopback HTTP servers: the hub (``/resolve/`` metadata + torch ``/models/`` files) and its CDN.

    ``hf[(repo, filename)] = bytes`` are hub files (advertised with their true sha256 and size);
    ``torch[filename] = bytes`` are torch hub checkpoints; ``damage`` maps a sha256 to ``"corrupt"``
    (one byte flipped, same size), ``"truncate"`` (half the bytes, a consistent Content-Length) or
    ``"drop"`` (the full Content-Length, half the bytes, then the connection closes).
    """

    def __init__(self) -> None:
        self.hf: dict[tuple[str, str], bytes] = {}
        self.torch: dict[str, bytes] = {}
        self.damage: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.hub = self._server(self._hub_response)
        self.cdn = self._server(self._cdn_response)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.hub.server_address[1]}"

    def blobs(self) -> dict[str, bytes]:
        return {hashlib.sha256(b).hexdigest(): b for b in [*self.hf.values(), *self.torch.values()]}

    def _server(self, respond: Any) -> ThreadingHTTPServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub._record("HEAD", self.path)
                respond(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                hub._record("GET", self.path)
                respond(self, head=False)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def _hub_response(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        parts = h.path.split("/")
        if h.path.startswith("/models/") and parts[-1] in self.torch:
            return self._send_bytes(h, self.torch[parts[-1]], head=head)
        if len(parts) >= 6 and parts[3] == "resolve":  # /{org}/{name}/resolve/{revision}/{filename}
            body = self.hf.get((f"{parts[1]}/{parts[2]}", "/".join(parts[5:])))
            if body is None:
                h.send_response(404)
                h.send_header("X-Repo-Commit", COMMIT)
                h.send_header("X-Error-Code", "EntryNotFound")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return None
            sha = hashlib.sha256(body).hexdigest()
            h.send_response(302)
            h.send_header("Location", f"http://127.0.0.1:{self.cdn.server_address[1]}/cdn/{sha}")
            h.send_header("X-Repo-Commit", COMMIT)
            h.send_header("X-Linked-Etag", f'"{sha}"')
            h.send_header("X-Linked-Size", str(len(body)))
            h.send_header("ETag", '"hub-pointer-etag"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        h.send_response(404)
        h.send_header("Content-Length", "0")
        h.end_headers()
        return None

    def _cdn_response(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        sha = h.path.rsplit("/", 1)[-1]
        body = self.blobs().get(sha)
        if body is None:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        self._send_bytes(h, body, head=head)

    def _send_bytes(self, h: BaseHTTPRequestHandler, body: bytes, *, head: bool) -> None:
        damage = self.damage.get(hashlib.sha256(body).hexdigest())
        length = len(body)
        if damage == "corrupt":
            body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
        elif damage == "truncate":
            body = body[: len(body) // 2]
            length = len(body)
        elif damage == "drop":
            body = body[: len(body) // 2]
        h.send_response(200)
        h.send_header("Content-Length", str(length))
        h.send_header("Content-Type", "application/octet-stream")
        if damage == "drop":
            h.send_header("Connection", "close")
        h.end_headers()
        if not head:
            h.wfile.write(body)
        if damage == "drop":
            h.close_connection = True

    def count(self, method: str | None = None) -> int:
        """Requests seen (of ``method``); a ``GET`` counts only file downloads (``/cdn/``, ``/models/``):
        huggingface_hub also GETs ``/api/...`` bookkeeping once per process."""
        with self._lock:
            return sum(1 for m, path in self.requests if method in (None, m)
                       and (m != "GET" or method is None or path.startswith(("/cdn/", "/models/"))))

    def close(self) -> None:
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackHub]:
    """A loopback hub, private empty caches pointed at by the environment, online, and no proxies."""
    server = LoopbackHub()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("IMGCLUST_OFFLINE", "HF_HUB_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    clear_backbone_cache()
    yield server
    clear_backbone_cache()
    server.close()


def _test_vit_bytes(seed: int) -> tuple[bytes, dict[str, torch.Tensor]]:
    """timm's tiny ``test_vit`` checkpoint in its published layout, as safetensors bytes."""
    from safetensors.torch import save

    torch.manual_seed(seed)
    state = timm.create_model("test_vit", pretrained=False).state_dict()
    return save({k: v.contiguous() for k, v in state.items()}), state


def _cache_files(root: Path) -> list[str]:
    """Every file or link under ``root`` that holds (or points to) weights: blobs, snapshots, partials."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if (p.is_file() or p.is_symlink()) and ".locks" not in p.parts and "refs" not in p.parts
                  and p.name != "CACHEDIR.TAG")


# --- Hugging Face hub path (timm / open_clip) -------------------------------------------------------

def test_hub_download_is_cached_verified_and_loaded(hub: LoopbackHub, tmp_path: Path) -> None:
    data, state = _test_vit_bytes(seed=1)
    hub.hf[(TEST_VIT_REPO, "model.safetensors")] = data
    backbone = create_backbone("timm-test-vit", weights="pretrained")
    sha = hashlib.sha256(data).hexdigest()
    folder = tmp_path / "hf_cache" / "models--timm--test_vit.r160_in1k"
    snapshot = folder / "snapshots" / COMMIT / "model.safetensors"
    assert snapshot.is_symlink() and Path(os.path.realpath(snapshot)) == folder / "blobs" / sha
    assert (folder / "refs" / "main").read_text() == COMMIT
    assert backbone.weights_id == f"pretrained:hf-hub:{TEST_VIT_REPO}:sha256:{sha}"
    reference = timm.create_model("test_vit", pretrained=False)
    reference.load_state_dict(state)
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference.eval().forward_head(reference.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(backbone.embed(x), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert hub.count("GET") == 1 and not _cache_files(folder / "blobs")[1:]  # one blob, nothing partial

    served = hub.count()
    clear_backbone_cache()
    assert create_backbone("timm-test-vit", weights="pretrained").weights_id == backbone.weights_id
    assert hub.count() == served  # cached now: no request at all


def test_hub_falls_back_to_the_next_accepted_file(hub: LoopbackHub, tmp_path: Path) -> None:
    torch.manual_seed(2)
    buf = io.BytesIO()
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), buf)
    hub.hf[(TEST_VIT_REPO, "pytorch_model.bin")] = buf.getvalue()
    backbone = create_backbone("timm-test-vit", weights="pretrained")
    assert backbone.weights_id.endswith(hashlib.sha256(buf.getvalue()).hexdigest())
    assert ("HEAD", f"/{TEST_VIT_REPO}/resolve/main/model.safetensors") in hub.requests  # asked first, 404


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_hub_download_that_does_not_verify_is_refused_and_leaves_nothing(hub: LoopbackHub, tmp_path: Path,
                                                                          damage: str) -> None:
    data, _ = _test_vit_bytes(seed=3)
    hub.hf[(TEST_VIT_REPO, "model.safetensors")] = data
    hub.damage[hashlib.sha256(data).hexdigest()] = damage
    with pytest.raises(WeightsDownloadError) as info:
        create_backbone("timm-test-vit", weights="pretrained")
    message = str(info.value)
    assert TEST_VIT_REPO in message and hub.endpoint in message and "\n" not in message
    assert ("corrupt or truncated" in message) if damage == "corrupt" else ("Consistency check failed" in message)
    assert hub.count("GET") == 1
    assert _cache_files(tmp_path / "hf_cache") == []  # no blob, no snapshot link, no .incomplete
    # the damage gone, the same call downloads a good copy
    hub.damage.clear()
    assert create_backbone("timm-test-vit", weights="pretrained").weights_id.endswith(hashlib.sha256(data).hexdigest())


def test_a_corrupt_blob_in_a_copied_cache_is_refused_on_load(hub: LoopbackHub, tmp_path: Path) -> None:
    data, _ = _test_vit_bytes(seed=4)
    hub.hf[(TEST_VIT_REPO, "model.safetensors")] = data
    create_backbone("timm-test-vit", weights="pretrained")  # downloaded and verified
    blob = tmp_path / "hf_cache" / "models--timm--test_vit.r160_in1k" / "blobs" / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data[: len(data) // 2])  # a truncated copy
    clear_backbone_cache()
    with pytest.raises(WeightsDownloadError, match="does not match the checksum the hub recorded"):
        create_backbone("timm-test-vit", weights="pretrained")
    assert main(["weights", "pull", "--offline", "timm-test-vit"]) == 2


@pytest.mark.parametrize("how", ["IMGCLUST_OFFLINE", "HF_HUB_OFFLINE", "--offline"])
def test_offline_makes_no_request_and_names_the_expected_file(hub: LoopbackHub, tmp_path: Path, how: str,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = _test_vit_bytes(seed=5)
    hub.hf[(TEST_VIT_REPO, "model.safetensors")] = data
    expected = tmp_path / "hf_cache" / "models--timm--test_vit.r160_in1k" / "snapshots"
    monkeypatch.setenv("IMGCLUST_OFFLINE", "0")  # restored after the test, whatever the CLI sets meanwhile
    if how == "--offline":
        assert main(["weights", "pull", "--offline", "timm-test-vit"]) == 2
        err = capsys.readouterr().err
        assert str(expected) in err and "Nothing is downloaded (offline: IMGCLUST_OFFLINE is set)" in err
        assert len(err.strip().splitlines()) == 1
        assert os.environ["IMGCLUST_OFFLINE"] == "0"  # the flag lasts for the command only
    else:
        monkeypatch.setenv(how, "1")
        with pytest.raises(WeightsNotFoundError) as info:
            create_backbone("timm-test-vit", weights="pretrained")
        assert str(expected) in str(info.value) and f"offline: {how} is set" in str(info.value)
        with pytest.raises(WeightsNotFoundError, match="resnet18-f37072fd.pth"):
            create_backbone("resnet18", weights="imagenet")
        assert probe_url(f"{hub.endpoint}/{TEST_VIT_REPO}/resolve/main/model.safetensors", timeout=1, hub=True) \
            == (f"offline ({how} is set)", False)
        choice = choose_default_extractor()
        assert choice.extractor == "pixels" and f"offline ({how} is set)" in choice.reason
    assert hub.count() == 0 and _cache_files(tmp_path / "hf_cache") == []


# --- torch hub path (torchvision) -----------------------------------------------------------------

class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)


def _torch_checkpoint(seed: int) -> tuple[str, bytes]:
    """A state_dict saved as torch does, named like torchvision's files: ``tiny-<sha256[:8]>.pth``."""
    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(_TinyNet().state_dict(), buf)
    data = buf.getvalue()
    return f"tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth", data


def test_torch_hub_download_is_cached_verified_and_loaded(hub: LoopbackHub, tmp_path: Path) -> None:
    name, data = _torch_checkpoint(seed=6)
    hub.torch[name] = data
    url = f"{hub.endpoint}/models/{name}"
    model, weights_id = build_with_weights(_TinyNet, parse_weights("imagenet"), name="tiny", url=url, seed=0)
    path = tmp_path / "torch_home" / "hub" / "checkpoints" / name
    assert path.read_bytes() == data and weights_id == f"imagenet:sha256:{hashlib.sha256(data).hexdigest()}"
    expected = torch.load(io.BytesIO(data), weights_only=True)
    torch.testing.assert_close(model.state_dict()["fc.weight"], expected["fc.weight"])
    assert hub.count("GET") == 1
    build_with_weights(_TinyNet, parse_weights("imagenet"), name="tiny", url=url, seed=0)
    assert hub.count("GET") == 1  # cached now
    assert os.listdir(path.parent) == [name]


@pytest.mark.parametrize("damage", ["corrupt", "drop"])
def test_torch_hub_download_that_does_not_verify_leaves_nothing(hub: LoopbackHub, tmp_path: Path,
                                                                damage: str) -> None:
    name, data = _torch_checkpoint(seed=7)
    hub.torch[name] = data
    hub.damage[hashlib.sha256(data).hexdigest()] = damage
    with pytest.raises(WeightsDownloadError) as info:
        build_with_weights(_TinyNet, parse_weights("imagenet"), name="tiny", url=f"{hub.endpoint}/models/{name}",
                           seed=0)
    # torch checks the sha256 prefix of whatever arrived (a dropped connection may also end in IncompleteRead)
    assert "nothing was kept" in str(info.value) and ("did not verify" in str(info.value) or damage == "drop")
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert not checkpoints.exists() or os.listdir(checkpoints) == []  # no file, no .partial


def test_a_torch_file_without_a_hash_in_its_name_is_not_downloaded(hub: LoopbackHub) -> None:
    hub.torch["tiny.pth"] = b"x"
    with pytest.raises(ConfigError, match="records no sha256 prefix"):
        build_with_weights(_TinyNet, parse_weights("imagenet"), name="tiny", url=f"{hub.endpoint}/models/tiny.pth",
                           seed=0)
    assert hub.count() == 0


def test_an_unreachable_host_fails_in_seconds(hub: LoopbackHub, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(WeightsDownloadError, match=f"127.0.0.1:{port} is unreachable"):
        create_backbone("timm-test-vit", weights="pretrained")
    assert time.perf_counter() - start < 5  # not huggingface_hub's retries with backoff
    assert _cache_files(tmp_path / "hf_cache") == []


# --- `imgclust weights pull` ----------------------------------------------------------------------

def test_weights_pull_end_to_end_through_the_cli(hub: LoopbackHub, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = _test_vit_bytes(seed=8)
    hub.hf[(TEST_VIT_REPO, "model.safetensors")] = data
    sha = hashlib.sha256(data).hexdigest()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "imgclust_cli.main", "weights", "pull", "timm-test-vit"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    snapshot = tmp_path / "hf_cache" / "models--timm--test_vit.r160_in1k" / "snapshots" / COMMIT / "model.safetensors"
    assert proc.stdout.strip() == f"timm-test-vit  {snapshot}  {len(data)} bytes  sha256 {sha}  (downloaded)"
    assert hub.count("GET") == 1
    # pulled again (in process): verified in the cache, not downloaded; offline too; a bad name fails first
    assert main(["weights", "pull", "timm-test-vit"]) == 0
    assert main(["weights", "pull", "--offline", "timm-test-vit"]) == 0
    assert capsys.readouterr().out.count("(cached)") == 2 and hub.count("GET") == 1
    assert main(["weights", "pull", "timm-test-vit", "pixels"]) == 2
    err = capsys.readouterr().err
    assert "'pixels' has no published weights" in err and len(err.strip().splitlines()) == 1
    assert main(["weights", "pull", "nope"]) == 2 and "unknown backbone 'nope'" in capsys.readouterr().err


def test_weights_pull_refuses_a_cached_torch_file_that_does_not_match_its_name(
        hub: LoopbackHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet18-f37072fd.pth").write_bytes(b"not the published checkpoint")
    assert main(["weights", "pull", "--offline", "resnet18"]) == 2
    assert "does not match the sha256 prefix 'f37072fd'" in capsys.readouterr().err
    assert published_weights("resnet18").url() == "https://download.pytorch.org/models/resnet18-f37072fd.pth"


# --- `imgclust run`'s default extractor --------------------------------------------------------------

def _cache_hub_file(cache: Path, repo: str, filename: str, data: bytes) -> Path:
    """A file laid out as huggingface_hub caches it: blobs/<sha256>, snapshots/<commit>/<file> link, refs/main."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    sha = hashlib.sha256(data).hexdigest()
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "blobs" / sha).write_bytes(data)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    link = folder / "snapshots" / COMMIT / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(folder / "blobs" / sha, link.parent))
    return link


def test_default_extractor_prefers_cached_weights_in_order(hub: LoopbackHub, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLUST_OFFLINE", "1")
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet50-0676ba61.pth").write_bytes(b"r50")
    assert choose_default_extractor().extractor == "resnet50"
    link = _cache_hub_file(tmp_path / "hf_cache", "timm/vit_base_patch32_clip_224.openai",
                           "open_clip_model.safetensors", b"clip")
    choice = choose_default_extractor()
    assert (choice.extractor, choice.how, choice.path) == ("clip-vitb32", "cached", link)
    assert "best pretrained model whose weights are cached" in choice.reason
    _cache_hub_file(tmp_path / "hf_cache", "timm/vit_base_patch14_dinov2.lvd142m", "model.safetensors", b"b14")
    assert choose_default_extractor().extractor == "dinov2-vitb14"
    _cache_hub_file(tmp_path / "hf_cache", "timm/vit_small_patch14_dinov2.lvd142m", "model.safetensors", b"s14")
    assert choose_default_extractor(on_gpu=False).extractor == "dinov2-vits14"  # cheaper on CPUs
    assert choose_default_extractor(on_gpu=True).extractor == "dinov2-vitb14"
    assert hub.count() == 0


def test_default_extractor_downloadable_when_online_and_pixels_when_nothing_is(hub: LoopbackHub) -> None:
    hub.hf[("timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors")] = b"clip weights"
    choice = choose_default_extractor(timeout=2)
    assert (choice.extractor, choice.how) == ("clip-vitb32", "download")
    assert f"downloaded from {hub.endpoint}/timm/vit_base_patch32_clip_224.openai" in choice.reason
    assert hub.count("GET") == 0  # only asked (HEAD): the download happens when the backbone is built
    hub.hf.clear()
    start = time.perf_counter()
    choice = choose_default_extractor(timeout=2, preference=("dinov2-vits14", "clip-vitb32"))  # the loopback hub only
    assert choice.extractor == "pixels" and choice.how == "pixels"
    assert "no pretrained weights are available" in choice.reason and "dinov2-vits14: " in choice.reason
    assert time.perf_counter() - start < 30


def test_default_extractor_choice_does_not_hang_on_a_silent_host(hub: LoopbackHub,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.perf_counter()
        choice = choose_default_extractor(timeout=0.5)
        elapsed = time.perf_counter() - start
    assert choice.extractor in ("pixels", "resnet50")  # resnet50 only where download.pytorch.org answers
    assert elapsed < 10


def _summary_of(a: Any, store: Path) -> str:
    """The run summary ``imgclust run`` prints for a (made-up, empty) result, with this run's extractor choice."""
    (store / "models" / "m").mkdir(parents=True, exist_ok=True)
    (store / "models" / "m" / "model.json").write_text("{}")
    result = {"ingest": {"new": 0, "listed": 0, "duplicates": 0}, "store": str(store), "seconds": 0,
              "extraction": {"features": 0, "quarantined": 0, "error_kinds": {}, "extractor_key": "k",
                             "images_per_second": 0, "shards": 0, "shards_skipped": 0},
              "build": {"model_id": "m", "metrics": {}}}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _print_summary(result, {"extractor choice": a.extractor_choice.reason})
    return buf.getvalue()


def test_run_cli_says_its_default_choice_and_never_overrides_an_explicit_extractor(
        hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "src").mkdir()
    monkeypatch.setenv("IMGCLUST_OFFLINE", "1")
    args = ["run", str(tmp_path / "src"), "--store", str(tmp_path / "s")]
    a = build_parser().parse_args(args)
    assert a.extractor == "auto" and build_parser().parse_args(["demo"]).extractor == "pixels"
    with caplog.at_level(logging.INFO, logger="imgclust"):
        cfg, _ = _pipeline_config(a)
    assert cfg.extract.extractor == "pixels" and a.extractor_choice.how == "pixels"
    assert "default extractor: pixels (raw pixels): no pretrained weights are available" in caplog.text
    assert "extractor choice        pixels (raw pixels): no pretrained" in _summary_of(a, tmp_path / "summary")

    torch.manual_seed(9)
    published = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False)
    from safetensors.torch import save

    _cache_hub_file(tmp_path / "hf_cache", "timm/vit_small_patch14_dinov2.lvd142m", "model.safetensors",
                    save({k: v.contiguous() for k, v in published.state_dict().items()}))
    a = build_parser().parse_args(args)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imgclust"):
        cfg, _ = _pipeline_config(a)  # the chosen backbone is built (from the cache) before any work
    assert (cfg.extract.extractor, cfg.extract.weights, a.extractor_choice.how) == ("dinov2-vits14", None, "cached")
    assert "default extractor: dinov2-vits14: the best pretrained model whose weights are cached" in caplog.text
    assert "extractor choice        dinov2-vits14: the best pretrained model" in _summary_of(a, tmp_path / "summary")

    a = build_parser().parse_args([*args, "--extractor", "hog"])
    assert _pipeline_config(a)[0].extract.extractor == "hog" and a.extractor_choice is None
    with pytest.raises(ConfigError, match="--weights random needs an explicit --extractor"):
        _pipeline_config(build_parser().parse_args([*args, "--weights", "random"]))
    assert hub.count() == 0
