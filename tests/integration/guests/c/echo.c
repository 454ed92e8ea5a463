/* Serves Echo (echo.capnp) with the generated bindings: test_bindgen.py checks
 * every field type against pycapnp on the other side of the supervisor. */
#include <inttypes.h>
#include <stdio.h>

#define WSUPER_SERVE_ECHO
#include "echo.h"

WSUPER_SERVE_ONLY(echo)

int echo_serve_echo(wsuper_arena *a, int32_t object, const echo_echo_params *in,
                    echo_echo_results *out) {
  (void)a;
  (void)object;
  out->value = in->value;   /* decoded into C, encoded again from C */
  return 0;
}

static char *describe(wsuper_arena *a, const everything *v) {
  size_t room = 4096;
  char *s = wsuper_alloc(a, room);
  if (!v) return "null";
  int n = snprintf(s, room,
      "b=%d i8=%d i16=%d i32=%" PRId32 " i64=%" PRId64 " u8=%u u16=%u u32=%" PRIu32
      " u64=%" PRIu64 " f32=%.3f f64=%.6f text=%s data=%u:%02x color=%u withDefault=%" PRId32
      " flag=%d peer=%s",
      v->b, v->i8, v->i16, v->i32, v->i64, v->u8, v->u16, v->u32, v->u64, v->f32, v->f64,
      v->text.ptr, v->data.len, v->data.len ? v->data.ptr[v->data.len - 1] : 0, v->color,
      v->with_default, v->flag, v->peer ? "yes" : "no");
  n += snprintf(s + n, room - n, " inner=%s", v->inner ? "" : "null");
  if (v->inner) n += snprintf(s + n, room - n, "%" PRId32 "/%s", v->inner->n, v->inner->label.ptr);
  n += snprintf(s + n, room - n, " ints=");
  for (uint32_t i = 0; i < v->ints.len; i++) n += snprintf(s + n, room - n, "%" PRId64 ",", v->ints.items[i]);
  n += snprintf(s + n, room - n, " texts=");
  for (uint32_t i = 0; i < v->texts.len; i++) n += snprintf(s + n, room - n, "%s,", v->texts.items[i].ptr);
  n += snprintf(s + n, room - n, " inners=");
  for (uint32_t i = 0; i < v->inners.len; i++)
    n += snprintf(s + n, room - n, "%" PRId32 "/%s,", v->inners.items[i].n, v->inners.items[i].label.ptr);
  n += snprintf(s + n, room - n, " flags=");
  for (uint32_t i = 0; i < v->flags.len; i++) n += snprintf(s + n, room - n, "%d", v->flags.items[i]);
  n += snprintf(s + n, room - n, " colors=");
  for (uint32_t i = 0; i < v->colors.len; i++) n += snprintf(s + n, room - n, "%u", v->colors.items[i]);
  return s;
}

int echo_serve_describe(wsuper_arena *a, int32_t object, const echo_describe_params *in,
                        echo_describe_results *out) {
  (void)object;
  out->text = wsuper_str(describe(a, in->value));
  return 0;
}

int echo_serve_make(wsuper_arena *a, int32_t object, const echo_make_params *in,
                    echo_make_results *out) {
  (void)object;
  int32_t k = in->seed;
  if (k < 0) return wsuper_error(a, "seed must not be negative");
  everything *v = WSUPER_ARRAY(a, everything, 1);
  v->b = k % 2;
  v->i8 = (int8_t)-k;
  v->i16 = (int16_t)(-1000 * k);
  v->i32 = -100000 * k;
  v->i64 = -10000000000LL * k;
  v->u8 = (uint8_t)(200 + k);
  v->u16 = (uint16_t)(60000 + k);
  v->u32 = 4000000000u + (uint32_t)k;
  v->u64 = 18000000000000000000ull + (uint64_t)k;
  v->f32 = 0.5f * k;
  v->f64 = 0.25 * k;
  char *t = wsuper_alloc(a, 32);
  snprintf(t, 32, "made %" PRId32, k);
  v->text = wsuper_str(t);
  uint8_t *d = wsuper_alloc(a, 3);
  d[0] = 1; d[1] = 2; d[2] = (uint8_t)k;
  v->data.ptr = d;
  v->data.len = 3;
  v->color = COLOR_BLUE;
  v->inner = WSUPER_ARRAY(a, inner, 1);
  v->inner->n = k;
  v->inner->label = wsuper_str("in");
  v->ints.items = WSUPER_ARRAY(a, int64_t, 3);
  v->ints.len = 3;
  for (int i = 0; i < 3; i++) v->ints.items[i] = (int64_t)k << (20 * i);
  v->texts.items = WSUPER_ARRAY(a, wsuper_text, 2);
  v->texts.len = 2;
  v->texts.items[0] = wsuper_str("x");
  v->texts.items[1] = wsuper_str("");
  v->inners.items = WSUPER_ARRAY(a, inner, 2);
  v->inners.len = 2;
  v->inners.items[1].n = 7;
  v->inners.items[1].label = wsuper_str("second");
  v->flags.items = WSUPER_ARRAY(a, bool, 10);
  v->flags.len = 10;
  for (int i = 0; i < 10; i++) v->flags.items[i] = (i % 3) == 0;
  v->colors.items = WSUPER_ARRAY(a, color, 2);
  v->colors.len = 2;
  v->colors.items[0] = COLOR_GREEN;
  v->colors.items[1] = COLOR_RED;
  v->with_default = 0;       /* not the schema's default: must read back as 0 */
  v->flag = false;
  v->peer = wsuper_object_for(a, 0); /* ourselves, released once the answer is sent */
  out->value = v;
  return 0;
}

int echo_serve_call_peer(wsuper_arena *a, int32_t object, const echo_call_peer_params *in,
                         echo_call_peer_results *out) {
  (void)object;
  echo_make_results made;
  int rc = echo_make(a, in->peer, in->seed, &made);   /* a call to the capability handed in */
  wsuper_release(in->peer);
  if (rc != 0) {
    char *why = wsuper_alloc(a, 256);
    snprintf(why, 256, "peer.make failed (%d): %s", rc, a->error ? a->error : "?");
    out->text = wsuper_str(why);
    return 0;
  }
  out->text = wsuper_str(describe(a, made.value));
  return 0;
}
