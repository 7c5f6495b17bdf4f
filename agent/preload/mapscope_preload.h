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
 * Counters live in initial-exec TLS: nothing shared is touched on the hot
 * path.  A thread adds them to the process totals every 4096 events (256
 * while a tracer is attached), when it exits (pthread key destructor) and at
 * process exit; the totals are published through the USDT probe
 *
 *   mapscope:malloc_totals(allocs, frees, alloc_bytes, free_bytes, seq)
 *
 * only while a tracer has its semaphore set, at most once per 64 Ki
 * allocations or 100 ms (checked when a thread adds its counters), and at
 * every thread exit and at process exit.  Totals are lifetime values of the
 * process; a forked child starts from its parent's totals at the fork (the
 * heap it inherits), minus the unflushed counts of the parent's other
 * threads.  Published totals lag by up to 255 events per thread while
 * traced (a thread that makes fewer calls than that since its last flush
 * is not in them until it makes more or exits).  A process that ends with
 * _exit() or a signal loses the counts its threads had not flushed.
 *
 * mapscope_preload_flush() adds the calling thread's counters to the totals
 * and publishes them now (when traced).  A program can call it (found with
 * dlsym, so it also runs without the shim) to mark a point in time, as
 * mapscope's tests do.
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
