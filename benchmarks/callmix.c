/* The call benchmark of the probes section (benchmarks/suite.py): one program
 * calling three calc compartments that differ only in their probes, in
 * interleaved blocks, so that the machine's load drifts alike for all three.
 * Times each block with its clock grant; prints one line per target: the
 * median over blocks of the mean microseconds per call. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "calc.h"
#include "timing.h"

#define BLOCK 50
#define MAX_BLOCKS 1000

static double per_call[3][MAX_BLOCKS];

int main(int argc, char **argv) {
  int blocks = argc > 1 ? atoi(argv[1]) : 20;
  if (blocks > MAX_BLOCKS) blocks = MAX_BLOCKS;
  const char *names[3] = {"plain", "functions_off", "calls_on"};
  wsuper_cap caps[3];
  for (int t = 0; t < 3; t++)
    if ((caps[t] = wsuper_lookup_cap(names[t])) < 0) return 1;
  wsuper_arena a = {0, 0};
  for (int b = 0; b < blocks; b++) {
    for (int k = 0; k < 3; k++) {
      int t = (b + k) % 3;          /* each target first, second and third in turn */
      double t0 = now_us();
      for (int i = 0; i < BLOCK; i++) {
        calc_add_results r;
        if (calc_add(&a, caps[t], 2, 3, &r) != WSUPER_OK || r.sum != 5) return 2;
        wsuper_arena_free(&a);
      }
      per_call[t][b] = (now_us() - t0) / BLOCK;
    }
  }
  for (int t = 0; t < 3; t++) {
    qsort(per_call[t], blocks, sizeof(double), cmp_double);
    printf("callmix %s %.3f\n", names[t], per_call[t][blocks / 2]);
  }
  return 0;
}
