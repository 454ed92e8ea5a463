/* The fast lane: the supervisor's native forwarding path (see supervisor/fastlane.py).
 *
 * One thread, no Python: it owns the engines' sockets (epoll), frames what
 * they send, and forwards the *plain* calls and returns (fastwire.h: a plain
 * header in the first segment, in a message of any number of segments) along
 * routes the Python router installed; every other message goes to Python,
 * in order, through a per-peer queue and one eventfd.  All writes to an
 * engine, the Python router's too, go through this module's per-peer output
 * queue, so nothing interleaves.  One mutex guards every table; the thread
 * never touches a Python object, and Python-facing functions never block.
 *
 * No Python code runs while the mutex is held: with it, the Python-facing
 * functions read and change only C data (they copy what they return into C
 * records, and may take a reference with Py_INCREF, which runs nothing); they
 * build Python objects, and drop references (which may run finalizers and the
 * garbage collector, and so any Python code, a Lane method included), only
 * after unlocking.  A route that died is detached with the mutex held and its
 * context released after (unlock(), reap()).
 *
 * Invariants (docs/design.md, "The fast lane"):
 *  - a peer's messages are handled in order: once one went to Python, the
 *    peer is *held* and every later one goes to Python too, until Python
 *    has handled them all (release);
 *  - an answer id is open on at most one side: each peer's `answers` map holds every
 *    answer id open on either side (the Python side reports its own through
 *    open_answer/close_answer), so neither side can accept a reused id;
 *  - native question ids are >= 2^31 and Python's are below; a native call
 *    that Python takes over (claim, uninstall, drop_peer, expired) keeps its
 *    question id reserved until Python's connection drops it;
 *  - uninstall() returns only after the route is gone: no call is forwarded
 *    through it afterwards;
 *  - while Lane.write sends the front of a peer's `out` without the mutex
 *    (`sending`), nobody else sends to that peer (flush returns at once and
 *    epoll is not asked for EPOLLOUT); only Python, holding the GIL, changes
 *    or frees a peer or its descriptor, so both outlive that send.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "../capnp_schemas/fastwire.h"

#define NATIVE_QID_BASE 0x80000000u
#define READ_CHUNK (64 * 1024)
#define READ_BUDGET (256 * 1024)    /* bytes read from one peer per wake-up */
#define TO_PYTHON_LIMIT (1u << 20)  /* bytes queued for Python before reading pauses */
#define AUDIT_CAPACITY 65536
#define NOFINISH_RING 4096          /* protocol.MAX_UNFINISHED: allowances kept */
#define NF_CAP (2 * NOFINISH_RING)  /* the ring's places: the kept ones, and room for ones
                                       gone since (compacted when full) */

