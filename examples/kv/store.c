/* The key-value store compartment.
 *
 * It holds one grant that matters: `data`, a directory it may only append to
 * (append_only = true in the policy).  Every put is one line "key<TAB>value"
 * appended to /data/kv.log with plain stdio, every remove one line
 * "<TAB>key" (no key is empty); at start the log is replayed.
 * It serves Store (kv.capnp) through the bindings `wsuper bindgen` writes,
 * and calls back the Listener capabilities clients hand it at run time. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WSUPER_SERVE_STORE
#include "kv.h"

WSUPER_SERVE_ONLY(store)

#define LOG_PATH "/data/kv.log"
#define MAX_LISTENERS 16

typedef struct { char *key, *value; } entry;
static entry *table;
static size_t count, room;
static wsuper_cap listeners[MAX_LISTENERS];
static int nlisteners;

static entry *find(const char *key) {
  for (size_t i = 0; i < count; i++)
    if (strcmp(table[i].key, key) == 0) return &table[i];
  return NULL;
}

static int set(const char *key, const char *value) {
  entry *e = find(key);
  char *v = strdup(value);
  if (!v) return -1;
  if (e) { free(e->value); e->value = v; return 0; }
  if (count == room) {
    size_t n = room ? room * 2 : 16;
    entry *t = realloc(table, n * sizeof *t);
    if (!t) { free(v); return -1; }
    table = t;
    room = n;
  }
  table[count].key = strdup(key);
  table[count].value = v;
  if (!table[count].key) { free(v); return -1; }
  count++;
  return 0;
}

static int drop(const char *key) {
  entry *e = find(key);
  if (!e) return 0;
  free(e->key);
  free(e->value);
  *e = table[--count];
  return 1;
}

/* Runs once, from _initialize, before any call arrives. */
__attribute__((constructor)) static void replay(void) {
  FILE *f = fopen(LOG_PATH, "r");
  if (!f) {
    printf("store: no %s yet (%s): starting empty\n", LOG_PATH, strerror(errno));
    return;
  }
  char line[8192];
  int records = 0;
  while (fgets(line, sizeof line, f)) {
    char *tab = strchr(line, '\t'), *nl = strchr(line, '\n');
    if (!tab || !nl) continue; /* a torn last line: ignore it */
    *tab = *nl = 0;
    if (tab == line) {
      drop(tab + 1);
      records++;
    } else if (set(line, tab + 1) == 0) {
      records++;
    }
  }
  fclose(f);
  printf("store: replayed %d records from %s\n", records, LOG_PATH);
}

static int valid(wsuper_text t) {
  return t.len > 0 && t.len < 4000 && !memchr(t.ptr, '\t', t.len) && !memchr(t.ptr, '\n', t.len);
}

static int append(wsuper_arena *a, const char *key, const char *value) {
  FILE *f = fopen(LOG_PATH, "a");
  if (!f || fprintf(f, "%s\t%s\n", key, value) < 0 || fclose(f) != 0) {
    char why[160];
    snprintf(why, sizeof why, "cannot append to %s: %s", LOG_PATH, strerror(errno));
    return wsuper_error(a, why);
  }
  return 0;
}

int store_serve_put(wsuper_arena *a, int32_t object, const store_put_params *in,
                    store_put_results *out) {
  (void)object;
  (void)out;
  if (!valid(in->key) || (in->value.len && !valid(in->value)))
    return wsuper_error(a, "keys and values are 1..3999 bytes without tabs or newlines");
  int rc = append(a, in->key.ptr, in->value.ptr);
  if (rc != 0) return rc;
  if (set(in->key.ptr, in->value.ptr) != 0) return wsuper_error(a, "out of memory");
  for (int i = 0; i < nlisteners; i++) {
    if (listener_changed(a, listeners[i], in->key, in->value) != WSUPER_OK) {
      printf("store: dropping a listener (%s)\n", a->error ? a->error : "?");
      wsuper_release(listeners[i]);
      listeners[i--] = listeners[--nlisteners];
    }
  }
  return 0;
}

int store_serve_get(wsuper_arena *a, int32_t object, const store_get_params *in,
                    store_get_results *out) {
  (void)a;
  (void)object;
  entry *e = in->key.ptr ? find(in->key.ptr) : NULL;
  out->found = e != NULL;
  out->value = wsuper_str(e ? e->value : "");
  return 0;
}

int store_serve_keys(wsuper_arena *a, int32_t object, const store_keys_params *in,
                     store_keys_results *out) {
  (void)object;
  (void)in;
  out->keys.items = WSUPER_ARRAY(a, wsuper_text, count);
  out->keys.len = (uint32_t)count;
  for (size_t i = 0; i < count; i++) out->keys.items[i] = wsuper_str(table[i].key);
  return 0;
}

int store_serve_subscribe(wsuper_arena *a, int32_t object, const store_subscribe_params *in,
                          store_subscribe_results *out) {
  (void)object;
  (void)out;
  if (!in->listener) return wsuper_error(a, "no listener");
  if (nlisteners == MAX_LISTENERS) return wsuper_error(a, "too many listeners");
  /* a handle in params lasts as long as the call, unless kept */
  if (wsuper_keep(in->listener) != WSUPER_OK) return wsuper_error(a, "bad listener");
  listeners[nlisteners++] = in->listener;
  return 0;
}

int store_serve_remove(wsuper_arena *a, int32_t object, const store_remove_params *in,
                       store_remove_results *out) {
  (void)object;
  if (!valid(in->key)) return wsuper_error(a, "keys are 1..3999 bytes without tabs or newlines");
  out->found = find(in->key.ptr) != NULL;
  if (!out->found) return 0;
  int rc = append(a, "", in->key.ptr);
  if (rc == 0) drop(in->key.ptr);
  return rc;
}
