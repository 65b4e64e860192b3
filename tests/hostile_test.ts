/**
 * Hostile input to every public function: wrong types, negative and huge
 * numbers, NaN, unaligned and overflowing ranges, ranges past the mapping or over
 * holes, closed userfaultfds, freed regions. Each must end in a typed error — a
 * `TypeError` for a wrong type, a `UffdError` with the right errno name
 * otherwise (a `RangeError` for a page index, as for arrays) — with a message that
 * names the operation; nothing may crash, hang, or write outside its target.
 */

import assert from "node:assert/strict";
import * as u from "../mod.ts";
import { Feature, readPagemap, Region, UffdError, Userfaultfd } from "../mod.ts";
import * as libc from "../ffi/_libc.ts";
import { invalid } from "../kernel/errors.ts";
import { unmappedParts } from "../kernel/maps.ts";
import { pageCeil, pageFloor, pageRange, toAddress, toLength } from "../kernel/range.ts";
import { within } from "./helpers.ts";
import { hasPagemapScan } from "../kernel/pagemap_scan.ts";

const PAGE = Region.pageSize;
const P = BigInt(PAGE);
const TOP = 1n << 64n;
/** UFFDIO_POISON exists (Linux 6.6: the POISON feature says so). */
const poison = Userfaultfd.supported().features.has(Feature.POISON);
// deno-lint-ignore no-explicit-any
const X = (v: unknown) => v as any;

type Expect = "TypeError" | "RangeError" | `E${string}`;

/**
 * Asserts `fn` throws the expected kind of error, whose message matches `message` (the operation's name); `or`
 * lists other errnos a kernel may give for the same refusal.
 */
function refuses(fn: () => unknown, expect: Expect, message: RegExp, or: string[] = []): Error {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof Error, `expected ${expect}, got ${String(caught)} (no error)`);
  if (expect === "TypeError" || expect === "RangeError") {
    assert.equal(caught.name, expect, caught.message);
    assert.ok(!(caught instanceof UffdError));
  } else {
    assert.ok(caught instanceof UffdError, `expected UffdError ${expect}, got ${caught.name}: ${caught.message}`);
    if (!or.includes(caught.code)) assert.equal(caught.code, expect, caught.message);
  }
  assert.match(caught.message, message);
  assert.doesNotMatch(caught.message, /Cannot (read|mix)|is not (iterable|a function)|Invalid FFI/, "a native message");
  return caught;
}

const WRONG_TYPES: [string, unknown][] = [
  ["a string", "4096"],
  ["null", null],
  ["an object", {}],
  ["an array", [1]],
  ["a symbol", Symbol("x")],
  ["a function", () => 1],
];

Deno.test("hostile input: constants and pure helpers (uapi, errors, range, maps, access)", async (t) => {
  await t.step("masks must be bigints, name lists must be lists", () => {
    for (const [what, v] of WRONG_TYPES) {
      refuses(() => u.featureNames(X(v)), "TypeError", /featureNames: mask must be a bigint/);
      refuses(() => u.ioctlNames(X(v)), "TypeError", /ioctlNames/);
      refuses(() => u.categoryNames(X(v)), "TypeError", /categoryNames/);
      if (what !== "an array") {
        refuses(() => u.featureMask(X(v)), "TypeError", /featureMask|unknown userfaultfd feature/);
        refuses(() => u.categoryMask(X(v)), "TypeError", /categoryMask|unknown PAGEMAP_SCAN category/);
      }
    }
    refuses(() => u.featureNames(X(NaN)), "TypeError", /featureNames/);
    refuses(() => u.featureMask(X(["NOPE"])), "TypeError", /unknown userfaultfd feature: NOPE/);
    refuses(() => u.categoryMask(X("WRITTEN")), "TypeError", /categoryMask: names must be a list/);
    // Unknown bits in a mask are not names: ignored, not an error.
    assert.deepEqual(u.featureNames(1n << 63n), []);
  });
  await t.step("errnoName, UffdError, invalid", () => {
    refuses(() => u.errnoName(X("22")), "TypeError", /errnoName/);
    assert.equal(u.errnoName(9999), "E9999");
    refuses(() => new UffdError(X(null)), "TypeError", /UffdError/);
    refuses(() => new UffdError(X({ errno: -1, operation: "x" })), "TypeError", /errno must be a positive integer/);
    refuses(() => new UffdError(X({ errno: NaN, operation: "x" })), "TypeError", /errno/);
    refuses(() => new UffdError(X({ errno: 22 })), "TypeError", /operation must be a string/);
    refuses(() => invalid(X(5), "detail"), "TypeError", /operation/);
  });
  await t.step("toLength, toAddress, pageRange, pageFloor, pageCeil", () => {
    for (const bad of [NaN, Infinity, -1, -0.5, 1.5, 2 ** 53]) refuses(() => toLength(bad, "op"), "EINVAL", /^op/);
    refuses(() => toLength(-1n, "op"), "EINVAL", /must not be negative/);
    refuses(() => toLength("1", "op"), "TypeError", /^op: length must be a number or a bigint/);
    for (const bad of [-1n, TOP, TOP + 1n]) refuses(() => toAddress(bad, "op"), "EINVAL", /\[0, 2\^64\)/);
    for (const [, v] of WRONG_TYPES) refuses(() => toAddress(v, "op"), "TypeError", /^op: address must be a bigint/);
    refuses(() => toAddress(4096, "op"), "TypeError", /not number/);
    refuses(() => pageRange({ address: TOP - P, length: 2 * PAGE }, "op"), "EINVAL", /overflows 2\^64/);
    refuses(() => pageRange({ address: TOP - P, length: TOP }, "op"), "EINVAL", /overflows/);
    refuses(() => pageRange({ address: 1n, length: PAGE }, "op"), "EINVAL", /page-aligned/);
    refuses(() => pageRange({ address: 0n, length: 1 }, "op"), "EINVAL", /multiple of the page size/);
    refuses(() => pageRange(X(undefined), "op"), "TypeError", /^op: a range must be an object/);
    refuses(() => pageFloor(X(4096)), "TypeError", /pageFloor/);
    refuses(() => pageCeil(X("1")), "TypeError", /pageCeil/);
    assert.equal(pageCeil(TOP - 1n), TOP, "the end of the address space is 2^64, not an overflow");
  });
  await t.step("parseMaps, readMaps, unmappedParts, explainAccess, decodePagemapEntry", () => {
    refuses(() => u.parseMaps(X(42)), "TypeError", /parseMaps/);
    assert.deepEqual(u.parseMaps("garbage\n\0\nffff-0 rw-p\n"), [], "garbage text is no mapping");
    for (const pid of [-1, 0, 1.5, NaN, X("../self")]) refuses(() => u.readMaps(pid), "ESRCH", /readMaps/);
    refuses(() => u.readMaps(2 ** 30), "ESRCH", /no process/);
    refuses(() => unmappedParts(X(1), 2n), "TypeError", /unmappedParts/);
    assert.deepEqual(unmappedParts(5n, 1n), [], "an empty range has no hole");
    refuses(() => u.explainAccess(X({})), "TypeError", /explainAccess/);
    refuses(() => u.decodePagemapEntry(X(1), 1n), "TypeError", /decodePagemapEntry: address/);
    refuses(() => u.decodePagemapEntry(0n, X("1")), "TypeError", /decodePagemapEntry: raw/);
    assert.equal(u.decodePagemapEntry(0n, TOP - 1n).present, true, "any 64-bit entry decodes");
  });
});