static int64_t now_ns(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* ------------------------------------------------------------ a u64 -> pointer map */

typedef struct {
  uint64_t *keys;
  void **vals;
  size_t cap, len; /* cap: a power of two; key 0 is never stored (keys are offset by 1) */
} Map;

/* Where a key goes: SipHash-1-3 of it, under a key drawn at random when the module is
 * loaded (hash_init).  Peers choose most of the keys (their answer ids, in their
 * `answers` and `nofinish`): hashed by a fixed, public function (murmur's fmix64, a
 * bijection), a peer found ids that all land in one slot (a scan of its 32-bit ids:
 * ~1 s), and every lookup of its ids walked one cluster of up to 4096 (max_unfinished)
 * with the mutex held: the lane's thread spent ~3 times as long on each of its
 * round trips, every peer's forwarding waiting meanwhile (an outside review, r269). */
static uint64_t hash_k0, hash_k1;

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                            \
  do {                                                                                      \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                               \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                  \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                  \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                               \
  } while (0)

static uint64_t mix(uint64_t k) {
  uint64_t v0 = hash_k0 ^ 0x736f6d6570736575ull, v1 = hash_k1 ^ 0x646f72616e646f6dull;
  uint64_t v2 = hash_k0 ^ 0x6c7967656e657261ull, v3 = hash_k1 ^ 0x7465646279746573ull;
  const uint64_t b = 8ull << 56; /* the message: 8 bytes, the key */
  v3 ^= k;
  SIPROUND;
  v0 ^= k;
  v3 ^= b;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

/* the hash's key, from the kernel's random numbers, never waiting for them (early in
 * a boot: /dev/urandom's, as Python's own hash key); -1 if none are to be had */
static int hash_init(void) {
  uint64_t k[2];
  ssize_t n;
  do
    n = getrandom(k, sizeof k, GRND_NONBLOCK);
  while (n < 0 && errno == EINTR);
  if (n != (ssize_t)sizeof k) {
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t got = 0;
    while (got < sizeof k) {
      n = read(fd, (uint8_t *)k + got, sizeof k - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += (size_t)n;
    }
    close(fd);
    if (got < sizeof k) {
      if (!errno) errno = EIO;
      return -1;
    }
  }
  hash_k0 = k[0];
  hash_k1 = k[1];
  return 0;
}

static int map_grow(Map *m) {
  size_t cap = m->cap ? m->cap * 2 : 64;
  uint64_t *keys = calloc(cap, sizeof *keys);
  void **vals = calloc(cap, sizeof *vals);
  if (!keys || !vals) {
    free(keys);
    free(vals);
    return -1;
  }
  for (size_t i = 0; i < m->cap; i++) {
    if (!m->keys[i]) continue;
    size_t j = mix(m->keys[i]) & (cap - 1);
    while (keys[j]) j = (j + 1) & (cap - 1);
    keys[j] = m->keys[i];
    vals[j] = m->vals[i];
  }
  free(m->keys);
  free(m->vals);
  m->keys = keys;
  m->vals = vals;
  m->cap = cap;
  return 0;
}

static void *map_get(const Map *m, uint64_t key) {
  if (!m->cap) return NULL;
  key += 1;
  for (size_t j = mix(key) & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
    if (!m->keys[j]) return NULL;
    if (m->keys[j] == key) return m->vals[j];
  }
}

static int map_put(Map *m, uint64_t key, void *val) {
  if ((m->len + 1) * 2 > m->cap && map_grow(m)) return -1;
  key += 1;
  size_t j = mix(key) & (m->cap - 1);
  while (m->keys[j] && m->keys[j] != key) j = (j + 1) & (m->cap - 1);
  if (!m->keys[j]) m->len++;
  m->keys[j] = key;
  m->vals[j] = val;
  return 0;
}

static void *map_del(Map *m, uint64_t key) {
  if (!m->cap) return NULL;
  key += 1;
  size_t j = mix(key) & (m->cap - 1);
  while (m->keys[j] != key) {
    if (!m->keys[j]) return NULL;
    j = (j + 1) & (m->cap - 1);
  }
  void *val = m->vals[j];
  m->keys[j] = 0;
  m->vals[j] = NULL;
  m->len--;
  /* backward-shift deletion keeps every probe chain whole */
  for (size_t i = (j + 1) & (m->cap - 1); m->keys[i]; i = (i + 1) & (m->cap - 1)) {
    size_t home = mix(m->keys[i]) & (m->cap - 1);
    if ((i > j && (home <= j || home > i)) || (i < j && (home <= j && home > i))) {
      m->keys[j] = m->keys[i];
      m->vals[j] = m->vals[i];
      m->keys[i] = 0;
      m->vals[i] = NULL;
      j = i;
    }
  }
  return val;
}

/* the most slots a lookup in `m` walks: the longest distance of a key from its slot */
static size_t map_longest(const Map *m) {
  size_t most = 0;
  for (size_t i = 0; i < m->cap; i++) {
    if (!m->keys[i]) continue;
    size_t d = (i - (mix(m->keys[i]) & (m->cap - 1))) & (m->cap - 1);
    if (d + 1 > most) most = d + 1;
  }
  return most;
}

static void map_free(Map *m) {
  free(m->keys);
  free(m->vals);
  memset(m, 0, sizeof *m);
}

#define KEY(pid, id) (((uint64_t)(uint32_t)(pid) << 32) | (uint32_t)(id))

/* ------------------------------------------------------------ byte buffers */

typedef struct {
  uint8_t *p;
  size_t off, len, cap; /* the bytes are p[off..len) */
} Buf;

static uint8_t *buf_room(Buf *b, size_t n) {
  if (b->off && b->off == b->len) b->off = b->len = 0;
  if (b->len + n > b->cap && b->off) { /* compact first */
    memmove(b->p, b->p + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
  }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return NULL;
    b->p = p;
    b->cap = cap;
  }
  return b->p + b->len;
}

static int buf_put(Buf *b, const void *d, size_t n) {
  uint8_t *at = buf_room(b, n);
  if (!at) return -1;
  memcpy(at, d, n);
  b->len += n;
  return 0;
}

static inline size_t buf_size(const Buf *b) { return b->len - b->off; }

static void buf_free(Buf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* A buffer grows to hold the largest message (or backlog) it ever held, up to
 * twice message_size in, the hard limit out.  Kept at that size, every open
 * connection held it for as long as it stayed open (a review: 18 MiB each after
 * one 8 MiB call; max_connections of them, and each engine): once empty, a
 * buffer past BUF_KEEP gives it back. */
#define BUF_KEEP (1u << 20)
/* messages at least this large that go to Python are handed over in their input
 * buffer, not copied (to_python_whole) */
#define MOVE_TO_PYTHON (256u * 1024)

static void buf_trim(Buf *b) {
  if (b->off == b->len && b->cap > BUF_KEEP) buf_free(b);
}

/* ------------------------------------------------------------ tables */

struct Route;

typedef struct NCall { /* a call forwarded natively, not yet returned */
  int caller, callee;
  uint32_t aid, qid;
  struct Route *route;
  uint64_t interface_id;
  uint32_t method_id;
  int64_t t0, wall0, deadline;
  uint64_t size; /* the bytes of its params (Python's control.Forward.size, once handed over) */
  int orphan; /* its caller is gone: the return is dropped */
  int audited; /* holds one of the audit buffer's places (L->audit_held) */
  struct NCall *prev, *next; /* the route's calls in flight; once handed over, the list of them */
  PyObject *ctx; /* handed over: a reference to its route's context, for the record */
  double age;    /* handed over: seconds since it began */
} NCall;

typedef struct Route {
  int refs; /* the map, its calls in flight, its audit records */
  int live;
  PyObject *ctx; /* the Python router's record of it: decref'd only with the GIL */
  int caller, callee;
  uint32_t export_id, import_id;
  uint64_t interface_id, mask;
  int all_methods, audit;
  int64_t call_time;
  NCall *calls;
  /* in its caller's and its callee's lists (Peer.routes_from, routes_to) while in the
   * map: drop_peer takes down a peer's routes without walking everyone's */
  struct Route *from_prev, *from_next, *to_prev, *to_next;
  int listed;
  struct Route *next_zombie;
} Route;

typedef struct {
  Route *route;
  uint64_t interface_id;
  uint32_t method_id;
  int64_t wall0, duration;
} AuditRec;

enum { ITEM_BYTES, ITEM_EOF, ITEM_ERROR };

typedef struct Item {
  int kind, err;
  Buf data;
  struct Item *next;
} Item;

typedef struct Peer {
  int pid, fd;
  int closed;       /* no more reading (Python closed it, or end of stream) */
  int write_closed; /* writing failed: output is dropped */
  int held, ok, raw, in_ready, dirty;
  int sending;      /* Lane.write is sending the front of `out` without the mutex (see there):
                       nobody else sends to it meanwhile */
  uint64_t passing; /* bytes of a message past max_words still to hand to Python as they
                       come: its framer skips them (wire.Framer, Oversized) */
  int external;     /* an external client: returns keep their answer until its Finish */
  int lost;         /* errno: input was dropped (out of memory); take() ends the stream with it */
  int64_t useful;   /* CLOCK_MONOTONIC ns of the last call the lane forwarded from it or
                       return to or from it (since add, if none): useful work, for
                       evicting idle external connections (Release, Finish ... are not) */
  uint32_t events;
  Buf in, out;
  Item *qhead, *qtail;
  size_t qbytes;
  size_t soft, hard;
  uint64_t max_words, max_segments, message_size;
  long in_flight, native_open, py_open, returned_open;
  long to_open;     /* native calls to it in flight */
  struct Route *routes_from, *routes_to; /* the routes from it, and to it (in the map) */
  size_t slot;      /* its place in Lane.peers */
  uint64_t messages, partial_msg;
  int64_t partial_since;
  int64_t wrote_at;     /* CLOCK_MONOTONIC ns of its last write that took bytes (0: none) */
  int unheld;           /* an external client read again despite its backlog (Lane.unhold) */
  int64_t paused_since; /* CLOCK_MONOTONIC ns since the lane stopped reading it (0: reading):
                           time it was not read does not count against message_timeout */
  uint32_t next_qid;
  long served, failed;
  /* an engine's answers returned natively without a Finish to wait for, oldest first
   * (allocated at its first such return: 96 KiB a peer, which no external client
   * needs, took 48 KiB of every external connection's); nf_live of them are still
   * allowed (in `nofinish`): the others' ids were used again, or finished, since */
  uint32_t *nf_ring;
  uint64_t *nf_seq;
  size_t nf_head, nf_len, nf_live;
  uint64_t nf_next;
  /* its ids, in tables of its own, freed with it (in tables shared by all peers,
   * which never shrank, drop_peer walked everyone's for each connection that ended,
   * with the mutex held): */
  Map answers;  /* answer id -> NCall (native), PYOPEN or RETURNED: open on either side */
  Map reserved; /* question id -> RESERVED: a native call taken over by Python */
  Map nofinish; /* answer id -> sequence number: returned natively without a Finish */
  struct Peer *next_dirty;
} Peer;

typedef struct {
  PyObject_HEAD pthread_mutex_t mu;
  pthread_t thread;
  int running, epfd, evfd, stopfd;
  int wake;         /* the eventfd is to be written once the mutex is released (signal_python) */
  Map bypid;    /* peer id -> Peer */
  Peer **peers; /* the peers, dense (no holes: a removed one's place is refilled), for scans */
  size_t npeers, peers_cap;
  Map routes;   /* KEY(caller, export id) -> Route */
  Map calls;    /* KEY(callee, question id) -> NCall (each peer's ids: Peer.answers ...) */
  int *ready;
  size_t nready, ready_cap;
  Route *zombies;
  Peer *dirty;
  AuditRec *audit;
  size_t audit_head, audit_len;
  size_t audit_held; /* places kept for the records of audited calls in flight */
  size_t audit_cap;  /* the buffer's places: AUDIT_CAPACITY, or fewer (Lane(n), tests) */
  int draining; /* drain_audit() is building records of the first ones (they stay until built) */
  /* counters, for profiles */
  uint64_t c_calls, c_returns, c_to_python, c_wakeups, c_reads, c_writes;
  uint64_t c_walked; /* entries drop_peer looked at (its own, not everyone's) */
  uint64_t c_moved;  /* large messages handed to Python in their input buffer, not copied */
} Lane;

static void *const PYOPEN = (void *)1;
static void *const RETURNED = (void *)2; /* returned to an external client (natively, or by
                                            Python with no capabilities: returned()), not finished */
static void *const RESERVED = (void *)1;

static Peer *peer_get(Lane *L, long pid) {
  if (pid < 0) return NULL;
  return map_get(&L->bypid, (uint64_t)pid);
}

static void route_list(Lane *L, Route *r) {
  Peer *A = peer_get(L, r->caller), *B = peer_get(L, r->callee);
  if (!A || !B) return; /* (install checks that both are there) */
  r->from_prev = NULL;
  r->from_next = A->routes_from;
  if (A->routes_from) A->routes_from->from_prev = r;
  A->routes_from = r;
  r->to_prev = NULL;
  r->to_next = B->routes_to;
  if (B->routes_to) B->routes_to->to_prev = r;
  B->routes_to = r;
  r->listed = 1;
}

static void route_unlist(Lane *L, Route *r) {
  if (!r->listed) return;
  if (r->from_prev) {
    r->from_prev->from_next = r->from_next;
  } else {
    Peer *A = peer_get(L, r->caller);
    if (A) A->routes_from = r->from_next;
  }
  if (r->from_next) r->from_next->from_prev = r->from_prev;
  if (r->to_prev) {
    r->to_prev->to_next = r->to_next;
  } else {
    Peer *B = peer_get(L, r->callee);
    if (B) B->routes_to = r->to_next;
  }
  if (r->to_next) r->to_next->to_prev = r->to_prev;
  r->from_prev = r->from_next = r->to_prev = r->to_next = NULL;
  r->listed = 0;
}

static void route_drop(Lane *L, Route *r);

static void route_unref(Lane *L, Route *r) {
  if (--r->refs == 0) {
    r->next_zombie = L->zombies;
    L->zombies = r;
  }
}

/* The routes that died, detached with the mutex held; reap() frees them after it is released. */
static Route *detach_zombies(Lane *L) {
  Route *z = L->zombies;
  L->zombies = NULL;
  return z;
}

static void reap(Route *z) { /* with the GIL, never with the mutex: a decref may run Python code */
  while (z) {
    Route *r = z;
    z = r->next_zombie;
    Py_XDECREF(r->ctx);
    free(r);
  }
}

static void epoll_set(Lane *L, Peer *P) {
  uint32_t want = 0;
  /* Backpressure on what waits for a peer applies to external clients only.  An
   * engine writes blocking and reads nothing until its write is done: not read
   * while more than `soft` waited for it, an engine writing an answer larger than
   * its socket's buffer waited for the lane, and the lane for it, for good (the
   * compartment stuck, every call to it refused).  Its own calls' answers are
   * what reading it adds to its backlog, bounded by `hard` (cut off past it). */
  if (!P->closed && (!P->external || buf_size(&P->out) <= P->soft || P->unheld) &&
      P->qbytes <= TO_PYTHON_LIMIT)
    want |= EPOLLIN;
  /* (not while Lane.write sends it without the mutex: the lane's thread would be woken
   * for a flush it may not do, again and again, until that send is done) */
  if (buf_size(&P->out) && !P->write_closed && !P->sending) want |= EPOLLOUT;
  if (want == P->events || P->fd < 0) return;
  if ((P->events & EPOLLIN) && !(want & EPOLLIN)) {
    P->paused_since = now_ns(CLOCK_MONOTONIC);
  } else if (!(P->events & EPOLLIN) && (want & EPOLLIN) && P->paused_since) {
    /* a message half read when the lane stopped reading (backpressure: its answers
       wait, or Python's queue is full) had its clock stopped meanwhile */
    if (P->partial_since) P->partial_since += now_ns(CLOCK_MONOTONIC) - P->paused_since;
    P->paused_since = 0;
  }
  struct epoll_event ev = {.events = want, .data.u64 = (uint64_t)P->pid};
  if (!P->events)
    epoll_ctl(L->epfd, EPOLL_CTL_ADD, P->fd, &ev);
  else if (!want)
    epoll_ctl(L->epfd, EPOLL_CTL_DEL, P->fd, NULL);
  else
    epoll_ctl(L->epfd, EPOLL_CTL_MOD, P->fd, &ev);
  P->events = want;
}

static void signal_python(Lane *L, Peer *P) {
  if (P->in_ready) return;
  if (L->nready == L->ready_cap) {
    size_t cap = L->ready_cap ? 2 * L->ready_cap : 64;
    int *r = realloc(L->ready, cap * sizeof *r);
    if (!r) return; /* the next enqueue tries again */
    L->ready = r;
    L->ready_cap = cap;
  }
  L->ready[L->nready++] = P->pid;
  P->in_ready = 1;
  /* written after the mutex is released (wake_python): written under it, on one core
   * the woken host worker ran at once and waited for the mutex, a futex and two
   * switches more per host call */
  if (L->nready == 1) L->wake = 1;
}

/* Call with the mutex released, with what was in L->wake when it was (read under it). */
static void wake_python(Lane *L, int wake) {
  if (wake) {
    uint64_t one = 1;
    ssize_t k = write(L->evfd, &one, 8);
    (void)k;
  }
}

static Item *new_item(Peer *P, int kind) {
  Item *it = calloc(1, sizeof *it);
  if (!it) return NULL;
  it->kind = kind;
  if (P->qtail)
    P->qtail->next = it;
  else
    P->qhead = it;
  P->qtail = it;
  return it;
}

/* Out of memory for what the peer sent: nothing more is read from it, and once
 * Python has taken what is queued, the stream ends with an error (fail closed:
 * never a message silently missing from the middle of a stream). */
static void lose_input(Lane *L, Peer *P, int err) {
  if (!P->lost) P->lost = err;
  P->closed = 1;
  P->held = 1;
  epoll_set(L, P);
  signal_python(L, P);
}

static void to_python(Lane *L, Peer *P, const uint8_t *d, size_t n) {
  L->c_to_python++;
  if (P->lost) return;
  /* (not after a large message's own buffer, to_python_whole's: appending there could
   * move its megabytes) */
  Item *it = P->qtail && P->qtail->kind == ITEM_BYTES &&
                     buf_size(&P->qtail->data) < MOVE_TO_PYTHON
                 ? P->qtail
                 : new_item(P, ITEM_BYTES);
  if (!it || buf_put(&it->data, d, n)) {
    lose_input(L, P, ENOMEM);
    return;
  }
  P->qbytes += n;
  P->held = 1;
  signal_python(L, P);
}

/* A message of MOVE_TO_PYTHON bytes or more that goes to Python, at the start of
 * what P->in holds: the input buffer itself becomes the queued item's (what follows
 * the message, at
 * most a read's worth, moves to a new one), so that the lane thread does not copy
 * megabytes with the mutex held (every Python-facing call of the lane waits for
 * it, the GIL held: an external client's 8 MiB calls, refused while their callee's
 * backlog is full, held it ~5 ms each at a load of 8).  1 if it did (P->in is new:
 * its bytes start after the message), 0 if not (to_python copies it, as before). */
static int to_python_whole(Lane *L, Peer *P, size_t n) {
  if (n < MOVE_TO_PYTHON || P->lost) return 0;
  size_t end = P->in.off + n, rest = P->in.len - end;
  Buf fresh = {0};
  if (rest && buf_put(&fresh, P->in.p + end, rest)) return 0;
  Item *it = new_item(P, ITEM_BYTES);
  if (!it) {
    buf_free(&fresh);
    return 0;
  }
  L->c_to_python++;
  L->c_moved++;
  it->data = P->in;
  it->data.len = end;
  P->in = fresh;
  P->qbytes += n;
  P->held = 1;
  signal_python(L, P);
  return 1;
}

static void end_of_input(Lane *L, Peer *P, int err) {
  if (P->closed) return;
  Item *it = new_item(P, err ? ITEM_ERROR : ITEM_EOF);
  if (!it) {
    lose_input(L, P, err ? err : ENOMEM);
    return;
  }
  it->err = err;
  P->closed = 1;
  P->held = 1;
  epoll_set(L, P);
  signal_python(L, P);
}

static void mark_dirty(Lane *L, Peer *P) {
  if (!P->dirty) {
    P->dirty = 1;
    P->next_dirty = L->dirty;
    L->dirty = P;
  }
}

static void flush(Lane *L, Peer *P) {
  if (P->sending) return; /* Lane.write sends the front of `out` now, and flushes after */
  while (buf_size(&P->out) && !P->write_closed) {
    /* send, not write: a peer that went away is EPIPE here, never a SIGPIPE */
    ssize_t k = send(P->fd, P->out.p + P->out.off, buf_size(&P->out), MSG_NOSIGNAL | MSG_DONTWAIT);
    L->c_writes++;
    if (k > 0) {
      P->out.off += (size_t)k;
      P->wrote_at = now_ns(CLOCK_MONOTONIC);
      P->unheld = 0; /* it reads: backpressure holds again (Lane.unhold) */
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    int err = k < 0 ? errno : EPIPE;
    P->write_closed = 1; /* the peer is gone: its reading side will tell */
    /* ... an engine's does (it ends, and its last messages are still read); an
     * external client's need not: one that shut down only its reading side (EPIPE
     * here, while what it sends is still read) was served on and on, its answers
     * dropped, never finished (max_unfinished) nor read (the queue's hard limit),
     * where trio's sockets (runtime._Link) cut it off as gone.  It is gone here too:
     * its stream ends now, with this error. */
    if (P->external) end_of_input(L, P, err);
  }
  if (P->write_closed) P->out.off = P->out.len = 0;
  if (!buf_size(&P->out)) {
    P->out.off = P->out.len = 0;
    buf_trim(&P->out);
  }
  epoll_set(L, P);
}

static void flush_dirty(Lane *L) {
  while (L->dirty) {
    Peer *P = L->dirty;
    L->dirty = P->next_dirty;
    P->dirty = 0;
    if (P->fd >= 0) flush(L, P);
  }
}

/* ------------------------------------------------------------ the calls */

static void ncall_unlink(NCall *c) {
  if (c->prev)
    c->prev->next = c->next;
  else if (c->route->calls == c)
    c->route->calls = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

/* the call leaves the native tables (its question id is free again unless reserved) */
static void ncall_forget(Lane *L, NCall *c, int keep_answer) {
  map_del(&L->calls, KEY(c->callee, c->qid));
  Peer *B = peer_get(L, c->callee);
  if (B && B->to_open) B->to_open--;
  if (c->audited) { /* its record's place: taken (fast_return) or no longer needed */
    c->audited = 0;
    L->audit_held--;
  }
  if (!c->orphan && !keep_answer) {
    Peer *A = peer_get(L, c->caller);
    if (A) {
      if (map_get(&A->answers, c->aid) == c) map_del(&A->answers, c->aid);
      A->native_open--;
    }
  }
  ncall_unlink(c);
}

/* The ring's entry at `i` (an index from its head) is still an allowance: its id was
 * not used again, nor finished, since (or added again later, with a newer number). */
static int nofinish_live(Peer *A, size_t i) {
  size_t at = (A->nf_head + i) % NF_CAP;
  return (uint64_t)(uintptr_t)map_get(&A->nofinish, A->nf_ring[at]) == A->nf_seq[at];
}

/* The allowance for answer `aid` of peer `P` goes (its id is open again, or its
 * Finish came): 1 if it had one. */
static int nofinish_forget(Peer *P, uint32_t aid) {
  if (!P || !map_del(&P->nofinish, aid)) return 0;
  if (P->nf_live) P->nf_live--;
  return 1;
}

/* As protocol.Connection._finish_not_needed: the last NOFINISH_RING answers returned
 * without a Finish *that are still allowed one* keep the allowance; past that the
 * oldest of them loses it.  Counting every return instead (ids used again since among
 * them) took it from an answer Python would have kept: a caller reusing a few ids
 * lost it after NOFINISH_RING round trips, and its allowed Finish cut it off. */
static void nofinish_add(Lane *L, Peer *A, uint32_t aid) {
  while (A->nf_len && A->nf_live >= NOFINISH_RING) { /* the oldest kept one goes */
    if (nofinish_live(A, 0)) {
      map_del(&A->nofinish, A->nf_ring[A->nf_head]);
      A->nf_live--;
    }
    A->nf_head = (A->nf_head + 1) % NF_CAP;
    A->nf_len--;
  }
  if (A->nf_len == NF_CAP) { /* compact: only the kept ones stay, in order (fewer than
                                NOFINISH_RING: room for NF_CAP - NOFINISH_RING more) */
    size_t kept = 0;
    for (size_t i = 0; i < A->nf_len; i++) {
      if (!nofinish_live(A, i)) continue;
      size_t from = (A->nf_head + i) % NF_CAP, to = (A->nf_head + kept) % NF_CAP;
      A->nf_ring[to] = A->nf_ring[from];
      A->nf_seq[to] = A->nf_seq[from];
      kept++;
    }
    A->nf_len = kept;
  }
  int had = map_get(&A->nofinish, aid) != NULL;
  size_t at = (A->nf_head + A->nf_len) % NF_CAP;
  A->nf_ring[at] = aid;
  A->nf_seq[at] = ++A->nf_next;
  A->nf_len++;
  if (map_put(&A->nofinish, aid, (void *)(uintptr_t)A->nf_seq[at]) == 0 && !had)
    A->nf_live++;
}

/* nofinish_add's ring, made at the peer's first allowance (0), or -1 (no memory) */
static int nofinish_ring(Peer *A) {
  if (A->nf_ring) return 0;
  A->nf_ring = malloc(NF_CAP * sizeof *A->nf_ring);
  A->nf_seq = malloc(NF_CAP * sizeof *A->nf_seq);
  if (!A->nf_ring || !A->nf_seq) {
    free(A->nf_ring);
    free(A->nf_seq);
    A->nf_ring = NULL;
    A->nf_seq = NULL;
    return -1;
  }
  return 0;
}

/* A message the lane read whole: `m` at its segment table, nseg segments of `words`
 * in all, the first of `first` words (the one fw_decode read) */
typedef struct {
  const uint8_t *m;
  uint64_t nseg, first, words;
} Msg;

/* router.content_bytes(content, limit) of the message's content (fastwire.h):
 * what Python compares with a message_size, so that params just under it, in a
 * message whose header takes it past (an external client's 8 MiB less 64 bytes),
 * are forwarded as Python forwards them, not handed to Python to measure */
static uint64_t msg_content_bytes(const Msg *g, const fw_plain *o, uint64_t limit) {
  return fw_msg_content_bytes(g->m, g->nseg, g->words, o, limit);
}

static int fast_call(Lane *L, Peer *A, const Msg *g, const fw_plain *o) {
  Route *r = map_get(&L->routes, KEY(A->pid, o->import_id));
  if (!r || !r->live || r->interface_id != o->interface_id) return 0;
  if (!r->all_methods && (o->method_id >= 64 || !((r->mask >> o->method_id) & 1))) return 0;
  Peer *B = peer_get(L, r->callee);
  if (!B || B->closed || B->write_closed || B->fd < 0) return 0;
  if (buf_size(&B->out) > B->soft) return 0; /* the router says "overloaded" */
  /* the content's weight: every segment it may reach (protocol.Content.size) */
  uint64_t size = o->content ? 8 * g->words : 0;
  uint64_t need = fw_forward_msg_size(o, g->nseg, g->first, g->words, 1);
  /* a backlog past its soft bound comes from the pool of all peers of its kind
   * (external clients, engines), which Python keeps (runtime._QueuePool; as
   * fast_return) */
  if (buf_size(&B->out) + need > B->soft) return 0;
  if (size > B->message_size && msg_content_bytes(g, o, B->message_size) > B->message_size)
    return 0;
  /* an external client's params past its own message_size (the framing admits its
   * header on top): Python refuses the call, naming the limit */
  if (A->external && size > A->message_size &&
      msg_content_bytes(g, o, A->message_size) > A->message_size)
    return 0;
  if (map_get(&A->answers, o->id)) return 0; /* in use: Python says so */
  /* max_unfinished (protocol.py) is one count of both sides' answers returned and
   * not finished (Python's plus returned_open, Connection._new_answer): a call is
   * forwarded only well below it (py_open counts every answer open in Python, its
   * unfinished ones among them); near it, Python judges the call */
  if (A->native_open + A->py_open + 1 > A->in_flight ||
      A->py_open + A->returned_open + 1 >= NOFINISH_RING)
    return 0;
  /* every audited call in flight has its record's place kept: one whose return
   * found the buffer full would go unrecorded (and Python, which pauses peers while
   * its own backlog is full, leaves the records here meanwhile) */
  if (r->audit && L->audit_len + L->audit_held >= L->audit_cap) return 0;
  uint32_t qid = B->next_qid;
  for (int tries = 0; map_get(&L->calls, KEY(B->pid, qid)) || map_get(&B->reserved, qid);
       tries++) {
    if (tries > 1000) return 0;
    qid = qid == 0xFFFFFFFFu ? NATIVE_QID_BASE : qid + 1;
  }
  B->next_qid = qid == 0xFFFFFFFFu ? NATIVE_QID_BASE : qid + 1;
  NCall *c = calloc(1, sizeof *c);
  uint8_t *out = c ? buf_room(&B->out, need) : NULL;
  if (!out) {
    free(c);
    return 0;
  }
  c->caller = A->pid;
  c->callee = B->pid;
  c->aid = o->id;
  c->qid = qid;
  c->route = r;
  c->interface_id = o->interface_id;
  c->method_id = o->method_id;
  c->t0 = now_ns(CLOCK_MONOTONIC);
  c->wall0 = r->audit ? now_ns(CLOCK_REALTIME) : 0;
  c->size = size;
  c->deadline = c->t0 + r->call_time;
  if (map_put(&L->calls, KEY(B->pid, qid), c) || map_put(&A->answers, o->id, c)) {
    map_del(&L->calls, KEY(B->pid, qid));
    free(c);
    return 0;
  }
  nofinish_forget(A, o->id);
  if (r->audit) {
    c->audited = 1;
    L->audit_held++;
  }
  r->refs++;
  c->next = r->calls;
  if (r->calls) r->calls->prev = c;
  r->calls = c;
  A->native_open++;
  B->to_open++;
  A->useful = c->t0;
  B->out.len += fw_forward_msg(out, g->m, g->nseg, g->first, g->words, o, 1, qid, r->import_id,
                                o->interface_id, o->method_id, 0);
  mark_dirty(L, B);
  L->c_calls++;
  return 1;
}

static int fast_return(Lane *L, Peer *B, const Msg *g, const fw_plain *o) {
  if (o->id < NATIVE_QID_BASE || !o->no_finish) return 0;
  NCall *c = map_get(&L->calls, KEY(B->pid, o->id));
  if (!c) return 0;
  Peer *A = peer_get(L, c->caller);
  uint64_t size = o->content ? 8 * g->words : 0;
  if (!c->orphan && A && !A->closed && !A->write_closed && A->fd >= 0) {
    if (size > A->message_size && msg_content_bytes(g, o, A->message_size) > A->message_size)
      return 0; /* Python fails it with the reason */
    if (B->external && size > B->message_size &&
        msg_content_bytes(g, o, B->message_size) > B->message_size)
      return 0; /* as fast_call's params */
    /* past the caller's hard limit it does not read its messages: Python, whose
     * write is refused there, cuts it off (a caller that stopped reading took its
     * calls' returns here without bound: in_flight x message_size) */
    uint64_t need = fw_forward_msg_size(o, g->nseg, g->first, g->words, 0);
    if (buf_size(&A->out) + need > A->hard) return 0;
    /* beyond its soft bound, what waits for a peer comes from the one pool of all
     * peers of its kind, external clients or engines, which Python keeps
     * (runtime._QueuePool): Python writes it, or cuts the peer off (one local
     * client's connections each held their hard bound, 32 x 80 MiB; N engines
     * that flooded calls and read nothing, N x 80 MiB: r258) */
    if (buf_size(&A->out) + need > A->soft) return 0;
    if (!A->external && nofinish_ring(A)) return 0; /* Python returns it */
    uint8_t *out = buf_room(&A->out, need);
    if (!out) return 0;
    A->out.len += fw_forward_msg(out, g->m, g->nseg, g->first, g->words, o, 0, c->aid, 0, 0, 0,
                                 !A->external);
    mark_dirty(L, A);
  }
  Route *r = c->route;
  if (r->audit && !c->orphan && L->audit_len < L->audit_cap) { /* its kept place */
    AuditRec *a = &L->audit[(L->audit_head + L->audit_len++) % L->audit_cap];
    a->route = r;
    r->refs++;
    a->interface_id = c->interface_id;
    a->method_id = c->method_id;
    a->wall0 = c->wall0;
    a->duration = now_ns(CLOCK_MONOTONIC) - c->t0;
  }
  int delivered = !c->orphan && A && !A->closed && !A->write_closed && A->fd >= 0;
  B->useful = now_ns(CLOCK_MONOTONIC);
  if (delivered) A->useful = B->useful;
  ncall_forget(L, c, 0);
  if (delivered && A->external) { /* its answer stays open until the client's Finish */
    map_put(&A->answers, c->aid, RETURNED);
    A->returned_open++;
  } else if (delivered) {
    nofinish_add(L, A, c->aid);
  }
  route_unref(L, r);
  free(c);
  B->served++;
  L->c_returns++;
  return 1;
}

static int fast_finish(Lane *L, Peer *A, const fw_plain *o) {
  if (map_get(&A->answers, o->id) != RETURNED) return 0;
  map_del(&A->answers, o->id);
  A->returned_open--;
  return 1;
}

/* ------------------------------------------------------------ the thread */

static void process_input(Lane *L, Peer *P) {
  for (;;) {
    size_t avail = buf_size(&P->in);
    const uint8_t *m = P->in.p + P->in.off;
    if (!avail) break;
    if (P->raw) { /* a framing error: Python's framer reports it */
      to_python(L, P, m, avail);
      P->in.off = P->in.len = 0;
      break;
    }
    if (P->passing) { /* not kept here either: at most TO_PYTHON_LIMIT waits for Python */
      size_t n = avail < P->passing ? avail : (size_t)P->passing;
      to_python(L, P, m, n);
      P->in.off += n;
      P->passing -= n;
      if (!P->passing) P->messages++;
      continue;
    }
    /* the segment count is judged as soon as its 4 bytes are here, as wire.Framer
     * does: a peer that sends a bad count and waits is cut off now, not when its
     * half message times out */
    if (avail < 4) break;
    uint32_t nseg32;
    memcpy(&nseg32, m, 4);
    uint64_t nseg = (uint64_t)nseg32 + 1;
    if (nseg > P->max_segments) {
      P->raw = 1;
      continue;
    }
    uint64_t table = 4 + 4 * nseg;
    table += table & 4;
    if (avail < table) break;
    uint64_t words = 0, first = 0;
    for (uint64_t i = 0; i < nseg; i++) {
      uint32_t s;
      memcpy(&s, m + 4 + 4 * i, 4);
      if (!i) first = s;
      words += s;
    }
    uint64_t total = table + 8 * words;
    if (words > P->max_words) {
      /* a message past the limit: Python fails its call alone, from its head, and
       * framing goes on after it (it was a framing error, the connection's end) */
      P->passing = total;
      continue;
    }
    if (avail < total) break;
    P->messages++;
    int handled = 0;
    /* a message of several segments (pycapnp's, whenever its params outgrow the first
     * one) too, if its first segment holds the whole header and its content pointer
     * (fw_decode: near pointers only); the content's own objects, in any segment,
     * travel unread, as protocol.Connection._splice forwards them */
    if (!P->held && P->ok && fw_forward_msg_ok(m, nseg)) {
      fw_plain o;
      Msg g = {m, nseg, first, words};
      int k = fw_decode(m + table, first, &o);
      if (k == FW_CALL)
        handled = fast_call(L, P, &g, &o);
      else if (k == FW_RETURN)
        handled = fast_return(L, P, &g, &o);
      else if (k == FW_FINISH)
        handled = fast_finish(L, P, &o);
    }
    if (!handled && to_python_whole(L, P, total)) continue; /* P->in is new */
    if (!handled) to_python(L, P, m, total);
    P->in.off += total;
  }
  if (!buf_size(&P->in)) buf_trim(&P->in);
  if ((buf_size(&P->in) || P->passing) && !P->raw) {
    if (!P->partial_since || P->partial_msg != P->messages) {
      P->partial_since = now_ns(CLOCK_MONOTONIC);
      P->partial_msg = P->messages;
    }
  } else {
    P->partial_since = 0;
  }
}

static void on_readable(Lane *L, Peer *P) {
  size_t got = 0;
  while (!P->closed && got < READ_BUDGET) {
    uint8_t *at = buf_room(&P->in, READ_CHUNK);
    if (!at) {
      end_of_input(L, P, ENOMEM);
      return;
    }
    ssize_t k = read(P->fd, at, READ_CHUNK);
    L->c_reads++;
    if (k > 0) {
      P->in.len += (size_t)k;
      got += (size_t)k;
      process_input(L, P);
      if (P->qbytes > TO_PYTHON_LIMIT) break;
      /* a short read drained the socket: epoll (level-triggered) says when more
       * comes, so no second read just to hear EAGAIN (one system call per wake-up) */
      if ((size_t)k < READ_CHUNK) break;
      continue;
    }
    if (k == 0) {
      end_of_input(L, P, 0);
      return;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) end_of_input(L, P, errno);
    break;
  }
  epoll_set(L, P);
}

static void *lane_thread(void *arg) {
  Lane *L = arg;
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(L->epfd, evs, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    pthread_mutex_lock(&L->mu);
    L->c_wakeups++;
    int stop = 0;
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u64 == UINT64_MAX) {
        stop = 1;
        continue;
      }
      Peer *P = peer_get(L, (long)evs[i].data.u64);
      if (!P || P->fd < 0) continue;
      if (evs[i].events & EPOLLOUT) flush(L, P);
      if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (P->closed) {
          epoll_set(L, P);
        } else {
          on_readable(L, P);
        }
      }
    }
    flush_dirty(L);
    int wake = L->wake;
    L->wake = 0;
    pthread_mutex_unlock(&L->mu);
    wake_python(L, wake);
    if (stop) break;
  }
  return NULL;
}

/* ------------------------------------------------------------ Python */

/* Between LOCK and UNLOCK only C data is read and changed: no Python object is
 * built or released (see the top of this file).  UNLOCK releases the mutex and
 * then the routes that died meanwhile. */
#define LOCK(L) pthread_mutex_lock(&(L)->mu)

static Route *unlock(Lane *L) {
  Route *z = detach_zombies(L);
  int wake = L->wake;
  L->wake = 0;
  pthread_mutex_unlock(&L->mu);
  wake_python(L, wake);
  return z;
}

#define UNLOCK(L) reap(unlock(L))

/* Lane([audit_capacity]): the places of the buffer of audit records (fewer than
 * AUDIT_CAPACITY in tests, to fill it) */
static int Lane_init(Lane *L, PyObject *args, PyObject *kw) {
  Py_ssize_t cap = AUDIT_CAPACITY;
  if (!PyArg_ParseTuple(args, "|n", &cap)) return -1;
  if (L->running) return 0;
  if (cap < 1 || cap > AUDIT_CAPACITY) {
    PyErr_SetString(PyExc_ValueError, "audit_capacity: 1 .. 65536");
    return -1;
  }
  L->audit_cap = (size_t)cap;
  pthread_mutex_init(&L->mu, NULL);
  L->epfd = epoll_create1(EPOLL_CLOEXEC);
  L->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  L->stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  L->audit = calloc(L->audit_cap, sizeof *L->audit);
  if (L->epfd < 0 || L->evfd < 0 || L->stopfd < 0 || !L->audit) {
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
  epoll_ctl(L->epfd, EPOLL_CTL_ADD, L->stopfd, &ev);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old); /* signals stay the main thread's */
  int e = pthread_create(&L->thread, NULL, lane_thread, L);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (e) {
    errno = e;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
  }
  L->running = 1;
  return 0;
}

static void free_peer(Lane *L, Peer *P) {
  if (P->fd >= 0) {
    if (P->events) epoll_ctl(L->epfd, EPOLL_CTL_DEL, P->fd, NULL);
    close(P->fd);
  }
  buf_free(&P->in);
  buf_free(&P->out);
  free(P->nf_ring);
  free(P->nf_seq);
  map_free(&P->answers);
  map_free(&P->reserved);
  map_free(&P->nofinish);
  for (Item *it = P->qhead, *next; it; it = next) {
    next = it->next;
    buf_free(&it->data);
    free(it);
  }
  free(P);
}

static PyObject *Lane_stop(Lane *L, PyObject *unused) {
  if (L->running) {
    uint64_t one = 1;
    ssize_t k = write(L->stopfd, &one, 8);
    (void)k;
    Py_BEGIN_ALLOW_THREADS pthread_join(L->thread, NULL);
    Py_END_ALLOW_THREADS L->running = 0;
  }
  Py_RETURN_NONE;
}

static void Lane_dealloc(Lane *L) {
  Lane_stop(L, NULL);
  if (L->epfd > 0) {
    for (size_t i = 0; i < L->npeers; i++) free_peer(L, L->peers[i]);
    free(L->peers);
    map_free(&L->bypid);
    for (size_t i = 0; i < L->calls.cap; i++)
      if (L->calls.keys[i]) { /* a call in flight holds its route (route_unref) */
        NCall *c = L->calls.vals[i];
        if (c->route) route_unref(L, c->route);
        free(c);
      }
    for (size_t i = 0; i < L->routes.cap; i++)
      if (L->routes.keys[i]) {
        Route *r = L->routes.vals[i];
        r->live = 0;
        route_unref(L, r);
      }
    for (size_t i = 0; i < L->audit_len; i++)
      route_unref(L, L->audit[(L->audit_head + i) % L->audit_cap].route);
    reap(detach_zombies(L)); /* the thread is gone: no mutex to hold */
    map_free(&L->routes);
    map_free(&L->calls);
    free(L->ready);
    free(L->audit);
    close(L->epfd);
    close(L->evfd);
    close(L->stopfd);
    pthread_mutex_destroy(&L->mu);
  }
  Py_TYPE(L)->tp_free((PyObject *)L);
}

/* add(pid, fd, soft, hard, max_words, max_segments, message_size, in_flight[, external]):
 * the lane owns fd from now on (it closes it in remove); if add raises, the caller
 * still owns it */
static PyObject *Lane_add(Lane *L, PyObject *args) {
  long pid;
  int fd;
  unsigned long long soft, hard, max_words, max_segments, message_size;
  long in_flight;
  int external = 0;
  if (!PyArg_ParseTuple(args, "liKKKKKl|p", &pid, &fd, &soft, &hard, &max_words, &max_segments,
                        &message_size, &in_flight, &external))
    return NULL;
  if (pid < 0 || pid > 0x7FFFFFFF) return PyErr_Format(PyExc_ValueError, "bad peer id %ld", pid);
  int own = fd;
  if (fcntl(own, F_SETFL, fcntl(own, F_GETFL) | O_NONBLOCK) < 0)
    return PyErr_SetFromErrno(PyExc_OSError);
  Peer *P = calloc(1, sizeof *P);
  if (!P) return PyErr_NoMemory();
  P->pid = (int)pid;
  P->fd = own;
  P->soft = soft;
  P->hard = hard;
  P->max_words = max_words;
  P->max_segments = max_segments;
  P->message_size = message_size;
  P->in_flight = in_flight;
  P->external = external;
  P->ok = 1;
  P->next_qid = NATIVE_QID_BASE;
  P->useful = now_ns(CLOCK_MONOTONIC);
  LOCK(L);
  if (map_get(&L->bypid, (uint64_t)pid)) {
    UNLOCK(L);
    P->fd = -1;
    free_peer(L, P);
    return PyErr_Format(PyExc_ValueError, "peer %ld is in the fast lane already", pid);
  }
  /* by id in a map and dense in an array: peer ids only grow (one per connection
   * ever made), and an array indexed by id grew with them, and was scanned whole */
  if (L->npeers == L->peers_cap) {
    size_t n = L->peers_cap ? L->peers_cap * 2 : 64;
    Peer **p = realloc(L->peers, n * sizeof *p);
    if (p) {
      L->peers = p;
      L->peers_cap = n;
    }
  }
  if (L->npeers == L->peers_cap || map_put(&L->bypid, (uint64_t)pid, P)) {
    UNLOCK(L);
    P->fd = -1; /* still the caller's */
    free_peer(L, P);
    return PyErr_NoMemory();
  }
  P->slot = L->npeers;
  L->peers[L->npeers++] = P;
  epoll_set(L, P);
  UNLOCK(L);
  Py_RETURN_NONE;
}

/* remove(pid): forget the peer and close the lane's descriptor (drop_peer first).
 * detach(pid) -> (fd, unwritten bytes) or None: forget it the same way, but hand its
 * descriptor, and what is still queued for it, to the caller, who closes it (a
 * client cut off is told why, and what it still sends is read and dropped: closed
 * with its input unread, its next write failed EPIPE before it read the Abort) */
static PyObject *forget_peer(Lane *L, long pid, int detach) {
  PyObject *out = NULL;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P && detach && P->fd >= 0) {
    size_t n = P->write_closed ? 0 : buf_size(&P->out);
    out = Py_BuildValue("(iy#)", P->fd, n ? (const char *)P->out.p + P->out.off : "",
                        (Py_ssize_t)n);
    if (!out) {
      UNLOCK(L);
      return NULL;
    }
    if (P->events) epoll_ctl(L->epfd, EPOLL_CTL_DEL, P->fd, NULL);
    P->events = 0;
    P->fd = -1; /* the caller's now */
  }
  if (P) {
    /* its routes (drop_peer took them, if it was called), while it can be found */
    while (P->routes_from) route_drop(L, P->routes_from);
    while (P->routes_to) route_drop(L, P->routes_to);
    map_del(&L->bypid, (uint64_t)pid);
    Peer *last = L->peers[--L->npeers]; /* its place goes to the last one */
    L->peers[P->slot] = last;
    last->slot = P->slot;
    if (P->dirty) { /* off the dirty list */
      Peer **pp = &L->dirty;
      while (*pp && *pp != P) pp = &(*pp)->next_dirty;
      if (*pp) *pp = P->next_dirty;
    }
    for (size_t i = 0; i < L->nready; i++)
      if (L->ready[i] == pid) L->ready[i] = -1;
    free_peer(L, P);
  }
  UNLOCK(L);
  if (out) return out;
  Py_RETURN_NONE;
}

static PyObject *Lane_remove(Lane *L, PyObject *args) {
  long pid;
  if (!PyArg_ParseTuple(args, "l", &pid)) return NULL;
  return forget_peer(L, pid, 0);
}

static PyObject *Lane_detach(Lane *L, PyObject *args) {
  long pid;
  if (!PyArg_ParseTuple(args, "l", &pid)) return NULL;
  return forget_peer(L, pid, 1);
}

/* close(pid): read no more from it (what is queued for it is still written) */
static PyObject *Lane_close(Lane *L, PyObject *args) {
  long pid;
  if (!PyArg_ParseTuple(args, "l", &pid)) return NULL;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P && !P->closed) {
    P->closed = 1;
    epoll_set(L, P);
  }
  UNLOCK(L);
  Py_RETURN_NONE;
}

/* write(pid, data) -> False when more than its hard limit would wait (cut it off) */
static PyObject *Lane_write(Lane *L, PyObject *args) {
  long pid;
  Py_buffer b;
  if (!PyArg_ParseTuple(args, "ly*", &pid, &b)) return NULL;
  int ok = 1, fd = -1;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P && !P->write_closed && P->fd >= 0) {
    if (buf_size(&P->out) + (size_t)b.len > P->hard) {
      ok = 0;
    } else if (!buf_size(&P->out) && !P->sending && b.len > 0) {
      /* Nothing waits to go to it: send without the mutex.  Sent under it, on one core
       * the peer woken by the send ran at once and its next message woke the lane's
       * thread, which waited for the mutex (a futex and two switches more per host
       * call).  The bytes go into `out` first, so that what the lane's thread queues
       * for it meanwhile follows them; `sending` keeps everyone else from sending
       * (flush); the flush below sends what is left, or meets the error again and
       * handles it.  The peer and its descriptor stay: only Python changes or frees
       * them (add, remove, detach), with the GIL, which this thread holds, and no
       * Python code runs here until the send is done (reap, below). */
      if (buf_put(&P->out, b.buf, (size_t)b.len) == 0) {
        P->sending = 1;
        fd = P->fd;
      } else {
        ok = 0;
      }
    } else if (buf_put(&P->out, b.buf, (size_t)b.len) == 0) {
      flush(L, P);
    } else {
      ok = 0;
    }
  }
  /* the routes that died are released (which may run Python code, and so a finalizer
   * that calls the lane: remove, detach) only once P is no longer used */
  Route *dead = unlock(L);
  if (fd >= 0) {
    ssize_t k;
    do
      k = send(fd, b.buf, (size_t)b.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (k < 0 && errno == EINTR);
    LOCK(L);
    L->c_writes++;
    P->sending = 0;
    if (k > 0) {
      P->out.off += (size_t)k;
      P->wrote_at = now_ns(CLOCK_MONOTONIC);
      P->unheld = 0;
    }
    flush(L, P);
    UNLOCK(L);
  }
  reap(dead);
  PyBuffer_Release(&b);
  return PyBool_FromLong(ok);
}

static PyObject *Lane_queued(Lane *L, PyObject *args) {
  long pid;
  if (!PyArg_ParseTuple(args, "l", &pid)) return NULL;
  size_t n = 0;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P) n = buf_size(&P->out);
  UNLOCK(L);
  return PyLong_FromSize_t(n);
}

