/* The native forwarding path's wire code: the decoder of a *plain* Call or
 * Return and the splice that forwards it.  No Python, no I/O, no allocation:
 * supervisor/_fastlane.c includes it, and tests/unit/test_fastlane_c.py
 * compiles it alone under AddressSanitizer and UBSan.
 *
 * "Plain" is a strict subset of what capnp_schemas/rpcwire.decode and
 * protocol.Connection accept, and reads the same values:
 *   - one segment (fw_decode reads the first segment of a message; the lane
 *     forwards a message of several segments whose first one is plain, the
 *     others unread, as protocol.Connection._splice does: fw_forward_msg);
 *     every pointer on the way a near pointer inside it;
 *   - a Call to an imported capability (no promise target), results sent to
 *     the caller, no tail-call or pipelining hints; a Return with results;
 *     or a Finish;
 *   - an empty capability table (or none);
 *   - content that is null, a capability pointer of index only, or a near
 *     struct or list pointer whose object lies inside the segment, and whose
 *     pointer is not the message root;
 *   - no more words charged than pycapnp's traversal limit.
 * Anything else answers 0 ("not plain"), and the Python side, which gives
 * the precise error, handles the message.  fuzz/protocol.py checks that
 * whatever this accepts, rpcwire.decode and pycapnp accept with the same
 * values, and that the forwarded bytes equal protocol.Connection's. */
#ifndef WSUPER_FASTWIRE_H
#define WSUPER_FASTWIRE_H

#include <stdint.h>
#include <string.h>

#define FW_NOT_PLAIN 0
#define FW_CALL 1
#define FW_RETURN 2
#define FW_FINISH 3

#define FW_TRAVERSAL_LIMIT 65536u /* rpcwire.TRAVERSAL_LIMIT_WORDS */
#define FW_MAX_CAPS 256u          /* rpcwire.MAX_CAPS_PER_MESSAGE */
#define FW_MAX_LIST ((1u << 29) - 1)

#define FW_CALL_WORDS 13   /* rpcwire.encode_call's header without a cap table */
#define FW_CALL_CONTENT 11
#define FW_RETURN_WORDS 8  /* rpcwire.encode_return's */
#define FW_RETURN_CONTENT 6

typedef struct {
  int which;             /* FW_CALL, FW_RETURN or FW_FINISH */
  uint32_t id;           /* question id (call) or answer id (return) */
  uint32_t import_id;    /* call: the target */
  uint64_t interface_id; /* call */
  uint32_t method_id;    /* call */
  int no_finish;         /* return: noFinishNeeded */
  int release;           /* finish: releaseResultCaps */
  int64_t content_at;    /* word of the content pointer; -1: the payload has none */
  int content;           /* 0: none or null, 1: near object, 2: capability pointer */
  uint64_t content_word; /* 1: the pointer (its kind and size); 2: the pointer itself */
  uint64_t content_start;/* 1: first word of the object (a struct list: its tag) */
} fw_plain;

static inline uint64_t fw_word(const uint8_t *seg, uint64_t i) {
  uint64_t w;
  memcpy(&w, seg + 8 * i, 8);
  return w;
}

static inline void fw_put(uint8_t *seg, uint64_t i, uint64_t w) { memcpy(seg + 8 * i, &w, 8); }

/* wire.object_words: words of the object a struct or list pointer describes */
static inline uint64_t fw_object_words(uint64_t w) {
  static const unsigned bits[8] = {0, 1, 8, 16, 32, 64, 64, 0};
  if (!(w & 1)) return ((w >> 32) & 0xFFFF) + (w >> 48);
  unsigned esz = (w >> 32) & 7;
  if (esz == 7) return (w >> 35) + 1;
  return ((w >> 35) * bits[esz] + 63) >> 6;
}

/* The near pointer at word p: 0 null, 1 a struct or list inside the segment
 * (kind, start, w set), -1 anything else (far, capability, out of bounds). */
