/* Holds the directory /d/work open (a WASI descriptor: a Directory from subdir),
   makes /d/ready, waits (at most a minute) for /d/moved, then makes pwn and reads
   private.txt through the descriptor held, printing what each did.  test_wasi.py
   moves work out of the grant meanwhile. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *said(int e) {
  return e == EPERM ? "EPERM" : e == ENOTCAPABLE ? "ENOTCAPABLE" : strerror(e);
}

int main(void) {
  int dir = open("/d/work", O_RDONLY | O_DIRECTORY);
  if (dir < 0) { printf("open /d/work: %s\n", strerror(errno)); return 1; }
  close(open("/d/ready", O_CREAT | O_WRONLY, 0644));
  struct stat s;
  struct timespec t = {0, 50000000};
  for (int i = 0; i < 1200 && stat("/d/moved", &s) != 0; i++) nanosleep(&t, 0);
  int f = openat(dir, "pwn", O_CREAT | O_WRONLY, 0644);
  if (f < 0) printf("create pwn: %s\n", said(errno));
  else { write(f, "made by the plugin\n", 19); close(f); printf("create pwn: ok\n"); }
  char buf[100] = {0};
  int r = openat(dir, "private.txt", O_RDONLY);
  if (r < 0) printf("read private.txt: %s\n", said(errno));
  else { read(r, buf, sizeof buf - 1); printf("read private.txt: %s", buf); }
  return 0;
}
