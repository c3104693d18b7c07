"""A TCP proxy for tests that records the statements a database server receives.

Some promises of the pool can only be checked on the wire: "a clean checkout
sends nothing to the server", "a health check costs one round trip", "a reset
is one statement". Counting calls in Python would trust the very code under
test, and the server's own counters are shared with every other session. So
:class:`WireCounter` sits between a client and a real server, forwards bytes
both ways untouched, and reads the client's side of each connection to record,
in order, every statement-like message the server is sent::

    with WireCounter("postgresql", pg_server.host, pg_server.port) as proxy:
        conn = psycopg.connect(f"{conninfo} host={proxy.host} port={proxy.port}")
        mark = proxy.mark()
        conn.execute("SELECT 1")
        assert proxy.statements_since(mark) == [(0, "SELECT 1")]

What is recorded, as :class:`Statement` ``(connection, sql)`` tuples, where
``connection`` counts client connections from 0 in the order they were accepted:

* PostgreSQL: each simple query (``Q``) with its text, so an empty query (a
  common health check) is recorded as ``""``; and each extended-protocol
  Execute (``E``) with the text of the Parse (``P``) behind the portal that the
  preceding Bind (``B``) made: placeholders appear as the server sees them
  (``$1``), and a statement prepared once and run twice is recorded twice. The
  startup phase (including an SSLRequest or GSSENCRequest the server declines)
  and authentication are skipped.
* MySQL/MariaDB: each command packet (sequence id 0) after the handshake:
  ``COM_QUERY`` as its SQL text, ``COM_STMT_PREPARE`` as ``"PREPARE <sql>"``,
  ``COM_STMT_EXECUTE`` as ``"EXECUTE <statement id>"`` (ids come from the
  server's replies, which are not read), ``COM_PING`` as ``"PING"``,
  ``COM_RESET_CONNECTION`` as ``"RESET CONNECTION"``, ``COM_CHANGE_USER`` as
  ``"CHANGE USER"``, any other command but ``COM_QUIT`` as ``"COMMAND 0x.."``.

:meth:`WireCounter.stall` makes it a network that stops passing bytes while
every TCP connection stays open (what a dead route, a full NAT table or a
hung middlebox looks like to a client); :meth:`WireCounter.resume` lets the
held bytes through.

A connection whose stream cannot be read (TLS, GSS encryption, MySQL
compression) is still forwarded, but records nothing; such connections are
counted in :attr:`WireCounter.connections_unreadable`, which a test should
check is 0 before trusting an empty list. A statement is recorded before it is
forwarded, so once a client has the server's answer, its statement is listed.
"""

from __future__ import annotations

import contextlib
import functools
import selectors
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Literal, NamedTuple, Self

__all__ = ["Statement", "WireCounter"]

#: Seconds allowed to connect to the server, and for threads to end on close.
TIMEOUT = 10.0

_CHUNK = 65536


class Statement(NamedTuple):
    """One statement the server received: which client connection, what SQL."""

    connection: int
    sql: str


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class _Parser:
    """Reads one connection's client-to-server bytes and records its statements."""

    def __init__(self, record: Callable[[str], None]) -> None:
        self._record = record
        self._buffer = bytearray()
        #: True once the stream cannot be read any more (encrypted, compressed, garbled).
        self.unreadable = False

    def feed_client(self, data: bytes) -> None:
        raise NotImplementedError

    def feed_server(self, data: bytes) -> None:
        """Bytes the server sent; most protocols are read from the client side alone."""

    def _give_up(self) -> None:
        self.unreadable = True
        self._buffer.clear()


# --------------------------------------------------------------------------- #
# PostgreSQL
# --------------------------------------------------------------------------- #

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
#: The server refuses longer startup packets; a longer "length" is TLS (direct SSL).
_MAX_STARTUP_LENGTH = 10000


def _cstring(body: bytes, start: int) -> tuple[str, int]:
    """The NUL-terminated string at ``start`` and the position after its NUL."""
    end = body.index(0, start)
    return _decode(body[start:end]), end + 1


