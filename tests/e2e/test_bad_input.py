"""Hostile and careless input through the real `countclip` command: nothing lost, nothing hung, no traceback.

A table of probes (issue 15), each a `python -m countclip.cli ...` subprocess in a fresh working
folder beside a shared folder of inputs. For every probe the test asserts the exit status (2, or 0
where counting and skipping is the documented behaviour), one line on stderr naming the bad thing,
no "Traceback", no write outside the probe's declared output (the working folder itself included:
no ./mlflow.db, no ./mlruns) and nothing that existed before changed or deleted.

The probes run four at a time (each is a process of its own; most end before Ray or a model loads).
The probes that need a Ray build are grouped in `test_bad_rows_in_a_build_are_counted_not_fatal`, and
the served model in `test_served_model_refuses_paths_and_bad_requests_with_4xx`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..conftest import REPO, VERIFIER, free_port, scene_png


@dataclass(frozen=True)
class Probe:
    kind: str  # what is bad, as the test id
    args: tuple[str, ...]  # the command line after `countclip`; {in}: the inputs, {work}: the working folder
    message: str  # a regex the stderr line must match (it names the bad thing)
    status: int = 2
    output: str | None = None  # the one path under {work} the probe may write (its declared output)
    setup: str | None = None  # a name in SETUPS: what to place in {work} first
    stdout: str | None = None  # a regex stdout must match (probes that succeed)
    env: dict[str, str] = field(default_factory=dict)


IMG = "{in}/img/good.png"
MODEL = "{in}/model.pt"
SOURCE = "{in}/source/source.parquet"
# A build that would run (the shipped verifier, CountWorld's settings) but for the one bad thing.
BUILD = ("build-dataset", f"source=[{SOURCE}]", "output={work}/dataset", "captions.id_column=SAMPLE_ID",
         "fetch.allow_local_files=true", f"verify.weights={VERIFIER}")
EVAL = ("evaluate", f"model.pretrained={MODEL}", "countbench={in}/bench/countworld_bench.json",
        "output={work}/eval", "tracking.enabled=false", "countworld_zeroshot=false")


def count(image: str = IMG, model: str = MODEL, *extra: str) -> tuple[str, ...]:
    return ("count", image, "--noun", "circles", "--model", model, *extra)


def evaluate(*overrides: str) -> tuple[str, ...]:
    return (*EVAL, *overrides)


ALIAS_BOMB_OVERRIDE = ("source=[&a [x,x,x,x,x,x,x,x,x], " + ", ".join(
    f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcde", "bcdef")) + "]")

PROBES = [
    # configuration: YAML files and overrides
    Probe("yaml_alias_bomb_in_source", ("build-dataset", "--config", "{in}/cfg/bomb.yaml"), r"expands to more than 100,000 values"),
    Probe("yaml_alias_bomb_in_override", ("build-dataset", ALIAS_BOMB_OVERRIDE), r"override .* expands to more than 100,000"),
    Probe("yaml_object_tag", ("build-dataset", "--config", "{in}/cfg/tag.yaml"), r"not valid YAML.*python/object"),
    Probe("yaml_syntax_error", ("build-dataset", "--config", "{in}/cfg/syntax.yaml"), r"is not valid YAML"),
    Probe("yaml_nested_too_deeply", ("build-dataset", "--config", "{in}/cfg/deep.yaml"), r"nested too deeply"),
    Probe("config_not_utf8", ("build-dataset", "--config", "{in}/cfg/latin1.yaml"), r"is not UTF-8 text"),
    Probe("config_too_large", ("build-dataset", "--config", "{in}/cfg/large.yaml"), r"larger than 1,048,576 bytes"),
    Probe("config_top_level_list", ("build-dataset", "--config", "{in}/cfg/list.yaml"), r"must hold a mapping"),
    Probe("config_is_a_folder", ("build-dataset", "--config", "{in}/cfg"), r"config file .*cfg is a folder"),
    Probe("config_missing", ("build-dataset", "--config", "{work}/none.yaml"), r"config file .*none.yaml does not exist"),
    Probe("unknown_field", (*BUILD, "sourc=[x]"), r"unknown field\(s\) \['sourc'\]"),
    Probe("infinite_timeout", (*BUILD, "fetch.read_timeout_s=.inf"), r"fetch.read_timeout_s: expected a finite number"),
    Probe("nan_ratio", (*BUILD, "shards.non_counting_ratio=.nan"), r"shards.non_counting_ratio: expected a finite number"),
    Probe("infinite_rate", (*BUILD, "captions.non_counting_rate=-.inf"), r"non_counting_rate: expected a finite number"),
    Probe("integer_out_of_range", (*BUILD, "fetch.max_bytes=99999999999999999999999"), r"fetch.max_bytes: .* out of range"),
    Probe("negative_timeout", (*BUILD, "fetch.connect_timeout_s=-1"), r"connect_timeout_s must be in \(0, 3600\]"),
    Probe("absurd_timeout", (*BUILD, "fetch.read_timeout_s=1e300"), r"read_timeout_s must be in \(0, 86400\]"),
    Probe("ill_typed_count", (*BUILD, "cluster.fetch_actors=many"), r"cluster.fetch_actors: expected an integer"),
    Probe("override_without_equals", (*BUILD, "output"), r"override 'output' must look like field.subfield=value"),
    Probe("override_into_a_scalar", (*BUILD, "output.x=1"), r"'output' is not a section"),
    Probe("huge_value_in_a_message", (*BUILD, "captions.url_column=[" + "x," * 30000 + "x]"),
          r"captions.url_column: expected a string, got \['x', 'x', 'x', 'x', \.\.\.\]"),
    Probe("control_characters_in_a_value", (*BUILD, "fetch.image_format=\x1b[31mred\x07"), r"'\\x1b\[31mred\\x07' is not one of"),
    # the build, before Ray starts
    Probe("source_missing", (*BUILD, "source=[{work}/none.parquet]"), r"source .*none.parquet does not exist"),
    Probe("source_not_parquet", (*BUILD, "source=[{in}/notes.parquet]"), r"notes.parquet is not a readable parquet file"),
    Probe("source_folder_without_parquet", (*BUILD, "source=[{in}/cfg]"), r"source .*cfg holds no .parquet files"),
    Probe("source_fifo", (*BUILD, "source=[{work}/pipe.parquet]"), r"pipe.parquet is not a regular file", setup="fifo"),
    Probe("caption_column_wrong_type", (*BUILD, "source=[{in}/intcaption.parquet]"),
          r"'TEXT' \(captions.text_column\) has type int64; expected text"),
    Probe("caption_column_missing", (*BUILD, "captions.text_column=CAPTION"), r"no column\(s\) \['CAPTION'\]"),
    Probe("ground_truth_missing", (*BUILD, "ground_truth={work}/truth.parquet"), r"ground_truth .*truth.parquet does not exist"),
    Probe("ground_truth_not_parquet", (*BUILD, "ground_truth={in}/notes.parquet"), r"ground_truth .* not a readable parquet"),
    Probe("ground_truth_wrong_columns", (*BUILD, f"ground_truth={SOURCE}"), r"ground_truth .* has no column\(s\) \['sample_id'"),
    Probe("output_holds_its_own_source", (*BUILD, "output={in}/source"), r"output .*source holds the build's own input"),
    Probe("output_folder_of_other_files", (*BUILD, "output={work}/out"), r"output .*out already holds 1 file\(s\).*thesis.tex",
          setup="thesis"),
    Probe("output_is_another_countclip_output", (*BUILD, "output={in}/bench"), r"holds another countclip output \(a benchmark\)"),
    Probe("output_is_a_file", (*BUILD, "output={in}/notes.parquet"), r"output .*notes.parquet exists and is not a folder"),
    Probe("verifier_weights_missing", (*BUILD, "verify.weights={work}/none.pt"), r"none.pt does not exist"),
    # CountWorld files
    Probe("make_source_over_other_files", ("world", "make-source", "--out", "{work}/out", "--rows", "3"),
          r"output .*out already holds 1 file\(s\).*thesis.tex.*--overwrite", setup="thesis"),
    Probe("make_source_overwrite_keeps_other_files", ("world", "make-source", "--out", "{work}/out", "--rows", "3",
                                                      "--overwrite"), r"", status=0, output="out", setup="thesis",
          stdout=r"source: .*source.parquet"),
    Probe("make_source_out_is_a_file", ("world", "make-source", "--out", "{in}/notes.parquet", "--rows", "3"),
          r"exists and is not a folder"),
    Probe("make_source_zero_rows", ("world", "make-source", "--out", "{work}/out", "--rows", "0"),
          r"--rows: a positive integer must be in \[1, "),
    Probe("make_dataset_over_other_files", ("world", "make-dataset", "--out", "{work}/out", "--rows", "3"),
          r"already holds 1 file\(s\) that countclip did not write as a dataset", setup="thesis"),
    Probe("make_zeroshot_over_other_files", ("world", "make-zeroshot", "--out", "{work}/out", "--images", "3"),
          r"already holds 1 file\(s\) that countclip did not write as a zero-shot set", setup="thesis"),
    # open_clip folders (countclip export, local-dir:)
    Probe("export_over_other_files", ("export", MODEL, "--out", "{work}/out"),
          r"already holds 1 file\(s\) that countclip did not write as a model folder \(thesis.tex\)", setup="thesis"),
    Probe("open_clip_folder_without_config", count(model="local-dir:{in}/ckpt"), r"ckpt holds no open_clip_config.json"),
    Probe("open_clip_folder_config_not_json", count(model="local-dir:{in}/folder/badconfig"),
          r"local-dir:.*badconfig is not a loadable open_clip folder"),
    Probe("open_clip_folder_garbage_weights", count(model="local-dir:{in}/folder/badweights"),
          r"local-dir:.*badweights is not a loadable open_clip folder"),
    # images given to `count`
    Probe("png_with_a_corrupt_chunk", count("{in}/img/badcrc.png"), r"badcrc.png is not a readable image: a corrupt PNG"),
    Probe("decompression_bomb_png", count("{in}/img/bomb.png"), r"bomb.png .* 12000x12000 pixels, more than the 40,000,000"),
    Probe("empty_image", count("{in}/img/empty.png"), r"empty.png is not a readable image: the image is empty"),
    Probe("text_named_png", count("{in}/img/text.png"), r"text.png is not a readable image: not an image"),
    Probe("truncated_jpeg", count("{in}/img/truncated.jpg"), r"truncated.jpg is not a readable image: a corrupt JPEG"),
    Probe("image_is_a_folder", count("{in}/img"), r"image .*img does not exist or is not a regular file"),
    Probe("image_is_a_fifo", count("{work}/pipe.png"), r"pipe.png does not exist or is not a regular file", setup="fifo"),
    Probe("image_missing", count("{work}/none.png"), r"none.png does not exist"),
    Probe("noun_with_control_characters", ("count", IMG, "--noun", "dogs\x1b[2J", "--model", MODEL),
          r"noun to count holds control characters \('dogs\\x1b\[2J'\)"),
    Probe("noun_empty", ("count", IMG, "--noun", " ", "--model", MODEL), r"noun to count is empty"),
    Probe("noun_too_long", ("count", IMG, "--noun", "dogs " * 100, "--model", MODEL), r"noun to count is 499 characters"),
    # checkpoints
    Probe("checkpoint_empty_dict", count(model="{in}/ckpt/empty_dict.pt"), r"empty_dict.pt holds an empty mapping"),
    Probe("checkpoint_bare_tensor", count(model="{in}/ckpt/tensor.pt"), r"tensor.pt holds a Tensor, not a state dict"),
    Probe("checkpoint_list", count(model="{in}/ckpt/list.pt"), r"list.pt holds a list, not a state dict"),
    Probe("checkpoint_garbage_safetensors", count(model="{in}/ckpt/garbage.safetensors"),
          r"garbage.safetensors is not a readable safetensors file"),
    Probe("checkpoint_zero_bytes", count(model="{in}/ckpt/zero.pt"), r"zero.pt is empty \(0 bytes\)"),
    Probe("checkpoint_text_file", count(model="{in}/ckpt/text.pt"), r"text.pt is not a readable PyTorch"),
    Probe("checkpoint_code_carrying_pickle", count(model="{in}/ckpt/code.pt"), r"code.pt holds pickled Python objects .* refused"),
    Probe("checkpoint_of_another_arch", count(IMG, MODEL, "--arch", "countclip-small"),
          r"model.pt does not fit countclip-small: .* tensor\(s\) of other shapes"),
    Probe("unknown_arch", count(IMG, MODEL, "--arch", "ViT-Q-99"), r"unknown architecture 'ViT-Q-99'"),
    Probe("checkpoint_is_a_folder", count(model="{in}/ckpt"), r"ckpt is a folder, not a checkpoint file"),
    Probe("checkpoint_missing", count(model="{work}/none.pt"), r"none.pt does not exist"),
    Probe("registry_without_tracking_uri", count(model="models:/countclip@champion"),
          r"cannot load models:/countclip@champion: the MLflow store .*mlflow.db does not exist; set MLFLOW_TRACKING_URI"),
    # retrieve
    Probe("retrieve_a_file", ("retrieve", IMG, "--query", "three dogs", "--model", MODEL), r"good.png is not a folder"),
    Probe("retrieve_missing_folder", ("retrieve", "{work}/none", "--query", "three dogs", "--model", MODEL),
          r"none does not exist"),
    Probe("retrieve_folder_without_images", ("retrieve", "{in}/cfg", "--query", "three dogs", "--model", MODEL),
          r"cfg holds no images"),
    Probe("retrieve_negative_top", ("retrieve", "{in}/retrieve", "--query", "x", "--model", MODEL, "--top", "-1"),
          r"--top: a positive integer must be in \[1, "),
    Probe("retrieve_skips_unreadable_images", ("retrieve", "{in}/retrieve", "--query", "three circles", "--model", MODEL),
          r"skipped 1 unreadable image\(s\) of 3 \(e.g. bad.png: .*corrupt PNG", status=0, stdout=r"\d\.\d{3}\t.*good1.png"),
    # evaluate
    Probe("countbench_is_a_folder", evaluate("countbench={in}/bench"), r"benchmark file .*bench is a folder"),
    Probe("countbench_nested_too_deeply", evaluate("countbench={in}/badbench/deep.json"), r"deep.json is nested too deeply"),
    Probe("countbench_not_json", evaluate("countbench={in}/badbench/invalid.json"), r"invalid.json is not valid JSON"),
    Probe("countbench_not_a_list", evaluate("countbench={in}/badbench/object.json"), r"must hold a JSON list"),
    Probe("countbench_entry_without_field", evaluate("countbench={in}/badbench/nofield.json"),
          r"entry 0 lacks field\(s\) \['number'\]"),
    Probe("countbench_number_out_of_range", evaluate("countbench={in}/badbench/eleven.json"), r"entry 0 has number 11"),
    Probe("countbench_missing", evaluate("countbench={work}/none.json"), r"benchmark file .*none.json does not exist"),
    Probe("countbench_fifo", evaluate("countbench={work}/pipe.json"), r"pipe.json is a folder or not a regular file",
          setup="fifo"),
    Probe("countbench_images_all_missing", evaluate("countbench={in}/badbench/lost.json"),
          r"none of the 2 benchmark images was found"),
    Probe("zeroshot_wds_not_a_wds_folder", evaluate("zeroshot_wds=[{in}/cfg]"),
          r"cfg is not a CLIP_benchmark webdataset folder"),
    Probe("evaluate_checkpoint_garbage", evaluate("model.pretrained={in}/ckpt/list.pt"), r"list.pt holds a list"),
    Probe("tracking_uri_with_a_password", evaluate("tracking.enabled=true", "tracking.uri=http://ann:hunter2@127.0.0.1:9"),
          r"MLflow tracking server http://ann:\*\*\*@127.0.0.1:9 is unreachable"),
    Probe("evaluate_counts_an_unreadable_image_and_writes_only_its_output",
          evaluate("countbench={in}/mixed/countworld_bench.json", "tracking.enabled=true",
                   "tracking.uri=sqlite:///{work}/eval/mlflow.db", "register.name=null"),
          r"", status=0, output="eval", stdout=r"accuracy .* over 8 images, 1 missing"),
]


def test_the_corpus_covers_at_least_forty_kinds():
    assert len({p.kind for p in PROBES}) == len(PROBES) >= 40


# ----------------------------------------------------------------------------------------------------
# the inputs


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class _Payload:
    """Unpickling this runs os.mkdir(path): what weights_only loading must refuse."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _alias_bomb(levels: int = 8) -> str:
    """A few hundred bytes of YAML whose source[0] expands to 9**levels strings."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(["x:", *["  " + line for line in lines], f"source: [*a{levels - 1}]"]) + "\n"


def _write_inputs(root: Path, tiny_model) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from countclip.export import export_folder
    from countclip.model import export_checkpoint
    from countclip.world.files import write_benchmark, write_source

    model, _, _ = tiny_model
    export_checkpoint(model, root / "model.pt")
    export_folder(str(root / "model.pt"), "countclip-tiny", root / "folder/badweights")
    (root / "folder/badweights/open_clip_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    (root / "folder/badconfig").mkdir()
    (root / "folder/badconfig/open_clip_config.json").write_text("not json")
    (root / "ckpt").mkdir()
    torch.save({}, root / "ckpt/empty_dict.pt")
    torch.save(torch.zeros(3), root / "ckpt/tensor.pt")
    torch.save([1, 2, 3], root / "ckpt/list.pt")
    torch.save({"x": _Payload(str(root.parent / "work-pwned"))}, root / "ckpt/code.pt")
    (root / "ckpt/garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json, not tensors")
    (root / "ckpt/zero.pt").write_bytes(b"")
    (root / "ckpt/text.pt").write_text("hello")

    good = scene_png(3, seed=1)
    (root / "img").mkdir()
    (root / "img/good.png").write_bytes(good)
    corrupt = bytearray(_png(Image.new("RGB", (20, 20), "red")))
    corrupt[29] ^= 0xFF  # the IHDR chunk's CRC: PIL raises SyntaxError
    (root / "img/badcrc.png").write_bytes(bytes(corrupt))
    (root / "img/bomb.png").write_bytes(_png(Image.new("1", (12000, 12000))))  # 144 megapixels in ~20 KB
    (root / "img/empty.png").write_bytes(b"")
    (root / "img/text.png").write_text("not an image")
    jpeg = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(jpeg, "JPEG")
    (root / "img/truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "retrieve").mkdir()
    (root / "retrieve/good1.png").write_bytes(good)
    (root / "retrieve/good2.png").write_bytes(scene_png(5, seed=2))
    (root / "retrieve/bad.png").write_bytes(bytes(corrupt))

    (root / "cfg").mkdir()
    (root / "cfg/bomb.yaml").write_text(_alias_bomb())
    (root / "cfg/tag.yaml").write_text(f"source: !!python/object/apply:os.mkdir ['{root.parent}/work-pwned']\n")
    (root / "cfg/syntax.yaml").write_text("source: [a,\n  output: b\n")
    (root / "cfg/deep.yaml").write_text("source: " + "[" * 50000 + "]" * 50000 + "\n")
    (root / "cfg/latin1.yaml").write_bytes("output: caf\xe9\n".encode("latin-1"))
    (root / "cfg/large.yaml").write_text("# " + "x" * (1 << 21) + "\n")
    (root / "cfg/list.yaml").write_text("- a\n- b\n")

    write_source(root / "source", seed=3, rows=12)
    write_benchmark(root / "bench", seed=2, per_count=1, image_size=64)
    (root / "notes.parquet").write_text("not parquet")
    pq.write_table(pa.table({"URL": ["file:///x.png"], "TEXT": [3], "SAMPLE_ID": ["a"]}), root / "intcaption.parquet")

    (root / "badbench").mkdir()
    (root / "badbench/deep.json").write_text("[" * 100000 + "]" * 100000)
    (root / "badbench/invalid.json").write_text("[{")
    (root / "badbench/object.json").write_text('{"image_url": "a.png"}')
    (root / "badbench/nofield.json").write_text('[{"image_url": "a.png", "text": "two dogs"}]')
    (root / "badbench/eleven.json").write_text('[{"image_url": "a.png", "text": "eleven dogs", "number": 11}]')
    lost = [{"image_url": f"lost{i}.png", "text": "two circles", "number": 2} for i in range(2)]
    (root / "badbench/lost.json").write_text(json.dumps(lost))
    entries = json.loads((root / "bench/countworld_bench.json").read_text())
    (root / "mixed/images").mkdir(parents=True)
    for entry in entries:
        (root / "mixed" / entry["image_url"]).write_bytes((root / "bench" / entry["image_url"]).read_bytes())
    (root / "mixed" / entries[0]["image_url"]).write_bytes(bytes(corrupt))  # one unreadable image: counted
    (root / "mixed/countworld_bench.json").write_text(json.dumps(entries))


def _setup(kind: str | None, work: Path) -> None:
    if kind == "fifo":
        for name in ("pipe.parquet", "pipe.png", "pipe.json"):
            os.mkfifo(work / name)
    elif kind == "thesis":
        (work / "out").mkdir()
        (work / "out/thesis.tex").write_text("three years of work\n")


# ----------------------------------------------------------------------------------------------------
# running a probe


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under the roots: (type, size, sha256 of regular files). FIFOs are never opened."""
    import stat

    entries = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder) / name
                info = path.lstat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else None
                entries[str(path)] = (stat.S_IFMT(info.st_mode), info.st_size if digest else 0, digest)
    return entries


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


