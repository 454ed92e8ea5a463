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
 *             directories, links, trailing slashes, '.', '' and missing names
 *   dropped   each right, dropped with fd_fdstat_set_rights, refuses the calls
 *             that need it (wsuper only: wasmtime refuses to drop rights)
 *   cookies   readdir cookies: what they are, and telldir/seekdir (a 32-bit long
 *             in wasi-libc) at every entry
 *   badout    calls whose result pointer is in the null page (wsuper: EFAULT)
 *             and what they did anyway
 *   badfill   calls whose count is in the null page (wsuper: EFAULT) and the
 *             buffers they would have filled first
 *   emfile    open until it fails; close one; open again
 *   fullopen  open until it fails; then O_TRUNC, O_CREAT and O_EXCL do nothing
 *   shortappend  appends that the file's largest size cuts short (waits for "go")
 *   lograte   a write of three lines to a log that lets one through
 *   listonly  readdir of a grant that allows Directory.list alone
 *   createonly  O_CREAT on a grant that allows Directory.create alone
 *   renameonly  rename and link between two directory descriptors, no stat
 *   subdironly  open(dir, O_RDONLY) on a grant that allows subdir, not open
 *   readlinks path_readlink of links planted by the host (absolute, climbing, inside)
 *   changing  what an empty write does to an O_APPEND descriptor's offset, and a
 *             listing resumed at a cookie after entries were added or removed */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
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
W(fd_fdstat_set_rights) I w_fd_fdstat_set_rights(I, L, L);
W(fd_fdstat_set_flags) I w_fd_fdstat_set_flags(I, I);
W(fd_pread) I w_fd_pread(I, I, I, L, I);
W(fd_pwrite) I w_fd_pwrite(I, I, I, L, I);
W(fd_advise) I w_fd_advise(I, L, L, I);
W(args_sizes_get) I w_args_sizes_get(I, I);
W(fd_allocate) I w_fd_allocate(I, L, L);
W(fd_filestat_set_size) I w_fd_filestat_set_size(I, L);
W(fd_filestat_set_times) I w_fd_filestat_set_times(I, L, L, I);
W(path_filestat_get) I w_path_filestat_get(I, I, I, I, I);
W(path_filestat_set_times) I w_path_filestat_set_times(I, I, I, I, L, L, I);
W(path_readlink) I w_path_readlink(I, I, I, I, I, I);
W(path_remove_directory) I w_path_remove_directory(I, I, I);
W(path_unlink_file) I w_path_unlink_file(I, I, I);

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

/* One call that needs right `bit` (of a file at `fd`, or a directory at `fd`
 * holding "file", "dir", "link"); -1: no call needs it. */
