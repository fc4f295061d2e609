"""Command line: ``python -m pystrands server [ARGS...]`` runs the bundled broker;
``python -m pystrands stats`` prints a running broker's figures.

The broker, ``pystrands-server``, is a Rust executable that ``pip install``
puts in the environment's scripts directory next to the Python interpreter
(the wheel is built by maturin with ``bindings = "bin"``); nothing is
downloaded at run time.

On POSIX the launcher *replaces itself* with the broker (``os.execv``): the
process that was started is the broker, so SIGINT/SIGTERM reach it directly
(Ctrl-C, ``kill``, a supervisor's stop all drain it gracefully), and the exit
status is the broker's own. On Windows it starts the broker as a child, waits
for it (Ctrl-C reaches the child through the console), and exits with its
exit code.

Before handing the arguments over, the launcher accepts the usual spellings
the broker's own parser does not: ``--flag=value`` (passed as ``--flag
value``), ``-h`` (as ``--help``) and ``--version``; and it makes an explicit
flag win over its environment variable (the variable is not passed to the
broker when the flag is given): ``--ws-port`` over ``PYSTRAND_WS_PORT``,
``--tcp-port`` over ``PYSTRAND_TCP_PORT``, ``--queue-size`` over
``PYSTRAND_QUEUE_SIZE``, ``--backend-token`` over ``PYSTRANDS_BACKEND_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import ServerBinaryNotFoundError

SERVER_NAME = "pystrands-server" + (".exe" if os.name == "nt" else "")
ENV_SERVER_BIN = "PYSTRANDS_SERVER_BIN"

#: Broker flags and the environment variables the broker lets override them;
#: for ``python -m pystrands server`` an explicit flag wins instead.
FLAG_VARIABLES = {
    "--ws-port": "PYSTRAND_WS_PORT",
    "--tcp-port": "PYSTRAND_TCP_PORT",
    "--queue-size": "PYSTRAND_QUEUE_SIZE",
    "--backend-token": "PYSTRANDS_BACKEND_TOKEN",
}

USAGE = f"""\
usage: python -m pystrands <command> [ARGS...]

commands:
  server [ARGS...]   run the PyStrands broker bundled with this package
                     (pystrands-server); every argument after `server` is passed
                     to it unchanged, for example
                       python -m pystrands server --ws-port 8080 --tcp-port 8081
                     `python -m pystrands server --help` (or -h) lists the broker's
                     flags; `--flag=value` works as `--flag value`.
  server-path        print the path of the broker executable `server` would run
  stats [--admin-host HOST] [--admin-port PORT] [--timeout SECONDS]
                     print a running broker's figures (GET /stats of its admin
                     listener, JSON): connections by state, rooms, backends,
                     messages and bytes, queues, refusals, memory; defaults
                     127.0.0.1:8082, the broker's --admin-host and --admin-port

options:
  -h, --help         show this help and exit
  -V, --version      show the package version and exit