/* ready() -> [pid]: peers with something for Python (resets the eventfd) */
static PyObject *Lane_ready(Lane *L, PyObject *unused) {
  uint64_t v;
  ssize_t k = read(L->evfd, &v, 8);
  (void)k;
  LOCK(L);
  int *ready = L->ready; /* ours now: the thread starts a new list */
  size_t n = 0;
  for (size_t i = 0; i < L->nready; i++) {
    Peer *P = peer_get(L, ready[i]);
    if (ready[i] < 0 || !P) continue;
    P->in_ready = 0;
    ready[n++] = ready[i];
  }
  L->ready = NULL;
  L->nready = L->ready_cap = 0;
  UNLOCK(L);
  PyObject *out = PyList_New((Py_ssize_t)n);
  for (size_t i = 0; out && i < n; i++) {
    PyObject *v = PyLong_FromLong(ready[i]);
    if (!v) Py_CLEAR(out);
    else PyList_SET_ITEM(out, (Py_ssize_t)i, v);
  }
  free(ready);
  return out;
}

/* any_ready() -> whether ready() would name a peer now: no system call, so that
 * Python may look for more work after a batch for the price of a lock */
static PyObject *Lane_any_ready(Lane *L, PyObject *unused) {
  LOCK(L);
  size_t n = L->nready;
  UNLOCK(L);
  return PyBool_FromLong(n > 0);
}

