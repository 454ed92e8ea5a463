"""`wsuper call`: one call to an exported compartment, as an external client makes it.

It connects to the running system's external socket with pycapnp's own RPC
client (Cap'n Proto's C++ implementation), asks the Gateway for the
compartment, and calls the method: exactly the authority of any other
external client, which reaches exported compartments only.  Parameters are
Cap'n Proto text (captext.py); results are printed in the same format, or
as JSON.
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import time

import capnp

import capnp_schemas

from . import captext


#: Words of the largest message a running system sends an external client: the
#: largest `message_size` (compartments.limits.Limits.RANGES) and the header on
#: top of it that every peer's framing admits (router.HEADER_WORDS).  pycapnp's
#: own bound, 8 Mi words (64 MiB), refused results that `external_limits` allows
#: past it, after the supervisor had sent them whole: `wsuper call` failed with
#: "disconnected: expected expectedSizeInWords <= options.traversalLimitInWords
#: [8750019 <= 8388608]; incoming RPC message exceeds size limit" (an outside
#: review, reviewer 204).
MAX_MESSAGE_WORDS = ((256 << 20) >> 3) + 8192


def max_message_words(message_size: int) -> int:
    """Words of the largest message a system whose `external_limits.message_size`
    is `message_size` sends an external client: that and its header
    (router.HEADER_WORDS), at most MAX_MESSAGE_WORDS.  pycapnp counts every
    element of a list at least one word, so this bounds what reading the results
    builds too: read up to MAX_MESSAGE_WORDS whatever the system's limit, 24
    bytes of results holding a list of 2^25 empty structs (the router measures
    the 24 bytes) had `wsuper call` build 2^25 elements, ~260 bytes of Python
    each, ~9 GB (an outside review, reviewer 207)."""
    return min(MAX_MESSAGE_WORDS, (message_size >> 3) + 8192)


class CallFailed(Exception):
    """The call did not reach the compartment, or the compartment failed it."""


def call(socket_path: str, compartment: str, interface, method: str, params: dict,
         timeout: float = 30, as_json: bool = False, declared_by=None,
         deadline: float | None = None, message_size: int | None = None) -> str:
    """Call `compartment`'s `method` (of pycapnp interface module `interface`;
    declared by the interface schema `declared_by`, if it inherits it:
    captext.find) with `params`; returns the results as Cap'n Proto text (or
    JSON).  The results come
    from a compartment, so they are read completely here, inside the call: what
    cannot be read (a pointer out of bounds, text without its NUL, not UTF-8) is a
    CallFailed, never an abort later in some lazy reader.  Only a socket in a
    directory `up` would bind it in is asked (endpoint.external_socket).  `deadline`
    (time.monotonic()): when the caller's `timeout` ends, if it began before this
    call (`wsuper call` asks the running system where it listens first); the
    errors name `timeout`.  `message_size`: the system's
    `external_limits.message_size` (the default's if None); results past it (a
    list of empty structs counting a word each) are a CallFailed saying so."""
    from compartments.limits import Limits

    from .endpoint import EndpointError, external_socket
    if message_size is None:
        message_size = Limits().message_size
    words = max_message_words(message_size)

    def too_large(e) -> str | None:
        # this client's reader (arena.c++: "Exceeded message traversal limit") or its
        # framing ("expectedSizeInWords <= options.traversalLimitInWords"); never a
        # remote exception (a callee's engine refusing the params names its own limit)
        text = str(e)
        if "remote exception" in text or ("Exceeded message traversal limit" not in text
                                          and "options.traversalLimitInWords" not in text):
            return None
        return (f"its results are more than external_limits.message_size = {message_size} "
                f"allows ({words} words with the message's header, each element of a "
                f"list counting one at least)")
    try:
        external_socket(socket_path)     # never one someone else could have put there
    except EndpointError as e:
        raise CallFailed(str(e)) from None
    connected = False

    async def main():
        nonlocal connected
        async with capnp.kj_loop():
            try:
                sock = await connect(socket_path)
                connected = True
                stream = await capnp.AsyncIoStream.create_unix_connection(sock=sock)
            except Exception as e:  # noqa: BLE001 - pycapnp raises KjException
                raise CallFailed(f"cannot connect to {socket_path}: {_first(e)}") from None
            client = capnp.TwoPartyClient(stream, traversal_limit_in_words=words)
            gateway = client.bootstrap().cast_as(capnp_schemas.host.Gateway)
            try:
                cap = (await gateway.get(compartment)).cap.as_interface(interface)
                if declared_by is not None:
                    # the method of the interface the params were typed for, by its
                    # id and ordinal: not found by its name again (captext.find)
                    cap = cap.cast_as(declared_by)
                request = cap._request(method)
                fill(request, params)
                response = await request.send()
            except capnp.KjException as e:
                raise CallFailed(too_large(e) or _first(e)) from None
            try:
                return to_json(response) if as_json else str(response)
            except Exception as e:  # noqa: BLE001 - KjException, UnicodeDecodeError, ...
                raise CallFailed(too_large(e) or f"its results cannot be read: {_first(e)}") \
                    from None

    async def bounded():
        try:
            return await asyncio.wait_for(main(), timeout if deadline is None
                                          else max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            if not connected:        # as `wsuper status` says it (endpoint.connect_admin)
                raise CallFailed(f"the system at {socket_path} is busy: its socket took no "
                                 f"connection within {timeout:g} s (its backlog stayed "
                                 f"full)") from None
            raise CallFailed(f"no answer within {timeout:g} s") from None

    return asyncio.run(bounded())


async def connect(path: str) -> socket.socket:
    """A connected unix socket to `path`, once its backlog has room.  A unix socket
    whose backlog is full refuses a non-blocking connect at once (EAGAIN), and
    asyncio's connect took the socket that then became writable for connected:
    while any local process kept the external socket's backlog full, every `wsuper
    call` failed with 'disconnected: ... Transport endpoint is not connected'.
    The caller's timeout bounds the wait."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    pause = 0.005
    try:
        while True:
            try:
                sock.connect(path)
                break
            except (BlockingIOError, InterruptedError):
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.1)
        # the directory was checked before (endpoint.external_socket), by its path:
        # it may be another by now; nothing is sent to a socket not of this user's
        from .endpoint import check_peer
        check_peer(sock, path)
        return sock
    except BaseException:
        sock.close()
        raise


def fill(builder, values: dict):
    """Set `values` (a struct as captext.typed gives it) on the struct builder
    `builder`, each field by its name, at every depth.  Never pycapnp's
    from_dict: it skips every field named `which`, in a struct, a group, a
    list's struct, so that `wsuper call s.f '(which = 7)'` sent which = 0
    without a word (its other names of its own, `schema`, `init`, ... are
    looked up as fields by _set and init, which are methods)."""
    for name, value in values.items():
        if isinstance(value, dict):              # a struct, or a group (or union member)
            fill(builder.init(name), value)
        elif isinstance(value, list):
            _fill_list(builder.init(name, len(value)), value)
        else:
            builder._set(name, value)


def _fill_list(builder, values: list):
    for i, value in enumerate(values):
        if isinstance(value, dict):
            fill(builder[i], value)
        elif isinstance(value, list):
            _fill_list(builder.init(i, len(value)), value)
        else:
            builder[i] = value


def to_json(reader) -> str:
    """Results as JSON (RFC 8259: strict; a value it cannot carry is a ValueError)."""
    return json.dumps(_plain(reader), allow_nan=False)


def _plain(reader):
    """A reader as JSON-able values; capabilities as the string "<capability>" (a
    pointer that may be something else, an AnyPointer, "<pointer>"; a null one null).
    A union member the schema does not name (a newer schema's: legal Cap'n Proto)
    is left out, as the text form leaves it (`u = ()`): asked which, pycapnp
    raised, and `call --json` failed whole ("Member was null.")."""
    out = {}
    which = _UNASKED
    for field in reader.schema.fields_list:
        name = field.proto.name
        if field.proto.discriminantValue != 0xFFFF:
            if which is _UNASKED:
                which = _which(reader)
            if which != name:
                continue
        if field.proto.which() == "group":
            out[name] = _plain(reader._get(name))
        elif field.proto.slot.type.which() in ("interface", "anyPointer"):
            # not read: what it is stays unasked.  But a null pointer is no capability:
            # every null one was "<capability>" (the text form leaves it out), and an
            # AnyPointer or a generic parameter's may hold text or a struct as well
            out[name] = None if not reader._has(name) else _pointer(field.proto.slot.type)
        else:
            # by _get, never getattr: a field named `which` or `schema` was pycapnp's
            # method or the reader's schema, and the whole call failed ("its results
            # cannot be read: Object of type method is not JSON serializable")
            out[name] = _value(reader._get(name), field.proto.slot.type)
    return out


_UNASKED = object()


def _which(reader) -> str | None:
    """The union member `reader` holds, or None for one its schema does not name."""
    try:
        return reader.which()
    except (capnp.KjException, RuntimeError, ValueError):
        return None


def _number(x):
    """A float JSON can carry: NaN and the infinities, which JSON has no literal for
    (json.dumps wrote NaN, Infinity: not JSON), as the strings "NaN", "Infinity"
    and "-Infinity" (as protobuf's JSON mapping writes them)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if x != x else "Infinity" if x > 0 else "-Infinity"
    return x


def _value(v, type_):
    """A value of the Cap'n Proto type `type_` (a schema Type) as JSON-able values:
    by the type, at every depth (a list of lists was written as the *string*
    "[1, 2]", and the floats, data and enums inside it as pycapnp prints them)."""
    kind = type_.which()
    if kind in ("interface", "anyPointer"):
        return _pointer(type_)
    if kind in ("float32", "float64"):
        return _number(v)
    if kind == "struct":
        return _plain(v)
    if kind == "data":
        return base64.b64encode(bytes(v)).decode()
    if kind == "enum":
        # a value the schema does not name (a newer schema's) is its number, as the
        # text form prints it (`c = (99)`); str() raised "Member was null."
        try:
            return str(v)
        except (capnp.KjException, RuntimeError, ValueError):
            return int(v.raw)
    if kind == "list":
        element = type_.list.elementType
        return [_value(x, element) for x in v]
    return v


def _pointer(type_) -> str:
    """What a pointer that is not null, of the type `type_`, is said to be: a
    capability (an interface, `Capability`), or, for an AnyPointer or a generic
    parameter, which may hold anything, "<pointer>"."""
    if type_.which() == "interface" or (
            type_.anyPointer.which() == "unconstrained"
            and type_.anyPointer.unconstrained.which() == "capability"):
        return "<capability>"
    return "<pointer>"


def _first(e) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    # pycapnp prefixes remote exceptions with where they were raised in C++
    return line.split("remote exception: ", 1)[-1]


__all__ = ["CallFailed", "call", "captext"]