static I needs(I fd, int bit, int is_dir) {
  static uint8_t buf[256];
  static const int file_bits[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 21, 22, 23, 27, 100, 101, -1};
  static const int dir_bits[] = {9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 23, 24, 25,
                                 26, -1};
  if (fd < 0) {                 /* is there such a call? */
    for (const int *b = is_dir ? dir_bits : file_bits; *b >= 0; b++)
      if (*b == bit) return 0;
    return -1;
  }
  uint32_t n = 0, out = 0;
  uint64_t off = 0;
  iov v = {P(buf), 4};
  if (!is_dir) switch (bit) {
    case 0: return w_fd_datasync(fd);
    case 1: return w_fd_read(fd, P(&v), 1, P(&n));
    case 2: return w_fd_seek(fd, 1, 0, P(&off));
    case 3: return w_fd_fdstat_set_flags(fd, 1);
    case 4: return w_fd_sync(fd);
    case 5: return w_fd_tell(fd, P(&off));
    case 6: return w_fd_write(fd, P(&v), 1, P(&n));
    case 7: return w_fd_advise(fd, 0, 0, 0);
    case 8: return w_fd_allocate(fd, 0, 1);
    case 21: return w_fd_filestat_get(fd, P(buf));
    case 22: return w_fd_filestat_set_size(fd, 1);
    case 23: return w_fd_filestat_set_times(fd, 0, 0, 10);
    case 27: {
      uint8_t sub[48] = {0}, ev[32] = {0};
      sub[8] = 1;                                     /* FD_READ */
      memcpy(sub + 16, &fd, 4);
      I e = w_poll_oneoff(P(sub), P(ev), 1, P(&n));
      return e ? e : (I)(ev[8] | ev[9] << 8);         /* the event's error */
    }
    case 100: return w_fd_pread(fd, P(&v), 1, 0, P(&n));
    case 101: return w_fd_pwrite(fd, P(&v), 1, 0, P(&n));
    default: return -1;
  }
  switch (bit) {
    case 9: return w_path_create_directory(fd, S("new-dir"));
    case 10: return w_path_open(fd, 0, S("new-file"), CREAT, RD | WR, ALL, 0, P(&out));
    case 11: return w_path_link(fd, 0, S("file"), fd, S("hard"));
    case 12: return w_path_link(fd, 0, S("file"), fd, S("hard"));
    case 13: return w_path_open(fd, 0, S("file"), 0, RD, ALL, 0, P(&out));
    case 14: return w_fd_readdir(fd, P(buf), sizeof buf, 0, P(&n));
    case 15: return w_path_readlink(fd, S("link"), P(buf), sizeof buf, P(&n));
    case 16: return w_path_rename(fd, S("file"), fd, S("renamed"));
    case 17: return w_path_rename(fd, S("file"), fd, S("renamed"));
    case 18: return w_path_filestat_get(fd, 0, S("file"), P(buf));
    case 20: return w_path_filestat_set_times(fd, 0, S("file"), 0, 0, 10);
    case 21: return w_fd_filestat_get(fd, P(buf));
    case 23: return w_fd_filestat_set_times(fd, 0, 0, 10);
    case 24: return w_path_symlink(S("file"), fd, S("new-link"));
    case 25: return w_path_remove_directory(fd, S("dir"));
    case 26: return w_path_unlink_file(fd, S("file"));
    default: return -1;
  }
}

static void dropped(void) {
  printf("made-dir %d\n", w_path_create_directory(3, S("rights")));
  I top = dir("rights");
  for (int bit = 0; bit < 102; bit++) {
    if (bit == 30) bit = 100;
    for (int is_dir = 0; is_dir < 2; is_dir++) {
      /* a fresh file and directory each time: what the call changes is made again */
      uint32_t fd = 0;
      uint8_t st[24] = {0};
      w_path_unlink_file(top, S("renamed"));
      w_path_unlink_file(top, S("hard"));
      w_path_unlink_file(top, S("new-link"));
      w_path_unlink_file(top, S("new-file"));
      w_path_remove_directory(top, S("new-dir"));
      w_path_create_directory(top, S("dir"));
      w_path_symlink(S("file"), top, S("link"));
      if (w_path_open(top, 0, S("file"), CREAT, RD | WR, ALL, 0, P(&fd))) continue;
      if (is_dir) {
        w_fd_close(fd);
        fd = (uint32_t)dir("rights");
      }
      int right = bit >= 100 ? 2 : bit;       /* pread, pwrite: FD_SEEK (and READ, WRITE) */
      if (needs(-1, bit, is_dir) == -1) {
        w_fd_close(fd);
        continue;
      }
      w_fd_fdstat_get(fd, P(st));
      uint64_t base, inheriting;
      memcpy(&base, st + 8, 8);
      memcpy(&inheriting, st + 16, 8);
      I kept = needs(fd, bit, is_dir);
      /* again, on what the first call left (a link made, a file renamed: undone) */
      w_path_unlink_file(top, S("hard"));
      w_path_rename(top, S("renamed"), top, S("file"));
      w_path_unlink_file(top, S("new-link"));
      w_path_unlink_file(top, S("new-file"));
      w_path_remove_directory(top, S("new-dir"));
      w_path_create_directory(top, S("dir"));
      I set = w_fd_fdstat_set_rights(fd, base & ~(1ULL << right), inheriting);
      I gone = needs(fd, bit, is_dir);
      printf("%s-%d %d %d %d %s\n", is_dir ? "dir" : "file", bit, kept, set, gone,
             base & (1ULL << right) ? "had" : "never");
      w_fd_close(fd);
    }
  }
}

