/*
 * A live snapshot, the C side: a QEMU-style background snapshot of --bytes of private anonymous
 * memory (4 KiB pages, MADV_NOHUGEPAGE)
 * into a populated buffer of the same size, with a fault-handler thread (read the fault, copy the
 * page's old content unless the copier has, unprotect it) and the copier on the main thread
 * (chunks of `--chunk` pages in address order, the unsaved pages of a chunk copied with one memcpy
 * per run, done chunks unprotected `--unprotect` pages per UFFDIO_WRITEPROTECT once a write has faulted on
 * a page already saved — none before: the protections left go with the close of the userfaultfd), the same
 * design as ours (snapshot/_copier.ts): a per-chunk lock
 * (compare-and-swap) decides who saves each page. With `--writer=1` a third thread writes one word into
 * a random page in a loop and times every write: a write that takes more than 2 µs counts as a
 * stall (it waited in a write-protect fault). The same run times one plain memcpy of the whole
 * buffer first, and checks every saved page afterwards. The result line's time is the snapshot's,
 * from protection to the last page saved, per page (its CPU time is the copier's, the main
 * thread's); `extra` holds the memcpy time per page and the writer's stall per fault, as
 * bench/ours/live_snapshot.ts prints them.
 *
 * With `--copy=pvm` every page is copied by process_vm_writev(2) on the process itself instead of memcpy
 * (the target the local side, the sink the remote one), as ours copies (ffi/_own_memory.ts) so that a page
 * unmapped under the snapshot fails the copy with EFAULT instead of killing the process: the like-for-like row.
 *
 *   live_snapshot --bytes=B --writer=0|1 --chunk=64 --unprotect=1024 --copy=memcpy|pvm
 */
#include "bench.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/uio.h>

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif

#define PAGE 4096ull
#define STALL_NS 2000ull
#define MAX_STALLS (1u << 20)

static uint8_t *mem, *sink;
static uint64_t pages;
static uint8_t *saved;        /* per page, changed under its chunk's lock */
static _Atomic uint8_t *lock; /* per chunk: 0 free, 1 held, 2 done (every page saved) */
static uint64_t chunk;
static int uffd;
static atomic_int done, go, stop_writer;
static uint64_t faults, handler_ns;
static atomic_uint_fast64_t late_faults; /* write faults on pages of done chunks: the copier unprotects from then on */
static uint64_t writes, stalls, stall_ns_sum;
static uint32_t *stall_list;

static void unprotect(uint64_t first, uint64_t count) {
  struct uffdio_writeprotect wp = {.range = {.start = (uint64_t)mem + first * PAGE, .len = count * PAGE}, .mode = 0};
  if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0 && errno != ENOENT) die("UFFDIO_WRITEPROTECT");
}

/* Takes chunk c's lock (spinning while the other thread holds it): 0 when the chunk is done already. */
static int take(uint64_t c) {
  for (;;) {
    uint8_t expected = 0;
    if (atomic_compare_exchange_weak_explicit(&lock[c], &expected, 1, memory_order_acquire, memory_order_relaxed))
      return 1;
    if (expected == 2) return 0;
  }
}

static int copy_pvm; /* --copy=pvm */

/* Copies n bytes of the target at src into the sink at dst: memcpy, or process_vm_writev on ourselves. */
static void copy_bytes(uint8_t *dst, const uint8_t *src, size_t n) {
  if (!copy_pvm) {
    memcpy(dst, src, n);
    return;
  }
  struct iovec local = {.iov_base = (void *)src, .iov_len = n}, remote = {.iov_base = dst, .iov_len = n};
  if (process_vm_writev(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)n) die("process_vm_writev");
}

/* Under chunk locks: saves the unsaved pages of [first, end), one copy per run. */
static void save_runs(uint64_t first, uint64_t end) {
  for (uint64_t p = first; p < end;) {
    if (saved[p]) {
      p++;
      continue;
    }
    uint64_t q = p + 1;
    while (q < end && !saved[q]) q++;
    copy_bytes(sink + p * PAGE, mem + p * PAGE, (q - p) * PAGE);
    memset(saved + p, 1, q - p);
    p = q;
  }
}

/* The handler: saves page p unless it is saved, and releases its chunk (done if every page of it is saved). */
static void save_page(uint64_t p) {
  uint64_t c = p / chunk;
  if (!take(c)) return;
  save_runs(p, p + 1);
  uint64_t first = c * chunk, end = first + chunk < pages ? first + chunk : pages, all = 1;
  for (uint64_t i = first; i < end && all; i++) all = saved[i];
  atomic_store_explicit(&lock[c], all ? 2 : 0, memory_order_release);
}

static void *handler(void *arg) {
  (void)arg;
  struct uffd_msg msgs[64];
  struct pollfd pfd = {.fd = uffd, .events = POLLIN};
  while (!atomic_load(&done)) {
    if (poll(&pfd, 1, 1) <= 0) continue;
    ssize_t n = read(uffd, msgs, sizeof msgs);
    if (n <= 0) continue;
    uint64_t t0 = now_ns();
    for (ssize_t i = 0; i < n / (ssize_t)sizeof msgs[0]; i++) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      uint64_t p = (msgs[i].arg.pagefault.address - (uint64_t)mem) / PAGE;
      if (atomic_load_explicit(&lock[p / chunk], memory_order_acquire) == 2) atomic_fetch_add(&late_faults, 1);
      save_page(p);
      unprotect(p, 1);
      faults++;
    }
    handler_ns += now_ns() - t0;
  }
  return NULL;
}

