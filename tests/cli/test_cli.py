"""The command line contract: help texts, and bad arguments fail fast with one line and status 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imgclust.config import AUTO_K, ClusterConfig, ExtractConfig, PipelineConfig, ReduceConfig, RunnerConfig
from imgclust.exceptions import ConfigError
from imgclust.models.promotion import GateConfig
from imgclust_cli.common import default_of, runner_config
from imgclust_cli.main import DEMO_CONSENSUS, _demo_consensus, _pipeline_config, build_parser, main
from imgclust_cli.serve import ServeOptions


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imgclust_cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_subcommands_and_options() -> None:
    out = _cli("--help")
    assert out.returncode == 0 and "run" in out.stdout and "demo" in out.stdout
    run_help = _cli("run", "--help").stdout
    for opt in ("--store", "--extractor", "--weights", "--method", "--k", "--workers"):
        assert opt in run_help


@pytest.mark.parametrize("args,needle", [
    (["--extractor", "nope"], "unknown backbone"),
    (["--k", "1"], "k"),
    (["--k", "many"], "'auto'"),
    (["--k-min", "5", "--k-max", "3"], "k_max=3 is below k_min=5"),
    (["--workers", "0"], "workers"),
    (["--extractor", "resnet18", "--weights", "facebook/resnet"], "hub"),
    (["--scan-whiten"], "needs method='scan'"),
])
def test_bad_arguments_fail_before_work(tmp_path: Path, args: list[str], needle: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "src").mkdir()
    rc = main(["run", str(tmp_path / "src"), "--store", str(tmp_path / "store"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle.lower() in err.lower()
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("options,needle", [
    (["--option", "encoder=vgg"], "encoder must be one of"),
    (["--option", "colour=red"], "bad options for deep method 'simclr'"),
    (["--option", "clusterer=scan", "--option", "umap_components=5"], "umap_components=None"),
    (["--option", "novalue"], "NAME=VALUE"),
])
def test_refine_options_are_checked_before_work(tmp_path: Path, options: list[str], needle: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["refine", "--store", str(tmp_path / "store"), "--method", "simclr", *options])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()


def test_refine_option_values_are_json_else_strings() -> None:
    from imgclust_cli.ops import parse_options

    assert parse_options(["encoder=resnet18", "width=64", "umap_components=null", "lr=1e-3", "x=a=b"]) == \
        {"encoder": "resnet18", "width": 64, "umap_components": None, "lr": 1e-3, "x": "a=b"}


def test_missing_source_folder_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "missing"), "--store", str(tmp_path / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_imagenet_weights_absent_names_the_expected_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("IMGCLUST_OFFLINE", "0")  # restored after the test
    (tmp_path / "src").mkdir()
    rc = main(["run", str(tmp_path / "src"), "--store", str(tmp_path / "s"), "--extractor", "resnet18",
               "--weights", "imagenet", "--offline"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "resnet18-" in err and "expected the file" in err and "offline" in err


def test_parser_defaults_match_config_defaults() -> None:
    a = build_parser().parse_args(["run", "src", "--store", "s"])
    assert (a.extractor, a.method, a.k, a.pca) == ("auto", "kmeans", "auto", 50)  # auto: the best available weights
    assert a.k == ClusterConfig().k == AUTO_K and a.k_max is None  # k chosen by a sweep unless given
    assert build_parser().parse_args(["demo"]).extractor == "pixels"  # the demo clusters pixels on purpose
    assert a.scan_whiten is False and ClusterConfig().scan_whiten is False


def test_demo_defaults_pixel_recipe_with_gmm_then_simclr_refine(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    a = build_parser().parse_args(["demo"])
    assert (a.method, a.umap, a.refine, a.refine_epochs) == ("gmm", 10, "simclr", 10)  # BENCHMARKS.md: demo
    assert a.k == 10 and build_parser().parse_args(["demo", "--k", "auto"]).k == "auto"  # its 10 classes, unless asked
    assert build_parser().parse_args(["demo", "--refine", "none"]).refine == "none"
    assert a.consensus is None  # resolved by cmd_demo: DEMO_CONSENSUS runs for gmm, 1 otherwise
    assert _demo_consensus(a) == DEMO_CONSENSUS == 8
    assert _demo_consensus(build_parser().parse_args(["demo", "--method", "kmeans"])) is None
    assert _demo_consensus(build_parser().parse_args(["demo", "--consensus", "2"])) == 2
    run = build_parser().parse_args(["run", str(tmp_path), "--store", str(tmp_path / "s"), "--method", "gmm",
                                     "--consensus", "3"])
    assert _pipeline_config(run)[0].cluster.consensus_runs == 3
    scan = build_parser().parse_args(["run", str(tmp_path), "--store", str(tmp_path / "s"), "--method", "scan",
                                      "--scan-whiten"])
    assert _pipeline_config(scan)[0].cluster.scan_whiten is True
    with pytest.raises(ConfigError, match="needs method='gmm'"):
        _pipeline_config(build_parser().parse_args(["run", str(tmp_path), "--store", "s", "--consensus", "3"]))
    assert build_parser().parse_args(["demo", "--refine", "n2d"]).refine == "n2d"
    assert main(["demo", "--out", str(tmp_path / "d"), "--refine", "n2d", "--refine-epochs", "0"]) == 2
    assert "--refine-epochs" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before the corpus is written


def test_recluster_scan_whiten_needs_method_scan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recluster", "--store", str(tmp_path / "store"), "--scan-whiten"]) == 2
    err = capsys.readouterr().err
    assert "--scan-whiten needs --method scan" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()  # refused before any work


@pytest.mark.parametrize("args,needle", [
    (["--near-duplicate-threshold", "1.5"], "near-duplicate threshold must be in (0, 1]"),
    (["--near-duplicate-threshold", "0.9", "--no-near-duplicates"], "exclude each other"),
])
def test_label_near_duplicate_options_fail_before_work(tmp_path: Path, args: list[str], needle: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "src").mkdir()
    rc = main(["label", str(tmp_path / "src"), "--store", str(tmp_path / "store"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()


_RUN = ["run", "src", "--store", "s"]
_MODEL_DEFAULTS = [  # (arguments, option's dest, config model, its field): the option sets that field
    *[(_RUN, dest, model, field) for dest, model, field in [
        ("batch_size", ExtractConfig, "batch_size"), ("shard_size", ExtractConfig, "shard_size"),
        ("device", ExtractConfig, "device"), ("device", ClusterConfig, "device"), ("seed", ExtractConfig, "seed"),
        ("seed", ClusterConfig, "seed"), ("weights", ExtractConfig, "weights"), ("method", ClusterConfig, "method"),
        ("k", ClusterConfig, "k"), ("k_min", ClusterConfig, "k_min"), ("k_max", ClusterConfig, "k_max"),
        ("kmeans_backend", ClusterConfig, "backend"), ("min_cluster_size", ClusterConfig, "min_cluster_size"),
        ("novelty_rate", ClusterConfig, "novelty_rate"), ("pca", ReduceConfig, "n_components"),
        ("reducer", ReduceConfig, "method"), ("umap", ReduceConfig, "umap_components"),
        ("truth", PipelineConfig, "truth"), ("date", PipelineConfig, "date"), ("workers", RunnerConfig, "workers"),
        ("address", RunnerConfig, "address")]],
    (["demo"], "extractor", ExtractConfig, "extractor"), (["demo"], "batch_size", ExtractConfig, "batch_size"),
    (["label", "src", "--store", "s"], "workers", RunnerConfig, "workers"),
    (["recluster", "--store", "s"], "gate_metric", GateConfig, "metric"),
    (["recluster", "--store", "s"], "gate_tolerance", GateConfig, "tolerance"),
    (["recluster", "--store", "s"], "truth", PipelineConfig, "truth"),
    (["backfill", "--store", "s", "--start", "2024-01-01", "--end", "2024-01-02"], "workers", RunnerConfig, "workers"),
    (["refine", "--store", "s", "--method", "dec"], "workers", RunnerConfig, "workers"),
    *[(["serve"], field, ServeOptions, field) for field in ("host", "port", "server_grace", "check_interval")],
]


@pytest.mark.parametrize("argv,dest,model,field", _MODEL_DEFAULTS,
                         ids=[f"{a[0]}-{d}-{m.__name__}.{f}" for a, d, m, f in _MODEL_DEFAULTS])
def test_cli_defaults_are_the_config_models_defaults(argv: list[str], dest: str, model: type, field: str) -> None:
    """An option that sets a config-model field defaults to that field's default, so the two cannot drift."""
    assert getattr(build_parser().parse_args(argv), dest) == default_of(model, field)