static void cookies(void) {
  static uint8_t buf[8192];
  static char names[64][32];
  static long where[64];
  uint32_t n = 0;
  printf("mkdir %d\n", w_path_create_directory(3, S("many")));
  for (int i = 0; i < 40; i++) {
    char name[32];
    snprintf(name, sizeof name, "many/entry-%02d", i);
    create("made", name, 0, CREAT);
  }
  /* the cookies themselves: after '.' 1, '..' 2, then one more after each entry */
  I d = dir("many");
  printf("readdir %d\n", w_fd_readdir(d, P(buf), sizeof buf, 0, P(&n)));
  uint32_t pos = 0;
  int i = 0;
  while (pos + 24 <= n) {
    uint64_t next;
    uint32_t len;
    memcpy(&next, buf + pos, 8);
    memcpy(&len, buf + pos + 16, 4);
    printf("cookie %d %llu\n", i++, (unsigned long long)next);
    pos += 24 + len;
  }
  /* wasi-libc: telldir before each entry, then seekdir back to each */
  DIR *dp = opendir("/sandbox/many");
  struct dirent *e;
  int count = 0;
  for (;;) {
    where[count] = telldir(dp);
    if (!(e = readdir(dp)) || count == 63) break;
    snprintf(names[count++], 32, "%s", e->d_name);
  }
  printf("listed %d\n", count);
  int wrong = 0;
  for (int k = count - 1; k >= 0; k--) {
    seekdir(dp, where[k]);
    e = readdir(dp);
    if (!e || strcmp(e->d_name, names[k])) wrong++;
  }
  seekdir(dp, where[8]);
  int rest = 0;
  while (readdir(dp)) rest++;
  printf("seekdir-wrong %d rest-after-8 %d\n", wrong, rest);
  closedir(dp);
}

static void badout(void) {
  uint32_t fd = 0, n = 0;
  uint64_t t = 0, st[8] = {0};
  const I bad = 16;                 /* the null page: no access under wsuper */
  char data[8] = "abcdefg";
  iov v = {P(data), 7};
  printf("open %d\n", w_path_open(3, 0, S("bo.txt"), CREAT, RD | WR, ALL, 0, P(&fd)));
  printf("write %d\n", w_fd_write(fd, P(&v), 1, bad));
  w_fd_filestat_get(fd, P(st));
  w_fd_tell(fd, P(&t));
  printf("after-write size=%llu tell=%llu\n", (unsigned long long)st[4], (unsigned long long)t);
  printf("pwrite %d\n", w_fd_pwrite(fd, P(&v), 1, 0, bad));
  w_fd_filestat_get(fd, P(st));
  printf("after-pwrite size=%llu\n", (unsigned long long)st[4]);
  w_fd_write(fd, P(&v), 1, P(&n));
  w_fd_seek(fd, 0, 0, P(&t));
  printf("read %d\n", w_fd_read(fd, P(&v), 1, bad));
  w_fd_tell(fd, P(&t));
  printf("after-read tell=%llu\n", (unsigned long long)t);
  printf("seek %d\n", w_fd_seek(fd, 5, 0, bad));
  w_fd_tell(fd, P(&t));
  printf("after-seek tell=%llu\n", (unsigned long long)t);
  printf("open-bad %d\n", w_path_open(3, 0, S("bo2.txt"), CREAT, RD | WR, ALL, 0, bad));
  printf("stat-bo2 %d\n", w_path_filestat_get(3, 0, S("bo2.txt"), P(st)));
  uint32_t next = 0;
  printf("open-next %d\n", w_path_open(3, 0, S("bo.txt"), 0, RD, ALL, 0, P(&next)));
  printf("next-fd-is-fd+1 %d\n", next == fd + 1);
}

