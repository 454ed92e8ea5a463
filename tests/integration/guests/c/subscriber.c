/* A program holding `feed`: subscribes an observer of its own, keeps the Secret
 * the feed hands it in Observer.notify, and calls it (test_attenuation.py). */
#include <stdio.h>

#define WSUPER_SERVE_OBSERVER
#include "feed.h"

WSUPER_SERVE_ONLY(observer)

static wsuper_cap secret = -1;

int observer_serve_notify(wsuper_arena *a, int32_t object, const observer_notify_params *in,
                          observer_notify_results *out) {
  (void)object;
  (void)out;
  if (!in->secret || wsuper_keep(in->secret) != WSUPER_OK) return wsuper_error(a, "no secret");
  secret = in->secret;
  return 0;
}

int main(void) {
  wsuper_arena a = {0, 0};
  wsuper_cap feed = wsuper_lookup_cap("feed");
  int rc = feed_subscribe(&a, feed, wsuper_object(1));
  if (rc != WSUPER_OK || secret < 0) {
    printf("subscribe failed (%d): %s\n", rc, a.error ? a.error : "");
    return 1;
  }
  secret_peek_results got;
  rc = secret_peek(&a, secret, &got);
  if (rc == WSUPER_OK) printf("peek: %d\n", (int)got.n);
  else printf("peek failed (%d): %s\n", rc, a.error ? a.error : "");
  return 0;
}
