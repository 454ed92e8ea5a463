// localtime and what calls it.  Debian's wasi-libc has no time zones: its
// __secs_to_zone says UTC by storing through each pointer it is given, and
// localtime_r gives it NULL for the one it does not need, so every localtime
// wrote 0 at address 0 (in the null page wsuper build protects: a trap).  Its
// clock_getres wrote through the NULL POSIX lets a program pass, too, and
// strftime's %Z read the zone of a struct tm the program filled in (NULL) at 0.
#include <stdio.h>
#include <string.h>
#include <time.h>

int main(void) {
    time_t t = 31536000 + 3661;                  /* 1971-01-01 01:01:01 UTC */
    char buf[64];
    struct tm *tm = localtime(&t);
    strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %Z", tm);
    printf("localtime %s\n", buf);
    struct tm r;
    localtime_r(&t, &r);
    strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %Z", &r);
    printf("localtime_r %s\n", buf);
    printf("ctime %s", ctime(&t));
    printf("mktime %lld\n", (long long)mktime(&r));
    strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %Z", gmtime(&t));
    printf("gmtime %s\n", buf);
    printf("clock_getres %d\n", clock_getres(CLOCK_REALTIME, NULL));
    memset(&r, 0, sizeof r);
    strptime("2001-09-09 01:46:40", "%Y-%m-%d %H:%M:%S", &r);
    strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %Z", &r);
    printf("strptime %s\n", buf);
    return 0;
}
