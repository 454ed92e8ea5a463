/* The analysis compartment of the probe benchmark (benchmarks/suite.py,
 * section "probes").  It reads one event, sleeps while its queue fills (the
 * supervisor keeps at most 10,000 for it and drops the rest, counted), then
 * drains the queue in reads of up to 1024: it prints how many events it read
 * until a read came back short (the backlog was gone) and in how long (its
 * clock grant), how many were dropped, and in how many reads. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"
#include "timing.h"

int main(int argc, char **argv) {
  long sleep_ms = argc > 1 ? atol(argv[1]) : 1500;
  wsuper_cap events = wsuper_lookup_cap("events");
  wsuper_arena a = {0, 0};
  probe_read_results r;
  long seen = 0, dropped = 0, reads = 0;
  if (probe_read(&a, events, 1, 10000, &r) != WSUPER_OK || r.events.len == 0) {
    printf("analysis: no first event\n");
    return 1;
  }
  usleep((useconds_t)(sleep_ms * 1000));
  double first = now_us() / 1e6, last = first;
  for (;;) {
    wsuper_arena_free(&a);
    if (probe_read(&a, events, 1024, 1000, &r) != WSUPER_OK) {
      printf("analysis: read failed: %s\n", a.error ? a.error : "");
      return 1;
    }
    seen += r.events.len;
    dropped += (long)r.dropped;
    reads++;
    last = now_us() / 1e6;
    if (r.events.len < 1024) break;   /* the backlog is drained */
  }
  printf("analysis-stats events=%ld seconds=%.6f dropped=%ld reads=%ld\n", seen, last - first,
         dropped, reads);
  return 0;
}
