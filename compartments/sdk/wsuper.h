/* wsuper.h: the C side of the wsuper guest ABI (docs/guest-abi.md).
 *
 * Header-only.  `wsuper bindgen` copies it next to the headers it generates;
 * generated code calls these helpers, and plugin code rarely needs more than
 * the types, wsuper_lookup_cap(), wsuper_object(), wsuper_error() and the
 * arena.
 *
 * Messages are Cap'n Proto, single segment.  What arrives from another
 * compartment is hostile: the reader checks every pointer against the segment
 * and reports a malformed message (WSUPER_E_MESSAGE) instead of reading
 * outside it.
 */
#ifndef WSUPER_H
#define WSUPER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WSUPER_IMPORT(n) __attribute__((import_module("wsuper"), import_name(#n)))
#define WSUPER_UNUSED __attribute__((unused))

WSUPER_IMPORT(lookup) int32_t wsuper_lookup(const char *name, int32_t len);
WSUPER_IMPORT(call) int32_t wsuper_call(int32_t handle, int64_t iface, int32_t method,
                                        const void *params, int32_t params_len,
                                        const int32_t *caps, int32_t ncaps, void *out);
WSUPER_IMPORT(reply_read) int32_t wsuper_reply_read(void *buf, int32_t *caps);
WSUPER_IMPORT(release) int32_t wsuper_release(int32_t handle);
/* A handle from the params of the call being served is released when the call
 * returns, unless kept: keep(h) makes it yours until you release it. */
WSUPER_IMPORT(keep) int32_t wsuper_keep(int32_t handle);
WSUPER_IMPORT(object) int32_t wsuper_object(int32_t tag);
WSUPER_IMPORT(params_read) int32_t wsuper_params_read(void *buf, int32_t *caps);
WSUPER_IMPORT(results_set) int32_t wsuper_results_set(const void *buf, int32_t len,
                                                      const int32_t *caps, int32_t ncaps);
WSUPER_IMPORT(fail) int32_t wsuper_fail(const char *msg, int32_t len);

enum {
  WSUPER_OK = 0,
  WSUPER_E_BADHANDLE = -1,     /* not in this compartment's c-list */
  WSUPER_E_FAILED = -2,        /* the callee failed; the arena's error says why */
  WSUPER_E_DISCONNECTED = -3,  /* the callee's compartment is gone */
  WSUPER_E_OVERLOADED = -4,    /* a limit refused the call for now */
  WSUPER_E_UNIMPLEMENTED = -5, /* no such interface or method */
  WSUPER_E_MESSAGE = -6,       /* malformed or too large */
  WSUPER_E_NOTFOUND = -7,      /* lookup: nothing granted under that name */
  WSUPER_E_STATE = -8,
  WSUPER_E_TOOMANY = -9,       /* too many handles, or capabilities in one call */
  WSUPER_E_DENIED = -10,       /* refused by attenuation: allow-list, revoked, used up */
  WSUPER_E_NOMEM = -100,       /* malloc failed in this plugin */
};

typedef int32_t wsuper_cap;    /* a handle: an index in this compartment's c-list; 0 is none */
typedef struct { const char *ptr; uint32_t len; } wsuper_text;  /* ptr is NUL-terminated */
typedef struct { const uint8_t *ptr; uint32_t len; } wsuper_data;

#define WSUPER_LIST(name, T) typedef struct { T *items; uint32_t len; } name
WSUPER_LIST(wsuper_list_bool, bool);
WSUPER_LIST(wsuper_list_i8, int8_t);
WSUPER_LIST(wsuper_list_i16, int16_t);
WSUPER_LIST(wsuper_list_i32, int32_t);
WSUPER_LIST(wsuper_list_i64, int64_t);
WSUPER_LIST(wsuper_list_u8, uint8_t);
WSUPER_LIST(wsuper_list_u16, uint16_t);
WSUPER_LIST(wsuper_list_u32, uint32_t);
WSUPER_LIST(wsuper_list_u64, uint64_t);
WSUPER_LIST(wsuper_list_f32, float);
WSUPER_LIST(wsuper_list_f64, double);
WSUPER_LIST(wsuper_list_text, wsuper_text);
WSUPER_LIST(wsuper_list_data, wsuper_data);
WSUPER_LIST(wsuper_list_cap, wsuper_cap);

static inline wsuper_text wsuper_str(const char *s) {
  wsuper_text t = {s, s ? (uint32_t)strlen(s) : 0};
  return t;
}

static inline wsuper_cap wsuper_lookup_cap(const char *name) {
  return wsuper_lookup(name, (int32_t)strlen(name));
}

/* ------------------------------------------------------------------ arena
 * Everything decoded for you (reply buffers, strings, lists, structs) lives in
 * an arena you pass in; wsuper_arena_free() frees it all at once.  `error`
 * holds the reason of the last failed call made with it.  Handles given to
 * wsuper_release_later() (wsuper_object_for()) are released then too. */

typedef union wsuper_block { union wsuper_block *next; uint64_t align; } wsuper_block;
typedef struct wsuper_later { struct wsuper_later *next; wsuper_cap handle; } wsuper_later;
typedef struct {
  wsuper_block *blocks;
  const char *error;
  wsuper_later *later;
  wsuper_block *freeing; /* the block being freed (wsuper_arena_free), or NULL */
  void *params;          /* the builder of the params of calls made with it (in a
                          * block), or NULL: wsuper_params_builder */
} wsuper_arena;

static inline void wsuper__params_free(wsuper_arena *a);

