"""Shared fixtures. The libraries' offline switches are set before any test imports them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from countclip.environment import configure_environment

configure_environment(Path(tempfile.gettempdir()) / "countclip-test-cache", offline=True)

REPO = Path(__file__).resolve().parents[1]
# The real benchmark file stays outside the project (shared/ beside the checkout); it is searched
# for, never copied in. Tests that need it skip with the path they looked at.
COUNTBENCH_CANDIDATES = [REPO.parent / "shared/countbench/CountBench.json", Path("/work/shared/countbench/CountBench.json")]
COUNTBENCH = Path(os.environ.get("COUNTCLIP_COUNTBENCH") or next(
    (p for p in COUNTBENCH_CANDIDATES if p.is_file()), COUNTBENCH_CANDIDATES[0]))
# The 11,057 real LAION captions the same way (shared/laion-captions/README.md): read, never copied.
LAION_CAPTIONS = REPO.parent / "shared/laion-captions/captions.jsonl"


@pytest.fixture(scope="session")
def tiny_model():
    """(model, preprocess, tokenizer) of the random-init countclip-tiny architecture."""
    import torch

    from countclip.model import ModelConfig, create_model

    torch.manual_seed(0)
    return create_model(ModelConfig(arch="countclip-tiny"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint (moto's server) on 127.0.0.1 for the session; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """Point boto3 at the local endpoint with throwaway test keys; yields a fresh bucket name."""
    import uuid

    from countclip import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-only")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-only")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage.s3_client.cache_clear()
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    yield bucket
    storage.s3_client.cache_clear()


VERIFIER = REPO / "countclip/weights/countworld-yolov8n.pt"


def _start_local_ray() -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="session")
def _ray_session():
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """A local Ray instance (2 CPUs, no dashboard), shared by the tests that need one."""
    import ray

    if not ray.is_initialized():
        _start_local_ray()


@pytest.fixture
def ray_fresh(_ray_session):
    """A function that (re)starts local Ray, so that its workers inherit the environment as the test
    has set it by then (S3 keys, COUNTCLIP_PID_DIR); Ray is shut down again after the test."""
    import ray

    def restart() -> None:
        ray.shutdown()
        _start_local_ray()

    yield restart
    ray.shutdown()


SLOTS = '--resources={"fetch_slot": 1, "verify_slot": 1}'  # one of each per node: see test_build


def _agent_ports() -> list[str]:
    """Free ports for a node's agents. Ray's defaults (52365 and others) are taken by any other Ray
    instance on the machine (the in-process one of `ray_local`), and a head whose dashboard agent
    cannot bind answers every job submission with "No available agent"."""
    flags = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port"]
    return [f"{flag}={free_port()}" for flag in flags]


def ray_job_submit(cluster: dict, script: str, config: Path, timeout: int) -> subprocess.CompletedProcess:
    """`ray job submit` of one of ray_jobs/ with its config, as a user runs it on `cluster`."""
    return subprocess.run(
        [str(REPO / ".venv/bin/ray"), "job", "submit", "--address", cluster["address"], "--working-dir", str(REPO),
         "--", sys.executable, script, "--config", str(config)],
        env=cluster["env"], capture_output=True, text=True, timeout=timeout)


def _wait_for_job_agent(address: str, timeout: float = 180) -> None:
    """`ray start` returns before the head's dashboard agent registers; until it does, job submission
    answers "No available agent to submit job". Submit a no-op job until one is accepted and finishes."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            client = JobSubmissionClient(address)
            job = client.submit_job(entrypoint="true")
            break
        except Exception as exc:  # the job server answers 500 until the agent is up
            last = exc
            time.sleep(1)
    else:
        raise RuntimeError(f"the Ray job server at {address} never accepted a job: {last}")
    while time.time() < deadline:
        status = client.get_job_status(job)
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)
            return
        time.sleep(0.5)
    raise RuntimeError(f"the readiness job on {address} did not finish in {timeout} s")


@pytest.fixture(scope="session")
def _ray_cluster_session(tmp_path_factory):
    """A real 2-node Ray cluster on 127.0.0.1 (`ray start` head + worker, separate temp dirs), with
    the job server for `ray job submit`; yields the dashboard address."""
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    base = tmp_path_factory.mktemp("ray")
    port, dashboard = free_port(), free_port()
    ray = str(venv_bin / "ray")
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    f"--temp-dir={base / 'head'}", "--disable-usage-stats", SLOTS, *_agent_ports()], env=env, check=True, capture_output=True)
    try:
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                        f"--temp-dir={base / 'worker'}", SLOTS, *_agent_ports()], env=env, check=True, capture_output=True)
        _wait_for_job_agent(f"http://127.0.0.1:{dashboard}")
        yield {"address": f"http://127.0.0.1:{dashboard}", "gcs": f"127.0.0.1:{port}", "env": env}
    finally:
        # `ray stop --force` kills every Ray process of this user, the in-process instance of
        # `ray_local` too; a driver whose GCS and raylet die under it exits the whole pytest process
        # with status 1 (seen in CI: no summary, exit 1). Disconnect the driver first.
        import ray as ray_api

        ray_api.shutdown()
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)


