/* A C program (main) that also serves calls: each call it serves must not run
 * libc's exit-time code (atexit handlers, stdio's exit flush).  It waits in
 * poll_oneoff (serving calls meanwhile) until five calls came, writing a line
 * each time; nested.c's caller (-DCALLER) calls it until a call fails.
 * -DEXIT_AT=N: the Nth call exits (7, or -DEXIT_CODE=C). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((import_module("wasi_snapshot_preview1"), import_name("poll_oneoff")))
int32_t w_poll(int32_t, int32_t, int32_t, int32_t);

static int constructed, calls;
__attribute__((constructor)) static void init(void) { constructed++; }
static void at_exit(void) { printf("atexit: constructed %d, calls %d\n", constructed, calls); }

__attribute__((export_name("wsuper_dispatch")))
int32_t wsuper_dispatch(int32_t object, int64_t iface, int32_t method, int32_t len, int32_t ncaps) {
  calls++;
#ifdef EXIT_AT
#ifndef EXIT_CODE
#define EXIT_CODE 7
#endif
  if (calls == EXIT_AT) exit(EXIT_CODE);        /* ends the program, which is waiting meanwhile */
#endif
  return calls >= 5;
}

int main(void) {
  atexit(at_exit);
  printf("main: constructed %d\n", constructed);
  for (int i = 0; i < 500 && calls < 5; i++) {
    uint8_t sub[48] = {0}, ev[32];
    uint32_t n, clock = 1;
    uint64_t ns = 10000000;
    memcpy(sub + 16, &clock, 4);
    memcpy(sub + 24, &ns, 8);
    w_poll((int32_t)(uintptr_t)sub, (int32_t)(uintptr_t)ev, 1, (int32_t)(uintptr_t)&n);
    printf("waited %d\n", i);
  }
  printf("main: %d calls\n", calls);
  return 0;
}