Deno.test("hostile input: Region", async (t) => {
  await t.step("map: lengths, options, protection", () => {
    for (const [, v] of WRONG_TYPES) refuses(() => Region.map(X(v)), "TypeError", /^Region\.map: length/);
    for (const bad of [NaN, Infinity, -PAGE, 0, 1, PAGE + 1, 2 ** 53]) {
      refuses(() => Region.map(bad), "EINVAL", /Region\.map/);
    }
    refuses(() => Region.map(X(1n << 60n)), "ENOMEM", /^mmap/); // more than any address space
    refuses(() => Region.map(PAGE, X(null)), "TypeError", /^Region\.map: options must be an object/);
    refuses(() => Region.map(PAGE, X("shared")), "TypeError", /options/);
    refuses(() => Region.map(PAGE, X({ prot: "rw" })), "TypeError", /prot must be a number/);
    for (const prot of [NaN, 1.5, 2 ** 40]) {
      refuses(() => Region.map(PAGE, { prot }), "EINVAL", /prot must be a 32-bit/);
    }
    refuses(() => Region.map(PAGE, { hugetlb: true }), "EINVAL", /multiple of the page size \(\d+\)/);
  });
  await t.step("of: what it wraps", () => {
    for (const [, v] of WRONG_TYPES) refuses(() => Region.of(X(v)), "TypeError", /^Region\.of: expected/);
    refuses(() => Region.of(new ArrayBuffer(0)), "EINVAL", /empty or detached/);
    const detached = new ArrayBuffer(64);
    detached.transfer();
    refuses(() => Region.of(detached), "EINVAL", /empty or detached/);
  });
  await t.step("page indexes and sub-ranges", () => {
    using mem = Region.map(4 * PAGE);
    for (const bad of [NaN, -1, 4, 1.5, Infinity, X("1")]) {
      refuses(() => mem.page(bad), "RangeError", /page index/);
      refuses(() => mem.pages(bad), "RangeError", /pages/);
    }
    for (const bad of [NaN, -1, 5, 1e9]) refuses(() => mem.pageAddress(bad), "RangeError", /page index/);
    assert.equal(mem.pageAddress(4), mem.address + 4n * P, "pageCount gives the end address");
    refuses(() => mem.pages(0, 0), "RangeError", /pages/);
    refuses(() => mem.pages(3, 2), "RangeError", /pages/);
  });
  await t.step("advise, protect, populate, zap, movePages, alias: never outside the region", () => {
    using mem = Region.map(4 * PAGE);
    using neighbour = Region.map(PAGE);
    neighbour.bytes.fill(0x11);
    const outside = { address: neighbour.address, length: PAGE };
    refuses(() => mem.advise(u.MADV_DONTNEED, outside), "EINVAL", /^madvise .*not inside the region/);
    refuses(() => mem.zap(outside), "EINVAL", /not inside the region/);
    refuses(() => mem.protect(u.PROT_NONE, outside), "EINVAL", /^mprotect/);
    refuses(() => mem.populate({ range: outside }), "EINVAL", /not inside the region/);
    refuses(() => mem.advise(u.MADV_DONTNEED, { address: mem.address, length: 5 * PAGE }), "EINVAL", /not inside/);
    assert.equal(neighbour.bytes[0], 0x11, "the neighbour was not touched");
    refuses(() => mem.advise(X("4")), "TypeError", /^madvise: advice must be a number/);
    refuses(() => mem.advise(NaN), "EINVAL", /advice must be a 32-bit integer/);
    refuses(() => mem.advise(12345), "EINVAL", /^madvise/);
    refuses(() => mem.protect(X(null)), "TypeError", /^mprotect: prot/);
    refuses(() => mem.protect(-1), "EINVAL", /^mprotect/);
    refuses(() => mem.populate(X(null)), "TypeError", /^Region\.populate: options/);
    refuses(() => mem.movePages(mem.pages(0), X("x")), "TypeError", /^mremap: address must be a bigint/);
    refuses(() => mem.movePages(mem.pages(0), 1n), "EINVAL", /page-aligned/);
    refuses(() => mem.movePages(mem.pages(0), TOP - P), "EINVAL", /^mremap/);
    refuses(() => mem.movePages(mem.pages(0, 2), mem.pageAddress(1)), "EINVAL", /^mremap/);
    refuses(() => mem.alias(), "EINVAL", /only a memfd region/);
  });
  await t.step("a freed region refuses every use; unmapping twice is harmless", () => {
    const mem = Region.map(2 * PAGE, { memfd: true });
    const view = mem.bytes;
    mem.unmap();
    mem.unmap();
    assert.equal(view.length, 0, "an old view is detached, not dangling");
    for (
      const use of [
        () => mem.bytes,
        () => mem.zap(),
        () => mem.advise(u.MADV_DONTNEED),
        () => mem.protect(u.PROT_READ),
        () => mem.populate(),
        () => mem.alias(),
        () => mem.movePages(mem.pages(0), mem.address),
      ]
    ) refuses(use, "EINVAL", /has been unmapped/);
    using uffd = Userfaultfd.open();
    refuses(() => uffd.register(mem, { missing: true }), "EINVAL", /^UFFDIO_REGISTER.*unmapped/);
    refuses(() => u.pagemapScan(mem), "EINVAL", /^PAGEMAP_SCAN.*unmapped/);
    refuses(() => readPagemap(mem), "EINVAL", /^pagemap.*unmapped/);
  });
});

