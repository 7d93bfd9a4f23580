"""HTTP/1.1 request heads, parsed strictly and within byte limits; response heads formatted.

Pure functions over bytes, no sockets: exporter.web.server feeds them what it has read. Only
what a metrics endpoint needs is accepted. Everything that is not a well-formed HTTP/1.0 or 1.1
request head gets a status and the connection is closed, so no byte of a bad request is ever
read as the start of the next one (request smuggling / desync):

- the request line longer than MAX_REQUEST_LINE: 414; the whole head longer than
  MAX_HEAD_BYTES or more than MAX_HEADERS header lines: 431 (checked while the head is still
  arriving, so an unfinished head never holds more than MAX_HEAD_BYTES);
- an HTTP/0.9 line (`GET /`, no version), a header line without a colon, a folded header line,
  a bad or repeated Content-Length, Content-Length together with Transfer-Encoding: 400;
- HTTP/2.0, HTTP/9.9, the h2 preface: 505. Bytes that are not a request line at all: 400.
A declared body is the caller's to read and discard (or to answer and close): see `Request`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD_BYTES = 16 * 1024  # request line + headers; Prometheus sends about 500 bytes
MAX_HEADERS = 100

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (\S+) HTTP/(\d)\.(\d)")
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_VISIBLE = re.compile(rb"[\x21-\x7e]+")


class BadRequest(Exception):
    """The request cannot be served: answer `status` and close the connection."""

    def __init__(self, status: HTTPStatus, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: tuple[int, int]
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    content_length: int  # 0 when none was declared
    chunked: bool  # Transfer-Encoding was given: the body's length is unknown here
    keep_alive: bool

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


def head_end(buffer: bytes | bytearray) -> int | None:
    """Where the head ends (just past its blank line) once it has all arrived, else None.

    Raises BadRequest as soon as the bytes received so far can no longer become a valid head
    within the limits, so nothing waits for more of a request that will be refused anyway.
    """
    start = _skip_blank_lines(buffer)
    line_end = buffer.find(b"\n", start)
    if line_end < 0:
        if len(buffer) - start > MAX_REQUEST_LINE:
            raise BadRequest(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
        _check_partial_line(buffer[start:])
        return None
    if line_end - start > MAX_REQUEST_LINE:
        raise BadRequest(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
    check_request_line(bytes(buffer[start:line_end]).rstrip(b"\r"))
    found = _HEAD_END.search(buffer, line_end - 1 if line_end > start else start)
    if found is None:
        if len(buffer) - start > MAX_HEAD_BYTES:
            raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "header too large")
        if buffer.count(b"\n", start) > MAX_HEADERS + 1:
            raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")
        return None
    if found.end() - start > MAX_HEAD_BYTES:
        raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "header too large")
    return found.end()


def _skip_blank_lines(buffer: bytes | bytearray) -> int:
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request line."""
    start = 0
    while buffer.startswith(b"\r\n", start) or buffer.startswith(b"\n", start):
        start += 2 if buffer.startswith(b"\r\n", start) else 1
        if start > 8:  # a stream of blank lines is not a client being lenient
            raise BadRequest(HTTPStatus.BAD_REQUEST, "blank lines before the request")
    return start


def _check_partial_line(partial: bytes | bytearray) -> None:
    """Refuse binary junk at once rather than waiting for a line end that may never come."""
    method = bytes(partial).split(b" ", 1)[0]
    if method and not re.fullmatch(_TOKEN, method):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "not an HTTP request")


def check_request_line(line: bytes) -> tuple[str, str, tuple[int, int]]:
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        words = line.split(b" ")
        if len(words) == 2 and re.fullmatch(_TOKEN, words[0]):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "HTTP/0.9 request line")
        raise BadRequest(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, major, minor = match.groups()
    version = (int(major), int(minor))
    if version not in ((1, 0), (1, 1)):
        raise BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"HTTP/{major.decode()}."
                                                                f"{minor.decode()}")
    if not _VISIBLE.fullmatch(target):
        raise BadRequest(HTTPStatus.BAD_REQUEST, "malformed request target")
    return method.decode("ascii"), target.decode("ascii"), version


def parse_head(head: bytes | bytearray) -> Request:
    """The Request in a complete head (as delimited by `head_end`)."""
    lines = bytes(head).replace(b"\r\n", b"\n").lstrip(b"\n").rstrip(b"\n").split(b"\n")
    method, target, version = check_request_line(lines[0])
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")
    headers: dict[str, str] = {}
    lengths: set[bytes] = set()
    for line in lines[1:]:
        match = _HEADER.fullmatch(line)
        if match is None or b"\r" in line:  # no colon, space before it, folding, bare CR
            raise BadRequest(HTTPStatus.BAD_REQUEST, "malformed header line")
        name = match.group(1).decode("ascii").lower()
        value = match.group(2).decode("latin-1")
        if name == "content-length":
            lengths.update(v.strip() for v in match.group(2).split(b","))
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "content-length" in headers and "transfer-encoding" in headers:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "Content-Length with Transfer-Encoding")
    return Request(method, target, version, headers, _content_length(lengths),
                   "transfer-encoding" in headers, _keep_alive(version, headers))


def _content_length(values: set[bytes]) -> int:
    if not values:
        return 0
    if len(values) != 1 or not next(iter(values)).isdigit() or len(next(iter(values))) > 18:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "bad Content-Length")
    return int(next(iter(values)))


def _keep_alive(version: tuple[int, int], headers: Mapping[str, str]) -> bool:
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    if "close" in tokens:
        return False
    return version == (1, 1) or "keep-alive" in tokens


class _Date:
    """The Date header (RFC 9110 6.6.1), formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._text = now, formatdate(now, usegmt=True)
        return self._text


http_date = _Date()


def response_head(status: int, fields: Iterable[tuple[str, str]]) -> bytes:
    reason = HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {reason}", "Server: cj-health-exporter",
             f"Date: {http_date()}", *(f"{k}: {v}" for k, v in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
