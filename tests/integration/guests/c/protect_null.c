/* Memory protection (test_protect.py): dereferences NULL.  Built with wsuper
 * build, so address 0 is in the no-access page; the load traps. */
#include <stdio.h>

int main(void) {
  int *volatile p = NULL;      /* volatile: the compiler must really load */
  printf("null: reading *NULL\n");
  fflush(stdout);
  printf("null: read %d (not protected)\n", *p);
  return 0;
}
