"""The dataset build through Ray Data: CountWorld's noisy source, bad input, S3, a 2-node cluster."""

import http.server
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from countclip.data.shards import read_manifest
from countclip.jobs.build_dataset import BuildConfig, build_dataset
from countclip.world.files import png_bytes, write_source

from ..conftest import VERIFIER


def config(source, output, *overrides, truth=None):
    base = [f"source=[{source}]", f"output={output}", "verify.weights=" + str(VERIFIER), "verify.confidence=0.35",
            "verify.iou=0.3",
            "captions.id_column=SAMPLE_ID", "captions.non_counting_rate=1.0", "fetch.allow_local_files=true",
            "fetch.max_side=128", "fetch.image_format=png", "verify.image_size=128", "shards.rows_per_shard=300"]
    base += [f"ground_truth={truth}"] if truth else []
    return BuildConfig.load(None, base + list(overrides))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_source(tmp_path_factory.mktemp("cw") / "source", seed=7, rows=700)


@pytest.mark.slow
def test_countworld_build_reconciles_keeps_truth_and_is_reproducible(source, tmp_path, ray_local):
    manifest = build_dataset(config(source["source"], tmp_path / "a", truth=source["truth"]))
    rejected = sum(n for reasons in manifest["rejects"].values() for n in reasons.values())
    assert manifest["rows_in"] == 700 == manifest["rows_written"] + rejected
    assert {"missing_file", "empty", "corrupt_image", "not_an_image"} <= set(manifest["rejects"]["fetch"])
    assert manifest["rejects"]["captions"]["no_caption"] > 0 and manifest["rejects"]["verify"]["count_mismatch"] > 0
    scores = manifest["verifier_vs_truth"]
    assert scores["precision"] >= 0.95 and scores["recall"] >= 0.90, scores
    truth = pq.read_table(source["truth"]).to_pandas().set_index("sample_id")
    written = pq.read_table([tmp_path / "a" / s["path"] for s in manifest["shards"]]).to_pandas()
    assert not set(written.sample_id) & set(truth.index[truth.kind.isin(["broken", "missing", "no_caption"])])
    counting = written[written.kind == "counting"]
    assert (counting.caption_count == counting.detected_count).all()
    again = build_dataset(config(source["source"], tmp_path / "b", truth=source["truth"]))
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]


