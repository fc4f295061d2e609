#!/usr/bin/env python3
"""Hostile peers against the PyStrands broker: one scenario per memory or
descriptor bound, each trying to break it the way a hostile client or
backend would, with the broker's RSS and open descriptors read from /proc.

Python standard library only (raw sockets, raw WebSocket frames), loopback
only; every loop is bounded in count and time. For each scenario the script
starts the broker binary itself on ephemeral ports, plays the backends and
the clients, stops the broker (by the PID it started) and prints: RSS at
baseline (after setup, before the hostile part), peak RSS (VmHWM, reset at
baseline where the kernel allows, and sampled), RSS 5 s after the hostile
peers are gone, open descriptors at baseline, peak and after, the bound the
scenario is checked against, and PASS or FAIL.

    cargo build --release
    python3 benches/hostile.py                           # every scenario, ~2 minutes
    python3 benches/hostile.py --only 1a,2b --json       # a subset, one JSON line each
    python3 benches/hostile.py --server-bin /path/to/an/older/pystrands-server
    python3 benches/hostile.py --list

Scenario 1b sends 2,000,000 one-byte room messages (--room-messages): with
fewer, each member's kernel send buffer (up to 4 MiB on loopback with the
default tcp_wmem) takes all of its frames (500,000 frames of 3 bytes:
1.5 MB) and the broker's own queues are never tested.

Flags a broker does not list in its --help (--queue-bytes,
--max-pending-backends, --admin-port) are left out, so an older broker can
be measured with the same command for a before-and-after comparison.

Exit status: 0 every scenario PASS, 1 some FAIL, 2 setup error.
"""

from __future__ import annotations

import argparse
import base64
import collections
import errno
import json
import os
import re
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Counter, Deque, Dict, List, Optional, Set, Tuple, Union

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from churn import masked_frame  # noqa: E402  (one client-frame encoder for the bench scripts)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
KIB = 1024
MIB = 1024 * 1024
# Marker text: a message carrying it is the last of a hostile burst, so its
# arrival proves the broker processed everything before it.
MARKER = "hostile-end"


# --- /proc ----------------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    """A `Vm*` line of /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def reset_peak(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0, clear_refs value 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def tcp_backlog(port: int) -> Tuple[int, int]:
    """Bytes on loopback TCP connections to `port` that the broker has not
    read yet: (in the broker's receive queues, in our send queues)."""
    unread = unsent = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            if state == "0A":  # LISTEN: its rx_queue is the accept queue
                continue
            if int(local.split(":")[1], 16) == port:
                unread += rx
            elif int(remote.split(":")[1], 16) == port:
                unsent += tx
    return unread, unsent


def wait_read_all(port: int, seconds: float) -> bool:
    """Waits (bounded) until the broker has read every byte sent to `port`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if tcp_backlog(port) == (0, 0):
            return True
        time.sleep(0.05)
    return tcp_backlog(port) == (0, 0)


class Sampler:
    """Samples the broker's RSS and descriptors on a thread; keeps the maxima."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_rss = 0
        self.max_fds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(0.01):
            try:
                self.max_rss = max(self.max_rss, rss_kib(self.pid))
                if n % 5 == 0:
                    self.max_fds = max(self.max_fds, fd_count(self.pid))
            except (OSError, RuntimeError):
                return
            n += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


# --- the broker -------------------------------------------------------------


