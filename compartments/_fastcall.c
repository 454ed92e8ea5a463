/* Native calls into and out of wasm: what compartments/unchecked.py does with
 * ctypes, without ctypes' cost per call (argument conversion objects, a
 * pointer object for every memory lookup, and the GIL released and taken back
 * around every foreign call).
 *
 * It knows nothing of wsuper: it calls wasmtime's C API functions whose
 * addresses unchecked.py hands it (from the library wasmtime-py loaded, after
 * unchecked.py has checked their prototypes), and Python functions that
 * unchecked.py registered as host functions.  Guest values are only passed
 * through as integers; it never reads or writes guest memory itself.
 *
 * Failures are handed back to unchecked.py as they are: a wasmtime error or a
 * trap pointer (CallFailed), which it turns into wasmtime-py's own objects; a
 * Python exception raised by a host function is given to the `stash` callable
 * (wasmtime-py's hand-over) and becomes a trap, exactly like the ctypes
 * trampoline does it. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <structmember.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include "../capnp_schemas/fastwire.h"

typedef union {
  int32_t i32;
  int64_t i64;
  uint8_t bytes[16];
} val_raw;

typedef void *(*call_unchecked_fn)(void *ctx, const void *func, val_raw *args, size_t n,
                                   void **trap);
typedef void *(*caller_context_fn)(void *caller);
typedef uint8_t *(*memory_data_fn)(void *ctx, const void *memory);
typedef size_t (*memory_data_size_fn)(void *ctx, const void *memory);
typedef void *(*trap_new_fn)(const char *msg, size_t len);
typedef void *(*set_fuel_fn)(void *ctx, uint64_t fuel);
typedef void *(*get_fuel_fn)(void *ctx, uint64_t *fuel);

static call_unchecked_fn call_unchecked;
static caller_context_fn caller_context;
static memory_data_fn memory_data;
static memory_data_size_fn memory_data_size;
static trap_new_fn trap_new;
static set_fuel_fn set_fuel;
static get_fuel_fn get_fuel;
static PyObject *stash;            /* stash(exception): wasmtime-py's LAST_EXCEPTION */
static PyObject *CallFailed;       /* CallFailed(is_trap, pointer) */
static _Thread_local void *current; /* the store context of the host call running now */

#define MAX_SLOTS 16
#define KIND_I32 'i'
#define KIND_I64 'I'

/* The pointer a ctypes object holds (a ctypes pointer: the address it points
 * to) or is (a structure: its own address).  None is a closed store's context
 * (unchecked._context): refused as wasmtime's Store._context() refuses it. */
static int pointer_in(PyObject *o, void **out) {
  Py_buffer b;
  if (o == Py_None) {
    PyErr_SetString(PyExc_ValueError, "already closed (the store's context is gone)");
    return -1;
  }
  if (PyObject_GetBuffer(o, &b, PyBUF_SIMPLE)) return -1;
  if (b.len != sizeof(void *)) {
    PyBuffer_Release(&b);
    PyErr_SetString(PyExc_TypeError, "expected a ctypes pointer");
    return -1;
  }
  memcpy(out, b.buf, sizeof(void *));
  PyBuffer_Release(&b);
  return 0;
}

static int address_of(PyObject *o, const void **out) {
  Py_buffer b;
  if (PyObject_GetBuffer(o, &b, PyBUF_SIMPLE)) return -1;
  *out = b.buf;                    /* the structure lives as long as its owner */
  PyBuffer_Release(&b);
  return 0;
}

static int need_setup(void) {
  if (!call_unchecked) {
    PyErr_SetString(PyExc_RuntimeError, "_fastcall.setup() was not called");
    return -1;
  }
  return 0;
}

static PyObject *failed(int is_trap, void *p) {
  PyObject *v = Py_BuildValue("(iK)", is_trap, (unsigned long long)(uintptr_t)p);
  if (v) {
    PyErr_SetObject(CallFailed, v);
    Py_DECREF(v);
  }
  return NULL;
}

/* setup(call_unchecked, caller_context, memory_data, memory_data_size, trap_new,
 *       set_fuel, get_fuel, stash, CallFailed) */
static PyObject *fc_setup(PyObject *mod, PyObject *args) {
  unsigned long long a[7];
  PyObject *s, *cf;
  if (!PyArg_ParseTuple(args, "KKKKKKKOO", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6], &s,
                        &cf))
    return NULL;
  for (int i = 0; i < 7; i++)
    if (!a[i]) {
      PyErr_SetString(PyExc_ValueError, "a wasmtime C API function's address is 0");
      return NULL;
    }
  call_unchecked = (call_unchecked_fn)(uintptr_t)a[0];
  caller_context = (caller_context_fn)(uintptr_t)a[1];
  memory_data = (memory_data_fn)(uintptr_t)a[2];
  memory_data_size = (memory_data_size_fn)(uintptr_t)a[3];
  trap_new = (trap_new_fn)(uintptr_t)a[4];
  set_fuel = (set_fuel_fn)(uintptr_t)a[5];
  get_fuel = (get_fuel_fn)(uintptr_t)a[6];
  Py_XSETREF(stash, Py_NewRef(s));
  Py_XSETREF(CallFailed, Py_NewRef(cf));
  Py_RETURN_NONE;
}

/* call(context, func, kinds, result, *args) -> int | None
 * context: the store's ctypes context pointer; func: its wasmtime_func_t
 * structure; kinds: b"i"/b"I" per parameter (i32, i64); result: 0 none, 'i'
 * or 'I'.  Raises CallFailed((0, error) | (1, trap)). */
static PyObject *fc_call(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
  if (need_setup()) return NULL;
  if (nargs < 4) {
    PyErr_SetString(PyExc_TypeError, "call(context, func, kinds, result, *args)");
    return NULL;
  }
  void *ctx;
  const void *func;
  if (pointer_in(args[0], &ctx) || address_of(args[1], &func)) return NULL;
  if (!PyBytes_Check(args[2])) {
    PyErr_SetString(PyExc_TypeError, "kinds: bytes");
    return NULL;
  }
  const char *kinds = PyBytes_AS_STRING(args[2]);
  Py_ssize_t n = PyBytes_GET_SIZE(args[2]);
  long result = PyLong_AsLong(args[3]);
  if (result == -1 && PyErr_Occurred()) return NULL;
  if (n != nargs - 4 || n > MAX_SLOTS) {
    PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd", n, nargs - 4);
    return NULL;
  }
  val_raw raw[MAX_SLOTS];
  memset(raw, 0, sizeof raw);
  for (Py_ssize_t i = 0; i < n; i++) {
    if (kinds[i] == KIND_I64) {
      long long v = PyLong_AsLongLong(args[4 + i]);
      if (v == -1 && PyErr_Occurred()) return NULL;
      raw[i].i64 = v;
    } else {
      long v = PyLong_AsLong(args[4 + i]);
      if (v == -1 && PyErr_Occurred()) return NULL;
      if (v < INT32_MIN || v > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "argument out of range for i32");
        return NULL;
      }
      raw[i].i32 = (int32_t)v;
    }
  }
  size_t slots = (size_t)(n > 1 ? n : 1);
  void *trap = NULL;
  /* The GIL stays held: host functions run on this thread and need it. */
  void *error = call_unchecked(ctx, func, raw, slots, &trap);
  if (error) return failed(0, error);
  if (trap) return failed(1, trap);
  if (result == KIND_I32) return PyLong_FromLong(raw[0].i32);
  if (result == KIND_I64) return PyLong_FromLongLong(raw[0].i64);
  Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- out of wasm */