static void emfile(void) {
  uint32_t fd = 0, last = 0;
  int opened = 0;
  I e = 0;
  create("made", "many.txt", 0, CREAT);
  while (opened < 5000) {
    e = w_path_open(3, 0, S("many.txt"), 0, RD, ALL, 0, P(&fd));
    if (e) break;
    opened++;
    last = fd;
  }
  printf("full %d %s\n", e, opened > 500 ? "after-many" : "too-soon");
  printf("close %d\n", w_fd_close(last));
  printf("again %d\n", w_path_open(3, 0, S("many.txt"), 0, RD, ALL, 0, P(&fd)));
  printf("dir-full %d\n", w_path_open(3, 0, S("."), DIRECTORY, 0, ALL, 0, P(&fd)));
}

static void fullopen(void) {
  /* with no descriptor (or handle) left, an open that would create or truncate
   * fails EMFILE and does nothing, as open(2), which takes its descriptor first */
  uint32_t fd = 0, n = 0, last = 0;
  int opened = 0;
  I e = 0;
  iov v = {P("precious\n"), 9};
  w_path_open(3, 0, S("keep.txt"), CREAT | TRUNC, WR, ALL, 0, P(&fd));
  w_fd_write(fd, P(&v), 1, P(&n));
  w_fd_close(fd);
  while (opened < 5000) {
    e = w_path_open(3, 0, S("keep.txt"), 0, RD, ALL, 0, P(&fd));
    if (e) break;
    opened++;
    last = fd;
  }
  printf("full %d\n", e);
  uint64_t st[8] = {0};
  printf("trunc %d\n", w_path_open(3, 0, S("keep.txt"), TRUNC, RD | WR, ALL, 0, P(&fd)));
  I s = w_path_filestat_get(3, 0, S("keep.txt"), P(st));
  printf("kept %d %llu\n", s, (unsigned long long)st[4]);
  printf("creat %d\n", w_path_open(3, 0, S("new.txt"), CREAT, RD | WR, ALL, 0, P(&fd)));
  printf("creat-excl %d\n", w_path_open(3, 0, S("new2.txt"), CREAT | EXCL, WR, ALL, 0, P(&fd)));
  printf("creat-trunc %d\n", w_path_open(3, 0, S("new3.txt"), CREAT | TRUNC, WR, ALL, 0, P(&fd)));
  printf("made %d %d %d\n", w_path_filestat_get(3, 0, S("new.txt"), P(st)),
         w_path_filestat_get(3, 0, S("new2.txt"), P(st)),
         w_path_filestat_get(3, 0, S("new3.txt"), P(st)));
  w_fd_close(last);           /* room for one: the O_EXCL that failed works now */
  printf("excl-again %d\n", w_path_open(3, 0, S("new2.txt"), CREAT | EXCL, WR, ALL, 0, P(&fd)));
}

static uint8_t many[200000];

