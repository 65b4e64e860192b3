/**
 * The kernel boundary on the real kernel: the handshake, registration on every
 * memory kind, resolving missing faults raised by other threads, and bad input.
 */

import assert from "node:assert/strict";
import {
  ERRNO,
  FaultHandler,
  Feature,
  MADV_NOHUGEPAGE,
  policies,
  readPagemap,
  Region,
  type UffdEvent,
  Userfaultfd,
} from "../mod.ts";
import * as libc from "../ffi/_libc.ts";
import { uffdioApi } from "../ffi/_uffd_ioctls.ts";
import { sysUserfaultfd } from "../ffi/_syscalls.ts";
import { O_CLOEXEC, O_NONBLOCK } from "../ffi/linux.ts";
import { assertUffdError, DEADLINE_SCALE, isRoot, reserveHugePages, skipUnless, waitFor, within } from "./helpers.ts";

const PAGE = Region.pageSize;

Deno.test("handshake: supported() reports exactly what the kernel reports", () => {
  const fd = libc.userfaultfd(sysUserfaultfd(), O_CLOEXEC | O_NONBLOCK);
  assert.ok(fd >= 0, "raw userfaultfd()");
  try {
    const { rc, api } = uffdioApi(fd, 0n);
    assert.equal(rc, 0);
    const support = Userfaultfd.supported();
    assert.equal(support.featureMask, api.features);
    assert.deepEqual([...support.ioctls].sort(), ["API", "REGISTER", "UNREGISTER"]);
    // JSON.stringify shows what it holds (a Set and a bigint alone would print {} and throw).
    const json = JSON.parse(JSON.stringify(support));
    assert.deepEqual(json.features, [...support.features]);
    assert.equal(json.featureMask, `0x${api.features.toString(16)}`);
    assert.deepEqual(json.ioctls, [...support.ioctls]);
    assert.equal(json.origin, support.origin);
  } finally {
    libc.close(fd);
  }
});

Deno.test("handshake: wanted features are granted when present, and only those", () => {
  using uffd = Userfaultfd.open({ features: [Feature.THREAD_ID, Feature.EXACT_ADDRESS] });
  const support = Userfaultfd.supported();
  const expected = [Feature.THREAD_ID, Feature.EXACT_ADDRESS].filter((f) => support.features.has(f));
  assert.deepEqual([...uffd.features].sort(), expected.sort());
  using bare = Userfaultfd.open();
  assert.equal(bare.features.size, 0);
  assert.equal(bare.featureMask, 0n);
});

Deno.test("handshake: a required feature that is missing fails clearly (forced by declining it)", () => {
  const e = assertUffdError(
    () => Userfaultfd.open({ require: [Feature.MOVE], decline: [Feature.MOVE] }),
    "EINVAL",
    /required feature not available: MOVE \(Linux 6\.8\+\)/,
  );
  assert.equal(e.beforeSyscall, true);
  assert.equal(e.hint, "MOVE declined by the caller's options");
  // Each missing feature with its own reason: one declined, one the kernel may lack.
  const kernelHasAsync = Userfaultfd.supported().features.has(Feature.WP_ASYNC);
  const both = assertUffdError(
    () => Userfaultfd.open({ require: [Feature.MOVE, Feature.WP_ASYNC], decline: [Feature.MOVE] }),
    "EINVAL",
    kernelHasAsync ? /not available: MOVE \(Linux 6\.8\+\) —/ : /not available: WP_ASYNC \(Linux 6\.7\+\), MOVE/,
  );
  assert.equal(
    both.hint,
    kernelHasAsync
      ? "MOVE declined by the caller's options"
      : `MOVE declined by the caller's options; WP_ASYNC not offered by this kernel (${Deno.osRelease()})`,
  );
  // Declining an optional feature just leaves it out.
  using uffd = Userfaultfd.open({ features: [Feature.MOVE], decline: [Feature.MOVE] });
  assert.equal(uffd.features.has(Feature.MOVE), false);
});

Deno.test("handshake: an unknown feature name is refused before the syscall", () => {
  assertUffdError(
    () => Userfaultfd.open({ features: ["NOT_A_FEATURE" as Feature] }),
    "EINVAL",
    /unknown feature "NOT_A_FEATURE" in features/,
  );
});