static inline void *wsuper_alloc(wsuper_arena *a, size_t n) {
  if (n > SIZE_MAX - sizeof(wsuper_block)) return NULL;
  wsuper_block *b = (wsuper_block *)malloc(sizeof(wsuper_block) + (n ? n : 1));
  if (!b) return NULL;
  b->next = a->blocks;
  a->blocks = b;
  memset(b + 1, 0, n);
  return b + 1;
}

static inline void wsuper_arena_free(wsuper_arena *a) {
  /* First the handles (their records live in the blocks).  Each record is taken
   * off before its handle is released (and each block handled as below): code
   * cut short here (a trap, fuel_per_call spent: the skeleton frees a call's
   * arena as it ends) leaves the rest to the next free of this arena, never a
   * handle released twice (wsuper_served_end keeps the arena in its table until
   * it is all freed) */
  while (a->later) {
    wsuper_later *l = a->later;
    a->later = l->next;
    wsuper_release(l->handle);
  }
  /* Then the params' buffer of a call made with it (cut short, it was never
   * freed), while the builder's block is still there; let go of once it is */
  if (a->params) {
    wsuper__params_free(a);
    a->params = NULL;
  }
  /* A block stays named (`freeing`) until free() has returned: wasmtime checks
   * fuel at free's entry, where a client can make a call's budget end as the
   * skeleton frees its arena, and a block taken off before was lost there for
   * good (its params, up to message_size), each time.  One left by a free cut
   * short is taken off before it is freed again: once more at most */
  if (a->freeing) {
    wsuper_block *b = a->freeing;
    a->freeing = NULL;
    free(b);
  }
  while (a->blocks) {
    wsuper_block *b = a->blocks;
    a->freeing = b;
    a->blocks = b->next;
    free(b);
    a->freeing = NULL;
  }
  a->error = NULL;
}

/* Release handle `h` when the arena is freed: for a server, once its answer is
 * sent (the generated skeleton frees the call's arena then); returns `h` (a
 * negative code as it is; one that cannot be recorded is released at once and
 * is WSUPER_E_NOMEM). */
static inline wsuper_cap wsuper_release_later(wsuper_arena *a, wsuper_cap h) {
  if (h <= 0) return h;
  wsuper_later *l = (wsuper_later *)wsuper_alloc(a, sizeof *l);
  if (!l) { wsuper_release(h); return WSUPER_E_NOMEM; }
  l->handle = h;
  l->next = a->later;
  a->later = l;
  return h;
}

/* A handle of your own object `tag` for one answer (or the params of one call):
 * wsuper_object(tag) makes a new handle at each call, which stays in your c-list
 * until you release it, and a server function cannot release what it returns
 * (its answer is sent after it returns): handed out in every answer, they filled
 * the c-list, and every caller's calls then failed.  This one goes with the arena. */
static inline wsuper_cap wsuper_object_for(wsuper_arena *a, int32_t tag) {
  /* The record first, then the handle, recorded with no function entry between
   * (wasmtime checks fuel at each function's entry): made first, a call cut
   * short at the record's malloc left the handle in the c-list, named nowhere,
   * for good, one a call (a client sets the work before, so where it is cut) */
  wsuper_later *l = (wsuper_later *)wsuper_alloc(a, sizeof *l);
  if (!l) return WSUPER_E_NOMEM;
  wsuper_cap h = wsuper_object(tag);
  if (h <= 0) return h;           /* (the record is freed with the arena) */
  l->handle = h;
  l->next = a->later;
  a->later = l;
  return h;
}

/* Set the reason of a failure (a server's answer, or your own) and return
 * WSUPER_E_FAILED:  return wsuper_error(a, "no such key"); */
static inline int wsuper_error(wsuper_arena *a, const char *reason) {
  size_t n = strlen(reason);
  char *copy = (char *)wsuper_alloc(a, n + 1);
  if (copy) memcpy(copy, reason, n + 1);
  a->error = copy ? copy : "out of memory";
  return WSUPER_E_FAILED;
}

/* The same from two parts, `what` and then `why` (which may be NULL):
 * wsuper_error2(a, "malformed params of Kv.get: ", r.why). */
static inline int wsuper_error2(wsuper_arena *a, const char *what, const char *why) {
  size_t n = strlen(what), m = why ? strlen(why) : 0;
  char *copy = (char *)wsuper_alloc(a, n + m + 1);
  if (!copy) { a->error = "out of memory"; return WSUPER_E_FAILED; }
  memcpy(copy, what, n);
  if (m) memcpy(copy + n, why, m);
  copy[n + m] = 0;
  a->error = copy;
  return WSUPER_E_FAILED;
}

/* ------------------------------------------------------------------ builder */

typedef struct {
  uint8_t *buf;         /* 8-byte segment table, then the segment */
  uint8_t *spare;       /* a buffer being swapped in or out as buf grows, or NULL */
  uint32_t words, room; /* words used / allocated in the segment */
  int32_t caps[256];
  uint32_t ncaps;
  bool failed;
  const char *why;      /* why it failed (the first reason) */
} wsuper_builder;

/* The message cannot be built: `failed`, and why (the first reason stays). */
static inline void wsuper_builder_fail(wsuper_builder *b, const char *why) {
  if (!b->failed) b->why = why;
  b->failed = true;
}

static inline uint8_t *wsuper_word(const wsuper_builder *b, uint32_t w) {
  return b->buf + 8 + (size_t)w * 8;
}

