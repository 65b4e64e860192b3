/**
 * `Userfaultfd.readEventsInto()` and `EventBatch`: real page faults read into a
 * reused batch agree with `readEvents()`'s objects, field by field; the arrays,
 * the accessors, the iteration (one reused view) and `event(i)` say the same;
 * address-space events are decoded once and update `registrations`; a batch
 * replaces its contents on every read; misuse is refused.
 */

import assert from "node:assert/strict";
import {
  EventBatch,
  type EventView,
  Feature,
  MADV_DONTNEED,
  Region,
  UFFD_EVENT_PAGEFAULT,
  UFFD_EVENT_UNMAP,
  UFFD_FEATURE_THREAD_ID,
  type UffdEvent,
  Userfaultfd,
} from "../mod.ts";
import * as libc from "../ffi/_libc.ts";
import { encodeUffdMsg, SIZEOF_UFFD_MSG } from "../ffi/_structs.ts";
import { O_CLOEXEC, O_RDONLY } from "../ffi/linux.ts";
import { assertUffdError, needs, waitFor, within } from "./helpers.ts";
import { SyscallThread } from "./conformance/helpers.ts";

const PAGE = Region.pageSize;
const P = BigInt(PAGE);

/** Writers on Deno's blocking pool, one per page of `mem`, each blocked in a missing fault until resolved. */
async function blockedWriters(mem: Region, pages: number): Promise<Promise<bigint>[]> {
  const writers: Promise<bigint>[] = [];
  for (let i = 0; i < pages; i++) writers.push(libc.memsetOffThread(mem.address + BigInt(i) * P, 9, P));
  // Wait until every writer sleeps in the fault (its message queued), without reading anything.
  await waitFor(() => blockedInFaults() >= pages, 10_000, `${pages} writers blocked in faults`);
  return writers;
}

function blockedInFaults(): number {
  let count = 0;
  for (const task of Deno.readDirSync("/proc/self/task")) {
    try {
      if (Deno.readTextFileSync(`/proc/self/task/${task.name}/wchan`) === "handle_userfault") count++;
    } catch { /* the thread exited meanwhile */ }
  }
  return count;
}

Deno.test("readEventsInto: real page faults, read into a batch, say what readEvents() says", async () => {
  const PAGES = 8;
  using mem = Region.map(PAGES * PAGE);
  using uffd = Userfaultfd.open({ features: [Feature.THREAD_ID] });
  uffd.register(mem, { missing: true });
  const batch = new EventBatch(4); // smaller than the queue: two reads
  assert.equal(uffd.readEventsInto(batch), 0, "nothing queued yet");
  const writers = await blockedWriters(mem, PAGES);
  const seen: number[] = [];
  const views = new Set<EventView>();
  for (let round = 0; round < 2; round++) {
    assert.equal(uffd.readEventsInto(batch), 4);
    assert.equal(batch.length, 4);
    let i = 0;
    for (const e of batch) {
      views.add(e);
      assert.equal(e.index, i);
      assert.equal(e.type, "pagefault");
      assert.equal(batch.codes[i], UFFD_EVENT_PAGEFAULT);
      assert.equal(e.address, batch.addresses[i]);
      assert.equal(e.address, batch.address(i));
      assert.equal(e.flags, batch.flags[i]);
      assert.equal(e.write, true, "memset writes");
      assert.equal(e.wp || e.minor, false);
      assert.equal(e.address % PAGE, 0, "without EXACT_ADDRESS the address is page-aligned");
      const object = e.event() as Extract<UffdEvent, { type: "pagefault" }>;
      assert.deepEqual(object, {
        type: "pagefault",
        address: BigInt(e.address),
        flags: BigInt(e.flags),
        write: true,
        wp: false,
        minor: false,
        threadId: uffd.features.has(Feature.THREAD_ID) ? e.threadId : undefined,
      });
      if (uffd.features.has(Feature.THREAD_ID)) assert.ok(e.threadId! > 0, "the faulting thread's id");
      seen.push((e.address - Number(mem.address)) / PAGE);
      i++;
    }
    assert.equal(i, 4);
  }
  assert.equal(views.size, 1, "iteration yields one reused view");
  assert.deepEqual(seen.sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7], "every page's fault, once");
  assert.equal(uffd.readEventsInto(batch), 0, "the queue is empty");
  assert.equal(batch.length, 0, "a read replaces the batch's contents");
  uffd.zeropage(mem);
  await within(Promise.all(writers), 10_000, "the writers after ZEROPAGE");
  assert.equal(mem.bytes[3 * PAGE], 9);
  mem.advise(MADV_DONTNEED);
});

