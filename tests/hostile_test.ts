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
import * as libc from "../ffi/libc.ts";

const PAGE = Region.pageSize;
const P = BigInt(PAGE);
const TOP = 1n << 64n;
// deno-lint-ignore no-explicit-any
const X = (v: unknown) => v as any;

type Expect = "TypeError" | "RangeError" | `E${string}`;

/** Asserts `fn` throws the expected kind of error, whose message matches `message` (the operation's name). */
function refuses(fn: () => unknown, expect: Expect, message: RegExp): Error {
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
    assert.equal(caught.code, expect, caught.message);
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
    refuses(() => u.invalid(X(5), "detail"), "TypeError", /operation/);
  });
  await t.step("toLength, toAddress, pageRange, pageFloor, pageCeil", () => {
    for (const bad of [NaN, Infinity, -1, -0.5, 1.5, 2 ** 53]) refuses(() => u.toLength(bad, "op"), "EINVAL", /^op/);
    refuses(() => u.toLength(-1n, "op"), "EINVAL", /must not be negative/);
    refuses(() => u.toLength("1", "op"), "TypeError", /^op: length must be a number or a bigint/);
    for (const bad of [-1n, TOP, TOP + 1n]) refuses(() => u.toAddress(bad, "op"), "EINVAL", /\[0, 2\^64\)/);
    for (const [, v] of WRONG_TYPES) refuses(() => u.toAddress(v, "op"), "TypeError", /^op: address must be a bigint/);
    refuses(() => u.toAddress(4096, "op"), "TypeError", /not number/);
    refuses(() => u.pageRange({ address: TOP - P, length: 2 * PAGE }, "op"), "EINVAL", /overflows 2\^64/);
    refuses(() => u.pageRange({ address: TOP - P, length: TOP }, "op"), "EINVAL", /overflows/);
    refuses(() => u.pageRange({ address: 1n, length: PAGE }, "op"), "EINVAL", /page-aligned/);
    refuses(() => u.pageRange({ address: 0n, length: 1 }, "op"), "EINVAL", /multiple of the page size/);
    refuses(() => u.pageRange(X(undefined), "op"), "TypeError", /^op: a range must be an object/);
    refuses(() => u.pageFloor(X(4096)), "TypeError", /pageFloor/);
    refuses(() => u.pageCeil(X("1")), "TypeError", /pageCeil/);
    assert.equal(u.pageCeil(TOP - 1n), TOP, "the end of the address space is 2^64, not an overflow");
  });
  await t.step("parseMaps, readMaps, unmappedParts, explainAccess, decodePagemapEntry", () => {
    refuses(() => u.parseMaps(X(42)), "TypeError", /parseMaps/);
    assert.deepEqual(u.parseMaps("garbage\n\0\nffff-0 rw-p\n"), [], "garbage text is no mapping");
    for (const pid of [-1, 0, 1.5, NaN, X("../self")]) refuses(() => u.readMaps(pid), "ESRCH", /readMaps/);
    refuses(() => u.readMaps(2 ** 30), "ESRCH", /no process/);
    refuses(() => u.unmappedParts(X(1), 2n), "TypeError", /unmappedParts/);
    assert.deepEqual(u.unmappedParts(5n, 1n), [], "an empty range has no hole");
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
    using uffd = Userfaultfd.open({ features: [Feature.MOVE, Feature.POISON] });
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
      else {
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
    refuses(() => uffd.copy(three.pages(1), TOP - 16n * P), "EINVAL", /^UFFDIO_COPY/);
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
  await t.step("ranges outside the user address space: EFAULT with a hint", () => {
    const e = refuses(() => u.pagemapScan({ address: 0n, length: 1n << 60n }), "EFAULT", /^PAGEMAP_SCAN/);
    assert.match((e as UffdError).hint ?? "", /user address space/);
    refuses(() => u.pagemapScan({ address: TOP - P, length: PAGE }), "EFAULT", /^PAGEMAP_SCAN/);
  });
  await t.step("readPagemap: options, pids, and ranges too large to return page by page", () => {
    refuses(() => readPagemap(mem, X(null)), "TypeError", /^pagemap: options/);
    refuses(() => readPagemap(mem, { pid: -1 }), "ESRCH", /pid must be/);
    refuses(() => readPagemap({ address: 0n, length: 1n << 46n }), "E2BIG", /read the range in parts/);
    // A range with nothing mapped reads as empty entries.
    assert.ok(readPagemap({ address: 0n, length: 4 * PAGE }).every((e) => !e.present));
  });
});
