/* File: mapscope_preload.h
 *
 * libmapscope_preload.so: malloc counters for mapscope at near-zero cost.
 *
 * Start a service with
 *
 *   LD_PRELOAD=/path/to/libmapscope_preload.so service ...
 *
 * and `mapscope --malloc=auto` (the default) reads its counters instead of
 * putting uprobes on libc.  The shim wraps malloc, calloc, realloc,
 * reallocarray, free, posix_memalign, aligned_alloc, memalign, valloc and
 * pvalloc (the real ones found with dlsym(RTLD_NEXT, ...)) and counts, per
 * thread:
 *
 *   allocs       successful allocations
 *   frees        frees of non-NULL pointers
 *   alloc_bytes  malloc_usable_size() of each allocation
 *   free_bytes   malloc_usable_size() of each freed block
 *
 * Both sides use malloc_usable_size(), so alloc_bytes - free_bytes is
 * exactly the usable size of what is outstanding (a free is sized by the
 * allocator itself, not by a table the shim would have to keep).
 * realloc(p, n) returning q counts as a free of p and an allocation of q;
 * realloc(p, 0) returning NULL as a free of p (bpf/malloc.h uses the same
 * conventions).
 *
 * Counters live in initial-exec TLS, written only by their own thread:
 * nothing shared is touched on the hot path.  A publisher adds up every
 * live thread's counters where they are, plus what exited threads left;
 * the totals are published through the USDT probe
 *
 *   mapscope:malloc_totals(allocs, frees, alloc_bytes, free_bytes, seq)
 *
 * only while a tracer has its semaphore set: at most once per 100 ms
 * (checked at every 256th allocation or free of a thread), at every thread
 * exit, at process exit and after it (what later destructors free).  A
 * publication includes every call that returned before it began, on any
 * thread, including threads that have since gone quiet.  Totals are
 * lifetime values of the process; a forked child starts from its parent's
 * totals at the fork (the heap it inherits), minus calls racing with the
 * fork on the parent's other threads.  A process that ends with _exit() or
 * a signal is published as of its last publication.
 *
 * mapscope_preload_flush() publishes the totals now (when traced).  A
 * program can call it (found with dlsym, so it also runs without the shim)
 * to mark a point in time, as mapscope's tests do.
 */
#ifndef MAPSCOPE_PRELOAD_H_
#define MAPSCOPE_PRELOAD_H_

#ifdef __cplusplus
extern "C" {
#endif

void mapscope_preload_flush(void);

#ifdef __cplusplus
}
#endif

#endif /* MAPSCOPE_PRELOAD_H_ */