static void free_items(Item *it) {
  while (it) {
    Item *next = it->next;
    buf_free(&it->data);
    free(it);
    it = next;
  }
}

/* take(pid) -> [bytes | None (end) | int (errno)]: what Python must handle, in order */
static PyObject *Lane_take(Lane *L, PyObject *args) {
  long pid;
  if (!PyArg_ParseTuple(args, "l", &pid)) return NULL;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  Item *items = NULL; /* ours now */
  int lost = 0, found = P != NULL;
  if (P) {
    items = P->qhead;
    P->qhead = P->qtail = NULL;
    P->qbytes = 0;
    lost = P->lost; /* input was dropped: the stream ends after these, with the reason */
    P->lost = 0;
    epoll_set(L, P);
  }
  UNLOCK(L);
  PyObject *out = PyList_New(0);
  for (Item *it = items; out && it; it = it->next) {
    PyObject *v;
    if (it->kind == ITEM_BYTES)
      v = PyBytes_FromStringAndSize((const char *)it->data.p + it->data.off, buf_size(&it->data));
    else if (it->kind == ITEM_EOF)
      v = Py_NewRef(Py_None);
    else
      v = PyLong_FromLong(it->err);
    if (!v || PyList_Append(out, v)) Py_CLEAR(out);
    Py_XDECREF(v);
  }
  if (out && lost) {
    PyObject *v = PyLong_FromLong(lost);
    if (!v || PyList_Append(out, v)) Py_CLEAR(out);
    Py_XDECREF(v);
  }
  free_items(items);
  if (!out && found) {
    /* Out of memory: what was taken is lost.  As in lose_input: nothing more is
     * read from the peer, what came after it is dropped too (never a message
     * missing from the middle of a stream), and the next take() ends the stream
     * with the reason. */
    LOCK(L);
    Peer *Q = peer_get(L, pid); /* peer ids are never reused */
    Item *later = NULL;
    if (Q) {
      later = Q->qhead;
      Q->qhead = Q->qtail = NULL;
      Q->qbytes = 0;
      if (!Q->lost) Q->lost = lost ? lost : ENOMEM;
      Q->closed = 1;
      Q->held = 1;
      epoll_set(L, Q);
      signal_python(L, Q);
    }
    UNLOCK(L);
    free_items(later);
  }
  return out;
}

