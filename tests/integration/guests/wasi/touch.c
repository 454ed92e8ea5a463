// touch(1)'s calls: a NULL times argument means "both to now" (POSIX), and
// UTIME_NOW / UTIME_OMIT may be given for either time.  Debian's wasi-libc read
// times[0] at address 0 for a NULL (in the null page wsuper build protects: a
// trap; elsewhere the file got 1970) and said EINVAL for UTIME_NOW or UTIME_OMIT
// as the modification time.  Prints one line per call: the access and
// modification times after it, "now" or what they were (1 or 2).
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <utime.h>

static void report(const char *what, int r, const char *path) {
    struct stat st;
    stat(path, &st);
    char a[24], m[24];
    snprintf(a, sizeof a, "%lld", (long long)st.st_atim.tv_sec);
    snprintf(m, sizeof m, "%lld", (long long)st.st_mtim.tv_sec);
    printf("%s %s a=%s m=%s\n", what, r == 0 ? "ok" : strerror(errno),
           st.st_atim.tv_sec > 1000000000 ? "now" : a, st.st_mtim.tv_sec > 1000000000 ? "now" : m);
}

int main(void) {
    report("utimensat", utimensat(AT_FDCWD, "/sandbox/a", NULL, 0), "/sandbox/a");
    int fd = open("/sandbox/b", O_RDWR);
    report("futimens", futimens(fd, NULL), "/sandbox/b");
    close(fd);
    report("utimes", utimes("/sandbox/c", NULL), "/sandbox/c");
    report("utime", utime("/sandbox/d", NULL), "/sandbox/d");
    struct timespec m_now[2] = {{2, 0}, {0, UTIME_NOW}}, m_omit[2] = {{2, 0}, {0, UTIME_OMIT}};
    struct timespec a_now[2] = {{0, UTIME_NOW}, {2, 0}}, a_omit[2] = {{0, UTIME_OMIT}, {2, 0}};
    struct timespec bad[2] = {{2, 0}, {0, 1000000000}};
    report("m-now", utimensat(AT_FDCWD, "/sandbox/e", m_now, 0), "/sandbox/e");
    report("m-omit", utimensat(AT_FDCWD, "/sandbox/f", m_omit, 0), "/sandbox/f");
    report("a-now", utimensat(AT_FDCWD, "/sandbox/g", a_now, 0), "/sandbox/g");
    fd = open("/sandbox/h", O_RDWR);
    report("a-omit", futimens(fd, a_omit), "/sandbox/h");
    report("bad", futimens(fd, bad), "/sandbox/h");
    close(fd);
    report("nofollow", utimensat(AT_FDCWD, "/sandbox/i", m_omit, AT_SYMLINK_NOFOLLOW), "/sandbox/i");
    report("flag", utimensat(AT_FDCWD, "/sandbox/i", m_omit, 0x100), "/sandbox/i");
    return 0;
}