/* ---------------------------------------------------------------- guest memory
 *
 * Two host functions of every call, wsuper.params_read and wsuper.results_set,
 * and the reply of every call out, wsuper.reply_read (docs/guest-abi.md), done
 * here without entering Python when the call is plain; compartments/engine.py's
 * _host_params_read, _host_results_set and _host_reply_read stay the
 * definition.  A Guest holds what they need of the engine: its stack of frames
 * (the calls being dispatched), its reply, the memory, the message limit.  The
 * native version only takes the one path on which the Python one ends well
 * with nothing to decide: every bound checked before the first byte is
 * written, no capability to translate, a message that is one segment whose
 * root is null or a near pointer inside it.  Anything else (an error to
 * report, a trap to raise, handles, protected memory, host-call probes on)
 * goes to the Python function, which then does all of it, exactly as it
 * would have: nothing was written or changed before it runs. */

#define NATIVE_NONE 0
#define NATIVE_PARAMS_READ 1
#define NATIVE_RESULTS_SET 2
#define NATIVE_REPLY_READ 3
#define NATIVE_CALL 4
#define ABI_OK 0                   /* compartments/abi.py OK */
#define ABI_MAX_CAPS 256           /* abi.MAX_CAPS */

typedef struct {
  PyObject_HEAD
  PyObject *frames;   /* the engine's list of _Frame (params, handles, results, error);
                         None on top: guest code outside a dispatch runs (E_STATE) */
  PyObject *memory;   /* the memory's wasmtime_memory_t (ctypes), or None: all to Python */
  PyObject *probes;   /* .hostcalls true: all to Python (they time host calls) */
  PyObject *results;  /* results(segment: bytes) -> what frame.results is set to */
  PyObject *owner;    /* the engine: its .reply, (bytes, [handles]) of the last call out */
  Py_ssize_t max_bytes;
  unsigned long long handled; /* host calls done here, for tests and the stats */
  /* wsuper.call natively (native_call_out): the engine's socket, its handle
   * entries' type for an import, wire's native copy(segment, loc, max_words), and
   * owner._call_continued; fd -1: every call out goes to Python */
  int fd;
  PyObject *import_type, *copy, *continued;
  unsigned long long calls_out;      /* calls out done here from start to end */
  unsigned long long calls_handed;   /* begun here, then handed to Python */
} Guest;

static PyObject *s_params, *s_handles, *s_results, *s_hostcalls, *s_reply, *s_until;
static PyObject *s_reply_entries, *s_backlog, *s_outgoing, *s_conn, *s_questions, *s_imports,
    *s_pending_bytes, *s_get, *s_import_id, *s_call_times, *s_read_seq, *s_read_at;

typedef struct {
  PyObject *fn;
  int nparams;
  int has_result;
  char kinds[MAX_SLOTS];
  int native;          /* NATIVE_*: tried first, fn when it declines */
  Guest *guest;
} host_fn;

/* The memory's base and size in `ctx`, once the guest's state says this host call
 * may be done natively; 0: it goes to Python. */
static int guest_memory(Guest *g, void *ctx, uint8_t **base, uint64_t *size) {
  const void *memory;
  if (!g->memory || g->memory == Py_None || !g->probes || !g->owner || !g->results)
    return 0;               /* off, or a Guest never initialised */
  PyObject *on = PyObject_GetAttr(g->probes, s_hostcalls);
  int timed = on ? PyObject_IsTrue(on) : -1;
  Py_XDECREF(on);
  if (timed || address_of(g->memory, &memory)) {   /* on, or could not tell */
    PyErr_Clear();
    return 0;
  }
  *base = memory_data(ctx, memory);
  *size = memory_data_size(ctx, memory);
  return *base != NULL || *size == 0;
}

/* The frame being dispatched now (a new reference: the results callable runs
 * Python code while the native results_set holds it); NULL outside a dispatch:
 * no frame, or None on top (guest code that is not a dispatch runs above the
 * calls being dispatched: Python says E_STATE). */
static PyObject *top_frame(Guest *g) {
  Py_ssize_t n;
  if (!g->frames || !PyList_CheckExact(g->frames) || !(n = PyList_GET_SIZE(g->frames)))
    return NULL;
  PyObject *top = PyList_GET_ITEM(g->frames, n - 1);
  return top == Py_None ? NULL : Py_NewRef(top);
}

/* The guest code running in `ctx` pays for the bytes a host call copies for it,
 * grown from `before` to `after`, as Engine._charge (compartments/engine.py,
 * FREE_COPY): one unit of fuel per 8 bytes past the first 4096 of the host call,
 * spent to 0 at most (it traps at its next check).  params_read, results_set and
 * reply_read copy once each (before 0); a call out twice (its params, then its
 * out_ptr). */
#define FREE_COPY 4096
static int64_t cost_of(uint64_t copied) {
  return copied > FREE_COPY ? (int64_t)((copied - FREE_COPY) >> 3) : 0;
}

static void charge(void *ctx, uint64_t before, uint64_t after) {
  uint64_t left = 0;
  int64_t cost = cost_of(after) - cost_of(before);
  if (cost <= 0 || get_fuel(ctx, &left)) return;
  set_fuel(ctx, left > (uint64_t)cost ? left - (uint64_t)cost : 0);
}

/* data at raw[0], handles (ints) at raw[1], as _write and _write_handles do it;
 * 0, having written nothing, unless every bound and value is good */
static int copy_in(void *ctx, uint8_t *base, uint64_t size, val_raw *raw, PyObject *data,
                   PyObject *handles) {
  if (!data || !handles || !PyBytes_CheckExact(data) || !PyList_CheckExact(handles)) return 0;
  int64_t buf = raw[0].i32, caps = raw[1].i32;
  uint64_t len = (uint64_t)PyBytes_GET_SIZE(data);
  Py_ssize_t nh = PyList_GET_SIZE(handles);
  if (len && (buf < 0 || (uint64_t)buf + len > size)) return 0;
  if (nh && (nh > ABI_MAX_CAPS || caps < 0 || (uint64_t)caps + 4 * (uint64_t)nh > size)) return 0;
  int32_t h[ABI_MAX_CAPS];
  for (Py_ssize_t i = 0; i < nh; i++) {
    PyObject *v = PyList_GET_ITEM(handles, i);
    if (!PyLong_CheckExact(v)) return 0;
    long x = PyLong_AsLong(v);
    if (x < INT32_MIN || x > INT32_MAX || (x == -1 && PyErr_Occurred())) return 0;
    h[i] = (int32_t)x;
  }
  charge(ctx, 0, len + 4 * (uint64_t)nh); /* both copies of the host call, as Python's */
  if (len) memcpy(base + buf, PyBytes_AS_STRING(data), len);
  if (nh) memcpy(base + caps, h, 4 * (size_t)nh);     /* little-endian, as wasm */
  raw[0].i32 = ABI_OK;
  return 1;
}

