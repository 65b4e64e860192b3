/*
 * PAGEMAP_SCAN over a mapping of --bytes, of which --fraction of the pages are
 * resident: 0 (never touched), 0.01 (every 100th page: one region per page, the
 * most regions a 1% set can make) or 1 (every page). Each scan asks for
 * PAGE_IS_PRESENT with a 1024-entry output vector, resumes from walk_end until
 * the range is covered, and appends every region to a result array (what a
 * caller keeps). Pairs with bench/ours/pagemap_scan.ts.
 *
 * Kernel quirk (observed on 6.18, read in do_pagemap_scan): the kernel fills the
 * caller's vector in chunks of 512 regions; when one call needs more than one
 * chunk and its last chunk ends without filling up, walk_end keeps the previous
 * chunk's stop address, so resuming from walk_end reports the regions after it
 * a second time. Regions that end at or before what is already covered are
 * therefore skipped (and a straddling one trimmed).
 *
 *   pagemap_scan --bytes=B --fraction=F --iterations=N --warmup=W
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
#define PAGE_IS_PRESENT_BIT 0x8ull
#define VEC_LEN 1024

static struct page_region vec[VEC_LEN];
static struct page_region *out;
static size_t out_cap;

/* One full scan of [start, end): the number of regions collected into `out`. */
static size_t scan(int fd, uint64_t start, uint64_t end) {
  size_t n = 0;
  uint64_t at = start, covered = start;
  while (at < end) {
    struct pm_scan_arg arg = {
        .size = sizeof arg,
        .start = at,
        .end = end,
        .vec = (uint64_t)vec,
        .vec_len = VEC_LEN,
        .category_mask = PAGE_IS_PRESENT_BIT,
        .return_mask = PAGE_IS_PRESENT_BIT,
    };
    long got = ioctl(fd, PAGEMAP_SCAN, &arg);
    if (got < 0) die("PAGEMAP_SCAN");
    if (n + (size_t)got > out_cap) {
      out_cap = (n + got) * 2;
      out = realloc(out, out_cap * sizeof *out);
      if (!out) die("realloc");
    }
    for (long i = 0; i < got; i++) {
      if (vec[i].end <= covered) continue; /* reported again after a stale walk_end */
      out[n] = vec[i];
      if (out[n].start < covered) out[n].start = covered;
      covered = out[n].end;
      n++;
    }
    if (arg.walk_end <= at) break;
    at = arg.walk_end;
  }
  return n;
}

int main(int argc, char **argv) {
  uint64_t bytes = arg_u64(argc, argv, "bytes", 1ull << 30);
  double fraction = arg_f64(argc, argv, "fraction", 1);
  uint64_t iterations = arg_u64(argc, argv, "iterations", 10);
  uint64_t warmup = arg_u64(argc, argv, "warmup", 2);
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  uint64_t pages = bytes / page;

  char *mem = map_anon(bytes);
  uint64_t expected = 0;
  if (fraction >= 1) {
    if (madvise(mem, bytes, MADV_POPULATE_WRITE)) die("madvise(MADV_POPULATE_WRITE)");
    expected = pages;
  } else if (fraction > 0) {
    uint64_t stride = (uint64_t)(1 / fraction + 0.5);
    for (uint64_t i = 0; i < pages; i += stride, expected++)
      if (madvise(mem + i * page, page, MADV_POPULATE_WRITE)) die("madvise(MADV_POPULATE_WRITE)");
  }
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open /proc/self/pagemap");
  uint64_t start = (uint64_t)mem, end = start + bytes;

  size_t regions = 0;
  for (uint64_t i = 0; i < warmup; i++) regions = scan(fd, start, end);
  struct stopwatch sw = {0};
  sw_start(&sw);
  for (uint64_t i = 0; i < iterations; i++) regions = scan(fd, start, end);
  sw_stop(&sw);

  uint64_t present = 0;
  for (size_t i = 0; i < regions; i++) present += (out[i].end - out[i].start) / page;
  if (present != expected) {
    fprintf(stderr, "scan found %llu present pages, expected %llu\n", (unsigned long long)present,
            (unsigned long long)expected);
    return 1;
  }
  char kase[64], extra[128];
  snprintf(kase, sizeof kase, "fraction=%g", fraction);
  snprintf(extra, sizeof extra, "\"regions\":%zu,\"present_pages\":%llu", regions, (unsigned long long)present);
  emit("pagemap_scan", kase, bytes, iterations, &sw, extra);
  return 0;
}
