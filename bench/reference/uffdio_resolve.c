/*
 * Resolving missing pages ahead of any fault, one page per ioctl: UFFDIO_COPY
 * from a page-aligned source page, or UFFDIO_ZEROPAGE. This is the ioctl's
 * service cost per page (allocate, copy or map the zero page, install the PTE),
 * without the fault's own round trip. Between rounds (untimed) MADV_DONTNEED
 * makes every page missing again. Pairs with bench/ours/uffdio_resolve.ts.
 *
 *   uffdio_resolve --op=copy|zeropage --bytes=B --rounds=R --warmup=W (W pages)
 */
#include "bench.h"

int main(int argc, char **argv) {
  const char *op = arg_str(argc, argv, "op", "copy");
  uint64_t bytes = arg_u64(argc, argv, "bytes", 64ull << 20);
  uint64_t rounds = arg_u64(argc, argv, "rounds", 1);
  uint64_t warmup = arg_u64(argc, argv, "warmup", 4096);
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  uint64_t pages = bytes / page;
  int copy = strcmp(op, "copy") == 0;
  if (!copy && strcmp(op, "zeropage") != 0) fail("--op must be copy or zeropage");
  if (warmup > pages) warmup = pages;

  int fd = uffd_open(0);
  char *mem = map_anon(bytes);
  uffd_register(fd, mem, bytes, UFFDIO_REGISTER_MODE_MISSING);
  char *src = map_anon(page);
  memset(src, 0x5a, page);

  struct stopwatch sw = {0}, unused = {0};
  for (uint64_t round = 0; round <= rounds; round++) {
    uint64_t n = round == 0 ? warmup : pages; /* round 0 is the warmup */
    struct stopwatch *timer = round == 0 ? &unused : &sw;
    sw_start(timer);
    if (copy) {
      for (uint64_t i = 0; i < n; i++) {
        struct uffdio_copy c = {.dst = (uint64_t)(mem + i * page), .src = (uint64_t)src, .len = page};
        if (ioctl(fd, UFFDIO_COPY, &c) || c.copy != (int64_t)page) die("UFFDIO_COPY");
      }
    } else {
      for (uint64_t i = 0; i < n; i++) {
        struct uffdio_zeropage z = {.range = {.start = (uint64_t)(mem + i * page), .len = page}};
        if (ioctl(fd, UFFDIO_ZEROPAGE, &z) || z.zeropage != (int64_t)page) die("UFFDIO_ZEROPAGE");
      }
    }
    sw_stop(timer);
    if (copy && mem[(n - 1) * page] != 0x5a) fail("the last copied page does not hold the source's bytes");
    if (madvise(mem, bytes, MADV_DONTNEED)) die("madvise(MADV_DONTNEED)");
  }
  emit("uffdio_resolve", copy ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE", bytes, rounds * pages, &sw, "");
  return 0;
}
