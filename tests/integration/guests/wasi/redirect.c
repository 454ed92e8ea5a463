/* The POSIX idiom of redirecting a standard stream: close it, and the next open
   takes its number (the lowest free descriptor), so printf writes to the file. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("before\n");
    fflush(stdout);
    close(1);
    int fd = open("/sandbox/out.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    printf("redirected to fd %d\n", fd);
    fflush(stdout);
    close(0);
    int in = open("/sandbox/out.txt", O_RDONLY);
    char line[64] = {0};
    ssize_t n = read(0, line, sizeof line - 1);
    printf("stdin is fd %d, read %zd: %s", in, n, line);
    return fd == 1 && in == 0 ? 0 : 1;
}
