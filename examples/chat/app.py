"""A chat for the browser on PyStrands: sign-in, rooms, presence, private
messages, a moderator's kick, and pages that reconnect by themselves.

    python -m pystrands server          # the broker: WebSocket :8080, backends :8081
    python examples/chat/app.py         # this backend, and the page on http://127.0.0.1:8000

or both in one command: ``python examples/chat/app.py --with-broker``.

One process, two parts:

- the backend (the decorator API, :class:`pystrands.PyStrands`) connects to
  the broker's backend port and decides everything: who may connect (a
  signed token in the WebSocket URL's query string), which rooms each
  connection is in, who gets which message;
- a small HTTP server (standard library, in a thread) serves the page (one
  HTML, one JS and one CSS file from ``static/``), ``POST /login`` (a name,
  and a password for the moderator, give a token signed with HMAC-SHA256)
  and ``POST /session`` (is this token still good? a browser cannot read
  why a WebSocket upgrade was refused, so the page asks here).

The page talks JSON over the WebSocket. Page to backend::

    {"type": "say",   "room": "lobby", "text": "hi", "id": "k3x"}
    {"type": "pm",    "to": "bob", "text": "psst", "id": "k3y"}
    {"type": "join",  "room": "dev"}
    {"type": "leave", "room": "dev"}
    {"type": "kick",  "user": "bob", "reason": "spam"}       (moderator only)

Backend to page::

    {"type": "welcome", "name": "ann", "moderator": false, "rooms": ["lobby"]}
    {"type": "rooms",   "rooms": ["lobby", "dev"]}            (every tab of the user)
    {"type": "members", "room": "dev", "members": [{"name": "ann", "moderator": false}],
                        "joined": ["ann"], "left": []}
    {"type": "message", "room": "dev", "from": "bob", "text": "hi", "id": "k3x", "ts": 1700000000000}
    {"type": "sent",    "id": "k3x"}                          (the sender's tab: delivered)
    {"type": "pm",      "from": "ann", "to": "bob", "text": "psst", "id": "k3y", "ts": ...}
    {"type": "notice",  "room": "lobby", "text": "bob was removed by mod: spam"}
    {"type": "error",   "id": "k3y", "text": "bob is not online"}

Rooms belong to the user: joining or leaving in one tab does it in every tab
(``join_room(room, client_id=name)``). A room message goes to everyone in the
room but the sending tab (``exclude=[connection_id]``), which has shown the
message already and gets a ``sent`` confirmation instead. A private message
goes to every tab of the recipient and of the sender. Member lists come from
the broker's presence; "joined" and "left" are the difference between two
successive lists, so a second tab or a reconnect announces nobody twice. A
kick closes every tab of the user with close code 4000 and the moderator's
reason, which the page shows; it is not a ban.

Sign-in is by name alone (anyone may take any free-form name but the
moderator's, which needs the password): replace ``/login`` with your own
authentication. Tokens are signed with ``--secret`` (default: random at each
start, so a restart signs everyone out).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, cast
from urllib.parse import urlsplit

from pystrands import ConnectionRequestContext, Context, PyStrands, PyStrandsError

logger = logging.getLogger("chat")

STATIC = Path(__file__).resolve().parent / "static"
#: Path, file and content type of everything the HTTP side serves.
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/chat.css": ("chat.css", "text/css; charset=utf-8"),
}

NAME = re.compile(r"[A-Za-z0-9_-]{1,20}")
ROOM = re.compile(r"[a-z0-9][a-z0-9_-]{0,23}")
DEFAULT_ROOM = "lobby"
MAX_TEXT = 2000
MAX_ROOMS_PER_USER = 20
MAX_REASON = 100
#: The close code of a kick (4000-4999 are the application's own).
KICK_CODE = 4000
#: Largest body accepted by POST /login and /session.
MAX_BODY = 4096


# --------------------------------------------------------------------- tokens


class InvalidToken(Exception):
    """A token that does not let its holder in; the message says why."""


class Claims(NamedTuple):
    name: str
    moderator: bool
    expires: int


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    """Signed tokens: ``base64url(JSON claims) "." base64url(HMAC-SHA256)``.

    The claims are the user's name, whether they are the moderator and when
    the token expires (Unix time). Only the holder of ``secret`` can make one.
    """

    def __init__(self, secret: bytes, lifetime: float) -> None:
        self._secret = secret
        self.lifetime = lifetime

    def _sign(self, payload: str) -> str:
        return _b64encode(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, name: str, moderator: bool) -> str:
        claims = {"name": name, "mod": moderator, "exp": int(time.time() + self.lifetime)}
        payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> Claims:
        """The token's claims; :class:`InvalidToken` when it is missing,
        malformed, not signed with our secret, or expired."""
        if not token:
            raise InvalidToken("missing token: sign in first")
        payload, dot, signature = token.partition(".")
        if not dot or not payload.isascii() or not signature.isascii():
            raise InvalidToken("malformed token")
        if not hmac.compare_digest(self._sign(payload), signature):
            raise InvalidToken("bad token signature: sign in again")
        try:
            claims = json.loads(_b64decode(payload))
            name, moderator, expires = claims["name"], claims["mod"], claims["exp"]
        except (ValueError, TypeError, KeyError):
            raise InvalidToken("malformed token") from None
        if not isinstance(name, str) or not isinstance(moderator, bool) or not isinstance(expires, int):
            raise InvalidToken("malformed token")
        if expires < time.time():
            raise InvalidToken("token expired: sign in again")
        return Claims(name, moderator, expires)


class SignIn:
    """What ``POST /login`` checks: a valid name, and the moderator's password
    for the moderator's name."""

    def __init__(self, tokens: Tokens, moderator: str, moderator_password: str) -> None:
        self.tokens = tokens
        self.moderator = moderator
        self._password = moderator_password.encode("utf-8")

    def login(self, name: str, password: str) -> Tuple[HTTPStatus, Dict[str, Any]]:
        if not NAME.fullmatch(name):
            return HTTPStatus.BAD_REQUEST, {
                "error": "a name is 1 to 20 letters, digits, '-' or '_'"
            }
        moderator = name == self.moderator
        if moderator and not hmac.compare_digest(password.encode("utf-8"), self._password):
            return HTTPStatus.UNAUTHORIZED, {"error": f"wrong password for {name}"}
        token = self.tokens.issue(name, moderator)
        return HTTPStatus.OK, {"token": token, "name": name, "moderator": moderator}