/* release(pid): Python handled everything it took: the peer's plain messages
 * may go the fast way again (unless more came meanwhile) */
static PyObject *Lane_release(Lane *L, PyObject *args) {
  long pid;
  if (!PyArg_ParseTuple(args, "l", &pid)) return NULL;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P && !P->qhead && !P->closed) P->held = 0;
  UNLOCK(L);
  Py_RETURN_NONE;
}

static PyObject *Lane_set_ok(Lane *L, PyObject *args) {
  long pid;
  int ok;
  if (!PyArg_ParseTuple(args, "lp", &pid, &ok)) return NULL;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P) P->ok = ok;
  UNLOCK(L);
  Py_RETURN_NONE;
}

/* open_answer(pid, aid) -> False if the id is open already (on either side) */
static PyObject *Lane_open_answer(Lane *L, PyObject *args) {
  long pid;
  unsigned long aid;
  if (!PyArg_ParseTuple(args, "lk", &pid, &aid)) return NULL;
  int ok = 1;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P) {
    if (map_get(&P->answers, (uint32_t)aid)) {
      ok = 0;
    } else if (map_put(&P->answers, (uint32_t)aid, PYOPEN)) {
      ok = 0;
    } else {
      P->py_open++;
      nofinish_forget(P, (uint32_t)aid);
    }
  }
  UNLOCK(L);
  return PyBool_FromLong(ok);
}

