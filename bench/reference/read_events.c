/*
 * Reading a batch of queued page-fault messages: --faults threads each write to
 * their own page of a range registered for missing faults and block in the
 * kernel; once every one of them sleeps in handle_userfault (read from
 * /proc/self/task/<tid>/wchan, untimed), one read(2) of a 64-message buffer
 * takes the whole queue and each message is decoded into a typed record. Only
 * the read and the decoding are timed. Then (untimed) one UFFDIO_ZEROPAGE wakes
 * the writers, they are joined, and MADV_DONTNEED makes the pages missing again.
 * Pairs with bench/ours/read_events.ts.
 *
 *   read_events --faults=N --samples=S --warmup=W
 */
#include <dirent.h>
#include <pthread.h>
#include <stdbool.h>

#include "bench.h"

#define MESSAGES_PER_READ 64

struct event {
  int type;
  uint64_t address, flags;
  bool write, wp, minor;
  uint32_t thread_id;
};

static char *mem;
static uint64_t page;

static void *writer(void *index) {
  memset(mem + (uintptr_t)index * page, 1, page);
  return NULL;
}

/* How many threads of this process sleep in handle_userfault. */
static int blocked_in_fault(void) {
  DIR *dir = opendir("/proc/self/task");
  if (!dir) die("opendir /proc/self/task");
  int n = 0;
  struct dirent *e;
  char path[300], wchan[64];
  while ((e = readdir(dir))) {
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "/proc/self/task/%s/wchan", e->d_name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t got = read(fd, wchan, sizeof wchan - 1);
    close(fd);
    if (got > 0) {
      wchan[got] = 0;
      if (strcmp(wchan, "handle_userfault") == 0) n++;
    }
  }
  closedir(dir);
  return n;
}

int main(int argc, char **argv) {
  uint64_t faults = arg_u64(argc, argv, "faults", 32);
  uint64_t samples = arg_u64(argc, argv, "samples", 40);
  uint64_t warmup = arg_u64(argc, argv, "warmup", 5);
  if (faults < 1 || faults > MESSAGES_PER_READ) fail("--faults must be 1..64");
  page = (uint64_t)sysconf(_SC_PAGESIZE);
  uint64_t bytes = faults * page;

  int fd = uffd_open(0);
  mem = map_anon(bytes);
  uffd_register(fd, mem, bytes, UFFDIO_REGISTER_MODE_MISSING);
  static struct uffd_msg msgs[MESSAGES_PER_READ];
  static struct event events[MESSAGES_PER_READ];
  pthread_t threads[MESSAGES_PER_READ];

  struct stopwatch sw = {0}, unused = {0};
  uint64_t decoded = 0;
  for (uint64_t sample = 0; sample < warmup + samples; sample++) {
    for (uint64_t i = 0; i < faults; i++)
      if (pthread_create(&threads[i], NULL, writer, (void *)(uintptr_t)i)) fail("pthread_create");
    uint64_t deadline = now_ns() + 10000000000ull;
    while (blocked_in_fault() < (int)faults) {
      if (now_ns() > deadline) fail("the writers did not all block in a fault within 10 s");
      usleep(200);
    }

    struct stopwatch *timer = sample < warmup ? &unused : &sw;
    sw_start(timer);
    ssize_t got = read(fd, msgs, sizeof msgs);
    if (got < 0) die("read(uffd)");
    size_t n = (size_t)got / sizeof *msgs;
    for (size_t i = 0; i < n; i++) {
      const struct uffd_msg *m = &msgs[i];
      struct event *ev = &events[i];
      ev->type = m->event;
      if (m->event == UFFD_EVENT_PAGEFAULT) {
        ev->address = m->arg.pagefault.address;
        ev->flags = m->arg.pagefault.flags;
        ev->write = (ev->flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0;
        ev->wp = (ev->flags & UFFD_PAGEFAULT_FLAG_WP) != 0;
        ev->minor = (ev->flags & UFFD_PAGEFAULT_FLAG_MINOR) != 0;
        ev->thread_id = m->arg.pagefault.feat.ptid;
      }
    }
    sw_stop(timer);
    if (n != faults) fail("one read did not return every queued fault");
    for (size_t i = 0; i < n; i++)
      if (events[i].type != UFFD_EVENT_PAGEFAULT || !events[i].write) fail("unexpected message");
    if (sample >= warmup) decoded += n;

    struct uffdio_zeropage z = {.range = {.start = (uint64_t)mem, .len = bytes}};
    if (ioctl(fd, UFFDIO_ZEROPAGE, &z) && errno != EEXIST) die("UFFDIO_ZEROPAGE");
    for (uint64_t i = 0; i < faults; i++) pthread_join(threads[i], NULL);
    if (madvise(mem, bytes, MADV_DONTNEED)) die("madvise(MADV_DONTNEED)");
  }
  char extra[64];
  snprintf(extra, sizeof extra, "\"batch\":%llu,\"samples\":%llu", (unsigned long long)faults,
           (unsigned long long)samples);
  emit("read_events", "pagefault batch", bytes, decoded, &sw, extra);
  return 0;
}
