#!/usr/bin/env python3
"""Client churn soak of the PyStrands broker (issue 6), the long version of
tests/client_churn.rs: waves of WebSocket clients connect, send, and leave
for a bounded time; the broker's RSS and open descriptors are sampled
throughout. Verdict: after warm-up RSS does not grow (within --rss-tolerance
percent of the value at the end of warm-up), and once the churn stops the
descriptors return to their count before the first client.

Python standard library only (asyncio, raw frames), loopback only. It plays
the backend itself (accepts every request except /ws/reject...).

    cargo build --release
    python3 benches/churn.py                      # 10 minutes, defaults
    python3 benches/churn.py --duration 60 --warmup 30

Each wave: --clients at once; every 8th is rejected by the backend (403),
every 8th sends half an upgrade request and goes, the rest upgrade, send
--messages text messages and leave, a third of them by dropping the TCP
connection, the others by a close handshake. --pause seconds between waves
keep the load moderate (the machine is shared).

Warm-up must outlast the broker's longest timer (--ping-interval, 25 s by
default): its deadline queues keep an entry per connection until the
deadline passes, so RSS settles only after that.

Exit status: 0 verdict PASS, 1 FAIL, 2 setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame (masked, as RFC 6455 requires of clients); the
    payload is XORed as one big integer, fast enough for megabytes."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    if not n:
        return head + mask
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(n)


def upgrade_request(host: str, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.connected = 0
        self.messages = 0
        self.disconnected = 0
        self.clients = 0
        self.failures = 0
        self.last_failure = ""


async def backend(host: str, port: int, stats: Stats, ready: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    ready.set()
    while True:
        line = await reader.readline()
        if not line:
            return
        event = json.loads(line)
        action = event.get("action")
        if action == "connection_request":
            stats.requests += 1
            accepted = not event["params"]["url"].startswith("/ws/reject")
            answer = {
                "action": "response",
                "request_id": event["request_id"],
                "params": {"accepted": accepted, "room_id": "churn"},
            }
            writer.write(json.dumps(answer).encode() + b"\n")
        elif action == "new_connection":
            stats.connected += 1
        elif action == "new_message":
            stats.messages += 1
        elif action == "disconnected":
            stats.disconnected += 1


async def client(host: str, port: int, i: int, messages: int, stats: Stats) -> None:
    kind = i % 8
    addr = f"{host}:{port}"
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if kind == 1:  # half a request, then gone
            writer.write(b"GET /ws/churn HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            return
        path = f"/ws/reject-{i}" if kind == 0 else "/ws/churn"
        writer.write(upgrade_request(addr, path))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split()[1])
        if kind == 0:
            if status != 403:
                raise RuntimeError(f"rejected upgrade answered {status}")
            return
        if status != 101:
            raise RuntimeError(f"upgrade answered {status}")
        for m in range(messages):
            writer.write(masked_frame(0x1, f"client {i} message {m}".encode()))
        await writer.drain()
        if kind in (2, 3, 4):  # dropped TCP connection
            return
        writer.write(masked_frame(0x8, struct.pack("!H", 1000)))
        await writer.drain()
        while True:
            opcode, _ = await asyncio.wait_for(read_frame(reader), 10)
            if opcode == 0x8:
                break
    except Exception as e:  # counted, reported, and failing the verdict
        stats.failures += 1
        stats.last_failure = f"client {i} (kind {kind}): {e!r}"
    finally:
        stats.clients += 1
        writer.close()


def start_broker(binary: str, extra: list[str]) -> tuple[subprocess.Popen, str, int, int, list]:
    cmd = [binary, "--host", "127.0.0.1", "--backend-host", "127.0.0.1",
           "--ws-port", "0", "--tcp-port", "0", "--admin-port", "0", "--log-level", "info", *extra]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    deadline = time.monotonic() + 10
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log.append(line.rstrip())
        m = re.search(r"listening websocket=([\d.]+):(\d+) backend=[\d.]+:(\d+)", line)
        if m:
            # Keep draining stderr so the pipe never fills.
            def drain() -> None:
                for rest in proc.stderr:  # type: ignore[union-attr]
                    log.append(rest.rstrip())
            threading.Thread(target=drain, daemon=True).start()
            return proc, m.group(1), int(m.group(2)), int(m.group(3)), log
    proc.kill()
    sys.exit(f"churn: the broker did not start: {' | '.join(log)}")


async def run(args: argparse.Namespace) -> int:
    proc, host, ws_port, backend_port, log = start_broker(args.server_bin, args.server_arg)
    pid = proc.pid
    stats = Stats()
    ready = asyncio.Event()
    backend_task = asyncio.create_task(backend(host, backend_port, stats, ready))
    await asyncio.wait_for(ready.wait(), 10)
    # The broker logs the backend's arrival; let it register before counting.
    await asyncio.sleep(0.5)
    fds_before = fd_count(pid)
    rss_start = rss_kib(pid)
    print(f"broker pid {pid} ws {host}:{ws_port}; before churn: RSS {rss_start} KiB, "
          f"{fds_before} fds; warm-up {args.warmup:.0f} s of {args.duration:.0f} s", flush=True)
    print(f"{'t(s)':>6} {'waves':>6} {'clients':>8} {'clients/s':>9} {'RSS KiB':>8} {'fds':>5} "
          f"{'failures':>8}", flush=True)

    started = time.monotonic()
    next_sample = started
    samples: list[tuple[float, int, int]] = []
    last = (0.0, 0)
    baseline_rss = None
    waves = 0
    hard_stop = started + args.duration + 60
    while True:
        now = time.monotonic()
        if now >= next_sample:
            t = now - started
            rss, fds = rss_kib(pid), fd_count(pid)
            samples.append((t, rss, fds))
            rate = (stats.clients - last[1]) / (t - last[0]) if t > last[0] else 0.0
            last = (t, stats.clients)
            print(f"{t:6.0f} {waves:6d} {stats.clients:8d} {rate:9.0f} {rss:8d} {fds:5d} "
                  f"{stats.failures:8d}", flush=True)
            next_sample += args.sample
        if baseline_rss is None and now - started >= args.warmup:
            baseline_rss = rss_kib(pid)
            print(f"-- warm-up done: baseline RSS {baseline_rss} KiB", flush=True)
        if now - started >= args.duration:
            break
        if proc.poll() is not None:
            print("churn: the broker exited", file=sys.stderr)
            return 1
        await asyncio.wait_for(
            asyncio.gather(*(client(host, ws_port, i, args.messages, stats)
                             for i in range(args.clients))),
            30,
        )
        waves += 1
        await asyncio.sleep(args.pause)

    # Every accepted client has left once the backend saw as many
    # disconnects as connects; then the descriptors must come back.
    deadline = time.monotonic() + 15
    while stats.disconnected < stats.connected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    fds_after = fd_count(pid)
    while fds_after != fds_before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        fds_after = fd_count(pid)
    rss_end = rss_kib(pid)
    rss_max_after = max([r for t, r, _ in samples if t >= args.warmup] + [rss_end])
    backend_task.cancel()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if time.monotonic() > hard_stop:
        print("churn: ran past its bound", file=sys.stderr)

    assert baseline_rss is not None
    limit = baseline_rss * (1 + args.rss_tolerance / 100)
    rss_ok = rss_end <= limit
    fds_ok = fds_after == fds_before
    events_ok = stats.disconnected == stats.connected and stats.failures == 0
    print(f"-- {waves} waves, {stats.clients} clients in {args.duration:.0f} s: "
          f"{stats.requests} requests, {stats.connected} accepted, {stats.messages} messages, "
          f"{stats.disconnected} disconnected, {stats.failures} client failures")
    if stats.last_failure:
        print(f"   last failure: {stats.last_failure}")
    print(f"-- RSS: {rss_start} KiB before churn, {baseline_rss} KiB after warm-up, "
          f"{rss_end} KiB at the end (max after warm-up {rss_max_after} KiB; "
          f"limit {limit:.0f} KiB, +{args.rss_tolerance:g} %): {'ok' if rss_ok else 'GREW'}")
    print(f"-- fds: {fds_before} before churn, {fds_after} after: "
          f"{'ok' if fds_ok else 'NOT BACK'}")
    verdict = rss_ok and fds_ok and events_ok
    print(f"verdict: {'PASS' if verdict else 'FAIL'}")
    return 0 if verdict else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server-bin", default=os.path.join(ROOT, "target/release/pystrands-server"))
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra broker argument (repeatable), e.g. "
                        "--server-arg=--ping-interval --server-arg=5")
    p.add_argument("--duration", type=float, default=600, help="seconds of churn (default 600)")
    p.add_argument("--warmup", type=float, default=60,
                   help="seconds before the RSS baseline (default 60; > --ping-interval)")
    p.add_argument("--clients", type=int, default=200, help="clients per wave (default 200)")
    p.add_argument("--messages", type=int, default=5, help="messages per client (default 5)")
    p.add_argument("--pause", type=float, default=0.05, help="seconds between waves")
    p.add_argument("--sample", type=float, default=30, help="seconds between samples")
    p.add_argument("--rss-tolerance", type=float, default=5, help="percent (default 5)")
    args = p.parse_args()
    if not os.access(args.server_bin, os.X_OK):
        print(f"churn: no broker at {args.server_bin} (cargo build --release)", file=sys.stderr)
        return 2
    if args.warmup >= args.duration:
        print("churn: --warmup must be shorter than --duration", file=sys.stderr)
        return 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