def run_probe(probe: Probe, inputs: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    _setup(probe.setup, work)
    fill = {"in": str(inputs), "work": str(work)}
    args = [a.replace("{in}", fill["in"]).replace("{work}", fill["work"]) for a in probe.args]
    before = snapshot(inputs, work)
    tic = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "countclip.cli", *args], cwd=work, env=cli_env(**probe.env),
                              capture_output=True, text=True, timeout=240)
        status, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        status, stdout, stderr = "hung", str(exc.stdout), str(exc.stderr)
    return {"status": status, "stdout": stdout, "stderr": stderr, "before": before, "after": snapshot(inputs, work),
            "seconds": time.perf_counter() - tic}


def check_probe(probe: Probe, result: dict, inputs: Path, work: Path) -> None:
    stderr = result["stderr"]
    assert result["status"] == probe.status, f"exit {result['status']}, stderr: {stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    if probe.status:  # the whole of stderr is one line
        assert len(lines) == 1, f"{len(lines)} lines on stderr: {stderr[-2000:]}"
    else:  # libraries may log on success (MLflow's store migrations); countclip says one thing at most
        lines = [line for line in lines if line.startswith("countclip: ")]
        assert len(lines) == (1 if probe.message else 0), stderr[-2000:]
    if lines:
        assert lines[0].startswith("countclip: ") and len(lines[0]) <= 700, lines[0][:2000]
        assert re.search(probe.message, lines[0]), lines[0][:2000]
    ours = [line for line in stderr.split("\n") if line.startswith("countclip: ")]
    assert not any(re.search(r"[\x00-\x1f\x7f]", line) for line in ours), "raw control characters in a message"
    if probe.stdout:
        assert re.search(probe.stdout, result["stdout"]), result["stdout"][-2000:]
    before, after = result["before"], result["after"]
    allowed = str(work / probe.output) if probe.output else None

    def inside(path: str) -> bool:
        return allowed is not None and (path == allowed or path.startswith(allowed + os.sep))

    changed = sorted(p for p in before if not inside(p) and after.get(p) != before[p])
    assert not changed, f"changed or deleted: {changed[:5]}"
    written = sorted(p for p in after if p not in before and not inside(p))
    assert not written, f"written outside the declared output: {written[:5]}"
    assert not (inputs.parent / "work-pwned").exists(), "a pickle's or YAML tag's payload ran"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_model):
    """Every probe run (four at a time); returns {kind: (probe, result, inputs, work)}."""
    root = tmp_path_factory.mktemp("corpus")
    inputs = root / "in"
    inputs.mkdir()
    _write_inputs(inputs, tiny_model)
    runs = {}

    def one(probe: Probe):
        work = root / "work" / probe.kind
        return probe.kind, (probe, run_probe(probe, inputs, work), inputs, work)

    with ThreadPoolExecutor(4) as pool:
        runs = dict(pool.map(one, PROBES))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("kind", [p.kind for p in PROBES])
