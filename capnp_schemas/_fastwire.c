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

/* plain_calls(data, max_words) -> None | [(id, import_id, interface_id, method_id, content,
 *                                        content_at, start, end), ...]
 * protocol.Connection.plain_calls's reading of one read: `data` whole is framed
 * one-segment messages (a segment table of one entry, each whole, at most
 * `max_words` words), each a Call as decode() reads it whose content is no
 * capability (content: 0 none or null, 1 an object); its segment is
 * data[start:end].  None for anything else (an empty read too); the caller
 * decides the rest (targets, answer ids) and changes its tables. */
static PyObject *fw_py_plain_calls(PyObject *mod, PyObject *args) {
  Py_buffer b;
  long long max_words;
  if (!PyArg_ParseTuple(args, "y*L", &b, &max_words)) return NULL;
  const uint8_t *p = b.buf;
  uint64_t size = (uint64_t)b.len, at = 0;
  PyObject *out = PyList_New(0);
  while (out && at < size) {
    if (size - at < 16) goto refuse;
    uint32_t nseg, words;
    memcpy(&nseg, p + at, 4);             /* as fastwire.h reads words */
    memcpy(&words, p + at + 4, 4);
    uint64_t end = at + 8 + 8 * (uint64_t)words;
    if (nseg || end > size || (long long)words > max_words) goto refuse;
    fw_plain o;
    if (fw_decode(p + at + 8, words, &o) != FW_CALL || o.content == 2) goto refuse;
    PyObject *t = Py_BuildValue("(IIKIiLKK)", o.id, o.import_id,
                                (unsigned long long)o.interface_id, o.method_id, o.content,
                                (long long)o.content_at, (unsigned long long)(at + 8),
                                (unsigned long long)end);
    if (!t || PyList_Append(out, t)) {
      Py_XDECREF(t);
      Py_CLEAR(out);
      break;
    }
    Py_DECREF(t);
    at = end;
  }
  if (out && PyList_GET_SIZE(out) == 0) goto refuse;
  PyBuffer_Release(&b);
  return out;
refuse:
  Py_XDECREF(out);
  PyBuffer_Release(&b);
  Py_RETURN_NONE;
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

/* forward_msg(framed, id, import_id, interface_id, method_id, no_finish) -> framed
 * bytes | None: what the fast lane writes for a plain call (or return) of any number
 * of segments (fw_forward_msg), given the message framed as it came; None if its
 * first segment is not a plain call or return, or the lane would not take it */
static PyObject *fw_py_forward_msg(PyObject *mod, PyObject *args) {
  Py_buffer b;
  unsigned long id, import_id, method_id;
  unsigned long long iface;
  int no_finish;
  if (!PyArg_ParseTuple(args, "y*kkKkp", &b, &id, &import_id, &iface, &method_id, &no_finish))
    return NULL;
  PyObject *out = NULL;
  const uint8_t *m = b.buf;
  uint64_t len = (uint64_t)b.len, nseg = 0, table = 0, words = 0, first = 0;
  if (len >= 4) {
    uint32_t n32;
    memcpy(&n32, m, 4);
    nseg = (uint64_t)n32 + 1;
    table = fw_table_bytes(nseg);
  }
  if (!nseg || nseg > 512 || table > len) {
    PyErr_SetString(PyExc_ValueError, "not a framed message");
    goto done;
  }
  for (uint64_t i = 0; i < nseg; i++) {
    uint32_t sz;
    memcpy(&sz, m + 4 + 4 * i, 4);
    if (!i) first = sz;
    words += sz;
  }
  if (table + 8 * words != len) {
    PyErr_SetString(PyExc_ValueError, "not one whole framed message");
    goto done;
  }
  fw_plain o;
  int k = fw_forward_msg_ok(m, nseg) ? fw_decode(m + table, first, &o) : 0;
  if (!k || k == FW_FINISH) {
    out = Py_None;
    Py_INCREF(out);
    goto done;
  }
  uint64_t size = fw_forward_msg_size(&o, nseg, first, words, k == FW_CALL);
  out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
  if (out &&
      fw_forward_msg((uint8_t *)PyBytes_AS_STRING(out), m, nseg, first, words, &o, k == FW_CALL,
                     (uint32_t)id, (uint32_t)import_id, iface, (uint32_t)method_id,
                     no_finish) != size) {
    Py_DECREF(out);
    out = NULL;
    PyErr_SetString(PyExc_SystemError, "fw_forward_msg wrote other than its size");
  }
done:
  PyBuffer_Release(&b);
  return out;
}

/* content_bytes(framed, limit) -> int | None: the fast lane's router.content_bytes
 * of the content of a framed message whose first segment is a plain call or return
 * (fw_msg_content_bytes); None if it is not one */
static PyObject *fw_py_content_bytes(PyObject *mod, PyObject *args) {
  Py_buffer b;
  unsigned long long limit;
  if (!PyArg_ParseTuple(args, "y*K", &b, &limit)) return NULL;
  PyObject *out = NULL;
  const uint8_t *m = b.buf;
  uint64_t len = (uint64_t)b.len, nseg = 0, table = 0, words = 0, first = 0;
  if (len >= 4) {
    uint32_t n32;
    memcpy(&n32, m, 4);
    nseg = (uint64_t)n32 + 1;
    table = fw_table_bytes(nseg);
  }
  if (nseg && nseg <= 512 && table <= len) {
    for (uint64_t i = 0; i < nseg; i++) {
      uint32_t sz;
      memcpy(&sz, m + 4 + 4 * i, 4);
      if (!i) first = sz;
      words += sz;
    }
  }
  if (!nseg || nseg > 512 || table > len || table + 8 * words != len) {
    PyErr_SetString(PyExc_ValueError, "not one whole framed message");
  } else {
    fw_plain o;
    int k = fw_forward_msg_ok(m, nseg) ? fw_decode(m + table, first, &o) : 0;
    out = !k || k == FW_FINISH ? Py_NewRef(Py_None)
        : PyLong_FromUnsignedLongLong(fw_msg_content_bytes(m, nseg, words, &o, limit));
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

/* The copy of content in several segments: fw_mcopy_ptr (fastwire.h). */

#define FW_MAX_SEGMENTS 512 /* wire.MAX_SEGMENTS */

/* copy_segments(segments, seg, loc, max_words) -> framed bytes | (why, segment,
 * word) | None: wire.single_segment_copy of content in any number of segments,
 * from the pointer at word `loc` of segment `seg`; where the Python copy would
 * raise, the first refusal (FW_FAIL_*, at the pointer at word of segment) that
 * its walk meets; None for arguments it does not take (the Python copy decides) */
static PyObject *fw_py_copy_segments(PyObject *mod, PyObject *args) {
  PyObject *seq;
  long long seg, loc, max_words;
  if (!PyArg_ParseTuple(args, "OLLL", &seq, &seg, &loc, &max_words)) return NULL;
  PyObject *fast = PySequence_Fast(seq, "segments must be a sequence");
  if (!fast) return NULL;
  Py_ssize_t nsegs = PySequence_Fast_GET_SIZE(fast);
  PyObject *out = NULL;
  Py_buffer bufs[FW_MAX_SEGMENTS];
  const uint8_t *segs[FW_MAX_SEGMENTS];
  uint64_t ns[FW_MAX_SEGMENTS];
  Py_ssize_t got = 0;
  int ok = nsegs > 0 && nsegs <= FW_MAX_SEGMENTS && max_words >= 0 && seg >= 0 && loc >= 0;
  for (; ok && got < nsegs; got++) {
    if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, got), &bufs[got], PyBUF_SIMPLE)) {
      PyErr_Clear();
      ok = 0;
      break;
    }
    if (bufs[got].len % 8) ok = 0;
    segs[got] = bufs[got].buf;
    ns[got] = (uint64_t)bufs[got].len / 8;
  }
  if (ok) {
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < nsegs; i++) total += ns[i];
    uint64_t room = 2 * total + 16;
    for (;;) {
      if (room > (uint64_t)max_words + 1) room = (uint64_t)max_words + 1;
      PyObject *buf = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 + 8 * room));
      if (!buf) break;
      uint8_t *p = (uint8_t *)PyBytes_AS_STRING(buf);
      fw_mcopy_t c = {p + 8, 1, room, max_words, segs, ns, (uint64_t)nsegs};
      memset(p + 8, 0, 8);
      int64_t r = fw_mcopy_ptr(&c, (uint64_t)seg, (uint64_t)loc, 0, 0);
      if (r == 0) r = (int64_t)c.len;
      if (r == -2 && room < (uint64_t)max_words + 1) {
        Py_DECREF(buf);
        room *= 4;
        continue;
      }
      if (r < 0) {
        Py_DECREF(buf);
        out = r == -1 && c.fail ? Py_BuildValue("(iKK)", c.fail, (unsigned long long)c.fail_seg,
                                                (unsigned long long)c.fail_word)
                                : Py_NewRef(Py_None);
        break;
      }
      uint32_t table[2] = {0, (uint32_t)r};
      memcpy(p, table, 8);
      if (_PyBytes_Resize(&buf, (Py_ssize_t)(8 + 8 * r)) == 0) out = buf;
      break;
    }
  } else {
    out = Py_NewRef(Py_None);
  }
  for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&bufs[i]);
  Py_DECREF(fast);
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

