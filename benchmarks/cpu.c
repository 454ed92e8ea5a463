/* A CPU-bound guest for the probe benchmarks (benchmarks/suite.py, section
 * "probes"): sorting with a comparison function (a call per comparison, the
 * worst case for entry/exit probes) and hashing (a loop without calls). */
#include <stdint.h>
#include <stdlib.h>

#define N 4096
static uint32_t data[N];

static int compare(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

static uint32_t fnv(const uint8_t *p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
  return h;
}

/* A loop without calls: `rounds` times, an LCG-filled buffer hashed 16 times. */
__attribute__((export_name("hash"))) uint32_t hash(uint32_t rounds) {
  uint32_t seed = 12345, h = 0;
  for (uint32_t r = 0; r < rounds; r++) {
    for (int i = 0; i < N; i++) data[i] = seed = seed * 1664525u + 1013904223u;
    for (int k = 0; k < 16; k++) h ^= fnv((const uint8_t *)data, sizeof data);
  }
  return h;
}

/* `rounds` times: fill with an LCG, sort, hash; returns the last hash. */
__attribute__((export_name("run"))) uint32_t run(uint32_t rounds) {
  uint32_t seed = 12345, h = 0;
  for (uint32_t r = 0; r < rounds; r++) {
    for (int i = 0; i < N; i++) data[i] = seed = seed * 1664525u + 1013904223u;
    qsort(data, N, sizeof data[0], compare);
    h ^= fnv((const uint8_t *)data, sizeof data);
  }
  return h;
}