class _PostgresParser(_Parser):
    """PostgreSQL frontend messages: untyped during startup, then type + length."""

    def __init__(self, record: Callable[[str], None]) -> None:
        super().__init__(record)
        # The client thread parses; the server thread ends an SSL/GSS negotiation.
        self._lock = threading.Lock()
        self._phase: Literal["startup", "negotiating", "messages"] = "startup"
        self._prepared: dict[str, str] = {}  # statement name -> SQL of its Parse
        self._portals: dict[str, str] = {}  # portal name -> SQL its Bind refers to

    def feed_client(self, data: bytes) -> None:
        with self._lock:
            if not self.unreadable:
                self._buffer += data
                self._parse()

    def feed_server(self, data: bytes) -> None:
        with self._lock:
            if self._phase != "negotiating" or self.unreadable:
                return
            if data[:1] == b"N":  # declined: the client goes on in the clear
                self._phase = "startup"
                self._parse()
            else:  # "S" or "G": encrypted from now on; or an error
                self._give_up()

    def _parse(self) -> None:
        buffer = self._buffer
        pos = 0
        try:
            while not self.unreadable and self._phase != "negotiating":
                if self._phase == "startup":
                    if len(buffer) - pos < 8:
                        break
                    length = int.from_bytes(buffer[pos : pos + 4], "big")
                    if not 8 <= length <= _MAX_STARTUP_LENGTH:
                        self._give_up()
                        break
                    if len(buffer) - pos < length:
                        break
                    self._startup(int.from_bytes(buffer[pos + 4 : pos + 8], "big"))
                    pos += length
                else:
                    if len(buffer) - pos < 5:
                        break
                    length = int.from_bytes(buffer[pos + 1 : pos + 5], "big")
                    if length < 4:
                        self._give_up()
                        break
                    end = pos + 1 + length
                    if len(buffer) < end:
                        break
                    kind = buffer[pos]
                    if kind in b"QPBE":
                        self._message(kind, bytes(buffer[pos + 5 : end]))
                    pos = end
        except ValueError:  # a string without its NUL: not a stream we understand
            self._give_up()
        del buffer[:pos]

    def _startup(self, code: int) -> None:
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            self._phase = "negotiating"
        elif code >> 16 == 3:  # StartupMessage, protocol 3.x
            self._phase = "messages"
        elif code != _CANCEL_REQUEST:  # a cancel ends the connection; others are unknown
            self._give_up()

    def _message(self, kind: int, body: bytes) -> None:
        first, pos = _cstring(body, 0)
        if kind == ord("Q"):
            self._record(first)
        elif kind == ord("P"):
            self._prepared[first] = _cstring(body, pos)[0]
        elif kind == ord("B"):
            name = _cstring(body, pos)[0]
            self._portals[first] = self._prepared.get(name, f"<prepared statement {name!r}>")
        else:  # "E"
            self._record(self._portals.get(first, f"<portal {first!r}>"))


# --------------------------------------------------------------------------- #
# MySQL / MariaDB
# --------------------------------------------------------------------------- #

_CLIENT_COMPRESS = 0x20
_CLIENT_SSL = 0x800
_CLIENT_ZSTD_COMPRESSION = 1 << 26
_CLIENT_QUERY_ATTRIBUTES = 1 << 27
#: A payload this long continues in the next packet.
_MAX_PACKET = 0xFFFFFF

_COM_QUIT = 0x01
_COM_QUERY = 0x03
_COM_STMT_PREPARE = 0x16
_COM_STMT_EXECUTE = 0x17
_COMMAND_NAMES = {0x0E: "PING", 0x11: "CHANGE USER", 0x1F: "RESET CONNECTION"}


