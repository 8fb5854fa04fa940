/* Large memcpy calls of a process, for benches/load/callgrind.sh (MEMCPY=1).
 *
 * Callgrind counts each byte a `rep movsb` copies as an instruction, so a large copy (a
 * future moved into its Box) weighs far more in its count than on the CPU. This LD_PRELOAD
 * shim writes, for every memcpy over 900 bytes, its size and its caller (object and offset,
 * for addr2line) to stderr, so the copies can be named and sized.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void *(*real)(void *, const void *, size_t);
static FILE *out;
void *memcpy(void *d, const void *s, size_t n) {
  if (!real) real = dlsym(RTLD_NEXT, "memcpy");
  if (n > 900) {
    void *ra = __builtin_return_address(0);
    Dl_info info;
    if (dladdr(ra, &info) && info.dli_fbase) {
      char buf[200];
      int len = snprintf(buf, sizeof buf, "MEMCPY %zu %s 0x%lx\n", n, info.dli_fname,
                         (unsigned long)((char *)ra - (char *)info.dli_fbase));
      write(2, buf, len);
    }
  }
  return real(d, s, n);
}
