/* The honest client of benchmarks/neighbour.py: N calls to calc.add, one at a
 * time, each timed by the monotonic clock (a Clock grant: one host call
 * before and one after, counted in every sample alike), then one line:
 *   honest n=N errors=E p50_us=.. p99_us=.. max_us=.. [first_error=...]
 * argv[1] = N (default 3000), argv[2] = warm-up calls (default 300), argv[3] =
 * ms to wait first (default 0: the neighbour gets going meanwhile). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "calc.h"

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 3000;
  int warm = argc > 2 ? atoi(argv[2]) : 300;
  int delay = argc > 3 ? atoi(argv[3]) : 0;
  wsuper_cap calc = wsuper_lookup_cap("calc");
  if (calc < 0) { printf("honest: no calc\n"); return 1; }
  struct timespec pause = {delay / 1000, (long)(delay % 1000) * 1000000};
  nanosleep(&pause, NULL);
  int64_t *t = calloc((size_t)n, sizeof *t);
  int errors = 0, wrong = 0;
  char first[200] = "";
  for (int i = 0; i < warm + n; i++) {
    wsuper_arena a = {0, 0};
    calc_add_results r;
    int64_t t0 = now_ns();
    int rc = calc_add(&a, calc, i, 1, &r);
    int64_t dt = now_ns() - t0;
    if (rc != WSUPER_OK) {
      if (!errors) snprintf(first, sizeof first, "%d:%s", rc, a.error ? a.error : "");
      errors++;
    } else if (r.sum != i + 1) {
      wrong++;
    }
    if (i >= warm) t[i - warm] = dt;
    wsuper_arena_free(&a);
  }
  qsort(t, (size_t)n, sizeof *t, cmp);
  printf("honest n=%d errors=%d wrong=%d p50_us=%.1f p99_us=%.1f max_us=%.1f%s%s\n", n, errors,
         wrong, t[n / 2] / 1e3, t[n * 99 / 100] / 1e3, t[n - 1] / 1e3,
         errors ? " first_error=" : "", first);
  return 0;
}