/* Words for a new object, zeroed; returns its first word (0 and `failed` if none). */
static inline uint32_t wsuper_new_words(wsuper_builder *b, uint64_t n) {
  if (b->failed) return 0;
  if (n > (1u << 26) || b->words + n > (1u << 26)) {
    wsuper_builder_fail(b, "larger than 2^26 words (512 MiB)");
    return 0;
  }
  if (b->words + n > b->room) {
    uint32_t room = b->room ? b->room : 32;
    while (room < b->words + n) room *= 2;
    /* Not realloc: it mallocs the new buffer, copies and frees the old one, and
     * code cut short in there (fuel_per_call: wasmtime checks it at each
     * function's entry, the free's among them; the client picks the results' size,
     * so where the budget ends) left the old buffer here and the new one, twice
     * as large, nowhere: lost for good each time.  Each buffer is named here
     * (buf, or spare) from its malloc until its free: wsuper_builder_free frees
     * what code cut short left (wsuper_served_results) */
    uint8_t *buf = (uint8_t *)malloc(8 + (size_t)room * 8);
    if (!buf) { wsuper_builder_fail(b, "out of memory"); return 0; }
    b->spare = buf;
    if (b->buf) memcpy(buf, b->buf, 8 + (size_t)b->room * 8);
    memset(buf + 8 + (size_t)b->room * 8, 0, (size_t)(room - b->room) * 8);
    uint8_t *old = b->buf;
    b->buf = buf;
    b->room = room;
    b->spare = old;
    free(old);
    b->spare = NULL;
  }
  uint32_t at = b->words;
  b->words += (uint32_t)n;
  return at;
}

static inline void wsuper_builder_init(wsuper_builder *b) {
  memset(b, 0, sizeof *b);
  wsuper_new_words(b, 1); /* the root pointer */
}

static inline void wsuper_builder_free(wsuper_builder *b) {
  /* A spare left by code cut short (wsuper_new_words, or here) is taken off before
   * it is freed: once more at most.  The buffer stays named (as the spare) until
   * free() has returned: wasmtime checks fuel at free's entry, where a client can
   * make a call's budget end as its results are sent, and a buffer taken off
   * before was lost there for good (up to message_size), each time */
  uint8_t *spare = b->spare;
  b->spare = NULL;
  if (spare != b->buf) free(spare);
  uint8_t *buf = b->buf;
  b->spare = buf;
  b->buf = NULL;
  free(buf);
  b->spare = NULL;
}

static inline void wsuper__params_free(wsuper_arena *a) {
  wsuper_builder_free((wsuper_builder *)a->params);
}

/* The builder of the params of a call made with arena `a` (the generated client
 * stubs'), begun: its buffer (up to message_size) is freed with the arena, also
 * when the call is cut short as they are built or sent (a call past its
 * call_time is cut off at its next host call, its wsuper_call: in the stub's
 * frame, the buffer was lost each time); the buffer of an earlier call made with
 * it that was cut short is freed now.  One a arena, made again for each call:
 * a call's params are the host's once wsuper_call has begun.  NULL: no memory. */
static inline wsuper_builder *wsuper_params_builder(wsuper_arena *a) {
  wsuper_builder *b = (wsuper_builder *)a->params;
  if (b) {
    wsuper_builder_free(b);
  } else {
    b = (wsuper_builder *)wsuper_alloc(a, sizeof *b);
    if (!b) return NULL;
    b->buf = b->spare = NULL;   /* before it is named: freed from here on */
    a->params = b;
  }
  wsuper_builder_init(b);
  return b;
}

static inline void wsuper_put64(wsuper_builder *b, uint32_t w, uint64_t v) {
  if (!b->failed) memcpy(wsuper_word(b, w), &v, 8);
}

#define WSUPER_SETTER(name, T)                                                     \
  static inline void name(wsuper_builder *b, uint32_t at, uint32_t byte, T v) {    \
    if (!b->failed) memcpy(wsuper_word(b, at) + byte, &v, sizeof v);               \
  }
WSUPER_SETTER(wsuper_set_u8, uint8_t)
WSUPER_SETTER(wsuper_set_u16, uint16_t)
WSUPER_SETTER(wsuper_set_u32, uint32_t)
WSUPER_SETTER(wsuper_set_u64, uint64_t)

static inline void wsuper_set_bool(wsuper_builder *b, uint32_t at, uint32_t bit, bool v) {
  if (b->failed) return;
  uint8_t *p = wsuper_word(b, at) + bit / 8;
  if (v) *p |= (uint8_t)(1u << (bit % 8));
  else *p &= (uint8_t)~(1u << (bit % 8));
}

static inline uint32_t wsuper_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline uint64_t wsuper_f64_bits(double f) { uint64_t u; memcpy(&u, &f, 8); return u; }
static inline float wsuper_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline double wsuper_bits_f64(uint64_t u) { double f; memcpy(&f, &u, 8); return f; }

/* A new struct, pointed to from pointer word `ptr`; returns its first data word. */
static inline uint32_t wsuper_new_struct(wsuper_builder *b, uint32_t ptr, uint16_t dwords,
                                         uint16_t ptrs) {
  uint32_t at = wsuper_new_words(b, (uint64_t)dwords + ptrs);
  int32_t off = (int32_t)at - (int32_t)ptr - 1;
  wsuper_put64(b, ptr, (uint64_t)(uint32_t)(off * 4) | ((uint64_t)dwords << 32) |
                           ((uint64_t)ptrs << 48));
  return at;
}

