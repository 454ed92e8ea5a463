/* benchmarks/suite.py, section "protect": a memory-heavy guest (sort, copies)
 * run with and without memory protection.  Built by `wsuper build` (laid out for
 * protection), once as is and once with -mbulk-memory, where memcpy/memmove of
 * a variable size are memory.copy and get the check protection inserts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint32_t seed = 1;
static const uint32_t mix[8] = {0x9e3779b9u, 0x7f4a7c15u, 0x85ebca6bu, 0xc2b2ae35u,
                                0x27d4eb2fu, 0x165667b1u, 0xd3a2646cu, 0xfd7046c5u};

static uint32_t next(void) {
  seed = seed * 1103515245u + 12345u;
  return (seed >> 8) ^ mix[seed & 7];
}

static int compare(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* Sort n numbers, then copy them around in blocks; returns a checksum. */
__attribute__((export_name("work"))) uint32_t work(uint32_t n) {
  uint32_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
  if (!a || !b) return 0;
  for (uint32_t i = 0; i < n; i++) a[i] = next();
  qsort(a, n, sizeof *a, compare);
  for (uint32_t round = 0; round < 16; round++) {
    for (uint32_t at = 0; at + 64 <= n; at += 64) memcpy(b + at, a + (n - 64 - at), 64 * 4);
    memmove(a + 1, b, (n - 1) * sizeof *a);
    a[0] = round;
  }
  uint32_t sum = 0;
  for (uint32_t i = 0; i < n; i++) sum = sum * 31 + a[i];
  free(a);
  free(b);
  return sum;
}