@pytest.mark.parametrize("argv,dests", [
    (["refine", "--store", "s", "--method", "dec"], ["epochs", "max_iter", "sample", "image_size", "mode", "device",
                                                     "truth"]),
    (["dedup", "--store", "s"], ["threshold", "k", "rule"]),
    (["name-clusters", "--store", "s"], ["sample_per_cluster", "seed", "device"]),
    (["backfill", "--store", "s", "--start", "2024-01-01", "--end", "2024-01-02"], ["redo"]),
    (_RUN, ["consensus"]),
])
def test_options_without_a_cli_default_leave_the_model_default(argv: list[str], dests: list[str]) -> None:
    """These options default to None: the command passes only given values, so the model's (or the flow's) own
    defaults apply (imgclust_cli.common.given)."""
    a = build_parser().parse_args(argv)
    assert {d: getattr(a, d) for d in dests} == dict.fromkeys(dests)


def test_help_texts_state_the_model_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imgclust.models.dedup import DedupConfig
    from imgclust.models.naming import NamingConfig

    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit):
            build_parser().parse_args([*argv, "--help"])
        return " ".join(capsys.readouterr().out.split())

    dedup = help_of("dedup")
    for value in (DedupConfig.threshold, DedupConfig.k, DedupConfig.rule):
        assert f"(default {value})" in dedup
    assert f"(default {NamingConfig.sample_per_cluster})" in help_of("name-clusters")
    assert f"(default {default_of(ClusterConfig, 'consensus_runs')};" in help_of("run")
    (tmp_path / "src").mkdir()
    run = build_parser().parse_args(["run", str(tmp_path / "src"), "--store", str(tmp_path / "s"), "--extractor",
                                     "pixels"])
    assert _pipeline_config(run)[0].cluster.consensus_runs == default_of(ClusterConfig, "consensus_runs")


