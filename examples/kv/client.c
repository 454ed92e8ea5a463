/* A client of the store: a plain C program with main().
 *
 * Its policy grants it `kv` (the store, with an allow-list that leaves out
 * `remove`) and a log for stdout; nothing else.  It hands the store a
 * capability to itself (a Listener) at run time, so the store calls it back
 * on every put. */
#include <stdio.h>
#include <stdlib.h>

#define WSUPER_SERVE_LISTENER
#include "kv.h"

WSUPER_SERVE_ONLY(listener)

int listener_serve_changed(wsuper_arena *a, int32_t object, const listener_changed_params *in,
                           listener_changed_results *out) {
  (void)a;
  (void)object;
  (void)out;
  printf("client: told that %s is now %s\n", in->key.ptr, in->value.ptr);
  return 0;
}

static int check(wsuper_arena *a, const char *what, int rc) {
  if (rc != WSUPER_OK) printf("client: %s failed (%d): %s\n", what, rc, a->error ? a->error : "");
  return rc;
}

int main(void) {
  wsuper_arena a = {0, 0};
  wsuper_cap kv = wsuper_lookup_cap("kv");
  if (kv < 0) {
    printf("client: no capability named kv\n");
    return 1;
  }
  if (check(&a, "subscribe", store_subscribe(&a, kv, wsuper_object(1)))) return 1;

  store_get_results got;
  if (check(&a, "get", store_get(&a, kv, wsuper_str("runs"), &got))) return 1;
  int runs = got.found ? atoi(got.value.ptr) + 1 : 1;
  char text[32];
  snprintf(text, sizeof text, "%d", runs);
  if (check(&a, "put", store_put(&a, kv, wsuper_str("runs"), wsuper_str(text)))) return 1;
  if (check(&a, "put", store_put(&a, kv, wsuper_str("greeting"), wsuper_str("hello")))) return 1;

  store_keys_results keys;
  if (check(&a, "keys", store_keys(&a, kv, &keys))) return 1;
  printf("client: the store holds %u keys:", keys.keys.len);
  for (uint32_t i = 0; i < keys.keys.len; i++) printf(" %s", keys.keys.items[i].ptr);
  printf("\n");

  /* Not in its allow-list: the supervisor answers, the store never sees it. */
  store_remove_results removed;
  int rc = store_remove(&a, kv, wsuper_str("greeting"), &removed);
  printf("client: remove greeting -> %s (%d): %s\n", rc == WSUPER_OK ? "done" : "refused", rc,
         rc == WSUPER_OK ? "" : (a.error ? a.error : ""));
  printf("client: this is run %d (the count survives restarts in the append-only log)\n", runs);
  wsuper_arena_free(&a);
  return 0;
}