Deno.test("hostile input: Userfaultfd", async (t) => {
  using mem = Region.map(4 * PAGE);
  await t.step("open and adopt", () => {
    refuses(() => Userfaultfd.open(X(null)), "TypeError", /^Userfaultfd\.open: options/);
    refuses(() => Userfaultfd.open(X(7)), "TypeError", /^Userfaultfd\.open: options/);
    for (const option of ["features", "require", "decline"]) {
      refuses(() => Userfaultfd.open(X({ [option]: 5 })), "TypeError", new RegExp(`${option} must be a list`));
      refuses(() => Userfaultfd.open(X({ [option]: "WP_ASYNC" })), "TypeError", new RegExp(option));
      refuses(() => Userfaultfd.open(X({ [option]: ["NOPE"] })), "EINVAL", /unknown feature "NOPE"/);
    }
    refuses(() => Userfaultfd.open(X({ via: "pipe" })), "EINVAL", /via must be/);
    refuses(() => Userfaultfd.open(X({ userModeOnly: "yes" })), "TypeError", /userModeOnly/);
    refuses(() => Userfaultfd.open({ require: [Feature.MOVE], decline: [Feature.MOVE] }), "EINVAL", /required feature/);
    for (const bad of [-1, NaN, 1.5]) refuses(() => Userfaultfd.adopt(bad, 0n), "EBADF", /^Userfaultfd\.adopt/);
    refuses(() => Userfaultfd.adopt(3, X(0)), "TypeError", /featureMask must be a bigint/);
    for (const [, v] of WRONG_TYPES) refuses(() => Userfaultfd.adopt(X(v)), "TypeError", /^Userfaultfd\.adopt/);
    refuses(() => Userfaultfd.adopt(X({ fd: 3, featureMask: 0n, state: new ArrayBuffer(4) })), "TypeError", /adopt/);
  });
  await t.step("every operation: wrong types and unaligned, empty, overflowing or unmapped ranges", () => {
    using uffd = Userfaultfd.open({ features: [Feature.MOVE, Feature.POISON], writers: "other-threads" });
    const page = new Uint8Array(PAGE);
    const ops: [string, (r: u.Range) => unknown][] = [
      ["UFFDIO_REGISTER", (r) => uffd.register(r, { missing: true })],
      ["UFFDIO_UNREGISTER", (r) => uffd.unregister(r)],
      ["UFFDIO_WRITEPROTECT", (r) => uffd.writeProtect(r)],
      ["UFFDIO_WRITEPROTECT", (r) => uffd.unprotect(r)],
      ["UFFDIO_COPY", (r) => uffd.copy(r, page)],
      ["UFFDIO_ZEROPAGE", (r) => uffd.zeropage(r)],
      ["UFFDIO_CONTINUE", (r) => uffd.continue(r)],
      ["UFFDIO_POISON", (r) => uffd.poison(r)],
      ["UFFDIO_MOVE", (r) => uffd.move(r, mem.address)],
      ["UFFDIO_WAKE", (r) => uffd.wake(r)],
    ];
    for (const [name, op] of ops) {
      const at = new RegExp(`^${name}`);
      for (const [, v] of WRONG_TYPES) {
        if (v !== null && typeof v === "object") continue; // an object without address is next
        refuses(() => op(X(v)), "TypeError", at);
      }
      refuses(() => op(X({})), "TypeError", at);
      refuses(() => op(X({ address: Number(mem.address), length: PAGE })), "TypeError", /address must be a bigint/);
      refuses(() => op(X({ address: mem.address, length: "4096" })), "TypeError", /length must be a number/);
      refuses(() => op({ address: mem.address + 8n, length: PAGE }), "EINVAL", /page-aligned/);
      refuses(() => op({ address: mem.address, length: 0 }), "EINVAL", /must not be zero/);
      refuses(() => op({ address: mem.address, length: NaN }), "EINVAL", /non-negative safe integer/);
      refuses(() => op({ address: mem.address, length: -PAGE }), "EINVAL", /non-negative/);
      refuses(() => op({ address: mem.address, length: PAGE + 1 }), "EINVAL", /multiple of the page size/);
      refuses(() => op({ address: TOP - P, length: 2 * PAGE }), "EINVAL", /overflows 2\^64/);
      refuses(() => op({ address: -P, length: PAGE }), "EINVAL", /\[0, 2\^64\)/);
      // Beyond the user address space: the kernel's EINVAL (the library's ENOMEM for register: not mapped).
      refuses(() => op({ address: TOP - 16n * P, length: PAGE }), name === "UFFDIO_REGISTER" ? "ENOMEM" : "EINVAL", at);
      // User addresses where nothing is mapped: ENOENT for the resolving ioctls; a wake there is a no-op.
      const low = { address: 0x10000n, length: PAGE };
      if (name === "UFFDIO_WAKE") op(low);
      else if (name === "UFFDIO_POISON" && !poison) {
        // A kernel without UFFDIO_POISON (before 6.6): refused before the syscall, saying so.
        const e = refuses(() => op(low), "EINVAL", /UFFDIO_POISON is not available: Linux 6\.6\+/);
        assert.equal((e as UffdError).beforeSyscall, true);
      } else {
        const code = name === "UFFDIO_REGISTER" ? "ENOMEM" : name === "UFFDIO_UNREGISTER" ? "EINVAL" : "ENOENT";
        refuses(() => op(low), code, at);
      }
    }
  });
  await t.step("options, sources, modes", () => {
    using uffd = Userfaultfd.open({ features: [Feature.MOVE] });
    refuses(() => uffd.register(mem, X(null)), "TypeError", /^UFFDIO_REGISTER: options/);
    refuses(() => uffd.register(mem, {}), "EINVAL", /at least one of missing, wp, minor/);
    uffd.register(mem, { missing: true });
    for (const name of ["writeProtect", "unprotect", "zeropage", "continue", "poison"] as const) {
      refuses(() => uffd[name](mem, X(null)), "TypeError", /options must be an object/);
    }
    refuses(() => uffd.copy(mem, new Uint8Array(4 * PAGE), X(1)), "TypeError", /^UFFDIO_COPY: options/);
    refuses(() => uffd.move(mem, mem.address, X("wake")), "TypeError", /^UFFDIO_MOVE: options/);
    for (const source of [null, "bytes", 4096, new Float64Array(4 * PAGE), new ArrayBuffer(4 * PAGE)]) {
      refuses(() => uffd.copy(mem, X(source)), "TypeError", /^UFFDIO_COPY: source must be a Uint8Array/);
    }
    refuses(() => uffd.copy(mem, new Uint8Array(4 * PAGE - 1)), "EINVAL", /source has \d+ bytes/);
    refuses(() => uffd.copy(mem, -1n), "EINVAL", /src must be in/);
    refuses(() => uffd.copy(mem, TOP), "EINVAL", /src must be in/);
    refuses(() => uffd.copy(mem.pages(0), 0n), "EFAULT", /^UFFDIO_COPY/);
    for (const source of [X("x"), X(1), X(null)]) refuses(() => uffd.move(mem, source), "TypeError", /^UFFDIO_MOVE/);
    refuses(() => uffd.move(mem.pages(0), mem.address + 1n), "EINVAL", /page-aligned/);
    refuses(() => uffd.move(mem.pages(0), TOP - P, { allowSrcHoles: true }), "EINVAL", /^UFFDIO_MOVE/);
  });
  await t.step("no write outside the target: a COPY or ZEROPAGE that runs past the registered page", () => {
    using three = Region.map(3 * PAGE);
    three.page(0).fill(0x11);
    three.page(2).fill(0x22);
    using uffd = Userfaultfd.open();
    uffd.register(three.pages(1), { missing: true });
    refuses(() => uffd.copy(three.pages(1, 2), new Uint8Array(2 * PAGE).fill(0xee)), "ENOENT", /^UFFDIO_COPY/);
    refuses(() => uffd.zeropage(three.pages(1, 2)), "ENOENT", /^UFFDIO_ZEROPAGE/);
    refuses(() => uffd.copy(three.pages(0, 2), new Uint8Array(2 * PAGE).fill(0xee)), "ENOENT", /^UFFDIO_COPY/);
    assert.deepEqual(readPagemap(three).map((e) => e.present), [true, false, true], "page 1 still missing");
    assert.ok(three.page(0).every((b) => b === 0x11) && three.page(2).every((b) => b === 0x22), "neighbours intact");
    // A COPY whose source is not mapped (or not user memory) fails without touching the destination.
    refuses(() => uffd.copy(three.pages(1), 0x10000n), "EFAULT", /^UFFDIO_COPY/);
    // A source beyond the user address space: EINVAL on newer kernels (the range is validated first), EFAULT on 6.1
    // (the copy from it faults). Either way refused, and nothing written.
    refuses(() => uffd.copy(three.pages(1), TOP - 16n * P), "EINVAL", /^UFFDIO_COPY/, ["EFAULT"]);
    assert.equal(readPagemap(three.pages(1))[0]!.present, false);
  });
  await t.step("closed: every operation is EBADF; closing twice is harmless", () => {
    const uffd = Userfaultfd.open();
    uffd.close();
    uffd.close();
    uffd[Symbol.dispose]();
    assert.equal(uffd.closed, true);
    const ops: (() => unknown)[] = [
      () => uffd.register(mem, { missing: true }),
      () => uffd.unregister(mem),
      () => uffd.writeProtect(mem),
      () => uffd.unprotect(mem),
      () => uffd.copy(mem, new Uint8Array(4 * PAGE)),
      () => uffd.zeropage(mem),
      () => uffd.continue(mem),
      () => uffd.poison(mem),
      () => uffd.move(mem, mem.address),
      () => uffd.wake(mem),
      () => uffd.readEvents(),
      () => uffd.share(),
    ];
    for (const op of ops) assert.equal(refuses(op, "EBADF", /the userfaultfd is closed/).name, "UffdError");
  });
  await t.step("an fd closed behind the object's back: the kernel's EBADF, not a crash", () => {
    const uffd = Userfaultfd.open();
    const dup = libc.dup(uffd.fd);
    const adopted = Userfaultfd.adopt(dup, uffd.featureMask);
    libc.close(dup);
    refuses(() => adopted.readEvents(), "EBADF", /^read/);
    refuses(() => adopted.zeropage(mem), "EBADF", /^UFFDIO_ZEROPAGE/);
    uffd.close();
  });
});

