"""The client port's fast lane: plain hits answered from the connection's protocol.

aiohttp handles every request through a task, a request object, the router and
a response object; for a 4 KiB hit that machinery costs several times the work
of the hit itself (issue 4's small-object goal). The fast lane sits in front of
it, in aiohttp's own connection protocol (:class:`FastLaneHandler`, a subclass of
aiohttp's ``RequestHandler``): aiohttp still parses every request (its C
parser), and when the connection is idle (no request queued or in progress),
each parsed request is offered to ``answer`` (:func:`cache_node.serve.fast_answer`),
a plain function that returns the complete response bytes or ``None``. ``None``
hands the request, and every request after it on that data, to aiohttp in
order, as if the lane were not there. So pipelined requests are answered in
order, and anything the lane does not know for certain (a miss, Range or
conditional headers, a token to reject, HTTP/1.0, ``Connection: close``, a
request body, a parse error) goes the full way.

The lane also steps aside when the connection's write buffer is above aiohttp's
high-water mark (a client that does not read its responses), so the full path's
flow control applies, and it keeps aiohttp's keep-alive timer current.

The handler also answers 501, not aiohttp's 400, when aiohttp's C parser
refuses a request only for its method: a well-formed request line whose method
is a token llhttp does not know (``BREW``, ``get``) is a method this server does
not recognize (RFC 9110 §9.1: 501), not a malformed request. The method is read
from the line the parser quotes in its error (:func:`unrecognized_method`);
anything else it refuses (TLS on the plain port, a broken line) stays 400.

The aiohttp internals this relies on (the request queue and its waiter, the
parser, the keep-alive deadline, the pause/resume of reading at the queue
limit) are checked when the module loads: with an aiohttp that lacks them,
:func:`make_runner` returns a plain ``AppRunner``, and every request takes the
full path. pyproject.toml bounds aiohttp to the minor versions tested.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import Any

from aiohttp import http_parser, web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from cache_node.serve import not_implemented_reason

Answer = Callable[[RawRequestMessage], bytes | None]

# Write-buffer size above which the lane leaves the connection to aiohttp's flow control.
HIGH_WATER = 256 * 1024

_INTERNALS = (
    "_waiter",
    "_messages",
    "_parser",
    "_next_keepalive_close_time",
    "_keepalive_timeout",
    "_buffer_paused",
    "_msg_queue_resume_size",
)
# The parser's message classes (C and pure Python); anything else is a parse error.
_MESSAGES = (RawRequestMessage, getattr(http_parser, "RawRequestMessagePy", RawRequestMessage))
SUPPORTED = hasattr(RequestHandler, "_resume_reading_if_drained") and all(
    any(name in getattr(cls, "__slots__", ()) for cls in RequestHandler.__mro__)
    for name in _INTERNALS
)


# RFC 9112 §3: method SP request-target SP HTTP-version, the method a token (RFC 9110 §5.6.2).
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) [^\x00-\x20\x7f]+ HTTP/1\.[01]")
_QUOTED_BYTES = re.compile(r"b'(?:[^'\\]|\\.)*'" + "|" + r'b"(?:[^"\\]|\\.)*"')


def unrecognized_method(parser_message: str | None) -> str | None:
    """The method of a well-formed request line that aiohttp's parser refused for its
    method alone (its error quotes the line as a bytes literal), or ``None``."""
    if not parser_message:
        return None
    quoted = _QUOTED_BYTES.search(parser_message)
    if quoted is None:
        return None
    try:
        line = ast.literal_eval(quoted.group(0))
    except (ValueError, SyntaxError):
        return None
    if not isinstance(line, bytes):
        return None
    found = _REQUEST_LINE.fullmatch(line)
    return found.group(1).decode("ascii") if found else None


class FastLaneHandler(RequestHandler):
    """aiohttp's connection protocol, answering what ``answer`` can before aiohttp sees it."""

    __slots__ = ("_answer",)

    def __init__(self, manager: Server, *, answer: Answer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._answer = answer

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        """aiohttp's error answer, with 501 for a method this server does not recognize."""
        if status == 400 and isinstance(exc, BadHttpMethod):
            method = unrecognized_method(message)
            if method is not None:
                status, message = 501, not_implemented_reason(method) + "\n"
        return super().handle_error(request, status, exc, message)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done() or self._messages:
            # aiohttp is busy with a request: everything after it waits its turn there.
            super().data_received(data)
            return
        # Parse with aiohttp, but keep its request loop asleep until we know whether
        # a request is left for it.
        self._waiter = None
        try:
            super().data_received(data)
        finally:
            self._waiter = waiter
        messages = self._messages
        transport = self.transport
        answered = False
        while messages and transport is not None and not transport.is_closing():
            message, payload = messages[0]
            if (
                not isinstance(message, _MESSAGES)
                or payload is not EMPTY_PAYLOAD
                or transport.get_write_buffer_size() > HIGH_WATER
            ):
                break
            response = self._answer(message)
            if response is None:
                break
            messages.popleft()
            parser = self._parser
            if parser is not None:
                parser.message_consumed()
            transport.write(response)
            answered = True
        if answered:
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
            if self._buffer_paused and len(messages) <= self._msg_queue_resume_size:
                # aiohttp paused reading at its queue limit (a long pipeline) and resumes
                # as its request loop drains the queue; the lane drained it instead.
                # This reparses what is buffered (through this method) and resumes.
                self._resume_reading_if_drained()
        if messages and not waiter.done():
            waiter.set_result(None)


class FastLaneServer(Server):
    """aiohttp's ``Server`` (the protocol factory) making :class:`FastLaneHandler` s."""

    def __init__(self, built: Server, answer: Answer) -> None:
        # Adopt the server the runner built (its handler, request factory, kwargs).
        self.__dict__.update(vars(built))
        self._answer = answer

    def __call__(self) -> RequestHandler:
        return FastLaneHandler(self, answer=self._answer, loop=self._loop, **self._kwargs)


class FastLaneRunner(web.AppRunner):
    def __init__(self, app: web.Application, *, answer: Answer, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._answer = answer

    async def _make_server(self) -> Server:
        return FastLaneServer(await super()._make_server(), self._answer)


def routed_elsewhere(app: web.Application, catch_all: Callable[..., Any]) -> Callable[[str], bool]:
    """A test of whether ``app``'s router might send a path to a route other than
    ``catch_all`` (the object view): such paths are never the fast lane's.

    Plain and pattern routes are matched; any other kind of resource makes every
    path count as routed elsewhere (the lane then answers nothing).
    """
    exact: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    for resource in app.router.resources():
        if any(route.handler is catch_all for route in resource):
            continue
        info = resource.get_info()
        if "path" in info:
            exact.add(info["path"])
        elif "pattern" in info:
            patterns.append(info["pattern"])
        else:
            return lambda path: True

    def test(path: str) -> bool:
        return path in exact or any(p.fullmatch(path) for p in patterns)

    return test


def make_runner(app: web.Application, answer: Answer | None, **kwargs: Any) -> web.AppRunner:
    """A runner for ``app`` whose connections try ``answer`` first (when given and supported)."""
    if answer is None or not SUPPORTED:
        return web.AppRunner(app, **kwargs)
    return FastLaneRunner(app, answer=answer, **kwargs)