static void shortappend(void) {
  /* the test caps the supervisor's file size (RLIMIT_FSIZE) at 100000 bytes, then
   * makes "go": an append (fd_write, fd_pwrite) past it is short, as write(2) is */
  uint32_t fd = 0, n = 0, t0 = 0;
  uint64_t st[8] = {0}, t = 0;
  uint8_t sub[48] = {0}, ev[32];
  uint64_t ten_ms = 10000000;
  memcpy(sub + 24, &ten_ms, 8);
  sub[16] = 1;                                      /* monotonic, relative */
  while (w_path_filestat_get(3, 0, S("go"), P(st))) w_poll_oneoff(P(sub), P(ev), 1, P(&t0));
  memset(many, 'x', sizeof many);
  iov v = {P(many), sizeof many};
  printf("open %d\n", w_path_open(3, 0, S("app.txt"), CREAT, RD | WR, ALL, 1, P(&fd)));
  I e = w_fd_write(fd, P(&v), 1, P(&n));
  w_fd_tell(fd, P(&t));
  w_fd_filestat_get(fd, P(st));
  printf("write %d n=%u tell=%llu size=%llu\n", e, n, (unsigned long long)t,
         (unsigned long long)st[4]);
  printf("again %d\n", w_fd_write(fd, P(&v), 1, P(&n)));
  w_fd_filestat_set_size(fd, 99000);
  n = 0;
  e = w_fd_pwrite(fd, P(&v), 1, 0, P(&n));
  printf("pwrite %d n=%u\n", e, n);
}

static void lograte(void) {
  /* stdout is a log whose log_rate lets one line through: the write is short,
   * the lines before the one refused; what it said goes to a file */
  uint32_t n = 99, fd = 0, m = 0;
  iov v = {P("l1\nl2\nl3\n"), 9};
  I e = w_fd_write(1, P(&v), 1, P(&n));
  char out[64];
  int len = snprintf(out, sizeof out, "write %d n=%u\n", e, n);
  w_path_open(3, 0, S("said.txt"), CREAT | TRUNC, WR, ALL, 0, P(&fd));
  iov r = {P(out), (uint32_t)len};
  w_fd_write(fd, P(&r), 1, P(&m));
}

static void listonly(void) {
  /* the grant allows Directory.list alone: readdir from the start works */
  static uint8_t lb[4096];
  uint32_t used = 0;
  I e = w_fd_readdir(3, P(lb), sizeof lb, 0, P(&used));
  int entries = 0, dot = 0;
  for (uint32_t pos = 0; pos + 24 <= used;) {
    uint64_t ino; uint32_t len;
    memcpy(&ino, lb + pos + 8, 8);
    memcpy(&len, lb + pos + 16, 4);
    if (len == 1 && lb[pos + 24] == '.') dot = ino != 0;
    entries++;
    pos += 24 + len;
  }
  printf("readdir %d entries=%d dot-inode=%d\n", e, entries, dot);
}

static void createonly(void) {
  /* the grant allows Directory.create alone: O_CREAT makes a new file (with or
   * without O_EXCL, as fopen "w" asks), and an existing one stays refused */
  uint32_t fd = 0;
  create("creat-new", "new.txt", 0, CREAT);
  create("creat-trunc-new", "new2.txt", 0, CREAT | TRUNC);
  create("creat-excl-new", "new3.txt", 0, CREAT | EXCL);
  create("creat-existing", "old.txt", 0, CREAT);
  create("creat-trunc-existing", "old.txt", 0, CREAT | TRUNC);
  printf("open-existing %d\n", w_path_open(3, 0, S("old.txt"), 0, RD, ALL, 0, P(&fd)));
  FILE *f = fopen("/sandbox/new4.txt", "w");
  printf("fopen-w %d\n", f != NULL && fputs("made", f) >= 0 && fclose(f) == 0);
}

static void renameonly(void) {
  /* the grant allows subdir, rename and link (no stat): between two directory
   * descriptors of it, as with one */
  uint32_t sub = 0, full = 0;
  printf("open-sub %d\n", w_path_open(3, 0, S("sub"), DIRECTORY, 0, ALL, 0, P(&sub)));
  printf("open-full %d\n", w_path_open(3, 0, S("full"), DIRECTORY, 0, ALL, 0, P(&full)));
  printf("rename-between %d\n", w_path_rename(sub, S("inner.txt"), full, S("moved.txt")));
  printf("link-between %d\n", w_path_link(full, 0, S("a"), sub, S("a-hard")));
  printf("rename-one %d\n", w_path_rename(3, S("r1"), 3, S("r1-moved")));
}

