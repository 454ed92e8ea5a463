/* A deliberately hostile plugin: everything here must fail or be contained.
 * examples/kv/hostile.toml runs it beside the store; test_examples.py checks
 * what each attempt got. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "kv.h"

static void attempt(const char *what, int ok) {
  printf("hostile: %s -> %s\n", what, ok ? "SUCCEEDED" : strerror(errno));
}

int main(void) {
  wsuper_arena a = {0, 0};
  /* 1. files outside its grant */
  errno = 0;
  attempt("read /etc/passwd", fopen("/etc/passwd", "r") != NULL);
  attempt("read ../data/kv.log", fopen("/public/../data/kv.log", "r") != NULL);
  attempt("read /data/kv.log", fopen("/data/kv.log", "r") != NULL);
  attempt("write /public/readme.txt", fopen("/public/readme.txt", "w") != NULL);

  /* 2. a method its allow-list does not name, and a handle it was never given */
  wsuper_cap kv = wsuper_lookup_cap("kv");
  int rc = store_put(&a, kv, wsuper_str("runs"), wsuper_str("666"));
  printf("hostile: put through kv -> %d (%s)\n", rc, a.error ? a.error : "");
  store_get_results got;
  rc = store_get(&a, 999, wsuper_str("runs"), &got);
  printf("hostile: get through forged handle 999 -> %d (%s)\n", rc, a.error ? a.error : "");
  rc = store_get(&a, kv, wsuper_str("runs"), &got);
  printf("hostile: get through kv -> %d (%s)\n", rc, got.found ? got.value.ptr : "-");

  /* 3. floods: calls past calls_per_second, lines past log_rate */
  int refused = 0;
  for (int i = 0; i < 200; i++)
    if (store_get(&a, kv, wsuper_str("runs"), &got) == WSUPER_E_OVERLOADED) refused++;
  printf("hostile: 200 quick gets, %d refused\n", refused);
  for (int i = 0; i < 1000; i++) printf("hostile: flood line %d\n", i);
  struct timespec pause = {2, 0};
  nanosleep(&pause, NULL); /* let the log bucket refill */
  printf("hostile: flood over\n");
  wsuper_arena_free(&a);

  /* 4. spin forever: it burns its own process's CPU, nobody else's */
  printf("hostile: looping now\n");
  fflush(stdout);
  for (volatile unsigned long n = 0;; n++) {
  }
}