/* read_flat(segment, loc, start, w, fields, max_words) -> dict | None: payloads._read_flat
 * of a flat struct in a one-segment message, whose content pointer is the word at `loc`
 * and resolves (near) to the struct at word `start` described by `w`.  fields: one
 * (name, code, offset, size) a field, in the schema's order; code: 0 void, 1 bool
 * (offset in bits), 2 signed and 3 unsigned integer, 4 float (size 4 or 8 bytes),
 * 5 text, 6 data (offset: the pointer's index).  None for anything it does not settle
 * itself (a far pointer anywhere, a pointer that is not a list of bytes or leaves the
 * segment, what reaches the root word, past max_words, text that is not NUL-terminated
 * or not UTF-8): the Python reader then decides, so the values are always its own. */
static PyObject *fw_py_read_flat(PyObject *mod, PyObject *args) {
  Py_buffer b;
  long long loc, start, max_words;
  unsigned long long w;
  PyObject *fields;
  if (!PyArg_ParseTuple(args, "y*LLKO!L", &b, &loc, &start, &w, &PyTuple_Type, &fields,
                        &max_words))
    return NULL;
  PyObject *out = NULL;
  const uint8_t *seg = b.buf;
  uint64_t n = (uint64_t)b.len / 8;
  uint64_t data = (w >> 32) & 0xFFFF, ptrs = w >> 48;
  long long budget = max_words - (long long)(data + ptrs);
  if (b.len % 8 || !n || loc < 0 || (uint64_t)loc >= n || (fw_word(seg, (uint64_t)loc) & 3) == 2 ||
      (w & 3) || start < 0 || (uint64_t)start + data + ptrs > n || (start == 0 && data + ptrs) ||
      budget < 0)
    goto decline;
  out = PyDict_New();
  if (!out) goto done;
  uint64_t base = 8 * (uint64_t)start, end = 8 * ((uint64_t)start + data);
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fields); i++) {
    PyObject *f = PyTuple_GET_ITEM(fields, i), *name, *v = NULL;
    int code;
    unsigned long long off, size;
    if (!PyArg_ParseTuple(f, "UiKK", &name, &code, &off, &size)) goto fail;
    if (code == 0) {
      v = Py_NewRef(Py_None);
    } else if (code == 1) {
      uint64_t at = base + (off >> 3);
      v = Py_NewRef(at < end && (seg[at] >> (off & 7)) & 1 ? Py_True : Py_False);
    } else if (code == 2 || code == 3 || code == 4) {
      uint64_t at = base + off;
      if (size != 1 && size != 2 && size != 4 && size != 8) goto fail_decline;
      if (code == 4 && size != 4 && size != 8) goto fail_decline;
      if (at + size > end) {
        v = code == 4 ? PyFloat_FromDouble(0.0) : PyLong_FromLong(0);
      } else if (code == 4) {
        double d = size == 4 ? PyFloat_Unpack4((const char *)seg + at, 1)
                             : PyFloat_Unpack8((const char *)seg + at, 1);
        if (d == -1.0 && PyErr_Occurred()) goto fail;
        v = PyFloat_FromDouble(d);
      } else {
        uint64_t x = 0;
        for (unsigned k = 0; k < size; k++) x |= (uint64_t)seg[at + k] << (8 * k);
        if (code == 2) {
          unsigned shift = 64 - 8 * (unsigned)size;
          v = PyLong_FromLongLong((long long)(x << shift) >> shift);
        } else {
          v = PyLong_FromUnsignedLongLong(x);
        }
      }
    } else if (code == 5 || code == 6) {
      int text = code == 5, kind = 0;
      uint64_t o = 0, p = 0;
      /* the pointer, near and inside the segment (fw_resolve: 0 null, 1 an object) */
      int r = off < ptrs ? fw_resolve(seg, n, (uint64_t)start + data + off, &kind, &o, &p) : 0;
      if (r == 0) {
        v = text ? PyUnicode_FromStringAndSize("", 0) : PyBytes_FromStringAndSize("", 0);
      } else {
        if (r < 0 || kind != 1 || ((p >> 32) & 7) != 2) goto fail_decline;   /* bytes */
        uint64_t count = p >> 35, words = fw_object_words(p);
        if (o == 0 && words) goto fail_decline;
        budget -= (long long)words;
        if (budget < 0) goto fail_decline;
        const char *raw = (const char *)seg + 8 * o;
        if (!text) {
          v = PyBytes_FromStringAndSize(raw, (Py_ssize_t)count);
        } else {
          if (!count || raw[count - 1]) goto fail_decline;
          v = PyUnicode_DecodeUTF8(raw, (Py_ssize_t)count - 1, "strict");
          if (!v) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) goto fail;
            PyErr_Clear();
            goto fail_decline;
          }
        }
      }
    } else {
      goto fail_decline;
    }
    if (!v || PyDict_SetItem(out, name, v)) {
      Py_XDECREF(v);
      goto fail;
    }
    Py_DECREF(v);
  }
  goto done;
fail_decline:
  Py_CLEAR(out);
decline:
  out = Py_NewRef(Py_None);
  goto done;
fail:
  Py_CLEAR(out);
done:
  PyBuffer_Release(&b);
  return out;
}

static PyMethodDef methods[] = {{"decode", fw_py_decode, METH_O, NULL},
                                {"plain_calls", fw_py_plain_calls, METH_VARARGS, NULL},
                                {"forward", fw_py_forward, METH_VARARGS, NULL},
                                {"forward_msg", fw_py_forward_msg, METH_VARARGS, NULL},
                                {"content_bytes", fw_py_content_bytes, METH_VARARGS, NULL},
                                {"copy", fw_py_copy, METH_VARARGS, NULL},
                                {"copy_segments", fw_py_copy_segments, METH_VARARGS, NULL},
                                {"splice", fw_py_splice, METH_VARARGS, NULL},
                                {"read_flat", fw_py_read_flat, METH_VARARGS, NULL},
                                {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "capnp_schemas._fastwire", NULL, -1,
                                    methods};

PyMODINIT_FUNC PyInit__fastwire(void) { return PyModule_Create(&module); }