# --------------------------------------------------------------------- the backend


def close_reason(text: str) -> str:
    """``text`` cut to the 123 bytes of UTF-8 a WebSocket close reason allows."""
    data = text.encode("utf-8")[:123]
    return data.decode("utf-8", "ignore")


class Chat:
    """The chat's backend: the handlers of a :class:`PyStrands` app and what it
    remembers: the rooms of each user who is online (so a new tab, or a page
    reconnecting after a broker restart, gets them back; a page that comes
    back after its user was forgotten says which rooms it had) and the last
    member list sent for each room (to tell who joined and who left).

    A send fails with :class:`~pystrands.NotConnectedError` while the broker
    is away; the handlers then log it and the pages catch up when they
    reconnect."""

    def __init__(self, app: PyStrands, tokens: Tokens) -> None:
        self.app = app
        self.tokens = tokens
        self.rooms_of: Dict[str, List[str]] = {}
        self.members: Dict[str, List[str]] = {}
        # Created on the running loop (asyncio objects are bound to one on 3.8/3.9).
        self._refreshing: Optional[asyncio.Lock] = None

    def send(self, connection_id: str, payload: Dict[str, Any]) -> Any:
        return self.app.send_connection_message(connection_id, json.dumps(payload))

    async def refresh(self, room: str, to_connection: str = "") -> None:
        """Ask the broker who is in ``room`` and, when that changed, send the
        list with who joined and who left to the room; else send it to
        ``to_connection`` alone (a tab that has not seen it yet).

        One refresh at a time: each list is asked for and sent before the next
        is asked for, so the room receives them in the order of the broker's
        answers and the last one it gets is the latest."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            try:
                entries = await self.app.presence(room)
            except PyStrandsError as exc:
                logger.warning("presence of %s: %s", room, exc)
                return
            names = [entry.client_id for entry in entries]
            before = self.members.get(room, [])
            joined = [name for name in names if name not in before]
            left = [name for name in before if name not in names]
            if names:
                self.members[room] = names
            else:
                self.members.pop(room, None)
            members = [
                {"name": e.client_id, "moderator": bool(e.metadata.get("moderator"))}
                for e in entries
            ]
            payload = {"type": "members", "room": room, "members": members, "joined": joined, "left": left}
            try:
                if joined or left:
                    await self.app.send_room_message(room, json.dumps(payload))
                elif to_connection:
                    await self.send(to_connection, payload)
            except PyStrandsError as exc:
                logger.warning("member list of %s: %s", room, exc)

    async def tell_rooms(self, name: str) -> None:
        """Every tab of ``name`` learns its rooms."""
        payload = {"type": "rooms", "rooms": self.rooms_of.get(name, [])}
        await self.app.send_private_message(name, json.dumps(payload))

    # -------------------------------------------------------------- handlers

    def admit(self, request: ConnectionRequestContext) -> bool:
        token = request.query_params.get("token", [""])[0]
        try:
            claims = self.tokens.verify(token)
        except InvalidToken as exc:
            request.reject(401, str(exc))
            return False
        rooms = self.rooms_of.get(claims.name)
        if not rooms:
            # Unknown to this process (a new user, or this backend restarted):
            # the rooms the page was in, or the lobby.
            asked = request.query_params.get("rooms", [""])[0].split(",")
            rooms = [r for r in dict.fromkeys(asked) if ROOM.fullmatch(r)][:MAX_ROOMS_PER_USER]
            rooms = rooms or [DEFAULT_ROOM]
        request.context.client_id = claims.name
        request.context.metadata = {"name": claims.name, "moderator": claims.moderator}
        request.context.room_id = rooms[0]
        request.join(*rooms[1:])
        return True

    async def connected(self, context: Context) -> None:
        try:
            await self._connected(context)
        except PyStrandsError as exc:
            logger.warning("welcoming %s: %s", context.client_id, exc)

    async def _connected(self, context: Context) -> None:
        name = context.client_id
        rooms = self.rooms_of.setdefault(name, list(context.rooms))
        await self.send(
            context.connection_id,
            {"type": "welcome", "name": name, "moderator": bool(context.metadata.get("moderator")),
             "rooms": rooms},
        )
        for room in context.rooms:
            await self.refresh(room, to_connection=context.connection_id)

    async def disconnected(self, context: Context) -> None:
        name = context.client_id
        for room in context.rooms:
            await self.refresh(room)
        # Every tab of a user is in all of the user's rooms: in none of them
        # any more, the user has no tab left.
        if not any(name in self.members.get(room, ()) for room in context.rooms):
            self.rooms_of.pop(name, None)

    async def received(self, message: object, context: Context) -> None:
        try:
            await self._received(message, context)
        except PyStrandsError as exc:
            logger.warning("message of %s: %s", context.client_id, exc)

    async def _received(self, message: object, context: Context) -> None:
        if not isinstance(message, str):
            await self.send(context.connection_id, {"type": "error", "text": "not a chat command"})
            return
        try:
            command = json.loads(message)
        except ValueError:
            command = None
        if not isinstance(command, dict) or not isinstance(command.get("type"), str):
            await self.send(context.connection_id, {"type": "error", "text": "not a chat command"})
            return
        kind = command["type"]
        handler = {
            "say": self.say,
            "pm": self.private_message,
            "join": self.join,
            "leave": self.leave,
            "kick": self.kick,
        }.get(kind)
        if handler is None:
            await self.send(context.connection_id, {"type": "error", "text": f"unknown command {kind!r}"})
            return
        error = await handler(command, context)
        if error:
            reply = {"type": "error", "text": error}
            if isinstance(command.get("id"), str):
                reply["id"] = command["id"]
            await self.send(context.connection_id, reply)

    @staticmethod
    def _text(command: Dict[str, Any]) -> Tuple[str, str]:
        text = command.get("text")
        message_id = command.get("id")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            raise ValueError(f"a message is 1 to {MAX_TEXT} characters")
        if not isinstance(message_id, str) or not 0 < len(message_id) <= 64:
            raise ValueError("a message needs an id")
        return text, message_id

    async def say(self, command: Dict[str, Any], context: Context) -> str:
        room = command.get("room")
        if not isinstance(room, str) or room not in context.rooms:
            return f"you are not in {room}"
        try:
            text, message_id = self._text(command)
        except ValueError as exc:
            return str(exc)
        payload = {"type": "message", "room": room, "from": context.client_id, "text": text,
                   "id": message_id, "ts": int(time.time() * 1000)}
        # Everyone in the room but this tab, which showed the message already.
        await self.app.send_room_message(room, json.dumps(payload), exclude=[context.connection_id])
        await self.send(context.connection_id, {"type": "sent", "id": message_id})
        return ""

    async def private_message(self, command: Dict[str, Any], context: Context) -> str:
        to = command.get("to")
        if not isinstance(to, str) or not NAME.fullmatch(to):
            return "no such user"
        try:
            text, message_id = self._text(command)
        except ValueError as exc:
            return str(exc)
        sender = context.client_id
        payload = json.dumps({"type": "pm", "from": sender, "to": to, "text": text,
                              "id": message_id, "ts": int(time.time() * 1000)})
        reached = await self.app.send_private_message(to, payload, ack=True)
        if not reached:
            return f"{to} is not online"
        if to != sender:
            # Every tab of the sender: the sending one takes it as confirmation.
            await self.app.send_private_message(sender, payload)
        return ""

    async def join(self, command: Dict[str, Any], context: Context) -> str:
        room = command.get("room")
        if not isinstance(room, str) or not ROOM.fullmatch(room):
            return "a room name is 1 to 24 lower-case letters, digits, '-' or '_'"
        name = context.client_id
        rooms = self.rooms_of.setdefault(name, list(context.rooms))
        if room not in rooms:
            if len(rooms) >= MAX_ROOMS_PER_USER:
                return f"at most {MAX_ROOMS_PER_USER} rooms"
            rooms.append(room)
        await self.app.join_room(room, client_id=name)
        await self.tell_rooms(name)
        await self.refresh(room, to_connection=context.connection_id)
        return ""

    async def leave(self, command: Dict[str, Any], context: Context) -> str:
        room = command.get("room")
        name = context.client_id
        rooms = self.rooms_of.setdefault(name, list(context.rooms))
        if not isinstance(room, str) or room not in rooms:
            return f"you are not in {room}"
        if len(rooms) == 1:
            return "you cannot leave your last room"
        rooms.remove(room)
        await self.app.leave_room(room, client_id=name)
        await self.tell_rooms(name)
        await self.refresh(room)
        return ""

    async def kick(self, command: Dict[str, Any], context: Context) -> str:
        if not context.metadata.get("moderator"):
            return "only the moderator can remove someone"
        user, reason = command.get("user"), command.get("reason")
        if not isinstance(user, str) or not NAME.fullmatch(user):
            return "no such user"
        if user == context.client_id:
            return "you cannot remove yourself"
        reason = reason.strip()[:MAX_REASON] if isinstance(reason, str) else ""
        text = f"removed by {context.client_id}" + (f": {reason}" if reason else "")
        rooms = list(self.rooms_of.get(user, []))
        closed = await self.app.disconnect_client(
            client_id=user, code=KICK_CODE, reason=close_reason(text), ack=True
        )
        if not closed:
            return f"{user} is not online"
        for room in rooms:
            await self.app.send_room_message(
                room, json.dumps({"type": "notice", "room": room, "text": f"{user} was {text}"})
            )
        return ""


def create_app(host: str, port: int, tokens: Tokens) -> PyStrands:
    """The backend: a :class:`PyStrands` app with the chat's handlers."""
    app = PyStrands(host=host, port=port)
    chat = Chat(app, tokens)

    @app.on_connection_request
    def admit(request: ConnectionRequestContext) -> bool:
        return chat.admit(request)

    @app.on_new_connection
    async def connected(context: Context) -> None:
        await chat.connected(context)

    @app.on_message
    async def received(message: object, context: Context) -> None:
        await chat.received(message, context)

    @app.on_disconnect
    async def disconnected(context: Context) -> None:
        await chat.disconnected(context)

    @app.on_error
    def failed(error: str, context: Context) -> None:
        logger.warning("broker: %s (%s)", error, context.client_id or "no client")

    return app


