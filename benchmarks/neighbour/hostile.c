/* The hostile neighbour of benchmarks/neighbour.py: one program, argv[1] says
 * what it does, for ever (or until the system is stopped):
 *   idle      sleeps (the baseline: the same system, nothing hostile)
 *   spin      an infinite loop in wasm (CPU)
 *   log       Log.write as fast as it may (printf to a log grant, fd 1)
 *   stderr    the same on fd 2 (a log grant too)
 *   file      File.read of 4 KiB, again and again (fread of a granted file)
 *   clock     Clock.monotonic (clock_gettime)
 *   random    Random.bytes of 4 KiB (getentropy)
 *   flood     calc.add back to back: a call flood to the honest server
 *   grow      memory.grow until it fails, touching every page, then sleeps
 *   crash     traps at once (its restart policy restarts it)
 *   caps      calc.sumTo(0, a capability to itself): one passed and released a call
 *   huge      calls sink.add with params at its message_size limit
 *   hold      calc.sumTo(1, itself), and never answers calc's callback (step):
 *             calc waits in a call out, up to its call_time */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WSUPER_SERVE_OBSERVER
#include "calc.h"

WSUPER_SERVE_ONLY(observer)

static void pause_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

int observer_serve_step(wsuper_arena *a, int32_t object, const observer_step_params *in,
                        observer_step_results *out) {
  (void)a; (void)object; (void)in; (void)out;
  for (;;) pause_ms(100);   /* never answers: each sleep is short of call_time */
}

/* params of `add` carrying a Data field of `bytes` bytes beyond the struct
 * (calc.add's struct has no pointer: the list hangs off a pointer it ignores) */
static uint8_t *huge_params(uint32_t bytes, int32_t *len) {
  uint32_t words = (bytes + 7) / 8;
  uint32_t total = 1 + 2 + words;                   /* root ptr, struct (1 data, 1 ptr), list */
  uint8_t *m = calloc(1, 8 + 8 * (size_t)total);
  if (!m) return NULL;
  uint32_t seg[2] = {0, total};
  memcpy(m, seg, 8);
  uint64_t root = (0ull << 2) | ((uint64_t)1 << 32) | ((uint64_t)1 << 48);   /* struct, 1 data, 1 ptr */
  memcpy(m + 8, &root, 8);
  uint64_t list = 1 | ((uint64_t)0 << 2) | ((uint64_t)2 << 32) | ((uint64_t)bytes << 35);
  memcpy(m + 8 + 16, &list, 8);                     /* pointer field 0: bytes, right after */
  *len = (int32_t)(8 + 8 * total);
  return m;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "idle";
  wsuper_cap calc = wsuper_lookup_cap("calc");
  unsigned long long i = 0;
  if (!strcmp(mode, "spin")) {
    volatile unsigned long long x = 0;
    for (;;) x++;
  } else if (!strcmp(mode, "log") || !strcmp(mode, "stderr")) {
    FILE *f = !strcmp(mode, "log") ? stdout : stderr;
    for (;;) { fprintf(f, "flood %llu ............................................................\n", i++); fflush(f); }
  } else if (!strcmp(mode, "file")) {
    static char buf[4096];
    FILE *f = fopen("/data/blob", "r");
    if (!f) { printf("hostile: no /data/blob\n"); return 1; }
    setvbuf(f, NULL, _IONBF, 0);
    for (;;) { fseek(f, 0, SEEK_SET); if (fread(buf, 1, sizeof buf, f) == 0) return 1; }
  } else if (!strcmp(mode, "clock")) {
    struct timespec ts;
    for (;;) clock_gettime(CLOCK_MONOTONIC, &ts);
  } else if (!strcmp(mode, "random")) {
    static char buf[256];
    for (;;) getentropy(buf, sizeof buf);
  } else if (!strcmp(mode, "flood")) {
    for (;;) { wsuper_arena a = {0, 0}; calc_add_results r; calc_add(&a, calc, 1, 2, &r); wsuper_arena_free(&a); }
  } else if (!strcmp(mode, "grow")) {
    size_t got = 0;                    /* memory.grow itself, a MiB at a time, each page touched */
    for (;;) {
      long at = __builtin_wasm_memory_grow(0, 16);
      if (at < 0) break;
      for (long pg = 0; pg < 16; pg++) ((volatile char *)(at * 65536))[pg * 65536] = 1;
      got++;
    }
    printf("hostile: grew %zu MiB more\n", got);
    fflush(stdout);
    for (;;) pause_ms(1000);
  } else if (!strcmp(mode, "crash")) {
    __builtin_trap();
  } else if (!strcmp(mode, "caps")) {
    for (;;) { wsuper_arena a = {0, 0}; calc_sum_to_results r; calc_sum_to(&a, calc, 0, wsuper_object(1), &r); wsuper_arena_free(&a); }
  } else if (!strcmp(mode, "huge")) {
    wsuper_cap sink = wsuper_lookup_cap("sink");
    int32_t len, out[2];
    uint32_t limit = argc > 2 ? (uint32_t)atoi(argv[2]) : 8u << 20;
    uint8_t *m = huge_params(limit - 64, &len);
    if (!m) { printf("hostile: no memory for the message\n"); return 1; }
    for (unsigned long long ok = 0;; ) {
      int rc = wsuper_call(sink, (int64_t)0xc0ffee0000000001ull, 0, m, len, NULL, 0, out);
      if (rc && !i++) { printf("hostile: huge call failed %d (%d bytes)\n", rc, len); fflush(stdout); }
      if (!rc && !ok++) { printf("hostile: huge call of %d bytes answered\n", len); fflush(stdout); }
      if (out[0] > 0 || out[1] > 0) {        /* read (and drop) the reply */
        static uint8_t r[4096]; int32_t c[8];
        if (out[0] <= (int32_t)sizeof r && out[1] <= 8) wsuper_reply_read(r, c);
      }
    }
  } else if (!strcmp(mode, "hold")) {
    for (;;) { wsuper_arena a = {0, 0}; calc_sum_to_results r; calc_sum_to(&a, calc, 1, wsuper_object(1), &r); wsuper_arena_free(&a); }
  }
  for (;;) pause_ms(1000);    /* idle */
}