Deno.test("hostile input: pagemapScan and readPagemap", async (t) => {
  using mem = Region.map(4 * PAGE);
  await t.step("options", () => {
    refuses(() => u.pagemapScan(mem, X(null)), "TypeError", /^PAGEMAP_SCAN: options/);
    refuses(
      () => u.pagemapScan(mem, X({ require: "WRITTEN" })),
      "TypeError",
      /require must be a list of category names/,
    );
    refuses(() => u.pagemapScan(mem, X({ anyOf: 5 })), "TypeError", /anyOf must be a list of category names/);
    refuses(() => u.pagemapScan(mem, X({ invert: ["DIRTY"] })), "TypeError", /unknown PAGEMAP_SCAN category: DIRTY/);
    for (const maxPages of [-1, NaN, 1.5, Infinity]) {
      refuses(() => u.pagemapScan(mem, { maxPages }), "EINVAL", /maxPages/);
    }
    for (const vectorLength of [0, -1, NaN, 1.5, 2 ** 40]) {
      refuses(() => u.pagemapScan(mem, { vectorLength }), "EINVAL", /vectorLength must be an integer/);
    }
    for (const pid of [0, -5, 1.5]) refuses(() => u.pagemapScan(mem, { pid }), "ESRCH", /pid must be/);
    refuses(() => u.pagemapScan(mem, { pid: X("x") }), "TypeError", /pid must be a number or "self", not string/);
    refuses(() => u.pagemapScan(mem, { pid: 2 ** 30 }), "ESRCH", /no process/);
  });
  await t.step(
    "ranges outside the user address space: EFAULT with a hint (ENOTTY where there is no PAGEMAP_SCAN)",
    () => {
      if (!hasPagemapScan()) {
        const e = refuses(() => u.pagemapScan({ address: 0n, length: PAGE }), "ENOTTY", /^PAGEMAP_SCAN/);
        assert.match((e as UffdError).hint ?? "", /no PAGEMAP_SCAN \(Linux 6\.7\+\)/);
        return;
      }
      const e = refuses(() => u.pagemapScan({ address: 0n, length: 1n << 60n }), "EFAULT", /^PAGEMAP_SCAN/);
      assert.match((e as UffdError).hint ?? "", /user address space/);
      refuses(() => u.pagemapScan({ address: TOP - P, length: PAGE }), "EFAULT", /^PAGEMAP_SCAN/);
    },
  );
  await t.step("readPagemap: options, pids, and ranges too large to return page by page", () => {
    refuses(() => readPagemap(mem, X(null)), "TypeError", /^pagemap: options/);
    refuses(() => readPagemap(mem, { pid: -1 }), "ESRCH", /pid must be/);
    refuses(() => readPagemap({ address: 0n, length: 1n << 46n }), "E2BIG", /read the range in parts/);
    // A range with nothing mapped reads as empty entries; one beyond the user address space has none.
    assert.ok(readPagemap({ address: 0n, length: 4 * PAGE }).every((e) => !e.present));
    refuses(() => readPagemap({ address: TOP - P, length: PAGE }), "EFAULT", /beyond the user address space/);
  });
});

