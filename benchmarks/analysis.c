/* The analysis compartment of the probe benchmark (benchmarks/suite.py,
 * section "probes"): reads events from its Probe capability as fast as they
 * come until `target` have arrived (or none came for a second), then prints
 * one line: how many, in how long (its clock grant), and how many were dropped. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "probe.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  long target = argc > 1 ? atol(argv[1]) : 10000;
  wsuper_cap events = wsuper_lookup_cap("events");
  wsuper_arena a = {0, 0};
  long seen = 0, dropped = 0, reads = 0;
  double first = 0, last = 0;
  int idle = 0;
  while (seen < target && idle < 2) {
    probe_read_results r;
    wsuper_arena_free(&a);
    if (probe_read(&a, events, 1024, 1000, &r) != WSUPER_OK) {
      printf("analysis: read failed: %s\n", a.error ? a.error : "");
      return 1;
    }
    if (r.events.len == 0) { idle++; continue; }
    idle = 0;
    if (!seen) first = now();
    seen += r.events.len;
    dropped += (long)r.dropped;
    reads++;
    last = now();
  }
  printf("analysis-stats events=%ld seconds=%.6f dropped=%ld reads=%ld\n", seen, last - first,
         dropped, reads);
  return 0;
}
