/* What a program may do to its stdout when that is a file: write (appended),
   and nothing to what is already there.  Prints each attempt's errno to stderr. */
#include <stdio.h>
#include <wasi/api.h>

int main(void) {
    __wasi_size_t n;
    __wasi_filesize_t pos;
    __wasi_ciovec_t mine = {(const uint8_t *)"mine\n", 5}, over = {(const uint8_t *)"X", 1};
    __wasi_fd_write(1, &mine, 1, &n);
    fprintf(stderr, "append off %d\n", __wasi_fd_fdstat_set_flags(1, 0));
    __wasi_fd_seek(1, 0, __WASI_WHENCE_SET, &pos);
    fprintf(stderr, "write at 0 %d\n", __wasi_fd_write(1, &over, 1, &n));
    fprintf(stderr, "pwrite at 0 %d\n", __wasi_fd_pwrite(1, &over, 1, 0, &n));
    fprintf(stderr, "truncate %d\n", __wasi_fd_filestat_set_size(1, 0));
    fprintf(stderr, "set times %d\n", __wasi_fd_filestat_set_times(1, 0, 0, __WASI_FSTFLAGS_MTIM));
    __wasi_iovec_t in = {(uint8_t *)&pos, sizeof pos};
    fprintf(stderr, "read %d\n", __wasi_fd_pread(2, &in, 1, 0, &n));
    return 0;
}
