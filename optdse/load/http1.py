"""A minimal HTTP/1.1 client for the load generator: one request, sent again and again.

The load generator POSTs the same body to the same URL thousands of times per trial, and
what it times should be the server, not the client. `http.client` spent ~165 us of CPU per
request on this machine (a file object and an email-parser pass over the headers per
response): with optdse-serve's REST API answering MNIST in ~0.3-0.5 ms, that put optdse's mean
latency ~50% above wrk's. This client builds the request's bytes once, sends them in one
write on a kept-alive connection with Nagle off, and reads back only what it needs: the
status, the body (Content-Length, chunked, or up to the close) and whether the server closes
the connection. Its socket blocks, with the deadline enforced by the kernel (SO_RCVTIMEO,
SO_SNDTIMEO): Python's own socket timeouts turn every read into a failed recv, a poll and a
second recv, which cost another ~20 us per request. One send and one recv per request remain.
"""

from __future__ import annotations

import socket
import struct

MAX_LINE = 65536   # a longer status or header line is not HTTP this client can use
RECV_SIZE = 65536


class ProtocolError(ValueError):
    """The server's answer is not HTTP/1.x as this client reads it."""


class KeptAliveConnection:
    """POSTs one of a few fixed requests to host:port over a persistent connection,
    (re)connecting when needed. Not thread-safe: one per thread."""

    def __init__(self, host: str, port: int, path: str, bodies: tuple[bytes, ...], content_type: str,
                 timeout: float) -> None:
        self.address, self.timeout = (host, port), timeout
        self.requests = [(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body for body in bodies]
        self._sock: socket.socket | None = None
        self._buffer = bytearray()  # received and not read yet, from _start on
        self._start = 0

    def connect(self) -> None:
        sock = socket.create_connection(self.address, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # blocking from here on; the kernel keeps the deadline
        seconds = int(self.timeout)
        limit = struct.pack("ll", seconds, int((self.timeout - seconds) * 1e6))  # struct timeval
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        self._sock, self._buffer, self._start = sock, bytearray(), 0

    def close(self) -> None:
        """Drop the connection; the next `post` opens a new one."""
        if self._sock is not None:
            self._sock.close()
        self._sock = None

    def post(self, which: int = 0) -> tuple[int, bytes]:
        """Send request `which` and return (status, body). Raises TimeoutError past the deadline,
        another OSError if the connection fails, or ProtocolError; the connection is then
        closed, and the next call reconnects."""
        try:
            if self._sock is None:
                self.connect()
            assert self._sock is not None
            self._sock.sendall(self.requests[which])
            return self._read_response()
        except BlockingIOError:  # SO_RCVTIMEO or SO_SNDTIMEO ran out
            self.close()
            raise TimeoutError(f"no answer within {self.timeout:g} s") from None
        except (OSError, ProtocolError):
            self.close()
            raise

    def _read_response(self) -> tuple[int, bytes]:
        status = _status(self._line())
        length, chunked, closes = None, False, False
        while (line := self._line()) not in (b"\r\n", b"\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = _number(value, 10)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                closes = b"close" in value.lower()
        if chunked:
            body = self._chunked_body()
        elif length is not None:
            body = self._exactly(length)
        else:  # no length: the body runs to the end of the connection
            body, closes = self._until_closed(), True
        if closes:
            self.close()
        return status, body

    def _fill(self) -> None:
        """Wait for more of the answer and append it to the buffer."""
        assert self._sock is not None
        data = self._sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionResetError("the server closed the connection before its answer was complete")
        if self._start:
            del self._buffer[:self._start]
            self._start = 0
        self._buffer += data

    def _line(self) -> bytes:
        while (end := self._buffer.find(b"\n", self._start)) < 0:
            if len(self._buffer) - self._start > MAX_LINE:
                raise ProtocolError("a status or header line longer than 64 KiB")
            self._fill()
        line = bytes(self._buffer[self._start:end + 1])
        self._start = end + 1
        return line

    def _exactly(self, length: int) -> bytes:
        while len(self._buffer) - self._start < length:
            self._fill()
        data = bytes(self._buffer[self._start:self._start + length])
        self._start += length
        return data

    def _chunked_body(self) -> bytes:
        body = bytearray()
        while size := _number(self._line().split(b";", 1)[0], 16):
            body += self._exactly(size)
            self._line()  # the CRLF after each chunk
        while self._line() not in (b"\r\n", b"\n"):  # trailers, if any
            pass
        return bytes(body)

    def _until_closed(self) -> bytes:
        try:
            while True:
                self._fill()
        except ConnectionResetError:
            body = bytes(self._buffer[self._start:])
            self._start = len(self._buffer)
            return body


def _status(line: bytes) -> int:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return _number(parts[1], 10)


def _number(text: bytes, base: int) -> int:
    try:
        value = int(text.strip(), base)
    except ValueError:
        raise ProtocolError(f"not a number: {text[:40]!r}") from None
    if value < 0:
        raise ProtocolError(f"a negative length: {value}")
    return value


__all__ = ["KeptAliveConnection", "ProtocolError"]
