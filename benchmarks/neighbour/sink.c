/* The sink of benchmarks/neighbour.py's `huge`: serves Calc.add, reading its
 * (huge) params as every plugin does, and answers a + b. */
#define WSUPER_SERVE_CALC
#include "calc.h"

WSUPER_SERVE_ONLY(calc)

int calc_serve_add(wsuper_arena *a, int32_t object, const calc_add_params *in, calc_add_results *out) {
  (void)a; (void)object;
  out->sum = in->a + in->b;
  return 0;
}
int calc_serve_new_counter(wsuper_arena *a, int32_t object, const calc_new_counter_params *in,
                           calc_new_counter_results *out) {
  (void)object; (void)in; (void)out;
  return wsuper_error(a, "no counters here");
}
int calc_serve_sum_to(wsuper_arena *a, int32_t object, const calc_sum_to_params *in,
                      calc_sum_to_results *out) {
  (void)object; (void)in; (void)out;
  return wsuper_error(a, "no sums here");
}