# --------------------------------------------------------------------- the page


class Site:
    """What the HTTP side serves: the three static files, sign-in and session checks."""

    def __init__(self, sign_in: SignIn, ws_url: Optional[str], ws_port: int) -> None:
        self.sign_in = sign_in
        self.ws_url = ws_url
        self.ws_port = ws_port
        self.files = {path: (STATIC / name).read_bytes() for path, (name, _) in PAGES.items()}

    def websocket_url(self, host_header: str) -> str:
        """The broker's WebSocket URL as the browser reaches it: ``--ws-url``,
        or the host the page came from with the broker's port."""
        if self.ws_url:
            return self.ws_url
        host = urlsplit("//" + host_header).hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.ws_port}/chat"


class ChatHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], site: Site) -> None:
        self.site = site
        super().__init__(address, PageHandler)


class PageHandler(BaseHTTPRequestHandler):
    server_version = "pystrands-chat"

    @property
    def site(self) -> Site:
        return cast(ChatHTTPServer, self.server).site

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http %s: " + format, self.address_string(), *args)

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        ws_url = urlsplit(self.site.websocket_url(self.headers.get("Host", "")))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        # The page loads nothing but its own three files and talks to the broker.
        self.send_header(
            "Content-Security-Policy",
            f"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self' {ws_url.scheme}://{ws_url.netloc}; "
            f"base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, payload: Dict[str, Any]) -> None:
        self._reply(status, json.dumps(payload).encode("utf-8"), "application/json")

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        page = PAGES.get(path)
        if page is None:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        else:
            self._reply(HTTPStatus.OK, self.site.files[path], page[1])

    do_HEAD = do_GET

    def _read_json(self) -> Optional[Dict[str, Any]]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "a JSON body of at most 4 KiB"})
            return None
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "a JSON object, please"})
            return None
        return body

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path not in ("/login", "/session"):
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        body = self._read_json()
        if body is None:
            return
        site = self.site
        ws_url = site.websocket_url(self.headers.get("Host", ""))
        if path == "/login":
            name, password = body.get("name"), body.get("password")
            status, reply = site.sign_in.login(
                name.strip() if isinstance(name, str) else "",
                password if isinstance(password, str) else "",
            )
            if status == HTTPStatus.OK:
                reply["ws_url"] = ws_url
            self._json(status, reply)
            return
        token = body.get("token")
        try:
            claims = site.sign_in.tokens.verify(token if isinstance(token, str) else "")
        except InvalidToken as exc:
            self._json(HTTPStatus.UNAUTHORIZED, {"error": str(exc)})
            return
        self._json(HTTPStatus.OK, {"name": claims.name, "moderator": claims.moderator, "ws_url": ws_url})