Deno.test({
  name: "readEventsInto: an unmap event is decoded once, as readEvents() does, and registrations forget the range",
  ignore: needs(Feature.EVENT_UNMAP),
  async fn() {
    using thread = new SyscallThread();
    using mem = Region.map(4 * PAGE);
    using uffd = Userfaultfd.open({ require: [Feature.EVENT_UNMAP] });
    uffd.register(mem, { missing: true });
    const unmapped = thread.call({ op: "munmap", address: mem.address + 2n * P, length: 2n * P });
    const batch = new EventBatch();
    await waitFor(() => uffd.readEventsInto(batch) > 0, 10_000, "the unmap event");
    assert.equal(batch.length, 1);
    assert.equal(batch.type(0), "unmap");
    assert.equal(batch.codes[0], UFFD_EVENT_UNMAP);
    const event = batch.event(0);
    assert.deepEqual(event, { type: "unmap", start: mem.address + 2n * P, end: mem.address + 4n * P });
    assert.equal(batch.event(0), event, "the same object each time");
    assert.throws(() => batch.address(0), TypeError, "not a page fault");
    const [view] = [...batch];
    assert.equal(view!.type, "unmap");
    assert.throws(() => view!.write, TypeError);
    assert.equal(await within(unmapped, 5000, "munmap after the event was read"), 0);
    assert.deepEqual(uffd.registrations, [{ start: mem.address, end: mem.address + 2n * P, mode: "missing" }]);
    assert.deepEqual(uffd.readEvents(), [], "nothing more");
  },
});

Deno.test("readEventsInto: messages of every kind, read from a file of them, match their bytes", () => {
  // A memfd full of messages, read back through a second open file description (as the fuzz test does).
  const messages = [
    encodeUffdMsg({ event: UFFD_EVENT_PAGEFAULT, flags: 3n, address: 0x7f0000001000n, ptid: 1234 }),
    encodeUffdMsg({ event: UFFD_EVENT_PAGEFAULT, flags: 4n, address: 0x7f0000002345n, ptid: 0 }),
    encodeUffdMsg({ event: UFFD_EVENT_PAGEFAULT, flags: 1n | (1n << 40n), address: 1n << 60n, ptid: 7 }),
    encodeUffdMsg({ event: UFFD_EVENT_UNMAP, start: 0x1000n, end: 0x3000n }),
    new Uint8Array(SIZEOF_UFFD_MSG).fill(0xee),
  ];
  const file = new Uint8Array(messages.length * SIZEOF_UFFD_MSG);
  messages.forEach((m, i) => file.set(m, i * SIZEOF_UFFD_MSG));
  const memfd = libc.memfdCreate("uffd-batch", 1);
  assert.ok(memfd >= 0);
  try {
    assert.equal(libc.write(memfd, file), file.byteLength);
    const fd = libc.open(`/proc/self/fd/${memfd}`, O_RDONLY | O_CLOEXEC);
    assert.ok(fd >= 0);
    using reader = Userfaultfd.adopt(fd, UFFD_FEATURE_THREAD_ID, true);
    const batch = new EventBatch(8);
    assert.equal(reader.readEventsInto(batch), 5);
    assert.deepEqual([0, 1, 2, 3, 4].map((i) => batch.type(i)), [
      "pagefault",
      "pagefault",
      "pagefault",
      "unmap",
      "unknown",
    ]);
    assert.deepEqual([batch.address(0), batch.write(0), batch.wp(0), batch.minor(0), batch.threadId(0)], [
      0x7f0000001000,
      true,
      true,
      false,
      1234,
    ]);
    assert.deepEqual([batch.address(1), batch.minor(1), batch.write(1)], [0x7f0000002345, true, false]);
    // Above 2^53 the number would round: the accessor refuses, the object is exact to 64 bits.
    assert.ok(Number.isNaN(batch.addresses[2]));
    assert.throws(() => batch.address(2), RangeError);
    assert.deepEqual(batch.event(2), {
      type: "pagefault",
      address: 1n << 60n,
      flags: 1n | (1n << 40n),
      write: true,
      wp: false,
      minor: false,
      threadId: 7,
    });
    assert.deepEqual(batch.event(3), { type: "unmap", start: 0x1000n, end: 0x3000n });
    const unknown = batch.event(4);
    assert.equal(unknown.type, "unknown");
    assert.deepEqual((unknown as Extract<UffdEvent, { type: "unknown" }>).raw, messages[4]);
    assert.equal(reader.readEventsInto(batch), 0, "at the end of the file");
  } finally {
    libc.close(memfd);
  }
});

Deno.test("readEventsInto and EventBatch refuse misuse", () => {
  assert.throws(() => new EventBatch(0), /capacity must be an integer in \[1, 4096\]/);
  assert.throws(() => new EventBatch(4097), /capacity/);
  assert.throws(() => new EventBatch(1.5), /capacity/);
  assert.throws(() => new EventBatch("8" as unknown as number), TypeError);
  const batch = new EventBatch(2);
  assert.equal(batch.capacity, 2);
  assert.throws(() => batch.type(0), RangeError, "an empty batch has no message 0");
  assert.throws(() => batch.event(-1), RangeError);
  const uffd = Userfaultfd.open();
  assert.throws(() => uffd.readEventsInto({} as EventBatch), TypeError);
  uffd.close();
  assertUffdError(() => uffd.readEventsInto(batch), "EBADF", /closed/);
});