/* A list of `n` elements of size code `code` (1 bit, 2 byte, 3 two bytes, 4 four,
 * 5 eight, 6 pointer); returns its first word. */
static inline uint32_t wsuper_new_list(wsuper_builder *b, uint32_t ptr, uint32_t code,
                                       uint32_t n) {
  static const uint8_t bits[] = {0, 1, 8, 16, 32, 64, 64};
  if (n >= (1u << 29)) { wsuper_builder_fail(b, "a list of 2^29 elements or more"); return 0; }
  uint32_t at = wsuper_new_words(b, ((uint64_t)n * bits[code] + 63) / 64);
  int32_t off = (int32_t)at - (int32_t)ptr - 1;
  wsuper_put64(b, ptr, (uint64_t)((uint32_t)(off * 4) | 1) | ((uint64_t)(code | (n << 3)) << 32));
  return at;
}

/* A list of `n` structs; returns the first word of element 0.  `n` is bounded as
 * any list's is (empty structs take no words: the words alone do not bound it, and
 * the tag's count is 30 bits). */
static inline uint32_t wsuper_new_struct_list(wsuper_builder *b, uint32_t ptr, uint32_t n,
                                              uint16_t dwords, uint16_t ptrs) {
  uint64_t words = (uint64_t)n * (dwords + ptrs);
  if (n >= (1u << 29) || words >= (1u << 29)) {
    wsuper_builder_fail(b, "a list of structs of 2^29 elements or words or more");
    return 0;
  }
  uint32_t tag = wsuper_new_words(b, 1 + words);
  int32_t off = (int32_t)tag - (int32_t)ptr - 1;
  wsuper_put64(b, ptr, (uint64_t)((uint32_t)(off * 4) | 1) | ((uint64_t)(7 | (words << 3)) << 32));
  wsuper_put64(b, tag, (uint64_t)(n << 2) | ((uint64_t)dwords << 32) | ((uint64_t)ptrs << 48));
  return tag + 1;
}

static inline void wsuper_set_bytes(wsuper_builder *b, uint32_t ptr, const void *p, uint32_t n,
                                    bool nul) {
  if (!p && !nul) return; /* null Data */
  /* counted in 64 bits: a Text of 2^32 - 1 bytes and its NUL were a list of none */
  if ((uint64_t)n + (nul ? 1 : 0) >= (1u << 29)) {
    wsuper_builder_fail(b, "a Text or Data of 2^29 bytes or more");
    return;
  }
  uint32_t at = wsuper_new_list(b, ptr, 2, n + (nul ? 1 : 0));
  if (!b->failed && n) memcpy(wsuper_word(b, at), p, n);
}

static inline void wsuper_set_text(wsuper_builder *b, uint32_t ptr, wsuper_text t) {
  if (t.ptr) wsuper_set_bytes(b, ptr, t.ptr, t.len, true);
}

static inline void wsuper_set_data(wsuper_builder *b, uint32_t ptr, wsuper_data d) {
  if (d.ptr) wsuper_set_bytes(b, ptr, d.ptr, d.len, false);
}

static inline void wsuper_set_cap(wsuper_builder *b, uint32_t ptr, wsuper_cap h) {
  if (h == 0) return;
  if (b->ncaps >= 256) { wsuper_builder_fail(b, "more than 256 capabilities"); return; }
  b->caps[b->ncaps] = h;
  wsuper_put64(b, ptr, 3 | ((uint64_t)b->ncaps << 32));
  b->ncaps++;
}

/* The framed message (segment table + segment) and its length. */
static inline const uint8_t *wsuper_builder_bytes(wsuper_builder *b, int32_t *len) {
  uint32_t head[2] = {0, b->words};
  memcpy(b->buf, head, 8);
  *len = (int32_t)(8 + (size_t)b->words * 8);
  return b->buf;
}

/* ------------------------------------------------------------------ reader */

typedef struct {
  const uint8_t *seg;
  uint32_t words;
  const int32_t *caps;
  uint32_t ncaps;
  bool bad;         /* set by any check that failed: treat the message as malformed */
  const char *why;  /* what the first check that failed found (wsuper_bad) */
  uint32_t depth;   /* structs being decoded inside one another (at most WSUPER_MAX_DEPTH) */
  uintptr_t stack;  /* the frame the outermost of them was decoded in (wsuper_enter) */
  uint64_t budget;  /* words left to decode: pointers that share a target cannot amplify */
  uint8_t taken[32]; /* caps handed out by wsuper_get_cap (a message has at most 256) */
} wsuper_reader;

#define WSUPER_MAX_DEPTH 64
/* The stack a decode may use below the frame of the outermost struct it decodes.
 * Each struct inside another is one more frame of its _load function, whose size
 * grows with the struct's fields (4.7 KiB for a struct of 300 struct fields, at
 * -O2): 64 of them were past wasm's 64 KiB stack, which nothing guards, and the
 * decode went on writing over the plugin's own data below it.  A plugin linked
 * with a larger stack (-Wl,-z,stack-size=N) may define a larger budget first. */
#ifndef WSUPER_STACK_BUDGET
#define WSUPER_STACK_BUDGET (24u << 10)
#endif
/* The stack a served call or a decode leaves unused above the plugin's data.  In
 * wasm the stack lies right above them (as wasm-ld lays a module out, and `wsuper
 * build`), and calls served while the plugin waits in its own (A calls B, B calls
 * A back, up to 32 deep) each take their frames below the last: a peer that
 * called back and forth ran the stack into the plugin's data. */