// --- The API that came with the fault handler, write tracking and checkpoints ---

/** `refuses` for a promise: the expected kind of error, whose message matches `message`. */
async function refusesAsync(fn: () => Promise<unknown>, expect: Expect | "FaultHandlerError", message: RegExp) {
  let caught: unknown;
  try {
    await within(fn(), 20_000, "the call");
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof Error, `expected ${expect}, got ${String(caught)} (no error)`);
  if (expect === "TypeError" || expect === "RangeError" || expect === "FaultHandlerError") {
    assert.equal(caught.name, expect, caught.message);
  } else {
    assert.ok(caught instanceof UffdError, `expected UffdError ${expect}, got ${caught.name}: ${caught.message}`);
    assert.equal(caught.code, expect, caught.message);
  }
  assert.match(caught.message, message);
  assert.doesNotMatch(caught.message, /Cannot (read|mix)|is not (iterable|a function)|Invalid FFI/, "a native message");
  return caught;
}

const HOLD = new URL("./no_hang/hold_policy.ts", import.meta.url);

Deno.test("hostile input: FaultHandler.start — wrong types, bad options and ranges, closed or blocking userfaultfds", async (t) => {
  using mem = Region.map(4 * PAGE);
  using uffd = Userfaultfd.open();
  uffd.register(mem, { missing: true });
  const Z = u.policies.zerofill();
  await t.step("the userfaultfd and the policy", async () => {
    for (const [, v] of [...WRONG_TYPES, ["undefined", undefined]]) {
      await refusesAsync(() => u.FaultHandler.start(X(v), Z), "TypeError", /^FaultHandler\.start: uffd must be/);
      await refusesAsync(() => u.FaultHandler.start(uffd, X(v)), "TypeError", /^FaultHandler\.start: policy must be/);
    }
    await refusesAsync(
      () => u.FaultHandler.start(uffd, { ...Z, module: X(5) }),
      "TypeError",
      /policy must be a PolicySpec/,
    );
    const closed = Userfaultfd.open();
    closed.close();
    await refusesAsync(() => u.FaultHandler.start(closed, Z), "EBADF", /the userfaultfd is closed/);
    using blocking = Userfaultfd.open({ nonblocking: false });
    await refusesAsync(() => u.FaultHandler.start(blocking, Z), "EINVAL", /nonblocking/);
  });
  await t.step("options", async () => {
    const bad: [unknown, Expect, RegExp][] = [
      [null, "TypeError", /options must be an object/],
      [5, "TypeError", /options must be an object/],
      [{ batch: "64" }, "TypeError", /batch must be a non-negative number/],
      [{ batch: NaN }, "TypeError", /batch/],
      [{ batch: -1 }, "TypeError", /batch/],
      [{ batch: 1.5 }, "EINVAL", /batch must be an integer in \[1, 4096\]/],
      [{ batch: 0 }, "EINVAL", /batch/],
      [{ batch: 5000 }, "EINVAL", /batch/],
      [{ batch: Infinity }, "TypeError", /batch/],
      [{ spinMicros: -1 }, "TypeError", /spinMicros/],
      [{ spinMicros: "1" }, "TypeError", /spinMicros/],
      [{ startTimeoutMs: NaN }, "TypeError", /startTimeoutMs/],
      [{ controlTimeoutMs: "x" }, "TypeError", /controlTimeoutMs/],
      [{ stopTimeoutMs: -5 }, "TypeError", /stopTimeoutMs/],
      [{ onEvent: 5 }, "TypeError", /onEvent must be a function/],
      [{ ranges: 5 }, "TypeError", /ranges must be an iterable/],
      [{ ranges: null }, "TypeError", /ranges must be an iterable/],
      [{ ranges: [null] }, "TypeError", /a range must be an object/],
      [{ ranges: [{ address: Number(mem.address), length: PAGE }] }, "TypeError", /address must be a bigint/],
      [{ ranges: [{ address: mem.address + 8n, length: PAGE }] }, "EINVAL", /page-aligned/],
      [{ ranges: [{ address: mem.address, length: 5 * PAGE }] }, "EINVAL", /not registered/],
      [{ ranges: [{ address: TOP - P, length: 2 * PAGE }] }, "EINVAL", /overflows 2\^64/],
      [{ ranges: [mem, mem] }, "EINVAL", /overlap/],
    ];
    for (const [options, expect, message] of bad) {
      await refusesAsync(() => u.FaultHandler.start(uffd, Z, X(options)), expect, message);
    }
    assert.equal(uffd.closed, false, "refused options leave the userfaultfd alone");
  });
  await t.step("policy options that cannot go to a Worker; copy sources it would wait on or cannot read", async () => {
    await refusesAsync(
      () => u.FaultHandler.start(uffd, u.policies.module(HOLD, { callback: () => 1 })),
      "TypeError",
      /options of the hold_policy\.ts policy must be structured-cloneable/,
    );
    // A copy source inside the registered range: the handler's own COPY would fault on it and wait for itself.
    await refusesAsync(
      () => u.FaultHandler.start(uffd, u.policies.copyFrom(mem)),
      "EINVAL",
      /overlaps memory registered for missing faults/,
    );
    const freed = Region.map(PAGE);
    const spec = u.policies.copyFrom(freed);
    freed.unmap();
    if (unmappedParts(freed.address, freed.address + P)?.length) {
      await refusesAsync(() => u.FaultHandler.start(uffd, spec), "EFAULT", /source is not mapped/);
    }
    assert.equal(uffd.closed, false);
  });
  await t.step("a timeout longer than a timer can wait is capped, not an instant failure", async () => {
    const handler = await u.FaultHandler.start(uffd, Z, { startTimeoutMs: 1e20, stopTimeoutMs: 1e20 });
    assert.equal(handler.state, "running");
    await handler.stop();
  });
});

