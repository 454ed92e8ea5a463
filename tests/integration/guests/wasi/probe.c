/* Performs the operations named by its arguments, in order, and prints one
 * line for each: "OP PATH -> ok" or "OP PATH -> ERRNO-NAME".  test_wasi.py
 * uses it to check what each attenuation lets a WASI program do. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <wasi/api.h>

static char big[1 << 20];

/* The wsuper ABI, for the "release" op: a WASI program may use both. */
__attribute__((import_module("wsuper"), import_name("lookup"))) int wsuper_lookup(const char *, int);
__attribute__((import_module("wsuper"), import_name("release"))) int wsuper_release(int);

static const char *name(int e) {
  switch (e) {
  case EACCES: return "EACCES";
  case EBADF: return "EBADF";
  case EDQUOT: return "EDQUOT";
  case EEXIST: return "EEXIST";
  case EXDEV: return "EXDEV";
  case EINVAL: return "EINVAL";
  case EISDIR: return "EISDIR";
  case ELOOP: return "ELOOP";
  case ENOENT: return "ENOENT";
  case ENOTCAPABLE: return "ENOTCAPABLE";
  case ENOTDIR: return "ENOTDIR";
  case EPERM: return "EPERM";
  case EROFS: return "EROFS";
  case EAGAIN: return "EAGAIN";
  case EIO: return "EIO";
  case ENOTSUP: return "ENOTSUP";
  case ENOTEMPTY: return "ENOTEMPTY";
  case EBUSY: return "EBUSY";
  default: return strerror(e);
  }
}

