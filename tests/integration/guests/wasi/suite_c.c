/* survey.c's libc half: what the WASI test suite's C programs (tests/c/src/*.c)
 * check, made through wasi-libc as they make it, with paths relative to "/" as
 * they now run (their `root`).  Apart from survey.c, whose part names are libc's
 * function names (readdir, environ).  Prints "NAME VALUES", never a verdict. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* lseek, pread-with-access, pwrite-with-access, pwrite-with-append, stat-dev-ino,
 * fdopendir-with-access and fopen-with-access, each on files it made first */
void c_programs(void) {
  FILE *fp = fopen("lseek.txt", "w");
  if (fp) { fputs("01234567", fp); fclose(fp); }
  fp = fopen("lseek.txt", "r");
  char cb[16] = {0};
  int cfd = fp ? fileno(fp) : -1;
  size_t got4 = fp ? fread(cb, 1, 4, fp) : 0;
  if (fp) fflush(fp);
  long at4 = (long)lseek(cfd, 0, SEEK_CUR);
  size_t got1 = fp ? fread(cb, 1, 1, fp) : 0;
  if (fp) fflush(fp);
  long at5 = (long)lseek(cfd, 0, SEEK_CUR);
  printf("c-lseek %zu %ld %zu %ld %c set=%ld end=%ld\n", got4, at4, got1, at5, cb[0],
         (long)lseek(cfd, 0, SEEK_SET), (long)lseek(cfd, 0, SEEK_END));
  if (fp) fclose(fp);
  fp = fopen("pread.txt", "w");
  if (fp) { fputs("pread-test", fp); fclose(fp); }
  int pfd = open("pread.txt", O_RDONLY);
  memset(cb, 0, sizeof cb);
  printf("c-pread %d %zd [%s]\n", pfd > 0, pread(pfd, cb, 3, 4), cb);
  printf("c-close %d\n", close(pfd));
  mkdir("writeable", 0755);
  const char *tf = "writeable/test_pwrite_pread.txt.cleanup";
  printf("c-access-missing %d\n", access(tf, F_OK) != 0);
  pfd = open(tf, O_WRONLY | O_CREAT);
  printf("c-pwrite %d %zd %zd %d\n", pfd > 0, pwrite(pfd, "very long text", 14, 0),
         pwrite(pfd, "test", 4, 3), close(pfd));
  pfd = open(tf, O_RDONLY);
  memset(cb, 0, sizeof cb);
  printf("c-pwrite-read %zd [%s] %d %d\n", read(pfd, cb, sizeof cb), cb, close(pfd), remove(tf));
  pfd = open("pwrite.cleanup", O_CREAT | O_TRUNC | O_WRONLY | O_APPEND);
  ssize_t a1 = write(pfd, cb, 2);
  long s0 = (long)lseek(pfd, 0, SEEK_SET);
  ssize_t a2 = write(pfd, cb, 2);
  long c4 = (long)lseek(pfd, 0, SEEK_CUR);
  ssize_t a3 = pwrite(pfd, cb, 3, 0);
  long c4b = (long)lseek(pfd, 0, SEEK_CUR);
  printf("c-pwrite-append %zd %ld %zd %ld %zd %ld end=%ld\n", a1, s0, a2, c4, a3, c4b,
         (long)lseek(pfd, 0, SEEK_END));
  close(pfd);
  unlink("pwrite.cleanup");
  fp = fopen("file", "w");
  if (fp) fclose(fp);
  int fa = open("file", O_RDONLY), fb2 = open("lseek.txt", O_RDONLY);
  struct stat sa, sb;
  printf("c-stat-dev-ino %d %d same-dev=%d other-ino=%d\n", fstat(fa, &sa), fstat(fb2, &sb),
         sa.st_dev == sb.st_dev, sa.st_ino != sb.st_ino);
  close(fa);
  close(fb2);
  mkdir("fopendir.dir", 0755);
  fp = fopen("fopendir.dir/file-0", "w");
  if (fp) fclose(fp);
  fp = fopen("fopendir.dir/file-1", "w");
  if (fp) fclose(fp);
  int dfd = open("fopendir.dir", O_RDONLY | O_DIRECTORY);
  DIR *dp = dfd >= 0 ? fdopendir(dfd) : NULL;
  int seen = 0, match = 0;
  ino_t inos[2] = {0, 0};
  struct dirent *de;
  while (dp && (de = readdir(dp)) != NULL) {
    if (de->d_name[0] == '.') continue;
    struct stat sd;
    int k = de->d_name[5] - '0';
    if (k == 0 || k == 1) inos[k] = de->d_ino;
    seen++;
    match += fstatat(dfd, de->d_name, &sd, AT_SYMLINK_NOFOLLOW) == 0 && sd.st_ino == de->d_ino;
  }
  if (dp) closedir(dp);
  printf("c-fdopendir %d seen=%d match=%d distinct=%d\n", dp != NULL, seen, match,
         inos[0] && inos[1] && inos[0] != inos[1]);
  unlink("fopendir.dir/file-0");
  unlink("fopendir.dir/file-1");
  rmdir("fopendir.dir");
  rmdir("writeable");
  unlink("file");
  unlink("lseek.txt");
  unlink("pread.txt");
}

/* clock_getres-*, clock_gettime-*, sock_shutdown-* and fopen-with-no-access
 * (which get no directory) */
void c_nodir(void) {
  struct timespec ts1, ts2, res;
  int g1 = clock_gettime(CLOCK_MONOTONIC, &ts1), g2 = clock_gettime(CLOCK_MONOTONIC, &ts2);
  printf("c-monotonic %d %d strictly-later=%d\n", g1, g2,
         ts1.tv_sec == ts2.tv_sec ? ts1.tv_nsec < ts2.tv_nsec : ts1.tv_sec < ts2.tv_sec);
  printf("c-realtime %d getres %d %d\n", clock_gettime(CLOCK_REALTIME, &ts1),
         clock_getres(CLOCK_REALTIME, &res), clock_getres(CLOCK_MONOTONIC, &res));
  errno = 0;
  printf("c-shutdown-stdout %d", shutdown(1, SHUT_RD));
  printf(" enotsock=%d\n", errno == ENOTSOCK);
  errno = 0;
  printf("c-shutdown-3 %d", shutdown(3, SHUT_RD));
  printf(" ebadf=%d\n", errno == EBADF);
  errno = 0;
  FILE *fp = fopen("fs-tests.dir/file", "r");
  printf("c-fopen-no-access %d enotcapable=%d\n", fp != NULL, errno == ENOTCAPABLE);
  if (fp) fclose(fp);
}
