/*
 * A bare ioctl round trip on a userfaultfd: UFFDIO_WAKE on one registered page
 * with nobody waiting (the kernel validates the range and finds no waiter), so
 * the cost is the system call itself. Pairs with bench/ours/ioctl_roundtrip.ts.
 *
 *   ioctl_roundtrip --iterations=N --warmup=W
 */
#include "bench.h"

int main(int argc, char **argv) {
  uint64_t iterations = arg_u64(argc, argv, "iterations", 200000);
  uint64_t warmup = arg_u64(argc, argv, "warmup", 20000);
  long page = sysconf(_SC_PAGESIZE);

  int fd = uffd_open(0);
  char *mem = map_anon(page);
  uffd_register(fd, mem, page, UFFDIO_REGISTER_MODE_MISSING);
  struct uffdio_range range = {.start = (uint64_t)mem, .len = (uint64_t)page};

  for (uint64_t i = 0; i < warmup; i++)
    if (ioctl(fd, UFFDIO_WAKE, &range)) die("UFFDIO_WAKE");
  struct stopwatch sw = {0};
  sw_start(&sw);
  for (uint64_t i = 0; i < iterations; i++)
    if (ioctl(fd, UFFDIO_WAKE, &range)) die("UFFDIO_WAKE");
  sw_stop(&sw);

  emit("ioctl_roundtrip", "UFFDIO_WAKE", (uint64_t)page, iterations, &sw, "");
  return 0;
}
