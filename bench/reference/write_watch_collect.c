/*
 * Collecting the written pages of watched memory, the C side of WriteWatch.collect(): --bytes of
 * private anonymous memory (no transparent huge pages), every page made resident, registered for
 * write-protect on a userfaultfd with UFFD_FEATURE_WP_ASYNC and UFFD_FEATURE_WP_UNPOPULATED, and
 * protected. Each iteration first writes one byte into --fraction of the pages (0, every 100th
 * page, or all), untimed (the kernel resolves those faults itself), then times one get-and-reset:
 * PAGEMAP_SCAN with PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, category PAGE_IS_WRITTEN
 * (required and returned), a 4096-entry vector, resumed from walk_end until the range is covered,
 * every region appended to a result array. With --scatter=N it writes N pages scattered over the
 * range instead (the first N of a Fisher-Yates permutation with a 32-bit LCG, seed 12345: the same
 * pages as the ours side). Each answer is checked: exactly the pages written.
 * Pairs with bench/ours/write_watch_collect.ts.
 *
 *   write_watch_collect --bytes=B (--fraction=F | --scatter=N) --iterations=N --warmup=W
 */
#include "bench.h"

#ifndef PAGEMAP_SCAN
#define PAGEMAP_SCAN 0xc0606610ul
struct page_region {
  uint64_t start, end, categories;
};
struct pm_scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
      category_anyof_mask, return_mask;
};
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#define PM_SCAN_WP_MATCHING_FLAG 0x1ull
#define PM_SCAN_CHECK_WPASYNC_FLAG 0x2ull
#define PAGE_IS_WRITTEN_BIT 0x2ull
#define VEC_LEN 4096

static struct page_region vec[VEC_LEN];
static struct page_region *out;
static size_t out_cap;

/* One get-and-reset of [start, end): the number of written pages, regions kept in `out`. */
static uint64_t collect(int fd, uint64_t start, uint64_t end, uint64_t page, size_t *regions) {
  size_t n = 0;
  uint64_t at = start, covered = start, found = 0;
  while (at < end) {
    struct pm_scan_arg arg = {
        .size = sizeof arg,
        .flags = PM_SCAN_WP_MATCHING_FLAG | PM_SCAN_CHECK_WPASYNC_FLAG,
        .start = at,
        .end = end,
        .vec = (uint64_t)vec,
        .vec_len = VEC_LEN,
        .category_mask = PAGE_IS_WRITTEN_BIT,
        .return_mask = PAGE_IS_WRITTEN_BIT,
    };
    long got = ioctl(fd, PAGEMAP_SCAN, &arg);
    if (got < 0) die("PAGEMAP_SCAN");
    if (n + (size_t)got > out_cap) {
      out_cap = (n + got) * 2;
      out = realloc(out, out_cap * sizeof *out);
      if (!out) die("realloc");
    }
    for (long i = 0; i < got; i++) {
      if (vec[i].end <= covered) continue; /* reported again after a stale walk_end (see pagemap_scan.c) */
      out[n] = vec[i];
      if (out[n].start < covered) out[n].start = covered;
      covered = out[n].end;
      found += (out[n].end - out[n].start) / page;
      n++;
    }
    if (got < VEC_LEN || arg.walk_end <= at) break;
    at = arg.walk_end;
  }
  *regions = n;
  return found;
}

int main(int argc, char **argv) {
  uint64_t bytes = arg_u64(argc, argv, "bytes", 1ull << 30);
  double fraction = arg_f64(argc, argv, "fraction", 0.01);
  uint64_t iterations = arg_u64(argc, argv, "iterations", 10);
  uint64_t warmup = arg_u64(argc, argv, "warmup", 2);
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  uint64_t pages = bytes / page;
  uint64_t scatter = arg_u64(argc, argv, "scatter", 0);
  if (scatter > pages) fail("--scatter must not exceed the pages of --bytes");
  uint64_t stride = scatter ? 0 : fraction >= 1 ? 1 : fraction > 0 ? (uint64_t)(1 / fraction + 0.5) : 0;
  uint64_t expected = scatter ? scatter : stride ? (pages + stride - 1) / stride : 0;
  uint64_t *scattered = calloc(scatter ? scatter : 1, sizeof *scattered);
  if (scatter) {
    uint32_t *order = malloc(pages * sizeof *order);
    if (!order || !scattered) fail("malloc");
    for (uint64_t i = 0; i < pages; i++) order[i] = (uint32_t)i;
    uint32_t s = 12345;
    for (uint64_t i = pages - 1; i > 0; i--) {
      s = s * 1664525u + 1013904223u;
      uint64_t j = s % (i + 1);
      uint32_t t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
    for (uint64_t i = 0; i < scatter; i++) scattered[i] = order[i] * page;
    free(order);
  }

  char *mem = map_anon(bytes);
  if (madvise(mem, bytes, MADV_POPULATE_WRITE)) die("madvise(MADV_POPULATE_WRITE)");
  int uffd = uffd_open(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED);
  uffd_register(uffd, mem, bytes, UFFDIO_REGISTER_MODE_WP);
  struct uffdio_writeprotect wp = {.range = {.start = (uint64_t)mem, .len = bytes}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
  if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp)) die("UFFDIO_WRITEPROTECT");
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open /proc/self/pagemap");
  uint64_t start = (uint64_t)mem, end = start + bytes;

  struct stopwatch sw = {0}, unused = {0};
  size_t regions = 0;
  for (uint64_t i = 0; i < warmup + iterations; i++) {
    for (uint64_t k = 0; k < scatter; k++) ((volatile char *)mem)[scattered[k]] = (char)(i + 1);
    if (stride)
      for (uint64_t p = 0; p < pages; p += stride) ((volatile char *)mem)[p * page] = (char)(i + 1);
    struct stopwatch *timer = i < warmup ? &unused : &sw;
    sw_start(timer);
    uint64_t found = collect(fd, start, end, page, &regions);
    sw_stop(timer);
    if (found != expected) {
      fprintf(stderr, "collect found %llu written pages, expected %llu\n", (unsigned long long)found,
              (unsigned long long)expected);
      return 1;
    }
  }
  char kase[64], extra[128];
  if (scatter) snprintf(kase, sizeof kase, "scatter=%llu", (unsigned long long)scatter);
  else snprintf(kase, sizeof kase, "fraction=%g", fraction);
  snprintf(extra, sizeof extra, "\"written_pages\":%llu,\"regions\":%zu", (unsigned long long)expected, regions);
  emit("write_watch_collect", kase, bytes, iterations, &sw, extra);
  return 0;
}