static inline int fw_resolve(const uint8_t *seg, uint64_t n, uint64_t p, int *kind,
                             uint64_t *start, uint64_t *w) {
  if (p >= n) return -1;
  uint64_t W = fw_word(seg, p);
  if (!W) return 0;
  if ((W & 3) > 1) return -1;
  int64_t off = (int64_t)((W >> 2) & 0x3FFFFFFF);
  if (off & (1 << 29)) off -= (int64_t)1 << 30;
  int64_t st = (int64_t)p + 1 + off;
  if (st < 0 || (uint64_t)st + fw_object_words(W) > n) return -1;
  *kind = (int)(W & 3);
  *start = (uint64_t)st;
  *w = W;
  return 1;
}

/* Decode one single-segment message of n words: FW_CALL, FW_RETURN or
 * FW_NOT_PLAIN.  Mirrors rpcwire._decode step by step. */
static int fw_decode(const uint8_t *seg, uint64_t n, fw_plain *o) {
  int k;
  uint64_t s, w, dw, pc, spent, w0, payload = 0;
  int has_payload = 0;
  memset(o, 0, sizeof *o);
  o->content_at = -1;
  if (fw_resolve(seg, n, 0, &k, &s, &w) != 1 || k != 0) return FW_NOT_PLAIN;
  dw = (w >> 32) & 0xFFFF;
  pc = w >> 48;
  if (!dw || !pc) return FW_NOT_PLAIN;
  unsigned which = (unsigned)(fw_word(seg, s) & 0xFFFF);
  if (which != 2 && which != 3 && which != 4) return FW_NOT_PLAIN;
  spent = dw + pc + 2;
  if (fw_resolve(seg, n, s + dw, &k, &s, &w) != 1 || k != 0) return FW_NOT_PLAIN;
  dw = (w >> 32) & 0xFFFF;
  pc = w >> 48;
  spent += dw + pc + 2;
  w0 = dw ? fw_word(seg, s) : 0;
  o->id = (uint32_t)(w0 & 0xFFFFFFFF);
  if (which == 4) { /* Finish: questionId, releaseResultCaps (stored XOR true) */
    o->which = FW_FINISH;
    o->release = !((w0 >> 32) & 1);
    return FW_FINISH;
  }
  if (which == 2) { /* Call */
    uint64_t w2 = dw >= 3 ? fw_word(seg, s + 2) : 0, ts, tw;
    if ((w0 >> 48) || (w2 & 7) || !pc) return FW_NOT_PLAIN;
    if (fw_resolve(seg, n, s + dw, &k, &ts, &tw) != 1 || k != 0) return FW_NOT_PLAIN;
    uint64_t tdw = (tw >> 32) & 0xFFFF, tpc = tw >> 48;
    spent += tdw + tpc + 2;
    uint64_t t0 = tdw ? fw_word(seg, ts) : 0;
    if ((t0 >> 32) & 0xFFFF) return FW_NOT_PLAIN; /* a promised answer */
    o->which = FW_CALL;
    o->import_id = (uint32_t)(t0 & 0xFFFFFFFF);
    o->interface_id = dw >= 2 ? fw_word(seg, s + 1) : 0;
    o->method_id = (uint32_t)((w0 >> 32) & 0xFFFF);
    if (pc >= 2) {
      payload = s + dw + 1;
      has_payload = 1;
    }
  } else { /* Return */
    if ((w0 >> 48) != 0) return FW_NOT_PLAIN; /* exception, canceled, ...: Python's */
    o->which = FW_RETURN;
    o->release = !((w0 >> 32) & 1); /* releaseParamCaps */
    o->no_finish = (int)((w0 >> 33) & 1);
    if (pc) {
      payload = s + dw;
      has_payload = 1;
    }
  }
  uint64_t content_at = 0;
  int has_content = 0;
  if (has_payload) {
    uint64_t ps, pw;
    int r = fw_resolve(seg, n, payload, &k, &ps, &pw);
    if (r < 0) return FW_NOT_PLAIN;
    if (r == 1) {
      if (k != 0) return FW_NOT_PLAIN;
      uint64_t pdw = (pw >> 32) & 0xFFFF, ppc = pw >> 48;
      spent += pdw + ppc + 2;
      if (ppc) {
        has_content = 1;
        content_at = ps + pdw;
      }
      if (ppc >= 2) {
        uint64_t cs, cw;
        r = fw_resolve(seg, n, ps + pdw + 1, &k, &cs, &cw);
        if (r < 0) return FW_NOT_PLAIN;
        if (r == 1) {
          if (k != 1 || ((cw >> 32) & 7) != 7) return FW_NOT_PLAIN;
          uint64_t tag = fw_word(seg, cs);
          uint64_t cnt = (tag >> 2) & 0x3FFFFFFF, data = (tag >> 32) & 0xFFFF, ptrs = tag >> 48;
          if ((tag & 3) != 0 || cnt > FW_MAX_LIST) return FW_NOT_PLAIN;
          if (cnt * (data + ptrs) > (cw >> 35)) return FW_NOT_PLAIN;
          if (!data || cnt > FW_MAX_CAPS) return FW_NOT_PLAIN;
          if (cnt) return FW_NOT_PLAIN; /* capabilities: the Python router's */
          spent += fw_object_words(cw) + 2;
        }
      }
    }
  }
  if (spent > FW_TRAVERSAL_LIMIT) return FW_NOT_PLAIN;
  if (has_content) { /* protocol.Connection._payload's checks */
    uint64_t cs, cw;
    o->content_at = (int64_t)content_at;
    if (content_at == 0) return FW_NOT_PLAIN; /* aliases the root: a protocol error */
    int r = fw_resolve(seg, n, content_at, &k, &cs, &cw);
    if (r == 1) {
      o->content = 1;
      o->content_word = cw;
      o->content_start = cs;
    } else if (r < 0) {
      uint64_t W = fw_word(seg, content_at); /* content_at < n: inside the payload */
      if ((W & 3) != 3 || (W & 0xFFFFFFFC)) return FW_NOT_PLAIN;
      o->content = 2;
      o->content_word = W;
    }
  }
  return o->which;
}