Deno.test("handshake: a second UFFDIO_API on the same fd fails with EINVAL and the fd keeps its features", async () => {
  using uffd = Userfaultfd.open({ features: [Feature.WP_ASYNC], writers: "other-threads" });
  const { rc, api } = uffdioApi(uffd.fd, 0n);
  assert.equal(rc, -ERRNO.EINVAL);
  assert.equal(api.features, 0n, "the kernel zeroes the struct");
  using mem = Region.map(PAGE, { populate: true }); // present: sync write-protect needs a PTE to protect
  uffd.register(mem, { wp: true });
  uffd.writeProtect(mem);
  // A write from another thread: resolved by the kernel if WP_ASYNC is still there, else a fault reaches us.
  const writer = libc.memsetOffThread(mem.address, 1, 1n);
  const faults = await serveWrites(uffd, writer);
  assert.equal(faults, uffd.features.has(Feature.WP_ASYNC) ? 0 : 1);
  assert.equal(mem.bytes[0], 1);
});

/**
 * Serves the write-protect faults of `writer` (another thread) from here by unprotecting
 * each page, until it is done; on a timeout the userfaultfd is closed (the writer then
 * goes through) before the test fails. Returns the number of faults served.
 */
async function serveWrites(uffd: Userfaultfd, writer: Promise<unknown>): Promise<number> {
  let done = false;
  writer.finally(() => done = true);
  let faults = 0;
  const deadline = Date.now() + 5000 * DEADLINE_SCALE;
  while (!done) {
    for (const e of uffd.readEvents()) {
      if (e.type !== "pagefault") continue;
      faults++;
      uffd.unprotect({ address: e.address & ~BigInt(PAGE - 1), length: PAGE });
    }
    if (Date.now() > deadline) {
      uffd.close();
      await writer;
      throw new Error("the writer did not finish");
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await writer;
  return faults;
}

Deno.test("closing twice is harmless and every operation on a closed fd says EBADF", () => {
  using mem = Region.map(PAGE);
  const uffd = Userfaultfd.open();
  uffd.close();
  uffd.close();
  assert.equal(uffd.closed, true);
  assertUffdError(() => uffd.register(mem, { missing: true }), "EBADF", /the userfaultfd is closed/);
  assertUffdError(() => uffd.readEvents(), "EBADF", /the userfaultfd is closed/);
  assertUffdError(() => uffd.zeropage(mem), "EBADF", /closed/);
});

const kinds = [
  { name: "private anonymous", options: {} },
  { name: "shared anonymous", options: { shared: true } },
  { name: "memfd", options: { memfd: true } },
] as const;

for (const kind of kinds) {
  Deno.test(`register, protect, unprotect, unregister on ${kind.name} memory`, () => {
    using mem = Region.map(4 * PAGE, kind.options);
    mem.bytes.fill(1);
    using uffd = Userfaultfd.open({ features: [Feature.WP_ASYNC], writers: "other-threads" }); // nobody writes
    const allowed = uffd.register(mem, { wp: true });
    assert.ok(allowed.has("WRITEPROTECT"), [...allowed].join(" "));
    uffd.writeProtect(mem);
    assert.deepEqual(readPagemap(mem).map((e) => e.uffdWp), [true, true, true, true]);
    uffd.unprotect(mem.pages(1, 2));
    assert.deepEqual(readPagemap(mem).map((e) => e.uffdWp), [true, false, false, true]);
    assert.deepEqual(uffd.registrations.map((r) => r.mode), ["wp"]);
    uffd.unregister(mem);
    assert.deepEqual(uffd.registrations, []);
    assert.deepEqual(readPagemap(mem).map((e) => e.uffdWp), [false, false, false, false]);
    // Registering again after unregistering is fine.
    uffd.register(mem, { missing: true });
  });
}

Deno.test({
  name: "register, protect, unprotect, unregister on hugetlb memory",
  ignore: skipUnless(isRoot, "reserving huge pages needs root"),
  fn() {
    const restore = reserveHugePages(2);
    if (!restore) {
      console.log("skip: the kernel could not reserve 2 huge pages");
      return;
    }
    try {
      const huge = Region.hugePageSize;
      using mem = Region.map(huge, { hugetlb: true });
      mem.bytes[0] = 1;
      using uffd = Userfaultfd.open({ features: [Feature.WP_HUGETLBFS_SHMEM], writers: "other-threads" });
      const allowed = uffd.register(mem, { wp: true, missing: true });
      assert.ok(allowed.has("COPY") && allowed.has("WRITEPROTECT"), [...allowed].join(" "));
      assert.equal(allowed.has("ZEROPAGE"), false, "hugetlb has no ZEROPAGE");
      uffd.writeProtect(mem);
      assert.equal(readPagemap({ address: mem.address, length: PAGE })[0]!.uffdWp, true);
      uffd.unprotect(mem);
      uffd.unregister(mem);
      // A base-page-aligned but not huge-page-aligned range is the kernel's to refuse.
      assertUffdError(
        () => uffd.register({ address: mem.address + BigInt(PAGE), length: PAGE }, { missing: true }),
        "EINVAL",
        /huge-page aligned/,
      );
    } finally {
      restore();
    }
  },
});

Deno.test("copy resolves a missing fault raised by a write on another thread; the bytes land", async () => {
  using mem = Region.map(4 * PAGE);
  using uffd = Userfaultfd.open();
  uffd.register(mem, { missing: true });
  const target = mem.address + BigInt(PAGE) + 100n;
  const writer = libc.memsetOffThread(target, 0x33, 200n);
  let events: UffdEvent[] = [];
  await waitFor(() => (events = uffd.readEvents()).length > 0, 30_000, "the missing fault");
  assert.equal(events.length, 1);
  const fault = events[0]!;
  assert.equal(fault.type, "pagefault");
  if (fault.type !== "pagefault") return;
  assert.equal(fault.address, mem.address + BigInt(PAGE), "page-aligned without EXACT_ADDRESS");
  assert.equal(fault.write, true);
  assert.equal(fault.wp, false);
  const page = new Uint8Array(PAGE).fill(0x11);
  assert.equal(uffd.copy({ address: fault.address, length: PAGE }, page), PAGE);
  await within(writer, 30_000, "the writer");
  const bytes = mem.page(1);
  assert.equal(bytes[99], 0x11);
  assert.equal(bytes[100], 0x33);
  assert.equal(bytes[299], 0x33);
  assert.equal(bytes[300], 0x11);
});

Deno.test("zeropage resolves a missing fault raised by a Worker; the Worker's bytes land", async () => {
  using mem = Region.map(2 * PAGE);
  using uffd = Userfaultfd.open();
  uffd.register(mem, { missing: true });
  const worker = new Worker(new URL("./workers/writer.ts", import.meta.url), { type: "module" });
  try {
    const done = new Promise((resolve) => worker.onmessage = resolve);
    worker.postMessage({ address: mem.address, length: 64, value: 0x77 });
    let events: UffdEvent[] = [];
    await waitFor(() => (events = uffd.readEvents()).length > 0, 30_000, "the Worker's fault");
    assert.equal(events[0]!.type, "pagefault");
    assert.equal(uffd.zeropage(mem.pages(0)), PAGE);
    await within(done, 30_000, "the Worker");
    assert.deepEqual([...mem.page(0).subarray(60, 68)], [0x77, 0x77, 0x77, 0x77, 0, 0, 0, 0]);
  } finally {
    worker.terminate();
  }
});

Deno.test("copy with wp leaves the page write-protected", async () => {
  using mem = Region.map(PAGE);
  using uffd = Userfaultfd.open({ features: [Feature.WP_ASYNC], writers: "other-threads" });
  uffd.register(mem, { missing: true, wp: true });
  uffd.copy(mem, new Uint8Array(PAGE).fill(9), { wp: true });
  assert.equal(readPagemap(mem)[0]!.uffdWp, true);
  assert.equal(mem.bytes[0], 9);
  // A write now (from another thread) is resolved by WP_ASYNC where the kernel has it, else it faults;
  // either way it clears the bit.
  const faults = await serveWrites(uffd, libc.memsetOffThread(mem.address, 10, 1n));
  assert.equal(faults, uffd.features.has(Feature.WP_ASYNC) ? 0 : 1);
  assert.equal(mem.bytes[0], 10);
  assert.equal(readPagemap(mem)[0]!.uffdWp, false);
});

Deno.test("writeProtect with no handler and no WP_ASYNC is EDEADLK before the syscall; a handler or writers lifts it", async (t) => {
  using mem = Region.map(2 * PAGE, { populate: true });
  const open = (options: Parameters<typeof Userfaultfd.open>[0] = {}) => {
    const uffd = Userfaultfd.open({ decline: [Feature.WP_ASYNC], ...options });
    uffd.register(mem, { missing: true, wp: true });
    return uffd;
  };
  await t.step("refused: writeProtect, copy and continue with wp; nothing protected", () => {
    using uffd = open();
    const e = assertUffdError(() => uffd.writeProtect(mem), "EDEADLK", /no handler serves this userfaultfd/);
    assert.equal(e.beforeSyscall, true);
    assert.match(e.hint ?? "", /FaultHandler\.start|writers: "other-threads"/);
    assert.deepEqual(readPagemap(mem).map((p) => p.uffdWp), [false, false]);
    using empty = Region.map(PAGE);
    using other = Userfaultfd.open({ decline: [Feature.WP_ASYNC] });
    other.register(empty, { missing: true, wp: true });
    assertUffdError(() => other.copy(empty, new Uint8Array(PAGE), { wp: true }), "EDEADLK");
    assert.equal(readPagemap(empty)[0]!.present, false, "nothing was copied");
    assertUffdError(() => other.continue(empty, { wp: true }), "EDEADLK");
    // Unprotecting and copying without wp are never refused.
    other.copy(empty, new Uint8Array(PAGE).fill(1));
    uffd.unprotect(mem);
  });
  await t.step("allowed once the fd is shared, duplicated or given to a FaultHandler", async () => {
    {
      using uffd = open();
      uffd.share();
      uffd.writeProtect(mem);
    }
    {
      using uffd = open();
      using dup = uffd.duplicate();
      uffd.writeProtect(mem);
      dup.writeProtect(mem.pages(0));
    }
    {
      using uffd = open();
      await using handler = await FaultHandler.start(uffd, policies.unprotect());
      uffd.writeProtect(mem);
      mem.bytes[PAGE] = 7; // served by the handler's Worker
      assert.deepEqual(handler.collect(), [{ firstPage: 1, pages: 1 }]);
    }
  });
  await t.step('allowed with writers: "other-threads", and with WP_ASYNC', () => {
    {
      using uffd = open({ writers: "other-threads" });
      uffd.writeProtect(mem);
    }
    if (Userfaultfd.supported().features.has(Feature.WP_ASYNC)) {
      using uffd = Userfaultfd.open({ require: [Feature.WP_ASYNC] });
      uffd.register(mem, { wp: true });
      uffd.writeProtect(mem);
      mem.bytes[0] = 3; // resolved by the kernel
    }
  });
  await t.step("a bad writers value is a clear error", () => {
    assertUffdError(() => Userfaultfd.open({ writers: "me" as "any" }), "EINVAL", /writers must be/);
  });
});

Deno.test("copy into a page that is already there is EEXIST with a hint, never a count", () => {
  using mem = Region.map(PAGE);
  using uffd = Userfaultfd.open();
  uffd.register(mem, { missing: true });
  uffd.zeropage(mem);
  const e = assertUffdError(() => uffd.copy(mem, new Uint8Array(PAGE)), "EEXIST", /UFFDIO_COPY/);
  assert.match(e.hint ?? "", /already mapped/);
});

Deno.test("bad input is refused with the errno name and a message saying what is wrong", async (t) => {
  using mem = Region.map(4 * PAGE);
  using uffd = Userfaultfd.open({ writers: "other-threads" });
  await t.step("unaligned address", () => {
    const e = assertUffdError(
      () => uffd.register({ address: mem.address + 8n, length: PAGE }, { missing: true }),
      "EINVAL",
      /address must be page-aligned/,
    );
    assert.equal(e.beforeSyscall, true);
  });
  await t.step("unaligned length", () => {
    assertUffdError(
      () => uffd.register({ address: mem.address, length: PAGE + 1 }, { missing: true }),
      "EINVAL",
      /length must be a multiple of the page size/,
    );
  });
  await t.step("zero length", () => {
    assertUffdError(() => uffd.writeProtect({ address: mem.address, length: 0 }), "EINVAL", /must not be zero/);
  });
  await t.step("overflowing 2^64", () => {
    assertUffdError(
      () => uffd.register({ address: (1n << 64n) - BigInt(PAGE), length: 2 * PAGE }, { wp: true }),
      "EINVAL",
      /overflows 2\^64/,
    );
  });
  await t.step("a range past the mapping", () => {
    // Two pages whose second page is unmapped: the range runs into a hole.
    using holed = Region.map(2 * PAGE);
    assert.equal(libc.munmap(holed.address + BigInt(PAGE), BigInt(PAGE)), 0);
    const e = assertUffdError(
      () => uffd.register({ address: holed.address, length: 2 * PAGE }, { missing: true }),
      "ENOMEM",
      /part of the range is not mapped: \[0x[0-9a-f]+, 0x[0-9a-f]+\)/,
    );
    assert.equal(e.beforeSyscall, true);
  });
  await t.step("a range with no mapping at all", () => {
    const gone = Region.map(PAGE);
    gone.unmap();
    assertUffdError(() => uffd.register(gone, { missing: true }), "EINVAL", /the region has been unmapped/);
    assertUffdError(
      () => uffd.register({ address: gone.address, length: PAGE }, { missing: true }),
      "ENOMEM",
      /not mapped/,
    );
  });
  await t.step("registering twice / overlapping", () => {
    uffd.register(mem.pages(0, 2), { missing: true });
    assertUffdError(
      () => uffd.register(mem.pages(1, 2), { missing: true }),
      "EBUSY",
      /already registered \(missing\) on this userfaultfd; unregister it first/,
    );
    uffd.unregister(mem.pages(0, 2));
  });
  await t.step("a range registered by another userfaultfd", () => {
    using other = Userfaultfd.open();
    other.register(mem.pages(3), { missing: true });
    const e = assertUffdError(() => uffd.register(mem.pages(3), { missing: true }), "EBUSY", /UFFDIO_REGISTER/);
    assert.match(e.hint ?? "", /another userfaultfd/);
  });
  await t.step("write-protecting an unregistered range", () => {
    const e = assertUffdError(() => uffd.writeProtect(mem.pages(0)), "ENOENT", /UFFDIO_WRITEPROTECT/);
    assert.match(e.hint ?? "", /not registered for write-protect/);
  });
  await t.step("no mode chosen", () => {
    assertUffdError(() => uffd.register(mem, {}), "EINVAL", /at least one of missing, wp, minor/);
  });
  await t.step("move without the MOVE feature", () => {
    using src = Region.map(PAGE);
    uffd.register(mem.pages(0), { missing: true });
    assertUffdError(() => uffd.move(mem.pages(0), src.address), "EINVAL", /opened without the MOVE feature/);
    uffd.unregister(mem.pages(0));
  });
  await t.step("a copy source shorter than the destination", () => {
    assertUffdError(() => uffd.copy(mem.pages(0, 2), new Uint8Array(PAGE)), "EINVAL", /source has 4096 bytes/);
  });
  await t.step("wrong types", () => {
    assert.throws(() => uffd.register({ address: 4096 as unknown as bigint, length: PAGE }, { wp: true }), {
      name: "TypeError",
      message: /address must be a bigint, not number/,
    });
    assert.throws(() => uffd.register(null as unknown as Region, { wp: true }), TypeError);
    assertUffdError(
      () => uffd.register({ address: mem.address, length: Number.NaN }, { wp: true }),
      "EINVAL",
      /non-negative safe integer/,
    );
    assertUffdError(
      () => uffd.register({ address: mem.address, length: -PAGE }, { wp: true }),
      "EINVAL",
      /non-negative/,
    );
  });
});

Deno.test("Region: an unmapped region refuses use and its old bytes view is detached", () => {
  const mem = Region.map(PAGE);
  const bytes = mem.bytes;
  bytes[0] = 5;
  mem.unmap();
  mem.unmap();
  assert.equal(bytes.length, 0, "a stale view reads as empty instead of faulting");
  assert.equal(bytes[0], undefined);
  assertUffdError(() => mem.bytes, "EINVAL", /the region has been unmapped/);
  using uffd = Userfaultfd.open();
  assertUffdError(() => mem.zap(), "EINVAL", /unmapped/);
  void uffd;
});

Deno.test("Region.of wraps an ArrayBuffer and a WebAssembly.Memory without owning them", () => {
  const memory = new WebAssembly.Memory({ initial: 2 });
  const wasm = Region.of(memory);
  assert.equal(wasm.length, 2 * 65536);
  assert.equal(wasm.address % BigInt(PAGE), 0n, "wasm memory is page-aligned");
  wasm.bytes[70000] = 3;
  assert.equal(new Uint8Array(memory.buffer)[70000], 3);
  wasm.unmap();
  assert.equal(new Uint8Array(memory.buffer)[70000], 3, "unmap leaves memory it does not own alone");

  const buffer = new ArrayBuffer(1 << 20);
  const region = Region.of(buffer);
  const span = region.pageSpan;
  assert.ok(span.address <= region.address);
  assert.ok(BigInt(span.length) >= BigInt(region.length));
  assert.equal(BigInt(span.length) % BigInt(PAGE), 0n);
  region.page(0)[0] = 1;
  assert.equal(new Uint8Array(buffer)[0], 1, "page(0) starts at the buffer's first byte");
  assertUffdError(() => Region.of(new ArrayBuffer(0)), "EINVAL", /empty or detached/);
});

Deno.test("Region.map refuses lengths that are not whole pages", () => {
  assertUffdError(() => Region.map(100), "EINVAL", /non-zero multiple of the page size/);
  assertUffdError(() => Region.map(0), "EINVAL", /non-zero multiple/);
});

Deno.test("Region.map with align starts on the boundary and leaves no reservation behind", async (t) => {
  /** The mappings of this process without access (a reservation left behind would be one), as "start-end". */
  const inaccessible = () =>
    new Set(
      Deno.readTextFileSync("/proc/self/maps").trim().split("\n").filter((l) => l.split(" ")[1] === "---p")
        .map((l) => l.split(" ")[0]!),
    );
  for (const align of [2 ** 21, 2 ** 30]) {
    await t.step(`${align / 2 ** 20} MiB`, () => {
      const before = inaccessible();
      using mem = Region.map(64 * PAGE, { align });
      assert.equal(mem.address % BigInt(align), 0n, `${mem.address.toString(16)} is not on a ${align}-byte boundary`);
      // The reservation was len + align bytes around it, PROT_NONE: none of it may remain.
      assert.deepEqual([...inaccessible()].filter((r) => !before.has(r)), []);
      const line = Deno.readTextFileSync("/proc/self/maps").split("\n").find((l) => {
        const [a, b] = l.split(" ")[0]!.split("-").map((h) => BigInt(`0x${h}`));
        return a! <= mem.address && b! > mem.address;
      });
      assert.match(line ?? "", / rw-p /, "the region is mapped read-write");
      mem.bytes[mem.length - 1] = 7;
      assert.equal(mem.page(63)[PAGE - 1], 7);
    });
  }
  await t.step("a memfd region", () => {
    using mem = Region.map(16 * PAGE, { memfd: true, align: 2 ** 21 });
    assert.equal(mem.address % (2n ** 21n), 0n);
    mem.bytes[0] = 1;
    assert.equal(mem.bytes[0], 1);
  });
  await t.step("refused: not a power of two, below the page size", () => {
    assertUffdError(() => Region.map(PAGE, { align: 3 * PAGE }), "EINVAL", /power of two/);
    assertUffdError(() => Region.map(PAGE, { align: PAGE / 2 }), "EINVAL", /power of two/);
  });
});

Deno.test("copy, zeropage, writeProtect and unprotect over a range of several kernel mappings cover all of it", () => {
  // The kernel places pages one mapping per call (ENOENT at the boundary) and, before Linux 6.4, protects one
  // mapping per call: a range split by madvise, or a memory that grew while registered, goes piece by piece.
  using mem = Region.map(12 * Region.pageSize);
  mem.advise(MADV_NOHUGEPAGE, mem.pages(4, 4)); // three mappings: 0-3, 4-7, 8-11
  // Nothing writes the protected memory here: it is only read back through the pagemap.
  using uffd = Userfaultfd.open({ features: ["PAGEFAULT_FLAG_WP"], writers: "other-threads" });
  uffd.register(mem, { missing: true, wp: uffd.features.has("PAGEFAULT_FLAG_WP") });
  const bytes = new Uint8Array(6 * Region.pageSize).fill(9);
  assert.equal(uffd.copy(mem.pages(1, 6), bytes), 6 * Region.pageSize, "copied across the first boundary");
  assert.equal(uffd.zeropage(mem.pages(7, 5)), 5 * Region.pageSize, "zero pages across the second");
  assert.equal(uffd.zeropage(mem.pages(0, 1)), Region.pageSize);
  assert.equal(mem.bytes[6 * Region.pageSize], 9);
  assert.equal(mem.bytes[7 * Region.pageSize], 0);
  if (!uffd.features.has("PAGEFAULT_FLAG_WP")) return;
  uffd.writeProtect(mem);
  assert.deepEqual(readPagemap(mem).map((e) => e.uffdWp), Array(12).fill(true), "every page of every mapping");
  uffd.unprotect(mem);
  assert.deepEqual(readPagemap(mem).map((e) => e.uffdWp), Array(12).fill(false));
  assert.throws(() => uffd.zeropage({ address: mem.address + BigInt(mem.length), length: Region.pageSize }));
});