# --------------------------------------------------------------------- running


#: The broker's log line saying where it listens.
LISTENING = re.compile(r"listening websocket=\S*:(\d+) backend=\S*:(\d+)")


class BundledBroker:
    """``python -m pystrands server`` as a child process (``--with-broker``):
    its log goes to this process's stderr; stopped with SIGTERM on exit."""

    def __init__(self, args: Sequence[str]) -> None:
        self.args = [sys.executable, "-m", "pystrands", "server", *args]
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self._listening = threading.Event()
        #: The ports it reported once listening (so 0, "any free port", works).
        self.ws_port = 0
        self.backend_port = 0

    def start(self, timeout: float = 10.0) -> None:
        self.proc = proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert proc.stderr is not None
        pump = threading.Thread(target=self._pump, args=(proc.stderr,), daemon=True)
        pump.start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if proc.poll() is not None:
                pump.join(1.0)  # its last words first
                raise SystemExit(f"chat: the broker exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"chat: the broker did not start within {timeout:.0f} s")

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace")
            listening = LISTENING.search(line)
            if listening and not self._listening.is_set():
                self.ws_port = int(listening.group(1))
                self.backend_port = int(listening.group(2))
                self._listening.set()
            sys.stderr.write(f"[broker] {line}")
            sys.stderr.flush()

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def serve(app: PyStrands) -> None:
    """Run the backend until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises KeyboardInterrupt
            pass
    serving = asyncio.ensure_future(app.serve())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not serving.done():
        await app.disconnect()
    stopping.cancel()
    await serving


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A browser chat on PyStrands: this backend, and the page it serves.",
    )
    parser.add_argument("--broker-host", default="127.0.0.1",
                        help="the broker's backend address (default: %(default)s)")
    parser.add_argument("--broker-port", type=int, default=8081,
                        help="the broker's backend port, its --tcp-port (default: %(default)s)")
    parser.add_argument("--ws-port", type=int, default=8080,
                        help="the broker's WebSocket port, its --ws-port, on the host the page "
                             "was loaded from (default: %(default)s)")
    parser.add_argument("--ws-url", default=None,
                        help="the broker's WebSocket URL as browsers reach it, when it is "
                             "elsewhere (e.g. wss://chat.example/ws behind a proxy)")
    parser.add_argument("--http-host", default="127.0.0.1",
                        help="address the page is served on (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000,
                        help="port the page is served on; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--moderator", default="moderator",
                        help="the name that signs in as moderator (default: %(default)s)")
    parser.add_argument("--moderator-password", default=os.environ.get("CHAT_MODERATOR_PASSWORD"),
                        help="the moderator's password (default: $CHAT_MODERATOR_PASSWORD, "
                             "else a random one, printed at start)")
    parser.add_argument("--secret", default=os.environ.get("CHAT_SECRET"),
                        help="the key tokens are signed with (default: $CHAT_SECRET, else random "
                             "at each start)")
    parser.add_argument("--token-lifetime", type=float, default=12 * 3600,
                        help="seconds a sign-in lasts (default: %(default)s)")
    parser.add_argument("--with-broker", action="store_true",
                        help="also start the bundled broker (python -m pystrands server) on "
                             "--ws-port and --broker-port, and stop it on exit")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if not NAME.fullmatch(args.moderator):
        parser.error("--moderator: 1 to 20 letters, digits, '-' or '_'")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    secret = args.secret.encode("utf-8") if args.secret else secrets.token_bytes(32)
    password = args.moderator_password or secrets.token_urlsafe(9)
    sign_in = SignIn(Tokens(secret, args.token_lifetime), args.moderator, password)

    broker: Optional[BundledBroker] = None
    if args.with_broker:
        broker = BundledBroker([
            "--host", args.http_host, "--ws-port", str(args.ws_port),
            "--backend-host", args.broker_host, "--tcp-port", str(args.broker_port),
            "--admin-port", "0",
        ])
        broker.start()
        args.ws_port, args.broker_port = broker.ws_port, broker.backend_port
    try:
        site = Site(sign_in, args.ws_url, args.ws_port)
        http = ChatHTTPServer((args.http_host, args.http_port), site)
        threading.Thread(target=http.serve_forever, name="http", daemon=True).start()
        host, port = str(http.server_address[0]), int(http.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        print(f"chat: open http://{shown}:{port}/ (backend of the broker at "
              f"{args.broker_host}:{args.broker_port})", flush=True)
        if not args.moderator_password:
            print(f"chat: moderator {args.moderator!r}, password {password!r}", flush=True)
        app = create_app(args.broker_host, args.broker_port, sign_in.tokens)
        try:
            asyncio.run(serve(app))
        except KeyboardInterrupt:
            pass
        http.shutdown()
        http.server_close()
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