static void subdironly(void) {
  /* the grant allows subdir and list, not open: open(dir, O_RDONLY) and
   * fdopendir work, a file stays refused */
  uint32_t fd = 0;
  printf("open-file %d\n", w_path_open(3, 0, S("r1"), 0, RD, ALL, 0, P(&fd)));
  DIR *dd = fdopendir(open("/sandbox/full", O_RDONLY));
  int n = 0;
  while (dd && readdir(dd)) n++;
  printf("fdopendir %d entries %d\n", dd != NULL, n);
}

static void readlinks(void) {
  static const char *names[] = {"absolute", "climbing", "dangling", "sub/up", "chain1", 0};
  for (int i = 0; names[i]; i++) {
    char buf[512] = {0};
    uint32_t n = 0;
    I e = w_path_readlink(3, S(names[i]), P(buf), sizeof buf - 1, P(&n));
    printf("readlink-%s %d %.*s\n", names[i], e, (int)(e ? 0 : n), buf);
  }
}

static void badfill(void) {
  const I bad = 16;                 /* the null page: no access under wsuper */
  char buf[64];
  memset(buf, 'z', sizeof buf);
  printf("readdir %d\n", w_fd_readdir(3, P(buf), sizeof buf, 0, bad));
  printf("readdir-buffer-untouched %d\n", buf[0] == 'z');
  printf("readlink %d\n", w_path_readlink(3, S("link"), P(buf), sizeof buf, bad));
  printf("readlink-buffer-untouched %d\n", buf[0] == 'z');
  uint64_t sub[6] = {0x77, 0, 0, 1, 0, 0};  /* userdata 0x77, clock 0 (realtime), 1 ns */
  printf("poll %d\n", w_poll_oneoff(P(sub), P(buf), 1, bad));
  printf("poll-events-untouched %d\n", buf[0] == 'z');
  uint32_t count = 7;
  printf("args-sizes %d\n", w_args_sizes_get(P(&count), bad));
  printf("args-count-untouched %d\n", count == 7);
}

/* Where an empty write leaves an O_APPEND descriptor (write(2): where it was, "no
 * other results"), and what a listing resumed at a cookie sees after the
 * directory changed: every entry there all along, once (POSIX leaves it open
 * whether one added or removed meanwhile is seen). */