class _MySQLParser(_Parser):
    """MySQL client packets: 3-byte length, sequence id, payload.

    The first client message answers the server's greeting (the handshake
    response, or an SSL request before TLS starts). After it, every message
    with sequence id 0 starts a command; the others continue an exchange
    (authentication, LOCAL INFILE data) and are skipped. Only the client
    thread uses a MySQL parser.
    """

    def __init__(self, record: Callable[[str], None]) -> None:
        super().__init__(record)
        self._handshake_done = False
        self._query_attributes = False
        self._message = bytearray()  # a payload split over several packets
        self._message_seq: int | None = None

    def feed_client(self, data: bytes) -> None:
        if self.unreadable:
            return
        buffer = self._buffer
        buffer += data
        pos = 0
        while not self.unreadable and len(buffer) - pos >= 4:
            length = int.from_bytes(buffer[pos : pos + 3], "little")
            end = pos + 4 + length
            if len(buffer) < end:
                break
            if self._message_seq is None:
                self._message_seq = buffer[pos + 3]
            self._message += buffer[pos + 4 : end]
            pos = end
            if length < _MAX_PACKET:
                message, self._message = bytes(self._message), bytearray()
                seq, self._message_seq = self._message_seq, None
                self._handle(seq, message)
        del buffer[:pos]

    def _handle(self, seq: int, payload: bytes) -> None:
        if not self._handshake_done:
            self._handshake_done = True
            capabilities = int.from_bytes(payload[:4], "little")
            self._query_attributes = bool(capabilities & _CLIENT_QUERY_ATTRIBUTES)
            if capabilities & (_CLIENT_SSL | _CLIENT_COMPRESS | _CLIENT_ZSTD_COMPRESSION):
                self._give_up()
        elif seq == 0 and payload and payload[0] != _COM_QUIT:
            self._record(self._describe(payload[0], payload[1:]))

    def _describe(self, command: int, body: bytes) -> str:
        if command == _COM_QUERY:
            if self._query_attributes:
                # Parameter count 0, parameter set count 1, then the SQL.
                if not body.startswith(b"\x00\x01"):
                    return "<query with attributes>"
                body = body[2:]
            return _decode(body)
        if command == _COM_STMT_PREPARE:
            return f"PREPARE {_decode(body)}"
        if command == _COM_STMT_EXECUTE:
            return f"EXECUTE {int.from_bytes(body[:4], 'little')}"
        return _COMMAND_NAMES.get(command, f"COMMAND 0x{command:02x}")


_PARSERS: dict[str, type[_Parser]] = {"postgresql": _PostgresParser, "mysql": _MySQLParser}


# --------------------------------------------------------------------------- #
# The proxy
# --------------------------------------------------------------------------- #