/* params_read(buf_ptr, caps_ptr): the frame's params at buf_ptr, its handles at caps_ptr */
static int native_params_read(Guest *g, void *ctx, val_raw *raw) {
  uint8_t *base;
  uint64_t size;
  PyObject *frame;
  if (!guest_memory(g, ctx, &base, &size) || !(frame = top_frame(g))) return 0;
  PyObject *params = PyObject_GetAttr(frame, s_params);
  PyObject *handles = PyObject_GetAttr(frame, s_handles);
  int done = copy_in(ctx, base, size, raw, params, handles);
  Py_DECREF(frame);
  Py_XDECREF(params);
  Py_XDECREF(handles);
  PyErr_Clear();
  return done;
}

/* reply_read(buf_ptr, caps_ptr): the reply to the guest's last call out (data, handles),
 * then no reply pending */
static int native_reply_read(Guest *g, void *ctx, val_raw *raw) {
  uint8_t *base;
  uint64_t size;
  if (!guest_memory(g, ctx, &base, &size)) return 0;
  PyObject *reply = PyObject_GetAttr(g->owner, s_reply);
  int done = 0;
  if (reply && PyTuple_CheckExact(reply) && PyTuple_GET_SIZE(reply) == 2 &&
      copy_in(ctx, base, size, raw, PyTuple_GET_ITEM(reply, 0), PyTuple_GET_ITEM(reply, 1)))
    done = !PyObject_SetAttr(g->owner, s_reply, Py_None);
  Py_XDECREF(reply);
  PyErr_Clear();
  return done;
}

/* The guest's message at [ptr, ptr + len) if it is one whole segment inside
 * memory and within the message limit: that segment (its words in *words), or
 * NULL (results_set's results, a call out's params) */
static const uint8_t *one_segment(Guest *g, uint8_t *base, uint64_t size, int64_t ptr,
                                  int64_t len, uint32_t *words) {
  if (len < 16 || ptr < 0 || (uint64_t)(ptr + len) > size || len > g->max_bytes) return NULL;
  const uint8_t *m = base + ptr;
  uint32_t nseg;
  memcpy(&nseg, m, 4);
  memcpy(words, m + 4, 4);
  return nseg == 0 && 8 + 8 * (int64_t)*words == len ? m + 8 : NULL;
}

/* results_set(ptr, length, caps_ptr, caps_count) with no capabilities: the message
 * at ptr, checked as _guest_content checks it, becomes the frame's results */
static int native_results_set(Guest *g, void *ctx, val_raw *raw) {
  uint8_t *base;
  uint64_t size;
  if (!guest_memory(g, ctx, &base, &size)) return 0;
  int64_t len = raw[1].i32;
  uint32_t words;
  const uint8_t *seg = raw[3].i32 != 0 ? NULL
                                       : one_segment(g, base, size, raw[0].i32, len, &words);
  int kind;
  uint64_t start, w;
  if (!seg || fw_resolve(seg, words, 0, &kind, &start, &w) < 0) return 0;
  PyObject *frame = top_frame(g);
  if (!frame) return 0;
  PyObject *before = PyObject_GetAttr(frame, s_results);
  int done = 0;
  if (before != Py_None) goto out;          /* set already: Python says E_STATE */
  PyObject *segment = PyBytes_FromStringAndSize((const char *)seg, 8 * (Py_ssize_t)words);
  PyObject *res = segment ? PyObject_CallOneArg(g->results, segment) : NULL;
  Py_XDECREF(segment);
  if (res && !PyObject_SetAttr(frame, s_results, res)) {
    charge(ctx, 0, (uint64_t)len);
    raw[0].i32 = ABI_OK;
    done = 1;
  }
  Py_XDECREF(res);
out:
  Py_DECREF(frame);
  Py_XDECREF(before);
  PyErr_Clear();
  return done;
}

/* Whether the code running now is a call's that has run past its call_time (the
 * engine's _until, on top, a time.monotonic() deadline): such a host call goes
 * to Python, which fails the call there (Engine._cut_off), as it does for one
 * done in Python. */
static int past_deadline(Guest *g) {
  if (!g->owner) return 0;  /* a Guest never initialised (or cleared): guest_memory
                             * declines it, so the call goes to Python */
  PyObject *until = PyObject_GetAttr(g->owner, s_until);
  int past = 0;
  Py_ssize_t n;
  if (until && PyList_CheckExact(until) && (n = PyList_GET_SIZE(until))) {
    PyObject *top = PyList_GET_ITEM(until, n - 1);
    struct timespec ts;
    if (PyFloat_CheckExact(top) && !clock_gettime(CLOCK_MONOTONIC, &ts))
      past = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 > PyFloat_AS_DOUBLE(top);
  }
  Py_XDECREF(until);
  PyErr_Clear();
  return past;
}

/* ---------------------------------------------------------------- calls out
 *
 * wsuper.call(handle, interface_id, method_id, p_ptr, p_len, c_ptr, c_count,
 * out_ptr), engine.py's _host_call, natively when it is plain: the Call goes
 * out and the first read brings its answer alone.  Python stays the
 * definition and the protocol core (capnp_schemas/protocol.py) the one owner
 * of the connection's tables; this path only takes the case in which the
 * Python path would add an entry to the question table and remove it again
 * within the same host call, with nothing else read, sent or decided:
 *
 *   - declined, nothing written or changed (Python then does all of it):
 *     probes on, memory not set, past the call's deadline (or cancelled),
 *     capabilities passed, a method id outside 0..65535, out_ptr or the
 *     params outside memory, params that are not one whole segment whose root
 *     is null or a near pointer inside it (a part of what _guest_content
 *     accepts: Python decides the rest), a handle that is not an import the
 *     connection holds, an unread reply that holds handles, anything kept
 *     back to handle or to send (the backlog, answers queued), a partly read
 *     message;
 *   - begun: the Call is built as protocol.Connection.send_call and
 *     rpcwire.encode_call build it (fastwire.h fw_forward: the bytes of
 *     Python's _splice, checked by fuzz/callout.py), with a
 *     question id from NATIVE_QID_BASE up that the table does not hold, sent,
 *     and one read is done;
 *   - done: the read is exactly one message, a Return of that question with
 *     results, no capabilities and noFinishNeeded, whose content the wire
 *     copy takes (fw_decode, wire._native.copy: the checks and the bytes of
 *     Python's _on_return, _payload and _for_guest);
 *   - otherwise handed over: owner._call_continued(qid, data, t0, out_ptr,
 *     copied, interface_id, method_id) adopts the question into the table and
 *     goes on from that read as Python's own wait would have. */
#define QID_BASE 0x80000000u  /* protocol.NATIVE_QID_BASE */

static int64_t monotonic_ns(void);

static Py_ssize_t attr_len(PyObject *o, PyObject *name) {
  PyObject *v = PyObject_GetAttr(o, name);
  Py_ssize_t n = v ? PyObject_Size(v) : -1;
  Py_XDECREF(v);
  return n;
}

