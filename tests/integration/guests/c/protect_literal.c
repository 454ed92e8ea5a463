/* Memory protection (test_protect.py): writes into a string literal, which
 * wsuper build puts in read-only pages (.rodata). */
#include <stdio.h>

int main(void) {
  char *volatile s = (char *)"hello, world";
  printf("literal: at %p, writing 'H'\n", (void *)s);
  fflush(stdout);
  s[0] = 'H';
  printf("literal: now %s (not protected)\n", s);
  return 0;
}