Deno.test("hostile input: policies", () => {
  for (const make of [u.policies.unprotect, u.policies.continue] as ((o?: unknown) => unknown)[]) {
    for (const v of [null, 5, "x"]) refuses(() => make(X(v)), "TypeError", /^policies\.\w+: options must be an object/);
  }
  for (const chunk of [NaN, -1, 0, 1.5, 2 ** 60]) {
    refuses(() => u.policies.unprotect({ chunk }), "EINVAL", /^policies\.unprotect.*chunk must be a positive integer/);
  }
  refuses(() => u.policies.unprotect({ chunk: X("4") }), "TypeError", /chunk must be a number/);
  refuses(
    () => u.policies.unprotect({ removedAsWritten: X("yes") }),
    "TypeError",
    /removedAsWritten must be a boolean/,
  );
  refuses(() => u.policies.continue({ wp: X(1) }), "TypeError", /^policies\.continue: wp must be a boolean/);
  for (const v of [null, undefined, 5, {}, [], { address: 1, length: PAGE }]) {
    refuses(() => u.policies.copyFrom(X(v)), "TypeError", /^policies\.copyFrom: source must be a path/);
  }
  refuses(() => u.policies.copyFrom(""), "EINVAL", /the source path is empty/);
  refuses(() => u.policies.copyFrom(new URL("https://example.com/x")), "EINVAL", /file: URL/);
  refuses(() => u.policies.copyFrom({ address: -1n, length: PAGE }), "EINVAL", /\[0, 2\^64\)/);
  refuses(() => u.policies.copyFrom({ address: TOP, length: PAGE }), "EINVAL", /\[0, 2\^64\)/);
  refuses(() => u.policies.copyFrom({ address: TOP - P, length: 2 * PAGE }), "EINVAL", /overflows 2\^64/);
  for (const length of [-1, NaN, 2 ** 60]) {
    refuses(() => u.policies.copyFrom({ address: 0n, length }), "EINVAL", /bad source length/);
  }
  refuses(() => u.policies.copyFrom(new Uint8Array(1), X(null)), "TypeError", /^policies\.copyFrom: options/);
  refuses(() => u.policies.copyFrom(new Uint8Array(1), { wp: X("no") }), "TypeError", /wp must be a boolean/);
  for (const v of [null, 5, "", "relative.ts", {}]) {
    refuses(() => u.policies.module(X(v)), "TypeError", /^policies\.module: .* is not an absolute URL/);
  }
  refuses(() => u.policies.module(HOLD, {}, X(5)), "TypeError", /exportName must be a string/);
  // An empty source is fine: every page is zero-filled.
  assert.equal(u.policies.copyFrom(new Uint8Array(0)).name, "copyFrom");
});