def test_bad_input_gets_one_line_and_loses_nothing(corpus, kind):
    probe, result, inputs, work = corpus[kind]
    check_probe(probe, result, inputs, work)
    if probe.setup == "thesis":
        assert (work / "out/thesis.tex").read_text() == "three years of work\n"


# ----------------------------------------------------------------------------------------------------
# bad rows in a build that runs (Ray)


def _bad_rows_source(folder: Path) -> Path:
    """A CountWorld source of 30 rows, then damaged on plain rows (text, a good image): an id shared by
    two rows, a null and an empty id, a URL that is not UTF-8 (binary URL column), a FIFO's URL, a
    caption that is not UTF-8 in a string column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from countclip.world.files import write_source

    paths = write_source(folder / "cw", seed=11, rows=30)
    table = pq.read_table(paths["source"])
    plain = [i for i, kind in enumerate(pq.read_table(paths["truth"]).column("kind").to_pylist()) if kind == "plain"]
    assert len(plain) >= 7
    ids = table.column("SAMPLE_ID").to_pylist()
    urls = [u.encode() for u in table.column("URL").to_pylist()]
    texts = [t.encode() if t is not None else None for t in table.column("TEXT").to_pylist()]
    ids[plain[1]] = ids[plain[0]]  # two different rows, one id
    ids[plain[2]], ids[plain[3]] = None, ""
    urls[plain[4]] = b"file:///\xff\xfe.png"
    os.mkfifo(folder / "pipe.png")
    urls[plain[5]] = (folder / "pipe.png").as_uri().encode()
    texts[plain[6]] = b"a red \xe2\x28 circle"
    binary = pa.array(texts, pa.binary())
    text = pa.Array.from_buffers(pa.string(), len(binary), binary.buffers())  # a string column holding bad UTF-8
    damaged = table
    for name, column in [("SAMPLE_ID", pa.array(ids, pa.string())), ("URL", pa.array(urls, pa.binary())), ("TEXT", text)]:
        damaged = damaged.set_column(damaged.schema.get_field_index(name), name, column)
    path = folder / "damaged.parquet"
    pq.write_table(damaged, path)
    return path


def _build_args(source: Path, output: Path, *overrides: str) -> list[str]:
    return ["build-dataset", f"source=[{source}]", f"output={output}", "captions.id_column=SAMPLE_ID",
            "captions.non_counting_rate=1.0", "fetch.allow_local_files=true", "fetch.max_side=128",
            "fetch.image_format=png", f"verify.weights={VERIFIER}", "verify.image_size=128", "verify.confidence=0.35",
            "verify.iou=0.3", "cluster.local_cpus=2", "cluster.fetch_actors=1", "fetch.threads=2", *overrides]


def _cli(args: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "countclip.cli", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_bad_rows_in_a_build_are_counted_not_fatal(tmp_path):
    import pyarrow.parquet as pq

    source = _bad_rows_source(tmp_path)
    out = tmp_path / "dataset"
    proc = _cli(_build_args(source, out), tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    rejects = manifest["rejects"]
    assert rejects["captions"]["missing_id"] == 2  # null and empty
    assert rejects["captions"]["undecodable_caption"] == 1 and rejects["captions"]["undecodable_url"] == 1
    assert rejects["fetch"]["not_a_file"] == 1  # the FIFO: refused, not waited on
    assert rejects["balance"]["duplicate_id"] == 1
    written = sum(pq.read_metadata(out / s["path"]).num_rows for s in manifest["shards"])
    rejected = sum(n for by_reason in rejects.values() for n in by_reason.values())
    assert manifest["rows_in"] == 30 == written + rejected == manifest["rows_written"] + manifest["rows_rejected"]
    ids = pq.read_table([out / s["path"] for s in manifest["shards"]], columns=["sample_id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids)) and None not in ids and "" not in ids  # ids unique, never null


@pytest.mark.slow
def test_builds_that_cannot_run_say_why_in_one_line(tmp_path):
    from countclip.world.files import write_source

    source = write_source(tmp_path / "cw", seed=12, rows=6)["source"]
    (tmp_path / "cw/images").rename(tmp_path / "cw/moved")  # every image gone: nothing survives
    cases = [
        (_build_args(source, tmp_path / "a"), r"no source row survived the build: all 6 rejected \(.*fetch missing_file \d"),
        (_build_args(source, tmp_path / "b", "cluster.verify_gpus=1"), r"need 1 GPU but the cluster has 0"),
        (_build_args(source, tmp_path / "c", "cluster.fetch_resources={fetch_slot: 1}"),
         r"need 1 fetch_slot but the cluster has 0"),
    ]
    for args, message in cases:
        tic = time.perf_counter()
        proc = _cli(args, tmp_path, timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("countclip: ")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr[-2000:]
        assert time.perf_counter() - tic < 240  # refused, not pending for ever
    assert not [p.name for p in tmp_path.iterdir() if p.name in "abc" or p.name.startswith((".a.", ".b.", ".c."))]


# ----------------------------------------------------------------------------------------------------
# the served model


def _post(url: str, frame: dict) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps({"dataframe_split": frame}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def served_model(tmp_path_factory, open_clip_folders):
    """The counting model as `countclip evaluate` logs it (its open_clip folder, bytes only), served by
    `mlflow models serve --env-manager local` on 127.0.0.1; yields its /invocations URL."""
    from countclip import tracking

    folder = tmp_path_factory.mktemp("served")
    cfg = tracking.TrackingConfig(uri=f"sqlite:///{folder / 'mlflow.db'}", experiment="served")
    uri = tracking.log_count_model(cfg, tracking.start_run(cfg, "r", {}, {}), open_clip_folders / "a", scene_png())
    port = free_port()
    venv_bin = Path(sys.executable).parent  # mlflow runs `uvicorn` from PATH
    env = cli_env(MLFLOW_TRACKING_URI=cfg.resolved_uri(), PATH=f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    log = open(folder / "serve.log", "w")
    proc = subprocess.Popen([str(venv_bin / "mlflow"), "models", "serve", "-m", uri, "--env-manager",
                             "local", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    import urllib.request

    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((folder / "serve.log").read_text()[-3000:]) from None
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError("mlflow models serve did not start: " + (folder / "serve.log").read_text()[-3000:])
    yield f"http://127.0.0.1:{port}/invocations"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_served_model_refuses_paths_and_bad_requests_with_4xx(served_model, tmp_path):
    from PIL import Image

    secret = tmp_path / "secret.png"
    secret.write_bytes(scene_png(4))  # a readable image on the server's disk
    answers = {}
    for name, path in [("existing image", secret), ("existing non-image", Path("/etc/hostname")),
                       ("missing", tmp_path / "absent.png"), ("folder", tmp_path)]:
        status, body = _post(served_model, {"columns": ["image_path", "noun"], "data": [[str(path), "circles"]]})
        # MLflow echoes the request's frame (the caller's own input) before the model's answer: compare answers
        answers[name] = (status, json.loads(body)["error_code"], json.loads(body)["message"].split("Error:", 1)[-1])
    assert {status for status, _, _ in answers.values()} == {400}, answers
    assert len(set(answers.values())) == 1, answers  # one answer: whether the path exists is not revealed
    assert "reads no image_path" in next(iter(answers.values()))[2], answers
    print("served answers to image_path:", json.dumps(answers))

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    status, body = _post(served_model, {"columns": ["image", "noun"], "data": [[b64(scene_png(3)), "circles"]]})
    assert status == 200 and 2 <= json.loads(body)["predictions"][0]["count"] <= 10, body[:2000]
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, "PNG")
    bad = [
        ({"columns": ["image", "noun"], "data": [[b64(b"<html>no</html>"), "circles"]]}, "not an image"),
        ({"columns": ["image", "noun"], "data": [[b64(buffer.getvalue()), "circles"]]}, "40,000,000"),
        ({"columns": ["image", "noun"], "data": [[b64(scene_png(3)), "dogs\u001b[2J"]]}, "control characters"),
        ({"columns": ["image"], "data": [[b64(scene_png(3))]]}, "noun"),
    ]
    for frame, message in bad:
        status, body = _post(served_model, frame)
        assert 400 <= status < 500 and message in body, (status, body[:2000])
        assert "Traceback" not in body, body[:3000]
