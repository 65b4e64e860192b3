/*
 * The first write to a page under asynchronous write protection: a userfaultfd
 * with UFFD_FEATURE_WP_ASYNC (and WP_UNPOPULATED, as the async write watch
 * negotiates), --bytes of resident memory registered for WP and write-protected;
 * each round writes one byte to every page (timed: the kernel resolves each
 * write-protect fault itself), then protects the range again (untimed). Pairs
 * with bench/ours/async_first_write.ts.
 *
 *   async_first_write --bytes=B --rounds=R
 */
#include "bench.h"

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1ull << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1ull << 15)
#endif

static void protect(int fd, char *mem, uint64_t bytes) {
  struct uffdio_writeprotect wp = {.range = {.start = (uint64_t)mem, .len = bytes}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
  if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp)) die("UFFDIO_WRITEPROTECT");
}

int main(int argc, char **argv) {
  uint64_t bytes = arg_u64(argc, argv, "bytes", 256ull << 20);
  uint64_t rounds = arg_u64(argc, argv, "rounds", 3);
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  uint64_t pages = bytes / page;

  char *mem = map_anon(bytes);
  memset(mem, 1, bytes); /* resident before protection: every timed write is a first write to a protected page */
  int fd = uffd_open(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED);
  uffd_register(fd, mem, bytes, UFFDIO_REGISTER_MODE_WP);
  protect(fd, mem, bytes);

  struct stopwatch sw = {0}, unused = {0};
  volatile char *view = mem;
  for (uint64_t round = 0; round <= rounds; round++) {
    struct stopwatch *timer = round == 0 ? &unused : &sw; /* round 0 is the warmup */
    sw_start(timer);
    for (uint64_t offset = 0; offset < bytes; offset += page) view[offset] = (char)(round + 2);
    sw_stop(timer);
    if (view[(pages - 1) * page] != (char)(round + 2)) fail("the last page does not hold the round's byte");
    protect(fd, mem, bytes);
  }
  emit("async_first_write", "first write, WP_ASYNC", bytes, rounds * pages, &sw, "");
  return 0;
}