static inline uint64_t fw_struct_ptr(uint64_t off, uint64_t data, uint64_t ptrs) {
  return ((off << 2) & 0xFFFFFFFF) | (data << 32) | (ptrs << 48);
}

/* wire.near_pointer */
static inline uint64_t fw_near(uint64_t at, uint64_t target, uint64_t w) {
  if (!(w & 0xFFFFFFFF00000001ull)) return 0xFFFFFFFCull;
  return (w & 0xFFFFFFFF00000003ull) | ((((target - at - 1)) & 0x3FFFFFFF) << 2);
}

/* Bytes fw_forward writes for a message of n words. */
static inline uint64_t fw_forward_size(const fw_plain *o, uint64_t n, int call) {
  uint64_t hw = call ? FW_CALL_WORDS : FW_RETURN_WORDS;
  return 8 + 8 * (hw + (o->content == 1 ? n : 0));
}

/* The forwarded message, framed, as protocol.Connection.send_call (call) or
 * send_return (no capabilities; no_finish) writes it with _splice: the
 * content's segment unchanged but for its root word, then the new header. */
static uint64_t fw_forward(uint8_t *out, const uint8_t *seg, uint64_t n, const fw_plain *o,
                           int call, uint32_t id, uint32_t import_id, uint64_t interface_id,
                           uint32_t method_id, int no_finish) {
  uint64_t hw = call ? FW_CALL_WORDS : FW_RETURN_WORDS;
  uint64_t at = call ? FW_CALL_CONTENT : FW_RETURN_CONTENT;
  uint64_t base = o->content == 1 ? n : 0; /* where the header starts */
  uint64_t total = base + hw;
  uint32_t table[2] = {0, (uint32_t)total};
  memcpy(out, table, 8);
  uint8_t *msg = out + 8;
  if (base) memcpy(msg, seg, 8 * n);
  uint8_t *h = msg + 8 * base;
  memset(h, 0, 8 * hw);
  uint64_t root = fw_struct_ptr(0, 1, 1);
  fw_put(h, 0, root);
  if (call) {
    fw_put(h, 1, 2);
    fw_put(h, 2, fw_struct_ptr(0, 3, 3));
    fw_put(h, 3, (uint64_t)id | ((uint64_t)method_id << 32));
    fw_put(h, 4, interface_id);
    fw_put(h, 6, fw_struct_ptr(2, 1, 1));
    fw_put(h, 7, fw_struct_ptr(3, 0, 2));
    fw_put(h, 9, import_id);
  } else {
    fw_put(h, 1, 3);
    fw_put(h, 2, fw_struct_ptr(0, 2, 1));
    fw_put(h, 3, (uint64_t)id | (1ull << 32) | (no_finish ? (1ull << 33) : 0));
    fw_put(h, 5, fw_struct_ptr(0, 0, 2));
  }
  if (o->content == 1) {
    fw_put(h, at, fw_near(base + at, o->content_start, o->content_word));
    fw_put(msg, 0, fw_near(0, base + 1, root));
  } else if (o->content == 2) {
    fw_put(h, at, o->content_word);
  }
  return 8 + 8 * total;
}

