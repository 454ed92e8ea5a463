/* A descriptor closed while a read on it is under way.  Built twice:
 *
 *   reader (default): a program that also serves calls (any interface).  It
 *     reads a 4 MiB file of 'X' (16 File.read calls under wsuper) again and
 *     again; while one of those reads waits, the engine serves a call into it,
 *     whose dispatch closes that descriptor and opens a file of 'Y' (the same
 *     descriptor number, and the capability's import id freed just before).
 *     The read must go on with the file it began with, as on Linux: exit 0 if
 *     it saw no 'Y', 1 if it did, 2 if no call came during a read.
 *   -DCALLER: calls the reader (grant "a") until a call fails (the reader
 *     fails calls once it has done its part, or has ended). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifdef CALLER
__attribute__((import_module("wsuper"), import_name("lookup"))) int32_t ws_lookup(int32_t, int32_t);
__attribute__((import_module("wsuper"), import_name("call")))
int32_t ws_call(int32_t, int64_t, int32_t, int32_t, int32_t, int32_t, int32_t, int32_t);
int main(void) {
  int32_t h = ws_lookup((int32_t)(uintptr_t)"a", 1);
  uint32_t out[2];
  int i = 0;
  while (ws_call(h, ECHO_ID, 0, 0, 0, 0, 0, (int32_t)(uintptr_t)out) == 0) i++;
  printf("caller: %d calls answered\n", i);
  return 0;
}
#else
#define W(n) __attribute__((import_module("wasi_snapshot_preview1"), import_name(#n)))
typedef int32_t I;
typedef int64_t L;
W(path_open) I w_path_open(I, I, I, I, I, L, L, I, I);
W(fd_read) I w_fd_read(I, I, I, I);
W(fd_seek) I w_fd_seek(I, L, I, I);
W(fd_close) I w_fd_close(I);
#define P(x) ((I)(uintptr_t)(x))
#define S(s) P(s), (I)strlen(s)
typedef struct { uint32_t p, n; } iov;
static uint32_t fd;
static volatile int in_read, done;
static I closed, opened;
static uint32_t other;
static uint8_t buf[4 << 20];

__attribute__((export_name("wsuper_dispatch")))
int32_t wsuper_dispatch(int32_t object, int64_t iface, int32_t method, int32_t len, int32_t ncaps) {
  if (in_read && !done) {
    uint32_t filled = 0;
    while (filled < sizeof buf && buf[filled]) filled++;
    if (filled + (256 << 10) < sizeof buf) {   /* more of the read is still to come */
      done = 1;
      closed = w_fd_close(fd);       /* (no printf here: stdio is not re-entrant) */
      opened = w_path_open(3, 1, S("y.txt"), 0, 2, 0, 0, P(&other));
    }
  }
  return done;          /* fail calls from then on: the caller stops */
}

int main(void) {
  /* no stdio until the end: libc's exit-time code runs after every call served
   * by a command (wasm-ld's wrapper of each export), and flushes stdout then */
  I e0 = w_path_open(3, 1, S("x.txt"), 0, 2, 0, 0, P(&fd));
  for (int round = 0; round < 5000 && !done; round++) {
    uint64_t at;
    w_fd_seek(fd, 0, 0, P(&at));
    memset(buf, 0, sizeof buf);
    iov v = {P(buf), sizeof buf};
    uint32_t n = 0;
    in_read = 1;
    I e = w_fd_read(fd, P(&v), 1, P(&n));
    in_read = 0;
    if (done) {
      uint32_t x = 0, y = 0;
      for (uint32_t i = 0; i < n; i++) { x += buf[i] == 'X'; y += buf[i] == 'Y'; }
      printf("open %d\n", e0);
      printf("during the read: close %d, open %d as fd %u (was %u)\n", closed, opened, other, fd);
      printf("read %d n=%u X=%u Y=%u\n", e, n, x, y);
      return y ? 1 : 0;
    }
  }
  printf("no call came during a read\n");
  return 2;
}
#endif