#ifndef WSUPER_STACK_RESERVE
#define WSUPER_STACK_RESERVE (16u << 10)
#endif
#if defined(__wasm__)
extern char __data_end, __heap_base; /* wasm-ld's: the stack lies between them */
#endif

/* Whether WSUPER_STACK_RESERVE bytes of stack (a quarter of a stack smaller than
 * twice that: -Wl,-z,stack-size=N) are left above the plugin's data.  Always, but
 * in wasm; and there too when the stack lies below the data (--stack-first),
 * where running out of it traps. */
static inline bool wsuper_stack_left(void) {
#if defined(__wasm__)
  uintptr_t here = (uintptr_t)__builtin_frame_address(0), floor = (uintptr_t)&__data_end;
  uintptr_t top = (uintptr_t)&__heap_base;
  uintptr_t reserve = WSUPER_STACK_RESERVE;
  if (top > floor && top - floor < 2 * reserve) reserve = (top - floor) / 4;
  return here <= floor || here - floor >= reserve;
#else
  return true;
#endif
}
/* The decoding budget: eight words per word of the message (each object is charged
 * its size: a struct its words, a list of bits its bytes, any other list its
 * elements, a list of structs its words and elements), and this many more, so that a
 * list of empty structs, which takes no room in the message, can still be read. */
#define WSUPER_BUDGET_SLACK 65536u

/* The message is malformed (r->bad), and why: the first reason found stays. */
static inline void wsuper_bad(wsuper_reader *r, const char *why) {
  if (!r->bad || !r->why) r->why = why;
  r->bad = true;
}

/* Charge `words` (at least one) to the decoding budget. */
static inline bool wsuper_spend(wsuper_reader *r, uint64_t words) {
  if (words == 0) words = 1;
  if (words > r->budget) {
    wsuper_bad(r, "more to decode than its size allows (pointers that share their targets)");
    r->budget = 0;
    return false;
  }
  r->budget -= words;
  return true;
}

typedef struct { uint32_t at; uint16_t dwords, ptrs; bool present; } wsuper_loc;

/* Whether a decode may go one struct deeper (r->depth then counts it; the caller
 * takes it back): no more than WSUPER_MAX_DEPTH structs inside one another, and no
 * more than WSUPER_STACK_BUDGET bytes of stack below the frame the outermost was
 * decoded in, nor closer than WSUPER_STACK_RESERVE to the plugin's data.  Any
 * refused: the message is malformed (r->bad). */
static inline bool wsuper_enter(wsuper_reader *r) {
  uintptr_t here = (uintptr_t)__builtin_frame_address(0);
  if (r->depth == 0) r->stack = here;
  if (r->depth >= WSUPER_MAX_DEPTH) {
    wsuper_bad(r, "structs nested more than 64 deep");
    return false;
  }
  if ((r->stack > here && r->stack - here > WSUPER_STACK_BUDGET) || !wsuper_stack_left()) {
    wsuper_bad(r, "structs nested too deep for the stack left");
    return false;
  }
  r->depth++;
  return true;
}
#define WSUPER_NULL_PTR 0xFFFFFFFFu

static inline uint64_t wsuper_read64(const wsuper_reader *r, uint32_t w) {
  uint64_t v;
  memcpy(&v, r->seg + (size_t)w * 8, 8);
  return v;
}

static inline int wsuper_reader_init(wsuper_reader *r, const uint8_t *msg, uint32_t len,
                                     const int32_t *caps, uint32_t ncaps) {
  memset(r, 0, sizeof *r);
  uint32_t head[2];
  if (len < 16) return WSUPER_E_MESSAGE;
  memcpy(head, msg, 8);
  if (head[0] != 0 || head[1] == 0 || (uint64_t)head[1] * 8 > len - 8) return WSUPER_E_MESSAGE;
  r->seg = msg + 8;
  r->words = head[1];
  r->budget = 8 * (uint64_t)head[1] + WSUPER_BUDGET_SLACK;
  r->caps = caps;
  r->ncaps = ncaps;
  return WSUPER_OK;
}

/* The word a pointer field lives in (WSUPER_NULL_PTR past the struct's pointers). */
static inline uint32_t wsuper_ptr(wsuper_loc s, uint16_t index) {
  return s.present && index < s.ptrs ? s.at + s.dwords + index : WSUPER_NULL_PTR;
}

/* Where a pointer leads: kind (0 struct, 1 list, 3 capability), target word. */
static inline bool wsuper_follow(wsuper_reader *r, uint32_t ptr, uint64_t *v, uint32_t *target) {
  if (ptr == WSUPER_NULL_PTR || ptr >= r->words) return false;
  *v = wsuper_read64(r, ptr);
  if (*v == 0) return false;
  int64_t t = (int64_t)ptr + 1 + ((int32_t)(uint32_t)*v >> 2);
  if ((*v & 3) == 2) { wsuper_bad(r, "a far pointer (a message here is one segment)"); return false; }
  if ((*v & 3) != 3 && (t < 0 || t > r->words)) {
    wsuper_bad(r, "a pointer to outside the message");
    return false;
  }
  *target = (uint32_t)t;
  return true;
}

static inline wsuper_loc wsuper_get_struct(wsuper_reader *r, uint32_t ptr) {
  wsuper_loc s = {0, 0, 0, false};
  uint64_t v;
  uint32_t t;
  if (!wsuper_follow(r, ptr, &v, &t)) return s;
  if ((v & 3) != 0) { wsuper_bad(r, "a list or a capability where a struct goes"); return s; }
  s.dwords = (uint16_t)(v >> 32);
  s.ptrs = (uint16_t)(v >> 48);
  if ((uint64_t)t + s.dwords + s.ptrs > r->words) {
    wsuper_bad(r, "a struct past the end of the message");
    return s;
  }
  if (!wsuper_spend(r, (uint64_t)s.dwords + s.ptrs)) return s;
  s.at = t;
  s.present = true;
  return s;
}