/* A framed message of any number of segments (`m` at its segment table; nseg
 * segments, `words` in all, the first of `first`), whose first segment fw_decode
 * read as `o`: the bytes fw_forward_msg writes for it. */
static inline uint64_t fw_table_bytes(uint64_t nseg) {
  uint64_t t = 4 + 4 * nseg;
  return t + (t & 4);
}

static inline uint64_t fw_forward_msg_size(const fw_plain *o, uint64_t nseg, uint64_t first,
                                           uint64_t words, int call) {
  if (nseg == 1 || !o->content) return fw_forward_size(o, first, call);
  uint64_t hw = call ? FW_CALL_WORDS : FW_RETURN_WORDS;
  return fw_table_bytes(nseg) + 8 * (words + hw + (o->content == 1 ? 2 : 0));
}

/* 1 if fw_forward_msg can forward it: the header's words, appended to the last
 * segment, are within reach of a far pointer's 29-bit offset (always, within any
 * message size a peer may send: wire.MAX_MESSAGE_WORDS). */
static inline int fw_forward_msg_ok(const uint8_t *m, uint64_t nseg) {
  uint32_t last, first;
  if (nseg < 2) return 1;
  memcpy(&first, m + 4, 4);
  memcpy(&last, m + 4 + 4 * (nseg - 1), 4);
  return first < (1u << 29) && (uint64_t)last + FW_CALL_WORDS + 2 < (1u << 29);
}

/* As fw_forward, for a message of several segments too: what protocol.Connection
 * writes with _splice.  Its content's segments travel unchanged but for the root
 * word of the first, now a far pointer to the new header, which is appended to
 * the last segment; a content object is reached through a double-far landing pad
 * after the header (the content pointer never goes through a word the sender
 * chose).  Content that is null or none: the header alone, as fw_forward. */
static inline uint64_t fw_forward_msg(uint8_t *out, const uint8_t *m, uint64_t nseg,
                                      uint64_t first, uint64_t words, const fw_plain *o,
                                      int call, uint32_t id, uint32_t import_id,
                                      uint64_t interface_id, uint32_t method_id, int no_finish) {
  uint64_t table = fw_table_bytes(nseg);
  if (nseg == 1 || !o->content)
    return fw_forward(out, m + table, first, o, call, id, import_id, interface_id, method_id,
                      no_finish);
  uint64_t hw = call ? FW_CALL_WORDS : FW_RETURN_WORDS;
  uint64_t at = call ? FW_CALL_CONTENT : FW_RETURN_CONTENT;
  uint64_t extra = hw + (o->content == 1 ? 2 : 0);
  uint32_t last, base;
  memcpy(&last, m + 4 + 4 * (nseg - 1), 4);
  base = last; /* the header's first word in the last segment */
  memcpy(out, m, table); /* the segment count and sizes; then the last one's grows */
  memset(out + 4 + 4 * nseg, 0, table - 4 - 4 * nseg); /* the padding, zero as framed */
  uint32_t grown = (uint32_t)(last + extra);
  memcpy(out + 4 + 4 * (nseg - 1), &grown, 4);
  uint8_t *body = out + table;
  memcpy(body, m + table, 8 * words);
  uint64_t lastseg = nseg - 1;
  fw_put(body, 0, 2 | ((uint64_t)base << 3) | (lastseg << 32)); /* far: the header's root */
  /* the header: fw_forward's, with no content before it, into a scratch frame */
  uint8_t *h = body + 8 * words;
  uint8_t frame_[8 + 8 * FW_CALL_WORDS];
  fw_plain bare = *o;
  bare.content = 0;
  fw_forward(frame_, m + table, first, &bare, call, id, import_id, interface_id, method_id,
             no_finish);
  memcpy(h, frame_ + 8, 8 * hw);
  if (o->content == 1) {
    fw_put(h, hw, 2 | (o->content_start << 3));                 /* far: segment 0 */
    fw_put(h, hw + 1, o->content_word & ~0xFFFFFFFCull);       /* the tag: offset 0 */
    fw_put(h, at, 2 | 4 | ((uint64_t)(base + hw) << 3) | (lastseg << 32));
  } else {
    fw_put(h, at, o->content_word);
  }
  return table + 8 * (words + extra);
}

