/* An analysis compartment: it reads the events of the probes on the kv store
 * (its one grant that matters: `events`, a Probe capability on "store") and
 * prints, per method, how many calls it saw and how long they took: every
 * REPORT_EVERY calls, and when the store has been quiet for a read's wait.
 *
 * It is a plugin like any other: it holds nothing else.  To show that, it
 * first tries what it was not given (a directory, a file, another method on
 * its probe capability) and reports each refusal.
 *
 * Build: wsuper build analysis.c --schema ../../capnp_schemas/probe.capnp \
 *          -o build/analysis.wasm */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "probe.h"

#define MAX_METHODS 32
#define REPORT_EVERY 8

typedef struct {
  char name[96];
  long calls, failed;
  long long total_ns, max_ns;
} method;
static method methods[MAX_METHODS];
static int nmethods;

static method *find(const char *name) {
  for (int i = 0; i < nmethods; i++)
    if (strcmp(methods[i].name, name) == 0) return &methods[i];
  if (nmethods == MAX_METHODS) return NULL;
  method *m = &methods[nmethods++];
  snprintf(m->name, sizeof m->name, "%s", name);
  return m;
}

static void try_what_was_not_granted(wsuper_cap events) {
  wsuper_cap data = wsuper_lookup_cap("data");
  printf("analysis: lookup(\"data\") -> %d (%s)\n", data,
         data < 0 ? "refused: not granted" : "granted?!");
  FILE *f = fopen("/data/kv.log", "r");
  printf("analysis: fopen(/data/kv.log) -> %s\n", f ? "opened?!" : strerror(errno));
  if (f) fclose(f);
  /* Directory.open (host.capnp) on the probe capability: it is no directory */
  int32_t out[2], caps[4];
  char why[512] = "";
  int rc = wsuper_call(events, (int64_t)0xa05a5e2c6b2f6d06LL, 0, NULL, 0, NULL, 0, out);
  if (out[0] >= 0 && out[0] < (int32_t)sizeof why && out[1] <= 4) {
    wsuper_reply_read(why, caps);
    why[out[0]] = 0;
  }
  printf("analysis: Directory.open on the probe capability -> %d (%s)\n", rc,
         rc < 0 ? why : "accepted?!");
}

int main(void) {
  wsuper_cap events = wsuper_lookup_cap("events");
  if (events < 0) {
    printf("analysis: no capability named events\n");
    return 1;
  }
  wsuper_arena a = {0, 0};
  probe_target_results target;
  if (probe_target(&a, events, &target) == WSUPER_OK)
    printf("analysis: reading the probes on %s\n", target.compartment.ptr);
  try_what_was_not_granted(events);
  long seen = 0, dropped = 0, next_report = REPORT_EVERY, reported = 0;
  for (;;) {
    probe_read_results r;
    wsuper_arena_free(&a);
    int rc = probe_read(&a, events, 256, 2000, &r);
    if (rc != WSUPER_OK) {
      printf("analysis: read failed (%d): %s\n", rc, a.error ? a.error : "");
      return 1;
    }
    dropped += (long)r.dropped;
    for (uint32_t i = 0; i < r.events.len; i++) {
      const probe_event *e = &r.events.items[i];
      if (strcmp(e->kind.ptr, "call") != 0) continue;
      method *m = find(e->name.ptr);
      if (!m) continue;
      seen++;
      m->calls++;
      m->failed += strcmp(e->outcome.ptr, "returned") != 0;
      m->total_ns += e->duration_ns;
      if (e->duration_ns > m->max_ns) m->max_ns = e->duration_ns;
    }
    if (seen >= next_report || (r.events.len == 0 && seen > reported)) {
      next_report = seen + REPORT_EVERY;
      reported = seen;
      printf("analysis: %ld calls seen (%ld events dropped)\n", seen, dropped);
      for (int i = 0; i < nmethods; i++)
        printf("analysis:   %-24s %5ld calls %3ld failed  mean %6lld us  max %6lld us\n",
               methods[i].name, methods[i].calls, methods[i].failed,
               methods[i].total_ns / methods[i].calls / 1000, methods[i].max_ns / 1000);
    }
  }
}