static inline wsuper_loc wsuper_root(wsuper_reader *r) { return wsuper_get_struct(r, 0); }

#define WSUPER_GETTER(name, T)                                                       \
  static inline T name(const wsuper_reader *r, wsuper_loc s, uint32_t byte) {        \
    T v = 0;                                                                         \
    if (s.present && byte + sizeof v <= (uint32_t)s.dwords * 8)                     \
      memcpy(&v, r->seg + (size_t)s.at * 8 + byte, sizeof v);                        \
    return v;                                                                        \
  }
WSUPER_GETTER(wsuper_get_u8, uint8_t)
WSUPER_GETTER(wsuper_get_u16, uint16_t)
WSUPER_GETTER(wsuper_get_u32, uint32_t)
WSUPER_GETTER(wsuper_get_u64, uint64_t)

static inline bool wsuper_get_bool(const wsuper_reader *r, wsuper_loc s, uint32_t bit) {
  if (!s.present || bit / 8 >= (uint32_t)s.dwords * 8) return false;
  return (r->seg[(size_t)s.at * 8 + bit / 8] >> (bit % 8)) & 1;
}

/* A list of `code`-sized elements: its first word and element count. */
static inline uint32_t wsuper_get_list(wsuper_reader *r, uint32_t ptr, uint32_t code,
                                       uint32_t *n) {
  static const uint8_t bits[] = {0, 1, 8, 16, 32, 64, 64};
  uint64_t v;
  uint32_t t;
  *n = 0;
  if (!wsuper_follow(r, ptr, &v, &t)) return 0;
  uint32_t c = (uint32_t)(v >> 32) & 7, count = (uint32_t)(v >> 35);
  if ((v & 3) != 1 || c != code || c == 7) {
    wsuper_bad(r, code == 2 ? "no list of bytes (Text, Data, List(UInt8)) where one goes"
                  : "no list of the schema's element size where one goes");
    return 0;
  }
  if ((uint64_t)t + ((uint64_t)count * bits[code] + 63) / 64 > r->words ||
      (uint64_t)count > (uint64_t)r->words * 64) {
    wsuper_bad(r, "a list past the end of the message");
    return 0;
  }
  /* a list of bits is charged its bytes: eight of them per word, like everything else */
  if (!wsuper_spend(r, code == 1 ? ((uint64_t)count + 7) / 8 : count)) return 0;
  *n = count;
  return t;
}

/* A list of structs: element 0's location (dwords and ptrs give the stride). */
static inline wsuper_loc wsuper_get_struct_list(wsuper_reader *r, uint32_t ptr, uint32_t *n) {
  wsuper_loc s = {0, 0, 0, false};
  uint64_t v, tag;
  uint32_t t;
  *n = 0;
  if (!wsuper_follow(r, ptr, &v, &t)) return s;
  uint64_t words = v >> 35;
  if ((v & 3) != 1 || ((v >> 32) & 7) != 7) {
    wsuper_bad(r, "no list of structs where one goes");
    return s;
  }
  if (t + 1 + words > r->words) { wsuper_bad(r, "a list past the end of the message"); return s; }
  tag = wsuper_read64(r, t);
  uint32_t count = (uint32_t)(tag & 0xFFFFFFFFu) >> 2;
  s.dwords = (uint16_t)(tag >> 32);
  s.ptrs = (uint16_t)(tag >> 48);
  /* empty elements take no room: the budget alone bounds how many there are */
  if ((tag & 3) != 0 || (uint64_t)count * (s.dwords + s.ptrs) > words) {
    wsuper_bad(r, "a list of structs whose tag word is no struct's or overruns the list");
    return s;
  }
  if (!wsuper_spend(r, count + words)) return s;
  s.at = t + 1;
  s.present = true;
  *n = count;
  return s;
}

#define WSUPER_LIST_GETTER(name, T)                                                  \
  static inline T name(const wsuper_reader *r, uint32_t at, uint32_t i) {            \
    T v;                                                                             \
    memcpy(&v, r->seg + (size_t)at * 8 + (size_t)i * sizeof v, sizeof v);           \
    return v;                                                                        \
  }
WSUPER_LIST_GETTER(wsuper_elem_u8, uint8_t)
WSUPER_LIST_GETTER(wsuper_elem_u16, uint16_t)
WSUPER_LIST_GETTER(wsuper_elem_u32, uint32_t)
WSUPER_LIST_GETTER(wsuper_elem_u64, uint64_t)

static inline wsuper_loc wsuper_element(wsuper_loc first, uint32_t i) {
  wsuper_loc s = first;
  s.at = first.at + i * (uint32_t)(first.dwords + first.ptrs);
  return s;
}

static inline wsuper_text wsuper_get_text(wsuper_reader *r, uint32_t ptr) {
  wsuper_text t = {"", 0};
  uint32_t n, at = wsuper_get_list(r, ptr, 2, &n);
  if (n == 0) {
    /* a list of no bytes (not a null pointer) has no NUL either: Cap'n Proto refuses it */
    if (!r->bad && ptr < r->words && wsuper_read64(r, ptr) != 0) wsuper_bad(r, "text without its NUL");
    return t;
  }
  const char *p = (const char *)(r->seg + (size_t)at * 8);
  if (p[n - 1] != 0) { wsuper_bad(r, "text without its NUL"); return t; } /* Text ends with NUL */
  t.ptr = p;
  t.len = n - 1;
  return t;
}

