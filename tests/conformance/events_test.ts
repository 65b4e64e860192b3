/**
 * Non-cooperative events read through `readEvents()`: EVENT_REMOVE, EVENT_UNMAP
 * and EVENT_REMAP — the parts of the kernel's "events" test
 * (tools/testing/selftests/mm/uffd-unit-tests.c, `faulting_process` and the
 * event cases of `uffd_poll_thread` in uffd-common.c) that need no fork — and
 * "mmap-changing": while an event is unread, every resolving ioctl is EAGAIN.
 *
 * A thread that madvises, unmaps or remaps a range registered for these events
 * waits in the kernel until the event is read; so the call is made on a Worker
 * (`SyscallThread`) and the main isolate reads the event.
 */

import assert from "node:assert/strict";
import { Feature, MADV_DONTNEED, MADV_REMOVE, Region, UffdError, type UffdEvent, Userfaultfd } from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { needs, within } from "../helpers.ts";
import {
  assertUffdError,
  collectEvents,
  mapMemory,
  needsHugetlbSetup,
  P,
  PAGE,
  serveUntil,
  sleep,
  SyscallThread,
  withHugePages,
} from "./helpers.ts";

function only<T extends UffdEvent["type"]>(events: UffdEvent[], type: T): Extract<UffdEvent, { type: T }>[] {
  return events.filter((e) => e.type === type) as Extract<UffdEvent, { type: T }>[];
}

for (const kind of ["anon", "shmem"] as const) {
  Deno.test({
    name: `uffd-unit-tests.c events on ${kind}: EVENT_REMOVE reports the released range; it stays registered`,
    ignore: needs(Feature.EVENT_REMOVE),
    async fn() {
      using thread = new SyscallThread();
      using mem = Region.map(4 * PAGE, { memfd: kind === "shmem" });
      using uffd = Userfaultfd.open({ require: [Feature.EVENT_REMOVE] });
      uffd.register(mem, { missing: true });
      uffd.zeropage(mem);
      // shmem releases with MADV_REMOVE, anonymous memory with MADV_DONTNEED (uffd-common.c release_pages).
      const advice = kind === "shmem" ? MADV_REMOVE : MADV_DONTNEED;
      const released = thread.call({ op: "madvise", address: mem.address + P, length: 2n * P, advice });
      const events = await collectEvents(uffd, (es) => es.length > 0, "the remove event");
      assert.deepEqual(events, [{ type: "remove", start: mem.address + P, end: mem.address + 3n * P }]);
      assert.equal(await within(released, 30_000, "madvise after the event was read"), 0);
      // The range is still registered: reading a released page is a missing fault again.
      const reader = libc.memcpyOffThread(libc.addressOf(new Uint8Array(8)), mem.address + P, 8n);
      const served = await serveUntil(uffd, reader, (f) => uffd.zeropage({ address: f.address, length: PAGE }));
      assert.equal(served.faults.length, 1);
      // uffd_poll_thread unregisters a removed range; then reading it raises no fault.
      uffd.unregister(mem.pages(2));
      assert.equal(
        await within(
          libc.memcpyOffThread(libc.addressOf(new Uint8Array(8)), mem.address + 2n * P, 8n).then(() => 0),
          5000,
          "reading an unregistered page",
        ),
        0,
      );
      assert.deepEqual(uffd.readEvents(), []);
    },
  });

  Deno.test({
    name: `uffd-unit-tests.c events on ${kind}: EVENT_REMAP moves the registration; faults follow to the new address`,
    ignore: needs(Feature.EVENT_REMAP),
    async fn() {
      using thread = new SyscallThread();
      using target = Region.map(4 * PAGE, { memfd: kind === "shmem" });
      using mem = Region.map(4 * PAGE, { memfd: kind === "shmem" });
      using uffd = Userfaultfd.open({ require: [Feature.EVENT_REMAP] });
      uffd.register(mem, { missing: true });
      // The first half is faulted in before the move…
      const page = new Uint8Array(PAGE);
      const before = libc.memcpyOffThread(libc.addressOf(new Uint8Array(2 * PAGE)), mem.address, 2n * P);
      await serveUntil(uffd, before, (f) => {
        page.fill(Number((f.address - mem.address) / P) + 1);
        uffd.copy({ address: f.address, length: PAGE }, page);
      });
      const moved = thread.call({ op: "mremap", address: mem.address, length: 4n * P, to: target.address });
      const events = await collectEvents(uffd, (es) => es.length > 0, "the remap event");
      assert.deepEqual(events, [{ type: "remap", from: mem.address, to: target.address, length: 4n * P }]);
      assert.equal(await within(moved, 30_000, "mremap after the event was read"), 0);
      assert.deepEqual(uffd.registrations, [{ start: target.address, end: target.address + 4n * P, mode: "missing" }]);
      // …and the second half after it: the faults arrive at the new address.
      const scratch = new Uint8Array(4 * PAGE);
      const after = libc.memcpyOffThread(libc.addressOf(scratch), target.address, 4n * P);
      const served = await serveUntil(uffd, after, (f) => {
        page.fill(Number((f.address - target.address) / P) + 1);
        uffd.copy({ address: f.address, length: PAGE }, page);
      });
      // Once each; in whichever order the copy touches them (glibc's memcpy may copy the tail first, by CPU).
      const pages = served.faults.map((f) => (f.address - target.address) / P);
      assert.deepEqual(pages.toSorted((a, b) => a < b ? -1 : 1), [2n, 3n], `faults at pages ${pages.join(", ")}`);
      assert.deepEqual([0, 1, 2, 3].map((i) => scratch[i * PAGE]), [1, 2, 3, 4], "moved pages kept their contents");
    },
  });
}