static void report(const char *op, const char *path, int ok) {
  printf("%s %s -> %s\n", op, path, ok ? "ok" : name(errno));
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    char op[32] = {0};
    const char *colon = strchr(argv[i], ':');
    const char *path = colon ? colon + 1 : "";
    size_t n = colon ? (size_t)(colon - argv[i]) : strlen(argv[i]);
    memcpy(op, argv[i], n < sizeof op - 1 ? n : sizeof op - 1);
    errno = 0;
    if (!strcmp(op, "read")) {
      FILE *f = fopen(path, "r");
      char buf[128] = {0};
      int ok = f && fgets(buf, sizeof buf, f);
      report(op, path, ok);
      if (ok) printf("  %s", buf);
      if (f) fclose(f);
    } else if (!strcmp(op, "write") || !strcmp(op, "append")) {
      FILE *f = fopen(path, op[0] == 'w' ? "w" : "a");
      int ok = f && fputs("entry\n", f) >= 0;
      if (f && fclose(f) != 0) ok = 0;
      report(op, path, ok);
    } else if (!strcmp(op, "overwrite")) {   /* write at offset 0 of an existing file */
      int fd = open(path, O_WRONLY);
      report(op, path, fd >= 0 && pwrite(fd, "X", 1, 0) == 1);
      if (fd >= 0) close(fd);
    } else if (!strcmp(op, "truncate")) {
      report(op, path, truncate(path, 0) == 0);
    } else if (!strcmp(op, "mkdir")) {
      report(op, path, mkdir(path, 0755) == 0);
    } else if (!strcmp(op, "unlink")) {
      report(op, path, unlink(path) == 0);
    } else if (!strcmp(op, "stat")) {
      struct stat st;
      report(op, path, stat(path, &st) == 0);
    } else if (!strcmp(op, "time")) {
      struct timespec ts;
      report(op, path, clock_gettime(CLOCK_REALTIME, &ts) == 0);
    } else if (!strcmp(op, "epoch")) {    /* time(NULL), which checks no error */
      printf("epoch -> %lld\n", (long long)time(NULL));
    } else if (!strcmp(op, "cputime")) {  /* the process's CPU time (clock() reads it) */
      struct timespec ts;
      report(op, path, clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0);
    } else if (!strcmp(op, "sleep")) {    /* until 50 ms from now, by the monotonic clock */
      struct timespec t0, until, t1;
      int ok = clock_gettime(CLOCK_MONOTONIC, &t0) == 0;
      until = t0;
      until.tv_nsec += 50000000;
      if (until.tv_nsec >= 1000000000) { until.tv_sec++; until.tv_nsec -= 1000000000; }
      ok = ok && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == 0 &&
           clock_gettime(CLOCK_MONOTONIC, &t1) == 0;
      long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
      report(op, path, ok && ms >= 50);
    } else if (!strcmp(op, "random")) {
      unsigned char b[16];
      report(op, path, getentropy(b, sizeof b) == 0);
    } else if (!strcmp(op, "randombig")) {   /* random_get of N bytes in one call */
      size_t n = (size_t)atol(path);
      if (n > sizeof big) n = sizeof big;
      memset(big, 0, n);
      errno = __wasi_random_get((uint8_t *)big, n);
      size_t zeros = 0;
      for (size_t k = 0; k < n; k++) zeros += big[k] == 0;
      report(op, path, errno == 0 && zeros < n / 64 + 8);
    } else if (!strcmp(op, "bigwrite")) {   /* 64 KiB in one write */
      FILE *f = fopen(path, "w");
      static char block[65536];
      memset(block, 'b', sizeof block);
      int ok = f && fwrite(block, 1, sizeof block, f) == sizeof block;
      if (f && fclose(f) != 0) ok = 0;
      report(op, path, ok);
    } else if (!strcmp(op, "rename")) {    /* rename:FROM=TO */
      char from[256] = {0};
      const char *eq = strchr(path, '=');
      if (eq) memcpy(from, path, (size_t)(eq - path) < 255 ? (size_t)(eq - path) : 255);
      report(op, path, eq && rename(from, eq + 1) == 0);
    } else if (!strcmp(op, "symlink") || !strcmp(op, "link")) {   /* symlink:TARGET=PATH */
      char from[256] = {0};
      const char *eq = strchr(path, '=');
      if (eq) memcpy(from, path, (size_t)(eq - path) < 255 ? (size_t)(eq - path) : 255);
      report(op, path, eq && (op[0] == 's' ? symlink(from, eq + 1) : link(from, eq + 1)) == 0);
    } else if (!strcmp(op, "readlink")) {
      char target[256] = {0};
      ssize_t n = readlink(path, target, sizeof target - 1);
      report(op, path, n >= 0);
      if (n >= 0) printf("  %s\n", target);
    } else if (!strcmp(op, "utimes")) {
      struct timespec t[2] = {{1000, 0}, {2000, 0}};
      report(op, path, utimensat(AT_FDCWD, path, t, 0) == 0);
    } else if (!strcmp(op, "rmdir")) {
      report(op, path, rmdir(path) == 0);
    } else if (!strcmp(op, "noappend")) {   /* open to append, then turn O_APPEND off */
      int fd = open(path, O_WRONLY | O_APPEND);
      int ok = fd >= 0 && fcntl(fd, F_SETFL, 0) == 0;
      report(op, path, ok);
      if (fd >= 0) close(fd);
    } else if (!strcmp(op, "pwritepos")) {   /* append-mode pwrite leaves the offset alone */
      int fd = open(path, O_WRONLY | O_APPEND);
      off_t end = fd >= 0 ? lseek(fd, 0, SEEK_END) : -1;
      int ok = end >= 0 && lseek(fd, 0, SEEK_SET) == 0 && pwrite(fd, "P", 1, 0) == 1 &&
               lseek(fd, 0, SEEK_CUR) == 0 && lseek(fd, 0, SEEK_END) == end + 1;
      report(op, path, ok);
      if (fd >= 0) close(fd);
    } else if (!strcmp(op, "longline")) {   /* printf one line of N bytes, then a short one */
      size_t n = (size_t)atol(path);
      if (n > sizeof big - 1) n = sizeof big - 1;
      memset(big, 'L', n);
      big[n] = 0;
      int ok = printf("%s\n", big) == (int)n + 1;
      report(op, path, ok);
    } else if (!strcmp(op, "write1m")) {   /* write() 1 MiB in one call: PATH, or - for stdout */
      for (size_t k = 0; k < sizeof big; k++) big[k] = "0123456789abcdef"[k % 16];
      big[sizeof big - 1] = '\n';
      fflush(stdout);
      int fd = strcmp(path, "-") ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : 1;
      ssize_t n = fd >= 0 ? write(fd, big, sizeof big) : -1;
      if (fd > 2) close(fd);
      report(op, path, n == (ssize_t)sizeof big);
    } else if (!strcmp(op, "release")) {   /* drop the wsuper handle of a grant */
      int h = wsuper_lookup(path, (int)strlen(path));
      printf("release %s -> %d\n", path, h > 0 ? wsuper_release(h) : h);
    } else if (!strcmp(op, "exit")) {
      fprintf(stderr, "leaving with %s", path);   /* unfinished line: flushed at exit */
      exit(atoi(path));
    } else {
      printf("unknown op %s\n", op);
      return 2;
    }
  }
  return 0;
}