/* ------------------------------------------------------------ the guest's copy */

/* wire.single_segment_copy for one segment: the object the pointer at word
 * `loc` reaches, copied in pre-order into a new single segment.  `out` has
 * room for `room` words (word 0 is the root pointer); the result is the word
 * count, or -1 for anything wire.py would refuse and anything this does not
 * do (a far pointer): the Python copy then runs and gives the exact answer. */
typedef struct {
  uint8_t *out;
  uint64_t len, room;
  int64_t budget;
  const uint8_t *seg;
  uint64_t n;
} fw_copy_t;

#define FW_MAX_NESTING 64 /* wire.MAX_NESTING */

static int fw_charge(fw_copy_t *c, uint64_t n) {
  c->budget -= (int64_t)(n ? n : 1);
  return c->budget < 0 ? -1 : 0;
}

static int fw_alloc(fw_copy_t *c, uint64_t words, uint64_t *at) {
  if (words > c->room - c->len) return -2; /* out of room: the caller retries with more */
  *at = c->len;
  memset(c->out + 8 * c->len, 0, 8 * words);
  c->len += words;
  return 0;
}

static int fw_copy_ptr(fw_copy_t *c, uint64_t src, uint64_t dst, int depth) {
  if (src >= c->n) return -1;
  uint64_t W = fw_word(c->seg, src);
  if (!W) return 0;
  if (depth >= FW_MAX_NESTING) return -1;
  unsigned kind = W & 3;
  if (kind == 3) {
    if (W & 0xFFFFFFFC) return -1;
    fw_put(c->out, dst, W);
    return 0;
  }
  int k;
  uint64_t start, w, at, size;
  if (fw_resolve(c->seg, c->n, src, &k, &start, &w) != 1) return -1; /* far: Python's */
  if (k == 0) {
    uint64_t data = (w >> 32) & 0xFFFF, ptrs = w >> 48;
    int e;
    if (fw_charge(c, data + ptrs)) return -1;
    if ((e = fw_alloc(c, data + ptrs, &at))) return e;
    memcpy(c->out + 8 * at, c->seg + 8 * start, 8 * data);
    fw_put(c->out, dst, fw_near(dst, at, w));
    for (uint64_t i = 0; i < ptrs; i++)
      if ((e = fw_copy_ptr(c, start + data + i, at + data + i, depth + 1))) return e;
    return 0;
  }
  uint64_t esz = (w >> 32) & 7, count = w >> 35;
  int e;
  if (esz == 7) {
    uint64_t tag = fw_word(c->seg, start);
    uint64_t cnt = (tag >> 2) & 0x3FFFFFFF, data = (tag >> 32) & 0xFFFF, ptrs = tag >> 48;
    if ((tag & 3) != 0 || cnt > FW_MAX_LIST || cnt * (data + ptrs) > count) return -1;
    uint64_t words = cnt * (data + ptrs);
    /* the tag and the elements, each at least a word (pycapnp's charge: its words
     * and tag, or its count if they are empty); cnt + words, twice a list of
     * one-word structs, refused content half its max_words (wire.py) */
    if (fw_charge(c, 1 + (words > cnt ? words : cnt))) return -1;
    if ((e = fw_alloc(c, 1 + words, &at))) return e;
    fw_put(c->out, at, tag);
    if (!ptrs) /* their data in one piece: empty structs are charged but hold nothing */
      memcpy(c->out + 8 * (at + 1), c->seg + 8 * (start + 1), 8 * words);
    for (uint64_t i = 0; ptrs && i < cnt; i++) {
      uint64_t es = start + 1 + i * (data + ptrs), ed = at + 1 + i * (data + ptrs);
      memcpy(c->out + 8 * ed, c->seg + 8 * es, 8 * data);
      for (uint64_t j = 0; j < ptrs; j++)
        if ((e = fw_copy_ptr(c, es + data + j, ed + data + j, depth + 1))) return e;
    }
    size = (7 | (words << 3)) << 32;
  } else if (esz == 6) {
    if (fw_charge(c, count)) return -1;
    if ((e = fw_alloc(c, count, &at))) return e;
    for (uint64_t i = 0; i < count; i++)
      if ((e = fw_copy_ptr(c, start + i, at + i, depth + 1))) return e;
    size = w & ~0xFFFFFFFFull;
  } else {
    uint64_t words = fw_object_words(w);
    /* a word an element for Void (pycapnp's amplified read), its words else (wire.py) */
    if (fw_charge(c, esz ? words : count)) return -1;
    if ((e = fw_alloc(c, words, &at))) return e;
    memcpy(c->out + 8 * at, c->seg + 8 * start, 8 * words);
    size = w & ~0xFFFFFFFFull;
  }
  fw_put(c->out, dst, fw_near(dst, at, 1 | size));
  return 0;
}