class _Link:
    """One client connection: its two sockets, its parser, the thread serving it.

    Sockets are shut down (which wakes any thread blocked on them) by whoever
    ends the link first, but closed only by the link's own thread, under the
    lock, so that no file descriptor is shut down after its number is reused.
    """

    def __init__(self, index: int, client: socket.socket, parser: _Parser) -> None:
        self.index = index
        self.client = client
        self.parser = parser
        self.upstream: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._shut = False
        self._closed = False

    def attach(self, upstream: socket.socket) -> bool:
        """Keep the server socket, to close it; False if the link is already ending."""
        with self._lock:
            self.upstream = upstream
            return not self._shut

    @property
    def ending(self) -> bool:
        return self._shut

    def shut(self) -> None:
        with self._lock:
            self._shut = True
            if self._closed:
                return
            for sock in (self.client, self.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.client.close()
            if self.upstream is not None:
                self.upstream.close()


class WireCounter:
    """A proxy on ``host:port`` that forwards to a server and records statements.

    ``protocol`` is ``"postgresql"`` or ``"mysql"`` (MariaDB too). Use it as a
    context manager: entering starts listening on a free 127.0.0.1 port;
    leaving closes the listener and every proxied connection (their clients
    then see a lost connection) and waits for all its threads to end.

    Clients connect to ``host`` (an address of this machine to listen on,
    127.0.0.1 unless given) and ``port`` (known once entered); ``protocol``
    and ``upstream`` (the server's host and port) are kept as given.
    """

    def __init__(
        self,
        protocol: Literal["postgresql", "mysql"],
        upstream_host: str,
        upstream_port: int,
        host: str = "127.0.0.1",
    ) -> None:
        self.protocol = protocol
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self._parser_class = _PARSERS[protocol]
        self._lock = threading.Lock()
        self._statements: list[Statement] = []
        self._links: list[_Link] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._flowing = threading.Event()  # cleared while stalled
        self._flowing.set()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="wire-accept", daemon=True
        )

    def __enter__(self) -> Self:
        self._listener.bind((self.host, 0))
        self._listener.listen()
        self.port = self._listener.getsockname()[1]
        self._accept_thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, end every connection and join every thread."""
        if self._accept_thread.is_alive():
            self._wake_writer.send(b"x")
            self._accept_thread.join()
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            sock.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.shut()
        for link in links:
            if link.thread is not None:
                link.thread.join(TIMEOUT)
        stuck = [link.thread.name for link in links if link.thread and link.thread.is_alive()]
        if stuck:
            raise RuntimeError(f"proxy threads did not end: {stuck}")

    def stall(self) -> None:
        """Stop passing bytes either way, connections kept open (see :meth:`resume`)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Pass bytes again, those held while stalled first."""
        self._flowing.set()

    # ------------------------------------------------------------- results

    @property
    def connections_opened(self) -> int:
        """How many client connections the proxy has accepted."""
        with self._lock:
            return len(self._links)

    @property
    def connections_unreadable(self) -> int:
        """How many connections could not be read (TLS, compression) and record nothing."""
        with self._lock:
            return sum(link.parser.unreadable for link in self._links)

    def statements(self) -> list[Statement]:
        """Every statement recorded so far, over all connections, in arrival order."""
        return self.statements_since(0)

    def mark(self) -> int:
        """A position in the record, for :meth:`statements_since`."""
        with self._lock:
            return len(self._statements)

    def statements_since(self, mark: int) -> list[Statement]:
        """The statements recorded after :meth:`mark` returned ``mark``."""
        with self._lock:
            return self._statements[mark:]

    # ------------------------------------------------------------- plumbing

    def _record(self, connection: int, sql: str) -> None:
        with self._lock:
            self._statements.append(Statement(connection, sql))

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_reader in ready:
                    return
                try:
                    client, _ = self._listener.accept()
                except OSError:  # the client gave up before we accepted it
                    continue
                with self._lock:
                    index = len(self._links)
                    parser = self._parser_class(functools.partial(self._record, index))
                    link = _Link(index, client, parser)
                    self._links.append(link)
                link.thread = threading.Thread(
                    target=self._serve, args=(link,), name=f"wire-{index}-client", daemon=True
                )
                link.thread.start()

    def _serve(self, link: _Link) -> None:
        """Connect to the server, then pump both ways until either side ends."""
        try:
            with contextlib.suppress(OSError):  # no server: the client sees a close
                upstream = socket.create_connection(self.upstream, timeout=TIMEOUT)
                if link.attach(upstream):
                    upstream.settimeout(None)
                    back = threading.Thread(
                        target=self._pump,
                        args=(link, upstream, link.client, link.parser.feed_server),
                        name=f"wire-{link.index}-server",
                        daemon=True,
                    )
                    back.start()
                    try:
                        self._pump(link, link.client, upstream, link.parser.feed_client)
                    finally:
                        back.join()
        finally:
            link.close()

    def _pump(
        self,
        link: _Link,
        source: socket.socket,
        target: socket.socket,
        read: Callable[[bytes], None],
    ) -> None:
        """Forward ``source`` to ``target``, letting ``read`` see each chunk first."""
        try:
            with contextlib.suppress(OSError):
                while data := source.recv(_CHUNK):
                    read(data)
                    while not self._flowing.wait(0.05):  # stalled: hold the bytes
                        if link.ending:
                            return
                    target.sendall(data)
        finally:
            link.shut()
