/* Serves Feed (feed.capnp): subscribe calls the observer back at once, handing
 * it a Secret, an object of the feed's own (tag 1), in the params of notify. */
#include <stdint.h>

#define WSUPER_SERVE_FEED
#define WSUPER_SERVE_SECRET
#include "feed.h"

int feed_serve_subscribe(wsuper_arena *a, int32_t object, const feed_subscribe_params *in,
                         feed_subscribe_results *out) {
  (void)object;
  (void)out;
  if (!in->observer) return wsuper_error(a, "no observer");
  /* a handle that goes with the arena: made at every subscribe, and kept, they
   * filled the feed's c-list */
  return observer_notify(a, in->observer, wsuper_object_for(a, 1));
}

int secret_serve_peek(wsuper_arena *a, int32_t object, const secret_peek_params *in,
                      secret_peek_results *out) {
  (void)a;
  (void)object;
  (void)in;
  out->n = 42;
  return 0;
}

int secret_serve_other(wsuper_arena *a, int32_t object, const secret_other_params *in,
                       secret_other_results *out) {
  (void)a;
  (void)object;
  (void)in;
  (void)out;
  return 0;
}

/* By the object called (the main object, 0, is the Feed; 1 is the Secret), never
 * by the interface id the caller names: the supervisor checks that id on the main
 * object only, and a Secret tried as a Feed answered Feed.subscribe. */
__attribute__((export_name("wsuper_dispatch")))
int32_t wsuper_dispatch(int32_t object, int64_t iface, int32_t method, int32_t len,
                        int32_t ncaps) {
  if (object == 0) return feed_dispatch(object, iface, method, len, ncaps);
  return secret_dispatch(object, iface, method, len, ncaps);
}
