/* A WASI program that uses ordinary POSIX and stdio calls on what its policy
 * grants (see test_wasi.py).  It prints "ok NAME" or "FAIL NAME: why" for each
 * check and exits with the number of failures. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int failures;

#define CHECK(name, cond)                                                      \
  do {                                                                         \
    if (cond)                                                                  \
      printf("ok %s\n", name);                                                 \
    else {                                                                     \
      printf("FAIL %s: errno %d (%s)\n", name, errno, strerror(errno));        \
      failures++;                                                              \
    }                                                                          \
  } while (0)

int main(int argc, char **argv) {
  CHECK("argc", argc == 3);
  CHECK("argv", argc == 3 && strcmp(argv[1], "one") == 0 && strcmp(argv[2], "two words") == 0);
  CHECK("getenv", getenv("GREETING") && strcmp(getenv("GREETING"), "hello") == 0);
  CHECK("no-home", getenv("HOME") == NULL);

  FILE *f = fopen("/data/notes.txt", "w");
  CHECK("fopen-w", f != NULL);
  if (f) {
    fprintf(f, "line one\nline two\n");
    CHECK("fclose-w", fclose(f) == 0);
  }
  char buf[64] = {0};
  f = fopen("/data/notes.txt", "r");
  CHECK("fopen-r", f != NULL);
  if (f) {
    CHECK("fgets", fgets(buf, sizeof buf, f) && strcmp(buf, "line one\n") == 0);
    CHECK("fseek-end", fseek(f, 0, SEEK_END) == 0 && ftell(f) == 18);
    CHECK("fseek-set", fseek(f, 5, SEEK_SET) == 0 && fgets(buf, sizeof buf, f) &&
                           strcmp(buf, "one\n") == 0);
    fclose(f);
  }
  f = fopen("/data/notes.txt", "a");
  CHECK("fopen-a", f != NULL && fputs("line three\n", f) >= 0 && fclose(f) == 0);

  struct stat st;
  CHECK("stat-size", stat("/data/notes.txt", &st) == 0 && st.st_size == 29 &&
                         S_ISREG(st.st_mode));
  struct stat st2;
  CHECK("stat-dir", stat("/data", &st2) == 0 && S_ISDIR(st2.st_mode));
  CHECK("ino-differ", st.st_ino != st2.st_ino);

  int fd = open("/data/notes.txt", O_RDONLY);
  CHECK("open", fd >= 3);
  CHECK("pread", pread(fd, buf, 4, 5) == 4 && memcmp(buf, "one\n", 4) == 0);
  CHECK("lseek-cur", lseek(fd, 0, SEEK_CUR) == 0);
  CHECK("write-rdonly", write(fd, "x", 1) == -1 && errno == EBADF);
  close(fd);

  errno = 0;
  CHECK("excl", open("/data/notes.txt", O_WRONLY | O_CREAT | O_EXCL, 0644) == -1 &&
                    errno == EEXIST);
  CHECK("enoent", fopen("/data/missing.txt", "r") == NULL && errno == ENOENT);

  CHECK("mkdir", mkdir("/data/sub", 0755) == 0);
  f = fopen("/data/sub/inner.txt", "w");
  CHECK("fopen-sub", f != NULL && fclose(f) == 0);
  DIR *d = opendir("/data");
  int seen = 0;
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
      if (strcmp(e->d_name, "notes.txt") == 0 || strcmp(e->d_name, "sub") == 0)
        seen++;
    closedir(d);
  }
  CHECK("readdir", seen == 2);
  CHECK("rmdir-notempty", rmdir("/data/sub") == -1 && errno == ENOTEMPTY);
  CHECK("unlink", unlink("/data/sub/inner.txt") == 0);
  CHECK("rmdir", rmdir("/data/sub") == 0);
  CHECK("unlink-dir", unlink("/data") == -1);

  f = fopen("/data/w+.txt", "w+");
  CHECK("w+", f != NULL && fputs("abc", f) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
                  fgets(buf, sizeof buf, f) && strcmp(buf, "abc") == 0);
  if (f) fclose(f);
  CHECK("truncate", truncate("/data/w+.txt", 1) == 0 && stat("/data/w+.txt", &st) == 0 &&
                        st.st_size == 1);

  /* escapes */
  CHECK("dotdot", fopen("/data/../secret.txt", "r") == NULL);
  CHECK("absolute", fopen("/etc/passwd", "r") == NULL);
  CHECK("symlink", fopen("/data/link", "r") == NULL);
  CHECK("ro-write", fopen("/ro/readme.txt", "w") == NULL);
  CHECK("ro-read", (f = fopen("/ro/readme.txt", "r")) != NULL && fgets(buf, sizeof buf, f) &&
                       strcmp(buf, "read me\n") == 0);

  struct timespec ts;
  CHECK("clock-realtime", clock_gettime(CLOCK_REALTIME, &ts) == 0 && ts.tv_sec > 1600000000);
  struct timespec a, b;
  CHECK("clock-monotonic", clock_gettime(CLOCK_MONOTONIC, &a) == 0 &&
                               clock_gettime(CLOCK_MONOTONIC, &b) == 0 &&
                               (b.tv_sec > a.tv_sec || (b.tv_sec == a.tv_sec && b.tv_nsec >= a.tv_nsec)));
  unsigned char r1[32] = {0}, r2[32] = {0};
  CHECK("getentropy", getentropy(r1, 32) == 0 && getentropy(r2, 32) == 0 &&
                          memcmp(r1, r2, 32) != 0);

  fprintf(stderr, "to stderr");   /* no newline: flushed at exit */
  return failures;
}