@pytest.mark.parametrize("args,kind", [
    ([], "local"), (["--gpu-cluster"], "cuda"), (["--address", "tcp://h:8786", "--gpu-cluster"], "address"),
])
def test_one_runner_rule_for_every_subcommand(args: list[str], kind: str) -> None:
    """--address wins over --gpu-cluster over local workers, the same for every subcommand that runs Dask tasks."""
    for argv in (_RUN, ["label", "src", "--store", "s"], ["recluster", "--store", "s"],
                 ["refine", "--store", "s", "--method", "dec"]):
        runner = runner_config(build_parser().parse_args([*argv, *args, "--workers", "3"]))
        assert (runner.kind, runner.workers) == (kind, 3)


def test_cli_modules_do_not_import_each_other() -> None:
    """Shared helpers live in imgclust_cli/common.py; only main.py imports the subcommand modules (their parser
    registration), and no module imports main.py: no import cycle."""
    import re

    package = Path(__file__).resolve().parents[2] / "imgclust_cli"
    imports = {p.stem: set(re.findall(r"^\s*(?:from|import) imgclust_cli\.(\w+)", p.read_text(), re.M))
               for p in package.glob("*.py")}
    assert imports["common"] == set()
    for name, used in imports.items():
        assert used <= ({"common", "ops", "naming", "weights", "serve"} if name == "main" else {"common"}), name