/* The copy: -1 (refused: Python's copy decides), -2 (out of room), or the
 * number of words written to out (at least 1, the root pointer) */
static inline int64_t fw_copy(const uint8_t *seg, uint64_t n, uint64_t loc, int has_loc, int64_t max_words,
                       uint8_t *out, uint64_t room) {
  fw_copy_t c = {out, 1, room, max_words, seg, n};
  if (!room) return -2;
  memset(out, 0, 8);
  int e = has_loc ? fw_copy_ptr(&c, loc, 0, 0) : 0;
  return e ? e : (int64_t)c.len;
}

/* ------------------------------------------------------------ content in several segments */

/* The copy of content in several segments (far pointers followed), for
 * router.content_bytes: what wire.single_segment_copy's Python walk gives, in
 * C, so that params of several segments (pycapnp's: their struct beside the
 * Call's header, their data in a segment of its own) are measured as they are
 * without a Python walk of what a hostile peer sent.  -1: refused (past the
 * budget, malformed, or anything this does not do), -2: out of room.  With
 * `out` NULL it only measures (the fast lane's fw_content_bytes): the same walk,
 * the same charges and room, nothing written. */
typedef struct {
  uint8_t *out;
  uint64_t len, room;
  int64_t budget;
  const uint8_t *const *segs;
  const uint64_t *ns;
  uint64_t nsegs;
  /* the first refusal: what (FW_FAIL_*) at which pointer (segment, word), so
   * that wire.py names it without walking the message again in Python */
  int fail;
  uint64_t fail_seg, fail_word;
} fw_mcopy_t;

#define FW_FAIL_RESOLVE 1 /* wire.resolve raises at the pointer */
#define FW_FAIL_NESTING 2
#define FW_FAIL_OTHER 3   /* an 'other' pointer that is no capability */
#define FW_FAIL_BUDGET 4  /* past max_words */
#define FW_FAIL_TAG 5     /* wire.composite_tag raises for the list at the pointer */

static int fw_mfail(fw_mcopy_t *c, int why, uint64_t s, uint64_t p) {
  if (!c->fail) {
    c->fail = why;
    c->fail_seg = s;
    c->fail_word = p;
  }
  return -1;
}

/* wire.resolve of the pointer at word p of segment s: 0 null, 1 an object
 * (kind 0 struct / 1 list, its segment, first word and describing word) lying
 * wholly in its segment, 3 a capability (w), -1 anything wire.py refuses */