@pytest.fixture
def ray_cluster(_ray_cluster_session):
    """The session's 2-node cluster (2 CPUs a node); any job a test leaves running (a `ray job
    submit` that timed out) is stopped afterwards, so that it cannot starve the next test's job."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    yield _ray_cluster_session
    client = JobSubmissionClient(_ray_cluster_session["address"])
    for job in client.list_jobs():
        if job.status in {JobStatus.PENDING, JobStatus.RUNNING}:
            client.stop_job(job.submission_id)


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint, tmp_path_factory):
    """An `mlflow server` on 127.0.0.1: sqlite backend, artifacts proxied to a bucket on the local S3
    endpoint. Only the server holds the (test-only) S3 keys; clients talk HTTP to it."""
    import boto3

    bucket = "mlflow-artifacts"
    keys = {"AWS_ACCESS_KEY_ID": "test-only", "AWS_SECRET_ACCESS_KEY": "test-only", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=s3_endpoint, **{k.lower(): v for k, v in keys.items() if k != "AWS_DEFAULT_REGION"},
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, **keys, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", f"s3://{bucket}/artifacts", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((folder / "server.log").read_text()[-2000:]) from None
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not start: " + (folder / "server.log").read_text()[-2000:])
    yield {"url": url, "bucket": bucket, "s3": s3_endpoint}
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="session")
def bench(tmp_path_factory):
    """A small CountWorld benchmark (4 images per count, 64 px)."""
    from countclip.world.files import write_benchmark

    return write_benchmark(tmp_path_factory.mktemp("bench") / "b", seed=2, per_count=4, image_size=64)


@pytest.fixture(scope="session")
def checkpoints(tiny_model, tmp_path_factory):
    """Two tiny checkpoints: the random model, and a copy whose logit scale differs (another model)."""
    import torch

    from countclip.model import export_checkpoint

    model, _, _ = tiny_model
    folder = tmp_path_factory.mktemp("ckpt")
    export_checkpoint(model, folder / "a.pt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["logit_scale"] = state["logit_scale"].reshape(()) + 1.0
    state["visual.proj"] = state["visual.proj"] + 0.05 * torch.randn_like(state["visual.proj"])
    export_checkpoint(state, folder / "b.pt")
    return folder


@pytest.fixture(scope="session")
def open_clip_folders(checkpoints):
    """The two tiny checkpoints as open_clip folders (``countclip export``): ``a/`` and ``b/`` beside them."""
    from countclip.export import export_folder

    for name in ("a", "b"):
        export_folder(str(checkpoints / f"{name}.pt"), "countclip-tiny", checkpoints / name)
    return checkpoints


def eval_config(bench, checkpoint, tracking_uri, tmp_path, *overrides):
    """An evaluate job of ``checkpoint`` on ``bench``, logging to ``tracking_uri``."""
    from countclip.jobs.evaluate import EvalJobConfig

    return EvalJobConfig.load(None, [
        "model.arch=countclip-tiny", f"model.pretrained={checkpoint}", f"countbench={bench}",
        f"output={tmp_path / 'eval'}", f"tracking.uri={tracking_uri}", "tracking.experiment=test-eval",
        "register.name=countclip", *overrides])


def scene_png(count: int = 3, seed: int = 0, image_size: int = 64) -> bytes:
    """One CountWorld scene as PNG bytes."""
    import numpy as np

    from countclip.world.files import png_bytes
    from countclip.world.scenes import render, sample_scene

    return png_bytes(render(sample_scene(np.random.default_rng(seed), count), image_size))


@pytest.fixture(scope="session")
def verifier():
    """The shipped CountWorld YOLO in a verify stage (loaded once)."""
    from countclip.data.verify import VerifyConfig, YoloVerifier
    from countclip.world.detector import COUNTWORLD_CONFIDENCE, COUNTWORLD_IOU

    return YoloVerifier(VerifyConfig(device="cpu", confidence=COUNTWORLD_CONFIDENCE, iou=COUNTWORLD_IOU))
