/* Writes whole numbered records of REC bytes to /d/out.bin, opened O_DSYNC (a
   real disk: each write takes time in a supervisor's worker thread, where most
   of the run is spent), until a write fails (`wsuper revoke app.d`); prints how it
   failed, tries /d once more, then writes /k/other.txt through the other grant
   on the same directory, prints what each did, and waits for /k/done.
   test_revoke_races.py revokes app.d while it writes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <wasi/api.h>

#define REC (256 << 10)     /* one File.write (the engine's MAX_IO) */

static const char *said(int e) {
  return e == ENOTCAPABLE ? "ENOTCAPABLE" : e == ECANCELED ? "ECANCELED" :
         e == EPERM ? "EPERM" : e == EBADF ? "EBADF" : strerror(e);
}

int main(void) {
  static char rec[REC];
  int f = open("/d/out.bin", O_WRONLY | O_CREAT | O_TRUNC | O_DSYNC, 0644);
  if (f < 0) { printf("open: %s\n", said(errno)); return 1; }
  printf("writing\n");
  fflush(stdout);
  for (int i = 0;; i++) {
    memset(rec, 'x', REC);
    snprintf(rec, 16, "%08d", i);
    rec[8] = ' ';
    rec[REC - 1] = '\n';
    /* WASI's own calls: wasi-libc's write says EBADF, and fsync EINVAL, for what
       the engine says ENOTCAPABLE */
    __wasi_ciovec_t iov = {(const uint8_t *)rec, REC};
    __wasi_size_t n = 0;
    __wasi_errno_t w = __wasi_fd_write(f, &iov, 1, &n);
    if (w != 0 || n != REC) { printf("write %d: %s\n", i, w ? said(w) : "short"); break; }
  }
  int again = open("/d/again.txt", O_WRONLY | O_CREAT, 0644);
  printf("open again: %s\n", again < 0 ? said(errno) : "ok");
  int k = open("/k/other.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (k < 0 || write(k, "other\n", 6) != 6 || fsync(k) != 0) printf("other: %s\n", said(errno));
  else printf("other: ok\n");
  fflush(stdout);
  struct stat st;                       /* the test looks at the supervisor meanwhile */
  struct timespec t = {0, 20000000};
  for (int i = 0; i < 3000 && stat("/k/done", &st) != 0; i++) nanosleep(&t, 0);
  return 0;
}