@pytest.mark.slow
def test_the_cli_build_prints_its_own_progress_and_ray_datas_only_on_request(source, tmp_path):
    import subprocess
    import sys

    args = [f"source=[{source['source']}]", "verify.weights=" + str(VERIFIER), "verify.confidence=0.35",
            "verify.iou=0.3", "captions.id_column=SAMPLE_ID", "captions.non_counting_rate=1.0",
            "fetch.allow_local_files=true", "fetch.max_side=128", "fetch.image_format=png", "verify.image_size=128"]
    runs = {}
    for name, flags in (("quiet", []), ("ray", ["--ray-progress"])):
        proc = subprocess.run([sys.executable, "-m", "countclip.cli", "build-dataset", *flags, *args,
                               f"output={tmp_path / name}"], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        runs[name] = proc.stdout + proc.stderr
    progress = [line for line in runs["quiet"].splitlines() if line.startswith("[build] ") and " rows (" in line]
    assert 1 <= len(progress) <= 4 and progress[-1].startswith("[build] 700/700 rows (100%) in "), runs["quiet"]
    assert "Execution plan of Dataset" not in runs["quiet"] and "logging_progress" not in runs["quiet"]
    assert "Execution plan of Dataset" in runs["ray"]  # Ray Data's own output, as Ray prints it


def test_schema_and_source_errors_stop_before_any_work(source, tmp_path):
    with pytest.raises(ValueError, match=r"no column\(s\) \['CAPTION'\]"):
        build_dataset(config(source["source"], tmp_path / "x", "captions.text_column=CAPTION"))
    fake = tmp_path / "fake.parquet"
    fake.write_text("this is not parquet")
    with pytest.raises(ValueError, match="is not a readable parquet file"):
        build_dataset(config(fake, tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset(config(tmp_path / "nothing.parquet", tmp_path / "x"))
    with pytest.raises(FileNotFoundError):
        build_dataset(config(source["source"], tmp_path / "x", f"verify.weights={tmp_path}/none.pt"))
    assert not (tmp_path / "x").exists()


def test_source_files_must_agree_on_column_types_but_text_may_be_string_or_binary(tmp_path):
    from countclip.jobs.build_dataset import inspect_source

    pq.write_table(pa.table({"ID": ["a"], "TEXT": ["three dogs"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"ID": ["b"], "TEXT": pa.array([b"\xff two cats"], pa.binary())}), tmp_path / "b.parquet")
    files, columns, _ = inspect_source([str(tmp_path)])
    assert len(files) == 2 and set(columns) == {"ID", "TEXT"}
    pq.write_table(pa.table({"ID": ["c"], "TEXT": [3]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"c.parquet has column 'TEXT' of type int64, the others string"):
        inspect_source([str(tmp_path)])


def test_actor_pools_that_leave_no_cpu_for_reading_are_refused():
    from countclip.jobs.build_dataset import ClusterConfig, check_capacity

    check_capacity(ClusterConfig(fetch_actors=2, fetch_cpus=0.25, verify_actors=1, verify_cpus=0.5), {"CPU": 2.0})
    with pytest.raises(ValueError, match="reserve 1.5 of the cluster's 2 CPUs"):
        check_capacity(ClusterConfig(fetch_actors=2, fetch_cpus=0.25, verify_actors=2, verify_cpus=0.5), {"CPU": 2.0})


def test_gpus_and_custom_resources_the_cluster_lacks_are_refused_up_front():
    from countclip.jobs.build_dataset import ClusterConfig, check_capacity

    cpu_only = {"CPU": 4.0}
    with pytest.raises(ValueError, match="need 1 GPU but the cluster has 0; set cluster.verify_gpus=0"):
        check_capacity(ClusterConfig(verify_gpus=1), cpu_only)
    with pytest.raises(ValueError, match="need 2 fetch_slot but the cluster has 1"):
        check_capacity(ClusterConfig(fetch_resources={"fetch_slot": 1}), {**cpu_only, "fetch_slot": 1.0})
    two_nodes = [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    check_capacity(ClusterConfig(verify_gpus=1, verify_actors=2), {"CPU": 4.0, "GPU": 2.0}, two_nodes)
    with pytest.raises(ValueError, match="no node of the cluster can hold one verify actor"):
        check_capacity(ClusterConfig(verify_gpus=2), {"CPU": 4.0, "GPU": 2.0}, two_nodes)


class _Handler(http.server.BaseHTTPRequestHandler):
    good = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        routes = {
            "/good.png": (200, "image/png", self.good),
            "/zero.png": (200, "image/png", b""),
            "/truncated.png": (200, "image/png", self.good[: len(self.good) // 2]),
            "/page.png": (200, "image/png", b"<html>hello</html>"),
            "/gone.png": (404, "text/plain", b"no"),
        }
        if self.path == "/to-private":
            self.send_response(302)
            self.send_header("Location", "http://10.0.0.8/x.png")
            self.end_headers()
            return
        if self.path == "/slow.png":
            import time

            time.sleep(8)  # well past the attempt's 4 s budget
        status, kind, body = routes.get(self.path, (200, "image/png", self.good))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_bad_web_input_is_counted_by_reason_and_the_job_completes(tmp_path, ray_local):
    import numpy as np
    from PIL import Image

    from countclip.world.scenes import caption, render, sample_scene

    rng = np.random.default_rng(0)
    scene = sample_scene(rng, 3, shape="circle")
    _Handler.good = png_bytes(render(scene, 128))
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (9000, 9000)).save(bomb)
    # The server listens on 127.0.0.2, the only address the config allows; 127.0.0.1 stays forbidden.
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.2:{server.server_address[1]}"
    text = caption(scene, rng, with_count=True)
    rows = [
        ("good", f"{base}/good.png", text), ("good2", f"{base}/good.png?2", text),
        ("zero", f"{base}/zero.png", text), ("trunc", f"{base}/truncated.png", text),
        ("html", f"{base}/page.png", text), ("404", f"{base}/gone.png", text),
        ("slow", f"{base}/slow.png", text), ("redirect", f"{base}/to-private", text),
        ("loopback", f"http://127.0.0.1:{server.server_address[1]}/good.png", text),
        ("metadata", "http://169.254.169.254/latest/meta-data/", text),
        ("bomb", bomb.as_uri(), text), ("null", f"{base}/good.png?3", None),
    ]
    table = pa.table({"SAMPLE_ID": [r[0] for r in rows], "URL": [r[1] for r in rows], "TEXT": [r[2] for r in rows]})
    bad_text = pa.table({"SAMPLE_ID": ["bytes"], "URL": [f"{base}/good.png?4"],
                         "TEXT": pa.array([b"\xff\xfe three circles"], pa.binary())})
    pq.write_table(table, tmp_path / "a.parquet")
    pq.write_table(bad_text, tmp_path / "b.parquet")
    cfg = config(tmp_path, tmp_path / "out", "fetch.allow_networks=[127.0.0.2/32]", "fetch.read_timeout_s=3",
                 "fetch.connect_timeout_s=1", "fetch.retries=0", "fetch.max_pixels=20000000")
    try:
        manifest = build_dataset(cfg)
    finally:
        server.shutdown()
    fetch = manifest["rejects"]["fetch"]
    assert fetch == {"empty": 1, "corrupt_image": 1, "not_an_image": 1, "http_404": 1, "timeout": 1,
                     "private_address": 3, "too_many_pixels": 1}
    assert manifest["rejects"]["captions"] == {"no_caption": 1, "undecodable_caption": 1}  # null; not UTF-8
    assert manifest["rows_in"] == 13 and manifest["written"]["counting"] == 2


@pytest.mark.slow
def test_s3_source_and_output(source, s3, tmp_path, ray_fresh):
    from countclip import storage

    ray_fresh()  # the workers must see the test's S3 endpoint and keys, as a cluster's pods would

    storage.write_bytes(f"s3://{s3}/laion/part-0.parquet", source["source"].read_bytes())
    cfg = config(f"s3://{s3}/laion/", f"s3://{s3}/datasets/cw")
    manifest = build_dataset(cfg)
    assert read_manifest(f"s3://{s3}/datasets/cw")["rows_written"] == manifest["rows_written"] > 0
    assert storage.list_objects(f"s3://{s3}/datasets/cw/.staging") == []  # staging cleaned up


