/* The physical floor of a mediated call: A -> R -> B -> R -> A over Unix
 * socketpairs, 64-byte messages, three processes, blocking reads and writes.
 * Usage: relay N  ->  prints "p50_us p99_us mean_us" of N timed round trips.
 *        relay N K  ->  batched: A keeps K calls in flight, R and B move whatever
 *                       is there at once (one read, one write per wake-up);
 *                       prints "calls_per_s" over N calls. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "timing.h"


static void full(int fd, char *buf, int n, int reading) {
  for (int done = 0; done < n;) {
    ssize_t k = reading ? read(fd, buf + done, n - done) : write(fd, buf + done, n - done);
    if (k <= 0) _exit(0);
    done += (int)k;
  }
}

/* move whatever `from` has to `to` (whole 64-byte messages are not needed: a stream) */
static void pass(int from, int to, char *buf, int cap) {
  ssize_t k = read(from, buf, cap);
  if (k <= 0) _exit(0);
  full(to, buf, (int)k, 0);
}

static int batched(int n, int k) {
  int ar[2], br[2];
  static char buf[1 << 16];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, ar) || socketpair(AF_UNIX, SOCK_STREAM, 0, br)) return 1;
  if (fork() == 0) { /* R */
    close(ar[0]);
    close(br[0]);
    struct pollfd p[2] = {{ar[1], POLLIN, 0}, {br[1], POLLIN, 0}};
    for (;;) {
      if (poll(p, 2, -1) < 0) _exit(1);
      if (p[0].revents) pass(ar[1], br[1], buf, sizeof buf);
      if (p[1].revents) pass(br[1], ar[1], buf, sizeof buf);
    }
  }
  if (fork() == 0) { /* B: echoes what it has */
    close(ar[0]);
    close(ar[1]);
    close(br[1]);
    for (;;) pass(br[0], br[0], buf, sizeof buf);
  }
  close(ar[1]);
  close(br[0]);
  close(br[1]);
  char msg[64 * 256];
  memset(msg, 'x', sizeof msg);
  if (k > 256) k = 256;
  double t0 = now_us();
  full(ar[0], msg, 64 * k, 0);
  long sent = k, done = 0;
  while (done < n) {
    ssize_t got = read(ar[0], buf, sizeof buf);
    if (got <= 0) return 1;
    static long bytes = 0;
    bytes += got;
    long whole = bytes / 64;
    bytes %= 64;
    done += whole;
    long more = whole;
    if (sent + more > n) more = n - sent;
    if (more > 0) {
      full(ar[0], msg, (int)(64 * more), 0);
      sent += more;
    }
  }
  double t = now_us() - t0;
  close(ar[0]);
  while (wait(NULL) > 0) {
  }
  printf("%.0f\n", n / t * 1e6);
  return 0;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 10000;
  if (argc > 2) return batched(n, atoi(argv[2]));
  int ar[2], br[2];
  char msg[64];
  memset(msg, 'x', sizeof msg);
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, ar) || socketpair(AF_UNIX, SOCK_STREAM, 0, br)) return 1;
  if (fork() == 0) { /* R: forwards A's message to B and B's answer to A */
    close(ar[0]);
    close(br[0]);
    for (;;) {
      full(ar[1], msg, 64, 1);
      full(br[1], msg, 64, 0);
      full(br[1], msg, 64, 1);
      full(ar[1], msg, 64, 0);
    }
  }
  if (fork() == 0) { /* B: echoes */
    close(ar[0]);
    close(ar[1]);
    close(br[1]);
    for (;;) {
      full(br[0], msg, 64, 1);
      full(br[0], msg, 64, 0);
    }
  }
  close(ar[1]);
  close(br[0]);
  close(br[1]);
  double *t = malloc(sizeof(double) * n), sum = 0;
  for (int i = 0; i < 200; i++) { /* warm up */
    full(ar[0], msg, 64, 0);
    full(ar[0], msg, 64, 1);
  }
  for (int i = 0; i < n; i++) {
    double t0 = now_us();
    full(ar[0], msg, 64, 0);
    full(ar[0], msg, 64, 1);
    t[i] = now_us() - t0;
    sum += t[i];
  }
  close(ar[0]);
  while (wait(NULL) > 0) {
  }
  qsort(t, n, sizeof *t, cmp_double);
  printf("%.2f %.2f %.2f\n", t[n / 2], t[(int)(n * 0.99)], sum / n);
  return 0;
}
