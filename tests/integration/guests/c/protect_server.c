/* Serves Probe (protect.capnp) for test_protect.py: each case does one thing that
 * memory protection must stop, in a shared or a per_call instance.  Built with
 * -mbulk-memory (and -ftls-model=local-exec, which clang 14 then needs for
 * errno), so memset and memcpy of a variable size are memory.fill and memory.copy. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WSUPER_SERVE_PROBE
#include "protect.h"

WSUPER_SERVE_ONLY(probe)

typedef int (*op)(int, int);
static int add(int a, int b) { return a + b; }
static int evil(int a, int b) { (void)a; (void)b; return 666; }
static const op ops[2] = {add, add};
static const char literal[] = "a read-only literal";
static int calls;                /* .data: counts the calls this instance served */

static wsuper_text say(wsuper_arena *a, const char *fmt, long x, const char *s) {
  char *out = wsuper_alloc(a, 256);
  snprintf(out, 256, fmt, x, s);
  return wsuper_str(out);
}

int probe_serve_run(wsuper_arena *a, int32_t object, const probe_run_params *in,
                    probe_run_results *out) {
  (void)object;
  const char *c = in->case_.ptr;
  int *volatile null = NULL;
  char *volatile lit = (char *)literal;
  volatile size_t n = 16;
  calls++;
  if (!strcmp(c, "ok")) {
    out->result = say(a, "ok: call %ld of this instance, ops[1](2,3)=%s", calls,
                      ops[1](2, 3) == 5 ? "5" : "corrupted");
  } else if (!strcmp(c, "null-read")) {
    out->result = say(a, "read %ld from NULL%s", *null, "");
  } else if (!strcmp(c, "null-write")) {
    *null = 1;
  } else if (!strcmp(c, "literal")) {
    lit[0] = 'A';
  } else if (!strcmp(c, "vtable")) {
    op *volatile slot = (op *)&ops[1];
    *slot = evil;
  } else if (!strcmp(c, "fill")) {          /* memory.fill, through the inserted check */
    memset(lit + 2, 'x', n);
  } else if (!strcmp(c, "copy-from-null")) { /* memory.copy from the no-access page */
    char *dst = wsuper_alloc(a, 16);
    memcpy(dst, (const char *)null + 8, n);
  } else if (!strcmp(c, "grow")) {           /* memory.grow, then the same write */
    char *big = malloc(8 << 20);
    memset(big, 1, 8 << 20);
    lit[0] = 'A';
  } else if (!strcmp(c, "read")) {           /* WASI: EFAULT, the literal intact */
    long r = read(0, lit, 4);
    out->result = say(a, "read returned %ld, errno %s", r, r < 0 && errno == EFAULT ?
                      "EFAULT" : "other");
  } else if (!strcmp(c, "params")) {         /* the wsuper ABI writing into .rodata */
    int32_t caps[1];
    wsuper_params_read(lit, caps);
  } else if (!strcmp(c, "lookup-null")) {    /* the host reading the null page */
    out->result = say(a, "lookup returned %ld%s", wsuper_lookup((const char *)null + 16, 4), "");
  } else if (!strcmp(c, "exit")) {
    exit(3);
  } else {
    return wsuper_error(a, "unknown case");
  }
  if (!out->result.ptr) out->result = say(a, "%ld: not stopped (%s)", calls, c);
  return 0;
}
