/* Native versions of the hot paths of wire.py, rpcwire.py and protocol.py's
 * splice, for one-segment messages (what engines and most peers send).  Each
 * returns None where it does not apply, and the Python code then runs: the
 * results are byte for byte the Python ones (fuzz/protocol.py compares them).
 * The wire code itself is fastwire.h, shared with the supervisor's fast lane. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fastwire.h"

/* decode(segment) -> None | (which, id, import_id, interface_id, method_id, no_finish,
 *                            release, content_at, content, content_word, content_start)
 * which: 1 call, 2 return, 3 finish; content_at: -1 when the payload has no content
 * pointer */
static PyObject *fw_py_decode(PyObject *mod, PyObject *arg) {
  Py_buffer b;
  if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE)) return NULL;
  PyObject *out = NULL;
  fw_plain o;
  int k = b.len % 8 ? 0 : fw_decode(b.buf, (uint64_t)b.len / 8, &o);
  if (k)
    out = Py_BuildValue("(iIIKIiiLiKK)", k, o.id, o.import_id, (unsigned long long)o.interface_id,
                        o.method_id, o.no_finish, o.release, (long long)o.content_at, o.content,
                        (unsigned long long)o.content_word, (unsigned long long)o.content_start);
  else
    out = Py_NewRef(Py_None);
  PyBuffer_Release(&b);
  return out;
}

/* forward(segment, id, import_id, interface_id, method_id, no_finish) -> framed bytes:
 * what the fast lane writes for a plain call (or return) */
static PyObject *fw_py_forward(PyObject *mod, PyObject *args) {
  Py_buffer b;
  unsigned long id, import_id, method_id;
  unsigned long long iface;
  int no_finish;
  if (!PyArg_ParseTuple(args, "y*kkKkp", &b, &id, &import_id, &iface, &method_id, &no_finish))
    return NULL;
  PyObject *out = NULL;
  fw_plain o;
  int k = b.len % 8 ? 0 : fw_decode(b.buf, (uint64_t)b.len / 8, &o);
  if (!k || k == FW_FINISH) {
    PyErr_SetString(PyExc_ValueError, "not a plain call or return");
  } else {
    uint64_t n = (uint64_t)b.len / 8, size = fw_forward_size(&o, n, k == FW_CALL);
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (out)
      fw_forward((uint8_t *)PyBytes_AS_STRING(out), b.buf, n, &o, k == FW_CALL, (uint32_t)id,
                 (uint32_t)import_id, iface, (uint32_t)method_id, no_finish);
  }
  PyBuffer_Release(&b);
  return out;
}

/* copy(segment, loc, max_words) -> framed bytes | None: wire.single_segment_copy of
 * a one-segment message from the pointer at word `loc` (-1: no pointer) */
static PyObject *fw_py_copy(PyObject *mod, PyObject *args) {
  Py_buffer b;
  long long loc, max_words;
  if (!PyArg_ParseTuple(args, "y*LL", &b, &loc, &max_words)) return NULL;
  PyObject *out = NULL;
  if (b.len % 8 || max_words < 0) {
    out = Py_NewRef(Py_None);
  } else {
    uint64_t n = (uint64_t)b.len / 8;
    uint64_t room = 2 * n + 16;
    for (;;) {
      if (room > (uint64_t)max_words + 1) room = (uint64_t)max_words + 1;
      PyObject *buf = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 + 8 * room));
      if (!buf) break;
      uint8_t *p = (uint8_t *)PyBytes_AS_STRING(buf);
      int64_t r = fw_copy(b.buf, n, loc < 0 ? 0 : (uint64_t)loc, loc >= 0, max_words, p + 8, room);
      if (r == -2 && room < (uint64_t)max_words + 1) {
        Py_DECREF(buf);
        room *= 4;
        continue;
      }
      if (r < 0) {
        Py_DECREF(buf);
        out = Py_NewRef(Py_None);
        break;
      }
      uint32_t table[2] = {0, (uint32_t)r};
      memcpy(p, table, 8);
      if (_PyBytes_Resize(&buf, (Py_ssize_t)(8 + 8 * r)) == 0) out = buf;
      break;
    }
  }
  PyBuffer_Release(&b);
  return out;
}

/* splice(head, at, segment, loc) -> framed bytes | None: protocol.Connection._splice
 * of one-segment content whose pointer is at word `loc` of `segment` */
static PyObject *fw_py_splice(PyObject *mod, PyObject *args) {
  Py_buffer h, b;
  unsigned long long at, loc;
  if (!PyArg_ParseTuple(args, "y*Ky*K", &h, &at, &b, &loc)) return NULL;
  PyObject *out = NULL;
  uint64_t hw = (uint64_t)h.len / 8, n = (uint64_t)b.len / 8;
  if (h.len % 8 || b.len % 8 || at >= hw || !hw || loc >= n) {
    out = Py_NewRef(Py_None);
    goto done;
  }
  uint64_t W = fw_word(b.buf, loc), start = 0, w = 0;
  int k, near = 0;
  if (W && (W & 3) <= 1) {
    if (fw_resolve(b.buf, n, loc, &k, &start, &w) != 1) { /* far, or out of bounds: Python's */
      out = Py_NewRef(Py_None);
      goto done;
    }
    near = 1;
  } else if (W && (W & 3) == 2) {
    out = Py_NewRef(Py_None);
    goto done;
  }
  uint64_t total = near ? n + hw : hw;
  out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 + 8 * total));
  if (!out) goto done;
  uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
  uint32_t table[2] = {0, (uint32_t)total};
  memcpy(p, table, 8);
  uint8_t *msg = p + 8;
  if (near) {
    memcpy(msg, b.buf, 8 * n);
    memcpy(msg + 8 * n, h.buf, 8 * hw);
    fw_put(msg, n + at, fw_near(n + at, start, w));
    uint64_t root = fw_word(h.buf, 0);
    int64_t off = (int64_t)((root >> 2) & 0x3FFFFFFF);
    if (off & (1 << 29)) off -= (int64_t)1 << 30;
    fw_put(msg, 0, fw_near(0, (uint64_t)((int64_t)n + 1 + off), root));
  } else {
    memcpy(msg, h.buf, 8 * hw);
    fw_put(msg, at, W); /* null, or a capability pointer as it is */
  }
done:
  PyBuffer_Release(&h);
  PyBuffer_Release(&b);
  return out;
}

static PyMethodDef methods[] = {{"decode", fw_py_decode, METH_O, NULL},
                                {"forward", fw_py_forward, METH_VARARGS, NULL},
                                {"copy", fw_py_copy, METH_VARARGS, NULL},
                                {"splice", fw_py_splice, METH_VARARGS, NULL},
                                {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "capnp_schemas._fastwire", NULL, -1,
                                    methods};

PyMODINIT_FUNC PyInit__fastwire(void) { return PyModule_Create(&module); }