environment:
  {ENV_SERVER_BIN}   broker executable to run instead of the bundled one
  PYSTRAND_WS_PORT, PYSTRAND_TCP_PORT, PYSTRAND_QUEUE_SIZE, PYSTRANDS_BACKEND_TOKEN
                     defaults for --ws-port, --tcp-port, --queue-size and
                     --backend-token; a flag given on the command line wins
                     (order: flag, then variable, then the broker's default)
"""

BUILD_HINT = (
    "Install the package with its broker from a PyStrands checkout:\n"
    "    pip install .\n"
    "(this needs a Rust toolchain: https://rustup.rs), or build the broker with\n"
    "    cargo build --release\n"
    f"and point {ENV_SERVER_BIN} at target/release/{SERVER_NAME}."
)


def _candidates() -> List[Path]:
    """Where the broker executable may be, in the order they are tried."""
    places: List[Path] = []
    scripts = sysconfig.get_path("scripts")
    if scripts:
        places.append(Path(scripts) / SERVER_NAME)
    places.append(Path(sys.executable).parent / SERVER_NAME)
    for scheme in (f"{os.name}_user", "osx_framework_user"):
        try:
            user_scripts = sysconfig.get_path("scripts", scheme)
        except KeyError:
            continue
        if user_scripts:
            places.append(Path(user_scripts) / SERVER_NAME)
    # Running from a source checkout (PYTHONPATH=python): the cargo build.
    checkout = Path(__file__).resolve().parent.parent.parent
    if (checkout / "Cargo.toml").is_file():
        places.append(checkout / "target" / "release" / SERVER_NAME)
        places.append(checkout / "target" / "debug" / SERVER_NAME)
    on_path = shutil.which(SERVER_NAME)
    if on_path:
        places.append(Path(on_path))
    seen = set()
    unique = []
    for place in places:
        if place not in seen:
            seen.add(place)
            unique.append(place)
    return unique


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(str(path), os.X_OK)


def find_server_binary() -> str:
    """Path of the ``pystrands-server`` executable to run.

    ``$PYSTRANDS_SERVER_BIN`` when set (it must then exist); otherwise the
    first executable among the environment's scripts directory, the
    interpreter's directory, the user scripts directory, a source checkout's
    ``target/{release,debug}``, and ``PATH``. Raises
    :class:`~pystrands.errors.ServerBinaryNotFoundError` with build
    instructions when there is none.
    """
    override = os.environ.get(ENV_SERVER_BIN)
    if override:
        path = Path(override)
        if _is_executable(path):
            return str(path)
        raise ServerBinaryNotFoundError(
            f"{ENV_SERVER_BIN}={override} is not an executable file."
        )
    candidates = _candidates()
    for path in candidates:
        if _is_executable(path):
            return str(path)
    searched = "\n".join(f"    {p}" for p in candidates)
    raise ServerBinaryNotFoundError(
        f"The PyStrands broker executable ({SERVER_NAME}) was not found. Looked in:\n"
        f"{searched}\n{BUILD_HINT}"
    )


#: Broker flags that take no value.
SWITCHES = ("--help",)


def server_arguments(
    args: Sequence[str], environ: Dict[str, str]
) -> Tuple[List[str], Dict[str, str], bool]:
    """The broker's argument list and environment for ``server ARGS``, and
    whether ``--version`` (or ``-V``) was asked: ``--flag=value`` split into
    ``--flag value``, ``-h`` as ``--help``, and the variable of every flag
    given explicitly (:data:`FLAG_VARIABLES`) left out of the environment,
    so that the flag wins. Every broker flag but ``--help`` takes a value,
    which is passed on as it is, whatever it looks like."""
    out: List[str] = []
    env = dict(environ)
    version = False
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            out.append(arg)
            out.extend(rest)
            break
        if arg in ("-V", "--version"):
            version = True
            continue
        if arg == "-h":
            arg = "--help"
        if arg.startswith("--") and "=" in arg:
            flag, _, value = arg.partition("=")
            out.extend((flag, value))
        else:
            flag = arg
            out.append(arg)
            if flag.startswith("--") and flag not in SWITCHES and rest:
                out.append(rest.pop(0))  # its value, verbatim
        variable = FLAG_VARIABLES.get(flag)
        if variable is not None:
            env.pop(variable, None)
    return out, env, version


def run_server(args: Sequence[str]) -> int:
    """Run the broker with ``args``; on POSIX this does not return."""
    rest, env, version = server_arguments(args, dict(os.environ))
    if version:
        from . import __version__

        print(f"pystrands {__version__} (its broker, pystrands-server, is built from the same source)")
        return 0
    try:
        binary = find_server_binary()
    except ServerBinaryNotFoundError as exc:
        print(f"pystrands: {exc}", file=sys.stderr)
        return 127
    argv = [binary, *rest]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        try:
            os.execve(binary, argv, env)
        except OSError as exc:
            print(f"pystrands: cannot run {binary}: {exc}", file=sys.stderr)
            return 126
    # Windows: a child process; the console delivers Ctrl-C to it directly, so
    # the launcher only has to survive that signal and wait.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            proc = subprocess.Popen(argv, env=env)
        except OSError as exc:
            print(f"pystrands: cannot run {binary}: {exc}", file=sys.stderr)
            return 126
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def stats_command(args: Sequence[str]) -> int:
    """``stats``: fetch ``/stats`` from a broker's admin listener and print it."""
    parser = argparse.ArgumentParser(
        prog="python -m pystrands stats",
        description="Print a running broker's figures: the JSON of GET /stats on its "
        "admin listener (the broker's --admin-host and --admin-port).",
    )
    parser.add_argument("--admin-host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument("--admin-port", type=int, default=8082, help="default: 8082")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the answer (default: 5)"
    )
    options = parser.parse_args(list(args))
    host = options.admin_host
    address = f"[{host}]:{options.admin_port}" if ":" in host else f"{host}:{options.admin_port}"
    url = f"http://{address}/stats"
    try:
        with urllib.request.urlopen(url, timeout=options.timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()
        print(f"pystrands: {url} answered {exc.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"pystrands: no broker admin listener at {address} ({reason}); the broker "
            "serves /stats on its --admin-port (default 8082, 0 turns it off): pass "
            "the same --admin-host and --admin-port here",
            file=sys.stderr,
        )
        return 1
    try:
        figures = json.loads(body)
    except ValueError:
        print(f"pystrands: {url} did not answer JSON: is this a PyStrands broker?", file=sys.stderr)
        return 1
    print(json.dumps(figures, indent=2, sort_keys=True))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(USAGE, end="", file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if command in ("-V", "--version"):
        from . import __version__

        print(f"pystrands {__version__}")
        return 0
    if command == "server":
        return run_server(rest)
    if command == "stats":
        return stats_command(rest)
    if command == "server-path":
        try:
            print(find_server_binary())
        except ServerBinaryNotFoundError as exc:
            print(f"pystrands: {exc}", file=sys.stderr)
            return 127
        return 0
    print(f"pystrands: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
