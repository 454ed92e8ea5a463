/* POSIX file calls through wasi-libc: symbolic and hard links, times, flags,
 * trailing slashes, '..', readdir inodes.  Prints "ok NAME" or "FAIL NAME: why"
 * for each check and exits with the number of failures.  test_wasi_conformance.py
 * runs it under wasmtime's own WASI and under wsuper, each on a fresh directory
 * preopened as /sandbox. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

#define FAILS(name, call, err) CHECK(name, (errno = 0, (call) == -1 && errno == (err)))

static int put(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return -1;
  ssize_t n = write(fd, text, strlen(text));
  close(fd);
  return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int get(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  if (n < 0) return -1;
  buf[n] = 0;
  return 0;
}

int main(void) {
  char buf[256];
  struct stat st, st2;

  CHECK("mkdir", mkdir("/sandbox/d", 0755) == 0 && mkdir("/sandbox/d/sub", 0755) == 0);
  CHECK("put", put("/sandbox/d/file", "content") == 0);

  /* symbolic links */
  CHECK("symlink", symlink("file", "/sandbox/d/link") == 0);
  CHECK("symlink-up", symlink("../file", "/sandbox/d/sub/up") == 0);
  CHECK("read-through-link", get("/sandbox/d/link", buf, sizeof buf) == 0 &&
                                 strcmp(buf, "content") == 0);
  CHECK("read-through-up", get("/sandbox/d/sub/up", buf, sizeof buf) == 0 &&
                               strcmp(buf, "content") == 0);
  ssize_t n = readlink("/sandbox/d/sub/up", buf, sizeof buf);
  CHECK("readlink", n == 7 && memcmp(buf, "../file", 7) == 0);
  CHECK("lstat-link", lstat("/sandbox/d/link", &st) == 0 && S_ISLNK(st.st_mode));
  CHECK("stat-link", stat("/sandbox/d/link", &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 7);
  FAILS("nofollow", open("/sandbox/d/link", O_RDONLY | O_NOFOLLOW), ELOOP);
  CHECK("symlink-dangling", symlink("nowhere", "/sandbox/d/dangling") == 0);
  FAILS("open-dangling", open("/sandbox/d/dangling", O_RDONLY), ENOENT);
  CHECK("lstat-dangling", lstat("/sandbox/d/dangling", &st) == 0 && S_ISLNK(st.st_mode));
  CHECK("unlink-dangling", unlink("/sandbox/d/dangling") == 0);
  CHECK("symlink-dir", symlink("sub", "/sandbox/d/subl") == 0);
  CHECK("through-dir-link", stat("/sandbox/d/subl/up", &st) == 0 && S_ISREG(st.st_mode));
  FAILS("symlink-absolute", symlink("/etc/passwd", "/sandbox/d/abs"), EPERM);
  FAILS("symlink-exists", symlink("x", "/sandbox/d/link"), EEXIST);

  /* hard links */
  CHECK("link", link("/sandbox/d/file", "/sandbox/d/sub/hard") == 0);
  CHECK("link-inode", stat("/sandbox/d/file", &st) == 0 &&
                          stat("/sandbox/d/sub/hard", &st2) == 0 && st.st_ino == st2.st_ino &&
                          st.st_nlink == 2);
  FAILS("link-exists", link("/sandbox/d/file", "/sandbox/d/sub/hard"), EEXIST);
  FAILS("link-dir", link("/sandbox/d/sub", "/sandbox/d/sub2"), EPERM);

  /* trailing slashes and '..' */
  FAILS("unlink-file-slash", unlink("/sandbox/d/file/"), ENOTDIR);
  CHECK("still-there", stat("/sandbox/d/file", &st) == 0);
  FAILS("open-file-slash", open("/sandbox/d/file/", O_RDONLY), ENOTDIR);
  FAILS("rmdir-file", rmdir("/sandbox/d/file"), ENOTDIR);
  FAILS("unlink-dir", unlink("/sandbox/d/sub"), EISDIR);
  CHECK("dotdot-inside", get("/sandbox/d/sub/../file", buf, sizeof buf) == 0 &&
                             strcmp(buf, "content") == 0);
  CHECK("rename-dir-slash", rename("/sandbox/d/sub/", "/sandbox/d/moved") == 0 &&
                                rename("/sandbox/d/moved", "/sandbox/d/sub") == 0);

  /* times */
  struct timespec times[2] = {{1000, 5}, {2000, 7}};
  CHECK("utimensat", utimensat(AT_FDCWD, "/sandbox/d/file", times, 0) == 0 &&
                         stat("/sandbox/d/file", &st) == 0 && st.st_atim.tv_sec == 1000 &&
                         st.st_mtim.tv_sec == 2000 && st.st_mtim.tv_nsec == 7);
  struct timespec omit[2] = {{0, UTIME_OMIT}, {3000, 0}};
  CHECK("utimensat-omit", utimensat(AT_FDCWD, "/sandbox/d/file", omit, 0) == 0 &&
                              stat("/sandbox/d/file", &st) == 0 && st.st_atim.tv_sec == 1000 &&
                              st.st_mtim.tv_sec == 3000);
  struct timespec lt[2] = {{0, UTIME_OMIT}, {4000, 0}};
  CHECK("utimensat-nofollow", utimensat(AT_FDCWD, "/sandbox/d/link", lt, AT_SYMLINK_NOFOLLOW) == 0 &&
                                  lstat("/sandbox/d/link", &st) == 0 && st.st_mtim.tv_sec == 4000 &&
                                  stat("/sandbox/d/file", &st2) == 0 && st2.st_mtim.tv_sec == 3000);
  int fd = open("/sandbox/d/file", O_RDWR);
  struct timespec ft[2] = {{5000, 0}, {3000, 9}};   /* (this wasi-libc: no UTIME_ here) */
  CHECK("futimens", fd >= 0 && futimens(fd, ft) == 0 && fstat(fd, &st) == 0 &&
                        st.st_atim.tv_sec == 5000 && st.st_mtim.tv_nsec == 9);

  /* O_APPEND off and on again */
  close(fd);
  fd = open("/sandbox/d/file", O_RDWR | O_APPEND);
  CHECK("append", fd >= 0 && write(fd, "+", 1) == 1 && lseek(fd, 0, SEEK_SET) == 0 &&
                      write(fd, "!", 1) == 1 && get("/sandbox/d/file", buf, sizeof buf) == 0 &&
                      strcmp(buf, "content+!") == 0);
  CHECK("getfl", (fcntl(fd, F_GETFL) & O_APPEND) != 0);
  CHECK("setfl", fcntl(fd, F_SETFL, 0) == 0 && (fcntl(fd, F_GETFL) & O_APPEND) == 0);
  CHECK("overwrite", lseek(fd, 0, SEEK_SET) == 0 && write(fd, "C", 1) == 1 &&
                         get("/sandbox/d/file", buf, sizeof buf) == 0 &&
                         strcmp(buf, "Content+!") == 0);
  close(fd);
  fd = open("/sandbox/d/synced", O_WRONLY | O_CREAT | O_SYNC, 0644);
  int synced = fd >= 0;
  if (fd >= 0) {
    CHECK("o_sync", (fcntl(fd, F_GETFL) & O_SYNC) == O_SYNC && write(fd, "s", 1) == 1 &&
                        fsync(fd) == 0 && fdatasync(fd) == 0);
    close(fd);
  } else {
    CHECK("o_sync", errno == ENOTSUP);
  }

  /* pwrite on an O_APPEND descriptor: appends (as Linux does), and the
   * descriptor's offset does not move */
  fd = open("/sandbox/d/appended", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
  CHECK("pwrite-append-offset", fd >= 0 && write(fd, "ab", 2) == 2 &&
                                    lseek(fd, 0, SEEK_SET) == 0 && write(fd, "cd", 2) == 2 &&
                                    lseek(fd, 0, SEEK_CUR) == 4 && pwrite(fd, "xyz", 3, 0) == 3 &&
                                    lseek(fd, 0, SEEK_CUR) == 4);
  CHECK("pwrite-append-end", fd >= 0 && lseek(fd, 0, SEEK_END) == 7 &&
                                 get("/sandbox/d/appended", buf, sizeof buf) == 0 &&
                                 strcmp(buf, "abcdxyz") == 0);
  if (fd >= 0) close(fd);
  CHECK("pwrite-append-cleanup", unlink("/sandbox/d/appended") == 0);

  /* readdir: inodes that agree with stat */
  DIR *dir = opendir("/sandbox/d");
  int agree = 0, seen = 0;
  struct dirent *e;
  while (dir && (e = readdir(dir)) != NULL) {
    char path[300];
    snprintf(path, sizeof path, "/sandbox/d/%s", e->d_name);
    seen++;
    if (strcmp(e->d_name, "..") == 0) continue;
    if (lstat(path, &st) == 0 && st.st_ino == e->d_ino) agree++;
  }
  if (dir) closedir(dir);
  /* . .. file link subl sub (synced) */
  CHECK("readdir-inodes", seen == 6 + synced && agree == 5 + synced);

  /* clean up: the directory can be removed */
  CHECK("cleanup", unlink("/sandbox/d/sub/hard") == 0 && unlink("/sandbox/d/sub/up") == 0 &&
                       rmdir("/sandbox/d/sub") == 0 && unlink("/sandbox/d/link") == 0 &&
                       unlink("/sandbox/d/subl") == 0 && unlink("/sandbox/d/file") == 0 &&
                       (unlink("/sandbox/d/synced") == 0 || errno == ENOENT) &&
                       rmdir("/sandbox/d") == 0);
  return failures;
}
