"""SIGKILL `countclip build-dataset` at random points: no partial dataset ever looks complete, an existing
dataset survives byte for byte, and the next build to the same output succeeds and removes what the
killed ones left.

The kill points are drawn from a seeded generator and aimed at each phase of a build: a random moment,
a moment after the staging folder appeared (rows being fetched and verified), the moment the shards
start being written (the new dataset's temporary folder appeared), and a random moment of a first build
to a new output. The whole process group is killed (the driver and the local Ray it started).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_bad_input import _build_args, cli_env

SEED = 15


def _files(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _complete(folder: Path) -> bool:
    """Whether ``folder`` is a complete dataset: a manifest whose every shard is there, as hashed."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        return False
    return all(hashlib.sha256((folder / s["path"]).read_bytes()).hexdigest() == s["sha256"] for s in manifest["shards"])


def _session_pids(sid: int) -> list[int]:
    """Processes still alive in the session the build was started in."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "countclip.cli", *args], cwd=cwd, env=cli_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the build's whole session (the driver, Ray's processes, its workers)."""
    for _ in range(50):
        pids = _session_pids(proc.pid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    proc.wait(timeout=30)
    assert not _session_pids(proc.pid), "processes of the killed build are still alive"


def _run_until(proc: subprocess.Popen, ready, delay: float, limit: float) -> str:
    """Wait until ``ready()`` (or ``limit`` seconds), then ``delay`` seconds more, then SIGKILL;
    returns "killed" or, when the build ended first, "finished"."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.02)
    end = time.monotonic() + delay
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    if proc.poll() is not None:
        return "finished"
    _kill(proc)
    return "killed"


def _leftovers(output: Path) -> list[str]:
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


@pytest.mark.slow
def test_killed_builds_leave_no_complete_looking_partial_and_a_rerun_cleans_up(tmp_path):
    from countclip.world.files import write_source

    rng = random.Random(SEED)
    source = write_source(tmp_path / "cw", seed=SEED, rows=40)["source"]
    out = tmp_path / "builds" / "dataset"
    out.parent.mkdir()
    tic = time.monotonic()
    first = subprocess.run([sys.executable, "-m", "countclip.cli", *_build_args(source, out)], cwd=tmp_path,
                           env=cli_env(), capture_output=True, text=True, timeout=400)
    duration = time.monotonic() - tic
    assert first.returncode == 0, first.stderr[-3000:]
    previous = _files(out)
    shards = {name: digest for name, digest in previous.items() if name.startswith("shards/")}

    def appeared(prefix: str):
        """A condition: this run's own folder of that prefix exists (a killed run's leftovers do not count)."""
        before = set(_leftovers(out))
        return lambda: any(name.startswith(prefix) and name not in before for name in _leftovers(out))

    fresh = tmp_path / "first" / "dataset"
    fresh.parent.mkdir()
    runs = [
        ("a random moment", out, None, rng.uniform(0.2, 0.7) * duration),
        ("while rows are staged", out, ".dataset.staging-", rng.uniform(0.0, 3.0)),
        ("as the shards are written", out, ".dataset.tmp-", 0.0),
        ("a random moment of a first build", fresh, None, rng.uniform(0.2, 0.7) * duration),
    ]
    outcomes = []
    for index, (when, output, folder, delay) in enumerate(runs):
        ready = appeared(folder) if folder else (lambda: True)
        proc = _start(_build_args(source, output), tmp_path, tmp_path / f"kill{index}.log")
        tic = time.monotonic()
        outcome = _run_until(proc, ready, delay, limit=duration * 3)
        state = None
        if output == out:  # the dataset there before: untouched, or replaced whole by an identical build
            now = _files(out)  # (a kill may land after the swap, while the build's Ray shuts down: whole too)
            state = "kept byte for byte" if now == previous else "replaced whole"
            assert now == previous or (_complete(out)
                                       and {k: v for k, v in now.items() if k.startswith("shards/")} == shards), when
        else:  # a first build that was killed has no manifest: nothing there looks complete
            assert (outcome == "finished" and _complete(fresh)) or not (fresh / "manifest.json").exists(), when
        outcomes.append((when, round(time.monotonic() - tic, 1), outcome, state, _leftovers(output)))
    print("kill runs:", json.dumps(outcomes))
    assert sum(outcome == "killed" for _, _, outcome, _, _ in outcomes) >= 3, outcomes
    assert any(outcome == "killed" and state == "kept byte for byte" for _, _, outcome, state, _ in outcomes), outcomes

    rerun = subprocess.run([sys.executable, "-m", "countclip.cli", *_build_args(source, out)], cwd=tmp_path,
                           env=cli_env(), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _complete(out) and {k: v for k, v in _files(out).items() if k.startswith("shards/")} == shards
    assert _leftovers(out) == [], _leftovers(out)  # the killed runs' staging and temporary folders are gone
