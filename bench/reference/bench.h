/*
 * Shared helpers of the C reference programs (bench/reference/, one per measurement): argument
 * parsing (--key=value, the same arguments as the bench/ours programs), the monotonic
 * clock, a userfaultfd opener and the one JSON line each result is printed as.
 * Header-only: every program is one translation unit built with `cc -O2`.
 */
#ifndef UFFD_BENCH_H
#define UFFD_BENCH_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static inline void die(const char *what) {
  fprintf(stderr, "%s: %s\n", what, strerror(errno));
  exit(1);
}

static inline void fail(const char *what) {
  fprintf(stderr, "%s\n", what);
  exit(1);
}

static inline uint64_t clock_ns(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CLOCK_MONOTONIC in nanoseconds: the clock the bench/ours programs read through clock_gettime too. */
static inline uint64_t now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

/*
 * Wall time (CLOCK_MONOTONIC) and this thread's CPU time (CLOCK_THREAD_CPUTIME_ID)
 * of the timed sections, accumulated. The CPU clock is read outside the wall
 * window (it is a system call); on a busy machine it leaves out the time the
 * thread waited for a CPU. bench/lib/measure.ts's Stopwatch does the same.
 */
struct stopwatch {
  uint64_t wall, cpu, wall0, cpu0;
};
static inline void sw_start(struct stopwatch *s) {
  s->cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
  s->wall0 = now_ns();
}
static inline void sw_stop(struct stopwatch *s) {
  uint64_t wall1 = now_ns();
  s->cpu += clock_ns(CLOCK_THREAD_CPUTIME_ID) - s->cpu0;
  s->wall += wall1 - s->wall0;
}

/* The value of --key=value, or `fallback`. */
static inline const char *arg_str(int argc, char **argv, const char *key, const char *fallback) {
  size_t n = strlen(key);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] == '-' && a[1] == '-' && strncmp(a + 2, key, n) == 0 && a[2 + n] == '=') return a + 3 + n;
  }
  return fallback;
}

static inline uint64_t arg_u64(int argc, char **argv, const char *key, uint64_t fallback) {
  const char *v = arg_str(argc, argv, key, NULL);
  return v ? strtoull(v, NULL, 10) : fallback;
}

static inline double arg_f64(int argc, char **argv, const char *key, double fallback) {
  const char *v = arg_str(argc, argv, key, NULL);
  return v ? strtod(v, NULL) : fallback;
}

/* A non-blocking userfaultfd after the UFFDIO_API handshake with `features`. */
static inline int uffd_open(uint64_t features) {
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) die("userfaultfd");
  struct uffdio_api api = {.api = UFFD_API, .features = features};
  if (ioctl(fd, UFFDIO_API, &api)) die("UFFDIO_API");
  return fd;
}

static inline void uffd_register(int fd, void *start, uint64_t len, uint64_t mode) {
  struct uffdio_register reg = {.range = {.start = (uint64_t)start, .len = len}, .mode = mode};
  if (ioctl(fd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER");
}

/* Where every benchmark's memory starts: on a 1 GiB boundary (a page-table entry of the top but one level), as
   bench/lib/fixtures.ts maps it. Where a range starts decides how much of the page tables a walk visits. */
#define MAP_ALIGN (1ULL << 30)

/* Private anonymous memory, MAP_NORESERVE, without transparent huge pages (4 KiB PTEs, as bench/ours), starting on a
   MAP_ALIGN boundary. */
static inline char *map_anon(uint64_t bytes) {
  /* Reserve an aligned block's worth more, map at the first MAP_ALIGN boundary in it, unmap the slack. */
  char *r = mmap(NULL, bytes + MAP_ALIGN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) die("mmap");
  char *p = (char *)(((uintptr_t)r + MAP_ALIGN - 1) & ~(uintptr_t)(MAP_ALIGN - 1));
  if (p > r && munmap(r, p - r)) die("munmap");
  if (munmap(p + bytes, r + MAP_ALIGN - p)) die("munmap"); /* the tail: never empty, p < r + MAP_ALIGN */
  if (mmap(p, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) != p)
    die("mmap(MAP_FIXED)");
  if (madvise(p, bytes, MADV_NOHUGEPAGE)) die("madvise(MADV_NOHUGEPAGE)");
  return p;
}

/* The process's peak resident set (VmHWM of /proc/self/status) in KiB, 0 if it cannot be read. */
static inline unsigned long long peak_rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  unsigned long long kib = 0;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmHWM:", 6) == 0) kib = strtoull(line + 6, NULL, 10);
  fclose(f);
  return kib;
}

/*
 * The result line: {"bench":…,"impl":"c","case":…,"bytes":…,"ops":…,"total_ns":…,"cpu_ns":…,
 * "ns_per_op":…,"cpu_ns_per_op":…,"extra":{"peak_rss_kib":…,…}}. `extra` is a JSON object's inside
 * ("" for none); the peak resident set is put in front of it, as bench/lib/measure.ts does.
 */
static inline void emit(const char *bench, const char *kase, uint64_t bytes, uint64_t ops, const struct stopwatch *s,
                        const char *extra) {
  printf("{\"bench\":\"%s\",\"impl\":\"c\",\"case\":\"%s\",\"bytes\":%llu,\"ops\":%llu,\"total_ns\":%llu,"
         "\"cpu_ns\":%llu,\"ns_per_op\":%.3f,\"cpu_ns_per_op\":%.3f,\"extra\":{\"peak_rss_kib\":%llu%s%s}}\n",
         bench, kase, (unsigned long long)bytes, (unsigned long long)ops, (unsigned long long)s->wall,
         (unsigned long long)s->cpu, ops ? (double)s->wall / (double)ops : 0.0,
         ops ? (double)s->cpu / (double)ops : 0.0, peak_rss_kib(), extra[0] ? "," : "", extra);
  fflush(stdout);
}

#endif