static int fw_mresolve(const fw_mcopy_t *c, uint64_t s, uint64_t p, int *kind, uint64_t *ts,
                       uint64_t *start, uint64_t *w) {
  if (s >= c->nsegs || p >= c->ns[s]) return -1;
  uint64_t W = fw_word(c->segs[s], p), tag, obj_s;
  int64_t st;
  if (!W) return 0;
  switch (W & 3) {
  case 3:
    *w = W;
    return 3;
  case 2: {
    uint64_t pad = (W >> 3) & 0x1FFFFFFF, fs = W >> 32;
    if (fs >= c->nsegs) return -1;
    if (!((W >> 2) & 1)) {
      if (pad >= c->ns[fs]) return -1;
      tag = fw_word(c->segs[fs], pad);
      if ((tag & 3) > 1) return -1;
      int64_t off = (int64_t)((tag >> 2) & 0x3FFFFFFF);
      if (off & (1 << 29)) off -= (int64_t)1 << 30;
      obj_s = fs;
      st = (int64_t)pad + 1 + off;
    } else {
      if (pad + 1 >= c->ns[fs]) return -1;
      uint64_t far2 = fw_word(c->segs[fs], pad);
      tag = fw_word(c->segs[fs], pad + 1);
      if ((far2 & 7) != 2 || ((tag >> 2) & 0x3FFFFFFF) != 0 || (tag & 3) > 1) return -1;
      obj_s = far2 >> 32;
      st = (int64_t)((far2 >> 3) & 0x1FFFFFFF);
      if (obj_s >= c->nsegs) return -1;
    }
    W = tag;
    break;
  }
  default: {
    int64_t off = (int64_t)((W >> 2) & 0x3FFFFFFF);
    if (off & (1 << 29)) off -= (int64_t)1 << 30;
    obj_s = s;
    st = (int64_t)p + 1 + off;
  }
  }
  if (st < 0 || (uint64_t)st + fw_object_words(W) > c->ns[obj_s]) return -1;
  *kind = (int)(W & 3);
  *ts = obj_s;
  *start = (uint64_t)st;
  *w = W;
  return 1;
}

static int fw_mcharge(fw_mcopy_t *c, uint64_t n) {
  c->budget -= (int64_t)(n ? n : 1);
  return c->budget < 0 ? -1 : 0;
}

static int fw_malloc(fw_mcopy_t *c, uint64_t words, uint64_t *at) {
  if (words > c->room - c->len) return -2;
  *at = c->len;
  if (c->out) memset(c->out + 8 * c->len, 0, 8 * words);
  c->len += words;
  return 0;
}

/* wire.single_segment_copy's copy(), step by step (fastwire.h's fw_copy_ptr,
 * through far pointers) */
static int fw_mcopy_ptr(fw_mcopy_t *c, uint64_t s, uint64_t src, uint64_t dst, int depth) {
  int k, e;
  uint64_t ts, start, w, at, size;
  int r = fw_mresolve(c, s, src, &k, &ts, &start, &w);
  if (r == 0) return 0;
  if (r < 0) return fw_mfail(c, FW_FAIL_RESOLVE, s, src);
  if (depth >= FW_MAX_NESTING) return fw_mfail(c, FW_FAIL_NESTING, s, src);
  if (r == 3) {
    if (w & 0xFFFFFFFC) return fw_mfail(c, FW_FAIL_OTHER, s, src);
    if (c->out) fw_put(c->out, dst, w);
    return 0;
  }
  const uint8_t *seg = c->segs[ts];
  if (k == 0) {
    uint64_t data = (w >> 32) & 0xFFFF, ptrs = w >> 48;
    if (fw_mcharge(c, data + ptrs)) return fw_mfail(c, FW_FAIL_BUDGET, s, src);
    if ((e = fw_malloc(c, data + ptrs, &at))) return e;
    if (c->out) {
      memcpy(c->out + 8 * at, seg + 8 * start, 8 * data);
      fw_put(c->out, dst, fw_near(dst, at, w));
    }
    for (uint64_t i = 0; i < ptrs; i++)
      if ((e = fw_mcopy_ptr(c, ts, start + data + i, at + data + i, depth + 1))) return e;
    return 0;
  }
  uint64_t esz = (w >> 32) & 7, count = w >> 35;
  if (esz == 7) {
    uint64_t tag = fw_word(seg, start);
    uint64_t cnt = (tag >> 2) & 0x3FFFFFFF, data = (tag >> 32) & 0xFFFF, ptrs = tag >> 48;
    if ((tag & 3) != 0 || cnt > FW_MAX_LIST || cnt * (data + ptrs) > count)
      return fw_mfail(c, FW_FAIL_TAG, s, src);
    uint64_t words = cnt * (data + ptrs);
    if (fw_mcharge(c, 1 + (words > cnt ? words : cnt))) return fw_mfail(c, FW_FAIL_BUDGET, s, src);
    if ((e = fw_malloc(c, 1 + words, &at))) return e;
    if (c->out) fw_put(c->out, at, tag);
    if (!ptrs && c->out) memcpy(c->out + 8 * (at + 1), seg + 8 * (start + 1), 8 * words);
    for (uint64_t i = 0; ptrs && i < cnt; i++) {
      uint64_t es = start + 1 + i * (data + ptrs), ed = at + 1 + i * (data + ptrs);
      if (c->out) memcpy(c->out + 8 * ed, seg + 8 * es, 8 * data);
      for (uint64_t j = 0; j < ptrs; j++)
        if ((e = fw_mcopy_ptr(c, ts, es + data + j, ed + data + j, depth + 1))) return e;
    }
    size = (7 | (words << 3)) << 32;
  } else if (esz == 6) {
    if (fw_mcharge(c, count)) return fw_mfail(c, FW_FAIL_BUDGET, s, src);
    if ((e = fw_malloc(c, count, &at))) return e;
    for (uint64_t i = 0; i < count; i++)
      if ((e = fw_mcopy_ptr(c, ts, start + i, at + i, depth + 1))) return e;
    size = w & ~0xFFFFFFFFull;
  } else {
    uint64_t words = fw_object_words(w);
    if (fw_mcharge(c, esz ? words : count)) /* Void: a word an element, as wire.py */
      return fw_mfail(c, FW_FAIL_BUDGET, s, src);
    if ((e = fw_malloc(c, words, &at))) return e;
    if (c->out) memcpy(c->out + 8 * at, seg + 8 * start, 8 * words);
    size = w & ~0xFFFFFFFFull;
  }
  if (c->out) fw_put(c->out, dst, fw_near(dst, at, 1 | size));
  return 0;
}