static void changing(void) {
  static uint8_t buf[65536];
  uint32_t fd = 0, n = 0;
  uint64_t at = 0;
  printf("open %d\n", w_path_open(3, 0, S("app.txt"), CREAT | TRUNC, RD | WR, ALL, 1,
                                  P(&fd)));
  iov nine = {P("123456789"), 9}, none = {P(""), 0};
  w_fd_write(fd, P(&nine), 1, P(&n));
  w_fd_tell(fd, P(&at));
  printf("after-append %u %llu\n", n, (unsigned long long)at);
  w_fd_seek(fd, 0, 0, P(&at));
  printf("write-no-buffers %d", w_fd_write(fd, P(&none), 0, P(&n)));
  w_fd_tell(fd, P(&at));
  printf(" n=%u tell=%llu\n", n, (unsigned long long)at);
  w_fd_seek(fd, 0, 0, P(&at));
  printf("write-empty-buffer %d", w_fd_write(fd, P(&none), 1, P(&n)));
  w_fd_tell(fd, P(&at));
  printf(" n=%u tell=%llu\n", n, (unsigned long long)at);
  w_fd_write(fd, P(&nine), 1, P(&n));
  w_fd_tell(fd, P(&at));
  printf("append-again %u %llu\n", n, (unsigned long long)at);
  w_fd_close(fd);

  /* 60 names; list 20 of them, add 30 and remove 10 of those not yet listed,
   * then go on from the cookie after the 20th */
  enum { OLD = 60, FIRST = 20, ADD = 30 };
  static char old[OLD][16];
  static int seen[OLD];
  w_path_create_directory(3, S("grow"));
  for (int i = 0; i < OLD; i++) {
    char path[32];
    snprintf(old[i], 16, "old-%02d", i);
    snprintf(path, sizeof path, "grow/%s", old[i]);
    if (w_path_open(3, 0, S(path), CREAT, RD | WR, ALL, 0, P(&fd)) == 0) w_fd_close(fd);
  }
  I d = dir("grow");
  uint64_t cookie = 0;
  int listed = 0, removed = 0, twice = 0, gone = 0, unknown = 0, added_seen = 0;
  /* one entry a call: the cookie after each is the one to resume from */
  while (listed < FIRST) {
    if (w_fd_readdir(d, P(buf), 24 + 16, cookie, P(&n)) || n < 24) break;
    uint64_t next;
    uint32_t len;
    memcpy(&next, buf, 8);
    memcpy(&len, buf + 16, 4);
    cookie = next;
    char name[17] = {0};
    memcpy(name, buf + 24, len < 16 ? len : 16);
    if (!strcmp(name, ".") || !strcmp(name, "..")) continue;
    int k = atoi(name + 4);
    if (strncmp(name, "old-", 4) || k < 0 || k >= OLD) unknown++;
    else seen[k]++;
    listed++;
  }
  for (int i = 0; i < ADD; i++) {
    char path[32];
    snprintf(path, sizeof path, "grow/new-%02d", i);
    if (w_path_open(3, 0, S(path), CREAT, RD | WR, ALL, 0, P(&fd)) == 0) w_fd_close(fd);
  }
  for (int i = 0; i < OLD && removed < 10; i++) {
    if (seen[i]) continue;
    char path[32];
    snprintf(path, sizeof path, "grow/%s", old[i]);
    if (w_path_unlink_file(3, S(path)) == 0) { seen[i] = -1; removed++; }
  }
  for (;;) {
    if (w_fd_readdir(d, P(buf), sizeof buf, cookie, P(&n)) || n == 0) break;
    uint32_t pos = 0;
    uint64_t next = cookie;
    while (pos + 24 <= n) {
      uint32_t len;
      memcpy(&next, buf + pos, 8);
      memcpy(&len, buf + pos + 16, 4);
      if (pos + 24 + len > n) break;
      char name[17] = {0};
      memcpy(name, buf + pos + 24, len < 16 ? len : 16);
      pos += 24 + len;
      int k = atoi(name + 4);
      if (!strncmp(name, "new-", 4)) added_seen++;
      else if (strncmp(name, "old-", 4) || k < 0 || k >= OLD) unknown++;
      else if (seen[k] == -1) gone++;           /* removed, and listed anyway */
      else if (seen[k]++) twice++;
    }
    if (next == cookie || n < sizeof buf) break;
    cookie = next;
  }
  int missed = 0;
  for (int i = 0; i < OLD; i++) if (seen[i] == 0) missed++;
  printf("resumed listed=%d removed=%d missed=%d twice=%d unknown=%d\n",
         listed, removed, missed, twice, unknown);
  printf("resumed-changes-seen removed=%d added=%d\n", gone, added_seen);
  w_fd_close(d);
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
  if (!strcmp(part, "dropped")) dropped();
  if (!strcmp(part, "cookies")) cookies();
  if (!strcmp(part, "badout")) badout();
  if (!strcmp(part, "badfill")) badfill();
  if (!strcmp(part, "emfile")) emfile();
  if (!strcmp(part, "fullopen")) fullopen();
  if (!strcmp(part, "shortappend")) shortappend();
  if (!strcmp(part, "lograte")) lograte();
  if (!strcmp(part, "listonly")) listonly();
  if (!strcmp(part, "createonly")) createonly();
  if (!strcmp(part, "renameonly")) renameonly();
  if (!strcmp(part, "subdironly")) subdironly();
  if (!strcmp(part, "readlinks")) readlinks();
  if (!strcmp(part, "changing")) changing();
  return 0;
}