static inline wsuper_data wsuper_get_data(wsuper_reader *r, uint32_t ptr) {
  wsuper_data d = {NULL, 0};
  uint32_t n, at = wsuper_get_list(r, ptr, 2, &n);
  if (n) { d.ptr = r->seg + (size_t)at * 8; d.len = n; }
  return d;
}

static inline wsuper_cap wsuper_get_cap(wsuper_reader *r, uint32_t ptr) {
  uint64_t v;
  uint32_t t;
  if (!wsuper_follow(r, ptr, &v, &t)) return 0;
  uint32_t i = (uint32_t)(v >> 32);
  /* an "other" pointer is a capability only with the rest of its low word zero:
   * Cap'n Proto reserves the other values (and its readers refuse them) */
  if ((uint32_t)v != 3) { wsuper_bad(r, "no capability where one goes"); return 0; }
  if (i >= r->ncaps || i >= 256) {
    wsuper_bad(r, "a capability index past the message's capabilities");
    return 0;
  }
  /* each capability once: two fields with one handle would release each other's
   * (and, once the number is reused, someone else's); no builder writes that */
  if ((r->taken[i >> 3] >> (i & 7)) & 1) {
    wsuper_bad(r, "one capability in two places");
    return 0;
  }
  r->taken[i >> 3] |= (uint8_t)(1u << (i & 7));
  return r->caps[i];
}

/* After a call's results are read: release the reply's handles that the results
 * did not hand out (a callee may send capabilities the method does not return),
 * or all of them (`all`: the results are not used).  The generated client stubs
 * do it; the handles they hand out are yours. */
static inline void wsuper_release_unread(wsuper_reader *r, bool all) {
  for (uint32_t i = 0; i < r->ncaps && i < 256; i++)
    if (r->caps[i] > 0 && (all || !((r->taken[i >> 3] >> (i & 7)) & 1)))
      wsuper_release(r->caps[i]);
}

/* `n` elements of `size` bytes, zeroed; NULL when out of memory or when n * size does
 * not fit in a size_t (wasm32's is 32 bits: a count from a message times a large C
 * struct must not wrap around to a small block). */
static inline void *wsuper_alloc_array(wsuper_arena *a, size_t size, uint64_t n) {
  if (n == 0) n = 1;
  if (n > SIZE_MAX / size) return NULL;
  return wsuper_alloc(a, size * (size_t)n);
}

#define WSUPER_ARRAY(a, T, n) ((T *)wsuper_alloc_array((a), sizeof(T), (uint64_t)(n)))

/* ------------------------------------------------------------------ calls */

/* Send `b` as the params of interface.method on `cap`; on success `r` reads the
 * results (their bytes live in the arena). */
static inline int wsuper_invoke(wsuper_arena *a, wsuper_cap cap, uint64_t iface, uint16_t method,
                                wsuper_builder *b, wsuper_reader *r) {
  int32_t len, out[2];
  if (b->failed) {
    wsuper_builder_free(b);
    return wsuper_error2(a, "params not sent: ", b->why), WSUPER_E_MESSAGE;
  }
  const uint8_t *msg = wsuper_builder_bytes(b, &len);
  int32_t rc = wsuper_call(cap, (int64_t)iface, method, msg, len, b->caps, (int32_t)b->ncaps, out);
  wsuper_builder_free(b);
  uint8_t *buf = (uint8_t *)wsuper_alloc(a, (size_t)out[0] + 1);
  int32_t *caps = WSUPER_ARRAY(a, int32_t, out[1]);
  if (!buf || !caps) return WSUPER_E_NOMEM;
  wsuper_reply_read(buf, caps);
  if (rc != WSUPER_OK) {
    buf[out[0]] = 0;
    a->error = (const char *)buf;
    return rc;
  }
  if (wsuper_reader_init(r, buf, (uint32_t)out[0], caps, (uint32_t)out[1]) != WSUPER_OK) {
    for (int32_t i = 0; i < out[1]; i++)
      if (caps[i] > 0) wsuper_release(caps[i]);
    return wsuper_error(a, "malformed results: no single-segment message"), WSUPER_E_MESSAGE;
  }
  return WSUPER_OK;
}

/* Inside wsuper_dispatch: read this call's params into the arena. */
static inline int wsuper_read_params(wsuper_arena *a, wsuper_reader *r, int32_t len,
                                     int32_t ncaps) {
  uint8_t *buf = (uint8_t *)wsuper_alloc(a, (size_t)len);
  int32_t *caps = WSUPER_ARRAY(a, int32_t, ncaps);
  if (!buf || !caps) return WSUPER_E_NOMEM;
  wsuper_params_read(buf, caps);
  if (len == 0) { /* no params at all: an empty struct */
    memset(r, 0, sizeof *r);
    r->caps = caps;
    r->ncaps = (uint32_t)ncaps;
    return WSUPER_OK;
  }
  return wsuper_reader_init(r, buf, (uint32_t)len, caps, (uint32_t)ncaps);
}

static inline int wsuper_send_results(wsuper_builder *b) {
  int32_t len;
  if (b->failed) { wsuper_builder_free(b); return WSUPER_E_MESSAGE; }
  const uint8_t *msg = wsuper_builder_bytes(b, &len);
  int32_t rc = wsuper_results_set(msg, len, b->caps, (int32_t)b->ncaps);
  wsuper_builder_free(b);
  return rc;
}