Deno.test("hostile input: a running FaultHandler — control() arguments, stop and dispose twice, calls after the end, a source freed while it runs", async (t) => {
  await t.step("control(), collect(), stop(), [Symbol.asyncDispose]()", async () => {
    using mem = Region.map(4 * PAGE);
    using uffd = Userfaultfd.open();
    uffd.register(mem, { missing: true });
    const handler = await u.FaultHandler.start(uffd, u.policies.module(HOLD));
    for (const [, v] of WRONG_TYPES) {
      if (typeof v !== "string") refuses(() => handler.control(X(v)), "TypeError", /^FaultHandler\.control: op/);
    }
    refuses(() => handler.control("held", 1n), "TypeError", /arg must be JSON-serializable.*BigInt/);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    refuses(() => handler.control("held", cyclic), "TypeError", /arg must be JSON-serializable/);
    refuses(() => handler.control("held", "x".repeat(70_000)), "RangeError", /at most 65536/);
    assert.throws(() => handler.control("nope"), /hold: unknown operation nope/, "a policy's error, rethrown");
    assert.equal(handler.control("held"), 0, "and the handler keeps running");
    const first = handler.stop();
    assert.equal(handler.stop(), first, "stop() twice: the same promise");
    await first;
    await handler[Symbol.asyncDispose]();
    assert.equal(handler.state, "stopped");
    for (const call of [() => handler.collect(), () => handler.control("held")]) {
      assert.throws(call, (e) => e instanceof u.FaultHandlerError && /the fault handler is stopped/.test(e.message));
    }
    assert.deepEqual(handler.written(), []);
    assert.equal(handler.stats.faults, 0);
    assert.equal(uffd.closed, false, "stop() leaves the userfaultfd open");
  });
  await t.step("a copy source freed while the handler runs: EFAULT ends it, the writer is released", async () => {
    const mem = Region.map(4 * PAGE);
    const source = Region.map(4 * PAGE);
    source.bytes.fill(3);
    const uffd = Userfaultfd.open();
    uffd.register(mem, { missing: true });
    const handler = await u.FaultHandler.start(uffd, u.policies.copyFrom(source));
    source.unmap();
    const writer = libc.memsetOffThread(mem.address, 1, 8n);
    const error = await within(handler.done.then(() => undefined, (e) => e), 10_000, "the handler's end");
    await within(writer, 30_000, "the writer");
    assert.ok(error instanceof u.FaultHandlerError, String(error));
    assert.ok(error.cause instanceof UffdError && error.cause.code === "EFAULT", String(error.cause));
    assert.equal(uffd.closed, true);
    assert.equal(mem.bytes[0], 1, "the write landed after the close");
    mem.unmap();
  });
});

Deno.test("hostile input: Userfaultfd.events()", async () => {
  using uffd = Userfaultfd.open();
  for (const v of [null, 5, "x"]) refuses(() => uffd.events(X(v)), "TypeError", /^Userfaultfd\.events: options/);
  for (const signal of [5, {}, "abort"]) {
    refuses(() => uffd.events(X({ signal })), "TypeError", /signal must be an AbortSignal/);
  }
  using blocking = Userfaultfd.open({ nonblocking: false });
  refuses(() => blocking.events(), "EINVAL", /blocking: poll\(\) reports POLLERR/);
  const closed = Userfaultfd.open();
  closed.close();
  refuses(() => closed.events(), "EBADF", /the userfaultfd is closed/);
  // An aborted signal, or a close between creating the stream and reading it: it just ends.
  const aborted = new AbortController();
  aborted.abort();
  assert.equal((await uffd.events({ signal: aborted.signal }).next()).done, true);
  const later = Userfaultfd.open();
  const stream = later.events();
  later.close();
  assert.equal((await within(stream.next(), 30_000, "the stream")).done, true);
});

Deno.test("hostile input: WriteWatch", async (t) => {
  const buffer = new ArrayBuffer(4 * PAGE);
  await t.step("targets and options", () => {
    for (const [, v] of [...WRONG_TYPES, ["undefined", undefined]]) {
      refuses(() => u.WriteWatch.start(X(v)), "TypeError", /^WriteWatch\.start: expected a Region/);
    }
    const detached = new ArrayBuffer(PAGE);
    detached.transfer();
    using freed = Region.map(PAGE);
    freed.unmap();
    for (const empty of [new ArrayBuffer(0), detached, new Uint8Array(0), freed]) {
      refuses(() => u.WriteWatch.start(empty), "EINVAL", /empty, detached or unmapped/);
    }
    for (const v of [null, 5, "x"]) {
      refuses(() => u.WriteWatch.start(buffer, X(v)), "TypeError", /options must be an object/);
    }
    refuses(() => u.WriteWatch.start(buffer, X({ backend: "nope" })), "TypeError", /unknown backend "nope"/);
    refuses(() => u.WriteWatch.start(buffer, X({ backend: 5 })), "TypeError", /unknown backend 5/);
    for (const decline of [5, "async", {}]) {
      refuses(
        () => u.WriteWatch.start(buffer, X({ decline })),
        "TypeError",
        /decline must be a list of backend or feature names/,
      );
    }
    refuses(
      () => u.WriteWatch.start(buffer, X({ decline: ["nope"] })),
      "TypeError",
      /unknown backend or feature "nope" in decline/,
    );
    refuses(() => u.WriteWatch.start(buffer, { backend: "async", decline: ["async"] }), "EINVAL", /declined/);
  });
  await t.step("stopped twice, then used", () => {
    const watch = u.WriteWatch.start(buffer);
    watch.stop();
    watch.stop();
    watch[Symbol.dispose]();
    for (const call of [() => watch.written(), () => watch.collect(), () => watch.reset()]) {
      refuses(call, "EBADF", /the watch is stopped/);
    }
  });
  await t.step("the region unmapped under the watch: its pages are reported lost, not a crash", () => {
    const mem = Region.map(4 * PAGE);
    using watch = u.WriteWatch.start(mem);
    mem.unmap();
    assert.equal(watch.collect().lost.reduce((n, r) => n + r.pages, 0), 4);
  });
});

