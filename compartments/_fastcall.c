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
 * to) or is (a structure: its own address). */
static int pointer_in(PyObject *o, void **out) {
  Py_buffer b;
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

typedef struct {
  PyObject *fn;
  int nparams;
  int has_result;
  char kinds[MAX_SLOTS];
} host_fn;

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
  PyGILState_Release(g);
  PyMem_RawFree(h);
}

/* host(fn, kinds, has_result) -> env address, for wasmtime_linker_define_func_unchecked
 * with trampoline() and finalize() (addresses()) */
static PyObject *fc_host(PyObject *mod, PyObject *args) {
  PyObject *fn;
  const char *kinds;
  Py_ssize_t n;
  int has_result;
  if (!PyArg_ParseTuple(args, "Oy#p", &fn, &kinds, &n, &has_result)) return NULL;
  if (n > MAX_SLOTS) {
    PyErr_SetString(PyExc_ValueError, "too many parameters");
    return NULL;
  }
  host_fn *h = PyMem_RawCalloc(1, sizeof *h);
  if (!h) return PyErr_NoMemory();
  h->fn = Py_NewRef(fn);
  h->nparams = (int)n;
  h->has_result = has_result;
  memcpy(h->kinds, kinds, (size_t)n);
  return PyLong_FromVoidPtr(h);
}

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

static PyMethodDef methods[] = {
    {"setup", fc_setup, METH_VARARGS, NULL},
    {"call", (PyCFunction)(void (*)(void))fc_call, METH_FASTCALL, NULL},
    {"host", fc_host, METH_VARARGS, NULL},
    {"addresses", fc_addresses, METH_NOARGS, NULL},
    {"span", fc_span, METH_O, NULL},
    {"fuel", fc_fuel, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastcall", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastcall(void) { return PyModule_Create(&module); }
