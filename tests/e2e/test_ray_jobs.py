"""The jobs as users submit them: `ray job submit -- python ray_jobs/...` on a local 2-node cluster."""

import json

import pyarrow.parquet as pq
import pytest

from countclip.data.shards import read_manifest

from ..conftest import ray_job_submit
from ..jobs.test_build_dataset import config
from ..jobs.test_train import job


@pytest.mark.slow
def test_ray_job_submit_on_two_nodes_spreads_fetch_and_verify(source, tmp_path, ray_cluster):
    # LAION comes as many parquet parts; ten give each actor blocks to work on. Each node offers one
    # fetch and one verify slot, so each pool has an actor on each node.
    table = pq.read_table(source["source"])
    (tmp_path / "parts").mkdir()
    for part in range(10):
        pq.write_table(table.slice(part * 70, 70), tmp_path / "parts" / f"part-{part}.parquet")
    cfg = config(tmp_path / "parts", tmp_path / "out", "cluster.fetch_actors=2", "cluster.verify_actors=2",
                 "cluster.fetch_cpus=0.25", "cluster.verify_cpus=0.5", "cluster.batch_rows=32",
                 "cluster.fetch_resources={fetch_slot: 1}", "cluster.verify_resources={verify_slot: 1}")
    (tmp_path / "job.yaml").write_text(cfg.to_yaml())
    proc = ray_job_submit(ray_cluster, "ray_jobs/build_dataset.py", tmp_path / "job.yaml", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = read_manifest(str(tmp_path / "out"))
    assert len(manifest["nodes"]["fetch"]) == 2 and len(manifest["nodes"]["verify"]) == 2, manifest["nodes"]
    assert "rows in 700 =" in proc.stdout
    json.dumps(manifest)


@pytest.mark.slow
def test_ray_job_submit_trains_on_two_nodes_and_logs_to_an_mlflow_server(dataset, tmp_path, ray_cluster, mlflow_server):
    import mlflow

    cfg = job(dataset, tmp_path, f"tracking.uri={mlflow_server['url']}", "tracking.experiment=submitted",
              "name=submitted", "train.steps=4", "scaling.cpus_per_worker=1.5",  # most of a node each
              "train.data.decode_cpus=0.5")
    (tmp_path / "train.yaml").write_text(cfg.to_yaml())
    proc = ray_job_submit(ray_cluster, "ray_jobs/train.py", tmp_path / "train.yaml", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = mlflow.MlflowClient(mlflow_server["url"])
    runs = client.search_runs([client.get_experiment_by_name("submitted").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
    assert steps == [1, 2, 3, 4]
    checkpoints = sorted((tmp_path / "store" / "submitted").glob("checkpoint_*/step.json"))
    assert [json.loads(p.read_text())["step"] for p in checkpoints] == [2, 4]
    assert (tmp_path / "store" / "submitted" / "model.pt").is_file()
    assert len(set(runs[0].data.tags["worker_nodes"].split(","))) == 2  # one worker on each node