/* the import id handle `h` names, if it is an import the connection holds; -1 */
static long long import_of(Guest *g, PyObject *conn, int32_t h) {
  PyObject *table = PyObject_GetAttr(g->owner, s_handles);
  PyObject *key = PyLong_FromLong(h);
  PyObject *entry = table && key ? PyObject_CallMethodOneArg(table, s_get, key) : NULL;
  long long id = -1;
  if (entry && Py_TYPE(entry) == (PyTypeObject *)g->import_type) {
    PyObject *v = PyObject_GetAttr(entry, s_import_id);
    PyObject *imports = PyObject_GetAttr(conn, s_imports);
    if (v && imports && PyLong_CheckExact(v) && PyDict_CheckExact(imports) &&
        PyDict_Contains(imports, v) == 1) {
      id = PyLong_AsLongLong(v);
      if (id < 0 || id > UINT32_MAX) id = -1;
    }
    Py_XDECREF(v);
    Py_XDECREF(imports);
  }
  Py_XDECREF(entry);
  Py_XDECREF(key);
  Py_XDECREF(table);
  PyErr_Clear();
  return id;
}

static int send_all(int fd, const uint8_t *p, size_t len) {
  while (len) {
    ssize_t r;
    Py_BEGIN_ALLOW_THREADS
    r = send(fd, p, len, 0);
    Py_END_ALLOW_THREADS
    if (r < 0) {
      if (errno == EINTR && !PyErr_CheckSignals()) continue;
      if (!PyErr_Occurred()) PyErr_SetFromErrno(PyExc_OSError);
      return -1;
    }
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

static ssize_t recv_some(int fd, uint8_t *p, size_t len) {
  for (;;) {
    ssize_t r;
    Py_BEGIN_ALLOW_THREADS
    r = recv(fd, p, len, 0);
    Py_END_ALLOW_THREADS
    if (r >= 0) return r;
    if (errno == EINTR && !PyErr_CheckSignals()) continue;
    if (!PyErr_Occurred()) PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
}

/* the reply of a read that is one whole message, the plain Return of `qid`:
 * its content as the guest reads it (framed bytes); NULL, no error set, else */
static PyObject *plain_reply(Guest *g, const uint8_t *buf, ssize_t len, uint32_t qid) {
  uint32_t table[2];
  fw_plain o;
  if (len < 16 || (len - 8) % 8) return NULL;
  memcpy(table, buf, 8);
  uint64_t n = (uint64_t)(len - 8) / 8;
  if (table[0] != 0 || table[1] != n) return NULL;
  const uint8_t *seg = buf + 8;
  if (fw_decode(seg, n, &o) != FW_RETURN || o.id != qid || !o.no_finish || o.content == 2)
    return NULL;
  PyObject *segment = PyBytes_FromStringAndSize((const char *)seg, 8 * (Py_ssize_t)n);
  PyObject *copied = segment ? PyObject_CallFunction(
      g->copy, "OLn", segment, (long long)(o.content == 1 ? o.content_at : -1),
      g->max_bytes / 8) : NULL;
  Py_XDECREF(segment);
  if (copied && !PyBytes_CheckExact(copied)) Py_CLEAR(copied);   /* None: Python's */
  PyErr_Clear();
  return copied;
}

/* 1 done (raw[0] the result), 0 declined (nothing changed), -1 a Python
 * exception to trap with (as the Python function's would be) */
static int native_call_out(Guest *g, void *ctx, val_raw *raw) {
  uint8_t *base;
  uint64_t size;
  if (g->fd < 0 || !g->copy || !g->continued || !g->import_type ||
      !guest_memory(g, ctx, &base, &size))
    return 0;
  int32_t handle = raw[0].i32, method = raw[2].i32;
  uint64_t iface = (uint64_t)raw[1].i64;
  int64_t plen = raw[4].i32, count = raw[6].i32, out = raw[7].i32;
  if (count != 0 || method < 0 || method > 0xFFFF) return 0;
  if (out < 0 || (uint64_t)out + 8 > size) return 0;
  uint32_t words;
  const uint8_t *params = one_segment(g, base, size, raw[3].i32, plen, &words);
  if (!params) return 0;
  fw_plain o;
  memset(&o, 0, sizeof o);
  int kind;
  uint64_t start, w;
  int r = fw_resolve(params, words, 0, &kind, &start, &w);
  if (r < 0) return 0;
  if (r == 1) {
    o.content = 1;
    o.content_word = w;
    o.content_start = start;
  }
  /* the engine's state: nothing kept back, nothing half read, no reply with handles */
  PyObject *conn = PyObject_GetAttr(g->owner, s_conn);
  PyObject *questions = conn ? PyObject_GetAttr(conn, s_questions) : NULL;
  PyObject *pending = conn ? PyObject_GetAttr(conn, s_pending_bytes) : NULL;
  PyObject *unread = PyObject_GetAttr(g->owner, s_reply);
  Py_ssize_t entries = attr_len(g->owner, s_reply_entries);
  long long import_id = -1;
  uint32_t qid = QID_BASE;
  /* _drop_unread_reply: a reply never read whose handles go is Python's to drop */
  int ok = questions && PyDict_CheckExact(questions) && pending && PyLong_CheckExact(pending) &&
           PyLong_AsLong(pending) == 0 && attr_len(g->owner, s_backlog) == 0 &&
           attr_len(g->owner, s_outgoing) == 0 && unread && entries >= 0 &&
           (unread == Py_None || entries == 0) &&
           (import_id = import_of(g, conn, handle)) >= 0;
  Py_XDECREF(unread);
  for (; ok; qid++) {   /* a question id the table does not hold */
    PyObject *key = PyLong_FromUnsignedLong(qid);
    int in = key ? PyDict_Contains(questions, key) : -1;
    Py_XDECREF(key);
    if (in == 0) break;
    if (in < 0 || qid - QID_BASE >= 1024) ok = 0;
  }
  Py_XDECREF(questions);
  Py_XDECREF(pending);
  Py_XDECREF(conn);
  PyErr_Clear();
  if (!ok) return 0;

  /* begun: from here on the call is made, here or by Python */
  uint64_t n = words, len = fw_forward_size(&o, n, 1);
  uint8_t *msg = PyMem_Malloc(len);
  uint8_t *buf = PyMem_Malloc(1 << 16);
  if (!msg || !buf) {
    PyMem_Free(msg);
    PyMem_Free(buf);
    return 0;
  }
  fw_forward(msg, params, n, &o, 1, qid, (uint32_t)import_id, iface, (uint32_t)method, 0);
  uint64_t copied = (uint64_t)plen + 8;      /* out_ptr checked, the params read */
  charge(ctx, 0, copied);
  /* _drop_unread_reply: no reply pending, and no entries of one (read, or without
   * handles) */
  PyObject *cleared = entries ? PyList_New(0) : NULL;
  if (PyObject_SetAttr(g->owner, s_reply, Py_None) ||
      (cleared && PyObject_SetAttr(g->owner, s_reply_entries, cleared)))
    PyErr_Clear();
  Py_XDECREF(cleared);
  int64_t t0 = monotonic_ns();
  int result = -1;
  ssize_t got = -1;
  PyObject *reply = NULL, *data = NULL;
  if (send_all(g->fd, msg, len) == 0) got = recv_some(g->fd, buf, 1 << 16);
  PyMem_Free(msg);
  if (got < 0) {
    /* the question is out (or may be): the table holds it, as Python's would */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *conn2 = PyObject_GetAttr(g->owner, s_conn);
    PyObject *rv = conn2 ? PyObject_CallMethod(conn2, "adopt_question", "k",
                                               (unsigned long)qid) : NULL;
    Py_XDECREF(rv);
    Py_XDECREF(conn2);
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
    goto out;
  }
  reply = plain_reply(g, buf, got, qid);
  if (reply) {
    PyObject *tuple = NULL, *no_handles = PyList_New(0);
    if (no_handles) tuple = PyTuple_Pack(2, reply, no_handles);
    Py_XDECREF(no_handles);
    if (!tuple || PyObject_SetAttr(g->owner, s_reply, tuple)) {
      Py_XDECREF(tuple);
      goto out;         /* out of memory: trap */
    }
    Py_DECREF(tuple);
    charge(ctx, copied, copied + 8);
    uint32_t lens[2] = {(uint32_t)PyBytes_GET_SIZE(reply), 0};
    memcpy(base + out, lens, 8);    /* no guest code ran: memory is where it was */
    int64_t now = monotonic_ns();
    PyObject *times = PyObject_GetAttr(g->owner, s_call_times);
    if (times && PyList_CheckExact(times)) {
      PyObject *dt = PyLong_FromLongLong(now - t0);
      if (!dt || PyList_Append(times, dt)) PyErr_Clear();
      Py_XDECREF(dt);
    }
    Py_XDECREF(times);
    PyObject *seq = PyObject_GetAttr(g->owner, s_read_seq);   /* _received_seq */
    long long k = seq && PyLong_CheckExact(seq) ? PyLong_AsLongLong(seq) : -1;
    PyObject *next = k >= 0 ? PyLong_FromLongLong(k + 1) : NULL;
    PyObject *at = PyLong_FromLongLong(now);
    if (!next || !at || PyObject_SetAttr(g->owner, s_read_seq, next) ||
        PyObject_SetAttr(g->owner, s_read_at, at))
      PyErr_Clear();
    Py_XDECREF(seq);
    Py_XDECREF(next);
    Py_XDECREF(at);
    raw[0].i32 = ABI_OK;
    g->calls_out++;
    result = 1;
    goto out;
  }
  data = PyBytes_FromStringAndSize((const char *)buf, got);
  if (!data) goto out;
  g->calls_handed++;
  PyObject *rv = PyObject_CallFunction(g->continued, "kOLLKKi", (unsigned long)qid, data,
                                       (long long)t0, (long long)out,
                                       (unsigned long long)copied,
                                       (unsigned long long)iface, (int)method);
  if (rv) {
    int overflow = 0;
    long v = PyLong_Check(rv) ? PyLong_AsLongAndOverflow(rv, &overflow) : 0;
    if (!PyLong_Check(rv) || overflow || v < INT32_MIN || v > INT32_MAX) {
      if (!PyErr_Occurred())
        PyErr_Format(PyExc_TypeError, "_call_continued returned %R, not an i32", rv);
    } else {
      raw[0].i32 = (int32_t)v;
      result = 1;
    }
    Py_DECREF(rv);
  }
out:
  Py_XDECREF(reply);
  Py_XDECREF(data);
  PyMem_Free(buf);
  return result;
}

static int native_call(host_fn *h, val_raw *raw) {
  if (past_deadline(h->guest)) return 0;
  if (h->native == NATIVE_CALL) return native_call_out(h->guest, current, raw);
  int done = h->native == NATIVE_PARAMS_READ   ? native_params_read(h->guest, current, raw)
             : h->native == NATIVE_RESULTS_SET ? native_results_set(h->guest, current, raw)
             : h->native == NATIVE_REPLY_READ  ? native_reply_read(h->guest, current, raw)
                                               : 0;
  if (done) h->guest->handled++;
  return done;
}

static void *python_exception_trap(void) {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb && value) PyException_SetTraceback(value, tb);
  PyObject *r = PyObject_CallOneArg(stash, value ? value : Py_None);
  Py_XDECREF(r);
  PyErr_Clear();
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  static const char msg[] = "python exception";
  return trap_new(msg, sizeof msg - 1);
}

static void *trampoline(void *env, void *caller, val_raw *raw, size_t nraw) {
  host_fn *h = env;
  PyGILState_STATE g = PyGILState_Ensure();
  void *outer = current;
  current = caller_context(caller);
  void *trap = NULL;
  int native = h->native ? native_call(h, raw) : 0;
  if (native) {            /* done natively; -1: a Python exception to trap with */
    void *failed_with = native < 0 ? python_exception_trap() : NULL;
    current = outer;
    PyGILState_Release(g);
    return failed_with;
  }
  PyObject *argv[MAX_SLOTS];
  int made = 0;
  for (; made < h->nparams; made++) {
    argv[made] = h->kinds[made] == KIND_I64 ? PyLong_FromLongLong(raw[made].i64)
                                            : PyLong_FromLong(raw[made].i32);
    if (!argv[made]) break;
  }
  PyObject *r = made == h->nparams ? PyObject_Vectorcall(h->fn, argv, (size_t)made, NULL) : NULL;
  for (int i = 0; i < made; i++) Py_DECREF(argv[i]);
  if (r && h->has_result) {
    int overflow = 0;
    long v = PyLong_Check(r) ? PyLong_AsLongAndOverflow(r, &overflow) : 0;
    if (!PyLong_Check(r)) {
      PyErr_Format(PyExc_TypeError, "host function result %R is not an int", r);
    } else if (overflow || v < INT32_MIN || v > INT32_MAX) {
      PyErr_Format(PyExc_OverflowError, "host function result %R is not an i32", r);
    } else {
      raw[0].i32 = (int32_t)v;
    }
  }
  Py_XDECREF(r);
  if (!r || PyErr_Occurred()) trap = python_exception_trap();
  current = outer;
  PyGILState_Release(g);
  return trap;
}

static void finalize(void *env) {
  host_fn *h = env;
  PyGILState_STATE g = PyGILState_Ensure();
  Py_XDECREF(h->fn);
  Py_XDECREF(h->guest);
  PyGILState_Release(g);
  PyMem_RawFree(h);
}

static PyTypeObject GuestType;

/* host(fn, kinds, has_result[, native, guest]) -> env address, for
 * wasmtime_linker_define_func_unchecked with trampoline() and finalize()
 * (addresses()).  native: NATIVE_PARAMS_READ, NATIVE_RESULTS_SET or
 * NATIVE_REPLY_READ, done with `guest`'s state when it can be, else by fn. */
static PyObject *fc_host(PyObject *mod, PyObject *args) {
  PyObject *fn, *guest = Py_None;
  const char *kinds;
  Py_ssize_t n;
  int has_result, native = NATIVE_NONE;
  if (!PyArg_ParseTuple(args, "Oy#p|iO", &fn, &kinds, &n, &has_result, &native, &guest))
    return NULL;
  if (n > MAX_SLOTS) {
    PyErr_SetString(PyExc_ValueError, "too many parameters");
    return NULL;
  }
  static const int arity[] = {0, 2, 4, 2, 8};
  if (native && (native < 0 || native > NATIVE_CALL || n != arity[native] ||
                 !has_result || !PyObject_TypeCheck(guest, &GuestType))) {
    PyErr_SetString(PyExc_ValueError, "native: params_read(i32, i32), results_set(4 x i32), "
                                      "reply_read(i32, i32) or call(i32, i64, 6 x i32), "
                                      "with a Guest");
    return NULL;
  }
  for (Py_ssize_t i = 0; native && i < n; i++)
    if (kinds[i] != (native == NATIVE_CALL && i == 1 ? KIND_I64 : KIND_I32)) {
      PyErr_SetString(PyExc_ValueError, "native host functions take i32 parameters "
                                        "(call: its interface id an i64)");
      return NULL;
    }
  host_fn *h = PyMem_RawCalloc(1, sizeof *h);
  if (!h) return PyErr_NoMemory();
  h->fn = Py_NewRef(fn);
  h->nparams = (int)n;
  h->has_result = has_result;
  memcpy(h->kinds, kinds, (size_t)n);
  h->native = native;
  h->guest = native ? (Guest *)Py_NewRef(guest) : NULL;
  return PyLong_FromVoidPtr(h);
}

/* Guest(owner, frames, probes, max_bytes, results): memory starts as None (all to
 * Python) */
static int guest_init(Guest *self, PyObject *args, PyObject *kw) {
  PyObject *owner, *frames, *probes, *results;
  Py_ssize_t max_bytes;
  if (!PyArg_ParseTuple(args, "OO!OnO", &owner, &PyList_Type, &frames, &probes, &max_bytes,
                        &results))
    return -1;
  if (max_bytes < 0) {
    PyErr_SetString(PyExc_ValueError, "max_bytes < 0");
    return -1;
  }
  Py_XSETREF(self->owner, Py_NewRef(owner));
  Py_XSETREF(self->frames, Py_NewRef(frames));
  Py_XSETREF(self->probes, Py_NewRef(probes));
  Py_XSETREF(self->results, Py_NewRef(results));
  Py_XSETREF(self->memory, Py_NewRef(Py_None));
  self->max_bytes = max_bytes;
  self->fd = -1;
  return 0;
}

static int guest_traverse(Guest *self, visitproc visit, void *arg) {
  Py_VISIT(self->owner);
  Py_VISIT(self->frames);
  Py_VISIT(self->memory);
  Py_VISIT(self->probes);
  Py_VISIT(self->results);
  Py_VISIT(self->import_type);
  Py_VISIT(self->copy);
  Py_VISIT(self->continued);
  return 0;
}

static int guest_clear(Guest *self) {
  Py_CLEAR(self->owner);
  Py_CLEAR(self->frames);
  Py_CLEAR(self->memory);
  Py_CLEAR(self->probes);
  Py_CLEAR(self->results);
  Py_CLEAR(self->import_type);
  Py_CLEAR(self->copy);
  Py_CLEAR(self->continued);
  return 0;
}

static void guest_dealloc(Guest *self) {
  PyObject_GC_UnTrack(self);
  guest_clear(self);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *guest_get_memory(Guest *self, void *closure) {
  return Py_NewRef(self->memory ? self->memory : Py_None);
}

static int guest_set_memory(Guest *self, PyObject *v, void *closure) {
  const void *unused;
  if (!v) v = Py_None;
  if (v != Py_None && address_of(v, &unused)) return -1;   /* a ctypes structure */
  Py_XSETREF(self->memory, Py_NewRef(v));
  return 0;
}

static PyObject *guest_get_call_out(Guest *self, void *closure) {
  if (self->fd < 0) Py_RETURN_NONE;
  return Py_BuildValue("(iOOO)", self->fd, self->import_type, self->copy, self->continued);
}

/* call_out = (fd, import type, copy, continued), or None: calls out all to Python */
static int guest_set_call_out(Guest *self, PyObject *v, void *closure) {
  int fd;
  PyObject *type, *copy, *continued;
  if (!v || v == Py_None) {
    self->fd = -1;
    Py_CLEAR(self->import_type);
    Py_CLEAR(self->copy);
    Py_CLEAR(self->continued);
    return 0;
  }
  if (!PyArg_ParseTuple(v, "iO!OO", &fd, &PyType_Type, &type, &copy, &continued)) return -1;
  if (fd < 0 || !PyCallable_Check(copy) || !PyCallable_Check(continued)) {
    PyErr_SetString(PyExc_ValueError, "call_out: (fd >= 0, type, copy, continued)");
    return -1;
  }
  Py_XSETREF(self->import_type, Py_NewRef(type));
  Py_XSETREF(self->copy, Py_NewRef(copy));
  Py_XSETREF(self->continued, Py_NewRef(continued));
  self->fd = fd;
  return 0;
}

static PyGetSetDef guest_getset[] = {
    {"memory", (getter)guest_get_memory, (setter)guest_set_memory,
     "the wasmtime_memory_t (ctypes) of the memory host calls use; None: all to Python", NULL},
    {"call_out", (getter)guest_get_call_out, (setter)guest_set_call_out,
     "(socket fd, import entry type, wire copy, continued) for wsuper.call natively; None: "
     "all to Python", NULL},
    {NULL}};

static PyMemberDef guest_members[] = {
    {"handled", T_ULONGLONG, offsetof(Guest, handled), READONLY,
     "host calls done natively so far"},
    {"calls_out", T_ULONGLONG, offsetof(Guest, calls_out), READONLY,
     "calls out done natively from start to end"},
    {"calls_handed", T_ULONGLONG, offsetof(Guest, calls_handed), READONLY,
     "calls out begun natively and handed to Python (_call_continued)"},
    {NULL}};

static PyTypeObject GuestType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "compartments._fastcall.Guest",
    .tp_basicsize = sizeof(Guest),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)guest_init,
    .tp_dealloc = (destructor)guest_dealloc,
    .tp_traverse = (traverseproc)guest_traverse,
    .tp_clear = (inquiry)guest_clear,
    .tp_getset = guest_getset,
    .tp_members = guest_members,
};

static PyObject *fc_addresses(PyObject *mod, PyObject *unused) {
  return Py_BuildValue("(KK)", (unsigned long long)(uintptr_t)trampoline,
                       (unsigned long long)(uintptr_t)finalize);
}

/* span(memory) -> (base, size) of a memory (its wasmtime_memory_t structure) in the
 * context of the host call running now */
static PyObject *fc_span(PyObject *mod, PyObject *arg) {
  if (need_setup()) return NULL;
  const void *memory;
  if (address_of(arg, &memory)) return NULL;
  if (!current) {
    PyErr_SetString(PyExc_RuntimeError, "no host call is running");
    return NULL;
  }
  uint8_t *base = memory_data(current, memory);
  size_t size = memory_data_size(current, memory);
  return Py_BuildValue("(Kn)", (unsigned long long)(uintptr_t)base, (Py_ssize_t)size);
}

/* fuel(context, set) -> the fuel left before setting it to `set` (-1: only read) */
static PyObject *fc_fuel(PyObject *mod, PyObject *args) {
  if (need_setup()) return NULL;
  PyObject *c;
  long long to;
  if (!PyArg_ParseTuple(args, "OL", &c, &to)) return NULL;
  void *ctx;
  if (pointer_in(c, &ctx)) return NULL;
  uint64_t left = 0;
  void *error = get_fuel(ctx, &left);
  if (!error && to >= 0) error = set_fuel(ctx, (uint64_t)to);
  if (error) return failed(0, error);
  return PyLong_FromUnsignedLongLong(left);
}

/* ---------------------------------------------------------------- instances
 *
 * A per_call compartment's instance of every call (compartments/engine.py,
 * _start_instance): made from its InstancePre, and only the exports the engine
 * uses looked up, by name.  wasmtime-py's Instance.exports wraps every export
 * of the instance in Python objects, with a C call and a ctypes name string
 * each (~19 us a call for a module of two exports). */

typedef void *(*pre_instantiate_fn)(const void *pre, void *ctx, void *instance, void **trap);
typedef int (*export_get_fn)(void *ctx, const void *instance, const char *name, size_t len,
                             void *item);   /* bool */

typedef void (*store_limiter_fn)(void *store, int64_t memory_size, int64_t table_elements,
                                 int64_t instances, int64_t tables, int64_t memories);
typedef void (*set_epoch_deadline_ctx_fn)(void *ctx, uint64_t ticks);

static pre_instantiate_fn pre_instantiate;
static export_get_fn export_get;
static store_limiter_fn store_limiter;
static set_epoch_deadline_ctx_fn store_epoch_deadline;

/* instances(wasmtime_instance_pre_instantiate, wasmtime_instance_export_get,
 *           wasmtime_store_limiter, wasmtime_context_set_epoch_deadline) */
static PyObject *fc_instances(PyObject *mod, PyObject *args) {
  unsigned long long a, b, c, d;
  if (!PyArg_ParseTuple(args, "KKKK", &a, &b, &c, &d)) return NULL;
  if (!a || !b || !c || !d) {
    PyErr_SetString(PyExc_ValueError, "a wasmtime C API function's address is 0");
    return NULL;
  }
  pre_instantiate = (pre_instantiate_fn)(uintptr_t)a;
  export_get = (export_get_fn)(uintptr_t)b;
  store_limiter = (store_limiter_fn)(uintptr_t)c;
  store_epoch_deadline = (set_epoch_deadline_ctx_fn)(uintptr_t)d;
  Py_RETURN_NONE;
}

/* store(store, context, fuel, epoch_deadline, memory_size, table_elements, memories)
 * A new store's limits (as Store.set_limits: the others left unset), its fuel,
 * and its epoch deadline (ticks from now).  Raises CallFailed((0, error)). */
static PyObject *fc_store(PyObject *mod, PyObject *args) {
  if (need_setup()) return NULL;
  if (!store_limiter) {
    PyErr_SetString(PyExc_RuntimeError, "_fastcall.instances() was not called");
    return NULL;
  }
  PyObject *st, *c;
  unsigned long long fuel, ticks;
  long long memory_size, table_elements, memories;
  if (!PyArg_ParseTuple(args, "OOKKLLL", &st, &c, &fuel, &ticks, &memory_size, &table_elements,
                        &memories))
    return NULL;
  void *store, *ctx;
  if (pointer_in(st, &store) || pointer_in(c, &ctx)) return NULL;
  store_limiter(store, memory_size, table_elements, -1, -1, memories);
  void *error = set_fuel(ctx, fuel);
  if (error) return failed(0, error);
  store_epoch_deadline(ctx, ticks);
  Py_RETURN_NONE;
}

static int writable_of(PyObject *o, void **out, Py_ssize_t size) {
  Py_buffer b;
  if (PyObject_GetBuffer(o, &b, PyBUF_WRITABLE)) return -1;
  if (b.len != size) {
    PyBuffer_Release(&b);
    PyErr_SetString(PyExc_TypeError, "a structure of the wrong size");
    return -1;
  }
  *out = b.buf;                    /* the structure lives as long as its owner */
  PyBuffer_Release(&b);
  return 0;
}

/* instantiate(pre, context, instance, names, items, instance_size, item_size) -> found
 * pre: the InstancePre's ctypes pointer; context: the store's; instance: the
 * wasmtime_instance_t structure it fills; names: a tuple of bytes, the exports
 * to look up; items: an array of as many wasmtime_extern_t structures, item i
 * filled if names[i] is found.  Returns a bit mask of the names found (bit i: names[i]).
 * Raises CallFailed((0, error) | (1, trap)) if instantiation fails. */
static PyObject *fc_instantiate(PyObject *mod, PyObject *args) {
  if (need_setup()) return NULL;
  if (!pre_instantiate) {
    PyErr_SetString(PyExc_RuntimeError, "_fastcall.instances() was not called");
    return NULL;
  }
  PyObject *p, *c, *inst, *names, *items;
  Py_ssize_t instance_size, item_size;
  if (!PyArg_ParseTuple(args, "OOOO!Onn", &p, &c, &inst, &PyTuple_Type, &names, &items,
                        &instance_size, &item_size))
    return NULL;
  void *pre, *ctx, *instance;
  if (pointer_in(p, &pre) || pointer_in(c, &ctx) || writable_of(inst, &instance, instance_size))
    return NULL;
  Py_ssize_t n = PyTuple_GET_SIZE(names);
  if (n > 62) {
    PyErr_SetString(PyExc_TypeError, "at most 62 names");
    return NULL;
  }
  uint8_t *out;
  for (Py_ssize_t i = 0; i < n; i++)
    if (!PyBytes_Check(PyTuple_GET_ITEM(names, i))) {
      PyErr_SetString(PyExc_TypeError, "names: bytes");
      return NULL;
    }
  if (writable_of(items, (void **)&out, item_size * n)) return NULL;
  void *trap = NULL;
  /* The GIL stays held: the start function's host calls run on this thread. */
  void *error = pre_instantiate(pre, ctx, instance, &trap);
  if (error) return failed(0, error);
  if (trap) return failed(1, trap);
  unsigned long long found = 0;
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *name = PyTuple_GET_ITEM(names, i);
    if (export_get(ctx, instance, PyBytes_AS_STRING(name), (size_t)PyBytes_GET_SIZE(name),
                   out + i * item_size))
      found |= 1ULL << i;
  }
  return PyLong_FromUnsignedLongLong(found);
}