Deno.test("hostile input: Checkpoint and CheckpointReader", async (t) => {
  const dir = Deno.makeTempDirSync({ prefix: "uffd-hostile-" });
  try {
    const buffer = new ArrayBuffer(8 * PAGE);
    const bytes = new Uint8Array(buffer);
    bytes.fill(9);
    await t.step("Checkpoint: targets, paths, a write after stop", () => {
      for (const [, v] of WRONG_TYPES) refuses(() => u.Checkpoint.start(X(v)), "TypeError", /expected a Region/);
      using ckpt = u.Checkpoint.start(buffer);
      for (const path of [null, 5, "", {}]) refuses(() => ckpt.write(X(path)), "TypeError", /^Checkpoint\.write: path/);
      // File-system failures are Deno's typed errors, with the errno's code.
      assert.throws(() => ckpt.write(dir), (e) => e instanceof Deno.errors.IsADirectory);
      assert.throws(() => ckpt.write(`${dir}/no/such/dir/base`), (e) => e instanceof Deno.errors.NotFound);
      assert.deepEqual([...Deno.readDirSync(dir)], [], "no temporary file left behind");
      ckpt.stop();
      refuses(() => ckpt.write(`${dir}/late`), "EBADF", /the watch is stopped/);
    });
    await t.step("Checkpoint: a delta that fails to be written loses nothing", () => {
      using ckpt = u.Checkpoint.start(buffer);
      const base = ckpt.write(`${dir}/base`).path;
      const page = ckpt.watch.head === 0 ? 3 * PAGE : 3 * PAGE - ckpt.watch.head;
      bytes[page] = 7;
      assert.throws(() => ckpt.write(`${dir}/no/such/dir/d1`), Deno.errors.NotFound);
      const delta = ckpt.write(`${dir}/d1`);
      assert.equal(delta.sequence, 1);
      const restored = new ArrayBuffer(8 * PAGE);
      u.Checkpoint.restore(restored, [base, delta.path]);
      assert.equal(new Uint8Array(restored)[page], 7, "the write made before the failed delta is in the next one");
      bytes[page] = 9;
    });
    await t.step("CheckpointReader.open: paths and files that are not a chain", () => {
      for (const v of [null, 5, "x", [5], [null]]) {
        refuses(() => u.CheckpointReader.open(X(v)), "TypeError", /^CheckpointReader\.open: expected an array/);
      }
      refuses(() => u.CheckpointReader.open([]), "EINVAL", /no files: a chain starts with its base/);
      refuses(() => u.CheckpointReader.open([`${dir}/missing`]), "ENOENT", /^open/);
      refuses(() => u.CheckpointReader.open([dir]), "EISDIR", /^pread/);
      refuses(() => u.CheckpointReader.open(["/dev/null"]), "EIO", /too short for a header/);
      Deno.writeFileSync(`${dir}/garbage`, new Uint8Array(5 * PAGE).map((_, i) => (i * 131) % 251));
      refuses(() => u.CheckpointReader.open([`${dir}/garbage`]), "EIO", /not a checkpoint file/);
      const base = Deno.readFileSync(`${dir}/base`);
      Deno.writeFileSync(`${dir}/truncated`, base.slice(0, base.length - 100));
      refuses(() => u.CheckpointReader.open([`${dir}/truncated`]), "EIO", /header says/);
      refuses(() => u.CheckpointReader.open([`${dir}/base`, `${dir}/base`]), "EINVAL", /a base where delta 1 belongs/);
      refuses(() => u.CheckpointReader.open([`${dir}/d1`]), "EINVAL", /must start with its base/);
    });
    await t.step("CheckpointReader: indexes, buffers, targets; a file truncated or damaged after opening", () => {
      const reader = u.CheckpointReader.open([`${dir}/base`, `${dir}/d1`]);
      for (const index of [-1, NaN, 1.5, reader.pageCount, 2 ** 53, Infinity]) {
        refuses(() => reader.source(index), "RangeError", /page index .* is outside/);
        refuses(() => reader.readPage(index), "RangeError", /page index .* is outside/);
      }
      for (const index of ["0", null, 0n]) {
        refuses(() => reader.source(X(index)), "TypeError", /a page index must be a number/);
      }
      for (const into of [null, new Uint8Array(PAGE - 1), new Uint16Array(PAGE), []]) {
        refuses(() => reader.readPage(0, X(into)), "TypeError", /^readPage: into must be a Uint8Array/);
      }
      for (const [, v] of WRONG_TYPES) {
        refuses(() => reader.restore(X(v)), "TypeError", /^imageBytes: expected a Region/);
      }
      refuses(() => reader.restore(new ArrayBuffer(PAGE)), "EINVAL", /the target has 4096 bytes/);
      reader.close();
      reader.close();
      for (const call of [() => reader.source(0), () => reader.readPage(0), () => reader.verify()]) {
        refuses(call, "EBADF", /the reader is closed/);
      }
      // Damaged after opening: found when read, before the target is touched.
      Deno.copyFileSync(`${dir}/base`, `${dir}/base2`);
      const damaged = u.CheckpointReader.open([`${dir}/base2`]);
      const file = Deno.readFileSync(`${dir}/base2`);
      file[PAGE + 5] ^= 1;
      Deno.writeFileSync(`${dir}/base2`, file);
      const target = new ArrayBuffer(8 * PAGE);
      refuses(() => damaged.restore(target), "EIO", /checksum mismatch/);
      assert.ok(new Uint8Array(target).every((b) => b === 0), "the target is untouched");
      Deno.truncateSync(`${dir}/base2`, 2 * PAGE);
      refuses(() => damaged.verify(), "EIO", /unexpected end of file/);
      damaged.close();
    });
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("hostile input: measureWpSemantics and measureWpCell options", async () => {
  const refused: [unknown, RegExp][] = [
    [null, /options must be an object/],
    [5, /options must be an object/],
    [{ memory: "anon" }, /memory must be a list/],
    [{ memory: ["nope"] }, /unknown memory "nope"/],
    [{ scenarios: 5 }, /scenarios must be a list/],
    [{ scenarios: ["nope"] }, /unknown scenario "nope"/],
    [{ modes: ["nope"] }, /unknown mode "nope"/],
    [{ decline: "WP_ASYNC" }, /decline must be a list/],
    [{ decline: ["NOPE"] }, /unknown feature "NOPE"/],
    [{ timeoutMs: -1 }, /timeoutMs must be a non-negative number/],
    [{ timeoutMs: NaN }, /timeoutMs/],
    [{ timeoutMs: "5" }, /timeoutMs/],
    [{ onCell: 5 }, /onCell must be a function/],
  ];
  for (const [options, message] of refused) {
    await refusesAsync(() => u.measureWpSemantics(X(options)), "TypeError", message);
  }
  await refusesAsync(
    () => u.measureWpCell("anon", "populated", "sync", X(null)),
    "TypeError",
    /^measureWpCell: options/,
  );
  for (const args of [["nope", "populated", "sync"], ["anon", "nope", "sync"], ["anon", "populated", "nope"]]) {
    await refusesAsync(() => u.measureWpCell(X(args[0]), X(args[1]), X(args[2])), "TypeError", /unknown/);
  }
  assert.deepEqual((await u.measureWpSemantics({ memory: [] })).cells, [], "nothing asked, nothing measured");
});
