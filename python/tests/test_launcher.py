"""`python -m pystrands`: help, running the broker binary, signals, exit codes."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

from conftest import LISTENING, PACKAGE_PARENT, TIMEOUT

PYTHON_SRC = PACKAGE_PARENT


def env_with(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def pystrands(*args, env=None, timeout=TIMEOUT):
    return subprocess.run(
        [sys.executable, "-m", "pystrands", *args],
        env=env or env_with(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
        text=True,
    )


def test_help_explains_the_subcommands():
    result = pystrands("--help")
    assert result.returncode == 0
    assert "server [ARGS...]" in result.stdout
    assert "PYSTRANDS_SERVER_BIN" in result.stdout


def test_no_command_prints_usage_and_fails():
    result = pystrands()
    assert result.returncode == 2
    assert "usage: python -m pystrands" in result.stderr


def test_unknown_command_fails():
    result = pystrands("serve")
    assert result.returncode == 2
    assert "unknown command" in result.stderr


def test_server_help_runs_the_binary(broker_binary):
    result = pystrands("server", "--help", env=env_with(PYSTRANDS_SERVER_BIN=broker_binary))
    assert result.returncode == 0, result.stderr
    assert "--ws-port" in result.stdout + result.stderr


def test_server_path_prints_the_binary(broker_binary):
    result = pystrands("server-path", env=env_with(PYSTRANDS_SERVER_BIN=broker_binary))
    assert result.returncode == 0
    assert result.stdout.strip() == broker_binary


def test_server_exit_code_is_passed_through(broker_binary):
    result = pystrands("server", "--ws-port", "not-a-port", env=env_with(PYSTRANDS_SERVER_BIN=broker_binary))
    assert result.returncode == 2, (result.returncode, result.stderr)


def test_missing_binary_says_how_to_build_it():
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
        timeout=TIMEOUT, text=True,
    )
    assert result.returncode == 127
    assert "/nonexistent/bin/pystrands-server" in result.stderr
    assert "pip install ." in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_stop_the_server_cleanly(broker_binary, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pystrands", "server", "--host", "127.0.0.1",
         "--ws-port", "0", "--tcp-port", "0", "--admin-port", "0", "--log-level", "info"],
        env=env_with(PYSTRANDS_SERVER_BIN=broker_binary),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        lines: "queue.Queue[str]" = queue.Queue()

        def pump():
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
