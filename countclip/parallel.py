"""Independent CPU jobs side by side in worker processes, their output lines relayed to one echo.

    results = run_parallel(fine_tune, [(cfg, "control"), (cfg, "countclip")], workers=2, echo=print)

A small model's training step on a CPU barely speeds up with a second torch thread (countclip-tiny:
3.4 steps/s on one thread, 3.6 on two, on this 2-core machine), while two trainings side by side
on one thread each run at 3.3 steps/s each: the experiment's fine-tunes are independent, so they
run at once. `fn` is called as ``fn(*args, echo=...)`` in a spawned process (a fresh
interpreter: no forked torch or Ray state); what it passes to echo reaches the caller's echo, in
order per worker. Results come back in the order of `calls`. The first failure stops the others
(their processes are terminated) and is raised in the caller; a worker that dies (killed, out of
memory) raises RuntimeError naming it. One worker, or one call, runs in this process, no spawn.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

_LINES: Any = None  # the worker's end of the relay queue (set by _start_worker)


def run_parallel(fn: Callable[..., Any], calls: Sequence[tuple], workers: int,
                 echo: Callable[[str], None] = print) -> list[Any]:
    """``[fn(*args, echo=...) for args in calls]``, up to `workers` of them at once in processes."""
    workers = max(1, min(int(workers), len(calls)))
    if workers == 1:
        return [fn(*args, echo=echo) for args in calls]
    ctx = multiprocessing.get_context("spawn")
    lines = ctx.Queue()
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker, initargs=(lines,))
    futures = [pool.submit(_call, fn, args) for args in calls]
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _relay(lines, echo)
            for future in done:
                future.result()  # the first failure, raised now, stops the rest below
        results = [future.result() for future in futures]
    except BrokenProcessPool as error:
        _stop(pool)
        raise RuntimeError(f"a worker process died (killed or out of memory?) while running {fn.__name__}") from error
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    _relay(lines, echo)
    return results


def in_worker() -> bool:
    """Whether this process is a `run_parallel` worker (its output should go through echo only: no
    redrawn terminal lines, which another worker would overwrite)."""
    return _LINES is not None


def _start_worker(lines) -> None:
    global _LINES
    _LINES = lines


def _call(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(*args, echo=_LINES.put)


def _relay(lines, echo: Callable[[str], None]) -> None:
    while True:
        try:
            echo(lines.get_nowait())
        except queue_module.Empty:
            return


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the running workers now (shutdown alone waits for them)."""
    processes = list(getattr(pool, "_processes", {}).values())  # no public handle before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
