/* floor_shim: what any LD_PRELOAD malloc counter costs at the least, for
 * part C of make bench-tracing (tools/bench/tracing.py), side by side with
 * libmapscope_preload.so.  Built twice:
 *
 *   build/bench/libfloor_forward.so   malloc and free only forward to glibc
 *                                     (tail calls): the price of being
 *                                     interposed at all;
 *   build/bench/libfloor_request.so   -DCOUNT_REQUEST: also counts calls and
 *                                     bytes in thread-local counters, sizing
 *                                     an allocation by its request so that
 *                                     malloc stays a tail call.  Not exact:
 *                                     glibc may hand out a chunk 16 bytes
 *                                     larger than asked for, and a free is
 *                                     sized by the chunk, so outstanding
 *                                     bytes drift.  The cheapest counter
 *                                     that counts bytes at all.
 *
 * Neither publishes anything: reference rows, not tools.
 */
#include <stddef.h>
#include <stdint.h>

extern void* __libc_malloc(size_t);
extern void __libc_free(void*);

#define EXPORT __attribute__((visibility("default")))

#ifdef COUNT_REQUEST
static __thread uint64_t counts[4] __attribute__((tls_model("initial-exec")));
#endif

EXPORT void* malloc(size_t n) {
#ifdef COUNT_REQUEST
  counts[0]++;
  counts[1] += n;
#endif
  return __libc_malloc(n);
}

EXPORT void free(void* p) {
#ifdef COUNT_REQUEST
  if (p) {
    counts[2]++;
    counts[3] += (((const size_t*)p)[-1] & ~(size_t)7) - sizeof(size_t);
  }
#endif
  __libc_free(p);
}
