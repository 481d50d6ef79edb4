"""run_parallel: jobs side by side in spawned workers, their lines relayed, failures stopping the rest."""

import os
import time

import pytest

from countclip.parallel import in_worker, run_parallel


def _report(name, echo=print):
    echo(f"{name} started")
    echo(f"{name} done")
    return {"name": name, "pid": os.getpid(), "in_worker": in_worker()}


def _sleep_then_write(pid_file, marker, echo=print):
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
    with open(marker, "w") as f:
        f.write("finished")


def _fail_when_started(pid_file, echo=print):
    for _ in range(600):  # until the other worker runs: the failure must stop a running job
        if os.path.exists(pid_file) and open(pid_file).read():
            break
        time.sleep(0.05)
    raise ValueError("bad value in job two")


def _die(code, echo=print):
    os._exit(code)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_runs_in_worker_processes_in_order_and_relays_every_line():
    lines = []
    results = run_parallel(_report, [("a",), ("b",), ("c",)], workers=2, echo=lines.append)
    assert [r["name"] for r in results] == ["a", "b", "c"]
    assert all(r["in_worker"] and r["pid"] != os.getpid() for r in results)
    assert sorted(lines) == sorted(f"{n} {what}" for n in "abc" for what in ("started", "done"))
    for name in "abc":  # a worker's own lines keep their order
        assert lines.index(f"{name} started") < lines.index(f"{name} done")
    assert not in_worker()


def test_one_worker_runs_in_this_process_with_the_callers_echo():
    lines = []
    results = run_parallel(_report, [("a",), ("b",)], workers=1, echo=lines.append)
    assert [r["pid"] for r in results] == [os.getpid()] * 2 and not results[0]["in_worker"]
    assert lines == ["a started", "a done", "b started", "b done"]


def test_a_failure_is_raised_and_stops_the_running_jobs(tmp_path):
    pid_file, marker = tmp_path / "pid", tmp_path / "finished"
    with pytest.raises(ValueError, match="bad value in job two"):
        run_parallel(_dispatch, [("sleep", str(pid_file), str(marker)), ("fail", str(pid_file))], workers=2)
    sleeper = int(pid_file.read_text())
    assert not _alive(sleeper), "the sleeping job's worker was left running"
    assert not marker.exists()


def _dispatch(kind, *args, echo=print):
    return _sleep_then_write(*args, echo=echo) if kind == "sleep" else _fail_when_started(*args, echo=echo)


def test_no_calls_no_workers():
    assert run_parallel(_report, [], workers=4) == []


def test_a_worker_that_dies_is_a_clear_error():
    with pytest.raises(RuntimeError, match="worker process died.*_die"):
        run_parallel(_die, [(3,), (3,)], workers=2)
