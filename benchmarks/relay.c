/* The physical floor of a mediated call: A -> R -> B -> R -> A over Unix
 * socketpairs, 64-byte messages, three processes, blocking reads and writes.
 * Usage: relay N  ->  prints "p50_us p99_us mean_us" of N timed round trips. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 10000;
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
