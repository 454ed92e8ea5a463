"""The engine program: `python -m compartments.engine --fd N --name NAME --module PATH`.

One engine runs one compartment: a wasmtime Store with the module's own linear
memory and table, linked only against the `wsuper` ABI.  It speaks Cap'n Proto
RPC to the supervisor over the inherited socket `--fd`, from a blocking loop:

* its bootstrap capability is the Engine control object (engine.capnp), which
  only the supervisor holds;
* a guest host call (`wsuper.call`) becomes an RPC Call; the engine then reads
  messages until its Return arrives, serving incoming calls re-entrantly
  meanwhile (a callback into this compartment while it waits);
* an incoming call on one of the guest's objects becomes a call of the guest's
  `wsuper_dispatch` export.

Guest handles index this engine's handle table; each entry is an import (a
capability held through the supervisor) or one of the guest's own objects.
The supervisor checks every import id against the compartment's c-list, so a
forged id in a taken-over engine reaches nothing it was not granted.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import struct
import sys
import time

import wasmtime

from capnp_schemas import engine as engine_schema, payloads, protocol, wire
from capnp_schemas.protocol import Content, RemoteRef

from . import abi, confine, hostcall, wasi
from .fastcall import TypedFunc
from .limits import Limits

ENGINE_INTERFACE = engine_schema.Engine.schema.node.id


UNLIMITED_FUEL = (1 << 63) - 1
#: Incoming calls served re-entrantly while the guest waits in its own calls
#: (A calls B, B calls A back, ...).  Deeper nesting fails the call: each level
#: costs native stack in this process.
MAX_NESTING = 32


class GuestFault(Exception):
    """The guest broke the ABI (bad pointer, bad length): it traps."""


class EngineError(Exception):
    """The engine cannot start this module; the text says why."""


class LocalObject:
    """One of the guest's own objects, named by a guest-chosen integer tag."""
    __slots__ = ("tag",)

    def __init__(self, tag):
        self.tag = tag

    def __repr__(self):
        return f"LocalObject({self.tag})"


class HandleTable:
    """The guest's view of its c-list: small integers, a free list, 0 is never valid."""

    def __init__(self, limit: int = 65536):
        self._entries: dict[int, object] = {}
        self._free: list[int] = []
        self._next = 1
        self.limit = limit

    def add(self, entry) -> int:
        if len(self._entries) >= self.limit:
            raise OverflowError("handle table full")
        h = self._free.pop() if self._free else self._next
        if h == self._next:
            self._next += 1
        self._entries[h] = entry
        return h

    def get(self, h: int):
        return self._entries.get(h)

    def remove(self, h: int):
        entry = self._entries.pop(h)
        self._free.append(h)
        return entry



class _Import:
    """A handle entry for a capability the supervisor hosts for us."""
    __slots__ = ("import_id",)

    def __init__(self, import_id):
        self.import_id = import_id

    def __eq__(self, other):
        return isinstance(other, _Import) and other.import_id == self.import_id

    def __hash__(self):
        return hash(self.import_id)


class _Frame:
    """One incoming call being dispatched to the guest."""
    __slots__ = ("params", "handles", "results", "error")

    def __init__(self, params: bytes, handles: list):
        self.params = params
        self.handles = handles
        self.results = None
        self.error = None


