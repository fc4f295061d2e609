"""`python -m pystrands`: help, running the broker binary, signals, exit codes."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

from conftest import LISTENING, PACKAGE_PARENT, TIMEOUT

PYTHON_SRC = PACKAGE_PARENT
#: Where `python -m pystrands` runs: `-m` puts the working directory first on
#: sys.path, and the tests' own directory (python/) would shadow the package
#: under test with the source tree.
NEUTRAL_CWD = os.path.dirname(PACKAGE_PARENT)


def env_with(**extra: Any) -> Any:
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def pystrands(*args: Any, env: Any=None, timeout: Any=TIMEOUT) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "pystrands", *args],
        env=env or env_with(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
        text=True,
        cwd=NEUTRAL_CWD,
    )


def test_help_explains_the_subcommands() -> None:
    result = pystrands("--help")
    assert result.returncode == 0
    assert "server [ARGS...]" in result.stdout
    assert "PYSTRANDS_SERVER_BIN" in result.stdout


def test_no_command_prints_usage_and_fails() -> None:
    result = pystrands()
    assert result.returncode == 2
    assert "usage: python -m pystrands" in result.stderr


def test_unknown_command_fails() -> None:
    result = pystrands("serve")
    assert result.returncode == 2
    assert "unknown command" in result.stderr


def test_server_help_runs_the_binary(broker_binary: str) -> None:
    result = pystrands("server", "--help", env=env_with(PYSTRANDS_SERVER_BIN=broker_binary))
    assert result.returncode == 0, result.stderr
    assert "--ws-port" in result.stdout + result.stderr


def test_server_path_prints_the_binary(broker_binary: str) -> None:
    result = pystrands("server-path", env=env_with(PYSTRANDS_SERVER_BIN=broker_binary))
    assert result.returncode == 0
    assert result.stdout.strip() == broker_binary


def test_server_exit_code_is_passed_through(broker_binary: str) -> None:
    result = pystrands("server", "--ws-port", "not-a-port", env=env_with(PYSTRANDS_SERVER_BIN=broker_binary))
    assert result.returncode == 2, (result.returncode, result.stderr)


def test_missing_binary_says_how_to_build_it() -> None:
    result = pystrands("server", env=env_with(PYSTRANDS_SERVER_BIN="/nonexistent/pystrands-server"))
    assert result.returncode == 127
    assert "PYSTRANDS_SERVER_BIN" in result.stderr
    code = (
        "import sys, pathlib, pystrands.__main__ as m;"
        "m._candidates = lambda: [pathlib.Path('/nonexistent/bin/pystrands-server')];"
        "sys.exit(m.main(['server']))"
    )
    env = env_with()
    env.pop("PYSTRANDS_SERVER_BIN", None)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=TIMEOUT, text=True, cwd=NEUTRAL_CWD,
    )
    assert result.returncode == 127
    assert "/nonexistent/bin/pystrands-server" in result.stderr
    assert "pip install ." in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_stop_the_server_cleanly(broker_binary: str, sig: Any) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pystrands", "server", "--host", "127.0.0.1",
         "--ws-port", "0", "--tcp-port", "0", "--admin-port", "0", "--log-level", "info"],
        env=env_with(PYSTRANDS_SERVER_BIN=broker_binary),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        cwd=NEUTRAL_CWD,
    )
    try:
        lines: "queue.Queue[str]" = queue.Queue()

        def pump() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                lines.put(raw.decode("utf-8", "replace"))

        threading.Thread(target=pump, daemon=True).start()
        while True:
            line = lines.get(timeout=TIMEOUT)
            if LISTENING.search(line):
                break
        os.kill(proc.pid, sig)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)


def test_short_help_and_version() -> None:
    result = pystrands("-h")
    assert result.returncode == 0 and "server [ARGS...]" in result.stdout
    result = pystrands("--version")
    assert result.returncode == 0 and result.stdout.startswith("pystrands ")
    result = pystrands("server", "--version")
    assert result.returncode == 0 and result.stdout.startswith("pystrands ")


def test_server_short_help_is_the_broker_s(broker_binary: str) -> None:
    result = pystrands("server", "-h", env=env_with(PYSTRANDS_SERVER_BIN=broker_binary))
    assert result.returncode == 0, result.stderr
    assert "--ws-port" in result.stdout + result.stderr


def start_launcher(broker_binary: str, *args: Any, **env: Any) -> Any:
    """`python -m pystrands server ARGS` until it reports its ports (or exits)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pystrands", "server", "--host", "127.0.0.1", "--admin-port", "0", *args],
        env=env_with(PYSTRANDS_SERVER_BIN=broker_binary, **env),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        cwd=NEUTRAL_CWD,
    )
    lines: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    while True:
        line = lines.get(timeout=TIMEOUT)
        seen.append(line)
        match = LISTENING.search(line)
        if match or not line:
            return proc, match, "".join(seen)


def stop_launched(proc: Any) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(TIMEOUT)


def test_flags_with_equals(broker_binary: str) -> None:
    proc, match, log = start_launcher(broker_binary, "--ws-port=0", "--tcp-port=0", "--log-level=info")
    try:
        assert match, log
    finally:
        stop_launched(proc)


def test_an_explicit_flag_beats_its_environment_variable(broker_binary: str) -> None:
    # the variable alone applies (an invalid one is refused, naming it) ...
    proc, match, log = start_launcher(broker_binary, "--tcp-port", "0", PYSTRAND_WS_PORT="not-a-port")
    assert not match and proc.wait(TIMEOUT) == 2 and "PYSTRAND_WS_PORT" in log, log
    # ... but a flag given on the command line wins over it
    proc, match, log = start_launcher(broker_binary, "--ws-port", "0", "--tcp-port=0",
                                      PYSTRAND_WS_PORT="not-a-port", PYSTRAND_TCP_PORT="not-a-port")
    try:
        assert match, log
    finally:
        stop_launched(proc)
