/* An analysis compartment that serves Calc (examples/calc/calc.capnp) for
 * test_probes.py: add(a, b) reads its Probe capability `events` once, waiting up
 * to `a` ms for the first event, and answers how many events the read returned
 * (the read failing: -1).  A call whose caller gives up on it while its read waits
 * (the compartment's call_time) leaves that read to the supervisor. */
#include <string.h>

#define WSUPER_SERVE_CALC
#include "calc.h"
#include "probe.h"

WSUPER_SERVE_ONLY(calc)

int calc_serve_add(wsuper_arena *a, int32_t object, const calc_add_params *in,
                   calc_add_results *out) {
  (void)object;
  wsuper_cap events = wsuper_lookup_cap("events");
  probe_read_results r;
  wsuper_arena mine = {0, 0};
  int rc = probe_read(&mine, events, 1024, (uint32_t)in->a, &r);
  out->sum = rc == WSUPER_OK ? (int32_t)r.events.len : -1;
  wsuper_arena_free(&mine);
  (void)a;
  return 0;
}

int calc_serve_new_counter(wsuper_arena *a, int32_t object, const calc_new_counter_params *in,
                           calc_new_counter_results *out) {
  (void)object; (void)in; (void)out;
  return wsuper_error(a, "not served");
}

int calc_serve_sum_to(wsuper_arena *a, int32_t object, const calc_sum_to_params *in,
                      calc_sum_to_results *out) {
  (void)object; (void)in; (void)out;
  return wsuper_error(a, "not served");
}
