/* The behaviours the public WASI test suite (wasi-testsuite's wasm32-wasip1
 * programs) checks that calls.rs, fsops.c and edges.c did not, as raw
 * wasi_snapshot_preview1 calls.  Prints "NAME ERRNO [DETAIL]" per call, never a
 * verdict: test_wasi.py runs it under wasmtime's own WASI and under wsuper, each
 * on a fresh directory preopened as /sandbox (fd 3), and compares the lines
 * (docs/guest-abi.md lists where they differ by design).  argv[1] picks the part:
 *   seek      fd_seek and fd_tell: past the end, negative, each whence; reading
 *             and writing there; pread/pwrite past the end; fd_filestat_set_size;
 *             each call that needs a mode on a file opened without it
 *   flags     fd_fdstat_set_flags (APPEND on and off), pwrite on an APPEND fd
 *   advise    fd_advise of each advice, and of ranges past the end
 *   readdir   fd_readdir: buffers smaller than an entry, cookies past the end
 *   rename    rename onto a file, an empty and a full directory, into itself
 *   dirs      mkdir/rmdir/unlink/readlink/symlink of '.', '..', '', trailing
 *             slashes, links to themselves
 *   fds       fd_prestat_get, stdio fdstat, fd_renumber, fd_close of the preopen
 *   misc      sched_yield, random_get sizes, clock_res_get and clock_time_get,
 *             args and environ sizes, poll_oneoff of nothing, files and clocks
 *   stat      path_filestat_get and fd_filestat_get of each kind; times
 *   shared    two descriptors of one file, moved, replaced, removed under them;
 *             a directory removed while open; reads and writes of 600000 bytes
 *   kinds     fd_readdir's inode and type of each kind of entry
 *   chains    chains of symbolic links around the kernel's 40; the preopen
 *             renumbered
 *   pathops   every path call on every kind of name, each in a fresh tree
 *   times     each fst_flags, by descriptor, by path and through a link; none
 *             (fst_flags 0) by path on every kind of name, followed and not
 *   longs     long paths and link targets (run at message_size = "1KiB")
 *   bigdir    2,500 entries through buffers of 4 KiB to 1 MiB
 *   bigoff    pwrite, pread, seek, write and set_size past 2^31, 2^32, 2^40
 *   moved     a directory descriptor whose directory is moved, or removed
 *   reached   rename and link between descriptors of directories reached through
 *             links, '..', trailing slashes and other descriptors
 *   changes   every change on every kind of name, in a tree the host made (run
 *             on read-only and append-only grants: nothing there may change; and
 *             on a read-only grant against wasmtime's read-only directory)
 *   scratch   the newest suite's programs as they run, each in the directory it
 *             makes with the suite's create_tmp_dir (the rights it asks for) under
 *             the preopen "/", program by program, and its C programs through libc
 *             with paths relative to "/" (suite_c.c)
 *   nodir     the programs given no directory: fd 3 not open, sockets calls on what
 *             is not one, a write to a descriptor past any, random, clocks, args
 *             and environ sizes, stdout (run with no directory at all)
 *   sweep     '..' to each place, trailing slashes on each kind of name and on
 *             new names, links of each kind with and without SYMLINK_FOLLOW,
 *             path_open's clashing flags, fdflags read back, clocks and
 *             descriptors polled together, renumber onto itself and the preopen
 *   root      what the newest suite's programs do with the preopen mounted at
 *             "/" (its `root`): find it by name and open "." with its own rights,
 *             the rights a preopen must have, "." opened each way, closed and
 *             renumbered over; libc's relative paths; stdio polled and renumbered
 *             away; O_NOFOLLOW on links; hard links' rights; fst_flags
 * and, run by hand (they differ from wasmtime by design, or depend on timing or
 * on how the standard descriptors are set up):
 *   iovecs    reads and writes of zero-length, many and partly filled iovecs
 *   everyfd   every call on each kind of descriptor
 *   names     long and unicode names, links that climb, hard link counts
 *   rights    the rights each way of opening a file gives, and what they allow
 *   environ   args and environ as args_get and environ_get give them
 *   sleeps    poll_oneoff sleeps at least its timeout, on each clock
 *   stdio     each call on fd 0, 1 and 2 when each is a file
 *   preopens  each preopen's number and name, and fopen through each */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define W(n) __attribute__((import_module("wasi_snapshot_preview1"), import_name(#n)))
typedef int32_t I;
typedef int64_t L;
W(path_open) I w_path_open(I, I, I, I, I, L, L, I, I);
W(path_rename) I w_path_rename(I, I, I, I, I, I);
W(path_create_directory) I w_path_create_directory(I, I, I);
W(path_remove_directory) I w_path_remove_directory(I, I, I);
W(path_unlink_file) I w_path_unlink_file(I, I, I);
W(path_symlink) I w_path_symlink(I, I, I, I, I);
W(path_readlink) I w_path_readlink(I, I, I, I, I, I);
W(path_filestat_get) I w_path_filestat_get(I, I, I, I, I);
W(path_filestat_set_times) I w_path_filestat_set_times(I, I, I, I, L, L, I);
W(fd_close) I w_fd_close(I);
W(fd_read) I w_fd_read(I, I, I, I);
W(fd_write) I w_fd_write(I, I, I, I);
W(fd_pread) I w_fd_pread(I, I, I, L, I);
W(fd_pwrite) I w_fd_pwrite(I, I, I, L, I);
W(fd_seek) I w_fd_seek(I, L, I, I);
W(fd_tell) I w_fd_tell(I, I);
W(fd_filestat_get) I w_fd_filestat_get(I, I);
W(fd_filestat_set_size) I w_fd_filestat_set_size(I, L);
W(fd_filestat_set_times) I w_fd_filestat_set_times(I, L, L, I);
W(fd_fdstat_get) I w_fd_fdstat_get(I, I);
W(fd_fdstat_set_flags) I w_fd_fdstat_set_flags(I, I);
W(fd_advise) I w_fd_advise(I, L, L, I);
W(fd_allocate) I w_fd_allocate(I, L, L);
W(fd_readdir) I w_fd_readdir(I, I, I, L, I);
W(fd_renumber) I w_fd_renumber(I, I);
W(fd_prestat_get) I w_fd_prestat_get(I, I);
W(fd_prestat_dir_name) I w_fd_prestat_dir_name(I, I, I);
W(fd_sync) I w_fd_sync(I);
W(fd_datasync) I w_fd_datasync(I);
W(sched_yield) I w_sched_yield(void);
W(random_get) I w_random_get(I, I);
W(clock_res_get) I w_clock_res_get(I, I);
W(clock_time_get) I w_clock_time_get(I, L, I);
W(args_sizes_get) I w_args_sizes_get(I, I);
W(args_get) I w_args_get(I, I);
W(environ_sizes_get) I w_environ_sizes_get(I, I);
W(poll_oneoff) I w_poll_oneoff(I, I, I, I);

#define P(x) ((I)(uintptr_t)(x))
#define S(s) P(s), (I)strlen(s)
#define RD 2LL
#define WR 64LL
#define ALL 0x1FFFFFFFLL
enum { CREAT = 1, DIRECTORY = 2, EXCL = 4, TRUNC = 8 };
enum { APPEND = 1, DSYNC = 2, NONBLOCK = 4, RSYNC = 8, SYNC = 16 };
typedef struct { uint32_t p, n; } iov;
typedef struct { uint64_t dev, ino; uint8_t type; uint64_t nlink, size, atim, mtim, ctim; } fst;

static I open_(const char *path, I oflags, L rights, I fdflags, uint32_t *fd) {
  return w_path_open(3, 0, S(path), oflags, rights, ALL, fdflags, P(fd));
}

static I file(const char *path, const char *text) {
  uint32_t fd = 0, n = 0;
  I e = open_(path, CREAT | TRUNC, RD | WR, 0, &fd);
  if (e) return -e;
  iov v = {P(text), (uint32_t)strlen(text)};
  w_fd_write(fd, P(&v), 1, P(&n));
  return (I)fd;
}

static uint64_t size_of(I fd) {
  fst s;
  memset(&s, 0, sizeof s);
  w_fd_filestat_get(fd, P(&s));
  return s.size;
}

static uint64_t tell(I fd) {
  uint64_t t = 0;
  I e = w_fd_tell(fd, P(&t));
  return e ? (uint64_t)-e : t;
}

static void seek(void) {
  I fd = file("ten", "0123456789");
  uint64_t at = 77;
  char buf[16] = {0};
  uint32_t n = 99;
  I e;
  static const struct { const char *name; L off; I whence; } seeks[] = {
      {"set-0", 0, 0}, {"set-5", 5, 0}, {"cur+2", 2, 1}, {"cur-3", -3, 1}, {"end-0", 0, 2},
      {"end-4", -4, 2}, {"end+6", 6, 2}, {"set-100", 100, 0}, {"set-neg", -1, 0},
      {"cur-past-start", -1000, 1}, {"end-past-start", -11, 2}, {"end-to-start", -10, 2},
      {"set-max", 0x7fffffffffffffffLL, 0}, {"cur-overflow", 1, 1},
      {"set-back", 3, 0}};
  for (unsigned i = 0; i < sizeof seeks / sizeof *seeks; i++) {
    at = 77;
    e = w_fd_seek(fd, seeks[i].off, seeks[i].whence, P(&at));
    printf("seek-%s %d %llu tell=%llu\n", seeks[i].name, e, e ? 0ULL : (unsigned long long)at,
           (unsigned long long)tell(fd));
  }
  /* read past the end: 0 bytes, and no error */
  w_fd_seek(fd, 50, 0, P(&at));
  iov r = {P(buf), sizeof buf};
  e = w_fd_read(fd, P(&r), 1, P(&n));
  printf("read-past-end %d n=%u tell=%llu\n", e, n, (unsigned long long)tell(fd));
  /* write past the end: a hole of zeros */
  iov w = {P("X"), 1};
  e = w_fd_write(fd, P(&w), 1, P(&n));
  printf("write-past-end %d n=%u size=%llu tell=%llu\n", e, n,
         (unsigned long long)size_of(fd), (unsigned long long)tell(fd));
  memset(buf, '?', sizeof buf);
  e = w_fd_pread(fd, P(&r), 1, 8, P(&n));
  printf("pread-hole %d n=%u %02x%02x%02x%02x\n", e, n, buf[0], buf[1], buf[2], buf[3]);
  e = w_fd_pread(fd, P(&r), 1, 1000, P(&n));
  printf("pread-past-end %d n=%u tell=%llu\n", e, n, (unsigned long long)tell(fd));
  e = w_fd_pread(fd, P(&r), 1, -1, P(&n));
  printf("pread-negative %d\n", e);
  e = w_fd_pwrite(fd, P(&w), 1, 60, P(&n));
  printf("pwrite-past-end %d n=%u size=%llu tell=%llu\n", e, n,
         (unsigned long long)size_of(fd), (unsigned long long)tell(fd));
  e = w_fd_pwrite(fd, P(&w), 1, -1, P(&n));
  printf("pwrite-negative %d\n", e);
  /* set_size: shrink, grow, and the offset stays */
  w_fd_seek(fd, 40, 0, P(&at));
  e = w_fd_filestat_set_size(fd, 5);
  printf("set-size-shrink %d size=%llu tell=%llu\n", e, (unsigned long long)size_of(fd),
         (unsigned long long)tell(fd));
  e = w_fd_filestat_set_size(fd, 12);
  memset(buf, '?', sizeof buf);
  w_fd_pread(fd, P(&r), 1, 0, P(&n));
  printf("set-size-grow %d size=%llu n=%u %.5s %02x\n", e, (unsigned long long)size_of(fd), n,
         buf, buf[7]);
  e = w_fd_filestat_set_size(fd, -1);
  printf("set-size-negative %d size=%llu\n", e, (unsigned long long)size_of(fd));
  w_fd_close(fd);
  /* a descriptor opened to read only: set_size, seek */
  uint32_t ro = 0;
  printf("open-ro %d\n", open_("ten", 0, RD, 0, &ro));
  printf("ro-set-size %d size=%llu\n", w_fd_filestat_set_size(ro, 1),
         (unsigned long long)size_of(ro));
  printf("ro-seek %d\n", w_fd_seek(ro, 2, 0, P(&at)));
  printf("ro-sync %d\n", w_fd_sync(ro));
  printf("ro-datasync %d\n", w_fd_datasync(ro));
  w_fd_close(ro);
  /* a descriptor opened with no rights at all */
  uint32_t none = 0;
  printf("open-none %d\n", open_("ten", 0, 0, 0, &none));
  printf("none-read %d\n", w_fd_read(none, P(&r), 1, P(&n)));
  printf("none-seek %d\n", w_fd_seek(none, 0, 1, P(&at)));
  printf("none-stat %d\n", w_fd_filestat_get(none, P(buf)));
  printf("none-set-size %d size=%llu\n", w_fd_filestat_set_size(none, 1),
         (unsigned long long)size_of(none));
  w_fd_close(none);
  /* each call that needs a mode on a descriptor opened without it: to read only
   * (with FILESTAT_SET_SIZE, which wasmtime takes for a wish to write), to write
   * only, and to read with the write right asked for of the file only */
  uint32_t m = 0;
  const struct { const char *name; L rights; I fdflags; } modes[] = {
      {"ro", RD, 0}, {"ro-sizeright", RD | (1LL << 22), 0}, {"all-but-write", ALL & ~WR, 0},
      {"ro-append", RD, APPEND}, {"wo", WR, 0},
      {"wo-append", WR, APPEND}};
  for (unsigned k = 0; k < sizeof modes / sizeof *modes; k++) {
    const char *c = modes[k].name;
    I e = open_("ten", 0, modes[k].rights, modes[k].fdflags, &m);
    printf("mode-%s-open %d\n", c, e);
    if (e) continue;
    iov z = {P(buf), 0}, one = {P(buf), 1};
    n = 99;
    printf("mode-%s-read %d\n", c, w_fd_read(m, P(&one), 1, P(&n)));
    printf("mode-%s-read-zero %d\n", c, w_fd_read(m, P(&z), 1, P(&n)));
    printf("mode-%s-pread %d\n", c, w_fd_pread(m, P(&one), 1, 0, P(&n)));
    printf("mode-%s-pread-zero %d\n", c, w_fd_pread(m, P(&z), 1, 0, P(&n)));
    printf("mode-%s-write-zero %d\n", c, w_fd_write(m, P(&z), 1, P(&n)));
    printf("mode-%s-pwrite-zero %d\n", c, w_fd_pwrite(m, P(&z), 1, 0, P(&n)));
    printf("mode-%s-set-size-same %d\n", c, w_fd_filestat_set_size(m, 12));
    printf("mode-%s-set-size-neg %d\n", c, w_fd_filestat_set_size(m, -1));
    printf("mode-%s-allocate %d\n", c, w_fd_allocate(m, 0, 1));
    printf("mode-%s-set-times %d\n", c, w_fd_filestat_set_times(m, 0, 0, 2 | 8));
    printf("mode-%s-advise %d\n", c, w_fd_advise(m, 0, 1, 0));
    printf("mode-%s-sync %d\n", c, w_fd_sync(m));
    printf("mode-%s-seek %d\n", c, w_fd_seek(m, 0, 2, P(&at)));
    w_fd_close(m);
  }
  /* O_TRUNC on a descriptor without the write right */
  printf("trunc-ro %d size-after=%d\n", open_("ten", TRUNC, RD, 0, &ro), 0);
  fst s;
  memset(&s, 0, sizeof s);
  w_path_filestat_get(3, 0, S("ten"), P(&s));
  printf("trunc-ro-size %llu\n", (unsigned long long)s.size);
}

static void iovecs(void) {
  I fd = file("io", "");
  uint32_t n = 99;
  char a[4], b[4], c[4];
  iov none[1] = {{P(a), 0}};
  printf("write-zero-len %d n=%u\n", w_fd_write(fd, P(none), 1, P(&n)), n);
  n = 99;
  printf("write-no-iovecs %d n=%u\n", w_fd_write(fd, P(none), 0, P(&n)), n);
  iov three[4] = {{P("ab"), 2}, {P(""), 0}, {P("cde"), 3}, {P("f"), 1}};
  n = 99;
  printf("write-four %d n=%u size=%llu\n", w_fd_write(fd, P(three), 4, P(&n)), n,
         (unsigned long long)size_of(fd));
  uint64_t at;
  w_fd_seek(fd, 0, 0, P(&at));
  memset(a, '.', 4); memset(b, '.', 4); memset(c, '.', 4);
  iov rd[4] = {{P(a), 1}, {P(b), 0}, {P(c), 4}, {P(b), 4}};
  n = 99;
  I e = w_fd_read(fd, P(rd), 4, P(&n));
  printf("read-four %d n=%u %.1s|%.4s|%.4s tell=%llu\n", e, n, a, c, b,
         (unsigned long long)tell(fd));
  n = 99;
  printf("read-zero-len %d n=%u\n", w_fd_read(fd, P(none), 1, P(&n)), n);
  n = 99;
  printf("read-no-iovecs %d n=%u\n", w_fd_read(fd, P(none), 0, P(&n)), n);
  n = 99;
  printf("read-at-end %d n=%u\n", w_fd_read(fd, P(rd), 4, P(&n)), n);
  n = 99;
  printf("pread-zero-len %d n=%u\n", w_fd_pread(fd, P(none), 1, 0, P(&n)), n);
  n = 99;
  printf("pwrite-zero-len %d n=%u size=%llu\n", w_fd_pwrite(fd, P(none), 1, 100, P(&n)), n,
         (unsigned long long)size_of(fd));
  n = 99;
  memset(a, '.', 4); memset(c, '.', 4);
  iov pr[2] = {{P(a), 2}, {P(c), 4}};
  printf("pread-two %d n=%u %.2s|%.4s tell=%llu\n", w_fd_pread(fd, P(pr), 2, 1, P(&n)), n, a, c,
         (unsigned long long)tell(fd));
  iov pw[2] = {{P("XY"), 2}, {P("Z"), 1}};
  n = 99;
  printf("pwrite-two %d n=%u size=%llu tell=%llu\n", w_fd_pwrite(fd, P(pw), 2, 4, P(&n)), n,
         (unsigned long long)size_of(fd), (unsigned long long)tell(fd));
  /* many small buffers */
  static iov many[600];
  static char bytes[600];
  for (int i = 0; i < 600; i++) { bytes[i] = 'a' + i % 26; many[i].p = P(bytes + i); many[i].n = 1; }
  n = 0;
  printf("write-600 %d n=%u\n", w_fd_write(fd, P(many), 600, P(&n)), n);
  w_fd_seek(fd, 0, 0, P(&at));
  memset(bytes, 0, sizeof bytes);
  n = 0;
  e = w_fd_read(fd, P(many), 600, P(&n));
  printf("read-600 %d n=%u %.10s\n", e, n, bytes);
  /* stdout and stderr, each with several buffers; stdin reads nothing */
  iov out[3] = {{P("std"), 3}, {P(""), 0}, {P("out-line\n"), 9}};
  n = 0;
  e = w_fd_write(1, P(out), 3, P(&n));
  printf("stdout-writev %d n=%u\n", e, n);
  n = 99;
  iov in = {P(a), 4};
  e = w_fd_read(0, P(&in), 1, P(&n));
  printf("stdin-read %d n=%u\n", e, n);
  w_fd_close(fd);
}

static void flags(void) {
  I fd = file("fl", "0123");
  uint64_t at = 0;
  uint32_t n = 0;
  uint8_t st[24];
  iov x = {P("ab"), 2};
  w_fd_seek(fd, 0, 0, P(&at));
  printf("set-append %d\n", w_fd_fdstat_set_flags(fd, APPEND));
  w_fd_fdstat_get(fd, P(st));
  printf("flags-now %d\n", st[2]);
  printf("append-write %d n=%u size=%llu tell=%llu\n", w_fd_write(fd, P(&x), 1, P(&n)), n,
         (unsigned long long)size_of(fd), (unsigned long long)tell(fd));
  n = 0;
  I e = w_fd_pwrite(fd, P(&x), 1, 0, P(&n));
  char buf[16] = {0};
  iov r = {P(buf), sizeof buf - 1};
  uint32_t m = 0;
  w_fd_pread(fd, P(&r), 1, 0, P(&m));
  printf("append-pwrite %d n=%u size=%llu content=%s\n", e, n, (unsigned long long)size_of(fd),
         buf);
  printf("set-nonblock %d\n", w_fd_fdstat_set_flags(fd, NONBLOCK));
  w_fd_fdstat_get(fd, P(st));
  printf("flags-nonblock %d\n", st[2]);
  printf("set-zero %d\n", w_fd_fdstat_set_flags(fd, 0));
  w_fd_fdstat_get(fd, P(st));
  printf("flags-zero %d\n", st[2]);
  printf("set-append-nonblock %d\n", w_fd_fdstat_set_flags(fd, APPEND | NONBLOCK));
  w_fd_fdstat_get(fd, P(st));
  printf("flags-both %d\n", st[2]);
  w_fd_close(fd);
  /* opened with APPEND: pwrite */
  uint32_t ap = 0;
  printf("open-append %d\n", open_("fl", 0, RD | WR, APPEND, &ap));
  n = 0;
  e = w_fd_pwrite(ap, P(&x), 1, 1, P(&n));
  memset(buf, 0, sizeof buf);
  w_fd_pread(ap, P(&r), 1, 0, P(&m));
  printf("opened-append-pwrite %d n=%u content=%s\n", e, n, buf);
  w_fd_close(ap);
  printf("set-flags-closed %d\n", w_fd_fdstat_set_flags(ap, APPEND));
  printf("set-flags-preopen %d\n", w_fd_fdstat_set_flags(3, APPEND));
  printf("set-flags-stdout %d\n", w_fd_fdstat_set_flags(1, 0));
}

static void advise(void) {
  I fd = file("adv", "some bytes");
  for (I a = 0; a < 6; a++) printf("advise-%d %d\n", a, w_fd_advise(fd, 0, 10, a));
  printf("advise-past-end %d\n", w_fd_advise(fd, 100, 1000, 0));
  printf("advise-len-0 %d\n", w_fd_advise(fd, 0, 0, 1));
  printf("advise-negative-offset %d\n", w_fd_advise(fd, -1, 10, 0));
  printf("advise-negative-len %d\n", w_fd_advise(fd, 0, -10, 0));
  printf("advise-size-kept %llu\n", (unsigned long long)size_of(fd));
  w_fd_close(fd);
  printf("advise-closed %d\n", w_fd_advise(fd, 0, 10, 0));
  printf("advise-stdout %d\n", w_fd_advise(1, 0, 10, 0));
}

static void entries(const char *name, I fd, uint32_t len, L cookie) {
  static uint8_t buf[4096];
  uint32_t used = 12345;
  memset(buf, 0xEE, sizeof buf);
  I e = w_fd_readdir(fd, P(buf), len, cookie, P(&used));
  printf("%s %d used=%u", name, e, e ? 0 : used);
  uint32_t pos = 0;
  while (!e && pos + 24 <= used) {
    uint64_t next;
    uint32_t nlen;
    memcpy(&next, buf + pos, 8);
    memcpy(&nlen, buf + pos + 16, 4);
    printf(" %llu:", (unsigned long long)next);
    for (uint32_t k = 0; k < nlen && pos + 24 + k < used; k++) putchar(buf[pos + 24 + k]);
    pos += 24 + nlen;
  }
  if (!e && used < 24 && used > 0) printf(" partial-header");
  printf(" after=%02x\n", used < sizeof buf ? buf[used] : 0);
}

static void readdir(void) {
  w_path_create_directory(3, S("rd"));
  w_fd_close(file("rd/a", ""));
  w_fd_close(file("rd/bb", ""));
  uint32_t d = 0;
  printf("open-rd %d\n", w_path_open(3, 0, S("rd"), DIRECTORY, RD, ALL, 0, P(&d)));
  /* whole listings are sorted by the test: cookies past the end and small buffers */
  entries("buf-0", d, 0, 0);
  entries("buf-1", d, 1, 0);
  entries("buf-10", d, 10, 0);
  entries("buf-24", d, 24, 0);
  entries("buf-25", d, 25, 0);
  entries("cookie-4", d, 4096, 4);
  entries("cookie-5", d, 4096, 5);
  entries("cookie-1000", d, 4096, 1000);
  entries("cookie-negative", d, 4096, -1);
  entries("readdir-file", 0, 4096, 0);
  uint32_t f = 0;
  open_("rd/a", 0, RD, 0, &f);
  entries("readdir-on-file", f, 4096, 0);
  w_fd_close(f);
  entries("readdir-closed", 99, 4096, 0);
  w_fd_close(d);
}

static void rename_(void) {
  w_fd_close(file("rn-a", "A"));
  w_fd_close(file("rn-b", "B"));
  w_path_create_directory(3, S("rn-d1"));
  w_path_create_directory(3, S("rn-d2"));
  w_path_create_directory(3, S("rn-full"));
  w_fd_close(file("rn-full/x", ""));
  w_path_create_directory(3, S("rn-d1/inner"));
#define RN(name, a, b) printf(name " %d\n", w_path_rename(3, S(a), 3, S(b)))
  RN("file-onto-file", "rn-a", "rn-b");
  fst s;
  memset(&s, 0, sizeof s);
  printf("onto-file-size %d %llu\n", w_path_filestat_get(3, 0, S("rn-b"), P(&s)),
         (unsigned long long)s.size);
  printf("old-gone %d\n", w_path_filestat_get(3, 0, S("rn-a"), P(&s)));
  RN("file-onto-self", "rn-b", "rn-b");
  RN("dir-onto-self", "rn-d1", "rn-d1");
  RN("dir-onto-empty-dir", "rn-d2", "rn-d1/inner");
  RN("dir-onto-full-dir", "rn-d1", "rn-full");
  RN("dir-onto-file", "rn-d1", "rn-b");
  RN("file-onto-dir", "rn-b", "rn-d1");
  RN("dir-into-itself", "rn-d1", "rn-d1/inner/deeper");
  RN("missing", "rn-none", "rn-c");
  RN("into-missing-dir", "rn-b", "rn-none/c");
  RN("dot", ".", "rn-c");
  RN("onto-dot", "rn-b", ".");
  RN("dotdot", "..", "rn-c");
  RN("empty", "", "rn-c");
  RN("onto-empty", "rn-b", "");
  RN("onto-dotdot-in", "rn-b", "rn-d1/..");
  RN("file-slash-onto", "rn-b", "rn-c/");
  RN("dir-onto-new-slash", "rn-d1/", "rn-e/");
  w_path_symlink(S("rn-b"), 3, S("rn-link"));
  RN("link-onto-file", "rn-link", "rn-link2");
  RN("file-onto-link", "rn-b", "rn-link2");
  memset(&s, 0, sizeof s);
  printf("link-replaced %d type=%d\n", w_path_filestat_get(3, 0, S("rn-link2"), P(&s)), s.type);
}

static void dirs(void) {
#define MK(name, p) printf(name " %d\n", w_path_create_directory(3, S(p)))
#define RM(name, p) printf(name " %d\n", w_path_remove_directory(3, S(p)))
#define UL(name, p) printf(name " %d\n", w_path_unlink_file(3, S(p)))
  MK("mkdir", "dd");
  MK("mkdir-exists", "dd");
  MK("mkdir-slash", "de/");
  MK("mkdir-slashes", "df//");
  MK("mkdir-missing-parent", "none/dd");
  MK("mkdir-dot", ".");
  MK("mkdir-dotdot", "..");
  MK("mkdir-empty", "");
  MK("mkdir-in-dotdot", "dd/../dg");
  MK("mkdir-out", "../dh");
  MK("mkdir-absolute", "/di");
  w_fd_close(file("dd-file", ""));
  MK("mkdir-on-file", "dd-file");
  MK("mkdir-under-file", "dd-file/x");
  RM("rmdir-dot", ".");
  RM("rmdir-dotdot", "..");
  RM("rmdir-empty", "");
  RM("rmdir-slash-dot", "dd/.");
  RM("rmdir-missing", "none");
  RM("rmdir-out", "../x");
  RM("rmdir-absolute", "/dd");
  RM("rmdir-slashes", "de//");
  UL("unlink-dot", ".");
  UL("unlink-dotdot", "..");
  UL("unlink-empty", "");
  UL("unlink-missing", "none");
  UL("unlink-out", "../x");
  UL("unlink-in-missing", "none/x");
  UL("unlink-under-file", "dd-file/x");
  w_path_symlink(S("dd"), 3, S("dd-link"));
  RM("rmdir-link-to-dir", "dd-link");
  UL("unlink-link-to-dir", "dd-link");
  char buf[8] = {0};
  uint32_t n = 99;
  w_path_symlink(S("a-long-target"), 3, S("long-link"));
  printf("readlink-buf-0 %d n=%u\n", w_path_readlink(3, S("long-link"), P(buf), 0, P(&n)), n);
  printf("readlink-dir %d\n", w_path_readlink(3, S("dd"), P(buf), 8, P(&n)));
  printf("readlink-missing %d\n", w_path_readlink(3, S("none"), P(buf), 8, P(&n)));
  printf("readlink-dot %d\n", w_path_readlink(3, S("."), P(buf), 8, P(&n)));
  printf("readlink-empty %d\n", w_path_readlink(3, S(""), P(buf), 8, P(&n)));
  printf("readlink-slash %d\n", w_path_readlink(3, S("long-link/"), P(buf), 8, P(&n)));
  printf("symlink-empty-target %d\n", w_path_symlink(S(""), 3, S("empty-target")));
  printf("symlink-dot %d\n", w_path_symlink(S("x"), 3, S(".")));
  printf("symlink-empty-name %d\n", w_path_symlink(S("x"), 3, S("")));
  printf("symlink-in-missing %d\n", w_path_symlink(S("x"), 3, S("none/l")));
  w_path_symlink(S("self-loop"), 3, S("self-loop"));
  fst s;
  printf("stat-loop-follow %d\n", w_path_filestat_get(3, 1, S("self-loop"), P(&s)));
  printf("stat-loop-nofollow %d\n", w_path_filestat_get(3, 0, S("self-loop"), P(&s)));
  printf("stat-through-loop %d\n", w_path_filestat_get(3, 0, S("self-loop/x"), P(&s)));
  printf("mkdir-through-loop %d\n", w_path_create_directory(3, S("self-loop/x")));
  printf("unlink-loop %d\n", w_path_unlink_file(3, S("self-loop")));
}

static void fds(void) {
  uint8_t pre[8] = {0};
  for (I fd = 0; fd < 6; fd++) {
    memset(pre, 0xEE, sizeof pre);
    I e = w_fd_prestat_get(fd, P(pre));
    uint32_t len;
    memcpy(&len, pre + 4, 4);
    printf("prestat-%d %d tag=%d len=%u\n", fd, e, e ? -1 : pre[0], e ? 0 : len);
  }
  uint8_t st[24];
  for (I fd = 0; fd < 5; fd++) {
    memset(st, 0, sizeof st);
    I e = w_fd_fdstat_get(fd, P(st));
    printf("fdstat-%d %d type=%d flags=%d\n", fd, e, st[0], st[2] | st[3] << 8);
  }
  I a = file("fa", "A"), b = file("fb", "B");
  printf("opened %d %d\n", a, b);
  printf("renumber-self %d\n", w_fd_renumber(a, a));
  printf("renumber-to-closed %d\n", w_fd_renumber(a, 40));
  printf("renumber-from-closed %d\n", w_fd_renumber(40, a));
  printf("renumber %d\n", w_fd_renumber(a, b));
  char buf[4] = {0};
  uint32_t n = 0;
  iov r = {P(buf), 4};
  uint64_t at;
  w_fd_seek(b, 0, 0, P(&at));
  printf("renumbered-reads %d %.1s\n", w_fd_read(b, P(&r), 1, P(&n)), buf);
  printf("old-closed %d\n", w_fd_close(a));
  uint32_t d = 0;
  printf("open-sub %d\n", w_path_open(3, 0, S("."), DIRECTORY, 0, ALL, 0, P(&d)));
  printf("renumber-onto-preopen %d\n", w_fd_renumber(b, 3));
  printf("preopen-after %d\n", w_fd_prestat_get(3, P(pre)));
  printf("renumber-dir-to-3 %d\n", w_fd_renumber(d, 3));
  printf("prestat-after-dir %d\n", w_fd_prestat_get(3, P(pre)));
  uint32_t f = 0;
  printf("open-through-renumbered %d\n", w_path_open(3, 0, S("fb"), 0, RD, ALL, 0, P(&f)));
  printf("close-3 %d\n", w_fd_close(3));
  printf("close-3-again %d\n", w_fd_close(3));
  printf("open-after-close %d\n", w_path_open(3, 0, S("fb"), 0, RD, ALL, 0, P(&f)));
  printf("close-negative %d\n", w_fd_close(-1));
}

static void misc(void) {
  printf("sched_yield %d\n", w_sched_yield());
  static uint8_t rnd[70000];
  for (unsigned size = 0; size < 70000; size = size ? size * 16 : 1) {
    memset(rnd, 0, sizeof rnd);
    I e = w_random_get(P(rnd), size);
    unsigned nonzero = 0;
    for (unsigned k = 0; k < size; k++) nonzero += rnd[k] != 0;
    printf("random-%u %d %s past=%d\n", size, e, size < 4 || nonzero > size / 2 ? "varied" : "zeros",
           rnd[size]);
  }
  for (I c = 0; c < 4; c++) {
    uint64_t res = 0, t = 0;
    I e = w_clock_res_get(c, P(&res));
    I f = w_clock_time_get(c, 0, P(&t));
    printf("clock-%d res %d %s time %d %s\n", c, e, !e && res > 0 ? "positive" : "none", f,
           !f && t > 0 ? "positive" : "none");
  }
  uint32_t argc = 0, argsz = 0, envc = 7, envsz = 7;
  printf("args-sizes %d", w_args_sizes_get(P(&argc), P(&argsz)));
  printf(" %u %u\n", argc, argsz);
  static uint32_t argv[8];
  static char argbuf[256];
  I e = w_args_get(P(argv), P(argbuf));
  printf("args-get %d", e);
  for (uint32_t k = 1; k < argc && k < 8; k++) printf(" [%s]", argbuf + (argv[k] - P(argbuf)));
  printf("\n");
  printf("environ-sizes %d %u %u\n", w_environ_sizes_get(P(&envc), P(&envsz)), envc, envsz);
  /* poll_oneoff: nothing to wait for; a clock due already; a file read and write */
  uint8_t sub[3][48], ev[3][32];
  uint32_t n = 99;
  memset(sub, 0, sizeof sub);
  printf("poll-none %d n=%u\n", w_poll_oneoff(P(sub), P(ev), 0, P(&n)), n);
  I fd = file("pl", "data");
  for (int k = 0; k < 3; k++) { uint64_t u = 100 + k; memcpy(sub[k], &u, 8); }
  sub[0][8] = 0;                  /* clock, monotonic, relative 0 */
  sub[0][16] = 1;
  sub[1][8] = 1;                  /* fd_read */
  memcpy(sub[1] + 16, &fd, 4);
  sub[2][8] = 2;                  /* fd_write */
  memcpy(sub[2] + 16, &fd, 4);
  memset(ev, 0xEE, sizeof ev);
  n = 99;
  e = w_poll_oneoff(P(sub[1]), P(ev), 2, P(&n));
  printf("poll-file %d n=%u", e, n);
  for (uint32_t k = 0; k < n && k < 3; k++) {
    uint64_t u;
    memcpy(&u, ev[k], 8);
    printf(" [%llu %d %d]", (unsigned long long)u, ev[k][8] | ev[k][9] << 8, ev[k][10]);
  }
  printf("\n");
  memset(ev, 0xEE, sizeof ev);
  n = 99;
  e = w_poll_oneoff(P(sub[0]), P(ev), 1, P(&n));
  uint64_t u;
  memcpy(&u, ev[0], 8);
  printf("poll-clock-0 %d n=%u [%llu %d %d]\n", e, n, (unsigned long long)u,
         ev[0][8] | ev[0][9] << 8, ev[0][10]);
  /* a clock that is due, absolute, in the past */
  sub[0][40] = 1;
  uint64_t one = 1;
  memcpy(sub[0] + 24, &one, 8);
  n = 99;
  e = w_poll_oneoff(P(sub[0]), P(ev), 1, P(&n));
  printf("poll-clock-past %d n=%u err=%d\n", e, n, ev[0][8] | ev[0][9] << 8);
  /* on a descriptor that is closed; and on stdin */
  w_fd_close(fd);
  n = 99;
  e = w_poll_oneoff(P(sub[1]), P(ev), 1, P(&n));
  printf("poll-closed %d n=%u err=%d type=%d\n", e, n, ev[0][8] | ev[0][9] << 8, ev[0][10]);
}

static void stat_(void) {
  fst s;
  w_path_create_directory(3, S("sd"));
  I fd = file("sf", "12345");
  w_path_symlink(S("sf"), 3, S("sl"));
  static const char *names[] = {"sf", "sd", "sl", ".", "", "sd/..", "sf/", "sd/", "none",
                                "..", "/", "sl/", 0};
  for (int i = 0; names[i]; i++)
    for (I follow = 0; follow < 2; follow++) {
      memset(&s, 0, sizeof s);
      I e = w_path_filestat_get(3, follow, S(names[i]), P(&s));
      printf("pstat[%s]/%d %d type=%d nlink=%llu size=%s\n", names[i], follow, e, s.type,
             (unsigned long long)s.nlink,
             s.type == 4 ? (s.size == 5 ? "5" : "wrong") : "-");
    }
  memset(&s, 0, sizeof s);
  printf("fstat-file %d type=%d size=%llu\n", w_fd_filestat_get(fd, P(&s)), s.type,
         (unsigned long long)s.size);
  memset(&s, 0, sizeof s);
  printf("fstat-preopen %d type=%d\n", w_fd_filestat_get(3, P(&s)), s.type);
  /* times: set each, omit each, both now */
  printf("fset-atim %d\n", w_fd_filestat_set_times(fd, 1000000000LL, 0, 1));
  memset(&s, 0, sizeof s);
  w_fd_filestat_get(fd, P(&s));
  printf("fset-atim-got %llu\n", (unsigned long long)s.atim);
  printf("fset-mtim %d\n", w_fd_filestat_set_times(fd, 0, 2000000000LL, 4));
  memset(&s, 0, sizeof s);
  w_fd_filestat_get(fd, P(&s));
  printf("fset-mtim-got %llu %llu\n", (unsigned long long)s.atim, (unsigned long long)s.mtim);
  printf("fset-none %d\n", w_fd_filestat_set_times(fd, 5, 5, 0));
  printf("pset-dir %d\n", w_path_filestat_set_times(3, 0, S("sd"), 3000000000LL, 4000000000LL, 5));
  memset(&s, 0, sizeof s);
  w_path_filestat_get(3, 0, S("sd"), P(&s));
  printf("pset-dir-got %llu %llu\n", (unsigned long long)s.atim, (unsigned long long)s.mtim);
  printf("pset-missing %d\n", w_path_filestat_set_times(3, 0, S("none"), 1, 1, 5));
  printf("pset-dot %d\n", w_path_filestat_set_times(3, 0, S("."), 1, 1, 5));
  printf("fset-preopen %d\n", w_fd_filestat_set_times(3, 1, 1, 5));
  w_fd_close(fd);
}


W(fd_fdstat_set_rights) I w_fd_fdstat_set_rights(I, L, L);
W(path_link) I w_path_link(I, I, I, I, I, I, I);
W(environ_get) I w_environ_get(I, I);

/* Every call on each kind of descriptor: answered alike (or as guest-abi.md says). */
static void everyfd(void) {
  static uint8_t buf[512];
  uint32_t n = 0, out = 0;
  uint64_t off = 0;
  iov v = {P(buf), 4};
  w_path_create_directory(3, S("ed"));
  w_fd_close(file("ed/f", "abc"));
  uint32_t sub = 0, ro = 0, rw = 0;
  w_path_open(3, 0, S("ed"), DIRECTORY, 0, ALL, 0, P(&sub));
  open_("ed/f", 0, RD, 0, &ro);
  open_("ed/f", 0, RD | WR, 0, &rw);
  const struct { const char *name; I fd; } kinds[] = {
      {"closed", 77}, {"stdin", 0}, {"stderr", 2}, {"preopen", 3}, {"subdir", (I)sub},
      {"file-ro", (I)ro}, {"file-rw", (I)rw}};
  for (unsigned k = 0; k < sizeof kinds / sizeof *kinds; k++) {
    I fd = kinds[k].fd;
    const char *c = kinds[k].name;
#define T(what, call) printf("%s-" what " %d\n", c, (call))
    T("datasync", w_fd_datasync(fd));
    T("read", w_fd_read(fd, P(&v), 1, P(&n)));
    T("pread", w_fd_pread(fd, P(&v), 1, 0, P(&n)));
    T("seek", w_fd_seek(fd, 0, 1, P(&off)));
    T("tell", w_fd_tell(fd, P(&off)));
    T("sync", w_fd_sync(fd));
    T("advise", w_fd_advise(fd, 0, 1, 0));
    T("allocate", w_fd_allocate(fd, 0, 1));
    T("filestat", w_fd_filestat_get(fd, P(buf)));
    T("set-times", w_fd_filestat_set_times(fd, 0, 0, 10));
    T("readdir", w_fd_readdir(fd, P(buf), sizeof buf, 0, P(&n)));
    T("prestat", w_fd_prestat_get(fd, P(buf)));
    T("prestat-name", w_fd_prestat_dir_name(fd, P(buf), sizeof buf));
    T("path-open", w_path_open(fd, 0, S("f"), 0, RD, ALL, 0, P(&out)));
    if (!w_path_open(fd, 0, S("f"), 0, RD, ALL, 0, P(&out))) w_fd_close(out);
    T("path-stat", w_path_filestat_get(fd, 0, S("f"), P(buf)));
    T("path-set-times", w_path_filestat_set_times(fd, 0, S("f"), 0, 0, 10));
    T("mkdir", w_path_create_directory(fd, S("nd")));
    w_path_remove_directory(fd, S("nd"));
    T("rmdir", w_path_remove_directory(fd, S("missing")));
    T("unlink", w_path_unlink_file(fd, S("missing")));
    T("readlink", w_path_readlink(fd, S("f"), P(buf), sizeof buf, P(&n)));
    T("symlink", w_path_symlink(S("f"), fd, S("missing-l")));
    w_path_unlink_file(fd, S("missing-l"));
    T("link-from", w_path_link(fd, 0, S("missing"), 3, S("x")));
    T("link-to", w_path_link(3, 0, S("ed/f"), fd, S("missing-h")));
    w_path_unlink_file(fd, S("missing-h"));
    T("rename-from", w_path_rename(fd, S("missing"), 3, S("x")));
    T("rename-to", w_path_rename(3, S("missing"), fd, S("x")));
    T("fdstat", w_fd_fdstat_get(fd, P(buf)));
  }
  const char *c = "other";
  T("write-stdin", w_fd_write(0, P(&v), 1, P(&n)));
  T("write-closed", w_fd_write(77, P(&v), 1, P(&n)));
  T("write-ro", w_fd_write(ro, P(&v), 1, P(&n)));
  T("write-dir", w_fd_write(sub, P(&v), 1, P(&n)));
  T("pwrite-stdin", w_fd_pwrite(0, P(&v), 1, 0, P(&n)));
  T("set-size-dir", w_fd_filestat_set_size(sub, 1));
  T("set-size-preopen", w_fd_filestat_set_size(3, 1));
  T("set-size-closed", w_fd_filestat_set_size(77, 1));
  T("close-closed", w_fd_close(77));
}

/* Names: long, unicode, links that climb or are absolute, used every way. */
static void names(void) {
  char name[300];
  memset(name, 'n', sizeof name);
  for (int len = 254; len <= 256; len++) {
    name[len] = 0;
    uint32_t fd = 0;
    I e = open_(name, CREAT, RD | WR, 0, &fd);
    printf("create-%d %d\n", len, e);
    if (!e) w_fd_close(fd);
    printf("mkdir-%d %d\n", len, w_path_create_directory(3, P(name), len));
    printf("symlink-%d %d\n", len, w_path_symlink(S("x"), 3, P(name), len));
    name[len] = 'n';
  }
  uint32_t fd = 0;
  printf("create-unicode %d\n", open_("\xc3\xa9t\xc3\xa9-\xe2\x9c\x93", CREAT, RD | WR, 0, &fd));
  w_fd_close(fd);
  printf("create-bad-utf8 %d\n", open_("bad-\xff", CREAT, RD | WR, 0, &fd));
  w_path_create_directory(3, S("nm"));
  printf("symlink-up-to-root %d\n", w_path_symlink(S(".."), 3, S("nm/up")));
  printf("symlink-dotdot-out %d\n", w_path_symlink(S("../.."), 3, S("nm/out")));
  printf("symlink-dot %d\n", w_path_symlink(S("."), 3, S("nm/self")));
  fst s;
  memset(&s, 0, sizeof s);
  printf("stat-up %d type=%d\n", w_path_filestat_get(3, 1, S("nm/up"), P(&s)), s.type);
  printf("stat-up-slash %d\n", w_path_filestat_get(3, 0, S("nm/up/"), P(&s)));
  printf("stat-up-up %d\n", w_path_filestat_get(3, 1, S("nm/up/.."), P(&s)));
  printf("stat-self-dotdot %d\n", w_path_filestat_get(3, 1, S("nm/self/.."), P(&s)));
  printf("stat-self-self-up %d\n", w_path_filestat_get(3, 1, S("nm/self/self/up/nm"), P(&s)));
  printf("open-up %d\n", w_path_open(3, 1, S("nm/up/nm"), DIRECTORY, 0, ALL, 0, P(&fd)));
  w_fd_close(fd);
  printf("mkdir-through-up %d\n", w_path_create_directory(3, S("nm/up/made")));
  printf("stat-made %d\n", w_path_filestat_get(3, 0, S("made"), P(&s)));
  uint32_t d = 0;
  printf("open-nm %d\n", w_path_open(3, 0, S("nm"), DIRECTORY, 0, ALL, 0, P(&d)));
  printf("sub-stat-up %d\n", w_path_filestat_get(d, 1, S("up"), P(&s)));
  printf("sub-stat-up-nofollow %d\n", w_path_filestat_get(d, 0, S("up"), P(&s)));
  printf("sub-stat-dotdot %d\n", w_path_filestat_get(d, 0, S(".."), P(&s)));
  printf("sub-stat-self-dotdot %d\n", w_path_filestat_get(d, 1, S("self/.."), P(&s)));
  printf("sub-open-up-file %d\n", w_path_open(d, 1, S("up/made"), DIRECTORY, 0, ALL, 0, P(&fd)));
  printf("sub-unlink-up %d\n", w_path_unlink_file(d, S("up/x")));
  printf("sub-readlink-up %d\n", w_path_readlink(d, S("up"), P(name), 100, P(&fd)));
  printf("sub-link-up %d\n", w_path_link(d, 0, S("up"), d, S("up2")));
  printf("sub-rename-up %d\n", w_path_rename(d, S("up"), d, S("up3")));
  printf("sub-symlink-slash %d\n", w_path_symlink(S("x"), d, S("/y")));
  memset(&s, 0, sizeof s);
  printf("link-count-dir %d nlink=%llu\n", w_path_filestat_get(3, 0, S("nm"), P(&s)),
         (unsigned long long)s.nlink);
  w_fd_close(file("hl", "x"));
  w_path_link(3, 0, S("hl"), 3, S("hl2"));
  w_path_link(3, 0, S("hl"), 3, S("hl3"));
  memset(&s, 0, sizeof s);
  printf("link-count %d nlink=%llu\n", w_path_filestat_get(3, 0, S("hl2"), P(&s)),
         (unsigned long long)s.nlink);
  static uint8_t buf[4096];
  uint32_t used = 0;
  printf("readdir-nm %d\n", w_fd_readdir(d, P(buf), sizeof buf, 0, P(&used)));
  for (uint32_t pos = 0; pos + 24 <= used;) {
    uint32_t len;
    memcpy(&len, buf + pos + 16, 4);
    printf("  entry %.*s type=%d\n", (int)len, buf + pos + 24, buf[pos + 20]);
    pos += 24 + len;
  }
  static uint32_t envp[16];
  static char envbuf[512];
  uint32_t c = 0, sz = 0;
  w_environ_sizes_get(P(&c), P(&sz));
  printf("environ %d %u %u\n", w_environ_get(P(envp), P(envbuf)), c, sz);
}

static uint8_t bigbuf[700000];

static void show(const char *name, I fd, uint64_t at) {
  char buf[32] = {0};
  uint32_t n = 0;
  iov r = {P(buf), sizeof buf - 1};
  I e = w_fd_pread(fd, P(&r), 1, at, P(&n));
  printf("%s %d n=%u [%s]\n", name, e, n, buf);
}

/* Two descriptors of one file, and the file moved, removed or replaced under them. */
static void shared(void) {
  uint32_t a = 0, b = 0, c = 0, n = 0;
  uint64_t at = 0;
  fst s;
  printf("open-a %d\n", open_("sh", CREAT, RD | WR, 0, &a));
  printf("open-b %d\n", open_("sh", 0, RD | WR, 0, &b));
  iov hello = {P("hello"), 5};
  w_fd_write(a, P(&hello), 1, P(&n));
  char buf[16] = {0};
  iov r = {P(buf), 15};
  printf("b-reads %d n=%u [%s]\n", w_fd_read(b, P(&r), 1, P(&n)), n, buf);
  printf("b-seek-end %d", w_fd_seek(b, 0, 2, P(&at)));
  printf(" %llu\n", (unsigned long long)at);
  printf("a-truncate %d\n", w_fd_filestat_set_size(a, 2));
  memset(&s, 0, sizeof s);
  w_fd_filestat_get(b, P(&s));
  printf("b-size %llu tell=%llu\n", (unsigned long long)s.size, (unsigned long long)tell(b));
  memset(buf, 0, sizeof buf);
  printf("b-read-past %d n=%u\n", w_fd_read(b, P(&r), 1, P(&n)), n);
  iov x = {P("X"), 1};
  printf("b-write-past %d\n", w_fd_write(b, P(&x), 1, P(&n)));
  show("a-sees", a, 0);
  /* appends from two descriptors */
  printf("open-c-append %d\n", open_("sh", 0, RD | WR, APPEND, &c));
  iov app = {P("++"), 2};
  w_fd_write(c, P(&app), 1, P(&n));
  printf("c-tell %llu size %llu\n", (unsigned long long)tell(c), (unsigned long long)size_of(c));
  w_fd_write(a, P(&x), 1, P(&n));
  w_fd_write(c, P(&app), 1, P(&n));
  printf("c-tell-2 %llu size %llu\n", (unsigned long long)tell(c), (unsigned long long)size_of(c));
  show("content", a, 0);
  /* renamed while open: the descriptors keep the file */
  printf("rename %d\n", w_path_rename(3, S("sh"), 3, S("sh2")));
  w_fd_write(c, P(&x), 1, P(&n));
  show("after-rename", b, 0);
  /* replaced: another file takes its name */
  w_fd_close(file("other", "other"));
  printf("replace %d\n", w_path_rename(3, S("other"), 3, S("sh2")));
  show("after-replace", a, 0);
  /* removed: still there for the descriptors, nlink 0 */
  printf("unlink %d\n", w_path_unlink_file(3, S("sh2")));
  memset(&s, 0, sizeof s);
  printf("fstat-unlinked %d nlink=%llu size=%llu\n", w_fd_filestat_get(a, P(&s)),
         (unsigned long long)s.nlink, (unsigned long long)s.size);
  printf("write-unlinked %d\n", w_fd_write(a, P(&x), 1, P(&n)));
  show("read-unlinked", b, 0);
  printf("set-size-unlinked %d\n", w_fd_filestat_set_size(b, 3));
  printf("set-times-unlinked %d\n", w_fd_filestat_set_times(b, 5, 5, 5));
  printf("sync-unlinked %d\n", w_fd_sync(b));
  w_fd_close(a); w_fd_close(b); w_fd_close(c);
  /* a directory removed while open */
  uint32_t d = 0;
  w_path_create_directory(3, S("gone"));
  printf("open-gone %d\n", w_path_open(3, 0, S("gone"), DIRECTORY, 0, ALL, 0, P(&d)));
  printf("rmdir-gone %d\n", w_path_remove_directory(3, S("gone")));
  memset(&s, 0, sizeof s);
  printf("fstat-gone %d type=%d\n", w_fd_filestat_get(d, P(&s)), s.type);
  printf("create-in-gone %d\n", w_path_open(d, 0, S("x"), CREAT, RD | WR, ALL, 0, P(&a)));
  printf("mkdir-in-gone %d\n", w_path_create_directory(d, S("x")));
  printf("stat-dot-gone %d\n", w_path_filestat_get(d, 0, S("."), P(&s)));
  printf("open-dot-gone %d\n", w_path_open(d, 0, S("."), DIRECTORY, 0, ALL, 0, P(&a)));
  printf("symlink-in-gone %d\n", w_path_symlink(S("x"), d, S("l")));
  w_path_create_directory(3, S("gone"));
  printf("stat-new-gone-via-old %d\n", w_path_filestat_get(d, 0, S(".."), P(&s)));
  w_fd_close(d);
  /* big: one write and one read of 600000 bytes, pread across the middle */
  for (unsigned k = 0; k < sizeof bigbuf; k++) bigbuf[k] = (uint8_t)(k * 7 + k / 251);
  I f = file("big", "");
  iov w = {P(bigbuf), 600000};
  printf("big-write %d", w_fd_write(f, P(&w), 1, P(&n)));
  printf(" n=%u tell=%llu\n", n, (unsigned long long)tell(f));
  static uint8_t back[700000];
  iov rb = {P(back), 300001};
  printf("big-pread %d", w_fd_pread(f, P(&rb), 1, 299999, P(&n)));
  printf(" n=%u same=%d\n", n, !memcmp(back, bigbuf + 299999, 300001));
  w_fd_seek(f, 1, 0, P(&at));
  iov rv[3] = {{P(back), 100000}, {P(back + 100000), 0}, {P(back + 100000), 600000}};
  printf("big-readv %d", w_fd_read(f, P(rv), 3, P(&n)));
  printf(" n=%u same=%d tell=%llu\n", n, !memcmp(back, bigbuf + 1, 599999),
         (unsigned long long)tell(f));
  w_fd_close(f);
}

/* Rights a file gets from each way of opening it, and what they let it do. */
static void rights(void) {
  w_fd_close(file("rt", "data"));
  static const struct { const char *name; L base; L inh; I fdflags; } opens[] = {
      {"r", RD, 0, 0}, {"w", WR, 0, 0}, {"rw", RD | WR, 0, 0}, {"none", 0, 0, 0},
      {"w-append", WR, 0, APPEND}, {"all", ALL, ALL, 0}, {"seek-only", 4, 0, 0},
      {"r-inh", RD, RD, 0}};
  for (unsigned i = 0; i < sizeof opens / sizeof *opens; i++) {
    uint32_t fd = 0, n = 0;
    uint8_t st[24] = {0};
    char buf[8];
    iov r = {P(buf), 4};
    iov w = {P("W"), 1};
    uint64_t at = 0;
    I e = w_path_open(3, 0, S("rt"), 0, opens[i].base, opens[i].inh, opens[i].fdflags, P(&fd));
    w_fd_fdstat_get(fd, P(st));
    uint64_t base, inh;
    memcpy(&base, st + 8, 8);
    memcpy(&inh, st + 16, 8);
    printf("rights-%s %d read=%d write=%d seek=%d tell=%d stat=%d base-read=%d base-write=%d"
           " base-seek=%d inh=%d\n", opens[i].name, e, w_fd_read(fd, P(&r), 1, P(&n)),
           w_fd_write(fd, P(&w), 1, P(&n)), w_fd_seek(fd, 0, 0, P(&at)), w_fd_tell(fd, P(&at)),
           w_fd_filestat_get(fd, P(buf)), !!(base & RD), !!(base & WR), !!(base & 4),
           inh != 0);
    w_fd_close(fd);
  }
  /* a directory opened with inheriting rights: what a file opened through it gets */
  uint32_t d = 0, f = 0;
  printf("dir-inh %d\n", w_path_open(3, 0, S("."), DIRECTORY, 0, RD, 0, P(&d)));
  printf("open-through %d\n", w_path_open(d, 0, S("rt"), 0, RD | WR, 0, 0, P(&f)));
  uint32_t n = 0;
  iov w = {P("W"), 1};
  printf("write-through %d\n", w_fd_write(f, P(&w), 1, P(&n)));
  w_fd_close(f);
  w_fd_close(d);
}

/* fd_readdir's entries: inode and type of each kind, against path_filestat_get. */
static void kinds(void) {
  static uint8_t buf[8192];
  w_path_create_directory(3, S("k"));
  w_path_create_directory(3, S("k/dir"));
  w_fd_close(file("k/file", "x"));
  w_path_symlink(S("file"), 3, S("k/link"));
  w_path_symlink(S("nothing"), 3, S("k/dangling"));
  w_path_symlink(S("dir"), 3, S("k/dirlink"));
  w_path_link(3, 0, S("k/file"), 3, S("k/hard"));
  w_fd_close(file("k/\xc3\xa9\xc3\xa9\xc3\xa9", "u"));
  for (int which = 0; which < 2; which++) {
    uint32_t d = 0, used = 0;
    const char *path = which ? "." : "k";
    w_path_open(3, 0, S(path), DIRECTORY, 0, ALL, 0, P(&d));
    I e = w_fd_readdir(d, P(buf), sizeof buf, 0, P(&used));
    printf("readdir-%s %d\n", path, e);
    fst me;
    memset(&me, 0, sizeof me);
    w_fd_filestat_get(d, P(&me));
    for (uint32_t pos = 0; pos + 24 <= used;) {
      uint64_t ino;
      uint32_t len;
      memcpy(&ino, buf + pos + 8, 8);
      memcpy(&len, buf + pos + 16, 4);
      char name[64] = {0};
      memcpy(name, buf + pos + 24, len < 63 ? len : 63);
      fst s;
      memset(&s, 0, sizeof s);
      I se = w_path_filestat_get(d, 0, S(name), P(&s));
      printf("  %s type=%d stat=%d stat-type=%d same-ino=%d dot-is-me=%d\n", name, buf[pos + 20],
             se, s.type, se == 0 && s.ino == ino, !strcmp(name, ".") ? ino == me.ino : -1);
      pos += 24 + len;
    }
    w_fd_close(d);
  }
  /* a buffer that ends inside a name of several bytes */
  uint32_t d = 0, used = 0;
  w_path_create_directory(3, S("u"));
  w_fd_close(file("u/\xc3\xa9\xc3\xa9", ""));
  w_path_open(3, 0, S("u"), DIRECTORY, 0, ALL, 0, P(&d));
  for (uint32_t len = 70; len < 80; len++) {
    memset(buf, 0xEE, 100);
    I e = w_fd_readdir(d, P(buf), len, 2, P(&used));
    printf("cut-%u %d used=%u last=%02x\n", len, e, used, used ? buf[used - 1] : 0);
  }
  w_fd_close(d);
}

/* Chains of symbolic links, of each length around the kernel's 40. */
static void chains(void) {
  char name[32], target[32];
  w_fd_close(file("c-end", "end"));
  w_path_create_directory(3, S("c-dir"));
  for (int i = 1; i <= 45; i++) {
    snprintf(name, sizeof name, "c%d", i);
    snprintf(target, sizeof target, i == 1 ? "c-end" : "c%d", i - 1);
    w_path_symlink(S(target), 3, S(name));
    snprintf(name, sizeof name, "d%d", i);
    snprintf(target, sizeof target, i == 1 ? "c-dir" : "d%d", i - 1);
    w_path_symlink(S(target), 3, S(name));
    snprintf(name, sizeof name, "n%d", i);
    snprintf(target, sizeof target, i == 1 ? "n-made-%d" : "n%d", i - 1);
    w_path_symlink(S(target), 3, S(name));
  }
  for (int i = 37; i <= 42; i++) {
    uint32_t fd = 0;
    fst s;
    snprintf(name, sizeof name, "c%d", i);
    I e = open_(name, 0, RD, 0, &fd);
    I o = w_path_open(3, 1, S(name), 0, RD, ALL, 0, P(&fd));
    if (!o) w_fd_close(fd);
    printf("chain-%d open-nofollow=%d open=%d stat=%d", i, e, o,
           w_path_filestat_get(3, 1, S(name), P(&s)));
    snprintf(name, sizeof name, "d%d/x", i);
    printf(" through-dir=%d", w_path_filestat_get(3, 0, S(name), P(&s)));
    snprintf(name, sizeof name, "d%d/new", i);
    printf(" mkdir-through=%d", w_path_create_directory(3, S(name)));
    snprintf(name, sizeof name, "n%d", i);
    o = w_path_open(3, 1, S(name), CREAT, RD | WR, ALL, 0, P(&fd));
    if (!o) w_fd_close(fd);
    printf(" creat-through=%d\n", o);
  }
  /* the preopen moved to another number: still a preopen? */
  uint32_t f = 0;
  open_("c-end", 0, RD, 0, &f);
  uint8_t pre[8] = {0};
  printf("renumber-preopen %d\n", w_fd_renumber(3, f));
  printf("prestat-moved %d\n", w_fd_prestat_get(f, P(pre)));
  printf("prestat-old %d\n", w_fd_prestat_get(3, P(pre)));
  uint32_t g = 0;
  printf("open-via-moved %d\n", w_path_open(f, 0, S("c-end"), 0, RD, ALL, 0, P(&g)));
  printf("open-got-3 %d\n", g == 3);
}

/* Every path-taking call on every kind of name, each in a fresh copy of a small
 * tree (a directory of its own, used through a descriptor of it): the errno and
 * what the tree holds afterwards. */
static const char *const tree_names[] = {"of", "od", "oe", "olf", "old", "odang", "oloop",
                                         "od/inner", "od/up", "od/upf", "rnew", "lnew",
                                         "onew", "x", 0};

static I make_case(int i) {
  char name[32];
  uint32_t d = 0, f = 0, n = 0;
  snprintf(name, sizeof name, "case%d", i);
  w_path_create_directory(3, S(name));
  w_path_open(3, 0, S(name), DIRECTORY, 0, ALL, 0, P(&d));
  w_path_open(d, 0, S("of"), CREAT, RD | WR, ALL, 0, P(&f));
  iov v = {P("data"), 4};
  w_fd_write(f, P(&v), 1, P(&n));
  w_fd_close(f);
  w_path_create_directory(d, S("od"));
  w_path_create_directory(d, S("oe"));
  w_path_open(d, 0, S("od/inner"), CREAT, RD | WR, ALL, 0, P(&f));
  w_fd_close(f);
  w_path_symlink(S("of"), d, S("olf"));
  w_path_symlink(S("od"), d, S("old"));
  w_path_symlink(S("onothing"), d, S("odang"));
  w_path_symlink(S("oloop"), d, S("oloop"));
  w_path_symlink(S(".."), d, S("od/up"));
  w_path_symlink(S("../of"), d, S("od/upf"));
  return (I)d;
}

static void show_tree(I d) {
  printf(" |");
  for (int k = 0; tree_names[k]; k++) {
    fst s;
    memset(&s, 0, sizeof s);
    I e = w_path_filestat_get(d, 0, S(tree_names[k]), P(&s));
    if (e) printf(" -");
    else if (s.type == 4) printf(" f%llu", (unsigned long long)s.size);
    else printf(" %d", s.type);
  }
  fst s;
  memset(&s, 0, sizeof s);
  w_path_filestat_get(d, 0, S("of"), P(&s));
  printf(" m%d\n", s.mtim == 7000000000ULL);
}

static void pathops(void) {
  static const char *paths[] = {
      "of", "od", "oe", "olf", "old", "odang", "oloop", "of/", "od/", "oe/", "olf/", "old/",
      "odang/", "oloop/", ".", "./", "", "od/..", "od/../", "od/inner", "od/up", "od/up/",
      "od/up/of", "od/upf", "od/upf/", "old/inner", "old/..", "olf/..", "odang/x", "onew",
      "onew/", "of/x", "od/./inner", "od//inner", "oe/..", "oloop/x", "old/up/oe", 0};
  static const char *ops[] = {"stat0", "stat1", "readlink", "mkdir", "rmdir", "unlink",
                              "symlink", "times0", "times1", "link-to", "link-from",
                              "rename-from", "rename-to", "rename-dir-to", 0};
  int i = 0;
  for (int o = 0; ops[o]; o++)
    for (int p = 0; paths[p]; p++) {
      I d = make_case(i++);
      const char *path = paths[p];
      const char *op = ops[o];
      char buf[64];
      uint32_t n = 0;
      fst s;
      I e;
      if (!strcmp(op, "stat0")) e = w_path_filestat_get(d, 0, S(path), P(&s));
      else if (!strcmp(op, "stat1")) e = w_path_filestat_get(d, 1, S(path), P(&s));
      else if (!strcmp(op, "readlink")) e = w_path_readlink(d, S(path), P(buf), sizeof buf, P(&n));
      else if (!strcmp(op, "mkdir")) e = w_path_create_directory(d, S(path));
      else if (!strcmp(op, "rmdir")) e = w_path_remove_directory(d, S(path));
      else if (!strcmp(op, "unlink")) e = w_path_unlink_file(d, S(path));
      else if (!strcmp(op, "symlink")) e = w_path_symlink(S("x"), d, S(path));
      else if (!strcmp(op, "times0"))
        e = w_path_filestat_set_times(d, 0, S(path), 0, 7000000000LL, 4);
      else if (!strcmp(op, "times1"))
        e = w_path_filestat_set_times(d, 1, S(path), 0, 7000000000LL, 4);
      else if (!strcmp(op, "link-to")) e = w_path_link(d, 0, S("of"), d, S(path));
      else if (!strcmp(op, "link-from")) e = w_path_link(d, 0, S(path), d, S("lnew"));
      else if (!strcmp(op, "rename-from")) e = w_path_rename(d, S(path), d, S("rnew"));
      else if (!strcmp(op, "rename-to")) e = w_path_rename(d, S("of"), d, S(path));
      else e = w_path_rename(d, S("oe"), d, S(path));
      printf("%s[%s] %d", op, path, e);
      show_tree(d);
      w_fd_close(d);
    }
}

static void escaped(const char *s) {
  for (; *s; s++) {
    if (*s == '\n') printf("\\n");
    else if ((unsigned char)*s < 32 || (unsigned char)*s > 126) printf("\\x%02x", (unsigned char)*s);
    else putchar(*s);
  }
}

/* The arguments and variables as args_get and environ_get give them. */
static void environ(void) {
  static uint32_t ptrs[64];
  static char bytes[4096];
  uint32_t count = 0, size = 0;
  printf("args-sizes %d", w_args_sizes_get(P(&count), P(&size)));
  printf(" %u %u\n", count, size);
  printf("args-get %d\n", w_args_get(P(ptrs), P(bytes)));
  for (uint32_t k = 1; k < count && k < 64; k++) {
    printf("  arg[");
    escaped(bytes + (ptrs[k] - P(bytes)));
    printf("]\n");
  }
  printf("environ-sizes %d", w_environ_sizes_get(P(&count), P(&size)));
  printf(" %u %u\n", count, size);
  printf("environ-get %d\n", w_environ_get(P(ptrs), P(bytes)));
  for (uint32_t k = 0; k < count && k < 64; k++) {
    printf("  env[");
    escaped(bytes + (ptrs[k] - P(bytes)));
    printf("]\n");
  }
}

static I sleep_on(I clock, uint64_t timeout, I flags, uint64_t *took, uint64_t *ud) {
  uint8_t sub[48], ev[32];
  uint32_t n = 0;
  memset(sub, 0, sizeof sub);
  memset(ev, 0xEE, sizeof ev);
  uint64_t u = 0x12345678;
  memcpy(sub, &u, 8);
  memcpy(sub + 16, &clock, 4);
  memcpy(sub + 24, &timeout, 8);
  memcpy(sub + 40, &flags, 2);
  uint64_t before = 0, after = 0;
  w_clock_time_get(1, 0, P(&before));
  I e = w_poll_oneoff(P(sub), P(ev), 1, P(&n));
  w_clock_time_get(1, 0, P(&after));
  *took = after - before;
  memcpy(ud, ev, 8);
  return e ? e : (n == 1 ? ev[8] | ev[9] << 8 : -100 - (I)n);
}

/* poll_oneoff's clocks: each sleeps at least its timeout */
static void sleeps(void) {
  uint64_t took, ud, now = 0;
  for (I clock = 0; clock < 2; clock++) {
    I e = sleep_on(clock, 5000000, 0, &took, &ud);
    printf("sleep-relative-%d %d long-enough=%d ud=%d\n", clock, e, took >= 5000000, ud == 0x12345678);
    w_clock_time_get(clock, 0, P(&now));
    e = sleep_on(clock, now + 5000000, 1, &took, &ud);
    printf("sleep-absolute-%d %d long-enough=%d ud=%d\n", clock, e, took >= 4000000, ud == 0x12345678);
    e = sleep_on(clock, 0, 0, &took, &ud);
    printf("sleep-zero-%d %d\n", clock, e);
    e = sleep_on(clock, 1, 1, &took, &ud);
    printf("sleep-past-absolute-%d %d\n", clock, e);
  }
  /* two clocks: the shorter one is reported */
  uint8_t sub[2][48], ev[2][32];
  memset(sub, 0, sizeof sub);
  uint64_t t1 = 200000000, t2 = 5000000, u1 = 1, u2 = 2;
  memcpy(sub[0], &u1, 8); memcpy(sub[0] + 24, &t1, 8); sub[0][16] = 1;
  memcpy(sub[1], &u2, 8); memcpy(sub[1] + 24, &t2, 8); sub[1][16] = 1;
  uint32_t n = 0;
  I e = w_poll_oneoff(P(sub), P(ev), 2, P(&n));
  uint64_t got;
  memcpy(&got, ev[0], 8);
  printf("two-clocks %d n=%u first=%llu\n", e, n, (unsigned long long)got);
  uint64_t res = 0;
  w_clock_res_get(0, P(&res));
  printf("res-realtime-le-1ms %d\n", res > 0 && res <= 1000000);
  w_clock_res_get(1, P(&res));
  printf("res-monotonic-le-1ms %d\n", res > 0 && res <= 1000000);
  uint64_t a = 0, b = 0;
  w_clock_time_get(1, 0, P(&a));
  w_clock_time_get(1, 0, P(&b));
  printf("monotonic-moves %d\n", b >= a);
  w_clock_time_get(0, 0, P(&a));
  printf("realtime-after-2020 %d\n", a > 1577836800000000000ULL);
}

static const char *when(uint64_t t, uint64_t given, uint64_t old, uint64_t now) {
  if (t == given) return "given";
  if (t == old) return "old";
  if (t + 60000000000ULL > now && t < now + 60000000000ULL) return "now";
  return "other";
}

/* Each fst_flags combination, by descriptor and by path, on a file and a link. */
static void times(void) {
  for (int how = 0; how < 3; how++)
    for (I flags = 0; flags < 16; flags++) {
      uint32_t fd = 0;
      fst s;
      char name[32];
      snprintf(name, sizeof name, "tm-%d-%d", how, flags);
      open_(name, CREAT, RD | WR, 0, &fd);
      w_fd_filestat_set_times(fd, 1000000000LL, 2000000000LL, 1 | 4);
      if (how == 2) {
        char link[40];
        snprintf(link, sizeof link, "%s-l", name);
        w_path_symlink(S(name), 3, S(link));
        memcpy(name, link, sizeof name);
      }
      I e = how == 0 ? w_fd_filestat_set_times(fd, 3000000000LL, 4000000000LL, flags)
                     : w_path_filestat_set_times(3, how == 2, S(name), 3000000000LL,
                                                 4000000000LL, flags);
      uint64_t now = 0;
      w_clock_time_get(0, 0, P(&now));
      memset(&s, 0, sizeof s);
      w_fd_filestat_get(fd, P(&s));
      printf("times-%s-%d %d a=%s", how == 0 ? "fd" : how == 1 ? "path" : "link", flags, e,
             when(s.atim, 3000000000ULL, 1000000000ULL, now));
      printf(" m=%s\n", when(s.mtim, 4000000000ULL, 2000000000ULL, now));
      w_fd_close(fd);
    }
  /* fst_flags 0 (no time set) by path: what is looked up, with and without
   * SYMLINK_FOLLOW, on every kind of name */
  w_path_create_directory(3, S("z0"));
  w_fd_close(file("z0/f", "f"));
  w_path_symlink(S("f"), 3, S("z0/lf"));
  w_path_symlink(S("nothing"), 3, S("z0/ldang"));
  w_path_symlink(S("lloop"), 3, S("z0/lloop"));
  static const char *const zn[] = {"z0/f", "z0/missing", "z0/missing/x", "z0/f/x", "z0/f/",
      "z0/missing/", "top-missing", "z0/./missing", "z0/../missing", "z0/lf/",
      "z0/lf", "z0/ldang", "z0/ldang/", "z0/lloop", "z0/..", "..",
      "../x", "z0/../..", "/", "/etc", "."};
  for (unsigned k = 0; k < sizeof zn / sizeof *zn; k++)
    for (I follow = 0; follow < 2; follow++)
      printf("fst0-%s-%s %d\n", follow ? "follow" : "nofollow", zn[k],
             w_path_filestat_set_times(3, follow, S(zn[k]), 0, 0, 0));
  printf("fst0-empty %d\n", w_path_filestat_set_times(3, 0, S(""), 0, 0, 0));
  printf("fst0-closed %d\n", w_path_filestat_set_times(77, 0, S("z0/missing"), 0, 0, 0));

}

/* The standard descriptors when each is a file: what each call does there.
 * Writes only to stderr (stdout carries the report). */
static void stdio(void) {
  char buf[16] = {0};
  uint32_t n = 0;
  uint64_t at = 0;
  iov r = {P(buf), 5};
  iov w = {P("E\n"), 2};
  fst s;
  uint8_t st[24];
  for (I fd = 0; fd < 3; fd++) {
    char pre[8];
    snprintf(pre, sizeof pre, "fd%d", fd);
#define Q(what, call) do { I e_ = (call); printf("%s-" what " %d\n", pre, e_); } while (0)
    memset(st, 0, sizeof st);
    w_fd_fdstat_get(fd, P(st));
    uint64_t base;
    memcpy(&base, st + 8, 8);
    printf("%s-fdstat type=%d flags=%d read=%d write=%d seek=%d tell=%d\n", pre, st[0], st[2],
           !!(base & 2), !!(base & 64), !!(base & 4), !!(base & 32));
    memset(&s, 0, sizeof s);
    I e = w_fd_filestat_get(fd, P(&s));
    printf("%s-filestat %d type=%d\n", pre, e, s.type);
    Q("tell", w_fd_tell(fd, P(&at)));
    Q("seek-cur", w_fd_seek(fd, 0, 1, P(&at)));
    Q("seek-set", w_fd_seek(fd, 2, 0, P(&at)));
    Q("read", w_fd_read(fd, P(&r), 1, P(&n)));
    if (fd == 0) printf("%s-read-got n=%u [%.*s]\n", pre, n, (int)n, buf);
    Q("pread", w_fd_pread(fd, P(&r), 1, 1, P(&n)));
    if (fd != 1) Q("write", w_fd_write(fd, P(&w), 1, P(&n)));
    if (fd != 1) Q("pwrite", w_fd_pwrite(fd, P(&w), 1, 0, P(&n)));
    Q("set-size", w_fd_filestat_set_size(fd, 0));
    Q("set-times", w_fd_filestat_set_times(fd, 0, 0, 10));
    Q("advise", w_fd_advise(fd, 0, 0, 0));
    Q("sync", w_fd_sync(fd));
    Q("datasync", w_fd_datasync(fd));
    Q("set-flags-0", w_fd_fdstat_set_flags(fd, 0));
    Q("set-flags-append", w_fd_fdstat_set_flags(fd, APPEND));
    uint8_t sub[48] = {0}, ev[32] = {0};
    sub[8] = fd == 0 ? 1 : 2;
    memcpy(sub + 16, &fd, 4);
    e = w_poll_oneoff(P(sub), P(ev), 1, P(&n));
    printf("%s-poll %d n=%u err=%d\n", pre, e, n, ev[8] | ev[9] << 8);
  }
}

/* The edges a WASI conformance sweep names, each on every kind of name: '..'
 * inside, to the preopen and past it, also after a link; trailing slashes on
 * files, directories, links and new names, for each call that takes a name;
 * links relative, dangling, looping (one and two), last with and without
 * SYMLINK_FOLLOW, opened with O_DIRECTORY (followed), O_EXCL and O_CREAT on
 * them; O_DIRECTORY|O_CREAT, O_TRUNC on a directory; fdflags set and read back;
 * poll_oneoff of clocks and descriptors mixed; empty reads and writes on a
 * descriptor that is not open; unlink of a directory, rmdir of '.'. */
static void sweep(void) {
  static uint8_t buf[256];
  uint32_t fd = 0, n = 0;
  fst s;
  w_path_create_directory(3, S("sw"));
  w_path_create_directory(3, S("sw/d"));
  w_fd_close(file("sw/d/g", "g"));
  w_fd_close(file("sw/f", "hello"));
  w_path_symlink(S("f"), 3, S("sw/lf"));
  w_path_symlink(S("d"), 3, S("sw/ld"));
  w_path_symlink(S("nothing"), 3, S("sw/ldang"));
  w_path_symlink(S("lloop"), 3, S("sw/lloop"));
  w_path_symlink(S("lb"), 3, S("sw/la"));
  w_path_symlink(S("la"), 3, S("sw/lb"));
  w_path_symlink(S("lf"), 3, S("sw/llf"));
  w_path_symlink(S("d/g"), 3, S("sw/ldg"));
  static const char *const names[] = {
      "sw/f", "sw/d", "sw/lf", "sw/ld", "sw/ldang", "sw/lloop", "sw/la", "sw/llf", "sw/ldg",
      "sw/f/", "sw/d/", "sw/lf/", "sw/ld/", "sw/ldang/", "sw/lloop/", "sw/llf/", "sw/nx/",
      "sw/..", "sw/d/..", "sw/d/../..", "sw/d/../f", "sw/../sw/f", "./sw/./f", "sw/ld/..",
      "sw/ld/../f", "sw/ld/g", "sw/ld/g/", "sw/f/..", "sw/nx/..", "sw/d/g/..", "..",
      "sw/../..", "sw/ld/../..", "sw/ld/../../..", "sw/d/./.", "sw//f", "sw/d//g"};
  for (unsigned k = 0; k < sizeof names / sizeof *names; k++) {
    const char *p = names[k];
    for (I follow = 0; follow < 2; follow++) {
      memset(&s, 0, sizeof s);
      I e = w_path_filestat_get(3, follow, S(p), P(&s));
      printf("sw-stat-%s-%s %d type=%d\n", follow ? "f" : "n", p, e, e ? -1 : s.type);
      e = w_path_open(3, follow, S(p), 0, RD, ALL, 0, P(&fd));
      memset(buf, 0, 24);
      if (!e) { w_fd_fdstat_get(fd, P(buf)); w_fd_close(fd); }
      printf("sw-open-%s-%s %d type=%d\n", follow ? "f" : "n", p, e, e ? -1 : buf[0]);
      e = w_path_open(3, follow, S(p), DIRECTORY, RD, ALL, 0, P(&fd));
      if (!e) w_fd_close(fd);
      printf("sw-opendir-%s-%s %d\n", follow ? "f" : "n", p, e);
    }
    n = 0;
    I e = w_path_readlink(3, S(p), P(buf), sizeof buf, P(&n));
    printf("sw-readlink-%s %d %.*s\n", p, e, e ? 0 : (int)n, buf);
  }
  /* new names with a trailing slash, and what each call makes of them */
#define SW(what, call) printf("sw-" what " %d\n", (call))
  SW("mkdir-slash", w_path_create_directory(3, S("sw/m1/")));
  SW("mkdir-slash-made", w_path_filestat_get(3, 0, S("sw/m1"), P(&s)));
  SW("create-slash", w_path_open(3, 0, S("sw/c1/"), CREAT, RD | WR, ALL, 0, P(&fd)));
  SW("create-slash-made", w_path_filestat_get(3, 0, S("sw/c1"), P(&s)));
  SW("symlink-slash", w_path_symlink(S("f"), 3, S("sw/s1/")));
  SW("symlink-to-dir-slash", w_path_symlink(S("d"), 3, S("sw/s2/")));
  SW("link-slash", w_path_link(3, 0, S("sw/f"), 3, S("sw/h1/")));
  SW("link-from-slash", w_path_link(3, 0, S("sw/f/"), 3, S("sw/h2")));
  SW("rename-file-slash", w_path_rename(3, S("sw/f"), 3, S("sw/r1/")));
  SW("rename-file-from-slash", w_path_rename(3, S("sw/f/"), 3, S("sw/r2")));
  SW("unlink-file-slash", w_path_unlink_file(3, S("sw/f/")));
  SW("unlink-missing-slash", w_path_unlink_file(3, S("sw/nx/")));
  SW("rmdir-file-slash", w_path_remove_directory(3, S("sw/f/")));
  SW("rmdir-missing-slash", w_path_remove_directory(3, S("sw/nx/")));
  w_path_create_directory(3, S("sw/e"));
  SW("rename-dir-slash", w_path_rename(3, S("sw/e"), 3, S("sw/e2/")));
  SW("rename-dir-slash-back", w_path_rename(3, S("sw/e2/"), 3, S("sw/e")));
  SW("rename-link-slash", w_path_rename(3, S("sw/ld/"), 3, S("sw/ld2")));
  SW("unlink-dir", w_path_unlink_file(3, S("sw/e")));
  SW("unlink-dir-link", w_path_unlink_file(3, S("sw/ld")));
  w_path_symlink(S("d"), 3, S("sw/ld"));
  SW("rmdir-dot", w_path_remove_directory(3, S(".")));
  SW("rmdir-sub-dot", w_path_remove_directory(3, S("sw/e/.")));
  SW("rmdir-link-to-dir", w_path_remove_directory(3, S("sw/ld")));
  /* path_open's flags on each kind of name */
  static const char *const kinds[] = {"sw/f", "sw/d", "sw/lf", "sw/ld", "sw/ldang", "sw/lloop",
                                      "sw/nx"};
  static const struct { const char *name; I oflags; L rights; } how[] = {
      {"dir-creat", DIRECTORY | CREAT, RD}, {"excl", CREAT | EXCL, RD | WR},
      {"excl-only", EXCL, RD}, {"trunc-rd", TRUNC, RD}, {"trunc-rw", TRUNC, RD | WR},
      {"dir-trunc", DIRECTORY | TRUNC, RD}, {"dir-excl", DIRECTORY | EXCL, RD},
      {"dir-rw", DIRECTORY, RD | WR}};
  for (unsigned k = 0; k < sizeof kinds / sizeof *kinds; k++)
    for (unsigned h = 0; h < sizeof how / sizeof *how; h++)
      for (I follow = 0; follow < 2; follow++) {
        I e = w_path_open(3, follow, S(kinds[k]), how[h].oflags, how[h].rights, ALL, 0,
                          P(&fd));
        if (!e) w_fd_close(fd);
        memset(&s, 0, sizeof s);
        w_path_filestat_get(3, 0, S("sw/f"), P(&s));
        printf("sw-oflags-%s-%s-%s %d f-size=%llu\n", how[h].name, follow ? "f" : "n",
               kinds[k], e, (unsigned long long)s.size);
        w_path_unlink_file(3, S("sw/nx"));
        if (s.size == 0) w_fd_close(file("sw/f", "hello"));
      }
  /* fdflags set at open and by fd_fdstat_set_flags, read back */
  static const I flagsets[] = {0, APPEND, NONBLOCK, APPEND | NONBLOCK};
  for (unsigned k = 0; k < 4; k++) {
    I e = w_path_open(3, 0, S("sw/f"), 0, RD | WR, ALL, flagsets[k], P(&fd));
    memset(buf, 0, 24);
    w_fd_fdstat_get(fd, P(buf));
    printf("sw-fdflags-open-%d %d flags=%d", flagsets[k], e, buf[2] | buf[3] << 8);
    for (unsigned j = 0; j < 4; j++) {
      I f = w_fd_fdstat_set_flags(fd, flagsets[j]);
      memset(buf, 0, 24);
      w_fd_fdstat_get(fd, P(buf));
      printf(" set-%d=%d,%d", flagsets[j], f, buf[2] | buf[3] << 8);
    }
    printf("\n");
    w_fd_close(fd);
  }
  w_path_open(3, 0, S("sw/d"), DIRECTORY, RD, ALL, NONBLOCK, P(&fd));
  memset(buf, 0, 24);
  w_fd_fdstat_get(fd, P(buf));
  printf("sw-fdflags-dir-nonblock flags=%d\n", buf[2] | buf[3] << 8);
  w_fd_close(fd);
  /* empty reads and writes on a descriptor that is not open */
  iov z = {P(buf), 0};
  SW("read-zero-closed", w_fd_read(77, P(&z), 1, P(&n)));
  SW("read-none-closed", w_fd_read(77, P(&z), 0, P(&n)));
  SW("write-zero-closed", w_fd_write(77, P(&z), 1, P(&n)));
  SW("pwrite-zero-closed", w_fd_pwrite(77, P(&z), 1, 0, P(&n)));
  SW("pread-zero-closed", w_fd_pread(77, P(&z), 1, 0, P(&n)));
  /* poll_oneoff: no subscription; a relative clock of 0 alone, twice; a clock
   * with a descriptor */
  uint8_t sub[3][48], ev[3][32];
  memset(sub, 0, sizeof sub);
  memset(ev, 0, sizeof ev);
  n = 77;
  SW("poll-zero", w_poll_oneoff(P(sub), P(ev), 0, P(&n)));
  printf("sw-poll-zero-n %u\n", n);
  for (int i = 0; i < 2; i++) {
    sub[i][0] = 10 + i;
    sub[i][8] = 0;                   /* clock */
    uint32_t clock = 1;
    memcpy(sub[i] + 16, &clock, 4);  /* monotonic, timeout 0, relative */
  }
  n = 77;
  I e = w_poll_oneoff(P(sub), P(ev), 1, P(&n));
  printf("sw-poll-clock-0 %d n=%u ud=%d type=%d err=%d\n", e, n, ev[0][0], ev[0][10],
         ev[0][8]);
  n = 77;
  e = w_poll_oneoff(P(sub), P(ev), 2, P(&n));
  printf("sw-poll-two-clocks-0 %d n=%u\n", e, n);
  w_path_open(3, 0, S("sw/f"), 0, RD, ALL, 0, P(&fd));
  memset(sub[2], 0, 48);
  sub[2][0] = 12;
  sub[2][8] = 1;                     /* fd_read */
  memcpy(sub[2] + 16, &fd, 4);
  memcpy(sub[1], sub[2], 48);
  n = 77;
  memset(ev, 0, sizeof ev);
  e = w_poll_oneoff(P(sub[1]), P(ev), 1, P(&n));
  printf("sw-poll-fd %d n=%u ud=%d type=%d err=%d\n", e, n, ev[0][0], ev[0][10], ev[0][8]);
  n = 77;
  memset(ev, 0, sizeof ev);
  e = w_poll_oneoff(P(sub), P(ev), 2, P(&n));
  int fd_seen = 0;
  for (uint32_t i = 0; i < n && i < 3; i++) fd_seen |= ev[i][0] == 12 && ev[i][10] == 1;
  printf("sw-poll-clock-0-and-fd %d fd-reported=%d\n", e, fd_seen);
  w_fd_close(fd);
  n = 77;
  e = w_poll_oneoff(P(sub[1]), P(ev), 1, P(&n));
  printf("sw-poll-fd-closed %d\n", e);
  /* fd_renumber of a file onto itself, then onto the preopen (last: fd 3 is gone) */
  w_path_open(3, 0, S("sw/f"), 0, RD, ALL, 0, P(&fd));
  SW("renumber-file-self", w_fd_renumber(fd, fd));
  SW("renumber-file-self-open", w_fd_fdstat_get(fd, P(buf)));
  SW("renumber-preopen-self", w_fd_renumber(3, 3));
  SW("renumber-onto-preopen", w_fd_renumber(fd, 3));
  memset(buf, 0, 24);
  SW("renumber-onto-preopen-3", w_fd_fdstat_get(3, P(buf)));
  printf("sw-renumber-onto-preopen-type %d\n", buf[0]);
  SW("renumber-onto-preopen-old", w_fd_fdstat_get(fd, P(buf)));
  SW("renumber-onto-preopen-prestat", w_fd_prestat_get(3, P(buf)));
}

static char longpath[8192];

/* "./" repeated, then `name`: a path of `len` bytes that names `name`. */
static const char *padded(int len, const char *name) {
  int nl = (int)strlen(name), k = 0;
  while (k + 2 + nl <= len) { longpath[k++] = '.'; longpath[k++] = '/'; }
  while (k + nl < len) longpath[k++] = '/';
  memcpy(longpath + k, name, nl + 1);
  return longpath;
}

/* Long paths, link targets and names: each call's request or answer larger than a
 * small message_size. */
static void longs(void) {
  static const int lens[] = {100, 900, 1100, 2000, 4000, 4096, 0};
  static char target[8192], buf[8192];
  w_fd_close(file("f", "data"));
  w_path_create_directory(3, S("ld"));
  for (int i = 0; lens[i]; i++) {
    int len = lens[i];
    uint32_t fd = 0, n = 0;
    fst s;
    I e = w_path_open(3, 0, S(padded(len, "f")), 0, RD, ALL, 0, P(&fd));
    if (!e) w_fd_close(fd);
    printf("open-%d %d", len, e);
    printf(" stat=%d", w_path_filestat_get(3, 0, S(padded(len, "f")), P(&s)));
    printf(" mkdir=%d", w_path_create_directory(3, S(padded(len, "m"))));
    printf(" rmdir=%d", w_path_remove_directory(3, S(padded(len, "m"))));
    char lname[32];
    snprintf(lname, sizeof lname, "l%d", len);
    strcpy(target, padded(len, "f"));
    e = w_path_symlink(S(target), 3, S(lname));
    printf(" symlink=%d", e);
    memset(buf, 0, sizeof buf);
    e = w_path_readlink(3, S(lname), P(buf), sizeof buf, P(&n));
    printf(" readlink=%d n=%u same=%d", e, n, e == 0 && n == (uint32_t)len && !memcmp(buf, target, len));
    e = w_path_readlink(3, S(lname), P(buf), 10, P(&n));
    printf(" readlink-10=%d n=%u", e, n);
    e = w_path_open(3, 1, S(lname), 0, RD, ALL, 0, P(&fd));
    if (!e) w_fd_close(fd);
    printf(" through=%d", e);
    strcpy(target, padded(len, "f"));
    e = w_path_rename(3, S(target), 3, S(padded(len, "g")));
    printf(" rename=%d", e);
    e = w_path_rename(3, S("g"), 3, S("f"));
    printf(" back=%d", e);
    strcpy(target, padded(len, "f"));
    e = w_path_link(3, 0, S(target), 3, S(padded(len, "h")));
    printf(" link=%d", e);
    printf(" unlink=%d\n", w_path_unlink_file(3, S(padded(len, "h"))));
  }
  /* O_CREAT through a link to nothing, whose target is long: makes the target */
  for (int i = 0; lens[i]; i++) {
    char lname[32];
    uint32_t fd = 0;
    fst s;
    snprintf(lname, sizeof lname, "dl%d", lens[i]);
    strcpy(target, padded(lens[i] - 10, "made-long"));
    printf("dangling-%d symlink=%d", lens[i], w_path_symlink(S(target), 3, S(lname)));
    I e = w_path_open(3, 1, S(lname), CREAT, RD | WR, ALL, 0, P(&fd));
    if (!e) w_fd_close(fd);
    printf(" creat=%d made=%d", e, w_path_filestat_get(3, 0, S("made-long"), P(&s)));
    printf(" unlink=%d\n", w_path_unlink_file(3, S("made-long")));
  }
  /* a target of characters of two bytes, longer than one answer */
  for (int len = 1000; len <= 3000; len += 1000) {
    char lname[32];
    uint32_t n = 0;
    int k = 0;
    while (k + 2 <= len) { target[k++] = (char)0xc3; target[k++] = (char)0xa9; }
    target[k] = 0;
    snprintf(lname, sizeof lname, "u%d", len);
    printf("utf8-%d symlink=%d", len, w_path_symlink(S(target), 3, S(lname)));
    memset(buf, 0, sizeof buf);
    I e = w_path_readlink(3, S(lname), P(buf), sizeof buf, P(&n));
    printf(" readlink=%d n=%u same=%d", e, n, e == 0 && n == (uint32_t)k && !memcmp(buf, target, k));
    e = w_path_readlink(3, S(lname), P(buf), 1001, P(&n));
    printf(" readlink-1001=%d n=%u last=%02x\n", e, n, n ? (uint8_t)buf[n - 1] : 0);
  }
  /* names of 255 bytes, listed through one buffer */
  for (int i = 0; i < 12; i++) {
    char name[300];
    memset(name, 'a' + i, 255);
    name[255] = 0;
    memcpy(name, "ld/", 3);
    w_fd_close(file(name, ""));
  }
  uint32_t d = 0, used = 0;
  w_path_open(3, 0, S("ld"), DIRECTORY, 0, ALL, 0, P(&d));
  I e = w_fd_readdir(d, P(buf), sizeof buf, 0, P(&used));
  int count = 0;
  for (uint32_t pos = 0; pos + 24 <= used;) {
    uint32_t len;
    memcpy(&len, buf + pos + 16, 4);
    count++;
    pos += 24 + len;
  }
  printf("readdir-long-names %d used=%u entries=%d\n", e, used, count);
}

static uint8_t dirbuf[1 << 20];

/* A directory of 2,500 entries, listed through one large buffer and
 * through libc: every entry, and a short answer only at the end. */
static void bigdir(void) {
  char name[64];
  w_path_create_directory(3, S("big"));
  for (int i = 0; i < 2500; i++) {       /* more than one page (LIST_PAGE_ENTRIES) */
    snprintf(name, sizeof name, "big/entry-with-a-longish-name-%05d", i);
    w_fd_close(file(name, ""));
  }
  uint32_t d = 0;
  w_path_open(3, 0, S("big"), DIRECTORY, 0, ALL, 0, P(&d));
  static const uint32_t sizes[] = {1 << 20, 200000, 65536, 4096, 0};
  for (int k = 0; sizes[k]; k++) {
    uint64_t cookie = 0;
    int entries = 0;
    for (;;) {
      uint32_t used = 0;
      I e = w_fd_readdir(d, P(dirbuf), sizes[k], cookie, P(&used));
      if (e) { printf("readdir-error %d\n", e); break; }
      uint32_t pos = 0;
      int got = 0;
      while (pos + 24 <= used) {
        uint32_t len;
        memcpy(&len, dirbuf + pos + 16, 4);
        if (pos + 24 + len > used) break;
        memcpy(&cookie, dirbuf + pos, 8);
        pos += 24 + len;
        got++;
      }
      entries += got;
      if (used < sizes[k]) break;
      if (!got) break;
    }
    /* what a program that trusts a short answer as the end (wasi-libc) lists */
    uint32_t used = 0;
    w_fd_readdir(d, P(dirbuf), sizes[k], 0, P(&used));
    int first = 0;
    for (uint32_t pos = 0; pos + 24 <= used;) {
      uint32_t len;
      memcpy(&len, dirbuf + pos + 16, 4);
      if (pos + 24 + len > used) break;
      pos += 24 + len;
      first++;
    }
    printf("bigdir-%u entries=%d first-call=%d full=%d\n", sizes[k], entries,
           first, used == sizes[k]);
  }
}

/* The newest wasi-testsuite's programs find their scratch directory as the
 * preopen named "/" (a test's `root`) and open "." in it with the preopen's own
 * rights, base and inheriting; then each checks what this part makes, in order:
 * dir_fd_op_failures, path_open_preopen, path_open_nonblock, nofollow_errors,
 * path_link, fstflags_validate and fd_filestat_set, the C programs' relative
 * paths through libc, poll_oneoff_stdio, close_preopen, overwrite_preopen, and
 * stdio (which renumbers fd 0, 1 and 2 away: it comes last, and its lines go
 * out through whichever descriptor then holds stdout). */
static I root_fd(void) {
  for (I fd = 3; fd < 9; fd++) {
    uint8_t pre[8] = {0};
    char name[64] = {0};
    if (w_fd_prestat_get(fd, P(pre))) break;
    uint32_t len;
    memcpy(&len, pre + 4, 4);
    if (pre[0] != 0 || len >= sizeof name || w_fd_prestat_dir_name(fd, P(name), len)) continue;
    if (!strcmp(name, "/")) return fd;
  }
  return -1;
}

static void root(void) {
  I pre = root_fd();
  printf("root-preopen %d\n", pre);
  uint8_t st[24] = {0};
  uint64_t base = 0, inh = 0;
  printf("root-fdstat %d type=%d\n", w_fd_fdstat_get(pre, P(st)), st[0]);
  memcpy(&base, st + 8, 8);
  memcpy(&inh, st + 16, 8);
  /* path_open_preopen: what "various userland implementations expect" */
  const uint64_t want_base = 0x200 | 0x400 | 0x800 | 0x1000 | 0x2000 | 0x4000 | 0x8000 |
                             0x10000 | 0x20000 | 0x1000000 | 0x2000000 | 0x4000000 |
                             0x40000 | 0x100000 | 0x200000 | 0x800000;
  const uint64_t want_inh = want_base | 1 | 2 | 4 | 8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 |
                            0x400000 | 0x8000000;
  printf("root-rights-missing base=%#llx inheriting=%#llx\n",
         (unsigned long long)(want_base & ~base), (unsigned long long)(want_inh & ~inh));
  uint32_t d = 0, f = 0;
  printf("root-open-dot %d\n", w_path_open(pre, 0, S("."), DIRECTORY, (L)base, (L)inh, 0, P(&d)));
  memset(st, 0, sizeof st);
  printf("root-dot-fdstat %d type=%d flags=%d\n", w_fd_fdstat_get(d, P(st)), st[0], st[2]);
  fst s;
  memset(&s, 0, sizeof s);
  printf("root-dot-filestat %d type=%d\n", w_fd_filestat_get(d, P(&s)), s.type);
  /* dir_fd_op_failures */
  char name[16] = {0};
  printf("root-name-0 %d\n", w_fd_prestat_dir_name(pre, P(name), 0));
  printf("root-name-longer %d [%s]\n", w_fd_prestat_dir_name(pre, P(name), 2), name);
  char buf[128];
  iov v = {P(buf), sizeof buf};
  uint32_t n = 0;
  uint64_t at = 0;
  printf("root-dir-read %d\n", w_fd_read(d, P(&v), 1, P(&n)));
  printf("root-dir-pread %d\n", w_fd_pread(d, P(&v), 1, 0, P(&n)));
  printf("root-dir-write %d\n", w_fd_write(d, P(&v), 1, P(&n)));
  printf("root-dir-pwrite %d\n", w_fd_pwrite(d, P(&v), 1, 0, P(&n)));
  for (I whence = 0; whence < 3; whence++)
    printf("root-dir-seek-%d %d\n", whence, w_fd_seek(d, 0, whence, P(&at)));
  printf("root-dir-tell %d\n", w_fd_tell(d, P(&at)));
  printf("root-dir-allocate %d\n", w_fd_allocate(d, 0, 1));
  printf("root-dir-set-size %d\n", w_fd_filestat_set_size(d, 0));
  /* path_open_preopen and path_open_nonblock */
  static const struct { const char *name; I oflags; L rights; I fdflags; } dots[] = {
      {"same", 0, -1, 0}, {"empty", 0, 0, 0}, {"dir-empty", DIRECTORY, 0, 0},
      {"dir-read", DIRECTORY, RD, 0}, {"dir-rw", DIRECTORY, RD | WR, 0},
      {"nonblock", 0, 0, NONBLOCK}};
  for (unsigned k = 0; k < sizeof dots / sizeof *dots; k++) {
    L rights = dots[k].rights < 0 ? (L)base : dots[k].rights;
    L inherit = dots[k].rights < 0 ? (L)inh : 0;
    I e = w_path_open(pre, 0, S("."), dots[k].oflags, rights, inherit, dots[k].fdflags, P(&f));
    printf("root-open-%s %d\n", dots[k].name, e);
    if (!e) w_fd_close(f);
  }
  /* nofollow_errors: a link to a directory, then to a file */
  printf("nf-mkdir %d\n", w_path_create_directory(d, S("target")));
  printf("nf-symlink %d\n", w_path_symlink(S("target"), d, S("symlink")));
  for (int round = 0; round < 2; round++) {
    const char *r = round ? "file" : "dir";
    I e = w_path_open(d, 0, S("symlink"), DIRECTORY, 0, 0, 0, P(&f));
    printf("nf-%s-directory-nofollow %d\n", r, e);
    e = w_path_open(d, 0, S("symlink"), 0, 0, 0, 0, P(&f));
    printf("nf-%s-nofollow %d\n", r, e);
    e = w_path_open(d, 1, S("symlink"), DIRECTORY, 0, 0, 0, P(&f));
    printf("nf-%s-directory-follow %d\n", r, e);
    if (!e) w_fd_close(f);
    if (!round) {
      w_path_unlink_file(d, S("symlink"));
      printf("nf-rmdir %d\n", w_path_remove_directory(d, S("target")));
      printf("nf-creat %d\n", w_path_open(d, 0, S("target"), CREAT, 0, 0, 0, P(&f)));
      w_fd_close(f);
      printf("nf-symlink-file %d\n", w_path_symlink(S("target"), d, S("symlink")));
    }
  }
  w_path_unlink_file(d, S("symlink"));
  /* path_link: a link opened with the rights its source was opened with */
  const L lr = RD | 0x800 | 0x1000 | 0x200000 | 0x2000 | 0x4000000;
  uint32_t a = 0, b = 0;
  printf("link-open %d\n", w_path_open(d, 0, S("target"), 0, lr, lr, 0, P(&a)));
  printf("link %d\n", w_path_link(d, 0, S("target"), d, S("link")));
  printf("link-open-link %d\n", w_path_open(d, 0, S("link"), 0, lr, lr, 0, P(&b)));
  fst x, y;
  uint8_t xs[24] = {0}, ys[24] = {0};
  w_fd_filestat_get(a, P(&x));
  w_fd_filestat_get(b, P(&y));
  w_fd_fdstat_get(a, P(xs));
  w_fd_fdstat_get(b, P(ys));
  printf("link-same-file %d nlink=%llu\n", x.dev == y.dev && x.ino == y.ino && x.nlink == y.nlink &&
         x.atim == y.atim && x.mtim == y.mtim && x.ctim == y.ctim && x.size == y.size,
         (unsigned long long)y.nlink);
  printf("link-same-fdstat flags=%d rights=%d\n", xs[2] == ys[2], !memcmp(xs + 8, ys + 8, 16));
  w_fd_close(b);
  printf("link-onto-slash %d\n", w_path_link(d, 0, S("target"), d, S("new/")));
  printf("link-follow %d\n", w_path_link(d, 1, S("link"), d, S("new")));
  w_path_unlink_file(d, S("link"));
  /* fstflags_validate and fd_filestat_set */
  printf("times-mtim-and-now %d\n", w_fd_filestat_set_times(a, 100, 200, 4 | 8));
  printf("times-atim-and-now %d\n", w_fd_filestat_set_times(a, 100, 200, 1 | 2));
  w_fd_close(a);
  printf("fs-open %d\n", w_path_open(d, 0, S("target"), 0, RD | WR | 0x200000 | 0x400000 | 0x800000,
                                     0, 0, P(&a)));
  printf("fs-set-size %d\n", w_fd_filestat_set_size(a, 100));
  w_fd_filestat_get(a, P(&x));
  printf("fs-set-mtim %d\n", w_fd_filestat_set_times(a, x.mtim - 100, x.mtim - 100, 4));
  w_fd_filestat_get(a, P(&y));
  printf("fs-after size=%llu mtim=%d atim=%d\n", (unsigned long long)y.size,
         y.mtim == x.mtim - 100, y.atim == x.atim);
  w_fd_close(a);
  w_path_unlink_file(d, S("target"));
  /* the C programs: paths relative to "/", as libc resolves them */
  FILE *fp = fopen("file", "w");
  printf("libc-fopen-w %d\n", fp != NULL);
  if (fp) fclose(fp);
  fp = fopen("file", "r");
  printf("libc-fopen-r %d\n", fp != NULL);
  if (fp) printf("libc-fclose %d\n", fclose(fp));
  fp = fopen("/file", "r");
  printf("libc-fopen-absolute %d\n", fp != NULL);
  if (fp) fclose(fp);
  w_path_unlink_file(d, S("file"));
  /* poll_oneoff_stdio: stdin read with a clock, then stdout and stderr write */
  uint8_t sub[3][48], ev[3][32];
  uint64_t timeout = 200000000, ud;
  memset(sub, 0, sizeof sub);
  memset(ev, 0, sizeof ev);
  ud = 0x12345678;
  memcpy(sub[0], &ud, 8);
  sub[0][8] = 0;
  sub[0][16] = 1;
  memcpy(sub[0] + 24, &timeout, 8);
  ud = 0x876543210ULL;
  memcpy(sub[1], &ud, 8);
  sub[1][8] = 1;
  printf("poll-stdin %d", w_poll_oneoff(P(sub), P(ev), 2, P(&n)));
  for (uint32_t k = 0; k < n; k++) {
    memcpy(&ud, ev[k], 8);
    printf(" [%llx type=%d err=%d]", (unsigned long long)ud, ev[k][10], ev[k][8]);
  }
  printf("\n");
  memset(sub, 0, sizeof sub);
  memset(ev, 0, sizeof ev);
  for (I k = 0; k < 2; k++) {
    ud = (uint64_t)k + 1;
    I fd = k + 1;
    memcpy(sub[k], &ud, 8);
    sub[k][8] = 2;
    memcpy(sub[k] + 16, &fd, 4);
  }
  ud = 0x12345678;
  memcpy(sub[2], &ud, 8);
  sub[2][16] = 1;
  memcpy(sub[2] + 24, &timeout, 8);
  printf("poll-stdout-stderr %d", w_poll_oneoff(P(sub), P(ev), 3, P(&n)));
  for (uint32_t k = 0; k < n; k++) {
    memcpy(&ud, ev[k], 8);
    printf(" [%llx type=%d err=%d]", (unsigned long long)ud, ev[k][10], ev[k][8]);
  }
  printf("\n");
  /* overwrite_preopen, then close_preopen (of what now has its number) */
  uint32_t sd = 0;
  w_path_create_directory(d, S("sub"));
  printf("overwrite-open %d\n", w_path_open(d, 0, S("sub"), DIRECTORY, 0x200000, 0, 0, P(&sd)));
  w_fd_filestat_get(sd, P(&x));
  printf("overwrite-renumber %d\n", w_fd_renumber(sd, pre));
  memset(&y, 0, sizeof y);
  printf("overwrite-filestat %d same=%d\n", w_fd_filestat_get(pre, P(&y)),
         x.dev == y.dev && x.ino == y.ino);
  printf("overwrite-old-fdstat %d\n", w_fd_fdstat_get(sd, P(st)));
  printf("close-preopen %d\n", w_fd_close(pre));
  memset(st, 0, sizeof st);
  printf("close-dot-fdstat %d type=%d\n", w_fd_fdstat_get(d, P(st)), st[0]);
  printf("close-preopen-fdstat %d\n", w_fd_fdstat_get(pre, P(st)));
  w_path_remove_directory(d, S("sub"));
  /* stdio: each of 0, 1, 2 renumbered onto a file just made */
  fflush(stdout);
  char out[512];
  int len = 0;
  I now = 1;                      /* where stdout is: fd 1, until it is renumbered */
  for (I from = 0; from < 3; from++) {
    uint32_t to = 0;
    I e = w_path_open(d, 0, S("file.cleanup"), CREAT, 0, 0, 0, P(&to));
    I r = w_fd_renumber(from, (I)to);
    I g = w_fd_fdstat_get((I)to, P(st));
    I h = w_fd_fdstat_get(from, P(st));
    I u = w_path_unlink_file(d, S("file.cleanup"));
    if (from == 1 && !r) now = (I)to;
    len += snprintf(out + len, sizeof out - len,
                    "stdio-%d open=%d renumber=%d to-fdstat=%d from-fdstat=%d unlink=%d\n",
                    from, e, r, g, h, u);
  }
  iov o = {P(out), (uint32_t)len};
  w_fd_write(now, P(&o), 1, P(&n));
}

/* Every preopen: its number, kind and name; then a file opened through each. */
static void preopens(void) {
  for (I fd = 3; fd < 9; fd++) {
    uint8_t pre[8] = {0};
    char name[64] = {0};
    I e = w_fd_prestat_get(fd, P(pre));
    uint32_t len;
    memcpy(&len, pre + 4, 4);
    I f = e ? e : w_fd_prestat_dir_name(fd, P(name), len < 63 ? len : 63);
    printf("preopen-%d %d %d tag=%d len=%u name=[%s]\n", fd, e, f, pre[0], e ? 0 : len, name);
  }
  FILE *f = fopen("rel.txt", "w");
  printf("fopen-relative %d\n", f != NULL);
  if (f) fclose(f);
  f = fopen("/second/abs.txt", "w");
  printf("fopen-second %d\n", f != NULL);
  if (f) fclose(f);
  f = fopen("fs-tests.dir/x.txt", "w");
  printf("fopen-third %d\n", f != NULL);
  if (f) fclose(f);
}

/* Every change, on every kind of name, in a tree the host made (for a grant
 * that may be read-only): the errno of each. */
static void changes(void) {
  static const char *paths[] = {
      "of", "od", "oe", "olf", "old", "odang", "oloop", "of/", "od/", "olf/", "old/",
      "odang/", ".", "", "od/..", "od/inner", "od/up", "od/upf", "old/inner", "onew",
      "onew/", "of/x", "../x", "/x", 0};
  static const char *ops[] = {"mkdir", "rmdir", "unlink", "symlink", "times0", "times1",
                              "times-none", "link-to", "link-from", "rename-from",
                              "rename-to", "creat", "creat-excl", "trunc", "open-w",
                              "open-r", 0};
  for (int o = 0; ops[o]; o++)
    for (int p = 0; paths[p]; p++) {
      const char *path = paths[p], *op = ops[o];
      uint32_t fd = 0;
      I e;
      if (!strcmp(op, "mkdir")) e = w_path_create_directory(3, S(path));
      else if (!strcmp(op, "rmdir")) e = w_path_remove_directory(3, S(path));
      else if (!strcmp(op, "unlink")) e = w_path_unlink_file(3, S(path));
      else if (!strcmp(op, "symlink")) e = w_path_symlink(S("x"), 3, S(path));
      else if (!strcmp(op, "times0")) e = w_path_filestat_set_times(3, 0, S(path), 0, 7000000000LL, 4);
      else if (!strcmp(op, "times1")) e = w_path_filestat_set_times(3, 1, S(path), 0, 7000000000LL, 4);
      else if (!strcmp(op, "times-none")) e = w_path_filestat_set_times(3, 1, S(path), 0, 0, 0);
      else if (!strcmp(op, "link-to")) e = w_path_link(3, 0, S("of"), 3, S(path));
      else if (!strcmp(op, "link-from")) e = w_path_link(3, 0, S(path), 3, S("lnew"));
      else if (!strcmp(op, "rename-from")) e = w_path_rename(3, S(path), 3, S("rnew"));
      else if (!strcmp(op, "rename-to")) e = w_path_rename(3, S("of"), 3, S(path));
      else {
        I oflags = !strcmp(op, "creat") ? CREAT : !strcmp(op, "creat-excl") ? CREAT | EXCL
                 : !strcmp(op, "trunc") ? TRUNC : 0;
        L rights = !strcmp(op, "open-r") ? RD : RD | WR;
        e = w_path_open(3, 1, S(path), oflags, rights, ALL, 0, P(&fd));
        if (!e && !strcmp(op, "open-r")) {
          uint32_t n = 0;
          iov v = {P("X"), 1};
          uint64_t at = 0;
          printf("%s[%s] %d write=%d pwrite=%d size=%d times=%d flags=%d allocate=%d "
                 "sync=%d seek=%d\n", op, path, e, w_fd_write(fd, P(&v), 1, P(&n)),
                 w_fd_pwrite(fd, P(&v), 1, 0, P(&n)), w_fd_filestat_set_size(fd, 0),
                 w_fd_filestat_set_times(fd, 0, 7000000000LL, 4),
                 w_fd_fdstat_set_flags(fd, APPEND), w_fd_allocate(fd, 0, 100), w_fd_sync(fd),
                 w_fd_seek(fd, 0, 0, P(&at)));
          w_fd_close(fd);
          continue;
        }
        if (!e) w_fd_close(fd);
      }
      printf("%s[%s] %d\n", op, path, e);
    }
  /* the preopen itself */
  printf("preopen-times %d\n", w_fd_filestat_set_times(3, 0, 7000000000LL, 4));
  printf("preopen-sync %d\n", w_fd_sync(3));
  uint32_t d = 0;
  printf("open-od %d\n", w_path_open(3, 0, S("od"), DIRECTORY, 0, ALL, 0, P(&d)));
  printf("od-times %d\n", w_fd_filestat_set_times(d, 0, 7000000000LL, 4));
  printf("od-mkdir %d\n", w_path_create_directory(d, S("x")));
}

/* Offsets and sizes past 2^31 and 2^32 (sparse files). */
static void bigoff(void) {
  static const L offs[] = {0x7fffffffLL, 0x80000000LL, 0xffffffffLL, 0x100000005LL,
                           1LL << 40, (1LL << 44) - 1, 0};
  for (int i = 0; offs[i]; i++) {
    char name[32];
    snprintf(name, sizeof name, "sparse%d", i);
    I fd = file(name, "");
    uint32_t n = 0;
    uint64_t at = 0;
    iov w = {P("XYZ"), 3};
    I e = w_fd_pwrite(fd, P(&w), 1, offs[i], P(&n));
    printf("pwrite-%d %d n=%u size=%llu", i, e, n, (unsigned long long)size_of(fd));
    char buf[4] = {0};
    iov r = {P(buf), 3};
    e = w_fd_pread(fd, P(&r), 1, offs[i] + 1, P(&n));
    printf(" pread=%d n=%u [%.2s]", e, n, buf);
    e = w_fd_seek(fd, offs[i] + 7, 0, P(&at));
    printf(" seek=%d at=%llu", e, (unsigned long long)at);
    e = w_fd_write(fd, P(&w), 1, P(&n));
    printf(" write=%d size=%llu tell=%llu", e, (unsigned long long)size_of(fd),
           (unsigned long long)tell(fd));
    e = w_fd_seek(fd, -3, 2, P(&at));
    memset(buf, 0, sizeof buf);
    w_fd_read(fd, P(&r), 1, P(&n));
    printf(" end-read=%d [%.3s]", e, buf);
    e = w_fd_filestat_set_size(fd, offs[i] * 2);
    printf(" grow=%d size=%llu", e, (unsigned long long)size_of(fd));
    e = w_fd_filestat_set_size(fd, 1);
    printf(" shrink=%d size=%llu\n", e, (unsigned long long)size_of(fd));
    w_fd_close(fd);
    w_path_unlink_file(3, S(name));
  }
}

/* A directory descriptor whose directory is moved (within the grant). */
static void moved(void) {
  uint32_t d = 0, f = 0, n = 0;
  fst s;
  static uint8_t buf[4096];
  w_path_create_directory(3, S("m1"));
  w_path_create_directory(3, S("deep"));
  w_fd_close(file("m1/a", "A"));
  printf("open-m1 %d\n", w_path_open(3, 0, S("m1"), DIRECTORY, 0, ALL, 0, P(&d)));
  printf("rename-m1 %d\n", w_path_rename(3, S("m1"), 3, S("deep/m2")));
  printf("open-a %d\n", w_path_open(d, 0, S("a"), 0, RD, ALL, 0, P(&f)));
  w_fd_close(f);
  printf("create-b %d\n", w_path_open(d, 0, S("b"), CREAT, RD | WR, ALL, 0, P(&f)));
  w_fd_close(f);
  printf("b-there %d\n", w_path_filestat_get(3, 0, S("deep/m2/b"), P(&s)));
  printf("readdir %d", w_fd_readdir(d, P(buf), sizeof buf, 0, P(&n)));
  printf(" used=%u\n", n);
  printf("mkdir %d\n", w_path_create_directory(d, S("sub")));
  printf("symlink %d\n", w_path_symlink(S("a"), d, S("la")));
  printf("rename-inside %d\n", w_path_rename(d, S("a"), d, S("c")));
  printf("link-inside %d\n", w_path_link(d, 0, S("c"), d, S("c2")));
  printf("unlink %d\n", w_path_unlink_file(d, S("c2")));
  printf("rename-to-preopen %d\n", w_path_rename(d, S("c"), 3, S("top-c")));
  printf("rename-from-preopen %d\n", w_path_rename(3, S("deep"), 3, S("deeper")));
  printf("stat-dotdot %d\n", w_path_filestat_get(d, 0, S(".."), P(&s)));
  printf("fstat %d type=%d\n", w_fd_filestat_get(d, P(&s)), s.type);
  printf("set-times %d\n", w_fd_filestat_set_times(d, 0, 5000000000LL, 4));
  printf("sync %d\n", w_fd_sync(d));
  printf("rmdir-sub %d\n", w_path_remove_directory(d, S("sub")));
  /* a directory whose name was taken by a file, and one removed, while open */
  uint32_t t = 0, g = 0;
  w_path_create_directory(3, S("taken"));
  w_path_create_directory(3, S("gone"));
  w_path_open(3, 0, S("taken"), DIRECTORY, 0, ALL, 0, P(&t));
  w_path_open(3, 0, S("gone"), DIRECTORY, 0, ALL, 0, P(&g));
  w_path_rename(3, S("taken"), 3, S("taken-moved"));
  w_fd_close(file("taken", "decoy"));
  w_fd_close(file("x", "x"));
  printf("rename-into-taken %d\n", w_path_rename(3, S("x"), t, S("y")));
  printf("link-into-taken %d\n", w_path_link(3, 0, S("x"), t, S("y2")));
  printf("rmdir-gone %d\n", w_path_remove_directory(3, S("gone")));
  printf("rename-into-gone %d\n", w_path_rename(3, S("x"), g, S("y")));
  printf("link-into-gone %d\n", w_path_link(3, 0, S("x"), g, S("y")));
  printf("rename-from-gone %d\n", w_path_rename(g, S("y"), 3, S("z")));
  printf("x-there %d\n", w_path_filestat_get(3, 0, S("x"), P(&s)));
}

/* Rename and link between descriptors of directories opened by every way of
 * naming them: through links, '..', trailing slashes, another descriptor. */
static void reached(void) {
  static const char *ways[] = {"od", "od/", "old", "old/", "od/../oe", "old/../oe", "od/up/oe",
                               "./od//", "od/deep/..", "odl2", 0};
  w_path_create_directory(3, S("od"));
  w_path_create_directory(3, S("oe"));
  w_path_create_directory(3, S("od/deep"));
  w_path_symlink(S("od"), 3, S("old"));
  w_path_symlink(S(".."), 3, S("od/up"));
  w_path_symlink(S("old"), 3, S("odl2"));
  for (int i = 0; ways[i]; i++) {
    uint32_t d = 0, sub = 0;
    fst s;
    I e = w_path_open(3, 1, S(ways[i]), DIRECTORY, 0, ALL, 0, P(&d));
    w_fd_close(file("x", "x"));
    I r1 = w_path_rename(3, S("x"), d, S("y"));
    I r2 = w_path_rename(d, S("y"), 3, S("x"));
    I l1 = w_path_link(3, 0, S("x"), d, S("h"));
    I u1 = w_path_unlink_file(d, S("h"));
    /* a descriptor opened through this one */
    I e2 = w_path_open(d, 1, S("."), DIRECTORY, 0, ALL, 0, P(&sub));
    I r3 = w_path_rename(3, S("x"), sub, S("z"));
    I r4 = w_path_rename(sub, S("z"), d, S("w"));
    I st = w_path_filestat_get(d, 0, S("w"), P(&s));
    w_path_unlink_file(d, S("w"));
    printf("way[%s] open=%d r1=%d r2=%d l1=%d u1=%d sub=%d r3=%d r4=%d st=%d\n", ways[i], e, r1,
           r2, l1, u1, e2, r3, r4, st);
    w_fd_close(sub);
    w_fd_close(d);
    w_path_unlink_file(3, S("x"));
  }
}

/* The newest suite's programs in the directory each makes for itself: create_tmp_dir
 * under the root preopen's "." opened with its own rights, asking for exactly the
 * rights the suite's helper asks for (and files opened there with those the programs
 * ask for); then, program by program, the calls each asserts about, with the
 * values they check printed ("1" where a program requires equality). */
#define R_(n) (1LL << (n))
static const L TMP_BASE = R_(21) | R_(14) | R_(10) | R_(9) | R_(25) | R_(13) | R_(26) | R_(11) |
                          R_(12) | R_(15) | R_(16) | R_(17) | R_(18) | R_(19) | R_(20) | R_(24);
static const L TMP_INH = R_(1) | R_(6) | R_(14) | R_(21) | R_(2) | R_(11) | R_(12) | R_(13) |
                         R_(26) | R_(18) | R_(3) | R_(4) | R_(5) | R_(7) | R_(8) | R_(22) | R_(23);

static I tmpdir(I base, const char *name, const char *tag) {
  uint32_t fd = 0;
  I m = w_path_create_directory(base, S(name));
  I e = w_path_open(base, 0, S(name), DIRECTORY, TMP_BASE, TMP_INH, 0, P(&fd));
  printf("%s-tmpdir %d %d\n", tag, m, e);
  return e ? -1 : (I)fd;
}

static void untmp(I base, I d, const char *name, const char *tag) {
  I c = w_fd_close(d);
  printf("%s-cleanup %d %d\n", tag, c, w_path_remove_directory(base, S(name)));
}

static void mkfile(I d, const char *name) {         /* the suite's create_file */
  uint32_t fd = 0;
  if (!w_path_open(d, 0, S(name), CREAT, 0, 0, 0, P(&fd))) w_fd_close(fd);
}

static uint64_t rights_of(I fd) {
  uint8_t st[24] = {0};
  uint64_t base = 0;
  w_fd_fdstat_get(fd, P(st));
  memcpy(&base, st + 8, 8);
  return base;
}

static I rd(I fd, void *buf, uint32_t len, uint32_t *n) {
  iov v = {P(buf), len};
  *n = 0;
  return w_fd_read(fd, P(&v), 1, P(n));
}

static I wr(I fd, const void *buf, uint32_t len, uint32_t *n) {
  iov v = {P(buf), len};
  *n = 0;
  return w_fd_write(fd, P(&v), 1, P(n));
}

void c_programs(void);
void c_nodir(void);

static void scratch(void) {
  I pre = root_fd();
  uint8_t st[24] = {0};
  uint64_t base = 0, inh = 0, at = 0;
  w_fd_fdstat_get(pre, P(st));
  memcpy(&base, st + 8, 8);
  memcpy(&inh, st + 16, 8);
  uint32_t r = 0, f = 0, g = 0, n = 0;
  printf("open-root %d\n", w_path_open(pre, 0, S("."), DIRECTORY, (L)base, (L)inh, 0, P(&r)));
  I root = (I)r, d;
  /* dir_fd_op_failures: an empty Vec's buffer, at Rust's dangling address 1 (in the
   * null page wsuper build's modules keep no-access: nothing is written there) */
  printf("pn-dangling %d\n", w_fd_prestat_dir_name(pre, 1, 0));
  fst x, y, z;
  char buf[128];
  /* fd_fdstat_set_rights */
  d = tmpdir(root, "rights_dir.cleanup", "sr");
  memset(st, 0, sizeof st);
  w_fd_fdstat_get(d, P(st));
  uint64_t db = 0, di = 0;
  memcpy(&db, st + 8, 8);
  memcpy(&di, st + 16, 8);
  printf("sr-supports %d\n", w_fd_fdstat_set_rights(d, (L)db, (L)di));
  printf("sr-open %d\n", w_path_open(d, 0, S("file.cleanup"), CREAT, RD | WR | 4 | 0x20, 0, 0,
                                     P(&f)));
  I e1 = wr(f, "\0\1\2\3", 4, &n), e2 = w_fd_seek(f, 0, 0, P(&at));
  memset(buf, 9, 4);
  I e3 = rd(f, buf, 4, &g);
  printf("sr-rw %d %d %d n=%u same=%d\n", e1, e2, e3, g, !memcmp(buf, "\0\1\2\3", 4));
  uint64_t fb = rights_of(f);
  printf("sr-drop %d\n", w_fd_fdstat_set_rights(f, (L)(fb & ~(uint64_t)(RD | WR)), 0));
  fb = rights_of(f);
  printf("sr-after rw=%d seek=%d\n", (fb & (RD | WR)) != 0, (fb & 4) != 0);
  printf("sr-read-dropped %d\n", rd(f, buf, 4, &n));
  printf("sr-write-dropped %d\n", wr(f, buf, 4, &n));
  printf("sr-regrant %d\n", w_fd_fdstat_set_rights(f, (L)fb | RD | WR | 4 | 0x20, RD | WR | 4 | 0x20));
  w_fd_close(f);
  printf("sr-unlink %d\n", w_path_unlink_file(d, S("file.cleanup")));
  untmp(root, d, "rights_dir.cleanup", "sr");
  /* fd_flags_set, in the root */
  static char zeros[100], ones[100], twos[100], got[100];
  memset(ones, 1, 100);
  memset(twos, 2, 100);
  printf("ff-open %d\n", w_path_open(root, 0, S("fd_flags_set_file.cleanup"), CREAT,
                                     RD | WR | 4 | 0x20 | 8, 0, APPEND, P(&f)));
  e1 = wr(f, zeros, 100, &n);
  w_fd_seek(f, 0, 0, P(&at));
  e2 = rd(f, got, 100, &g);
  printf("ff-first %d n=%u %d n=%u same=%d\n", e1, n, e2, g, !memcmp(got, zeros, 100));
  w_fd_seek(f, 0, 0, P(&at));
  e1 = wr(f, ones, 100, &n);
  w_fd_seek(f, 100, 0, P(&at));
  e2 = rd(f, got, 100, &g);
  printf("ff-appended %d n=%u %d n=%u same=%d\n", e1, n, e2, g, !memcmp(got, ones, 100));
  printf("ff-flags-off %d\n", w_fd_fdstat_set_flags(f, 0));
  w_fd_seek(f, 0, 0, P(&at));
  e1 = wr(f, twos, 100, &n);
  w_fd_seek(f, 0, 0, P(&at));
  e2 = rd(f, got, 100, &g);
  printf("ff-overwritten %d n=%u %d n=%u same=%d\n", e1, n, e2, g, !memcmp(got, twos, 100));
  w_fd_close(f);
  memset(&x, 0, sizeof x);
  printf("ff-size %d size=%llu\n", w_path_filestat_get(root, 0, S("fd_flags_set_file.cleanup"),
                                                     P(&x)), (unsigned long long)x.size);
  w_path_unlink_file(root, S("fd_flags_set_file.cleanup"));
  /* file_pread_pwrite */
  d = tmpdir(root, "file_pread_pwrite_dir.cleanup", "pp");
  printf("pp-open %d\n", w_path_open(d, 0, S("file"), CREAT, RD | 4 | WR, 0, 0, P(&f)));
  iov w1 = {P("\0\1\2\3"), 4};
  e1 = w_fd_pwrite(f, P(&w1), 1, 0, P(&n));
  memset(buf, 9, 8);
  iov r1 = {P(buf), 4};
  e2 = w_fd_pread(f, P(&r1), 1, 0, P(&g));
  printf("pp-at-0 %d n=%u %d n=%u same=%d\n", e1, n, e2, g, !memcmp(buf, "\0\1\2\3", 4));
  static const char four[4] = {0, 1, 2, 3};
  iov w2[2] = {{P(four), 2}, {P(four + 2), 2}};
  e1 = w_fd_pwrite(f, P(w2), 2, 0, P(&n));
  memset(buf, 9, 8);
  iov r2[2] = {{P(buf), 2}, {P(buf + 2), 2}};
  e2 = w_fd_pread(f, P(r2), 2, 0, P(&g));
  printf("pp-iovecs %d n=%u %d n=%u same=%d\n", e1, n, e2, g, !memcmp(buf, "\0\1\2\3", 4));
  memset(buf, 0, 8);
  e1 = w_fd_pread(f, P(&r1), 1, 2, P(&g));
  printf("pp-at-2 %d n=%u same=%d\n", e1, g, !memcmp(buf, "\2\3\0\0", 4));
  iov w3 = {P("\1\0"), 2};
  e1 = w_fd_pwrite(f, P(&w3), 1, 2, P(&n));
  memset(buf, 9, 8);
  e2 = w_fd_pread(f, P(&r1), 1, 0, P(&g));
  printf("pp-over %d n=%u %d n=%u same=%d tell=%llu\n", e1, n, e2, g,
         !memcmp(buf, "\0\1\1\0", 4), (unsigned long long)tell(f));
  w_fd_close(f);
  w_path_unlink_file(d, S("file"));
  untmp(root, d, "file_pread_pwrite_dir.cleanup", "pp");
  /* file_seek_tell */
  d = tmpdir(root, "file_seek_tell_dir.cleanup", "st");
  printf("st-open %d\n", w_path_open(d, 0, S("file"), CREAT, RD | WR | 4 | 0x20, 0, 0, P(&f)));
  printf("st-tell-0 %llu\n", (unsigned long long)tell(f));
  printf("st-write %d n=%u tell=%llu\n", wr(f, zeros, 100, &n), n, (unsigned long long)tell(f));
  I ee = w_fd_seek(f, -50, 1, P(&at));
  printf("st-cur-50 %d %llu\n", ee, (unsigned long long)at);
  ee = w_fd_seek(f, 0, 0, P(&at));
  printf("st-set-0 %d %llu\n", ee, (unsigned long long)at);
  printf("st-cur+1000 %d\n", w_fd_seek(f, 1000, 1, P(&at)));
  printf("st-cur-2000 %d\n", w_fd_seek(f, -2000, 1, P(&at)));
  w_fd_seek(f, 0, 0, P(&at));
  printf("st-read %d n=%u tell=%llu\n", rd(f, got, 100, &g), g, (unsigned long long)tell(f));
  w_fd_close(f);
  w_path_unlink_file(d, S("file"));
  untmp(root, d, "file_seek_tell_dir.cleanup", "st");
  /* file_truncation */
  d = tmpdir(root, "file_truncation_dir.cleanup", "ft");
  static const char content[] = "this content will be truncated!";
  printf("ft-open %d\n", w_path_open(d, 0, S("test.txt"), CREAT, WR, 0, 0, P(&f)));
  printf("ft-write %d n=%u\n", wr(f, content, sizeof content - 1, &n), n);
  w_fd_close(f);
  printf("ft-open-trunc %d\n", w_path_open(d, 0, S("test.txt"), CREAT | TRUNC, WR | RD, 0, 0,
                                           P(&f)));
  printf("ft-read %d n=%u\n", rd(f, got, 100, &g), g);
  w_fd_close(f);
  w_path_unlink_file(d, S("test.txt"));
  untmp(root, d, "file_truncation_dir.cleanup", "ft");
  /* file_unbuffered_write */
  d = tmpdir(root, "file_unbuffered_write_dir.cleanup", "uw");
  e1 = w_path_open(d, 0, S("file"), CREAT, RD, 0, 0, P(&f));
  e2 = w_path_open(d, 0, S("file"), 0, WR, 0, 0, P(&g));
  printf("uw-open %d %d\n", e1, e2);
  printf("uw-write %d n=%u\n", wr(g, "\1", 1, &n), n);
  buf[0] = 0;
  printf("uw-read %d n=%u same=%d\n", rd(f, buf, 1, &n), n, buf[0] == 1);
  w_fd_close(g);
  w_fd_close(f);
  w_path_unlink_file(d, S("file"));
  untmp(root, d, "file_unbuffered_write_dir.cleanup", "uw");
  /* path_exists */
  d = tmpdir(root, "path_exists_dir.cleanup", "pe");
  printf("pe-mkdir %d\n", w_path_create_directory(d, S("subdir")));
  mkfile(d, "subdir/file");
  printf("pe-link1 %d\n", w_path_symlink(S("subdir/file"), d, S("link1")));
  printf("pe-link2 %d\n", w_path_symlink(S("subdir"), d, S("link2")));
  static const char *const exist[] = {"subdir", "subdir/file", "link1", "link2"};
  for (unsigned k = 0; k < 4; k++)
    for (I follow = 0; follow < 2; follow++) {
      memset(&x, 0, sizeof x);
      I e = w_path_filestat_get(d, follow, S(exist[k]), P(&x));
      printf("pe-stat[%s]-%s %d type=%d\n", exist[k], follow ? "follow" : "nofollow", e, x.type);
    }
  printf("pe-clean %d %d %d %d\n", w_path_unlink_file(d, S("link1")),
         w_path_unlink_file(d, S("link2")), w_path_unlink_file(d, S("subdir/file")),
         w_path_remove_directory(d, S("subdir")));
  untmp(root, d, "path_exists_dir.cleanup", "pe");
  /* path_open_create_existing, path_open_missing, path_open_dirfd_not_dir, symlink_loop */
  d = tmpdir(root, "path_open_create_existing_dir.cleanup", "po");
  mkfile(d, "file");
  printf("po-create-existing %d\n", w_path_open(d, 0, S("file"), CREAT | EXCL, 0, 0, 0, P(&f)));
  printf("po-missing %d\n", w_path_open(d, 0, S("missing"), 0, 0, 0, 0, P(&f)));
  printf("po-file %d\n", w_path_open(d, 0, S("file"), CREAT, 0, 0, 0, P(&f)));
  printf("po-under-file %d\n", w_path_open((I)f, 0, S("foo"), CREAT, 0, 0, 0, P(&g)));
  w_fd_close(f);
  w_path_unlink_file(d, S("file"));
  printf("po-loop-link %d\n", w_path_symlink(S("symlink"), d, S("symlink")));
  printf("po-loop-open %d\n", w_path_open(d, 0, S("symlink"), 0, 0, 0, 0, P(&f)));
  w_path_unlink_file(d, S("symlink"));
  untmp(root, d, "path_open_create_existing_dir.cleanup", "po");
  /* path_open_read_write, in the root */
  mkfile(root, "file.cleanup");
  printf("rw-ro-open %d\n", w_path_open(root, 0, S("file.cleanup"), 0, RD, 0, 0, P(&f)));
  fb = rights_of(f);
  printf("rw-ro-rights read=%d write=%d\n", (fb & RD) != 0, (fb & WR) != 0);
  printf("rw-ro-read %d n=%u\n", rd(f, got, 100, &g), g);
  printf("rw-ro-write %d\n", wr(f, ones, 50, &n));
  w_fd_close(f);
  printf("rw-wo-open %d\n", w_path_open(root, 0, S("file.cleanup"), 0, WR, 0, 0, P(&f)));
  fb = rights_of(f);
  printf("rw-wo-rights read=%d write=%d\n", (fb & RD) != 0, (fb & WR) != 0);
  printf("rw-wo-read %d\n", rd(f, got, 100, &g));
  printf("rw-wo-write %d n=%u\n", wr(f, ones, 50, &n), n);
  w_fd_close(f);
  printf("rw-rw-open %d\n", w_path_open(root, 0, S("file.cleanup"), 0, RD | WR | 0x200000, 0, 0,
                                        P(&f)));
  fb = rights_of(f);
  printf("rw-rw-rights read=%d write=%d\n", (fb & RD) != 0, (fb & WR) != 0);
  printf("rw-rw-read %d n=%u\n", rd(f, got, 100, &g), g);
  printf("rw-rw-write %d n=%u size=%llu\n", wr(f, twos, 25, &n), n, (unsigned long long)size_of(f));
  w_fd_close(f);
  w_path_unlink_file(root, S("file.cleanup"));
  /* symlink_create */
  d = tmpdir(root, "symlink_create_dir.cleanup", "sc");
  mkfile(d, "target");
  printf("sc-file-link %d\n", w_path_symlink(S("target"), d, S("symlink")));
  I e = w_path_open(d, 1, S("symlink"), 0, 0, 0, 0, P(&f));
  printf("sc-file-open %d\n", e);
  if (!e) w_fd_close(f);
  printf("sc-file-clean %d %d\n", w_path_unlink_file(d, S("symlink")),
         w_path_unlink_file(d, S("target")));
  w_path_create_directory(d, S("target"));
  printf("sc-dir-link %d\n", w_path_symlink(S("target"), d, S("symlink")));
  e = w_path_open(d, 1, S("symlink"), DIRECTORY, 0, 0, 0, P(&f));
  printf("sc-dir-open %d\n", e);
  if (!e) w_fd_close(f);
  printf("sc-dir-clean %d %d\n", w_path_unlink_file(d, S("symlink")),
         w_path_remove_directory(d, S("target")));
  printf("sc-root-link-failed %d\n", w_path_symlink(S("/"), d, S("symlink")) != 0);
  w_path_unlink_file(d, S("symlink"));
  untmp(root, d, "symlink_create_dir.cleanup", "sc");
  /* symlink_filestat and path_filestat */
  d = tmpdir(root, "symlink_filestat_dir.cleanup", "sf");
  printf("sf-dir-filestat-right %d\n", (rights_of(d) & 0x40000) != 0);
  printf("sf-open %d\n", w_path_open(d, 0, S("file"), CREAT, RD | WR | 0x40000, 0, 0, P(&f)));
  memset(&x, 0, sizeof x);
  printf("sf-file %d size=%llu\n", w_path_filestat_get(d, 0, S("file"), P(&x)),
         (unsigned long long)x.size);
  printf("sf-link %d\n", w_path_symlink(S("file"), d, S("symlink")));
  memset(&y, 0, sizeof y);
  w_path_filestat_get(d, 0, S("symlink"), P(&y));
  printf("sf-set-link %d\n", w_path_filestat_set_times(d, 0, S("symlink"), 0, (L)y.mtim - 200, 4));
  w_path_filestat_get(d, 0, S("symlink"), P(&z));
  printf("sf-link-mtim %d\n", z.mtim == y.mtim - 200);
  w_path_filestat_get(d, 0, S("file"), P(&z));
  printf("sf-file-mtim-kept %d\n", z.mtim == x.mtim);
  w_path_filestat_get(d, 1, S("symlink"), P(&z));
  printf("sf-follow-mtim %d\n", z.mtim == x.mtim);
  printf("sf-set-follow %d\n", w_path_filestat_set_times(d, 1, S("symlink"), 0, (L)y.mtim, 4));
  w_path_filestat_get(d, 0, S("file"), P(&z));
  printf("sf-file-mtim %d\n", z.mtim == y.mtim);
  w_fd_close(f);
  w_path_unlink_file(d, S("symlink"));
  w_path_unlink_file(d, S("file"));
  e = w_path_open(d, 0, S("file"), CREAT, RD | WR | 0x40000, 0, APPEND | SYNC, P(&f));
  printf("pf-open-sync %d\n", e);
  if (e == 58) e = w_path_open(d, 0, S("file"), CREAT, RD | WR | 0x40000, 0, APPEND, P(&f));
  memset(st, 0, sizeof st);
  w_fd_fdstat_get(f, P(st));
  printf("pf-flags append=%d\n", (st[2] & APPEND) != 0);
  memset(&x, 0, sizeof x);
  w_path_filestat_get(d, 0, S("file"), P(&x));
  printf("pf-set %d\n", w_path_filestat_set_times(d, 0, S("file"), 0, (L)x.mtim - 100, 4));
  w_path_filestat_get(d, 0, S("file"), P(&y));
  printf("pf-mtim %d\n", y.mtim == x.mtim - 100);
  printf("pf-mtim-and-now %d\n", w_path_filestat_set_times(d, 0, S("file"), 0, (L)x.mtim, 4 | 8));
  w_path_filestat_get(d, 0, S("file"), P(&y));
  printf("pf-mtim-kept %d\n", y.mtim == x.mtim - 100);
  printf("pf-atim-and-now %d\n", w_path_filestat_set_times(d, 0, S("file"), 0, 0, 1 | 2));
  w_fd_close(f);
  w_path_unlink_file(d, S("file"));
  untmp(root, d, "symlink_filestat_dir.cleanup", "sf");
  /* truncation_rights */
  d = tmpdir(root, "truncation_rights_dir.cleanup", "tr");
  mkfile(d, "file");
  memset(st, 0, sizeof st);
  w_fd_fdstat_get(d, P(st));
  memcpy(&db, st + 8, 8);
  memcpy(&di, st + 16, 8);
  printf("tr-dir type=%d flags=%d fd-set-size=%d path-set-size=%d\n", st[0], st[2],
         (db & 0x400000) != 0, (db & 0x80000) != 0);
  if (db & 0x80000) {
    e = w_path_open(d, 0, S("file"), TRUNC, 0, 0, 0, P(&f));
    printf("tr-trunc %d\n", e);
    if (!e) w_fd_close(f);
    if (di & 0x400000)
      printf("tr-drop-inh %d\n", w_fd_fdstat_set_rights(d, (L)db, (L)(di & ~0x400000ULL)));
    e = w_path_open(d, 0, S("file"), TRUNC, 0, 0, 0, P(&f));
    printf("tr-trunc-no-fd-right %d\n", e);
    if (!e) w_fd_close(f);
    printf("tr-drop-base %d\n", w_fd_fdstat_set_rights(d, (L)(db & ~0x80000ULL), (L)di));
    printf("tr-dropped %d\n", (rights_of(d) & 0x80000) == 0);
    e = w_path_open(d, 0, S("file"), TRUNC, 0, 0, 0, P(&f));
    printf("tr-trunc-no-path-right %d\n", e);
    if (!e) w_fd_close(f);
  }
  printf("tr-unlink %d\n", w_path_unlink_file(d, S("file")));
  untmp(root, d, "truncation_rights_dir.cleanup", "tr");
  /* path_rename_dir_trailing_slashes, remove_directory_trailing_slashes */
  d = tmpdir(root, "path_rename_dir_trailing_slashes_dir.cleanup", "rs");
  w_path_create_directory(d, S("source"));
  printf("rs-from-slash %d\n", w_path_rename(d, S("source/"), d, S("target")));
  printf("rs-to-slash %d\n", w_path_rename(d, S("target"), d, S("source/")));
  printf("rs-both-slash %d\n", w_path_rename(d, S("source/"), d, S("target/")));
  printf("rs-none %d\n", w_path_rename(d, S("target"), d, S("source")));
  printf("rs-rmdir %d\n", w_path_remove_directory(d, S("source")));
  untmp(root, d, "path_rename_dir_trailing_slashes_dir.cleanup", "rs");
  w_path_create_directory(root, S("dir.cleanup"));
  printf("rd-rmdir %d\n", w_path_remove_directory(root, S("dir.cleanup")));
  w_path_create_directory(root, S("dir.cleanup"));
  e = w_path_remove_directory(root, S("dir.cleanup/"));
  printf("rd-rmdir-slash %d\n", e);
  if (e) w_path_remove_directory(root, S("dir.cleanup"));
  mkfile(root, "file.cleanup");
  printf("rd-rmdir-file %d\n", w_path_remove_directory(root, S("file.cleanup")));
  printf("rd-rmdir-file-slash %d\n", w_path_remove_directory(root, S("file.cleanup/")));
  w_path_unlink_file(root, S("file.cleanup"));
  /* fd_advise, file_allocate and directory_seek */
  d = tmpdir(root, "file_allocate_dir.cleanup", "fa");
  printf("fa-open %d\n", w_path_open(d, 0, S("file"), CREAT, RD | WR | 0x100 | 0x200000 | 0x80 |
                                     0x400000, 0, 0, P(&f)));
  printf("fa-size %llu\n", (unsigned long long)size_of(f));
  printf("fa-set-size %d size=%llu\n", w_fd_filestat_set_size(f, 100),
         (unsigned long long)size_of(f));
  printf("fa-advise %d size=%llu\n", w_fd_advise(f, 10, 50, 0), (unsigned long long)size_of(f));
  printf("fa-allocate-less %d size=%llu\n", w_fd_allocate(f, 10, 10),
         (unsigned long long)size_of(f));
  printf("fa-allocate-more %d size=%llu\n", w_fd_allocate(f, 90, 20),
         (unsigned long long)size_of(f));
  printf("fa-allocate-past %d size=%llu\n", w_fd_allocate(f, 100, 100),
         (unsigned long long)size_of(f));
  w_fd_close(f);
  w_path_unlink_file(d, S("file"));
  w_path_create_directory(d, S("directory_seek_dir.cleanup"));
  printf("ds-open %d\n", w_path_open(d, 0, S("directory_seek_dir.cleanup"), DIRECTORY, 4, 0, 0,
                                     P(&f)));
  printf("ds-seek %d\n", w_fd_seek(f, 0, 1, P(&at)));
  memset(st, 0, sizeof st);
  w_fd_fdstat_get(f, P(st));
  printf("ds-fdstat type=%d seek=%d\n", st[0], (rights_of(f) & 4) != 0);
  w_fd_close(f);
  w_path_remove_directory(d, S("directory_seek_dir.cleanup"));
  untmp(root, d, "file_allocate_dir.cleanup", "fa");
  /* dangling_fd */
  printf("df %d", w_path_open(root, 0, S("dangling_fd_file.cleanup"), CREAT, 0, 0, 0, P(&f)));
  printf(" %d", w_fd_close(f));
  printf(" %d", w_path_open(root, 0, S("dangling_fd_file.cleanup"), 0, 0, 0, 0, P(&f)));
  printf(" %d", w_fd_close(f));
  printf(" %d", w_path_unlink_file(root, S("dangling_fd_file.cleanup")));
  printf(" %d", w_path_open(root, 0, S("dangling_fd_file.cleanup"), CREAT, 0, 0, 0, P(&f)));
  printf(" %d", w_fd_close(f));
  printf(" %d", w_path_unlink_file(root, S("dangling_fd_file.cleanup")));
  printf(" %d", w_path_create_directory(root, S("dangling_fd_subdir.cleanup")));
  printf(" %d", w_path_open(root, 0, S("dangling_fd_subdir.cleanup"), DIRECTORY, 0, 0, 0, P(&f)));
  printf(" %d", w_fd_close(f));
  printf(" %d", w_path_remove_directory(root, S("dangling_fd_subdir.cleanup")));
  printf(" %d", w_path_create_directory(root, S("dangling_fd_subdir.cleanup")));
  printf(" %d\n", w_path_remove_directory(root, S("dangling_fd_subdir.cleanup")));
  /* fd_readdir: an empty directory, one file, a cookie, then 1,000 files read
   * through 256 bytes at a time, the last entry cut short ending none but the last */
  d = tmpdir(root, "fd_readdir_dir.cleanup", "rd");
  static uint8_t dbuf[256];
  uint32_t used = 0;
  memset(&x, 0, sizeof x);
  w_fd_filestat_get(d, P(&x));
  e = w_fd_readdir(d, P(dbuf), 256, 0, P(&used));
  int dots = 0, dot_ino = 0, ents = 0;
  for (uint32_t at2 = 0; at2 + 24 <= used;) {
    uint64_t ino;
    uint32_t len;
    memcpy(&ino, dbuf + at2 + 8, 8);
    memcpy(&len, dbuf + at2 + 16, 4);
    if (at2 + 24 + len > used) break;
    ents++;
    if (len == 1 && dbuf[at2 + 24] == '.') dot_ino = ino == x.ino && dbuf[at2 + 20] == 3;
    dots += dbuf[at2 + 20] == 3 && dbuf[at2 + 24] == '.';
    at2 += 24 + len;
  }
  printf("rd-empty %d eof=%d entries=%d dirs=%d dot-ino=%d\n", e, used < 256, ents, dots, dot_ino);
  w_path_open(d, 0, S("file"), CREAT, RD | WR | 0x4000 | 0x200000, 0, 0, P(&f));
  memset(&y, 0, sizeof y);
  w_fd_filestat_get(f, P(&y));
  w_fd_close(f);
  e = w_fd_readdir(d, P(dbuf), 256, 0, P(&used));
  uint64_t second_next = 0, file_ino = 0;
  char third[16] = {0};
  ents = 0;
  for (uint32_t at2 = 0; at2 + 24 <= used;) {
    uint64_t next, ino;
    uint32_t len;
    memcpy(&next, dbuf + at2, 8);
    memcpy(&ino, dbuf + at2 + 8, 8);
    memcpy(&len, dbuf + at2 + 16, 4);
    if (at2 + 24 + len > used) break;
    if (ents == 1) second_next = next;
    if (ents == 2 && len < sizeof third) memcpy(third, dbuf + at2 + 24, len);
    if (len == 4 && !memcmp(dbuf + at2 + 24, "file", 4))
      file_ino = ino == y.ino && dbuf[at2 + 20] == 4;
    ents++;
    at2 += 24 + len;
  }
  printf("rd-one %d eof=%d entries=%d file=%d\n", e, used < 256, ents, (int)file_ino);
  e = w_fd_readdir(d, P(dbuf), 256, second_next, P(&used));
  uint32_t len0 = 0;
  memcpy(&len0, dbuf + 16, 4);
  printf("rd-cookie %d eof=%d one=%d same=%d\n", e, used < 256, used == 24 + len0,
         len0 < 16 && !memcmp(dbuf + 24, third, len0) && third[len0] == 0);
  w_path_unlink_file(d, S("file"));
  char fname[32];
  for (int k = 0; k < 1000; k++) {
    snprintf(fname, sizeof fname, "file.%d", k);
    if (!w_path_open(d, 0, S(fname), CREAT, RD | WR | 0x4000 | 0x200000, 0, 0, P(&f)))
      w_fd_close(f);
  }
  uint64_t cookie = 0;
  int total = 0, calls = 0;
  for (;;) {
    e = w_fd_readdir(d, P(dbuf), 256, cookie, P(&used));
    calls++;
    if (e || calls > 5000) break;
    uint64_t last = 0;
    int got_here = 0;
    for (uint32_t at2 = 0; at2 + 24 <= used;) {
      uint32_t len;
      memcpy(&len, dbuf + at2 + 16, 4);
      if (at2 + 24 + len > used) break;
      memcpy(&last, dbuf + at2, 8);
      got_here++;
      at2 += 24 + len;
    }
    total += got_here;
    if (used < 256) break;
    cookie = last;
  }
  printf("rd-lots %d total=%d\n", e, total);
  for (int k = 0; k < 1000; k++) {
    snprintf(fname, sizeof fname, "file.%d", k);
    w_path_unlink_file(d, S(fname));
  }
  untmp(root, d, "fd_readdir_dir.cleanup", "rd");
  /* interesting_paths, in a directory with its own create_tmp_dir's rights */
  w_path_create_directory(root, S("interesting_paths_dir.cleanup"));
  e = w_path_open(root, 0, S("interesting_paths_dir.cleanup"), DIRECTORY,
                  R_(21) | R_(14) | R_(10) | R_(9) | R_(25) | R_(13) | R_(26),
                  R_(1) | R_(6) | R_(14) | R_(21) | R_(2), 0, P(&f));
  printf("ip-tmpdir %d\n", e);
  d = (I)f;
  printf("ip-mkdir %d %d\n", w_path_create_directory(d, S("dir")),
         w_path_create_directory(d, S("dir/nested")));
  mkfile(d, "dir/nested/file");
  static const char *const paths[] = {
      "/dir/nested/file", "dir/.//nested/../../dir/nested/../nested///./file",
      "dir/nested/file/", "dir/nested/file///", "dir/nested/", "dir/nested///",
      "dir/nested/../../../interesting_paths_dir.cleanup/dir/nested/file",
      "dir/nested/../../../x/dir/nested/file"};
  for (unsigned k = 0; k < sizeof paths / sizeof *paths; k++) {
    e = w_path_open(d, 0, S(paths[k]), 0, 0, 0, 0, P(&f));
    printf("ip-open[%s] %d\n", paths[k], e);
    if (!e) w_fd_close(f);
  }
  e = w_path_open(d, 0, P("dir/nested/file\0"), 16, 0, 0, 0, 0, P(&f));
  printf("ip-open-nul %d\n", e);
  printf("ip-clean %d %d %d\n", w_path_unlink_file(d, S("dir/nested/file")),
         w_path_remove_directory(d, S("dir/nested")), w_path_remove_directory(d, S("dir")));
  untmp(root, d, "interesting_paths_dir.cleanup", "ip");
  /* isatty, unlink_file_trailing_slashes, remove_nonempty_directory, readlink,
   * path_symlink_trailing_slashes, dangling_symlink, nofollow_errors, path_rename */
  d = tmpdir(root, "isatty_dir.cleanup", "ot");
  w_path_open(d, 0, S("file"), CREAT, 0, 0, 0, P(&f));
  memset(st, 0, sizeof st);
  w_fd_fdstat_get(f, P(st));
  fb = rights_of(f);
  printf("ot-isatty type=%d seek-tell=%d\n", st[0], (fb & 0x24) != 0);
  w_fd_close(f);
  printf("ot-unlink-file-slash %d\n", w_path_unlink_file(d, S("file/")));
  printf("ot-unlink-file %d\n", w_path_unlink_file(d, S("file")));
  w_path_create_directory(d, S("dir"));
  printf("ot-unlink-dir %d %d\n", w_path_unlink_file(d, S("dir")), w_path_unlink_file(d, S("dir/")));
  w_path_create_directory(d, S("dir/nested"));
  printf("ot-rmdir-nonempty %d\n", w_path_remove_directory(d, S("dir")));
  printf("ot-rmdir-nested %d %d\n", w_path_remove_directory(d, S("dir/nested")),
         w_path_remove_directory(d, S("dir")));
  mkfile(d, "target");
  w_path_symlink(S("target"), d, S("symlink"));
  char lb[10] = {0};
  e = w_path_readlink(d, S("symlink"), P(lb), 10, P(&used));
  printf("ot-readlink %d n=%u same=%d untouched=%d\n", e, used, !memcmp(lb, "target", 6),
         !lb[6] && !lb[7] && !lb[8] && !lb[9]);
  memset(lb, 0, sizeof lb);
  e = w_path_readlink(d, S("symlink"), P(lb), 4, P(&used));
  printf("ot-readlink-short %d n=%u same=%d\n", e, used, !memcmp(lb, "targ", 4) && !lb[4]);
  w_path_unlink_file(d, S("symlink"));
  w_path_unlink_file(d, S("target"));
  printf("ot-symlink-dangling-slash %d\n", w_path_symlink(S("source"), d, S("target/")));
  e = w_path_symlink(S("source"), d, S("target"));
  printf("ot-symlink-dangling %d\n", e);
  printf("ot-dangling-dir-nofollow %d\n", w_path_open(d, 0, S("target"), DIRECTORY, 0, 0, 0, P(&f)));
  printf("ot-dangling-nofollow %d\n", w_path_open(d, 0, S("target"), 0, 0, 0, 0, P(&f)));
  w_path_unlink_file(d, S("target"));
  w_path_create_directory(d, S("target"));
  printf("ot-symlink-onto-dir %d %d\n", w_path_symlink(S("source"), d, S("target/")),
         w_path_symlink(S("source"), d, S("target")));
  w_path_remove_directory(d, S("target"));
  mkfile(d, "target");
  printf("ot-symlink-onto-file %d %d\n", w_path_symlink(S("source"), d, S("target/")),
         w_path_symlink(S("source"), d, S("target")));
  w_path_unlink_file(d, S("target"));
  w_path_create_directory(d, S("target"));
  w_path_symlink(S("target"), d, S("symlink"));
  printf("nf-dir %d %d", w_path_open(d, 0, S("symlink"), DIRECTORY, 0, 0, 0, P(&f)),
         w_path_open(d, 0, S("symlink"), 0, 0, 0, 0, P(&f)));
  e = w_path_open(d, 1, S("symlink"), DIRECTORY, 0, 0, 0, P(&f));
  printf(" %d\n", e);
  if (!e) w_fd_close(f);
  w_path_unlink_file(d, S("symlink"));
  w_path_remove_directory(d, S("target"));
  mkfile(d, "target");
  w_path_symlink(S("target"), d, S("symlink"));
  printf("nf-file %d %d %d\n", w_path_open(d, 0, S("symlink"), DIRECTORY, 0, 0, 0, P(&f)),
         w_path_open(d, 0, S("symlink"), 0, 0, 0, 0, P(&f)),
         w_path_open(d, 1, S("symlink"), DIRECTORY, 0, 0, 0, P(&f)));
  w_path_unlink_file(d, S("symlink"));
  w_path_unlink_file(d, S("target"));
  /* path_rename */
  w_path_create_directory(d, S("source"));
  printf("mv-dir %d", w_path_rename(d, S("source"), d, S("target")));
  printf(" %d", w_path_open(d, 0, S("source"), DIRECTORY, 0, 0, 0, P(&f)));
  e = w_path_open(d, 0, S("target"), DIRECTORY, 0, 0, 0, P(&f));
  printf(" %d\n", e);
  if (!e) w_fd_close(f);
  w_path_remove_directory(d, S("target"));
  w_path_create_directory(d, S("source"));
  w_path_create_directory(d, S("target"));
  printf("mv-dir-onto-empty %d", w_path_rename(d, S("source"), d, S("target")));
  printf(" %d\n", w_path_open(d, 0, S("source"), DIRECTORY, 0, 0, 0, P(&f)));
  w_path_remove_directory(d, S("target"));
  w_path_create_directory(d, S("source"));
  w_path_create_directory(d, S("target"));
  mkfile(d, "target/file");
  printf("mv-dir-onto-full %d\n", w_path_rename(d, S("source"), d, S("target")));
  printf("mv-dir-onto-file %d\n", w_path_rename(d, S("source"), d, S("target/file")));
  w_path_unlink_file(d, S("target/file"));
  w_path_remove_directory(d, S("source"));
  w_path_remove_directory(d, S("target"));
  mkfile(d, "source");
  printf("mv-file %d", w_path_rename(d, S("source"), d, S("target")));
  printf(" %d\n", w_path_open(d, 0, S("source"), 0, 0, 0, 0, P(&f)));
  mkfile(d, "source");
  printf("mv-file-onto-file %d", w_path_rename(d, S("source"), d, S("target")));
  printf(" %d\n", w_path_open(d, 0, S("source"), 0, 0, 0, 0, P(&f)));
  w_path_unlink_file(d, S("target"));
  mkfile(d, "source");
  w_path_create_directory(d, S("target"));
  printf("mv-file-onto-dir %d\n", w_path_rename(d, S("source"), d, S("target")));
  w_path_remove_directory(d, S("target"));
  w_path_unlink_file(d, S("source"));
  untmp(root, d, "isatty_dir.cleanup", "ot");
  /* path_link: links in the directory and in a subdirectory opened from it, opened
   * with the rights their source was, then each name a link may not take */
  d = tmpdir(root, "path_link_dir.cleanup", "pl");
  const L tr = RD | 0x800 | 0x1000 | 0x200000 | 0x2000 | 0x4000000;
  uint32_t sub = 0, lk = 0;
  printf("pl-open %d\n", w_path_open(d, 0, S("file"), CREAT, tr, tr, 0, P(&f)));
  printf("pl-link %d\n", w_path_link(d, 0, S("file"), d, S("link")));
  for (int round = 0; round < 2; round++) {
    I at_ = round ? (I)sub : d;
    if (round) {
      w_path_create_directory(d, S("subdir"));
      printf("pl-subdir %d\n", w_path_open(d, 0, S("subdir"), DIRECTORY, tr, tr, 0, P(&sub)));
      printf("pl-link-sub %d\n", w_path_link(d, 0, S("file"), (I)sub, S("link")));
      at_ = (I)sub;
    }
    printf("pl-open-link-%d %d\n", round, w_path_open(at_, 0, S("link"), 0, tr, tr, 0, P(&lk)));
    uint8_t xs[24] = {0}, ys[24] = {0};
    memset(&x, 0, sizeof x);
    memset(&y, 0, sizeof y);
    w_fd_filestat_get(f, P(&x));
    w_fd_filestat_get(lk, P(&y));
    w_fd_fdstat_get(f, P(xs));
    w_fd_fdstat_get(lk, P(ys));
    printf("pl-same-%d filestat=%d fdstat=%d nlink=%llu\n", round,
           x.dev == y.dev && x.ino == y.ino && x.atim == y.atim && x.ctim == y.ctim &&
           x.mtim == y.mtim && x.size == y.size && x.nlink == y.nlink && x.type == y.type,
           !memcmp(xs, ys, 24), (unsigned long long)y.nlink);
    w_fd_close(lk);
    printf("pl-unlink-%d %d\n", round, w_path_unlink_file(at_, S("link")));
  }
  w_fd_close(f);
  w_fd_close(sub);
  w_path_remove_directory(d, S("subdir"));
  mkfile(d, "link");
  printf("pl-onto-file %d\n", w_path_link(d, 0, S("file"), d, S("link")));
  w_path_unlink_file(d, S("link"));
  printf("pl-onto-itself %d\n", w_path_link(d, 0, S("file"), d, S("file")));
  w_path_create_directory(d, S("link"));
  printf("pl-onto-dir %d\n", w_path_link(d, 0, S("file"), d, S("link")));
  w_path_remove_directory(d, S("link"));
  w_path_create_directory(d, S("subdir"));
  w_path_open(d, 0, S("subdir"), DIRECTORY, tr, tr, 0, P(&sub));
  printf("pl-of-dir %d\n", w_path_link(d, 0, S("subdir"), d, S("link")));
  w_fd_close(sub);
  w_path_remove_directory(d, S("subdir"));
  printf("pl-onto-slash %d\n", w_path_link(d, 0, S("file"), d, S("link/")));
  w_path_symlink(S("target"), d, S("symlink"));
  printf("pl-of-dangling %d", w_path_link(d, 0, S("symlink"), d, S("link")));
  printf(" %d %d\n", w_path_unlink_file(d, S("symlink")), w_path_unlink_file(d, S("link")));
  w_path_symlink(S("symlink"), d, S("symlink"));
  printf("pl-of-loop %d", w_path_link(d, 0, S("symlink"), d, S("link")));
  printf(" %d %d\n", w_path_unlink_file(d, S("symlink")), w_path_unlink_file(d, S("link")));
  w_path_symlink(S("target"), d, S("symlink"));
  printf("pl-onto-dangling %d\n", w_path_link(d, 0, S("file"), d, S("symlink")));
  printf("pl-follow-dangling %d\n", w_path_link(d, 1, S("symlink"), d, S("link")));
  w_path_unlink_file(d, S("symlink"));
  w_path_unlink_file(d, S("file"));
  untmp(root, d, "path_link_dir.cleanup", "pl");
  /* renumber */
  d = tmpdir(root, "renumber_dir.cleanup", "rn");
  uint32_t from = 0, to = 0;
  w_path_open(d, 0, S("file1"), CREAT, RD | WR, 0, 0, P(&from));
  w_path_open(d, 0, S("file2"), CREAT, RD | WR, 0, 0, P(&to));
  uint8_t sf[24] = {0}, stt[24] = {0};
  w_fd_fdstat_get(from, P(sf));
  printf("rn-renumber %d\n", w_fd_renumber(from, to));
  printf("rn-close-from %d\n", w_fd_close(from));
  printf("rn-to %d same=%d\n", w_fd_fdstat_get(to, P(stt)), !memcmp(sf, stt, 24));
  printf("rn-onto-closed %d\n", w_fd_renumber(to, from));
  printf("rn-clean %d %d %d\n", w_fd_close(to), w_path_unlink_file(d, S("file1")),
         w_path_unlink_file(d, S("file2")));
  untmp(root, d, "renumber_dir.cleanup", "rn");
  c_programs();               /* suite_c.c */
  printf("close-root %d\n", w_fd_close(root));
}

/* The suite's programs that get no directory (its C sock_shutdown and clock
 * programs, its AssemblyScript ones): fd 3 on is not open whatever else the program
 * was given, sockets calls on what is not a socket, a write to a descriptor past any,
 * and the calls the AssemblyScript programs make, each as they check it. */
W(sock_shutdown) I w_sock_shutdown(I, I);
W(sock_recv) I w_sock_recv(I, I, I, I, I, I);
W(sock_send) I w_sock_send(I, I, I, I, I);
W(sock_accept) I w_sock_accept(I, I, I);
static void nodir(void) {
  uint8_t st[24];
  uint32_t n = 77, acc = 0;
  for (I fd = 3; fd < 6; fd++) printf("fdstat-%d %d\n", fd, w_fd_fdstat_get(fd, P(st)));
  for (I fd = 0; fd < 4; fd++) {
    printf("shutdown-%d %d\n", fd, w_sock_shutdown(fd, 1));
    printf("accept-%d %d\n", fd, w_sock_accept(fd, 0, P(&acc)));
  }
  printf("shutdown-invalid %d\n", w_sock_shutdown(-31337, 1));
  printf("write-invalid %d n=%u\n", w_fd_write(-31337, 0, 0, P(&n)), n);
  printf("write-3 %d\n", w_fd_write(3, 0, 0, P(&n)));
  printf("sched_yield %d\n", w_sched_yield());
  static uint8_t rnd[1024];
  printf("random-0 %d\n", w_random_get(P(rnd), 0));
  I e = w_random_get(P(rnd), 1024);
  int any = 0;
  for (int k = 0; k < 1024; k++) any |= rnd[k];
  printf("random-1024 %d nonzero=%d\n", e, any != 0);
  for (I c = 0; c < 2; c++) {
    uint64_t res = 0, t1 = 0, t2 = 0, t0 = 0;
    I r = w_clock_res_get(c, P(&res)), p1 = w_clock_time_get(c, 1, P(&t0));
    I a = w_clock_time_get(c, 0, P(&t1)), b = w_clock_time_get(c, 0, P(&t2));
    printf("clock-%d res=%d precision-1=%d %d %d ordered=%d\n", c, r, p1, a, b,
           c ? t1 <= t2 : 1);
  }
  uint32_t argc = 0, argsz = 0, envc = 7, envsz = 7;
  printf("args-sizes %d", w_args_sizes_get(P(&argc), P(&argsz)));
  printf(" %u\n", argc);
  printf("environ-sizes %d %u %u\n", w_environ_sizes_get(P(&envc), P(&envsz)), envc, envsz);
  c_nodir();                  /* suite_c.c */
  iov v = {P("hello"), 5};
  fflush(stdout);
  e = w_fd_write(1, P(&v), 1, P(&n));
  printf("\nstdout-hello %d", e);
  printf(" n=%u\n", n);
}

int main(int argc, char **argv) {
  const char *part = argc > 1 ? argv[1] : "";
  if (!strcmp(part, "seek")) seek();
  if (!strcmp(part, "iovecs")) iovecs();
  if (!strcmp(part, "flags")) flags();
  if (!strcmp(part, "advise")) advise();
  if (!strcmp(part, "readdir")) readdir();
  if (!strcmp(part, "rename")) rename_();
  if (!strcmp(part, "dirs")) dirs();
  if (!strcmp(part, "fds")) fds();
  if (!strcmp(part, "misc")) misc();
  if (!strcmp(part, "stat")) stat_();
  if (!strcmp(part, "everyfd")) everyfd();
  if (!strcmp(part, "names")) names();
  if (!strcmp(part, "shared")) shared();
  if (!strcmp(part, "rights")) rights();
  if (!strcmp(part, "kinds")) kinds();
  if (!strcmp(part, "chains")) chains();
  if (!strcmp(part, "pathops")) pathops();
  if (!strcmp(part, "environ")) environ();
  if (!strcmp(part, "sleeps")) sleeps();
  if (!strcmp(part, "times")) times();
  if (!strcmp(part, "stdio")) stdio();
  if (!strcmp(part, "longs")) longs();
  if (!strcmp(part, "bigdir")) bigdir();
  if (!strcmp(part, "preopens")) preopens();
  if (!strcmp(part, "changes")) changes();
  if (!strcmp(part, "bigoff")) bigoff();
  if (!strcmp(part, "moved")) moved();
  if (!strcmp(part, "reached")) reached();
  if (!strcmp(part, "root")) root();
  if (!strcmp(part, "scratch")) scratch();
  if (!strcmp(part, "nodir")) nodir();
  if (!strcmp(part, "sweep")) sweep();
  return 0;
}