def broker_flags(binary: str) -> Set[str]:
    """The long flags the broker lists in its --help."""
    out = subprocess.run([binary, "--help"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=10)
    return set(re.findall(r"--[a-z][a-z-]+", out.stdout + out.stderr))


class Broker:
    """One broker process on ephemeral loopback ports. Its stderr is drained
    on a thread: the last lines are kept, and the lines that matter to the
    scenarios (listening, backends coming, going and refused, slow consumers,
    limits lowered, accept trouble, the stop line)."""

    KEEP = re.compile(rb"listening websocket|backend \S+ (?:connected|disconnected|closed|"
                      rb"refused|gone)|closed: slow consumer|lowered|accept|stopped")

    def __init__(self, binary: str, supported: Set[str], flags: List[str],
                 nofile: Optional[int] = None) -> None:
        cmd = [binary, "--host", HOST, "--backend-host", HOST, "--ws-port", "0",
               "--tcp-port", "0", "--log-level", "info"]
        if "--admin-port" in supported:
            cmd += ["--admin-port", "0"]
        self.cmd = cmd + flags
        self.tail: Deque[str] = collections.deque(maxlen=40)
        self.kept: Deque[str] = collections.deque(maxlen=5000)
        self._listening = threading.Event()
        self.ws_port = self.tcp_port = 0

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=limit if nofile is not None else None)
        self.pid = self.proc.pid
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 10
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                break
        if not self._listening.is_set():
            self.stop()
            raise RuntimeError(f"the broker did not start: {' | '.join(self.tail)}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        partial = b""
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            data = partial + chunk
            cut = data.rfind(b"\n") + 1
            partial = data[cut:]
            data = data[:cut]
            if not data:
                continue
            end = 0
            for m in self.KEEP.finditer(data):
                if m.start() < end:  # a second keyword on a line already kept
                    continue
                start = data.rfind(b"\n", 0, m.start()) + 1
                end = data.find(b"\n", m.end())
                line = data[start:end]
                self.kept.append(line.decode(errors="replace"))
                if not self._listening.is_set():
                    found = re.search(rb"listening websocket=[\d.]+:(\d+) backend=[\d.]+:(\d+)",
                                      line)
                    if found:
                        self.ws_port, self.tcp_port = int(found.group(1)), int(found.group(2))
                        self._listening.set()
            self.tail.extend(x.decode(errors="replace") for x in data.splitlines()[-40:])

    def count(self, pattern: str) -> int:
        return sum(1 for line in self.kept if re.search(pattern, line))

    def wait_log(self, pattern: str, n: int = 1, seconds: float = 5) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.count(pattern) >= n:
                return True
            time.sleep(0.02)
        return False

    def wait_backends(self, n: int) -> bool:
        """Waits until the broker logged its n-th backend joining."""
        return self.wait_log(rf"backend \S+ connected \({n} connected\)")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --- WebSocket bytes ----------------------------------------------------------


def parse_frame(buf: bytearray) -> Optional[Tuple[int, bytes]]:
    """Takes one complete unmasked (server) frame off the front of `buf`."""
    if len(buf) < 2:
        return None
    n = buf[1] & 0x7F
    at = 2
    if n == 126:
        if len(buf) < 4:
            return None
        (n,) = struct.unpack("!H", bytes(buf[2:4]))
        at = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        (n,) = struct.unpack("!Q", bytes(buf[2:10]))
        at = 10
    if len(buf) < at + n:
        return None
    frame = (buf[0] & 0x0F, bytes(buf[at:at + n]))
    del buf[:at + n]
    return frame


def upgrade_request(path: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def http_head(buf: Union[bytes, bytearray]) -> Optional[Tuple[int, bytes]]:
    """(status, body so far) once the response head is complete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    return int(buf.split(b" ", 2)[1]), bytes(buf[end + 4:])


def new_socket(rcvbuf: Optional[int]) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return s


class WsClient:
    """One blocking WebSocket client: upgrades, sends frames, reads frames."""

    def __init__(self, port: int, path: str, rcvbuf: Optional[int] = None,
                 timeout: float = 10) -> None:
        self.sock = new_socket(rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port))
        self.sock.sendall(upgrade_request(path))
        self.buf = bytearray()
        self.status = 0
        self.body = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            head = http_head(self.buf)
            if head:
                self.status, rest = head
                end = self.buf.find(b"\r\n\r\n") + 4
                del self.buf[:end]
                if self.status != 101:
                    self.body = rest
                return
            data = self.sock.recv(65536)
            if not data:
                break
            self.buf += data
        raise RuntimeError(f"no upgrade answer for {path}")

    def recv_frame(self, seconds: float) -> Optional[Tuple[int, bytes]]:
        deadline = time.monotonic() + seconds
        while True:
            frame = parse_frame(self.buf)
            if frame is not None:
                return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, OSError):
                return None
            if not data:
                return None
            self.buf += data

    def close(self) -> None:
        self.sock.close()


# --- many connections at once, without a thread each -------------------------


class Conn:
    def __init__(self, sock: socket.socket, out: bytes) -> None:
        self.sock = sock
        self.out = memoryview(out)
        self.inbuf = bytearray()
        self.connected = False
        self.closed = False
        self.error = ""

    def response(self) -> Optional[Tuple[int, bytes]]:
        return http_head(self.inbuf)


class Crowd:
    """Non-blocking connections on one selector: each connects, sends its
    bytes, and collects what comes back until the broker closes it."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.conns: List[Conn] = []

    def open(self, port: int, n: int, request: bytes, rcvbuf: Optional[int] = None,
             batch: int = 250) -> None:
        for i in range(n):
            s = new_socket(rcvbuf)
            s.setblocking(False)
            c = Conn(s, request)
            self.conns.append(c)
            err = s.connect_ex((HOST, port))
            if err not in (0, errno.EINPROGRESS):
                c.closed, c.error = True, os.strerror(err)
                s.close()
                continue
            self.sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            if (i + 1) % batch == 0:
                self.pump(0.05)

    def _end(self, c: Conn, error: str = "") -> None:
        c.closed = True
        c.error = c.error or error
        self.sel.unregister(c.sock)
        c.sock.close()

    def pump(self, seconds: float, done: Optional[Callable[[], bool]] = None) -> None:
        deadline = time.monotonic() + seconds
        while not (done and done()):
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.get_map():
                return
            for key, ev in self.sel.select(min(left, 0.05)):
                c: Conn = key.data
                if c.closed:
                    continue
                if ev & selectors.EVENT_READ:
                    try:
                        data = c.sock.recv(65536)
                    except BlockingIOError:
                        data = None
                    except OSError as e:
                        self._end(c, e.strerror or str(e))
                        continue
                    if data == b"":
                        self._end(c)
                        continue
                    if data:
                        c.inbuf += data
                if ev & selectors.EVENT_WRITE:
                    if not c.connected:
                        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            self._end(c, os.strerror(err))
                            continue
                        c.connected = True
                    try:
                        while c.out:
                            c.out = c.out[c.sock.send(c.out):]
                    except BlockingIOError:
                        pass
                    except OSError as e:
                        self._end(c, e.strerror or str(e))
                        continue
                    if not c.out:
                        self.sel.modify(c.sock, selectors.EVENT_READ, c)

    def all_sent(self) -> bool:
        return all(c.closed or (c.connected and not c.out) for c in self.conns)

    def close_all(self) -> None:
        for c in self.conns:
            if not c.closed:
                self._end(c)
        self.sel.close()


# --- a backend ----------------------------------------------------------------

HEAD = 64 * KIB  # lines up to this size are kept whole and parsed
TAIL = 4 * KIB


def accept_by_path(event: Dict[str, Any]) -> Dict[str, Any]:
    """Accepts every request; the path /ROOM/CLIENT names the room and client."""
    parts = event["params"]["url"].strip("/").split("/")
    return {"accepted": True, "room_id": parts[0], "client_id": parts[-1]}


class Backend:
    """A backend connection. With `reader`, a thread reads its lines and
    keeps counts (long lines are counted, with their head and tail kept);
    with `answer`, connection requests are answered from that thread."""

    def __init__(self, port: int, rcvbuf: Optional[int] = None, reader: bool = True,
                 answer: Optional[Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]] = None
                 ) -> None:
        self.sock = new_socket(rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((HOST, port))
        self.sock.settimeout(1)
        self.answer = answer
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.counts: Counter[Optional[str]] = collections.Counter()
        self.requests: List[str] = []
        self.errors: List[str] = []
        self.messages: Dict[Any, Any] = {}
        self.disconnected: Set[Any] = set()
        self.connected: Set[Any] = set()
        self.marker_seen = False
        self.long_lines = 0
        self.bytes_in = 0
        self.eof = False
        self._head = bytearray()
        self._tail = b""
        self._len = 0
        self._stop = threading.Event()
        if reader:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self.sock.recv(1 << 18)
            except socket.timeout:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                with self.cond:
                    self.eof = True
                    self.cond.notify_all()
                return
            self.bytes_in += len(chunk)
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                piece = chunk[start:] if nl < 0 else chunk[start:nl]
                self._len += len(piece)
                if len(self._head) < HEAD:
                    self._head += piece[:HEAD - len(self._head)]
                self._tail = (self._tail + piece[-TAIL:])[-TAIL:]
                if nl < 0:
                    break
                self._line()
                start = nl + 1

    def _line(self) -> None:
        head, tail, length = bytes(self._head), self._tail, self._len
        self._head, self._tail, self._len = bytearray(), b"", 0
        event: Optional[Dict[str, Any]] = None
        if length <= HEAD:
            try:
                event = json.loads(head)
            except ValueError:
                event = None
            action = event.get("action") if isinstance(event, dict) else None
        else:
            self.long_lines += 1
            m = re.search(rb'"action":"(\w+)"', head)
            action = m.group(1).decode() if m else None
        marker = MARKER.encode() in head or MARKER.encode() in tail
        reply = None
        with self.cond:
            self.counts[action] += 1
            self.marker_seen = self.marker_seen or marker
            if event is not None:
                params = event.get("params") or {}
                context = params.get("context") or {}
                if action == "connection_request":
                    self.requests.append(event["request_id"])
                    if self.answer:
                        answer = self.answer(event)
                        if answer is not None:
                            reply = {"action": "response", "request_id": event["request_id"],
                                     "params": answer}
                elif action == "new_connection":
                    self.connected.add(context.get("client_id"))
                elif action == "new_message":
                    self.messages[context.get("client_id")] = params.get("message")
                elif action == "disconnected":
                    self.disconnected.add(context.get("client_id"))
                elif action == "error" and len(self.errors) < 50:
                    self.errors.append(f"{event.get('request_id')}: {params.get('error')}")
            self.cond.notify_all()
        if reply is not None:
            self.send(reply)

    def wait(self, predicate: Callable[[], bool], seconds: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, seconds)

    def send(self, obj: Dict[str, Any]) -> None:
        self.send_bytes(json.dumps(obj).encode() + b"\n", 10)

    def send_bytes(self, data: bytes, seconds: float) -> int:
        """Sends as much of `data` as the broker takes within `seconds`."""
        view = memoryview(data)
        sent = 0
        deadline = time.monotonic() + seconds
        with self.lock:
            while sent < len(data) and time.monotonic() < deadline:
                try:
                    sent += self.sock.send(view[sent:sent + (1 << 20)])
                except socket.timeout:
                    continue
        return sent

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# --- measuring a scenario -------------------------------------------------------


class Result:
    def __init__(self, name: str, title: str) -> None:
        self.name = name
        self.title = title
        self.flags: List[str] = []
        self.bound = ""
        self.figures: Dict[str, Any] = {}
        self.checks: List[Tuple[str, bool]] = []
        self.details: List[str] = []
        self.log_tail: List[str] = []
        self.error = ""
        self.seconds = 0.0

    def check(self, what: str, ok: bool) -> bool:
        self.checks.append((what, ok))
        return ok

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        return "PASS" if self.checks and all(ok for _, ok in self.checks) else "FAIL"

    def as_dict(self) -> Dict[str, Any]:
        return {"scenario": self.name, "title": self.title, "flags": self.flags,
                "bound": self.bound, **self.figures,
                "checks": [{"check": w, "ok": ok} for w, ok in self.checks],
                "details": self.details, "verdict": self.verdict, "error": self.error,
                "seconds": round(self.seconds, 1),
                **({"log_tail": self.log_tail} if self.verdict != "PASS" else {})}


class Meter:
    """Baseline, peak and after figures of one broker."""

    def __init__(self, broker: Broker, result: Result) -> None:
        self.broker = broker
        self.result = result
        self.sampler: Optional[Sampler] = None
        self.peak_reset = False
        self.base_rss = self.base_fds = 0

    def baseline(self, settle: float = 0.5) -> None:
        time.sleep(settle)
        pid = self.broker.pid
        self.base_rss, self.base_fds = rss_kib(pid), fd_count(pid)
        self.peak_reset = reset_peak(pid)
        self.sampler = Sampler(pid).start()
        self.result.figures.update(baseline_rss_kib=self.base_rss, baseline_fds=self.base_fds,
                                   peak_from_vmhwm=self.peak_reset)

    def peak(self) -> Tuple[int, int]:
        """Peak RSS and descriptors since the baseline (so far)."""
        assert self.sampler is not None
        pid = self.broker.pid
        hwm = status_kib(pid, "VmHWM") if self.peak_reset else 0
        peak_rss = max(hwm, self.sampler.max_rss, rss_kib(pid))
        peak_fds = max(self.sampler.max_fds, fd_count(pid))
        self.result.figures.update(peak_rss_kib=peak_rss, peak_fds=peak_fds)
        return peak_rss, peak_fds

    def after(self, gone: float, seconds: float = 5.0,
              recover_pct: Optional[float] = None) -> Tuple[int, int]:
        """RSS and descriptors `seconds` after `gone` (when the hostile peers
        left); with `recover_pct`, also when RSS first came within that
        percentage of the baseline."""
        pid = self.broker.pid
        recovered: Optional[float] = None
        while True:
            now = time.monotonic()
            if recover_pct is not None and recovered is None:
                if rss_kib(pid) <= self.base_rss * (1 + recover_pct / 100):
                    recovered = now - gone
            if now - gone >= seconds:
                break
            time.sleep(min(0.05, gone + seconds - now))
        rss, fds = rss_kib(pid), fd_count(pid)
        self.peak()
        assert self.sampler is not None
        self.sampler.stop()
        self.result.figures.update(after_rss_kib=rss, after_fds=fds,
                                   after_seconds=seconds)
        if recover_pct is not None:
            self.result.figures["rss_within_pct_after_s"] = (
                round(recovered, 2) if recovered is not None else None)
        return rss, fds


def ensure(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(what)


def wait_until(predicate: Callable[[], bool], seconds: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# --- the scenarios ----------------------------------------------------------------


class Ctx:
    def __init__(self, binary: str, supported: Set[str], after: float = 5.0,
                 room_messages: int = 2_000_000) -> None:
        self.binary = binary
        self.supported = supported
        self.after = after
        self.room_messages = room_messages
        self.last: Optional[Broker] = None

    def opt(self, flag: str, value: str, r: Result) -> List[str]:
        """The flag if this broker has it; otherwise a note."""
        if flag in self.supported:
            return [flag, value]
        r.details.append(f"{flag} {value} left out: this broker has no such flag")
        return []

    def broker(self, r: Result, flags: List[str], nofile: Optional[int] = None) -> Broker:
        r.flags = flags + ([f"(ulimit -n {nofile})"] if nofile else [])
        return self.extra_broker(flags, nofile)

    def extra_broker(self, flags: List[str], nofile: Optional[int] = None) -> Broker:
        """A broker for a second part of a scenario (its flags go to the details)."""
        self.last = Broker(self.binary, self.supported, flags, nofile)
        return self.last


def ws_clients(port: int, paths: List[str], rcvbuf: Optional[int] = None) -> List[WsClient]:
    clients = []
    for path in paths:
        c = WsClient(port, path, rcvbuf)
        ensure(c.status == 101, f"{path}: upgrade answered {c.status} {c.body!r}")
        clients.append(c)
    return clients


def fmt(kib: int) -> str:
    return f"{kib:,} KiB"


def rss_bound_check(r: Result, m: Meter, extra_kib: int, text: str) -> None:
    peak = r.figures["peak_rss_kib"]
    limit = m.base_rss + extra_kib
    r.figures["bound_rss_kib"] = limit
    r.check(f"peak RSS {fmt(peak)} <= {fmt(limit)} (baseline + {text})", peak <= limit)


def recover_check(r: Result, m: Meter, pct: float = 10) -> None:
    after = r.figures["after_rss_kib"]
    limit = m.base_rss * (1 + pct / 100)
    r.check(f"RSS {fmt(after)} {r.figures['after_seconds']:g} s after the clients left "
            f"<= {fmt(int(limit))} (baseline + {pct:g} %)", after <= limit)


def s1a(ctx: Ctx, r: Result) -> None:
    n, size = 10, 3_000_000
    limit = MIB
    with ctx.broker(r, ["--max-outbound-bytes", str(limit)]) as b:
        m = Meter(b, r)
        backend = Backend(b.tcp_port, answer=accept_by_path)
        ensure(b.wait_backends(1), "the backend did not join")
        clients = ws_clients(b.ws_port, [f"/r/c{i}" for i in range(n)], rcvbuf=4096)
        ensure(backend.wait(lambda: len(backend.connected) == n, 10), "clients not connected")
        m.baseline()
        ping = masked_frame(0x9, b"")
        burst = ping * (size // len(ping))
        sel = selectors.DefaultSelector()
        todo: Dict[socket.socket, List[Any]] = {}
        for i, c in enumerate(clients):
            c.sock.setblocking(False)
            data = burst + masked_frame(0x1, f"done c{i}".encode())
            todo[c.sock] = [memoryview(data), i]
            sel.register(c.sock, selectors.EVENT_WRITE)
        refused = 0
        started = time.monotonic()
        deadline = started + 60
        while todo and time.monotonic() < deadline:
            for key, _ in sel.select(0.1):
                view, i = todo[key.fileobj]  # type: ignore[index]
                try:
                    sent = key.fileobj.send(view[:1 << 18])  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    refused += 1
                    sent = -1
                if sent < 0 or sent == len(view):
                    sel.unregister(key.fileobj)
                    del todo[key.fileobj]  # type: ignore[arg-type]
                else:
                    todo[key.fileobj][0] = view[sent:]  # type: ignore[index]
        sel.close()
        ids = {f"c{i}" for i in range(n)}
        backend.wait(lambda: all(c in backend.messages or c in backend.disconnected
                                 for c in ids), 30)
        read_through = sum(1 for c in ids if backend.messages.get(c, "").startswith("done"))
        closed = b.count(r"closed: slow consumer")
        r.details.append(f"{n} clients x {size:,} bytes of empty pings in {time.monotonic() - started:.1f} s: "
                         f"{read_through} read to their final text message, {closed} closed by the "
                         f"broker, {len(todo)} still sending at the deadline, {refused} send errors")
        m.peak()
        for c in clients:
            c.close()
        gone = time.monotonic()
        m.after(gone, ctx.after, recover_pct=10)
        backend.close()
        rss_bound_check(r, m, 2 * n * limit // KIB, f"2 x {n} x 1 MiB")
        recover_check(r, m)
        r.log_tail = list(b.tail)[-15:]
    r.bound = f"peak <= baseline + 2 x {n} x 1 MiB; 5 s after: within 10 % of baseline"


def s1b(ctx: Ctx, r: Result) -> None:
    n, count = 20, ctx.room_messages
    limit = MIB
    with ctx.broker(r, ["--max-outbound-bytes", str(limit)]) as b:
        m = Meter(b, r)
        backend = Backend(b.tcp_port, answer=accept_by_path)
        ensure(b.wait_backends(1), "the backend did not join")
        members = ws_clients(b.ws_port, [f"/r/c{i}" for i in range(n)], rcvbuf=4096)
        (watcher,) = ws_clients(b.ws_port, ["/m/watcher"])
        ensure(backend.wait(lambda: len(backend.connected) == n + 1, 10), "clients not connected")
        m.baseline()
        line = b'{"action":"message_to_room","params":{"room_id":"r","message":"x"}}\n'
        started = time.monotonic()
        sent = backend.send_bytes(line * count, 90)
        # The marker goes to a room with a reading member, so its arrival
        # means every line before it was processed. A broker with acks also
        # answers it with an ack line; an older one ignores the field.
        backend.send({"action": "message_to_room", "request_id": "marker",
                      "params": {"room_id": "m", "message": MARKER, "ack": True}})
        got = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            got = watcher.recv_frame(deadline - time.monotonic())
            if got is None or got[1] == MARKER.encode():
                break
        took = time.monotonic() - started
        ensure(got is not None, "the marker message never arrived")
        ensure(sent == len(line) * count, f"the broker took only {sent:,} bytes of lines")
        closed = b.count(r"closed: slow consumer")
        backend.wait(lambda: backend.counts["ack"] > 0, 2)  # a broker without acks: none
        r.details.append(f"{count:,} message_to_room lines of 1 byte to {n} members that never "
                         f"read, all processed in {took:.1f} s; {closed} members closed by the "
                         f"broker (slow consumer); acks answered: {backend.counts['ack']}")
        m.peak()
        for c in members + [watcher]:
            c.close()
        gone = time.monotonic()
        m.after(gone, ctx.after, recover_pct=10)
        backend.close()
        rss_bound_check(r, m, 2 * n * limit // KIB, f"2 x {n} x 1 MiB")
        recover_check(r, m)
        r.log_tail = list(b.tail)[-15:]
    r.bound = f"peak <= baseline + 2 x {n} x 1 MiB; 5 s after: within 10 % of baseline"


def s2a(ctx: Ctx, r: Result) -> None:
    n = 2000
    flags = ["--max-backend-buffer", str(MIB), "--connect-timeout", "30"]
    with ctx.broker(r, flags) as b:
        m = Meter(b, r)
        backend = Backend(b.tcp_port, rcvbuf=4096, reader=False)
        ensure(b.wait_backends(1), "the backend did not join")
        m.baseline()
        request = upgrade_request("/r/c", f"X-Pad: {'p' * 7 * KIB}\r\n")
        crowd = Crowd()
        started = time.monotonic()
        crowd.open(b.ws_port, n, request)
        # Until every request is sent and no answer came for 2 s (bounded,
        # well inside --connect-timeout).
        answered = -1
        deadline = started + 20
        while time.monotonic() < deadline:
            crowd.pump(2)
            now_answered = sum(1 for c in crowd.conns if c.response() or c.closed)
            if crowd.all_sent() and now_answered == answered:
                break
            answered = now_answered
        statuses: Counter[str] = collections.Counter()
        for c in crowd.conns:
            resp = c.response()
            if resp:
                statuses[f"{resp[0]} {resp[1].decode(errors='replace').strip()!r}"] += 1
            elif c.closed:
                statuses[f"closed without an answer ({c.error or 'EOF'})"] += 1
            else:
                statuses["waiting (no answer yet)"] += 1
        r.figures["answers"] = dict(statuses)
        r.details.append(f"{n} upgrade requests of {len(request):,} bytes to a backend that "
                         f"does not read: " + "; ".join(f"{v} x {k}" for k, v in
                                                       statuses.most_common()))
        m.peak()
        crowd.close_all()
        backend.close()
        m.after(time.monotonic(), ctx.after)
        rss_bound_check(r, m, 2 * MIB // KIB + n * 4, f"2 x 1 MiB + {n} x 4 KiB")
        r.log_tail = list(b.tail)[-15:]
    r.bound = f"peak <= baseline + 2 x 1 MiB + {n} x 4 KiB"


def s2b(ctx: Ctx, r: Result) -> None:
    total = 20_000_000
    with ctx.broker(r, ["--max-backend-buffer", str(MIB)]) as b:
        m = Meter(b, r)
        backend = Backend(b.tcp_port, rcvbuf=4096, reader=False)
        ensure(b.wait_backends(1), "the backend did not join")
        m.baseline()
        chunk = b"x\n" * (32 * KIB)
        sent = 0
        closed_after: Optional[float] = None
        why = ""
        started = time.monotonic()
        deadline = started + 30
        while sent < total and time.monotonic() < deadline:
            try:
                sent += backend.sock.send(chunk[:min(len(chunk), total - sent)])
            except socket.timeout:
                continue
            except OSError as e:
                closed_after, why = time.monotonic() - started, e.strerror or str(e)
                break
        sending = time.monotonic() - started
        if closed_after is None:
            # Everything sent: wait (bounded) until the broker read it all.
            wait_read_all(b.tcp_port, 30)
        m.peak()
        logged = [x for x in b.kept if "without reading" in x]
        if closed_after is not None:
            r.details.append(f"the broker closed the backend after {sent:,} bytes "
                             f"({sent // 2:,} lines), {closed_after:.2f} s in ({why})")
        else:
            r.details.append(f"the backend wrote {sent:,} bytes ({sent // 2:,} garbage lines) in "
                             f"{sending:.1f} s and was not closed")
        r.details.append("broker log: " + (logged[0].split("] ")[-1] if logged else
                                           "no line about closing it for not reading"))
        r.figures["backend_closed_after_bytes"] = sent if closed_after is not None else None
        backend.close()
        m.after(time.monotonic(), ctx.after)
        rss_bound_check(r, m, 3 * MIB // KIB, "3 MiB")
        r.log_tail = list(b.tail)[-15:]
    r.bound = "peak <= baseline + 3 MiB"


def s3(ctx: Ctx, r: Result) -> None:
    n, size, queue_bytes = 12, MIB, 8 * MIB
    flags = ["--queue-size", "1000", "--max-message-size", str(2 * MIB)]
    flags += ctx.opt("--queue-bytes", str(queue_bytes), r)
    with ctx.broker(r, flags) as b:
        m = Meter(b, r)
        first = Backend(b.tcp_port, answer=accept_by_path)
        ensure(b.wait_backends(1), "the backend did not join")
        (client,) = ws_clients(b.ws_port, ["/r/c0"])
        ensure(first.wait(lambda: "c0" in first.connected, 10), "client not connected")
        first.close()
        ensure(b.wait_log(r"backend \S+ disconnected"), "the broker did not see the backend go")
        m.baseline()
        frame = masked_frame(0x1, b"\x01" * size)
        client.sock.settimeout(30)
        started = time.monotonic()
        for _ in range(n):
            client.sock.sendall(frame)
        client.sock.sendall(masked_frame(0x1, MARKER.encode()))
        ensure(wait_read_all(b.ws_port, 30), "the broker did not read the messages")
        queued_for = time.monotonic() - started
        # The next backend gets the queue: the marker, newest, comes last.
        second = Backend(b.tcp_port)
        second.wait(lambda: second.marker_seen, 60)
        got = second.counts["new_message"]
        r.details.append(f"{n} messages of {size:,} control characters (each a JSON line of "
                         f"~{6 * size / MIB:.0f} MiB) queued with no backend in {queued_for:.1f} s; "
                         f"the next backend got {got - 1 if second.marker_seen else got} of them "
                         f"({second.bytes_in:,} bytes), "
                         f"{'then' if second.marker_seen else 'but NOT'} the final marker")
        m.peak()
        client.close()
        second.close()
        m.after(time.monotonic(), ctx.after)
        rss_bound_check(r, m, (2 * queue_bytes + 4 * MIB) // KIB, "2 x 8 MiB + 4 MiB")
        r.log_tail = list(b.tail)[-15:]
    r.bound = "peak <= baseline + 2 x 8 MiB (--queue-bytes) + 4 MiB"


def s4(ctx: Ctx, r: Result) -> None:
    n, size = 10, 2 * MIB
    with ctx.broker(r, ["--backend-token", "t"]) as b:
        m = Meter(b, r)
        m.baseline()
        crowd = Crowd()
        started = time.monotonic()
        crowd.open(b.tcp_port, n, b"a" * size)
        crowd.pump(30, crowd.all_sent)
        wait_read_all(b.tcp_port, 10)
        crowd.pump(0.2)
        m.peak()
        cut = [c for c in crowd.conns if c.closed]
        replies = collections.Counter(c.inbuf.decode(errors="replace").strip()[:160]
                                      for c in crowd.conns if c.inbuf)
        r.details.append(f"{n} unauthenticated backends x {size:,} bytes without a newline, "
                         f"{time.monotonic() - started:.1f} s: {len(cut)} closed by the broker; "
                         f"replies: {dict(replies) or 'none'}")
        crowd.close_all()
        m.after(time.monotonic(), ctx.after)
        rss_bound_check(r, m, 2 * MIB // KIB, "2 MiB")
        r.log_tail = list(b.tail)[-15:]
    # Past --max-pending-backends: four wait silently, a fifth arrives.
    flags = ["--backend-token", "t"] + ctx.opt("--max-pending-backends", "4", r)
    with ctx.extra_broker(flags) as b:
        waiting = [socket.create_connection((HOST, b.tcp_port), 5) for _ in range(4)]
        time.sleep(0.3)
        fifth = socket.create_connection((HOST, b.tcp_port), 5)
        fifth.settimeout(3)
        got = b""
        closed = False
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                data = fifth.recv(4096)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
            got += data
        for s in waiting + [fifth]:
            s.close()
        text = got.decode(errors="replace").strip()
        r.details.append(f"with {' '.join(flags[2:]) or 'no pending-backend limit'}: a fifth "
                         f"waiting backend was " + (f"refused: {text!r}, then closed" if closed and got
                                                    else "closed without a reply" if closed
                                                    else f"kept open for 3 s ({text!r})"))
        r.check("a fifth unauthenticated backend past --max-pending-backends 4 gets an error "
                "line and is closed", closed and b'"error"' in got)
    r.bound = "peak <= baseline + 2 MiB; a 5th waiting backend is refused"


def s5(ctx: Ctx, r: Result) -> None:
    n, cap = 200, 50
    flags = ["--max-connections", str(cap), "--connect-timeout", "30"]
    with ctx.broker(r, flags) as b:
        m = Meter(b, r)
        backend = Backend(b.tcp_port, answer=accept_by_path)
        ensure(b.wait_backends(1), "the backend did not join")
        m.baseline()
        crowd = Crowd()
        crowd.open(b.ws_port, n, b"")
        crowd.pump(3)
        statuses: Counter[str] = collections.Counter()
        for c in crowd.conns:
            resp = c.response()
            if resp:
                statuses[f"{resp[0]} {resp[1].decode(errors='replace').strip()!r}"] += 1
            elif c.closed:
                statuses[f"closed without an answer ({c.error or 'EOF'})"] += 1
            else:
                statuses["held open"] += 1
        r.figures["answers"] = dict(statuses)
        r.details.append(f"{n} TCP connections that send nothing: " +
                         "; ".join(f"{v} x {k}" for k, v in statuses.most_common()))
        _, peak_fds = m.peak()
        crowd.close_all()
        gone = time.monotonic()
        wait_until(lambda: fd_count(b.pid) <= m.base_fds, 5)
        m.after(gone, ctx.after)
        backend.close()
        limit = m.base_fds + cap + 5
        r.figures["bound_fds"] = limit
        r.check(f"peak descriptors {peak_fds} <= {limit} (baseline {m.base_fds} + {cap} + 5)",
                peak_fds <= limit)
        r.log_tail = list(b.tail)[-15:]

    # Under a low open-file limit: how many clients get served?
    tries = 60
    with ctx.extra_broker(["--connect-timeout", "30"], nofile=64) as b:
        backend = Backend(b.tcp_port, answer=accept_by_path)
        ensure(b.wait_backends(1), "the backend did not join (ulimit -n 64)")
        # One client after another, each kept open: upgrade, then wait for
        # its answer; a refusal is counted and the next one tries, no answer
        # within 3 s (not accepted: out of descriptors) ends the attempts.
        upgraded: List[WsClient] = []
        refused: Counter[str] = collections.Counter()
        for i in range(tries):
            try:
                ws = WsClient(b.ws_port, f"/r/c{i}", timeout=3)
            except (OSError, RuntimeError) as e:
                refused[f"no answer within 3 s ({type(e).__name__})"] += 1
                break
            if ws.status == 101:
                upgraded.append(ws)
            else:
                refused[f"{ws.status} {ws.body.decode(errors='replace').strip()!r}"] += 1
                ws.close()
        backend.send({"action": "message_to_room", "params": {"room_id": "r", "message": MARKER}})
        n_served = sum(1 for c in upgraded
                       if (c.recv_frame(3) or (0, b""))[1] == MARKER.encode())
        for ws in upgraded:
            ws.close()
        backend.close()
        lowered = [x.split("] ")[-1] for x in b.kept if "lowered" in x]
        r.figures["served_under_ulimit_64"] = n_served
        r.details.append(f"under ulimit -n 64 ({lowered[0] if lowered else 'no lowering logged'}): "
                         f"{len(upgraded)} clients upgraded one after another and kept open, "
                         f"{n_served} of them received a room message; then: "
                         f"{dict(refused) or 'none refused'}")
        r.check(f"under ulimit -n 64, {n_served} of {tries} clients served (>= 32, half the "
                "open-file limit)", n_served >= 32)
    r.bound = (f"peak descriptors <= baseline + {cap} + 5; under ulimit -n 64 at least 32 of "
               f"{tries} clients served")


def s6(ctx: Ctx, r: Result) -> None:
    flags = ["--connect-timeout", "30", "--max-pending-requests", "1"]
    with ctx.broker(r, flags) as b:
        m = Meter(b, r)
        backend = Backend(b.tcp_port)  # reads, never answers
        ensure(b.wait_backends(1), "the backend did not join")
        m.baseline()
        first = socket.create_connection((HOST, b.ws_port), 5)
        first.sendall(upgrade_request("/r/c1"))
        ensure(backend.wait(lambda: len(backend.requests) == 1, 5), "request did not arrive")
        pending_fds = fd_count(b.pid)
        r.figures["pending_fds"] = pending_fds
        ensure(pending_fds > m.base_fds, "the pending client holds no descriptor")
        first.close()
        gone = time.monotonic()
        back = wait_until(lambda: fd_count(b.pid) <= m.base_fds, 10, 0.005)
        freed = time.monotonic() - gone
        r.figures["fds_back_after_s"] = round(freed, 3) if back else None
        r.details.append(f"descriptors {pending_fds} while the request waited; back to baseline " +
                         (f"{freed * 1000:.1f} ms after the client hung up (polled every 5 ms)"
                          if back
                          else f"NOT within 10 s ({fd_count(b.pid)} against {m.base_fds})"))
        second = socket.create_connection((HOST, b.ws_port), 5)
        second.sendall(upgrade_request("/r/c2"))
        second.settimeout(0.05)
        answer = b""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(backend.requests) < 2:
            try:
                data = second.recv(4096)
                if not data:
                    break
                answer += data
            except socket.timeout:
                continue
            except OSError:
                break
        reached = len(backend.requests) >= 2
        head = http_head(answer)
        r.details.append("a second upgrade " + (
            "reached the backend (the slot was free)" if reached else
            f"was refused: {head[0]} {head[1].decode(errors='replace').strip()!r} (slot still held)"
            if head else "got no answer within 3 s"))
        second.close()
        m.peak()
        m.after(time.monotonic(), ctx.after)
        backend.close()
        r.check("descriptors back to baseline within the 10 s wait (--connect-timeout is 30 s)",
                back)
        r.check("a second upgrade reaches the backend (--max-pending-requests 1)", reached)
        r.log_tail = list(b.tail)[-15:]
    r.bound = "slot and descriptor freed at once (within the 10 s wait); 2nd request reaches the backend"


def s7(ctx: Ctx, r: Result) -> None:
    with ctx.broker(r, []) as b:
        m = Meter(b, r)
        one, two = Backend(b.tcp_port), Backend(b.tcp_port)
        ensure(b.wait_backends(2), "the backends did not join")
        m.baseline()
        client = socket.create_connection((HOST, b.ws_port), 5)
        client.sendall(upgrade_request("/r/c1"))
        ensure(wait_until(lambda: bool(one.requests or two.requests), 5),
               "the request reached no backend")
        given, other = (one, two) if one.requests else (two, one)
        request_id = given.requests[0]
        other.send({"action": "response", "request_id": request_id,
                    "params": {"accepted": True, "room_id": "r", "client_id": "intruder"}})
        client.settimeout(3)
        answer = b""
        try:
            while http_head(answer) is None:
                data = client.recv(4096)
                if not data:
                    break
                answer += data
        except (socket.timeout, OSError):
            pass
        head = http_head(answer)
        other.wait(lambda: bool(other.errors), 2)
        upgraded = head is not None and head[0] == 101
        r.details.append(f"request id {request_id!r} went to one backend, the other answered it: "
                         + ("the client was upgraded" if upgraded else
                            f"client answered {head[0]}" if head else
                            "the client got no answer (still pending)"))
        r.details.append("the answering backend got " +
                         (f"an error line: {other.errors[0]!r}" if other.errors
                          else "no error line"))
        client.close()
        m.peak()
        m.after(time.monotonic(), ctx.after)
        one.close()
        two.close()
        r.check("the client was not upgraded by a backend that was not asked", not upgraded)
        r.check("the answering backend got an error line", bool(other.errors))
        r.log_tail = list(b.tail)[-15:]
    r.bound = "only the backend asked may answer: no upgrade, an error line to the other"


SCENARIOS: List[Tuple[str, str, Callable[[Ctx, Result], None]]] = [
    ("1a", "ping flood: 10 clients send 3 MB of empty pings each and never read", s1a),
    ("1b", "2,000,000 one-byte room messages to 20 members that never read", s1b),
    ("2a", "stalled backend while 2,000 clients send 7 KiB upgrade requests", s2a),
    ("2b", "backend sends up to 20 MB of garbage lines and never reads", s2b),
    ("3", "no backend: 12 messages of 1 MiB control characters queued", s3),
    ("4", "10 unauthenticated backends send 2 MiB without a newline", s4),
    ("5", "200 silent TCP connections against --max-connections 50; ulimit -n 64", s5),
    ("6", "client hangs up while its request is pending", s6),
    ("7", "a backend answers another backend's connection request", s7),
]


def report(r: Result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r.as_dict()), flush=True)
        return
    f = r.figures
    print(f"== {r.name}: {r.title}")
    print(f"   broker flags: {' '.join(r.flags) or '(defaults)'}")
    if "baseline_rss_kib" in f:
        print(f"   RSS: baseline {fmt(f['baseline_rss_kib'])}, peak {fmt(f.get('peak_rss_kib', 0))}, "
              f"{f.get('after_seconds', 0):g} s after {fmt(f.get('after_rss_kib', 0))}"
              + (f" (within 10 % after {f['rss_within_pct_after_s']} s)"
                 if f.get("rss_within_pct_after_s") is not None else ""))
        print(f"   descriptors: baseline {f['baseline_fds']}, peak {f.get('peak_fds')}, "
              f"after {f.get('after_fds')}")
    for line in r.details:
        print(f"   {line}")
    print(f"   bound: {r.bound}")
    for what, ok in r.checks:
        print(f"   [{'ok' if ok else 'BROKEN'}] {what}")
    if r.error:
        print(f"   error: {r.error}")
    print(f"   verdict: {r.verdict} ({r.seconds:.0f} s)")
    if r.verdict != "PASS" and r.log_tail:
        print("   broker log, last lines:")
        for line in r.log_tail:
            print(f"     {line}")
    print(flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server-bin", default=os.path.join(ROOT, "target/release/pystrands-server"))
    p.add_argument("--only", default="", help="comma-separated scenario names, e.g. 1a,2b,5")
    p.add_argument("--json", action="store_true", help="one JSON line per scenario")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--room-messages", type=int, default=2_000_000,
                   help="one-byte room messages in scenario 1b (default 2,000,000)")
    p.add_argument("--after", type=float, default=5.0,
                   help="seconds after the hostile peers left at which RSS is taken (default 5)")
    args = p.parse_args()
    if args.list:
        for name, title, _ in SCENARIOS:
            print(f"{name:3} {title}")
        return 0
    if not os.access(args.server_bin, os.X_OK):
        print(f"hostile: no broker at {args.server_bin} (cargo build --release)", file=sys.stderr)
        return 2
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - {name for name, _, _ in SCENARIOS}
    if unknown:
        print(f"hostile: unknown scenarios {sorted(unknown)} (see --list)", file=sys.stderr)
        return 2
    ctx = Ctx(args.server_bin, broker_flags(args.server_bin), args.after, args.room_messages)
    if not args.json:
        print(f"broker: {args.server_bin}\n")
    verdicts = []
    for name, title, run in SCENARIOS:
        if only and name not in only:
            continue
        r = Result(name, title)
        r.figures["broker"] = args.server_bin
        started = time.monotonic()
        try:
            run(ctx, r)
        except Exception as e:  # reported as ERROR, the other scenarios go on
            r.error = f"{type(e).__name__}: {e}"
            if ctx.last is not None:
                r.log_tail = list(ctx.last.tail)[-15:]
        r.seconds = time.monotonic() - started
        report(r, args.json)
        verdicts.append(r.verdict)
    if not args.json:
        print("summary: " + ", ".join(f"{n} {v}" for (n, _, _), v in
                                      zip([s for s in SCENARIOS if not only or s[0] in only],
                                          verdicts)))
    return 0 if all(v == "PASS" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
