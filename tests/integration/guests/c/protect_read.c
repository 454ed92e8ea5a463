/* Memory protection (test_protect.py): passes a .rodata pointer to read() as
 * the buffer to fill; the engine refuses with EFAULT and the literal is intact. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char greeting[] = "constant greeting";

int main(void) {
  char *buf = (char *)greeting;
  printf("read: into %p\n", (void *)buf);
  fflush(stdout);
  ssize_t n = read(0, buf, 8);
  int e = errno;
  printf("read: returned %zd, errno %s; greeting is \"%s\"\n", n,
         n < 0 && e == EFAULT ? "EFAULT" : strerror(e), greeting);
  char ok[8];
  n = read(0, ok, 5);       /* the same call into the stack works */
  printf("read: into the stack: %zd bytes \"%.*s\"\n", n, (int)(n > 0 ? n : 0), ok);
  return 0;
}