/* router.HEADER_SLACK: bytes past a peer's message_size that the segments of
 * params or results may have and still be measured as what they are */
#define FW_HEADER_SLACK 32768u

/* router.content_bytes(content, limit) of the content whose pointer is at word
 * `loc` of segment 0 (content_at of fw_decode; content 1 or 2) of a message of
 * `nsegs` segments, `words` in all: those words' bytes, or, when those are
 * past `limit` by at most FW_HEADER_SLACK, the bytes of its one-segment copy
 * (copy_segments with max_words limit / 8 + 1, measured: nothing copied), the
 * words' bytes again when the copy is refused. */
static inline uint64_t fw_content_bytes(const uint8_t *const *segs, const uint64_t *ns,
                                        uint64_t nsegs, uint64_t words, uint64_t loc,
                                        uint64_t limit) {
  uint64_t size = 8 * words;
  if (size <= limit || size > limit + FW_HEADER_SLACK) return size;
  uint64_t max_words = limit / 8 + 1;
  fw_mcopy_t c = {NULL, 1, max_words + 1, (int64_t)max_words, segs, ns, nsegs, 0, 0, 0};
  return fw_mcopy_ptr(&c, 0, loc, 0, 0) ? size : 8 * c.len;
}

/* fw_content_bytes of the content fw_decode found in the first segment of a framed
 * message (`m` at its segment table, nseg segments, `words` in all): 0 for none */
static inline uint64_t fw_msg_content_bytes(const uint8_t *m, uint64_t nseg, uint64_t words,
                                            const fw_plain *o, uint64_t limit) {
  uint64_t size = o->content ? 8 * words : 0;
  if (size <= limit || size > limit + FW_HEADER_SLACK || nseg > 512) return size;
  const uint8_t *segs[512];
  uint64_t ns[512];
  const uint8_t *at = m + fw_table_bytes(nseg);
  for (uint64_t i = 0; i < nseg; i++) {
    uint32_t sz;
    memcpy(&sz, m + 4 + 4 * i, 4);
    segs[i] = at;
    ns[i] = sz;
    at += 8 * (uint64_t)sz;
  }
  return fw_content_bytes(segs, ns, nseg, words, (uint64_t)o->content_at, limit);
}

#endif
