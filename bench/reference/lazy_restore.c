/*
 * Missing faults served by random touches — a lazy restore — the C side: --bytes of private
 * anonymous memory registered for missing faults; a handler thread sleeps in poll() on the
 * userfaultfd (and an eventfd that stops it), reads a batch of up to 64 messages and fills each
 * faulting page with one UFFDIO_COPY from an in-memory image of the same size (word i holds
 * (i * 2654435761) mod 2^32 | 1), or with --fill=zero maps the zero page (UFFDIO_ZEROPAGE); that
 * wakes the toucher. The main thread reads one byte of distinct pages in a random order (Fisher-Yates
 * with a 32-bit LCG, seed 12345: the same permutation as bench/ours/lazy_restore.ts); the first
 * --warmup touches are untimed, the next --touches timed, so the time per op is the time per
 * fault. Every byte read is checked against the image. With --spin-us=S (default 0) the handler
 * keeps reading (non-blocking) after a batch until S µs pass without a message, before it sleeps
 * in poll() again: the strategy of our FaultHandler and LazyRegion (spinMicros), so that the two
 * can be compared like for like.
 *
 *   lazy_restore --bytes=B --touches=N --warmup=W [--fill=copy|zero] [--spin-us=S]
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/eventfd.h>

#include "bench.h"

static int uffd, stop_fd;
static char *image;
static uint64_t page, base, spin_ns;
static int zero_fill;
static atomic_uint_fast64_t served;

/* Resolves the faults of one batch read into msgs: returns the messages handled. */
static ssize_t serve(struct uffd_msg *msgs, ssize_t got) {
  for (ssize_t i = 0; i < got / (ssize_t)sizeof *msgs; i++) {
    if (msgs[i].event != UFFD_EVENT_PAGEFAULT) fail("unexpected message");
    uint64_t at = msgs[i].arg.pagefault.address & ~(page - 1);
    int failed;
    if (zero_fill) {
      struct uffdio_zeropage zero = {.range = {.start = at, .len = page}};
      failed = ioctl(uffd, UFFDIO_ZEROPAGE, &zero);
    } else {
      struct uffdio_copy copy = {.dst = at, .src = (uint64_t)image + (at - base), .len = page};
      failed = ioctl(uffd, UFFDIO_COPY, &copy);
    }
    if (failed) {
      if (errno != EEXIST) die(zero_fill ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY");
      struct uffdio_range wake = {.start = at, .len = page};
      if (ioctl(uffd, UFFDIO_WAKE, &wake)) die("UFFDIO_WAKE");
    }
    atomic_fetch_add_explicit(&served, 1, memory_order_relaxed);
  }
  return got / (ssize_t)sizeof *msgs;
}

static void *handler(void *arg) {
  (void)arg;
  struct uffd_msg msgs[64];
  struct pollfd fds[2] = {{.fd = uffd, .events = POLLIN}, {.fd = stop_fd, .events = POLLIN}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (fds[1].revents & POLLIN) return NULL;
    ssize_t got = read(uffd, msgs, sizeof msgs);
    if (got < 0) {
      if (errno == EAGAIN) continue;
      die("read(uffd)");
    }
    serve(msgs, got);
    /* Keep reading for spin_ns after the last message (the next fault often comes within microseconds). */
    for (uint64_t until = now_ns() + spin_ns; spin_ns && now_ns() < until;) {
      got = read(uffd, msgs, sizeof msgs);
      if (got < 0) {
        if (errno == EAGAIN) continue;
        die("read(uffd)");
      }
      if (serve(msgs, got) > 0) until = now_ns() + spin_ns;
    }
  }
}

int main(int argc, char **argv) {
  uint64_t bytes = arg_u64(argc, argv, "bytes", 64ull << 20);
  uint64_t touches = arg_u64(argc, argv, "touches", 8192);
  uint64_t warmup = arg_u64(argc, argv, "warmup", 1024);
  const char *fill = arg_str(argc, argv, "fill", "copy");
  spin_ns = arg_u64(argc, argv, "spin-us", 0) * 1000;
  if (strcmp(fill, "copy") && strcmp(fill, "zero")) fail("--fill must be copy or zero");
  zero_fill = strcmp(fill, "zero") == 0;
  page = (uint64_t)sysconf(_SC_PAGESIZE);
  uint64_t pages = bytes / page;
  if (warmup + touches > pages) fail("--warmup + --touches must not exceed the pages of --bytes");

  image = map_anon(bytes);
  uint32_t *words = (uint32_t *)image;
  for (uint64_t i = 0; i < bytes / 4; i++) words[i] = ((uint32_t)i * 2654435761u) | 1u;
  uint32_t *order = malloc(pages * sizeof *order);
  uint64_t *offsets = malloc((warmup + touches) * sizeof *offsets);
  if (!order || !offsets) fail("malloc");
  for (uint64_t i = 0; i < pages; i++) order[i] = (uint32_t)i;
  uint32_t s = 12345;
  for (uint64_t i = pages - 1; i > 0; i--) {
    s = s * 1664525u + 1013904223u;
    uint64_t j = s % (i + 1);
    uint32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  for (uint64_t i = 0; i < warmup + touches; i++) offsets[i] = order[i] * page + 64;

  char *mem = map_anon(bytes);
  base = (uint64_t)mem;
  uffd = uffd_open(0);
  uffd_register(uffd, mem, bytes, UFFDIO_REGISTER_MODE_MISSING);
  stop_fd = eventfd(0, EFD_CLOEXEC);
  if (stop_fd < 0) die("eventfd");
  pthread_t thread;
  if (pthread_create(&thread, NULL, handler, NULL)) fail("pthread_create");

  const volatile unsigned char *memory = (const volatile unsigned char *)mem;
  uint64_t sum = 0;
  for (uint64_t i = 0; i < warmup; i++) sum += memory[offsets[i]];
  struct stopwatch sw = {0};
  sw_start(&sw);
  for (uint64_t i = warmup; i < warmup + touches; i++) sum += memory[offsets[i]];
  sw_stop(&sw);

  uint64_t one = 1;
  if (write(stop_fd, &one, sizeof one) != sizeof one) die("write(eventfd)");
  pthread_join(thread, NULL);
  uint64_t expected = 0;
  if (!zero_fill)
    for (uint64_t i = 0; i < warmup + touches; i++) expected += (unsigned char)image[offsets[i]];
  if (sum != expected) fail("the bytes read differ from the image");
  if (atomic_load(&served) != warmup + touches) fail("the handler did not serve one fault per touch");
  char extra[64];
  snprintf(extra, sizeof extra, "\"warmup\":%llu,\"spin_us\":%llu", (unsigned long long)warmup,
           (unsigned long long)(spin_ns / 1000));
  emit("lazy_restore", zero_fill ? "random touch, fill=zero" : "random touch, fill=copy", bytes, touches, &sw, extra);
  return 0;
}
