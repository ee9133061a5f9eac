"""A Prefect process worker that stops on the first SIGTERM, for systemd and other service managers.

``prefect worker start`` answers SIGTERM by sending itself SIGINT, which its event loop does
not act on: the worker keeps polling until a second signal kills it (systemd's stop then
waits its whole ``TimeoutStopSec``). This runs the same worker (``ProcessWorker`` of the
pool) in this process and cancels it on the first SIGTERM or SIGINT; the worker leaves its
loop, and the process exits 0. Flow runs it had started are child processes of their own:
the service manager's stop reaches them too (systemd signals the unit's whole control
group), and tomoflow's flows end Cancelled on SIGTERM.

Usage: ``python -m tasks.infra.service_worker --pool cpu-pool [--limit N] [--name NAME]``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence


async def run_worker(pool: str, limit: int | None = None, name: str | None = None) -> None:
    """Poll ``pool`` and run its flow runs until SIGTERM or SIGINT."""
    from prefect.workers.process import ProcessWorker

    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    stop = {"signal": None}

    def _stop(signum: int) -> None:
        if stop["signal"] is None and main is not None:
            stop["signal"] = signal.Signals(signum).name
            print(f"worker of {pool}: {stop['signal']} received, stopping", flush=True)
            main.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stop, signum)
    worker = ProcessWorker(work_pool_name=pool, limit=limit, name=name)
    print(f"worker of {pool}: started", flush=True)
    try:
        await worker.start(printer=lambda *a, **k: print(*a, flush=True))
    except asyncio.CancelledError:
        if stop["signal"] is None:
            raise
    print(f"worker of {pool}: stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m tasks.infra.service_worker --pool POOL``."""
    parser = argparse.ArgumentParser(prog="python -m tasks.infra.service_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="the work pool to poll (cpu-pool, gpu-pool)")
    parser.add_argument("--limit", type=int, default=None, help="most flow runs at once (default: no limit)")
    parser.add_argument("--name", default=None, help="the worker's name in the dashboard")
    args = parser.parse_args(argv)
    from tasks.infra.process_defaults import apply_process_defaults

    # Before Prefect is imported; the flow runs this worker starts inherit the environment.
    apply_process_defaults()
    asyncio.run(run_worker(args.pool, args.limit, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