/* ---------------------------------------------------------------- deadlines
 *
 * A call's code is stopped once it runs past its deadline (its call_time), in
 * wasm too, where no host call comes to cut it off: wasmtime's epoch
 * interruption (compartments/wasm.py, engine_config) checks the engine's epoch
 * at every function entry and loop back-edge, and traps (TrapCode.INTERRUPT)
 * once it reaches the store's deadline.  The epoch moves only here, and only
 * when a deadline has passed: SIGALRM (ITIMER_REAL, this process's own alarm)
 * rings at the deadline of the guest code running now, and its handler
 * increments the epoch if that deadline has passed, else sets the alarm again
 * for it.  Engine._guest says, at each entry into guest code and each return to
 * the code beneath, which store runs and until when (deadline()).
 *
 * An engine has one thread (confine.py), so the handler interrupts the only
 * code that sets these; what it reads is a whole 64-bit word (atomics).  A
 * steady stream of calls sets no alarm: the one set for an earlier deadline
 * rings, finds the new one, and is set again for it (one system call per
 * call_time, not per call).  The handler uses only async-signal-safe calls
 * (clock_gettime, setitimer) and wasmtime_engine_increment_epoch, which is an
 * atomic add.  It is installed with SA_RESTART: the engine's blocking reads go
 * on as if nothing rang (Python does not see this signal at all). */