static PyObject *Lane_close_answer(Lane *L, PyObject *args) {
  long pid;
  unsigned long aid;
  if (!PyArg_ParseTuple(args, "lk", &pid, &aid)) return NULL;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P && map_get(&P->answers, (uint32_t)aid) == PYOPEN) {
    map_del(&P->answers, (uint32_t)aid);
    P->py_open--;
  }
  UNLOCK(L);
  Py_RETURN_NONE;
}

/* returned(pid, aid) -> True if answer `aid`, open in Python, is now on the native
 * books as returned and awaiting the peer's Finish (as if returned natively): the
 * Finish then needs no Python, and claim_answer gives the answer back if Python
 * meets it again.  Python calls this only for results without capabilities; only
 * an external client's answers wait for a Finish (engines' are returned without). */
static PyObject *Lane_returned(Lane *L, PyObject *args) {
  long pid;
  unsigned long aid;
  if (!PyArg_ParseTuple(args, "lk", &pid, &aid)) return NULL;
  int ok = 0;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P && P->external && map_get(&P->answers, (uint32_t)aid) == PYOPEN &&
      !map_put(&P->answers, (uint32_t)aid, RETURNED)) {
    P->py_open--;
    P->returned_open++;
    ok = 1;
  }
  UNLOCK(L);
  return PyBool_FromLong(ok);
}

/* finish_ok(pid, aid): a Finish for an answer returned natively with noFinishNeeded
 * (allowed, and ignored) */
static PyObject *Lane_finish_ok(Lane *L, PyObject *args) {
  long pid;
  unsigned long aid;
  if (!PyArg_ParseTuple(args, "lk", &pid, &aid)) return NULL;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  int ok = nofinish_forget(P, (uint32_t)aid);
  if (!ok && P && map_get(&P->answers, (uint32_t)aid) == RETURNED) {
    map_del(&P->answers, (uint32_t)aid);
    P->returned_open--;
    ok = 1;
  }
  UNLOCK(L);
  return PyBool_FromLong(ok);
}

/* allow_finish(pid, aid) -> True if answer `aid`, which Python returned with
 * noFinishNeeded, now has its Finish allowance on the lane's books, with the lane's
 * own (one set for both paths, and one bound: max_unfinished); False (no memory):
 * Python keeps it */
static PyObject *Lane_allow_finish(Lane *L, PyObject *args) {
  long pid;
  unsigned long aid;
  if (!PyArg_ParseTuple(args, "lk", &pid, &aid)) return NULL;
  int ok = 0;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P && !nofinish_ring(P)) {
    nofinish_add(L, P, (uint32_t)aid);
    ok = map_get(&P->nofinish, (uint32_t)aid) != NULL;
  }
  UNLOCK(L);
  return PyBool_FromLong(ok);
}

/* counts(pid) -> (calls from it in flight natively, calls to it in flight natively,
 *                  served natively): the peer's own counts, kept as calls come and go
 * (native_open, to_open).  The calls to it were counted by walking every native call
 * in flight, with the mutex held: `wsuper status` (counts of each compartment) cost
 * compartments x calls in flight, the lane's forwarding stalled meanwhile */
static PyObject *Lane_counts(Lane *L, PyObject *args) {
  long pid;
  if (!PyArg_ParseTuple(args, "l", &pid)) return NULL;
  long from = 0, to = 0, served = 0;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P) {
    from = P->native_open;
    to = P->to_open;
    served = P->served;
  }
  UNLOCK(L);
  return Py_BuildValue("lll", from, to, served);
}

/* idle(pid) -> seconds since the lane last forwarded a call from the peer, or a return
 * to or from it (since add, if never): Python adds its own (Peer.useful) */
static PyObject *Lane_idle(Lane *L, PyObject *args) {
  long pid;
  if (!PyArg_ParseTuple(args, "l", &pid)) return NULL;
  double idle = 0;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P) idle = (double)(now_ns(CLOCK_MONOTONIC) - P->useful) / 1e9;
  UNLOCK(L);
  return PyFloat_FromDouble(idle);
}

/* A count kept for the peer `pid` (a long field of Peer at `offset`); 0 if none */
static PyObject *peer_count(Lane *L, PyObject *args, size_t offset) {
  long pid;
  if (!PyArg_ParseTuple(args, "l", &pid)) return NULL;
  long n = 0;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P) n = *(long *)((char *)P + offset);
  UNLOCK(L);
  return PyLong_FromLong(n);
}

/* unfinished(pid) -> answers returned natively to the peer (an external client) and
 * not finished by it: protocol.Connection adds them to its own count, so that
 * max_unfinished bounds the answers of both sides together */
static PyObject *Lane_unfinished(Lane *L, PyObject *args) {
  return peer_count(L, args, offsetof(Peer, returned_open));
}

static PyObject *Lane_in_flight(Lane *L, PyObject *args) {
  return peer_count(L, args, offsetof(Peer, native_open));
}

/* sent(caller, callee) -> the bytes of the params of the calls `caller` has in flight
 * natively to `callee` (on its routes to it): its share of what waits there is
 * judged with them (Router._not_reading), as with the calls Python forwarded */
static PyObject *Lane_sent(Lane *L, PyObject *args) {
  long caller, callee;
  if (!PyArg_ParseTuple(args, "ll", &caller, &callee)) return NULL;
  unsigned long long n = 0;
  LOCK(L);
  Peer *A = peer_get(L, caller);
  for (Route *r = A ? A->routes_from : NULL; r; r = r->from_next)
    if (r->callee == callee)
      for (NCall *c = r->calls; c; c = c->next) n += c->size;
  UNLOCK(L);
  return PyLong_FromUnsignedLongLong(n);
}

/* A native call handed to Python (with the mutex): it leaves the lane's tables,
 * its answer id becomes Python's and its question id stays reserved.  The call
 * itself, appended to the list *tail points at, carries what the record needs
 * (a reference to its route's context, taken with Py_INCREF, which runs no
 * Python code); handed_records() builds the records once the mutex is released. */