static void *writer(void *arg) {
  (void)arg;
  uint32_t s = 7;
  while (!atomic_load(&go)) {
  }
  while (!atomic_load(&stop_writer)) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    uint64_t p = s % pages;
    uint64_t t0 = now_ns();
    ((volatile uint32_t *)(mem + p * PAGE))[(s >> 7) & 1023] = (uint32_t)writes + 1;
    uint64_t d = now_ns() - t0;
    writes++;
    if (d > STALL_NS) {
      if (stalls < MAX_STALLS) stall_list[stalls] = (uint32_t)(d / 100);
      stalls++;
      stall_ns_sum += d;
    }
  }
  return NULL;
}

static int by_value(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  uint64_t size = arg_u64(argc, argv, "bytes", 1ull << 30);
  chunk = arg_u64(argc, argv, "chunk", 64);
  uint64_t batch = arg_u64(argc, argv, "unprotect", 1024);
  int with_writer = (int)arg_u64(argc, argv, "writer", 0);
  const char *copy = arg_str(argc, argv, "copy", "memcpy");
  if (strcmp(copy, "memcpy") != 0 && strcmp(copy, "pvm") != 0) die("--copy must be memcpy or pvm");
  copy_pvm = strcmp(copy, "pvm") == 0;
  pages = size / PAGE;
  mem = (uint8_t *)map_anon(size); /* both on a MAP_ALIGN boundary, without THP, as ours */
  sink = (uint8_t *)map_anon(size);
  for (uint64_t p = 0; p < pages; p++) {
    uint32_t *w = (uint32_t *)(mem + p * PAGE);
    for (int i = 0; i < 1024; i++) w[i] = 0xa0000000u + (uint32_t)p;
  }
  memset(sink, 1, size);
  saved = calloc(pages, 1);
  lock = calloc((pages + chunk - 1) / chunk, 1);
  stall_list = calloc(MAX_STALLS, sizeof *stall_list);

  uint64_t t0 = now_ns();
  memcpy(sink, mem, size);
  uint64_t memcpy_ns = now_ns() - t0;
  memset(sink, 1, size);

  uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (uffd < 0) die("userfaultfd");
  struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_UNPOPULATED};
  if (ioctl(uffd, UFFDIO_API, &api) < 0) die("UFFDIO_API");
  struct uffdio_register reg = {.range = {.start = (uint64_t)mem, .len = size}, .mode = UFFDIO_REGISTER_MODE_WP};
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) die("UFFDIO_REGISTER");

  pthread_t h, w;
  if (with_writer) pthread_create(&w, NULL, writer, NULL);
  struct stopwatch sw = {0};
  sw_start(&sw);
  struct uffdio_writeprotect wp = {.range = {.start = (uint64_t)mem, .len = size}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
  if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0) die("UFFDIO_WRITEPROTECT");
  pthread_create(&h, NULL, handler, NULL);
  atomic_store(&go, 1);
  uint64_t pending = 0, pending_end = 0; /* done chunks not unprotected yet */
  if (batch < chunk) batch = chunk;
  for (uint64_t first = 0; first < pages; first += chunk) {
    uint64_t end = first + chunk < pages ? first + chunk : pages;
    if (!take(first / chunk)) continue;
    save_runs(first, end);
    atomic_store_explicit(&lock[first / chunk], 2, memory_order_release);
    /* Before the first late fault, [pending, pending_end) spans every chunk passed: each one is done. */
    int eager = atomic_load(&late_faults) > 0;
    if (first != pending_end && eager) {
      if (pending_end > pending) unprotect(pending, pending_end - pending);
      pending = first;
    }
    pending_end = end;
    if (eager && pending_end - pending >= batch) {
      unprotect(pending, pending_end - pending);
      pending = pending_end;
    }
  }
  /* The last chunks are left protected: the close below removes every protection at once. */
  sw_stop(&sw);
  close(uffd); /* everything is saved: release the memory and wake any writer left */
  atomic_store(&done, 1);
  pthread_join(h, NULL);
  atomic_store(&stop_writer, 1);
  if (with_writer) pthread_join(w, NULL);

  uint64_t wrong = 0;
  for (uint64_t p = 0; p < pages; p++) {
    uint32_t *s = (uint32_t *)(sink + p * PAGE);
    for (int i = 0; i < 1024; i++) {
      if (s[i] != 0xa0000000u + (uint32_t)p) {
        wrong++;
        break;
      }
    }
  }
  if (wrong) {
    fprintf(stderr, "%llu pages of the snapshot differ from the memory as it was\n", (unsigned long long)wrong);
    return 1;
  }
  uint64_t kept = stalls < MAX_STALLS ? stalls : MAX_STALLS;
  qsort(stall_list, kept, sizeof *stall_list, by_value);
  double p50 = kept ? stall_list[kept / 2] * 100.0 : 0, p99 = kept ? stall_list[kept * 99 / 100] * 100.0 : 0;
  char extra[512];
  snprintf(extra, sizeof extra,
           "\"memcpy_ns_per_page\":%.1f,\"of_memcpy\":%.3f,\"faults\":%llu,\"handler_ns_per_fault\":%.1f,"
           "\"writes\":%llu,\"stalls\":%llu,\"stall_p50_ns\":%.1f,\"stall_mean_ns\":%.1f,\"stall_p99_ns\":%.1f",
           memcpy_ns / (double)pages, memcpy_ns / (double)sw.wall, (unsigned long long)faults,
           faults ? handler_ns / (double)faults : 0, (unsigned long long)writes, (unsigned long long)stalls,
           p50, stalls ? stall_ns_sum / (double)stalls : 0, p99);
  emit("live_snapshot", with_writer ? "writer" : "idle", size, pages, &sw, extra);
  return 0;
}