typedef void (*increment_epoch_fn)(const void *engine);
typedef void (*set_epoch_deadline_fn)(void *ctx, uint64_t ticks);

static increment_epoch_fn increment_epoch;
static set_epoch_deadline_fn set_epoch_deadline;
/* the wasmtime engines whose stores run guest code: the compartment's, and for
 * instance = "per_call" the pooling one of its calls' instances (engine.py,
 * _Pool); a store's deadline is counted in its own engine's epochs */
static const void *epoch_engines[2];
static _Atomic int64_t deadline_at;     /* CLOCK_MONOTONIC ns of the running code's; 0 none */
static _Atomic int64_t alarm_at;        /* what the alarm is set for; 0: not set */

/* far enough never to be reached: the epoch moves once per deadline that passed */
#define NO_DEADLINE (UINT64_C(1) << 48)

static int64_t monotonic_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void ring_in(int64_t ns) {
  struct itimerval v;
  memset(&v, 0, sizeof v);
  if (ns < 1000) ns = 1000;
  v.it_value.tv_sec = ns / 1000000000;
  v.it_value.tv_usec = (ns % 1000000000) / 1000;
  setitimer(ITIMER_REAL, &v, NULL);
}

static void increment_epochs(void) {
  for (int i = 0; i < 2; i++)
    if (epoch_engines[i]) increment_epoch(epoch_engines[i]);
}

