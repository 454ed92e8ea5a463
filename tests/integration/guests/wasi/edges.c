/* WASI edge cases found by an outside review, made with raw
 * wasi_snapshot_preview1 calls.  Prints "NAME ERRNO" (and a detail) per call;
 * test_wasi.py runs it under wasmtime's own WASI and under wsuper on the same
 * tree (preopened as /sandbox, fd 3).  argv[1] picks the part:
 *   dirfds    rename and link between two directory descriptors
 *   dangling  O_CREAT through a symbolic link whose target does not exist
 *   partial   a read or write that faults after some of its bytes moved
 *   errnos    errors that used to differ from wasmtime's
 *   listing   fd_readdir of a directory with a name that is not UTF-8
 *   dirsync   fd_sync and fd_datasync of directories
 *   openflags path_open with each oflags, rights and lookupflags on files,
 *             directories, links, trailing slashes, '.', '' and missing names */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define W(n) __attribute__((import_module("wasi_snapshot_preview1"), import_name(#n)))
typedef int32_t I;
typedef int64_t L;
W(path_open) I w_path_open(I, I, I, I, I, L, L, I, I);
W(path_rename) I w_path_rename(I, I, I, I, I, I);
W(path_link) I w_path_link(I, I, I, I, I, I, I);
W(path_create_directory) I w_path_create_directory(I, I, I);
W(fd_close) I w_fd_close(I);
W(fd_read) I w_fd_read(I, I, I, I);
W(fd_write) I w_fd_write(I, I, I, I);
W(fd_seek) I w_fd_seek(I, L, I, I);
W(fd_tell) I w_fd_tell(I, I);
W(fd_filestat_get) I w_fd_filestat_get(I, I);
W(fd_prestat_dir_name) I w_fd_prestat_dir_name(I, I, I);
W(poll_oneoff) I w_poll_oneoff(I, I, I, I);
W(fd_readdir) I w_fd_readdir(I, I, I, L, I);
W(fd_sync) I w_fd_sync(I);
W(fd_datasync) I w_fd_datasync(I);
W(fd_fdstat_get) I w_fd_fdstat_get(I, I);
W(path_symlink) I w_path_symlink(I, I, I, I, I);

#define P(x) ((I)(uintptr_t)(x))
#define S(s) P(s), (I)strlen(s)
#define RD 2LL
#define WR 64LL
#define ALL 0x1FFFFFFFLL
enum { CREAT = 1, DIRECTORY = 2, EXCL = 4, TRUNC = 8 };
typedef struct { uint32_t p, n; } iov;

static I dir(const char *path) {
  uint32_t fd = 0;
  I e = w_path_open(3, 1, S(path), DIRECTORY, 0, ALL, 0, P(&fd));
  return e ? -e : (I)fd;
}

static void create(const char *name, const char *path, I lookup, I oflags) {
  uint32_t fd = 0;
  I e = w_path_open(3, lookup, S(path), oflags, RD | WR, ALL, 0, P(&fd));
  printf("%s %d\n", name, e);
  if (!e) w_fd_close(fd);
}

static void dirfds(void) {
  I sub = dir("sub"), full = dir("full");
  /* a path relative to a descriptor stays beneath it, one descriptor or two */
  printf("rename-climb-one %d\n", w_path_rename(sub, S("../r1"), sub, S("x")));
  printf("rename-climb-from %d\n", w_path_rename(sub, S("../r1"), full, S("x")));
  printf("rename-climb-to %d\n", w_path_rename(full, S("a"), sub, S("../y")));
  printf("link-climb-from %d\n", w_path_link(sub, 0, S("../r2"), full, S("z")));
  printf("link-climb-to %d\n", w_path_link(full, 0, S("a"), sub, S("../z")));
  printf("rename-between %d\n", w_path_rename(sub, S("inner.txt"), full, S("moved.txt")));
  printf("rename-back %d\n", w_path_rename(full, S("moved.txt"), sub, S("inner.txt")));
  printf("link-between %d\n", w_path_link(full, 0, S("a"), sub, S("a-hard")));
  /* the directory of `sub` moves; a new "sub" with a decoy takes its name */
  printf("move-sub %d\n", w_path_rename(3, S("sub"), 3, S("moved")));
  printf("new-sub %d\n", w_path_create_directory(3, S("sub")));
  create("decoy", "sub/inner.txt", 0, CREAT | EXCL);
  printf("rename-after-move %d\n", w_path_rename(sub, S("inner.txt"), full, S("got.txt")));
  printf("link-after-move %d\n", w_path_link(full, 0, S("b"), sub, S("b-hard")));
}

static void dangling(void) {
  create("creat-through-dangling", "dangling", 1, CREAT);
  create("creat-excl-dangling", "dangling2", 1, CREAT | EXCL);
  create("creat-nofollow-dangling", "dangling2", 0, CREAT);
  create("creat-through-chain", "chain1", 1, CREAT);
  create("creat-through-sub-link", "sub/up", 1, CREAT);
  create("creat-dangling-climbing", "climbing", 1, CREAT);
  create("creat-dangling-absolute", "absolute", 1, CREAT);
  create("creat-dangling-missing-dir", "nodir", 1, CREAT);
  create("creat-loop", "loop", 1, CREAT);
  create("creat-dangling-dir-target", "slash", 1, CREAT);
  create("creat-dangling-trunc", "dangling3", 1, CREAT | TRUNC);
}

static uint8_t big[400000];

static void partial(void) {
  uint32_t fd = 0, n = 7;
  uint64_t t = 0, st[8] = {0};
  printf("open %d\n", w_path_open(3, 1, S("part.txt"), CREAT | TRUNC, RD | WR, ALL, 0, P(&fd)));
  memset(big, 'x', sizeof big);
  /* 300000 good bytes, then a buffer in the null page (16: no access under wsuper) */
  iov w[2] = {{P(big), 300000}, {16, 16}};
  I e = w_fd_write(fd, P(w), 2, P(&n));
  w_fd_tell(fd, P(&t));
  w_fd_filestat_get(fd, P(st));
  printf("write %d n=%u tell=%llu size=%llu\n", e, n, (unsigned long long)t,
         (unsigned long long)st[4]);
  iov more = {P(big), 100000};
  w_fd_write(fd, P(&more), 1, P(&n));
  w_fd_seek(fd, 0, 0, P(&t));
  n = 7;
  iov r[2] = {{P(big), 300000}, {16, 16}};
  e = w_fd_read(fd, P(r), 2, P(&n));
  w_fd_tell(fd, P(&t));
  printf("read %d n=%u tell=%llu\n", e, n, (unsigned long long)t);
}

static void errnos(void) {
  char name[16] = {0};
  printf("prestat-dir-name-short %d\n", w_fd_prestat_dir_name(3, P(name), 3));
  printf("prestat-dir-name %d %s\n", w_fd_prestat_dir_name(3, P(name), sizeof name), name);
  uint8_t sub[48] = {0}, ev[32];
  uint32_t clock = 9, n = 7;
  uint64_t timeout = 1000;
  memcpy(sub + 16, &clock, 4);
  memcpy(sub + 24, &timeout, 8);
  printf("poll-no-such-clock %d\n", w_poll_oneoff(P(sub), P(ev), 1, P(&n)));
}

static void listing(void) {
  static uint8_t buf[4096];
  uint32_t n = 0;
  I d = dir("names");
  printf("readdir %d\n", w_fd_readdir(d, P(buf), sizeof buf, 0, P(&n)));
}

static void dirsync(void) {
  I d = dir("sub");
  printf("sync-preopen %d\n", w_fd_sync(3));
  printf("sync-dir %d\n", w_fd_sync(d));
  printf("datasync-dir %d\n", w_fd_datasync(d));
}

static void openflags(void) {
  static const char *paths[] = {"of", "od", "olf", "old", "odang", "of/", "od/", "olf/",
                                "old/", "odang/", ".", "./", "", "od/..", "od/../",
                                "onew", "onew/", "of/x", "of/x/", "onodir/x/", 0};
  static const I oflags[] = {0, CREAT, DIRECTORY, CREAT | EXCL, TRUNC, CREAT | TRUNC,
                             CREAT | DIRECTORY, DIRECTORY | TRUNC, DIRECTORY | EXCL,
                             CREAT | EXCL | TRUNC};
  static const L rights[] = {0, RD, WR, RD | WR};
  create("made-of", "of", 0, CREAT);
  printf("made-od %d\n", w_path_create_directory(3, S("od")));
  printf("made-olf %d\n", w_path_symlink(S("of"), 3, S("olf")));
  printf("made-old %d\n", w_path_symlink(S("od"), 3, S("old")));
  printf("made-odang %d\n", w_path_symlink(S("onothing"), 3, S("odang")));
  for (int p = 0; paths[p]; p++)
    for (unsigned o = 0; o < sizeof oflags / sizeof *oflags; o++)
      for (int r = 0; r < 4; r++)
        for (I follow = 0; follow < 2; follow++) {
          uint32_t fd = 0;
          uint8_t st[24] = {0};
          I e = w_path_open(3, follow, S(paths[p]), oflags[o], rights[r], ALL, 0, P(&fd));
          if (!e) {
            w_fd_fdstat_get(fd, P(st));
            w_fd_close(fd);
          }
          printf("open[%s]/%d/%lld/%d %d %d\n", paths[p], oflags[o], rights[r], follow, e,
                 e ? -1 : st[0]);
        }
}

int main(int argc, char **argv) {
  const char *part = argc > 1 ? argv[1] : "";
  if (!strcmp(part, "dirfds")) dirfds();
  if (!strcmp(part, "dangling")) dangling();
  if (!strcmp(part, "partial")) partial();
  if (!strcmp(part, "errnos")) errnos();
  if (!strcmp(part, "listing")) listing();
  if (!strcmp(part, "dirsync")) dirsync();
  if (!strcmp(part, "openflags")) openflags();
  return 0;
}
