/* Memory protection (test_protect.py): overwrites a const table of function
 * pointers (in .rodata), as corrupted code would to take over a call. */
#include <stdio.h>

typedef int (*op)(int, int);
static int add(int a, int b) { return a + b; }
static int evil(int a, int b) { (void)a; (void)b; return 666; }
static const op ops[2] = {add, add};

int main(void) {
  op *volatile slot = (op *)&ops[1];
  printf("vtable: ops at %p, 2+3=%d; overwriting ops[1]\n", (void *)ops, ops[1](2, 3));
  fflush(stdout);
  *slot = evil;
  printf("vtable: 2+3=%d (not protected)\n", ops[1](2, 3));
  return 0;
}
