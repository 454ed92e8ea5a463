/* Calls a Probe (protect.capnp) with each case named in its arguments and
 * prints what came back, then checks the bystander still answers. */
#include <stdio.h>

#include "protect.h"

int main(int argc, char **argv) {
  wsuper_cap probe = wsuper_lookup_cap("probe");
  for (int i = 1; i < argc; i++) {
    wsuper_arena a = {0, 0};
    probe_run_results r;
    int rc = probe_run(&a, probe, wsuper_str(argv[i]), &r);
    if (rc == 0)
      printf("%s -> %s\n", argv[i], r.result.ptr);
    else
      printf("%s -> error %d: %s\n", argv[i], rc, a.error ? a.error : "");
    fflush(stdout);
    wsuper_arena_free(&a);
  }
  return 0;
}
