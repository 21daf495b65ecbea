"""One runner rule for the CLI's options and the deployed flows' environment (``RunnerConfig.choose``)."""
from __future__ import annotations

import pytest

from imgclust.config import RunnerConfig
from imgclust.exceptions import ConfigError


@pytest.mark.parametrize(("env", "expected"), [
    ({}, RunnerConfig(kind="local")),
    ({"IMGCLUST_DASK_WORKERS": "3"}, RunnerConfig(kind="local", workers=3)),
    ({"IMGCLUST_GPU_CLUSTER": "1"}, RunnerConfig(kind="cuda")),
    ({"IMGCLUST_GPU_CLUSTER": "1", "IMGCLUST_DASK_ADDRESS": "tcp://h:8786"},
     RunnerConfig(kind="address", address="tcp://h:8786")),
])
def test_the_environment_and_the_options_give_the_same_runner(env: dict[str, str], expected: RunnerConfig,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.runtime import runner_from_env

    for name in ("IMGCLUST_DASK_WORKERS", "IMGCLUST_GPU_CLUSTER", "IMGCLUST_DASK_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert runner_from_env() == expected
    workers = int(env["IMGCLUST_DASK_WORKERS"]) if "IMGCLUST_DASK_WORKERS" in env else None
    assert RunnerConfig.choose(address=env.get("IMGCLUST_DASK_ADDRESS"), gpu_cluster="IMGCLUST_GPU_CLUSTER" in env,
                               workers=workers) == expected


@pytest.mark.parametrize("workers", ["0", "two"])
def test_a_bad_worker_count_is_refused_before_any_work(workers: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.runtime import runner_from_env

    monkeypatch.setenv("IMGCLUST_DASK_WORKERS", workers)
    with pytest.raises(ConfigError, match="workers|IMGCLUST_DASK_WORKERS"):
        runner_from_env()