/* Why wsuper_send_results(b) returned `rc`: the builder's reason, or the host's. */
static inline const char *wsuper_unsent(const wsuper_builder *b, int rc) {
  if (b->failed && b->why) return b->why;
  switch (rc) {
  case WSUPER_E_MESSAGE: return "larger than the compartment's limits.message_size";
  case WSUPER_E_BADHANDLE: return "a capability field holds a handle not in the c-list";
  case WSUPER_E_STATE: return "results already set, or no call being served";
  default: return "refused by the host";
  }
}

/* End a dispatch that failed: the caller gets E_FAILED and this reason. */
static inline int32_t wsuper_dispatch_failed(wsuper_arena *a, int rc) {
  const char *why = a->error ? a->error
                  : rc == WSUPER_E_MESSAGE ? "malformed message"
                  : rc == WSUPER_E_UNIMPLEMENTED ? "method not implemented"
                  : rc == WSUPER_E_NOMEM ? "out of memory" : "failed";
  wsuper_fail(why, (int32_t)strlen(why));
  return rc ? rc : WSUPER_E_FAILED;
}

/* ------------------------------------------------------------------ calls served
 * The arena of each call being served (the params decoded, up to message_size)
 * lives here, not in the frame of its dispatch: a call that traps or runs out of
 * fuel_per_call never returns to free it, and each such call's stayed taken for
 * good, until every call of every caller failed out of memory.  The engine puts
 * the stack pointer back after such a call (docs/guest-abi.md, __stack_pointer),
 * so a call served later at its depth or above has a frame at or above its
 * frame: it frees the arenas of frames that are gone.  The calls below it, which
 * wait (a call served while the plugin waits in one of its own), have frames
 * above it and keep theirs. */
#ifndef WSUPER_CALLS_SERVED
#define WSUPER_CALLS_SERVED 64
#endif
static struct {
  uintptr_t frame;
  wsuper_arena arena;
  wsuper_builder *results; /* its results' builder (in the arena), or NULL */
} wsuper__served[WSUPER_CALLS_SERVED];
static uint32_t wsuper__nserved;

/* Free what the call served in `slot` holds: its results' buffer, its arena. */
static inline void wsuper__served_free(uint32_t slot) {
  if (wsuper__served[slot].results) wsuper_builder_free(wsuper__served[slot].results);
  wsuper__served[slot].results = NULL;
  wsuper_arena_free(&wsuper__served[slot].arena);
}

/* Free the arenas of the calls served from `slot` up.  Each stays in the table
 * until it is freed: one whose free is cut short (fuel_per_call spent in it, a
 * client choosing its input so that it is) is freed by the next call served at
 * its depth or above, not leaked with the handles it was to release. */
static inline void wsuper_served_end(uint32_t slot) {
  while (wsuper__nserved > slot) {
    wsuper__served_free(wsuper__nserved - 1);
    wsuper__nserved--;
  }
}

/* The arena of a call served by the dispatch whose frame is at `frame`, in
 * `*slot`; NULL when WSUPER_CALLS_SERVED calls are being served already. */
static inline wsuper_arena *wsuper_served_begin(uintptr_t frame, uint32_t *slot) {
  uint32_t n = wsuper__nserved;
  while (n && wsuper__served[n - 1].frame <= frame) n--;     /* gone: never returned */
  wsuper_served_end(n);
  if (n == WSUPER_CALLS_SERVED) return NULL;
  wsuper__served[n].frame = frame;
  wsuper__served[n].arena.blocks = NULL;
  wsuper__served[n].arena.error = NULL;
  wsuper__served[n].arena.later = NULL;
  wsuper__served[n].arena.freeing = NULL;
  wsuper__served[n].arena.params = NULL;
  wsuper__served[n].results = NULL;
  wsuper__nserved = n + 1;
  *slot = n;
  return &wsuper__served[n].arena;
}

/* The builder of the results of the call served in `slot` (its arena `a`), begun:
 * its buffer (up to message_size) is freed with the arena, also when the call
 * is cut short while its results are built or sent (their size is the client's
 * to choose: in the dispatch's frame, it was lost each time); NULL: no memory. */
static inline wsuper_builder *wsuper_served_results(wsuper_arena *a, uint32_t slot) {
  wsuper_builder *b = (wsuper_builder *)wsuper_alloc(a, sizeof *b);
  if (!b) return NULL;
  b->buf = b->spare = NULL;     /* before it is registered: freed from here on */
  wsuper__served[slot].results = b;
  wsuper_builder_init(b);
  return b;
}

/* End a dispatch refused before it had an arena. */
static inline int32_t wsuper_dispatch_refused(const char *why, int rc) {
  wsuper_arena none = {0, why};
  return wsuper_dispatch_failed(&none, rc);
}

/* A plugin that serves one interface: defines the wsuper_dispatch export.
 *   #define WSUPER_SERVE_KV_STORE
 *   #include "kv.h"
 *   WSUPER_SERVE_ONLY(kv_store)                                            */
#define WSUPER_SERVE_ONLY(name)                                                     \
  __attribute__((export_name("wsuper_dispatch"))) int32_t wsuper_dispatch(         \
      int32_t object, int64_t iface, int32_t method, int32_t len, int32_t ncaps) {  \
    return name##_dispatch(object, iface, method, len, ncaps);                      \
  }

#endif /* WSUPER_H */