static void hand_over(Lane *L, NCall *c, NCall ***tail) {
  c->age = (double)(now_ns(CLOCK_MONOTONIC) - c->t0) / 1e9;
  c->ctx = Py_NewRef(c->route->ctx ? c->route->ctx : Py_None);
  if (!c->orphan) {
    Peer *A = peer_get(L, c->caller);
    if (A && map_get(&A->answers, c->aid) == c) {
      map_put(&A->answers, c->aid, PYOPEN);
      A->native_open--;
      A->py_open++;
    }
  }
  Peer *B = peer_get(L, c->callee);
  if (B) map_put(&B->reserved, c->qid, RESERVED);
  ncall_forget(L, c, 1);
  route_unref(L, c->route); /* the route may be freed now: the call keeps only ctx */
  c->route = NULL;
  c->next = NULL;
  **tail = c;
  *tail = &c->next;
}

/* Without the mutex: the records of the calls handed over, (ctx, caller, answer id,
 * callee, question id, interface id, method id, seconds since it began, wall time
 * it began, orphan, bytes of its params), appended to out in order; the calls are freed.  NULL (and
 * out released) if a record cannot be made. */
static PyObject *handed_records(NCall *c, PyObject *out) {
  while (c) {
    NCall *next = c->next;
    if (out) {
      PyObject *rec = Py_BuildValue("(OiIiIKIddiK)", c->ctx, c->caller, c->aid, c->callee,
                                    c->qid, (unsigned long long)c->interface_id, c->method_id,
                                    c->age, (double)c->wall0 / 1e9, c->orphan,
                                    (unsigned long long)c->size);
      if (!rec || PyList_Append(out, rec)) Py_CLEAR(out);
      Py_XDECREF(rec);
    }
    Py_DECREF(c->ctx);
    free(c);
    c = next;
  }
  return out;
}

/* Without the mutex: the record of the one call handed over, or None. */
static PyObject *handed_record(NCall *handed) {
  if (!handed) Py_RETURN_NONE;
  PyObject *out = handed_records(handed, PyList_New(0));
  if (!out) return NULL;
  PyObject *rec = Py_NewRef(PyList_GET_ITEM(out, 0));
  Py_DECREF(out);
  return rec;
}

/* Hand every native call that `pick` chooses to Python (with the mutex). */
static void take_calls(Lane *L, int (*pick)(const NCall *, const void *), const void *arg,
                       NCall ***tail) {
  for (size_t i = 0; i < L->calls.cap;) {
    NCall *c = L->calls.keys[i] ? L->calls.vals[i] : NULL;
    if (c && pick(c, arg)) {
      hand_over(L, c, tail);
      continue; /* the deletion shifted another entry into slot i (or none) */
    }
    i++;
  }
}

static int callee_is(const NCall *c, const void *pid) { return c->callee == *(const long *)pid; }

static int caller_is(const NCall *c, const void *pid) { return c->caller == *(const long *)pid; }

static int past(const NCall *c, const void *now) { return c->deadline <= *(const int64_t *)now; }

/* claim(callee, qid) -> record or None: Python got a return for this native call */
static PyObject *Lane_claim(Lane *L, PyObject *args) {
  long pid;
  unsigned long qid;
  if (!PyArg_ParseTuple(args, "lk", &pid, &qid)) return NULL;
  NCall *handed = NULL, **tail = &handed;
  LOCK(L);
  NCall *c = map_get(&L->calls, KEY(pid, qid));
  if (c) hand_over(L, c, &tail);
  UNLOCK(L);
  return handed_record(handed);
}

/* claim_answer(caller, aid) -> record (a call in flight natively), True (returned
 * natively, not finished), or None: Python met this answer id (a Finish, a
 * pipelined call) and takes it over */
static PyObject *Lane_claim_answer(Lane *L, PyObject *args) {
  long pid;
  unsigned long aid;
  if (!PyArg_ParseTuple(args, "lk", &pid, &aid)) return NULL;
  NCall *handed = NULL, **tail = &handed;
  int returned = 0;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  void *v = P ? map_get(&P->answers, (uint32_t)aid) : NULL;
  if (v == RETURNED) {
    map_put(&P->answers, (uint32_t)aid, PYOPEN);
    P->returned_open--;
    P->py_open++;
    returned = 1;
  } else if (v && v != PYOPEN && v != RETURNED) {
    hand_over(L, (NCall *)v, &tail);
  }
  UNLOCK(L);
  if (returned) Py_RETURN_TRUE;
  return handed_record(handed);
}

static PyObject *Lane_unreserve(Lane *L, PyObject *args) {
  long pid;
  unsigned long qid;
  if (!PyArg_ParseTuple(args, "lk", &pid, &qid)) return NULL;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P) map_del(&P->reserved, (uint32_t)qid);
  UNLOCK(L);
  Py_RETURN_NONE;
}

/* install(caller, export_id, callee, import_id, interface_id, mask, all_methods, audit,
 *         call_time, ctx): calls from `caller` on its export `export_id` with this
 * interface (and, unless all_methods, a method whose bit is set in mask) go to
 * `callee`'s import `import_id`.  Replaces a route of the same key. */
static void route_drop(Lane *L, Route *r) {
  map_del(&L->routes, KEY(r->caller, r->export_id));
  route_unlist(L, r);
  r->live = 0;
  route_unref(L, r);
}

static PyObject *Lane_install(Lane *L, PyObject *args) {
  long caller, callee;
  unsigned long export_id, import_id;
  unsigned long long iface, mask;
  int all_methods, audit;
  double call_time;
  PyObject *ctx;
  if (!PyArg_ParseTuple(args, "lklkKKppdO", &caller, &export_id, &callee, &import_id, &iface,
                        &mask, &all_methods, &audit, &call_time, &ctx))
    return NULL;
  Route *r = calloc(1, sizeof *r);
  if (!r) return PyErr_NoMemory();
  r->refs = 1;
  r->live = 1;
  r->ctx = Py_NewRef(ctx);
  r->caller = (int)caller;
  r->callee = (int)callee;
  r->export_id = (uint32_t)export_id;
  r->import_id = (uint32_t)import_id;
  r->interface_id = iface;
  r->mask = mask;
  r->all_methods = all_methods;
  r->audit = audit;
  r->call_time = (int64_t)(call_time * 1e9);
  LOCK(L);
  Route *old = map_get(&L->routes, KEY(caller, export_id));
  if (old) route_drop(L, old);
  if (!peer_get(L, caller) || !peer_get(L, callee) ||
      map_put(&L->routes, KEY(caller, export_id), r)) {
    r->live = 0;
    route_unref(L, r);
  } else {
    route_list(L, r);
  }
  UNLOCK(L);
  Py_RETURN_NONE;
}

/* uninstall(caller, export_id, take_calls) -> [record]: the route is gone when this
 * returns; with take_calls, its calls in flight are handed to Python (to fail them) */
static PyObject *Lane_uninstall(Lane *L, PyObject *args) {
  long caller;
  unsigned long export_id;
  int take;
  if (!PyArg_ParseTuple(args, "lkp", &caller, &export_id, &take)) return NULL;
  NCall *handed = NULL, **tail = &handed;
  LOCK(L);
  Route *r = map_get(&L->routes, KEY(caller, export_id));
  if (r) {
    r->refs++; /* held across the hand-overs */
    route_drop(L, r);
    while (take && r->calls) hand_over(L, r->calls, &tail);
    route_unref(L, r);
  }
  UNLOCK(L);
  return handed_records(handed, PyList_New(0));
}

/* drop_peer(pid) -> [record]: the peer is gone.  Its routes go; calls to it are
 * handed to Python (to fail them); calls from it become orphans and are handed to
 * Python too (which cancels them at their callees: nobody wants their answers);
 * its answer ids, reservations and finish allowances go. */
static PyObject *Lane_drop_peer(Lane *L, PyObject *args) {
  long pid;
  if (!PyArg_ParseTuple(args, "l", &pid)) return NULL;
  NCall *handed = NULL, **tail = &handed;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  /* its own routes, and the calls in flight only if some are its own: walking every
   * peer's (tables that only grew) at the end of each connection, with the mutex
   * held, cost the others' forwarding the size of everyone's tables */
  if (P) {
    while (P->routes_from) {
      L->c_walked++;
      route_drop(L, P->routes_from);
    }
    while (P->routes_to) {
      L->c_walked++;
      route_drop(L, P->routes_to);
    }
  }
  if (!P || P->to_open > 0) {
    L->c_walked += L->calls.cap;
    take_calls(L, callee_is, &pid, &tail);
  }
  if (!P || P->native_open > 0) {
    L->c_walked += 2 * L->calls.cap;
    for (size_t i = 0; i < L->calls.cap; i++) {
      NCall *c = L->calls.keys[i] ? L->calls.vals[i] : NULL;
      if (c && c->caller == pid) c->orphan = 1; /* its answer id goes with the others below */
    }
    take_calls(L, caller_is, &pid, &tail);
  }
  if (P) { /* its own tables: the other peers' ids are not walked */
    map_free(&P->answers);
    map_free(&P->reserved);
    map_free(&P->nofinish);
    P->native_open = P->py_open = P->returned_open = P->to_open = 0;
    P->nf_head = P->nf_len = P->nf_live = 0;
  }
  UNLOCK(L);
  return handed_records(handed, PyList_New(0));
}

/* expired() -> [record]: native calls past their deadline, handed to Python */
static PyObject *Lane_expired(Lane *L, PyObject *unused) {
  NCall *handed = NULL, **tail = &handed;
  LOCK(L);
  if (L->calls.len) {
    int64_t now = now_ns(CLOCK_MONOTONIC);
    take_calls(L, past, &now, &tail);
  }
  UNLOCK(L);
  return handed_records(handed, PyList_New(0));
}

/* The pids a walk of the peers collected (`pids`, malloc'd or NULL), as a list, and
 * `pids` freed; MemoryError if the walk could not collect them (`nomem`). */
static PyObject *pid_list(int *pids, size_t n, int nomem) {
  PyObject *out = nomem ? PyErr_NoMemory() : PyList_New(0);
  for (size_t i = 0; out && i < n; i++) {
    PyObject *v = PyLong_FromLong(pids[i]);
    if (!v || PyList_Append(out, v) < 0) Py_CLEAR(out);
    Py_XDECREF(v);
  }
  free(pids);
  return out;
}

/* unhold(seconds) -> [pid]: external clients the lane has not read for `seconds` for
 * what waits for them (more than `soft`), and that took none of it meanwhile, are read
 * again (until they take some).  Such a client may be writing a message with a
 * blocking write, and read nothing until it is done (as engines do): not read, it
 * waited for the lane, and the lane for it, for good.  Read, it is bounded by the
 * hard limit, past which it is cut off. */
