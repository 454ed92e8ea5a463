/* stdout (a log) closed while a write to it is under way.  A program that also
 * serves calls (nested.c's caller, built with -DCALLER, calls it): it writes
 * "r<i>\nT<i>" to fd 1 again and again, a line and the start of the next; while
 * the write waits for Log.write of "...r<i>", the engine serves a call into it,
 * whose dispatch closes fd 1.  The write goes on with the log it began with, as
 * on Linux (a close never cuts short a write under way), and is said to have
 * written every byte: "T<i>" too must reach the log.  Says on stderr (a log) in
 * which round fd 1 was closed; exit 2 if no call came during a write. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define W(n) __attribute__((import_module("wasi_snapshot_preview1"), import_name(#n)))
typedef int32_t I;
W(fd_write) I w_fd_write(I, I, I, I);
W(fd_close) I w_fd_close(I);
#define P(x) ((I)(uintptr_t)(x))
typedef struct { uint32_t p, n; } iov;
static volatile int in_write, done;
static I closed;

__attribute__((export_name("wsuper_dispatch")))
int32_t wsuper_dispatch(int32_t object, int64_t iface, int32_t method, int32_t len, int32_t ncaps) {
  if (in_write && !done) {
    done = 1;
    closed = w_fd_close(1);          /* (no stdio here: it is not re-entrant) */
  }
  return done;          /* fail calls from then on: the caller stops */
}

int main(void) {
  char text[64];
  for (int round = 0; round < 2000; round++) {
    int n = snprintf(text, sizeof text, "r%d\nT%d", round, round);
    iov v = {P(text), (uint32_t)n};
    uint32_t wrote = 0;
    in_write = 1;
    I e = w_fd_write(1, P(&v), 1, P(&wrote));
    in_write = 0;
    if (done) {
      fprintf(stderr, "closed in round %d: close %d, write %d wrote %u of %d\n",
              round, closed, e, wrote, n);
      return 0;
    }
  }
  fprintf(stderr, "no call came during a write\n");
  return 2;
}