static void on_alarm(int sig) {
  (void)sig;
  int saved = errno;
  int64_t at = atomic_load(&deadline_at);
  if (!at) {
    atomic_store(&alarm_at, 0);
  } else {
    int64_t now = monotonic_ns();
    if (now >= at) {
      atomic_store(&alarm_at, 0);
      increment_epochs();
    } else {
      atomic_store(&alarm_at, at);
      ring_in(at - now);
    }
  }
  errno = saved;
}

/* deadlines(engine, increment_epoch, set_epoch_deadline, other=0): installs the
 * alarm's handler for the wasmtime engine at `engine` (its wasm_engine_t
 * address) and `other`, a second engine of the process's stores, if not 0. */
static PyObject *fc_deadlines(PyObject *mod, PyObject *args) {
  unsigned long long e, inc, set, other = 0;
  if (!PyArg_ParseTuple(args, "KKK|K", &e, &inc, &set, &other)) return NULL;
  if (!e || !inc || !set) {
    PyErr_SetString(PyExc_ValueError, "a wasmtime engine or C API function's address is 0");
    return NULL;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  atomic_store(&deadline_at, 0);
  atomic_store(&alarm_at, 0);
  epoch_engines[0] = (const void *)(uintptr_t)e;
  epoch_engines[1] = (const void *)(uintptr_t)other;
  increment_epoch = (increment_epoch_fn)(uintptr_t)inc;
  set_epoch_deadline = (set_epoch_deadline_fn)(uintptr_t)set;
  if (sigaction(SIGALRM, &sa, NULL)) return PyErr_SetFromErrno(PyExc_OSError);
  Py_RETURN_NONE;
}

/* deadline(context, at) -> None: the guest code that runs now (or goes on now)
 * is in the store of `context` and must stop at `at` (time.monotonic()
 * seconds; None: no deadline).  Sets the store's epoch deadline to the next
 * tick; a deadline already passed moves the epoch at once (the code traps at
 * its first check). */
static PyObject *fc_deadline(PyObject *mod, PyObject *args) {
  PyObject *c, *until;
  if (!PyArg_ParseTuple(args, "OO", &c, &until)) return NULL;
  if (!set_epoch_deadline) {
    PyErr_SetString(PyExc_RuntimeError, "_fastcall.deadlines() was not called");
    return NULL;
  }
  void *ctx;
  if (pointer_in(c, &ctx)) return NULL;
  int64_t at = 0;
  if (until != Py_None) {
    double s = PyFloat_AsDouble(until);
    if (s == -1.0 && PyErr_Occurred()) return NULL;
    at = s <= 0 ? 1 : s >= 9e9 ? INT64_MAX : (int64_t)(s * 1e9);
    if (at <= 0) at = 1;
  }
  atomic_store(&deadline_at, at);
  set_epoch_deadline(ctx, at ? 1 : NO_DEADLINE);
  if (at) {
    int64_t now = monotonic_ns();
    if (now >= at) {
      increment_epochs();
    } else {
      int64_t armed = atomic_load(&alarm_at);
      if (!armed || armed > at) {
        atomic_store(&alarm_at, at);
        ring_in(at - now);
      }
    }
  }
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", fc_setup, METH_VARARGS, NULL},
    {"call", (PyCFunction)(void (*)(void))fc_call, METH_FASTCALL, NULL},
    {"instances", fc_instances, METH_VARARGS, NULL},
    {"instantiate", fc_instantiate, METH_VARARGS, NULL},
    {"store", fc_store, METH_VARARGS, NULL},
    {"host", fc_host, METH_VARARGS, NULL},
    {"addresses", fc_addresses, METH_NOARGS, NULL},
    {"span", fc_span, METH_O, NULL},
    {"fuel", fc_fuel, METH_VARARGS, NULL},
    {"deadlines", fc_deadlines, METH_VARARGS, NULL},
    {"deadline", fc_deadline, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastcall", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastcall(void) {
  if (PyType_Ready(&GuestType) < 0) return NULL;
  s_params = PyUnicode_InternFromString("params");
  s_handles = PyUnicode_InternFromString("handles");
  s_results = PyUnicode_InternFromString("results");
  s_hostcalls = PyUnicode_InternFromString("hostcalls");
  s_reply = PyUnicode_InternFromString("reply");
  s_until = PyUnicode_InternFromString("_until");
  if (!s_params || !s_handles || !s_results || !s_hostcalls || !s_reply || !s_until)
    return NULL;
  const char *names[] = {"_reply_entries", "_backlog", "_outgoing", "conn", "questions",
                         "imports", "pending_bytes", "get", "import_id", "call_times",
                         "_read_seq", "_read_at"};
  PyObject **slots[] = {&s_reply_entries, &s_backlog, &s_outgoing, &s_conn, &s_questions,
                        &s_imports, &s_pending_bytes, &s_get, &s_import_id, &s_call_times,
                        &s_read_seq, &s_read_at};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (!(*slots[i] = PyUnicode_InternFromString(names[i]))) return NULL;
  PyObject *m = PyModule_Create(&module);
  if (!m) return NULL;
  if (PyModule_AddObjectRef(m, "Guest", (PyObject *)&GuestType) < 0 ||
      PyModule_AddIntConstant(m, "PARAMS_READ", NATIVE_PARAMS_READ) < 0 ||
      PyModule_AddIntConstant(m, "RESULTS_SET", NATIVE_RESULTS_SET) < 0 ||
      PyModule_AddIntConstant(m, "REPLY_READ", NATIVE_REPLY_READ) < 0 ||
      PyModule_AddIntConstant(m, "CALL", NATIVE_CALL) < 0) {
    Py_DECREF(m);
    return NULL;
  }
  return m;
}