Deno.test({
  name: "uffd-unit-tests.c events on hugetlb and hugetlb-private: EVENT_REMOVE when the pages are released",
  ignore: needs(Feature.EVENT_REMOVE) || needsHugetlbSetup(),
  async fn(t) {
    await withHugePages(4, async () => {
      for (const type of ["hugetlb", "hugetlb-private"] as const) {
        await t.step(type, async () => {
          using thread = new SyscallThread();
          using mem = mapMemory(type, 2);
          using uffd = Userfaultfd.open({ require: [Feature.EVENT_REMOVE], features: [Feature.MISSING_HUGETLBFS] });
          mem.bytes.fill(0);
          uffd.register(mem.range, { missing: true });
          // uffd-common.c hugetlb_release_pages: MADV_REMOVE when shared, MADV_DONTNEED when private.
          const advice = type === "hugetlb" ? MADV_REMOVE : MADV_DONTNEED;
          const length = BigInt(mem.pageSize);
          const released = thread.call({ op: "madvise", address: mem.range.address, length, advice });
          const events = await collectEvents(uffd, (es) => es.length > 0, "the remove event");
          assert.deepEqual(events, [{ type: "remove", start: mem.range.address, end: mem.range.address + length }]);
          assert.equal(await within(released, 30_000, "madvise"), 0);
        });
      }
    });
  },
});

Deno.test({
  name: "uffd-unit-tests.c events on anon: EVENT_UNMAP reports the unmapped range and registrations forget it",
  ignore: needs(Feature.EVENT_UNMAP),
  async fn() {
    using thread = new SyscallThread();
    using mem = Region.map(4 * PAGE);
    using uffd = Userfaultfd.open({ require: [Feature.EVENT_UNMAP] });
    uffd.register(mem, { missing: true });
    const unmapped = thread.call({ op: "munmap", address: mem.address + 2n * P, length: 2n * P });
    const events = await collectEvents(uffd, (es) => es.length > 0, "the unmap event");
    assert.deepEqual(only(events, "unmap"), [{
      type: "unmap",
      start: mem.address + 2n * P,
      end: mem.address + 4n * P,
    }]);
    assert.equal(await within(unmapped, 30_000, "munmap after the event was read"), 0);
    assert.deepEqual(uffd.registrations, [{ start: mem.address, end: mem.address + 2n * P, mode: "missing" }]);
    // COPY into the unmapped part is refused by the kernel (ENOENT), which is what the event warns about.
    assertUffdError(() => uffd.copy(mem.pages(2), new Uint8Array(PAGE)), "ENOENT");
  },
});

Deno.test({
  name:
    "uffd-unit-tests.c mmap-changing on shmem: while an event is unread, COPY ZEROPAGE MOVE POISON CONTINUE are EAGAIN",
  ignore: needs(Feature.EVENT_REMOVE, Feature.MOVE, Feature.POISON, Feature.MINOR_SHMEM),
  async fn() {
    using thread = new SyscallThread();
    using source = Region.map(PAGE);
    using mem = Region.map(4 * PAGE, { memfd: true });
    using uffd = Userfaultfd.open({
      require: [Feature.EVENT_REMOVE, Feature.MOVE, Feature.POISON, Feature.MINOR_SHMEM],
    });
    uffd.register(mem, { missing: true });
    uffd.zeropage(mem.pages(3));
    const removed = thread.call({ op: "madvise", address: mem.address, length: P, advice: MADV_REMOVE });
    // Until the event is queued a COPY onto the present page 3 is EEXIST; once it is, EAGAIN comes first.
    const deadline = Date.now() + 5000;
    for (let code = ""; code !== "EAGAIN";) {
      try {
        uffd.copy(mem.pages(3), new Uint8Array(PAGE));
        code = "copied";
      } catch (e) {
        code = e instanceof UffdError ? e.code : String(e);
      }
      assert.ok(code === "EEXIST" || code === "EAGAIN", `COPY onto a present page: ${code}`);
      assert.ok(Date.now() < deadline, "the remove event never marked the address space as changing");
      await sleep(1);
    }
    const page = new Uint8Array(PAGE);
    const eagain = [
      () => uffd.copy(mem.pages(1), page),
      () => uffd.zeropage(mem.pages(1)),
      () => uffd.move(mem.pages(1), source.address),
      () => uffd.poison(mem.pages(1)),
      () => uffd.continue(mem.pages(1)),
    ];
    for (const op of eagain) {
      const e = assertUffdError(op, "EAGAIN", /address space is changing|read pending events/);
      assert.equal(e.beforeSyscall, false);
    }
    // Reading the event lets the madvise finish, and the ioctls work again.
    const events = await collectEvents(uffd, (es) => es.length > 0, "the remove event");
    assert.equal(events[0]!.type, "remove");
    assert.equal(await within(removed, 30_000, "madvise"), 0);
    assert.equal(uffd.zeropage(mem.pages(1)), PAGE);
  },
});
