"""Measure a Python echo backend's CPU per round trip with the project's load generator.

For each variant it starts a broker (pinned to core 0), the echo backend
(pinned to core 1, with the load generator), waits until the backend is
connected, runs the load generator's ``echo`` scenario against them with
``--external-backend --backend-pid``, and prints the backend's CPU per round
trip. Variants run in alternation, ``--rounds`` times, and the medians are
printed at the end, so that the package's clients and the published 1.0.0
clients are compared in the same sitting.

    cargo build --release --workspace         # the broker and the load generator
    python examples/bench_echo_backend.py --clients 100 10 --rounds 3 \\
        --legacy /path/to/pystrands-1.0.0     # optional: the 1.0.0 sources

``--legacy`` is a directory holding the published package's ``pystrands/``
(for example ``pip download pystrands==1.0.0 --no-deps`` and unzip the wheel);
without it only this package's clients are measured. ``--baseline`` is a
directory holding another copy of this package's ``pystrands/`` (for example
``git archive <commit> python/pystrands | tar -x -C /tmp/base`` then
``--baseline /tmp/base/python``): its clients run the same echo backend, in
alternation with this checkout's, for a before/after comparison in one
sitting. Linux only (taskset).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"websocket=(\S+) backend=(\S+)")

LEGACY_ECHO = '''
import asyncio, sys
from pystrands import PyStrandsClient, AsyncPyStrandsClient
class Echo(PyStrandsClient):
    def on_message(self, message, context):
        self.send_private_message(context.client_id, message)
class AEcho(AsyncPyStrandsClient):
    async def on_message(self, message, context):
        await self.send_private_message(context.client_id, message)
port, use_async = int(sys.argv[1]), sys.argv[2] == "async"
if use_async:
    async def main():
        c = AEcho("127.0.0.1", port)
        await c.connect()
        await c.run_forever()
    asyncio.run(main())
else:
    Echo("127.0.0.1", port).run_forever()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(core: int, argv: List[str]) -> List[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") else argv


def wait_for_line(path: Path, pattern: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        match = regex.search(text)
        if match:
            return match.group(0)
        time.sleep(0.05)
    raise RuntimeError(f"no line matching {pattern!r} in {path}:\n{path.read_text(errors='replace')}")


def measure(variant: str, clients: int, args: argparse.Namespace, tmp: Path) -> Tuple[float, float]:
    port = free_port()
    broker_log = tmp / "broker.log"
    with open(broker_log, "w") as log:
        broker = subprocess.Popen(
            pinned(0, [args.server_bin, "--host", "127.0.0.1", "--ws-port", "0",
                       "--tcp-port", str(port), "--admin-port", "0", "--log-level", "info"]),
            stdout=subprocess.DEVNULL, stderr=log,
        )
    backend = None
    try:
        listening = LISTENING.search(wait_for_line(broker_log, r"websocket=\S+ backend=\S+"))
        assert listening is not None
        ws = listening.group(1)
        env = dict(os.environ)
        if variant.startswith("legacy"):
            env["PYTHONPATH"] = args.legacy
            argv = [sys.executable, "-c", LEGACY_ECHO, str(port), variant.split("-")[1]]
        else:
            env["PYTHONPATH"] = args.baseline if variant.startswith("baseline") else str(REPO / "python")
            argv = [sys.executable, str(REPO / "examples" / "echo_backend.py"),
                    "--host", "127.0.0.1", "--port", str(port)]
            if variant.endswith("-async"):
                argv.append("--async")
        backend = subprocess.Popen(pinned(1, argv), env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_line(broker_log, r"backend \S+ connected")
        result = subprocess.run(
            [args.loadgen, "echo", "--server-pid", str(broker.pid), "--ws", ws,
             "--external-backend", "--backend-pid", str(backend.pid),
             "--clients", str(clients), "--duration", str(args.duration),
             "--core", "1", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=args.duration + 60,
        )
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        if not figures.get("ok"):
            raise RuntimeError(f"load generator checks failed:\n{result.stdout}")
        return figures["backend_cpu_per_round_trip_us"], figures["round_trips_per_s"]
    finally:
        for proc in (backend, broker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server-bin", default=str(REPO / "target" / "release" / "pystrands-server"))
    parser.add_argument("--loadgen", default=str(REPO / "target" / "release" / "loadgen"))
    parser.add_argument("--legacy", help="directory holding pystrands 1.0.0's pystrands/ package")
    parser.add_argument("--baseline", help="directory holding another copy of this package's pystrands/")
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 10])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="measured seconds per run")
    args = parser.parse_args()
    if not os.access(args.loadgen, os.X_OK):
        parser.error(f"no load generator at {args.loadgen}: run `cargo build --release --workspace` or pass --loadgen")
    if not os.access(args.server_bin, os.X_OK):
        parser.error(f"no broker at {args.server_bin}: run `cargo build --release`")

    variants = ["pystrands-sync", "pystrands-async"]
    if args.baseline:
        variants[1:1] = ["baseline-sync"]
        variants.append("baseline-async")
    if args.legacy:
        variants[variants.index("pystrands-async"):variants.index("pystrands-async")] = ["legacy-sync"]
        variants.append("legacy-async")
    cpu: Dict[Tuple[str, int], List[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(1, args.rounds + 1):
            for clients in args.clients:
                for variant in variants:
                    us, rate = measure(variant, clients, args, Path(tmp))
                    cpu.setdefault((variant, clients), []).append(us)
                    print(f"round {round_no}  {clients:4d} clients  {variant:16s} "
                          f"{us:7.2f} µs/round trip  {rate / 1000:6.1f} k round trips/s", flush=True)
    print("\nmedian backend CPU per round trip (µs):")
    print(f"{'variant':16s}" + "".join(f"{c:>12d} cl" for c in args.clients))
    for variant in variants:
        print(f"{variant:16s}" + "".join(
            f"{statistics.median(cpu[(variant, c)]):15.2f}" for c in args.clients))
    if args.baseline:
        print("\nratio to the baseline:")
        for kind in ("sync", "async"):
            print(f"{kind:16s}" + "".join(
                f"{statistics.median(cpu[('pystrands-' + kind, c)]) / statistics.median(cpu[('baseline-' + kind, c)]):15.2f}"
                for c in args.clients))
    if args.legacy:
        print("\nratio to the 1.0.0 client (target: at most 0.33):")
        for kind in ("sync", "async"):
            print(f"{kind:16s}" + "".join(
                f"{statistics.median(cpu[('pystrands-' + kind, c)]) / statistics.median(cpu[('legacy-' + kind, c)]):15.2f}"
                for c in args.clients))
    return 0


if __name__ == "__main__":
    sys.exit(main())
