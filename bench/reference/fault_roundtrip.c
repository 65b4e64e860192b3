/*
 * The synchronous write-protect fault round trip: --pages populated pages registered for
 * write-protect and protected; a handler thread sleeps in poll() on the userfaultfd (and an
 * eventfd that stops it), reads a batch of up to 64 messages, and for each write-protect fault
 * records the aligned chunk of --chunk pages around the faulting page in a bitmap and removes
 * the protection from that chunk with one UFFDIO_WRITEPROTECT (mode 0), which wakes the writer.
 * With --spin-us=S (default 0) the handler keeps reading (non-blocking) after a batch until S µs
 * pass without a message, before it sleeps in poll() again: the strategy of our FaultHandler
 * (spinMicros), so that the two can be compared like for like.
 * The main thread is the writer: it stores one byte into each page in address order; the loop
 * is timed, and ops are pages written (with --chunk=1, one fault per page). Between rounds
 * (untimed) the whole range is protected again. Pairs with bench/ours/fault_roundtrip.ts.
 *
 *   fault_roundtrip --pages=N --chunk=C --rounds=R --warmup=W [--spin-us=S]
 */
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/eventfd.h>

#include "bench.h"

static int uffd, stop_fd;
static char *mem;
static uint64_t page, pages, chunk, spin_ns;
static uint8_t *written;
static atomic_uint_fast64_t faults;

/* Serves one batch read into msgs: returns the messages handled. */
static ssize_t serve(struct uffd_msg *msgs, ssize_t got) {
  for (ssize_t i = 0; i < got / (ssize_t)sizeof *msgs; i++) {
    if (msgs[i].event != UFFD_EVENT_PAGEFAULT || !(msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP))
      fail("unexpected message");
    uint64_t index = (msgs[i].arg.pagefault.address - (uint64_t)mem) / page;
    uint64_t first = index - index % chunk;
    for (uint64_t p = first; p < first + chunk; p++) written[p >> 3] |= (uint8_t)(1u << (p & 7));
    struct uffdio_writeprotect wp = {.range = {.start = (uint64_t)mem + first * page, .len = chunk * page}};
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp)) die("UFFDIO_WRITEPROTECT");
    atomic_fetch_add_explicit(&faults, 1, memory_order_relaxed);
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
  pages = arg_u64(argc, argv, "pages", 4096);
  chunk = arg_u64(argc, argv, "chunk", 1);
  uint64_t rounds = arg_u64(argc, argv, "rounds", 5);
  uint64_t warmup = arg_u64(argc, argv, "warmup", 1);
  spin_ns = arg_u64(argc, argv, "spin-us", 0) * 1000;
  if (chunk < 1 || pages % chunk) fail("--pages must be a multiple of --chunk");
  page = (uint64_t)sysconf(_SC_PAGESIZE);
  uint64_t bytes = pages * page;

  mem = map_anon(bytes);
  if (madvise(mem, bytes, MADV_POPULATE_WRITE)) die("madvise(MADV_POPULATE_WRITE)");
  written = calloc(pages / 8 + 1, 1);
  uffd = uffd_open(UFFD_FEATURE_PAGEFAULT_FLAG_WP);
  uffd_register(uffd, mem, bytes, UFFDIO_REGISTER_MODE_WP);
  stop_fd = eventfd(0, EFD_CLOEXEC);
  if (stop_fd < 0) die("eventfd");
  pthread_t thread;
  if (pthread_create(&thread, NULL, handler, NULL)) fail("pthread_create");

  struct stopwatch sw = {0}, unused = {0};
  for (uint64_t round = 0; round < warmup + rounds; round++) {
    struct uffdio_writeprotect wp = {.range = {.start = (uint64_t)mem, .len = bytes},
                                     .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp)) die("UFFDIO_WRITEPROTECT");
    struct stopwatch *timer = round < warmup ? &unused : &sw;
    sw_start(timer);
    for (uint64_t p = 0; p < pages; p++) ((volatile char *)mem)[p * page] = (char)(round + 1);
    sw_stop(timer);
  }
  uint64_t one = 1;
  if (write(stop_fd, &one, sizeof one) != sizeof one) die("write(eventfd)");
  pthread_join(thread, NULL);

  uint64_t per_round = pages / chunk, served = atomic_load(&faults);
  if (served != per_round * (warmup + rounds)) fail("the handler did not serve one fault per chunk and round");
  if (mem[(pages - 1) * page] != (char)(warmup + rounds)) fail("the last store did not land");
  char kase[32], extra[128];
  snprintf(kase, sizeof kase, "chunk=%llu", (unsigned long long)chunk);
  snprintf(extra, sizeof extra, "\"chunk\":%llu,\"faults\":%llu,\"spin_us\":%llu", (unsigned long long)chunk,
           (unsigned long long)(per_round * rounds), (unsigned long long)(spin_ns / 1000));
  emit("fault_roundtrip", kase, bytes, pages * rounds, &sw, extra);
  return 0;
}
