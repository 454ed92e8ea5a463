/* A Cap'n Proto load generator that costs next to nothing per call, so that a
 * throughput figure measures the server and not the client (benchmarks/
 * loadgen.py sets it up; see docs/performance.md).
 *
 *   loadgen FD CALLS WARM IN_FLIGHT QID_BASE EXPECT CALL_HEX CALL_AT FINISH_HEX FINISH_AT
 *
 * FD is a connected stream on which Python has already done the handshake
 * (Bootstrap, and Gateway.get when there is a gateway).  CALL_HEX is one whole
 * framed Call message to the capability that handshake imported, with its
 * question id (a little-endian UInt32) at byte CALL_AT; FINISH_HEX a framed
 * Finish, its question id at FINISH_AT.  The client keeps IN_FLIGHT calls
 * open, with question ids QID_BASE .. QID_BASE + IN_FLIGHT - 1: when the
 * Return for one comes, it sends that question's Finish (unless the Return
 * set noFinishNeeded) and a new Call with the same id, all the messages of
 * one read in one write.  Every Return must be plain (capnp_schemas/
 * fastwire.h, the supervisor's own decoder of plain messages) and its
 * result's first 32 bits must equal EXPECT; anything else ends the run with
 * an error.  After WARM returns it times CALLS more and prints "calls_per_s".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../capnp_schemas/fastwire.h"
#include "timing.h"

#define READ_CAP (1 << 20)

static uint8_t *unhex(const char *s, size_t *n) {
  size_t len = strlen(s);
  if (len % 2) return NULL;
  uint8_t *out = malloc(len / 2 ? len / 2 : 1);
  for (size_t i = 0; i < len / 2; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1) return NULL;
    out[i] = (uint8_t)v;
  }
  *n = len / 2;
  return out;
}

static void die(const char *what) {
  fprintf(stderr, "loadgen: %s\n", what);
  exit(1);
}

static void put_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t k = write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) die("the server closed the connection (write)");
    p += k;
    n -= (size_t)k;
  }
}

int main(int argc, char **argv) {
  if (argc != 11) die("usage: FD CALLS WARM IN_FLIGHT QID_BASE EXPECT CALL_HEX CALL_AT FINISH_HEX FINISH_AT");
  int fd = atoi(argv[1]);
  long calls = atol(argv[2]), warm = atol(argv[3]);
  long in_flight = atol(argv[4]);
  uint32_t qid_base = (uint32_t)strtoul(argv[5], NULL, 10);
  int32_t expect = (int32_t)atol(argv[6]);
  size_t call_n, finish_n;
  uint8_t *call = unhex(argv[7], &call_n), *finish = unhex(argv[9], &finish_n);
  size_t call_at = (size_t)atol(argv[8]), finish_at = (size_t)atol(argv[10]);
  if (!call || !finish || call_at + 4 > call_n || finish_at + 4 > finish_n || in_flight < 1)
    die("bad arguments");

  long total = warm + calls, sent = 0, returned = 0;
  uint8_t *in = malloc(READ_CAP), *out = malloc((size_t)in_flight * (call_n + finish_n));
  size_t have = 0, used = 0;
  double t0 = 0;

  /* the first IN_FLIGHT calls in one write */
  for (long i = 0; i < in_flight && sent < total; i++, sent++) {
    memcpy(out + used, call, call_n);
    uint32_t q = qid_base + (uint32_t)i;
    memcpy(out + used + call_at, &q, 4);
    used += call_n;
  }
  put_all(fd, out, used);
  if (warm == 0) t0 = now_us();

  while (returned < total) {
    ssize_t k = read(fd, in + have, READ_CAP - have);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) die("the server closed the connection (read)");
    have += (size_t)k;
    size_t at = 0;
    used = 0;
    for (;;) { /* every whole frame in the buffer */
      if (have - at < 8) break;
      uint32_t segs, words;
      memcpy(&segs, in + at, 4);
      memcpy(&words, in + at + 4, 4);
      if (segs != 0) die("a message of more than one segment (not plain)");
      size_t len = 8 + 8 * (size_t)words;
      if (len > READ_CAP) die("a message larger than the read buffer");
      if (have - at < len) break;
      fw_plain m;
      if (fw_decode(in + at + 8, words, &m) != FW_RETURN) die("a message that is not a plain Return");
      if (m.id < qid_base || m.id >= qid_base + (uint32_t)in_flight) die("a Return for no open question");
      if (m.content != 1 || !((m.content_word >> 32) & 0xFFFF) ||
          (int32_t)(fw_word(in + at + 8, m.content_start) & 0xFFFFFFFF) != expect)
        die("a wrong result");
      at += len;
      if (++returned == warm) t0 = now_us();
      if (!m.no_finish) {
        memcpy(out + used, finish, finish_n);
        memcpy(out + used + finish_at, &m.id, 4);
        used += finish_n;
      }
      if (sent < total) {
        memcpy(out + used, call, call_n);
        memcpy(out + used + call_at, &m.id, 4);
        used += call_n;
        sent++;
      }
    }
    memmove(in, in + at, have - at);
    have -= at;
    if (used) put_all(fd, out, used);
  }
  printf("%.1f\n", calls / ((now_us() - t0) / 1e6));
  return 0;
}
