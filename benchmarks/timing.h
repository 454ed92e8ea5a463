/* What the C programs of the benchmark suite share (benchmarks/suite.py): a
 * monotonic clock in microseconds, and an order on doubles for qsort.  Built
 * natively (relay.c, with gcc) and for wasm32-wasi (callmix.c, analysis.c, with
 * `wsuper build`, where the clock is the compartment's clock grant). */
#ifndef BENCHMARKS_TIMING_H
#define BENCHMARKS_TIMING_H

#include <time.h>

static inline double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static inline int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

#endif