class Engine:
    def __init__(self, sock: socket.socket, name: str, module_path: str, exports: bool,
                 limits: Limits | None = None, compiled=None,
                 per_call: bool = False):
        self.sock = sock
        self.name = name
        self.exports_main = exports
        self.per_call = per_call              # a fresh instance for every incoming call
        self.limits = limits or Limits()
        self.max_message_bytes = self.limits.message_size
        # what the supervisor forwards carries its own headers: allow for them
        self.conn = protocol.Connection(
            f"supervisor->{name}", max_message_words=(self.limits.message_size >> 3) + 8192)
        self.handles = HandleTable(self.limits.handles)
        self.grants: dict[str, int] = {}
        self.objects: dict[int, LocalObject] = {}
        self.returns: dict[int, protocol.ReturnReceived] = {}
        self.reply: tuple | None = None      # (bytes, handles) for reply_read
        self.frames: list[_Frame] = []
        self.control = object()
        self._outgoing: list[bytes] = []
        self._import_refs: dict[int, int] = {}   # import id -> handles naming it
        self.call_times: list[int] | None = None  # ns per outgoing call (WSUPER_STATS=1)
        self._load(module_path, compiled)

    # ------------------------------------------------------------ wasm

    def _load(self, path, compiled):
        """`compiled`: (wasmtime.Engine, Module, imports, export types) that the zygote
        compiled and described with our configuration before it forked us, so that
        none of it costs anything here; or None, and the engine compiles `path`."""
        if compiled is not None:
            self.wasm_engine, module, imports, self._export_types = compiled
        else:
            self.wasm_engine = wasmtime.Engine(engine_config())
            try:
                module = compile_module(self.wasm_engine, path)
            except (OSError, UnicodeDecodeError, wasmtime.WasmtimeError) as e:
                raise EngineError(f"cannot load module {path}: {_first_line(e)}") from None
            imports, self._export_types = list(describe_imports(module)), {}
        problem = abi.check_imports(imports)
        if problem:
            raise EngineError(f"module {path} {problem}")
        wasi_names = sorted({name for m, name, _k, _s in imports if m == abi.WASI_MODULE})
        # a WASI program: its descriptors, clocks, ... come from the grants at start
        self.wasi = wasi.Wasi(self, self.name,
                              max_io=min(wasi.MAX_IO, self.max_message_bytes // 2)) \
            if wasi_names else None
        self.store = wasmtime.Store(self.wasm_engine)
        self.store.set_limits(memory_size=self.limits.memory,
                              table_elements=self.limits.table_elements)
        self.store.set_fuel(UNLIMITED_FUEL)     # start-up code (the start function)
        linker = wasmtime.Linker(self.wasm_engine)
        for name, (params, results) in abi.IMPORTS.items():
            hostcall.define(linker, abi.MODULE, name, params, results,
                            getattr(self, "_host_" + name), self.wasm_engine)
        for name in wasi_names:
            hostcall.define(linker, abi.WASI_MODULE, name, *abi.WASI_IMPORTS[name],
                            self.wasi.function(name), self.wasm_engine)
        try:
            self.instance = linker.instantiate(self.store, module)
            self.instance_pre = linker.instantiate_pre(module) if self.per_call else None
        except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
            raise EngineError(f"cannot instantiate {path}: {_first_line(e)}") from None
        exports = self.instance.exports(self.store)
        memory = exports.get(abi.EXPORT_MEMORY)
        self.memory = memory if isinstance(memory, wasmtime.Memory) else None
        self.start_func = self._typed(exports, abi.EXPORT_START, ((), ()), path)
        self.initialize = self._typed(exports, abi.EXPORT_INITIALIZE, ((), ()), path)
        self.dispatch = self._typed(exports, abi.EXPORT_DISPATCH, abi.DISPATCH_TYPE, path)
        self._dispatch_type = self.dispatch
        if self.exports_main and self.dispatch is None:
            raise EngineError(f"module {path} must export function {abi.EXPORT_DISPATCH} "
                              f"to serve an interface")

    def _typed(self, exports, name, sig, path):
        func = exports.get(name)
        if func is None:
            return None
        if not isinstance(func, wasmtime.Func):
            raise EngineError(f"module {path} exports {name}, but not as a function")
        try:
            return TypedFunc(self.store, func, *sig, actual=self._export_types.get(name))
        except TypeError as e:
            raise EngineError(f"module {path} exports {name} with the wrong type: {e}") from None

    def confine(self) -> list[str]:
        """Confine this process for good (see confine.py); returns what was unavailable."""
        keep = [self.sock.fileno()]
        for fd in os.listdir("/proc/self/fd"):     # wasmtime's memory images stay open
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:"):
                    keep.append(int(fd))
            except OSError:
                pass
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        # room for the guest's memory to grow to its limit, and for our own heap
        return confine.confine(keep, vm + 2 * self.limits.memory + (512 << 20))

    # ------------------------------------------------------------ guest memory

    def _span(self, ptr, length) -> int:
        """Address of guest memory [ptr, ptr+length), after checking it is inside."""
        if self.memory is None:
            raise GuestFault(f"module has no exported memory named '{abi.EXPORT_MEMORY}'")
        base, size = hostcall.memory_span(self.memory)
        # wasmtime hands high i32 pointers to the host as negative ints.
        if ptr < 0 or length < 0 or ptr + length > size:
            raise GuestFault(f"guest passed out-of-range memory [{ptr}, {ptr}+{length}) "
                             f"(memory is {size} bytes)")
        return base + ptr

    def _read(self, ptr, length) -> bytes:
        if length == 0:                  # touches nothing: no need to ask where memory is
            return b""
        return ctypes.string_at(self._span(ptr, length), length)

    def _write(self, ptr, data: bytes):
        if data:
            ctypes.memmove(self._span(ptr, len(data)), data, len(data))

    # the WASI layer's view of guest memory
    read, write = _read, _write

    def _read_handles(self, ptr, count) -> list[int]:
        if count < 0 or count > abi.MAX_CAPS:
            raise GuestFault(f"capability count {count} out of range 0..{abi.MAX_CAPS}")
        raw = self._read(ptr, 4 * count)
        return list(struct.unpack(f"<{count}i", raw))

    def _write_handles(self, ptr, handles):
        self._write(ptr, struct.pack(f"<{len(handles)}i", *handles))

    # ------------------------------------------------------------ host functions

    def _host_lookup(self, ptr, length):
        name = self._read(ptr, length).decode("utf-8", "replace")
        return self.grants.get(name, abi.E_NOTFOUND)

    def _host_call(self, handle, interface_id, method_id, p_ptr, p_len, c_ptr, c_count,
                   out_ptr):
        self._span(out_ptr, 8)
        raw = self._read(p_ptr, p_len)
        handles = self._read_handles(c_ptr, c_count)
        entry = self.handles.get(handle)
        if entry is None:
            return self._set_error(out_ptr, abi.E_BADHANDLE,
                                   f"handle {handle} is not in this compartment's c-list")
        try:
            content = self._guest_content(raw)
            caps = self._caps_from_handles(handles)
        except _GuestError as e:
            return self._set_error(out_ptr, e.code, str(e))
        if isinstance(entry, LocalObject):
            return self._set_error(out_ptr, abi.E_UNIMPLEMENTED,
                                   "calling your own object through a handle is not supported")
        try:
            payload = self.invoke(entry.import_id, interface_id & ((1 << 64) - 1),
                                  method_id & 0xFFFF, content, caps)
        except wasi.HostCallFailed as e:
            return self._set_error(out_ptr, abi.EXCEPTION_CODES.get(e.type, abi.E_FAILED),
                                   e.reason)
        try:
            data = self._for_guest(payload.content)
        except _CallError as e:
            return self._set_error(out_ptr, abi.E_MESSAGE, e.reason)
        try:
            new = self._handles_for(payload.caps)
        except _GuestError as e:
            return self._set_error(out_ptr, e.code, str(e))
        self.reply = (data, new)
        self._write(out_ptr, len(data).to_bytes(4, "little") + len(new).to_bytes(4, "little"))
        return abi.OK

    def invoke(self, import_id, interface_id, method_id, content, caps=()) -> protocol.Payload:
        """Call a capability we import and wait for its answer (serving calls meanwhile)."""
        t0 = time.perf_counter_ns()
        try:
            qid, data = self.conn.send_call(import_id, interface_id, method_id, content,
                                            list(caps))
        except KeyError:
            raise wasi.HostCallFailed("disconnected", "that capability was released") from None
        self._send(data)
        ret = self._wait_for(qid)
        if self.call_times is not None:
            self.call_times.append(time.perf_counter_ns() - t0)
        if ret.finish_needed:
            self._send(self.conn.send_finish(qid))
        if ret.payload is None:
            raise wasi.HostCallFailed(ret.error_type, ret.error)
        return ret.payload

    def adopt(self, cap) -> int | None:
        """Keep a capability received outside the handle table (the WASI layer's files)."""
        if not isinstance(cap, protocol.Imported):
            return None
        self._import_refs[cap.import_id] = self._import_refs.get(cap.import_id, 0) + 1
        return cap.import_id

    def hold(self, import_id: int) -> int:
        """One more reference to an import we already hold (the WASI layer's own)."""
        self._import_refs[import_id] = self._import_refs.get(import_id, 0) + 1
        return import_id

    def drop(self, import_id: int | None):
        if import_id is not None:
            self._unref_import(import_id)

    def _set_error(self, out_ptr, code, text):
        data = (text or "").encode()
        self.reply = (data, [])
        self._write(out_ptr, len(data).to_bytes(4, "little") + bytes(4))
        return code

    def _host_reply_read(self, buf_ptr, caps_ptr):
        if self.reply is None:
            return abi.E_STATE
        data, handles = self.reply
        self._write(buf_ptr, data)
        self._write_handles(caps_ptr, handles)
        self.reply = None
        return abi.OK

    def _host_release(self, handle):
        entry = self.handles.get(handle)
        if entry is None:
            return abi.E_BADHANDLE
        self.handles.remove(handle)
        if isinstance(entry, _Import):
            self._unref_import(entry.import_id)
        return abi.OK

    def _host_object(self, tag):
        try:
            return self.handles.add(self._local(tag))
        except OverflowError:
            return abi.E_TOOMANY

    def _host_params_read(self, buf_ptr, caps_ptr):
        if not self.frames:
            return abi.E_STATE
        frame = self.frames[-1]
        self._write(buf_ptr, frame.params)
        self._write_handles(caps_ptr, frame.handles)
        return abi.OK

    def _host_results_set(self, ptr, length, c_ptr, c_count):
        if not self.frames or self.frames[-1].results is not None:
            return abi.E_STATE
        raw = self._read(ptr, length)
        handles = self._read_handles(c_ptr, c_count)
        try:
            self.frames[-1].results = (self._guest_content(raw), self._caps_from_handles(handles))
        except _GuestError as e:
            return e.code
        return abi.OK

    def _host_fail(self, ptr, length):
        if not self.frames:
            return abi.E_STATE
        self.frames[-1].error = self._read(ptr, length).decode("utf-8", "replace")
        return abi.OK

    # ------------------------------------------------------------ translation

    def _guest_content(self, raw: bytes) -> Content:
        if not raw:
            return protocol.EMPTY
        if len(raw) > self.max_message_bytes:
            raise _GuestError(abi.E_MESSAGE, f"message of {len(raw)} bytes exceeds the limit")
        try:
            segs = wire.unframe(raw, max_words=self.max_message_bytes // 8)
            wire.resolve(segs, (0, 0))
        except wire.WireError as e:
            raise _GuestError(abi.E_MESSAGE, f"not a Cap'n Proto message: {e}") from None
        return Content.standalone(segs)

    def _for_guest(self, content: Content) -> bytes:
        """Content as the guest receives it: one segment, root struct at word 1."""
        try:
            return content.single_segment_copy(self.max_message_bytes // 8)
        except wire.WireError as e:
            raise _CallError("failed", f"{self.name}: message rejected: {e}") from None

    def _caps_from_handles(self, handles):
        caps = []
        for h in handles:
            if h == 0:
                caps.append(None)
                continue
            entry = self.handles.get(h)
            if entry is None:
                raise _GuestError(abi.E_BADHANDLE, f"handle {h} is not in this compartment's c-list")
            caps.append(RemoteRef(entry.import_id) if isinstance(entry, _Import) else entry)
        return caps

    def _handles_for(self, caps) -> list[int]:
        """New handles for capabilities received; all or none (E_TOOMANY)."""
        added = []
        try:
            for cap in caps:
                added.append(self._handle_for(cap))
        except OverflowError:
            for h in added:
                if h:
                    entry = self.handles.remove(h)
                    if isinstance(entry, _Import):
                        self._unref_import(entry.import_id)
            for cap in caps[len(added):]:
                if isinstance(cap, protocol.Imported):
                    self._import_refs[cap.import_id] = self._import_refs.get(cap.import_id, 0) + 1
                    self._unref_import(cap.import_id)
            raise _GuestError(abi.E_TOOMANY, f"compartment {self.name} holds too many "
                              f"handles (limit {self.handles.limit}); release some") from None
        return added

    def _handle_for(self, cap) -> int:
        if cap is None:
            return 0
        if isinstance(cap, protocol.Imported):
            h = self.handles.add(_Import(cap.import_id))
            self._import_refs[cap.import_id] = self._import_refs.get(cap.import_id, 0) + 1
            return h
        if isinstance(cap, protocol.Exported) and isinstance(cap.obj, LocalObject):
            return self.handles.add(cap.obj)
        return 0  # a promise or our control object: never handed to the guest

    def _unref_import(self, import_id):
        n = self._import_refs.get(import_id, 0) - 1
        if n > 0:
            self._import_refs[import_id] = n
            return
        self._import_refs.pop(import_id, None)
        if import_id in self.conn.imports:
            self._send(self.conn.send_release(import_id))

    def _local(self, tag) -> LocalObject:
        obj = self.objects.get(tag)
        if obj is None:
            obj = self.objects[tag] = LocalObject(tag)
        return obj

    # ------------------------------------------------------------ the loop

    def _send(self, data: bytes):
        """Queue a message; it goes out with the others before we next block."""
        self._outgoing.append(data)

    def _flush(self):
        if self._outgoing:
            data = b"".join(self._outgoing)
            self._outgoing.clear()
            self.sock.sendall(data)

    def serve(self):
        """Serve until the supervisor closes the connection."""
        while self._pump():
            pass

    def _wait_for(self, qid) -> protocol.ReturnReceived:
        while qid not in self.returns:
            if not self._pump():
                raise SystemExit(0)
        return self.returns.pop(qid)

    def _pump(self) -> bool:
        self._flush()
        data = self.sock.recv(1 << 16)
        if not data:
            return False
        try:
            events = self.conn.receive(data)
        except protocol.ProtocolError as e:
            self._send(self.conn.send_abort(str(e)))
            self._flush()
            print(f"wsuper engine {self.name}: protocol error from supervisor: {e}",
                  file=sys.stderr)
            return False
        for ev in events:
            self._on_event(ev)
        return True

    def _on_event(self, ev):
        if isinstance(ev, protocol.BootstrapRequested):
            self._send(self.conn.send_return(ev.answer_id, Content.capability(0),
                                             [self.control]))
        elif isinstance(ev, protocol.CallReceived):
            self._on_call(ev)
        elif isinstance(ev, protocol.ReturnReceived):
            self.returns[ev.question_id] = ev
        elif isinstance(ev, protocol.Unhandled):
            self._send(ev.reply)
        elif isinstance(ev, protocol.AbortReceived):
            raise SystemExit(0)
        # FinishReceived, ExportReleased: nothing to do (the guest is not told).

    def _on_call(self, ev: protocol.CallReceived):
        try:
            if ev.target is self.control:
                if ev.interface_id != ENGINE_INTERFACE:
                    raise _CallError("unimplemented", "not an Engine method")
                content, caps = self._control(ev)
            elif isinstance(ev.target, LocalObject):
                content, caps = self._dispatch(ev)
            else:
                raise _CallError("unimplemented", "promise pipelining into an engine")
        except _CallError as e:
            self._send(self.conn.send_exception(ev.answer_id, e.reason, e.type, no_finish=True))
            return
        except wasi.WasiExit as e:     # proc_exit while serving a call: this instance is done
            if self.wasi is not None:
                self.wasi.flush_all()
            self._send(self.conn.send_exception(
                ev.answer_id, f"compartment {self.name} exited (code {e.code})", "disconnected",
                no_finish=True))
            self._flush()
            raise SystemExit(0) from None
        # The supervisor never pipelines on an engine's answers.
        self._send(self.conn.send_return(ev.answer_id, content, caps, no_finish=True))

    def _control(self, ev):
        if ev.method_id == 0:     # start(grants) -> (main, program)
            granted = []
            for name, index, kind, mount in payloads.read_grants(ev.payload.content):
                cap = ev.payload.caps[index] if index is not None and index < len(ev.payload.caps) \
                    else None
                if isinstance(cap, protocol.Imported):
                    self.grants[name] = self._handle_for(cap)
                    granted.append((name, kind, mount, cap.import_id))
            if self.wasi is not None:
                self.wasi.grant(granted)
            if self.initialize is not None:         # a WASI reactor's constructors
                try:
                    self._guest(self.initialize, fuel=self.limits.fuel_per_call)
                except wasi.WasiExit as e:
                    raise _CallError("failed", f"{self.name}: _initialize called exit({e.code})") \
                        from None
            results = payloads.StartResults.new_message(program=self.start_func is not None)
            if self.exports_main:
                return payloads.with_capability(results), [self._local(0)]
            return Content.standalone(results.to_segments()), []
        if ev.method_id == 1:     # run() -> (exitCode)
            if self.start_func is None:
                raise _CallError("failed", "module has no _start")
            code = 0
            try:
                self._guest(self.start_func, fuel=UNLIMITED_FUEL)
            except wasi.WasiExit as e:               # proc_exit
                code = e.code - (1 << 32) if e.code >= 1 << 31 else e.code
            finally:
                if self.wasi is not None:
                    self.wasi.flush_all()
                if self.call_times:
                    self._report_call_times()
            results = _RunResults.new_message(exitCode=code)
            return Content.standalone(results.to_segments()), []
        raise _CallError("unimplemented", f"Engine method {ev.method_id}")

    def _report_call_times(self):
        """One stderr line: the distribution of this program's outgoing call times."""
        t = sorted(self.call_times)
        self.call_times = []
        pick = lambda q: t[min(len(t) - 1, int(q * len(t)))] / 1000   # noqa: E731
        print(f"call-stats n={len(t)} mean_us={sum(t) / len(t) / 1000:.1f} "
              f"p50_us={pick(0.5):.1f} p99_us={pick(0.99):.1f} max_us={t[-1] / 1000:.1f}",
              file=sys.stderr, flush=True)

    def _dispatch(self, ev):
        if len(self.frames) >= MAX_NESTING:
            raise _CallError("overloaded", f"compartment {self.name}: calls nested deeper than "
                             f"{MAX_NESTING} (a call cycle between compartments?)")
        try:
            handles = self._handles_for(ev.payload.caps)
        except _GuestError as e:
            raise _CallError("overloaded", str(e)) from None
        frame = _Frame(self._for_guest(ev.payload.content), handles)
        self.frames.append(frame)
        outer = self._fresh_instance() if self.per_call else None
        try:
            status = self._guest(self.dispatch, ev.target.tag, _signed64(ev.interface_id),
                                 ev.method_id, len(frame.params), len(frame.handles),
                                 fuel=self.limits.fuel_per_call)
        finally:
            self.frames.pop()
            if outer is not None:
                self.store, self.memory, self.dispatch = outer
        if status != 0 or frame.error is not None:
            raise _CallError("failed", f"{self.name}: {frame.error or f'dispatch returned {status}'}")
        if frame.results is None:
            return protocol.EMPTY, []
        return frame.results

    def _fresh_instance(self):
        """Switch to a new store and instance for this one call (instance = "per_call");
        returns what to switch back to.  Nothing the guest does survives the call."""
        outer = (self.store, self.memory, self.dispatch)
        store = wasmtime.Store(self.wasm_engine)
        store.set_limits(memory_size=self.limits.memory,
                         table_elements=self.limits.table_elements)
        store.set_fuel(self.limits.fuel_per_call)
        try:
            instance = self.instance_pre.instantiate(store)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as e:
            raise _CallError("failed", f"{self.name}: cannot instantiate: {_first_line(e)}") \
                from None
        exports = instance.exports(store)
        self.store, self.memory = store, exports.get(abi.EXPORT_MEMORY)
        self.dispatch = self._dispatch_type.bind(store, exports[abi.EXPORT_DISPATCH])
        if self.initialize is not None:          # a reactor's constructors, every time
            try:
                self._guest(self.initialize.bind(store, exports[abi.EXPORT_INITIALIZE]),
                            fuel=self.limits.fuel_per_call)
            except (_CallError, wasi.WasiExit) as e:
                self.store, self.memory, self.dispatch = outer
                raise _CallError("failed", f"{self.name}: _initialize failed: {e}") from None
        return outer

    def _guest(self, func, *args, fuel: int):
        """Enter the guest with a fresh CPU budget.  A re-entrant call (a callback
        while the guest waits) gets its own budget; the outer one resumes with
        what it had left."""
        self._flush()      # the guest may run for long: let the supervisor have it all
        outer = self.store.get_fuel()
        self.store.set_fuel(fuel)
        try:
            return func(*args)
        except GuestFault as e:
            raise _CallError("failed", f"compartment {self.name} trapped: {e}") from None
        except wasmtime.Trap as e:
            if e.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
                raise _CallError("overloaded", f"compartment {self.name} used up its CPU "
                                 f"budget for this call (fuel_per_call = {fuel})") from None
            raise _CallError("failed", f"compartment {self.name} trapped: {_trap_reason(e)}") \
                from None
        except wasmtime.WasmtimeError as e:
            raise _CallError("failed", f"compartment {self.name} failed: {_first_line(e)}") \
                from None
        finally:
            self.store.set_fuel(outer)


class _GuestError(Exception):
    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


class _CallError(Exception):
    def __init__(self, type, reason):
        super().__init__(reason)
        self.type = type
        self.reason = reason


_RunResults = payloads.method_structs(engine_schema.Engine, "run")[1]


def engine_config() -> wasmtime.Config:
    """The wasmtime configuration of every engine (the zygote compiles with it too)."""
    config = wasmtime.Config()
    config.memory_reservation = 1 << 26     # 64 MiB of address space, not 4 GiB
    config.memory_guard_size = 1 << 16
    config.consume_fuel = True              # CPU per call: see Engine._guest
    config.parallel_compilation = False     # stay single-threaded: see confine.py
    return config


def compile_module(wasm_engine: wasmtime.Engine, path: str) -> wasmtime.Module:
    if path.endswith(".wat"):
        with open(path, encoding="utf-8") as f:
            return wasmtime.Module(wasm_engine, f.read())
    return wasmtime.Module.from_file(wasm_engine, path)


def export_types(module: wasmtime.Module) -> dict:
    """name -> (params, results) of each function the module exports."""
    out = {}
    for exp in module.exports:
        ty = exp.type
        if isinstance(ty, wasmtime.FuncType):
            out[exp.name] = (tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results))
    return out


def describe_imports(module: wasmtime.Module):
    """(module, name, kind, signature) for each import, in abi.check_imports' terms."""
    for imp in module.imports:
        ty = imp.type
        if isinstance(ty, wasmtime.FuncType):
            sig = (tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results))
            yield imp.module, imp.name, "func", sig
        else:
            yield imp.module, imp.name, type(ty).__name__, None


def _trap_reason(trap: wasmtime.Trap) -> str:
    """'wasm `unreachable` instruction executed (in _start)', not wasmtime's first line."""
    lines = [l.strip() for l in str(trap.message).splitlines() if l.strip()]
    cause = next((l.split("wasm trap:", 1)[1].strip() for l in lines if "wasm trap:" in l),
                 lines[-1] if lines else "trap")
    try:
        frames = trap.frames
        where = frames[0].func_name or f"function #{frames[0].func_index}" if frames else None
    except Exception:  # noqa: BLE001 - a backtrace is a nicety; never fail over it
        where = None
    return f"{cause} (in {where})" if where else cause


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _die_with_parent(parent_pid: int):
    """Ask the kernel to SIGKILL us when the supervisor dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:               # it died before we asked
        os._exit(1)


def _arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="wsuper-engine")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--module", required=True)
    ap.add_argument("--exports", action="store_true")
    ap.add_argument("--parent", type=int, default=0)
    ap.add_argument("--stats", action="store_true",
                    help="time outgoing calls; report them on stderr when the program ends")
    ap.add_argument("--per-call", action="store_true",
                    help="a fresh instance of the module for every incoming call")
    for flag in ("memory", "table-elements", "fuel-per-call", "handles", "message-size"):
        ap.add_argument(f"--{flag}", type=int)
    return ap


# Built once, when the zygote imports this module: building a parser costs a few
# milliseconds (gettext looks for translations on disk) that every engine would pay.
_ARGUMENTS = _arguments()


_FLAGS = {"--exports", "--stats", "--per-call"}
_VALUES = {"--fd": int, "--name": str, "--module": str, "--parent": int, "--memory": int,
           "--table-elements": int, "--fuel-per-call": int, "--handles": int,
           "--message-size": int}


def _parse(argv):
    """The supervisor's own argument list, read without argparse (~1 ms per engine);
    anything else goes to argparse, which explains what is wrong."""
    if argv is None:
        return _ARGUMENTS.parse_args(argv)
    values = dict.fromkeys(("fd", "name", "module", "memory", "table_elements",
                            "fuel_per_call", "handles", "message_size"))
    values.update(parent=0, exports=False, stats=False, per_call=False)
    i = 0
    try:
        while i < len(argv):
            flag = argv[i]
            key = flag[2:].replace("-", "_")
            if flag in _FLAGS:
                values[key] = True
                i += 1
            elif flag in _VALUES:
                values[key] = _VALUES[flag](argv[i + 1])
                i += 2
            else:
                raise ValueError(flag)
        if None in (values["fd"], values["name"], values["module"]):
            raise ValueError("missing")
    except (ValueError, IndexError):
        return _ARGUMENTS.parse_args(argv)
    return argparse.Namespace(**values)


def main(argv=None, compiled=None):
    args = _parse(argv)
    limits = Limits(**{k: v for k, v in (
        ("memory", args.memory), ("table_elements", args.table_elements),
        ("fuel_per_call", args.fuel_per_call), ("handles", args.handles),
        ("message_size", args.message_size)) if v is not None})
    if args.parent:
        _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor decides when we stop
    sock = socket.socket(fileno=args.fd)
    try:
        engine = Engine(sock, args.name, args.module, args.exports, limits, compiled,
                        per_call=args.per_call)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if args.stats:
        engine.call_times = []
    engine.confine()
    try:
        engine.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Leave without running library destructors inside the sandbox.
    os._exit(code)