static PyObject *Lane_unhold(Lane *L, PyObject *args) {
  double seconds;
  if (!PyArg_ParseTuple(args, "d", &seconds)) return NULL;
  int *pids = NULL;
  size_t n = 0;
  int nomem = 0;
  LOCK(L);
  int64_t limit = now_ns(CLOCK_MONOTONIC) - (int64_t)(seconds * 1e9);
  for (size_t i = 0; i < L->npeers; i++) {
    Peer *P = L->peers[i];
    if (P->closed || !P->external || P->unheld || !P->paused_since || P->fd < 0 ||
        buf_size(&P->out) <= P->soft || P->paused_since > limit || P->wrote_at > limit)
      continue;
    if (!pids && !(pids = malloc(L->npeers * sizeof *pids))) {
      nomem = 1;
      break;
    }
    P->unheld = 1;
    epoll_set(L, P);
    pids[n++] = P->pid;
  }
  UNLOCK(L);
  return pid_list(pids, n, nomem);
}

/* stalled(seconds) -> [pid]: peers that began a message longer ago and have not finished it */
static PyObject *Lane_stalled(Lane *L, PyObject *args) {
  double seconds;
  if (!PyArg_ParseTuple(args, "d", &seconds)) return NULL;
  int *pids = NULL;
  size_t n = 0;
  int nomem = 0;
  LOCK(L);
  int64_t limit = now_ns(CLOCK_MONOTONIC) - (int64_t)(seconds * 1e9);
  for (size_t i = 0; i < L->npeers; i++) {
    Peer *P = L->peers[i];
    if (!P->closed && P->partial_since && !P->paused_since && P->partial_since <= limit) {
      if (!pids && !(pids = malloc(L->npeers * sizeof *pids))) {
        nomem = 1;
        break;
      }
      pids[n++] = P->pid;
    }
  }
  UNLOCK(L);
  return pid_list(pids, n, nomem);
}

/* drain_audit() -> [(ctx, interface id, method id, wall time, seconds)]
 *
 * The first records are copied with the mutex held (each with a reference to its
 * route's context), their Python records built without it, and only the ones
 * built are then removed: a record that could not be built stays for the next
 * drain.  Meanwhile `draining` keeps another drain (a finalizer's, another
 * thread's) from reporting the same records twice: it finds none. */
typedef struct {
  PyObject *ctx;
  uint64_t interface_id;
  uint32_t method_id;
  int64_t wall0, duration;
} AuditCopy;

static PyObject *Lane_drain_audit(Lane *L, PyObject *args) {
  AuditCopy *copy = NULL;
  size_t n = 0;
  Py_ssize_t most = -1; /* at most this many records (the audit's room); -1: all */
  int nomem = 0;
  if (!PyArg_ParseTuple(args, "|n", &most)) return NULL;
  if (most == 0) return PyList_New(0);
  LOCK(L);
  if (!L->draining && L->audit_len) {
    n = L->audit_len;
    if (most > 0 && n > (size_t)most) n = (size_t)most;
    copy = malloc(n * sizeof *copy);
    if (copy) {
      for (size_t i = 0; i < n; i++) {
        AuditRec *a = &L->audit[(L->audit_head + i) % L->audit_cap];
        copy[i] = (AuditCopy){Py_NewRef(a->route->ctx ? a->route->ctx : Py_None), a->interface_id,
                              a->method_id, a->wall0, a->duration};
      }
      L->draining = 1;
    } else {
      nomem = 1;
      n = 0;
    }
  }
  UNLOCK(L);
  if (nomem) return PyErr_NoMemory();
  PyObject *out = PyList_New(0);
  size_t built = 0;
  for (; out && built < n; built++) {
    AuditCopy *a = &copy[built];
    PyObject *rec = Py_BuildValue("(OKIdd)", a->ctx, (unsigned long long)a->interface_id,
                                  a->method_id, (double)a->wall0 / 1e9, (double)a->duration / 1e9);
    if (!rec || PyList_Append(out, rec)) {
      Py_XDECREF(rec);
      PyErr_Clear(); /* the rest stay for the next drain; these are returned */
      break;
    }
    Py_DECREF(rec);
  }
  if (n) {
    LOCK(L);
    for (size_t i = 0; i < built; i++) {
      route_unref(L, L->audit[L->audit_head].route);
      L->audit_head = (L->audit_head + 1) % L->audit_cap;
      L->audit_len--;
    }
    L->draining = 0;
    UNLOCK(L);
  }
  for (size_t i = 0; i < n; i++) Py_DECREF(copy[i].ctx);
  free(copy);
  return out;
}

static PyObject *Lane_stats(Lane *L, PyObject *unused) {
  LOCK(L);
  unsigned long long calls = L->c_calls, returns = L->c_returns, to_python = L->c_to_python,
                     wakeups = L->c_wakeups, reads = L->c_reads, writes = L->c_writes,
                     walked = L->c_walked, moved = L->c_moved;
  Py_ssize_t routes = (Py_ssize_t)L->routes.len, in_flight = (Py_ssize_t)L->calls.len,
             audit_pending = (Py_ssize_t)L->audit_len, peers = (Py_ssize_t)L->npeers;
  unsigned long long buffers = 0; /* bytes the peers' in and out buffers hold allocated */
  for (size_t i = 0; i < L->npeers; i++) buffers += L->peers[i]->in.cap + L->peers[i]->out.cap;
  /* slots of the peers' id tables (each a key and a value) */
  unsigned long long tables = 0;
  for (size_t i = 0; i < L->npeers; i++)
    tables += L->peers[i]->answers.cap + L->peers[i]->reserved.cap + L->peers[i]->nofinish.cap;
  UNLOCK(L);
  return Py_BuildValue("{sKsKsKsKsKsKsnsnsnsnsKsKsKsK}", "calls", calls, "returns", returns,
                       "to_python", to_python, "wakeups", wakeups, "reads", reads, "writes",
                       writes, "routes", routes, "in_flight", in_flight, "audit_pending",
                       audit_pending, "peers", peers, "buffers", buffers, "tables", tables,
                       "walked", walked, "moved", moved);
}

/* longest_probe(pid) -> the most slots a lookup of one of the peer's ids walks in its
 * tables (answers, nofinish, reserved); 0 if it has none */
static PyObject *Lane_longest_probe(Lane *L, PyObject *args) {
  long pid;
  if (!PyArg_ParseTuple(args, "l", &pid)) return NULL;
  size_t most = 0;
  LOCK(L);
  Peer *P = peer_get(L, pid);
  if (P) {
    const Map *maps[] = {&P->answers, &P->nofinish, &P->reserved};
    for (int i = 0; i < 3; i++) {
      size_t n = map_longest(maps[i]);
      if (n > most) most = n;
    }
  }
  UNLOCK(L);
  return PyLong_FromSize_t(most);
}

static PyObject *Lane_get_event_fd(Lane *L, void *unused) { return PyLong_FromLong(L->evfd); }

static PyMethodDef Lane_methods[] = {
    {"add", (PyCFunction)Lane_add, METH_VARARGS, NULL},
    {"remove", (PyCFunction)Lane_remove, METH_VARARGS, NULL},
    {"detach", (PyCFunction)Lane_detach, METH_VARARGS, NULL},
    {"close", (PyCFunction)Lane_close, METH_VARARGS, NULL},
    {"write", (PyCFunction)Lane_write, METH_VARARGS, NULL},
    {"queued", (PyCFunction)Lane_queued, METH_VARARGS, NULL},
    {"ready", (PyCFunction)Lane_ready, METH_NOARGS, NULL},
    {"any_ready", (PyCFunction)Lane_any_ready, METH_NOARGS, NULL},
    {"take", (PyCFunction)Lane_take, METH_VARARGS, NULL},
    {"release", (PyCFunction)Lane_release, METH_VARARGS, NULL},
    {"set_ok", (PyCFunction)Lane_set_ok, METH_VARARGS, NULL},
    {"open_answer", (PyCFunction)Lane_open_answer, METH_VARARGS, NULL},
    {"close_answer", (PyCFunction)Lane_close_answer, METH_VARARGS, NULL},
    {"finish_ok", (PyCFunction)Lane_finish_ok, METH_VARARGS, NULL},
    {"returned", (PyCFunction)Lane_returned, METH_VARARGS, NULL},
    {"allow_finish", (PyCFunction)Lane_allow_finish, METH_VARARGS, NULL},
    {"counts", (PyCFunction)Lane_counts, METH_VARARGS, NULL},
    {"in_flight", (PyCFunction)Lane_in_flight, METH_VARARGS, NULL},
    {"sent", (PyCFunction)Lane_sent, METH_VARARGS, NULL},
    {"unfinished", (PyCFunction)Lane_unfinished, METH_VARARGS, NULL},
    {"idle", (PyCFunction)Lane_idle, METH_VARARGS, NULL},
    {"claim", (PyCFunction)Lane_claim, METH_VARARGS, NULL},
    {"unreserve", (PyCFunction)Lane_unreserve, METH_VARARGS, NULL},
    {"claim_answer", (PyCFunction)Lane_claim_answer, METH_VARARGS, NULL},
    {"install", (PyCFunction)Lane_install, METH_VARARGS, NULL},
    {"uninstall", (PyCFunction)Lane_uninstall, METH_VARARGS, NULL},
    {"drop_peer", (PyCFunction)Lane_drop_peer, METH_VARARGS, NULL},
    {"expired", (PyCFunction)Lane_expired, METH_NOARGS, NULL},
    {"stalled", (PyCFunction)Lane_stalled, METH_VARARGS, NULL},
    {"unhold", (PyCFunction)Lane_unhold, METH_VARARGS, NULL},
    {"drain_audit", (PyCFunction)Lane_drain_audit, METH_VARARGS, NULL},
    {"stats", (PyCFunction)Lane_stats, METH_NOARGS, NULL},
    {"longest_probe", (PyCFunction)Lane_longest_probe, METH_VARARGS, NULL},
    {"stop", (PyCFunction)Lane_stop, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Lane_getset[] = {{"event_fd", (getter)Lane_get_event_fd, NULL, NULL, NULL},
                                    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "supervisor._fastlane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
    .tp_getset = Lane_getset,
};

static PyMethodDef module_methods[] = {{NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "supervisor._fastlane", NULL, -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__fastlane(void) {
  if (hash_init()) return PyErr_SetFromErrno(PyExc_OSError);
  if (PyType_Ready(&LaneType) < 0) return NULL;
  PyObject *m = PyModule_Create(&module);
  if (!m) return NULL;
  Py_INCREF(&LaneType);
  if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
    Py_DECREF(&LaneType);
    Py_DECREF(m);
    return NULL;
  }
  PyModule_AddIntConstant(m, "NATIVE_QID_BASE", NATIVE_QID_BASE);
  PyModule_AddIntConstant(m, "HEADER_SLACK", FW_HEADER_SLACK); /* router.HEADER_SLACK's */
  return m;
}
