"""prepare-data on Dask: the same manifest and PNG bytes as on the process pool.

Three runs of the flow on one generated dataset, under the session's Prefect test harness:
the process pool (the reference), a real ``distributed.LocalCluster`` of two worker
processes passed by scheduler address (as a shared cluster would be), and
``executor="dask"`` with no address (the runner starts and stops its own LocalCluster).
The extraction shards of the Dask runs must execute on the Dask workers and be reported,
completed, to the flow's Prefect API, not to temporary servers of the workers' own.

A fourth run happens in a child process with no Prefect API configured at all (the flow's
own temporary server, as at a terminal), where the workers are told nothing by the
settings: it runs this file as a script (see the bottom).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest

from tasks.core.config import DataConfig, PrepareConfig, SlicesConfig

SHARD_SIZE = 3
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dask_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic patients, 64 x 48 frames, 6 to 9 frames per volume."""
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("bcs-dbt-dask")
    generate_dataset(root, patients=12, seed=4, rows=64, columns=48, frames=(6, 9), reports=False)
    return root


def _config(data: Path, out: Path, **slices) -> PrepareConfig:
    return PrepareConfig(
        data=DataConfig(data_root=str(data), output_dir=str(out)),
        slices=SlicesConfig(**{"strategy": "all-slices", "image_size": 48, "workers": 2,
                               "shard_size": SHARD_SIZE, **slices}),
    )


def _run(config: PrepareConfig) -> tuple[dict, UUID]:
    """Run the flow; return its outputs and the flow run's id."""
    from flows.prepare import prepare_data

    state = prepare_data(config=config, return_state=True)
    assert state.is_completed(), state
    return state.result(), state.state_details.flow_run_id


def _pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "slices").rglob("*.png"))}


def _shard_runs(flow_run_id: UUID) -> list:
    """The flow run's extract-shard task runs, as recorded by the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r for r in runs if r.name.startswith("extract-shard")]


def _executed_on_workers(client) -> int:
    """Tasks the cluster's workers have run (each worker counts its own)."""
    return sum(client.run(lambda dask_worker: dask_worker.state.executed_count).values())


def test_dask_extraction_matches_process_pool(prefect_harness, dask_dataset: Path, tmp_path: Path) -> None:
    import distributed

    out_a, out_b, out_c = tmp_path / "process", tmp_path / "dask-address", tmp_path / "dask-local"
    reference, run_a = _run(_config(dask_dataset, out_a, executor="process"))
    manifest = Path(reference["manifest"]).read_bytes()
    pngs = _pngs(out_a)
    n_shards = len(_shard_runs(run_a))
    assert len(pngs) > 20 and n_shards > 2

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        on_address, run_b = _run(_config(dask_dataset, out_b, executor="dask",
                                         dask_address=cluster.scheduler_address))
        # Every shard ran on this cluster's worker processes, not in the flow's process.
        assert _executed_on_workers(client) == n_shards

    own_cluster, run_c = _run(_config(dask_dataset, out_c, executor="dask"))

    for outputs, out, run in ((on_address, out_b, run_b), (own_cluster, out_c, run_c)):
        assert Path(outputs["manifest"]).read_bytes() == manifest, out.name
        assert _pngs(out) == pngs, out.name
        shard_runs = _shard_runs(run)
        assert len(shard_runs) == n_shards, out.name
        assert all(r.state is not None and r.state.is_completed() for r in shard_runs), out.name


def test_dask_workers_report_to_the_flows_temporary_server(dask_dataset: Path, tmp_path: Path) -> None:
    """No PREFECT_API_URL anywhere: the shards still land in the flow's own temporary server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(ROOT),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    out = tmp_path / "ephemeral"
    proc = subprocess.run([sys.executable, __file__, str(dask_dataset), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["flow_state"] == "COMPLETED"
    assert len(result["shard_states"]) > 2 and set(result["shard_states"]) == {"COMPLETED"}, result
    # Only the flow's process started a temporary server; no worker started one of its own.
    assert proc.stderr.count("Starting temporary server") == 1, proc.stderr[-4000:]
    assert len(_pngs(out)) > 20


def test_remote_scheduler_with_loopback_api_is_refused(prefect_harness) -> None:
    """Workers on another machine cannot reach a Prefect API on this machine's loopback."""
    from tasks.infra.runners import dask_runner as _dask_runner

    with pytest.raises(ValueError, match=r"dask_address 'tcp://192\.0\.2\.7:8786'.*PREFECT_API_URL"):
        _dask_runner("tcp://192.0.2.7:8786", 2)
    assert _dask_runner("tcp://127.0.0.1:8786", 2).address == "tcp://127.0.0.1:8786"  # connects lazily


def _ephemeral_main(data: str, out: str) -> None:
    """Child process of the ephemeral test: one dask run on a cluster given by address."""
    import distributed

    from flows.prepare import prepare_data

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        state = prepare_data(config=_config(Path(data), Path(out), executor="dask",
                                            dask_address=cluster.scheduler_address), return_state=True)
        runs = _shard_runs(state.state_details.flow_run_id)
    print(json.dumps({"flow_state": state.type.value,
                      "shard_states": [r.state.type.value if r.state else None for r in runs]}))


if __name__ == "__main__":
    _ephemeral_main(*sys.argv[1:3])
