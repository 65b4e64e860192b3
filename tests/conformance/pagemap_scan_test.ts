/**
 * PAGEMAP_SCAN. Mirrors tools/testing/selftests/mm/pagemap_ioctl.c: the
 * argument checks and walk_end cases of `sanity_tests_sd()`, `base_tests()` on
 * each memory type, `hpage_unit_tests()`, `unmapped_region_tests()`,
 * `test_simple()`, `mprotect_tests()`, `transact_test()`, `sanity_tests()`,
 * `userfaultfd_tests()` and `zeropfn_tests()`.
 *
 * Two layers are tested. `pagemapScan()` validates before the ioctl, resumes
 * from `walk_end` itself and merges neighbouring regions, so the kernel's
 * one-ioctl answers (a region count, `walk_end` after a full vector or
 * `max_pages`, a wrong `size`, unknown flag bits) are pinned through
 * `ffi/_pagemap_scan.ts` (`ScanBuffers`) and a raw ioctl beside the API's answers.
 */

import assert from "node:assert/strict";
import {
  type Category,
  Feature,
  kernelProfile,
  MADV_HUGEPAGE,
  MAP_FIXED,
  MAP_PRIVATE,
  O_RDONLY,
  O_RDWR,
  PAGE_IS_FILE,
  PAGE_IS_HUGE,
  PAGE_IS_PFNZERO,
  PAGE_IS_PRESENT,
  PAGE_IS_SWAPPED,
  PAGE_IS_WPALLOWED,
  PAGE_IS_WRITTEN,
  PAGEMAP_SCAN,
  pagemapScan,
  PM_SCAN_CHECK_WPASYNC,
  PM_SCAN_WP_MATCHING,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  type Range,
  Region,
  Userfaultfd,
} from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { ScanBuffers } from "../../ffi/_pagemap_scan.ts";
import { encodePmScanArg } from "../../ffi/_structs.ts";
import { needs, needsPagemapScan } from "../helpers.ts";
import { assertUffdError, mapMemory, type MemType, needsHugetlbSetup, P, PAGE, withHugePages } from "./helpers.ts";

const EINVAL = 22;
const EPERM = 1;
const EFAULT = 14;
const ALL = PAGE_IS_WPALLOWED | PAGE_IS_WRITTEN | PAGE_IS_FILE | PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO |
  PAGE_IS_HUGE;
const NON_WRITTEN = ALL & ~PAGE_IS_WRITTEN;
const W = PAGE_IS_WRITTEN;
const WP = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
const ignore = needs(Feature.WP_ASYNC, Feature.WP_UNPOPULATED) || needsPagemapScan();

const pagemap = libc.open("/proc/self/pagemap", O_RDONLY);
const buffers = new ScanBuffers(4096);

interface Raw {
  /** Regions written, or -errno. */
  rc: number;
  walkEnd: bigint;
  /** Region lengths in pages. */
  lens: number[];
  starts: bigint[];
  categories: bigint[];
}

/** One PAGEMAP_SCAN ioctl, as pagemap_ioctl.c's `pagemap_ioc()` makes it. */
function raw(
  start: bigint,
  length: bigint,
  o: { vec?: number; flags?: bigint; max?: bigint; required?: bigint; anyof?: bigint; inverted?: bigint; ret?: bigint },
): Raw {
  const rc = buffers.scan(
    pagemap,
    start,
    start + length,
    o.flags ?? 0n,
    o.max ?? 0n,
    o.inverted ?? 0n,
    o.required ?? 0n,
    o.anyof ?? 0n,
    o.ret ?? 0n,
    o.vec ?? buffers.capacity,
  );
  const n = Math.max(rc, 0);
  const idx = [...Array(n).keys()];
  return {
    rc,
    walkEnd: buffers.walkEnd,
    lens: idx.map((i) => Number((buffers.regionEnd(i) - buffers.regionStart(i)) / P)),
    starts: idx.map((i) => buffers.regionStart(i)),
    categories: idx.map((i) => buffers.regionCategories(i)),
  };
}

/** A WP_ASYNC userfaultfd shared by the tests of this file (user-mode-only, as pagemap_ioctl.c's init_uffd). */
let shared: Userfaultfd | undefined;
function uffd(): Userfaultfd {
  return shared ??= Userfaultfd.open({
    require: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED],
    features: [Feature.WP_HUGETLBFS_SHMEM],
    userModeOnly: true,
  });
}

/** pagemap_ioctl.c `wp_init` + `wp_addr_range`: register for async write-protect and protect everything. */
function track(range: Range): void {
  uffd().register(range, { wp: true });
  uffd().writeProtect(range);
}

/** `wp_addr_range`: get-and-clear over a range, reporting nothing (vec = 0). */
function clear(range: Range): void {
  const start = range.address;
  assert.ok(raw(start, BigInt(range.length), { vec: 0, flags: WP, required: W, ret: W }).rc >= 0);
}

function pages(length: number): number {
  return length / PAGE;
}

Deno.test({
  name: "pagemap_ioctl.c sanity_tests_sd 1: argument checks on both layers",
  ignore,
  fn() {
    using mem = Region.map(100 * PAGE);
    track(mem);
    const s = mem.address;
    const len = BigInt(mem.length);
    try {
      // Kernel (one ioctl).
      assert.equal(raw(s, 0n, { required: ALL, ret: ALL }).rc, 0, "a zero-length range is valid");
      assert.equal(raw(s, len, { vec: 0, required: ALL, ret: ALL }).rc, 0, "vec may be NULL with vec_len 0");
      assert.equal(raw(s, len, { flags: (1n << 64n) - 1n, required: W, ret: W }).rc, -EINVAL, "unknown flags");
      assert.equal(raw(s, len, { flags: WP | 0xffn, required: W, ret: W }).rc, -EINVAL, "extra flag bits");
      assert.ok(raw(s, len, { ret: W }).rc >= 0, "no selection mask is valid");
      assert.equal(raw(s, len, { required: W, anyof: W }).rc, 0, "no return mask reports nothing");
      assert.equal(raw(s, len, { required: W, ret: 0x1000n }).rc, -EINVAL, "unknown return category");
      assert.equal(raw(s, len, { flags: WP, required: 0xfffn, anyof: W, ret: W }).rc, -EINVAL, "unknown category");
      assert.equal(raw(s, len, { inverted: 0x1000n, required: W, ret: W }).rc, -EINVAL, "unknown inverted");
      assert.equal(raw(s, len, { anyof: 0x1000n, ret: W }).rc, -EINVAL, "unknown anyof category");
      assert.ok(raw(s, len, { flags: WP, inverted: ALL, ret: W }).rc >= 0, "every category inverted, with WP");
      assert.equal(raw(s + 1n, len, { required: W, ret: W }).rc, -EINVAL, "unaligned start");
      assert.ok(raw(s, len - 1n, { required: W, ret: W }).rc >= 0, "an unaligned end is rounded up");
      assert.equal(raw(s + len, -len, { required: W, ret: W }).rc, -EFAULT, "end before start");
      // NULL vec with a length, and a size that is not sizeof(struct pm_scan_arg): through the raw struct.
      for (
        const [what, patch] of [["vec NULL, vec_len 4", { vecLen: 4n }], ["size 88", { size: 88n }], [
          "size 104",
          { size: 104n },
        ], ["size 0", { size: 0n }]] as const
      ) {
        const arg = encodePmScanArg({
          size: 96n,
          flags: 0n,
          start: s,
          end: s + len,
          walkEnd: 0n,
          vec: 0n,
          vecLen: 0n,
          maxPages: 0n,
          categoryInverted: 0n,
          categoryMask: W,
          categoryAnyofMask: 0n,
          returnMask: W,
          ...patch,
        });
        assert.equal(libc.ioctl(pagemap, PAGEMAP_SCAN, arg), -EINVAL, what);
      }
      // Write-protecting where async write-protect is not set up: skipped, or EPERM with CHECK_WPASYNC.
      using plain = Region.map(4 * PAGE);
      plain.bytes.fill(1);
      const p = plain.address;
      assert.equal(raw(p, 4n * P, { flags: PM_SCAN_WP_MATCHING, required: W, ret: W }).rc, 0, "skipped silently");
      assert.equal(raw(p, 4n * P, { flags: WP, required: W, ret: W }).rc, -EPERM);
      assert.equal(raw(p, 4n * P, { flags: PM_SCAN_CHECK_WPASYNC, required: W, ret: W }).rc, -EPERM);

      // The library: refused before the ioctl, with the kernel's errno.
      assertUffdError(() => pagemapScan({ address: s, length: 0 }), "EINVAL", /must not be zero/);
      assertUffdError(() => pagemapScan({ address: s + 1n, length: PAGE }), "EINVAL", /page-aligned/);
      assert.throws(() => pagemapScan(mem, { require: ["NOT_A_CATEGORY" as Category] }), TypeError);
      assertUffdError(() => pagemapScan(mem, { maxPages: -1 }), "EINVAL", /maxPages/);
      assertUffdError(() => pagemapScan(mem, { vectorLength: 0 }), "EINVAL", /vectorLength/);
      const e = assertUffdError(
        () => pagemapScan(plain, { require: ["WRITTEN"], writeProtect: true, checkWpAsync: true }),
        "EPERM",
      );
      assert.match(e.hint ?? "", /WP_ASYNC/);
      assert.deepEqual(pagemapScan(plain, { require: ["WRITTEN"], writeProtect: true }), [], "skipped silently");
      assert.equal(pagemapScan(plain, { require: ["WRITTEN"] }).length, 1, "the pages are written all the same");
    } finally {
      uffd().unregister(mem);
    }
  },
});

Deno.test({
  name: "pagemap_ioctl.c sanity_tests_sd 2-9: get-and-clear in parts, max_pages, two regions, smaller vectors",
  ignore,
  fn() {
    const n = 100;
    using mem = Region.map(n * PAGE);
    track(mem);
    const s = mem.address;
    const len = BigInt(n) * P;
    const touchEveryOther = () => {
      for (let i = 0; i < n; i += 2) mem.bytes[i * PAGE]!++;
    };
    // 2. Clearing with a large vector works.
    assert.ok(raw(s, len, { flags: WP, required: W, ret: W }).rc >= 0);
    // 3. Every other page written: n/2 separate regions.
    touchEveryOther();
    assert.equal(raw(s, len, { required: W, ret: W }).rc, n / 2);
    assert.equal(pagemapScan(mem, { require: ["WRITTEN"] }).length, n / 2);
    // 4. In parts: clear n/2 - 2 pages, see 2 regions in a 2-entry vector, clear the rest.
    const first = raw(s, len, { flags: WP, max: BigInt(n / 2 - 2), required: W, ret: W }).rc;
    const peek = raw(s, len, { vec: 2, required: W, ret: W }).rc;
    const rest = raw(s, len, { flags: WP, required: W, ret: W }).rc;
    assert.deepEqual([first + rest, peek], [n / 2, 2]);
    // 5. max_pages stops the walk: n/2 pages cleared, then the one left.
    touchEveryOther();
    mem.bytes[(n - 1) * PAGE]!++;
    assert.equal(raw(s, len, { flags: WP, max: BigInt(n / 2), required: W, ret: W }).rc, n / 2);
    assert.equal(raw(s, len, { flags: WP, required: W, ret: W }).rc, 1);
    // 6. Get and clear only pages 1 and 2 of an all-written range.
    mem.bytes.fill(0xff);
    const two = raw(s + P, 2n * P, { vec: 1, flags: WP, max: 2n, required: W, ret: W });
    assert.deepEqual([two.rc, two.lens, two.starts], [1, [2], [s + P]]);
    const after = raw(s, len, { required: W, ret: W });
    assert.deepEqual([after.rc, after.lens, after.starts], [2, [1, n - 3], [s, s + 3n * P]]);
    // The same through the API: the range minus pages 1 and 2, as two page ranges.
    assert.deepEqual(pagemapScan(mem, { require: ["WRITTEN"] }).map((r) => [r.firstPage, r.pages]), [[0, 1], [
      3,
      n - 3,
    ]]);
    clear(mem);
    // 8. Smaller max_pages, three times: every written page is collected exactly once.
    touchEveryOther();
    let total = 0;
    for (let i = 0; i < 3; i++) {
      total += pagemapScan(mem, { require: ["WRITTEN"], writeProtect: true, checkWpAsync: true, maxPages: n / 5 })
        .reduce((sum, r) => sum + r.pages, 0);
    }
    assert.equal(total, n / 2);
    uffd().unregister(mem);
    // 7. Two regions: clearing one leaves the other's writes.
    using a = Region.map(16 * PAGE);
    using b = Region.map(16 * PAGE);
    track(a);
    track(b);
    a.bytes.fill(0x61);
    b.bytes.fill(0x62);
    clear(a);
    const other = raw(b.address, 16n * P, { vec: 1, required: W, ret: W });
    assert.deepEqual([other.rc, other.lens], [1, [16]]);
    assert.deepEqual(pagemapScan(a, { require: ["WRITTEN"] }), []);
    uffd().unregister(a);
    uffd().unregister(b);
  },
});

Deno.test({
  name: "pagemap_ioctl.c sanity_tests_sd 9: a small vector, resumed from walk_end, collects every random write",
  ignore,
  fn() {
    const n = 2000;
    using mem = Region.map(n * PAGE);
    track(mem);
    let seed = 12345;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    for (let iteration = 0; iteration < 10; iteration++) {
      const writes = new Set<number>();
      for (let i = 0; i < n; i++) {
        if (random() < 0.5) {
          mem.bytes[i * PAGE]!++;
          writes.add(i);
        }
      }
      // The raw walk: vec of 50, resumed from walk_end until the range is covered.
      let at = mem.address;
      const end = mem.address + BigInt(n) * P;
      let reads = 0;
      while (at < end) {
        const r = raw(at, end - at, { vec: 50, required: W, ret: W });
        assert.ok(r.rc >= 0 && r.rc <= 50);
        reads += r.lens.reduce((x, y) => x + y, 0);
        assert.ok(r.walkEnd > at || r.rc === 0);
        if (r.walkEnd <= at) break;
        at = r.walkEnd;
      }
      assert.equal(reads, writes.size, `iteration ${iteration}`);
      // The API resumes by itself: the same pages, cleared as they are read.
      const found = pagemapScan(mem, { require: ["WRITTEN"], writeProtect: true, checkWpAsync: true, vectorLength: 50 })
        .flatMap((r) => Array.from({ length: r.pages }, (_, k) => r.firstPage + k));
      assert.deepEqual(found, [...writes].sort((x, y) => x - y));
    }
    uffd().unregister(mem);
  },
});

Deno.test({
  name: "pagemap_ioctl.c sanity_tests_sd 10: walk_end after empty ranges, full vectors and max_pages",
  ignore,
  fn() {
    const n = 1000;
    using mem = Region.map(n * PAGE);
    track(mem);
    mem.bytes.fill(0);
    const s = mem.address;
    const len = BigInt(n) * P;
    const walk = (length: bigint, o: Parameters<typeof raw>[2]) => {
      const r = raw(s, length, { required: W, ret: W, ...o });
      return [r.rc, (r.walkEnd - s) / P];
    };
    assert.deepEqual(walk(0n, {}), [0, 0n], "same start and end");
    assert.deepEqual(walk(0n, { flags: WP }), [0, 0n], "same start and end with WP");
    assert.deepEqual(walk(0n, { flags: WP, vec: 0 }), [0, 0n], "same start and end, no vector");
    assert.deepEqual(walk(len, {}), [1, BigInt(n)], "big vector");
    assert.deepEqual(walk(len, { vec: 1 }), [1, BigInt(n)], "vector of one");
    assert.deepEqual(walk(len, { vec: 1, max: BigInt(n) }), [1, BigInt(n)], "max_pages = all");
    assert.deepEqual(walk(len, { max: BigInt(n / 2) }), [1, BigInt(n / 2)], "half max_pages");
    assert.deepEqual(walk(len, { max: 1n }), [1, 1n], "one max page");
    assert.deepEqual(walk(len, { max: (1n << 64n) - 1n }), [1, BigInt(n)], "max_pages -1");
    clear(mem);
    for (let i = 0; i < n; i += 2) mem.bytes[i * PAGE]!++;
    assert.deepEqual(walk(len, {}), [n / 2, BigInt(n)], "sparse, big vector");
    assert.deepEqual(walk(len, { vec: 1 }), [1, 2n], "sparse, vector of one stops at the next region");
    assert.deepEqual(walk(len, { vec: 1, max: BigInt(n) }), [1, 2n], "sparse, vector of one, max_pages");
    assert.deepEqual(walk(len, { vec: n / 2, max: BigInt(n) }), [n / 2, BigInt(n)], "sparse, exact vector");
    assert.deepEqual(walk(len, { max: BigInt(n / 2) }), [n / 2, BigInt(n)], "sparse, half max_pages");
    assert.deepEqual(walk(len, { max: 1n }), [1, 2n], "sparse, one max page");
    // The API hides walk_end: with maxPages it stops, without it resumes to the end.
    assert.equal(pagemapScan(mem, { require: ["WRITTEN"], maxPages: 3 }).length, 3);
    assert.equal(pagemapScan(mem, { require: ["WRITTEN"], vectorLength: 1 }).length, n / 2);
    uffd().unregister(mem);
  },
});

/** `base_tests()`: the six checks on a tracked range of `length` bytes at `start` that is all zero-protected. */
function baseTests(range: Range & { bytes: Uint8Array }): void {
  const s = range.address;
  const length = Number(range.length);
  const len = BigInt(length);
  const n = pages(length);
  const bytes = range.bytes;
  // 1. New pages are not written.
  assert.equal(raw(s, len, { vec: 1, flags: WP, max: BigInt(n - 2), required: W, ret: W }).rc, 0, "1 new pages");
  // 2. Every page written.
  bytes.fill(0xff);
  const all = raw(s, len, { vec: 1, required: W, ret: W });
  assert.deepEqual([all.rc, all.lens], [1, [n]], "2 all pages written");
  // 3. All but the first and last page written again, got and cleared; then nothing is written.
  raw(s, len, { vec: 1, flags: WP, required: W, ret: W });
  bytes.fill(0, PAGE, length - PAGE);
  const middle = raw(s, len, { vec: 1, flags: WP, required: W, ret: W });
  assert.equal(middle.rc, 1, "3 one region");
  assert.ok(middle.lens[0]! >= n - 2 && middle.lens[0]! <= n, `3 ${middle.lens[0]} pages`);
  assert.equal(raw(s, len, { vec: 1, required: W, ret: W }).rc, 0, "3 cleared");
  // 4. Only the middle page.
  raw(s, len, { vec: 1, flags: WP, required: W, ret: W });
  bytes[Math.floor(n / 2) * PAGE]!++;
  const one = raw(s, len, { required: W, ret: W });
  assert.ok(one.rc === 1 && one.lens[0]! >= 1, "4 only the middle page");
  // 5. Two middle pages, scanning only them.
  raw(s, len, { vec: 1, flags: WP, required: W, ret: W | PAGE_IS_HUGE });
  const mid = s + BigInt(Math.floor(n / 2)) * P;
  bytes[Math.floor(n / 2) * PAGE]!++;
  bytes[(Math.floor(n / 2) + 1) * PAGE]!++;
  const twoPages = raw(mid, 2n * P, { vec: 1, required: W, ret: W | PAGE_IS_HUGE });
  assert.deepEqual([twoPages.rc, twoPages.starts, twoPages.lens], [1, [mid], [2]], "5 two middle pages");
}

/** A regular file of `length` bytes mapped MAP_PRIVATE (the API maps no files, so through ffi/). */
function privateFileMapping(length: number, prot = PROT_READ | PROT_WRITE): Range & Disposable & { bytes: Uint8Array } {
  const path = Deno.makeTempFileSync({ prefix: "uffd-pagemap-" });
  Deno.writeFileSync(path, new Uint8Array(length).fill(0x63));
  const fd = libc.open(path, O_RDWR);
  Deno.removeSync(path);
  const address = libc.mmap(0n, BigInt(length), prot, MAP_PRIVATE, fd, 0n);
  libc.close(fd);
  assert.ok(address > 0n);
  return {
    address,
    length,
    bytes: new Uint8Array(libc.bufferAt(address, length)),
    [Symbol.dispose]: () => libc.munmap(address, BigInt(length)),
  };
}

Deno.test({
  name: "pagemap_ioctl.c base_tests: page, large page, THP, file and memfd-private memory",
  ignore,
  async fn(t) {
    type Tracked = Range & Disposable & { bytes: Uint8Array };
    const thp = (): Tracked => {
      const huge = 2 << 20;
      const region = Region.map(2 * huge);
      const address = (region.address + BigInt(huge - 1)) / BigInt(huge) * BigInt(huge);
      region.advise(MADV_HUGEPAGE, { address, length: huge });
      const bytes = new Uint8Array(libc.bufferAt(address, huge));
      return { address, length: huge, bytes, [Symbol.dispose]: () => region.unmap() };
    };
    const memfdPrivate = (): Tracked => {
      const m = mapMemory("shmem-private", 10);
      return {
        address: m.range.address,
        length: 10 * PAGE,
        bytes: m.bytes,
        [Symbol.dispose]: () => m[Symbol.dispose](),
      };
    };
    const cases: [string, () => Tracked][] = [
      ["Page testing (10 pages)", () => Region.map(10 * PAGE)],
      ["Large Page testing (5120 pages)", () => Region.map(5120 * PAGE)],
      ["Huge page testing (THP, MADV_HUGEPAGE)", thp],
      ["File memory testing (MAP_PRIVATE file)", () => privateFileMapping(10 * PAGE)],
      ["File anonymous memory testing (memfd MAP_PRIVATE)", memfdPrivate],
    ];
    for (const [name, make] of cases) {
      await t.step(name, () => {
        using range = make();
        track(range);
        try {
          baseTests(range);
        } finally {
          uffd().unregister(range);
        }
      });
    }
  },
});

Deno.test({
  name: "pagemap_ioctl.c base_tests: hugetlb memfd and hugetlb private memory",
  ignore: ignore || needsHugetlbSetup(),
  async fn(t) {
    await withHugePages(4, async () => {
      for (const type of ["hugetlb", "hugetlb-private"] as MemType[]) {
        await t.step(`Hugetlb ${type}`, () => {
          using mem = mapMemory(type, 1);
          track(mem.range);
          try {
            baseTests({ address: mem.range.address, length: mem.pageSize, bytes: mem.bytes });
          } finally {
            uffd().unregister(mem.range);
          }
        });
      }
    });
  },
});

Deno.test({
  name: "pagemap_ioctl.c hpage_unit_tests: written state of transparent huge pages, cleared by halves",
  ignore,
  fn() {
    const huge = 2 << 20;
    const n = 10 * huge / PAGE;
    const thp = () => {
      const region = Region.map(11 * huge);
      const address = (region.address + BigInt(huge - 1)) / BigInt(huge) * BigInt(huge);
      region.advise(MADV_HUGEPAGE, { address, length: 10 * huge });
      const bytes = new Uint8Array(libc.bufferAt(address, 10 * huge));
      bytes.fill(0);
      const range = { address, length: 10 * huge };
      track(range);
      return { region, range, bytes, [Symbol.dispose]: () => (uffd().unregister(range), region.unmap()) };
    };
    const len = BigInt(10 * huge);
    {
      using m = thp();
      const s = m.range.address;
      assert.equal(raw(s, len, { flags: WP, required: W, ret: W }).rc, 0, "1 new huge pages not written");
      assert.equal(raw(s, len, { required: W, ret: W }).rc, 0, "2 not written");
      m.bytes.fill(0xff);
      const r = raw(s, len, { flags: WP, required: W, ret: W });
      assert.deepEqual([r.rc, r.starts, r.lens, r.categories], [1, [s], [n], [W]], "3 written and cleared");
    }
    {
      using m = thp();
      m.bytes[(n / 2) * PAGE]!++;
      const r = raw(m.range.address, len, { required: W, ret: W });
      assert.ok(r.rc === 1 && r.lens[0]! > 0, "4 only the middle page");
    }
    {
      using m = thp();
      m.bytes.fill(0);
      clear({ address: m.range.address, length: 5 * huge });
      const r = raw(m.range.address, len, { required: W, ret: W });
      assert.deepEqual([r.rc, r.lens, r.starts], [1, [n / 2], [m.range.address + len / 2n]], "5 first half cleared");
    }
    {
      using m = thp();
      m.bytes.fill(0);
      raw(m.range.address, len, { flags: WP, max: BigInt(n / 2), required: W, ret: W });
      const r = raw(m.range.address, len, { required: W, ret: W });
      assert.deepEqual([r.rc, r.lens, r.starts], [1, [n / 2], [m.range.address + len / 2n]], "6 limited buffer");
    }
    {
      using m = thp();
      m.bytes.fill(0xff);
      raw(m.range.address + len / 2n, len / 2n, { flags: WP, max: BigInt(n / 2), required: W, ret: W });
      const r = raw(m.range.address, len, { required: W, ret: W });
      assert.deepEqual([r.rc, r.lens], [1, [n / 2]], "7 second half cleared");
    }
    {
      using m = thp();
      m.bytes.fill(0xff);
      const half = raw(m.range.address, len, { vec: 1, flags: WP, max: BigInt(huge / PAGE / 2), required: W, ret: W });
      assert.deepEqual([half.rc, half.lens], [1, [huge / PAGE / 2]], "8 half a huge page");
      const rest = raw(m.range.address, len, { required: W, ret: W });
      assert.deepEqual([rest.rc, rest.lens], [1, [n - huge / PAGE / 2]], "8 the rest");
    }
  },
});

Deno.test({
  name: "pagemap_ioctl.c unmapped_region_tests, test_simple, userfaultfd_tests, zeropfn_tests",
  ignore,
  async fn(t) {
    await t.step("unmapped_region_tests: a range with nothing mapped reports nothing", () => {
      const gone = Region.map(64 * PAGE);
      gone.unmap();
      assert.deepEqual(pagemapScan(gone.pageSpan, { anyOf: ["PRESENT", "SWAPPED", "FILE", "PFNZERO", "HUGE"] }), []);
      assert.equal(raw(gone.address, 64n * P, { required: NON_WRITTEN, ret: NON_WRITTEN }).rc, 0);
    });
    await t.step("test_simple: 100 rounds of protect, write one page, see it written", () => {
      using mem = Region.map(PAGE);
      track(mem);
      for (let i = 0; i < 100; i++) {
        assert.deepEqual(pagemapScan(mem, { require: ["WRITTEN"] }), [], `round ${i}: not written`);
        clear(mem);
        mem.bytes[0]!++;
        assert.equal(pagemapScan(mem, { require: ["WRITTEN"] }).length, 1, `round ${i}: written`);
        clear(mem);
      }
      uffd().unregister(mem);
    });
    await t.step("userfaultfd_tests: PROT_NONE and read-only parts are never written", () => {
      using mem = Region.map(16 * PAGE, { prot: PROT_NONE });
      track(mem);
      const eighth = 2 * PAGE;
      const prots = [
        PROT_READ | PROT_WRITE,
        PROT_READ,
        PROT_READ | PROT_WRITE,
        PROT_READ,
        PROT_READ | PROT_WRITE,
        PROT_NONE,
      ];
      prots.push(PROT_READ | PROT_WRITE, PROT_READ);
      prots.forEach((prot, i) => mem.protect(prot, { address: mem.address + BigInt(i * eighth), length: eighth }));
      clear({ address: mem.address + P, length: 16 * PAGE - 2 * eighth });
      clear(mem);
      const r = raw(mem.address, 16n * P, { vec: 1, flags: WP, max: 14n, required: W, ret: W });
      assert.equal(r.rc, 0, "all new pages must not be written");
      uffd().unregister(mem);
    });
    await t.step("zeropfn_tests: pages only read map the zero page (PFNZERO) where read faults map it", () => {
      // The selftest assumes a read fault maps the zero page; some builds allocate instead
      // (the kernel profile measured which, through /proc/self/pagemap).
      using mem = Region.map(10 * PAGE, { prot: PROT_READ });
      let reads = 0; // summed and used: an unused load may be optimised away
      for (let i = 0; i < 10; i++) reads += mem.bytes[i * PAGE]!;
      assert.equal(reads, 0);
      const r = pagemapScan(mem, { require: ["PFNZERO"], report: ["PFNZERO"], maxPages: 10 });
      const zero = kernelProfile().zeroPage.readFault;
      assert.deepEqual(r.map((x) => [x.firstPage, x.pages, x.categories]), zero ? [[0, 10, PAGE_IS_PFNZERO]] : []);
      if (!zero) assert.equal(pagemapScan(mem, { require: ["PRESENT"] })[0]?.pages, 10, "allocated: present");
    });
    await t.step("zeropfn_tests: pages filled by UFFDIO_ZEROPAGE report PFNZERO where it maps the zero page", () => {
      using mem = Region.map(10 * PAGE);
      using fd = Userfaultfd.open();
      fd.register(mem, { missing: true });
      fd.zeropage(mem);
      const r = pagemapScan(mem, { require: ["PFNZERO"], report: ["PFNZERO"], maxPages: 10 });
      const zero = kernelProfile().zeroPage.uffdZeropage === "zero-page";
      assert.deepEqual(r.map((x) => [x.firstPage, x.pages, x.categories]), zero ? [[0, 10, PAGE_IS_PFNZERO]] : []);
    });
    await t.step("zeropfn_tests: transparent huge pages only read map the huge zero page", () => {
      let useZeroPage = "0";
      try {
        useZeroPage = Deno.readTextFileSync("/sys/kernel/mm/transparent_hugepage/use_zero_page").trim();
      } catch { /* no THP */ }
      if (useZeroPage !== "1") {
        console.log("%cskip: transparent_hugepage/use_zero_page is not 1", "color: yellow");
        return;
      }
      const huge = 2 << 20;
      using thp = Region.map(11 * huge, { prot: PROT_READ });
      const address = (thp.address + BigInt(huge - 1)) / BigInt(huge) * BigInt(huge);
      const range = { address, length: 10 * huge };
      thp.advise(MADV_HUGEPAGE, range);
      const bytes = new Uint8Array(libc.bufferAt(address, 10 * huge));
      let reads = 0;
      for (let i = 0; i < 10; i++) reads += bytes[i * huge]!;
      assert.equal(reads, 0);
      const r = pagemapScan(range, { require: ["PFNZERO"], report: ["PFNZERO"], maxPages: 10 * huge / PAGE });
      // The profile's probe of one such read: the huge zero page, a huge page of its own, or small pages.
      const expected = kernelProfile().zeroPage.hugeReadFault === "huge-zero-page"
        ? [[0, 10 * huge / PAGE]]
        : kernelProfile().zeroPage.readFault && kernelProfile().zeroPage.hugeReadFault === "small-pages"
        ? Array.from({ length: 10 }, (_, i) => [i * huge / PAGE, 1])
        : [];
      assert.deepEqual(r.map((x) => [x.firstPage, x.pages]), expected);
    });
  },
});

Deno.test({
  name: "pagemap_ioctl.c mprotect_tests: writes survive mprotect and a MAP_FIXED remap",
  ignore,
  fn() {
    using mem = Region.map(2 * PAGE);
    track(mem);
    mem.bytes.fill(1);
    assert.deepEqual(raw(mem.address, 2n * P, { vec: 1, required: W, ret: W }).lens, [2], "1 both written");
    clear(mem);
    assert.equal(raw(mem.address, 2n * P, { vec: 1, required: W, ret: W }).rc, 0, "2 both clean");
    // 3. A fresh anonymous page mapped over the second one (MAP_FIXED: through ffi/), registered and protected.
    const second = libc.mmap(mem.address + P, P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | 0x20, -1, 0n);
    assert.equal(second, mem.address + P);
    track({ address: second, length: PAGE });
    mem.protect(PROT_NONE, mem.pages(0));
    mem.protect(PROT_READ);
    mem.protect(PROT_READ | PROT_WRITE);
    mem.bytes.fill(2);
    mem.protect(PROT_NONE, mem.pages(0));
    mem.protect(PROT_READ, mem.pages(0));
    mem.protect(PROT_READ | PROT_WRITE, mem.pages(0));
    assert.deepEqual(raw(mem.address, 2n * P, { vec: 1, required: W, ret: W }).lens, [2], "3 written after remap");
    // 4. Clear and write again.
    clear(mem);
    mem.bytes.fill(0x41);
    assert.deepEqual(raw(mem.address, 2n * P, { vec: 1, required: W, ret: W }).lens, [2], "4 written again");
    uffd().unregister(mem);
  },
});

Deno.test({
  name: "pagemap_ioctl.c sanity_tests: required, any-of, inverted and return masks; file mappings",
  ignore,
  fn() {
    const n = 10;
    {
      using mem = Region.map(n * PAGE);
      track(mem);
      const s = mem.address;
      const len = BigInt(n) * P;
      assert.ok(raw(s, len, { flags: WP, required: ALL, ret: ALL }).rc >= 0, "WP with all required");
      assert.ok(raw(s, len, { required: ALL, ret: ALL }).rc >= 0, "required");
      assert.ok(raw(s, len, { anyof: ALL, ret: ALL }).rc >= 0, "anyof");
      assert.ok(raw(s, len, { inverted: ALL, ret: ALL }).rc >= 0, "inverted");
      assert.ok(raw(s, len, { required: ALL, anyof: ALL, ret: ALL }).rc >= 0, "required and anyof");
      uffd().unregister(mem);
    }
    {
      using mem = Region.map(n * PAGE);
      track(mem);
      mem.bytes.fill(0);
      const s = mem.address;
      const len = BigInt(n) * P;
      const both = PAGE_IS_WRITTEN | PAGE_IS_PRESENT;
      const anyof = raw(s, len, { anyof: ALL, ret: ALL });
      assert.ok(anyof.rc >= 0 && anyof.starts[0] === s && anyof.lens[0] === n);
      assert.equal(anyof.categories[0]! & both, both, "written and present pages with anyof");
      const required = raw(s, len, { required: both, anyof: PAGE_IS_PRESENT, ret: ALL });
      assert.equal(required.lens[0], n, "written and present with required and anyof");
      assert.equal(raw(s, len, { required: W, inverted: W, ret: ALL }).rc, 0, "don't get written pages");
      assert.equal(raw(s, len, { required: PAGE_IS_PRESENT, inverted: PAGE_IS_PRESENT, ret: ALL }).rc, 0);
      // Through the API: invert turns "require WRITTEN" into "require not written".
      assert.deepEqual(pagemapScan(mem, { require: ["WRITTEN"], invert: ["WRITTEN"] }), []);
      uffd().unregister(mem);
    }
    {
      using mem = Region.map(n * PAGE);
      track(mem);
      mem.bytes.fill(0);
      const r = raw(mem.address, BigInt(n) * P, { flags: WP, anyof: ALL, ret: W });
      assert.deepEqual([r.starts, r.lens, r.categories], [[mem.address], [n], [W]], "written present, return mask");
      uffd().unregister(mem);
    }
    {
      using file = privateFileMapping(3 * PAGE + 100, PROT_READ);
      void file.bytes[0];
      void file.bytes[3 * PAGE];
      const r = raw(file.address, 4n * P, { anyof: NON_WRITTEN, ret: NON_WRITTEN });
      assert.ok(r.rc >= 1 && r.starts[0] === file.address && r.lens[0] === 4, "a mapped file, all four pages");
      assert.equal(r.categories[0]! & PAGE_IS_FILE, PAGE_IS_FILE);
    }
    {
      using file = privateFileMapping(n * PAGE);
      track(file);
      file.bytes.fill(0x7a);
      const r = raw(file.address, BigInt(n) * P, {
        required: W,
        anyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE,
        ret: ALL,
      });
      assert.ok(r.starts[0] === file.address && r.lens[0] === n && (r.categories[0]! & W) === W, "written file");
      uffd().unregister(file);
    }
  },
});

Deno.test({
  name: "pagemap_ioctl.c transact_test: concurrent writers and get-and-clear lose no write",
  ignore,
  async fn() {
    const threads = 2, perThread = 32, access = 8, rounds = 200;
    using mem = Region.map(threads * perThread * PAGE);
    track(mem);
    mem.bytes.fill(0);
    const count = (reset: boolean) =>
      pagemapScan(mem, {
        require: ["WRITTEN"],
        writeProtect: reset,
        checkWpAsync: reset,
        maxPages: threads * perThread,
      }).reduce((sum, r) => sum + r.pages, 0);
    assert.ok(count(true) > 0);
    assert.equal(count(true), 0);
    const sync = new Int32Array(new SharedArrayBuffer(8));
    const ready: Promise<unknown>[] = [];
    const workers = Array.from({ length: threads }, (_, i) => {
      const w = new Worker(new URL("./workers/transact.ts", import.meta.url), { type: "module" });
      ready.push(new Promise((resolve) => w.onmessage = resolve));
      w.postMessage({ address: mem.address + BigInt(i * perThread * PAGE), access, sync: sync.buffer });
      return w;
    });
    try {
      await Promise.race([
        Promise.all(ready),
        new Promise((_, reject) => setTimeout(() => reject(new Error("the writers did not start")), 20_000)),
      ]);
      let extra = 0;
      for (let round = 0; round < rounds; round++) {
        // Start the round, collect while the writers write, wait for them, collect the rest.
        Atomics.store(sync, 1, 0);
        Atomics.add(sync, 0, 1);
        Atomics.notify(sync, 0);
        let seen = count(true);
        const deadline = Date.now() + 10_000;
        while (Atomics.load(sync, 1) < threads) {
          assert.ok(Date.now() < deadline, `round ${round}: the writers did not finish`);
          await new Promise((r) => setTimeout(r, 0));
        }
        seen += count(true);
        assert.ok(seen >= threads * access, `round ${round}: lost an update (${seen} < ${threads * access})`);
        extra += seen - threads * access;
      }
      // The kernel may report a page twice (a write between two get-and-clears), never less than once.
      assert.ok(extra <= rounds * threads * access, `${extra} extra`);
    } finally {
      Atomics.store(sync, 0, -1);
      Atomics.notify(sync, 0);
      for (const w of workers) w.terminate();
      uffd().unregister(mem);
    }
  },
});

Deno.test({
  name: "PAGEMAP_SCAN category logic through the API: report masks, merging neighbours, maxPages",
  ignore,
  fn() {
    using mem = Region.map(8 * PAGE);
    track(mem);
    for (const i of [1, 2, 5]) mem.bytes[i * PAGE] = 1;
    // Reporting only WRITTEN merges the written neighbours 1 and 2 into one range.
    assert.deepEqual(pagemapScan(mem, { require: ["WRITTEN"] }).map((r) => [r.firstPage, r.pages, r.names]), [
      [1, 2, ["WRITTEN"]],
      [5, 1, ["WRITTEN"]],
    ]);
    // Without a condition, every page is reported with the categories asked for; neighbours with equal ones merge.
    assert.deepEqual(pagemapScan(mem, { report: ["WRITTEN", "PRESENT"] }).map((r) => [r.firstPage, r.pages]), [
      [0, 1],
      [1, 2],
      [3, 2],
      [5, 1],
      [6, 2],
    ]);
    // anyOf: written or present (the same pages here); inverted PRESENT: the pages never touched.
    assert.deepEqual(pagemapScan(mem, { anyOf: ["WRITTEN", "PRESENT"] }).map((r) => r.pages), [2, 1]);
    const untouched = pagemapScan(mem, { require: ["PRESENT"], invert: ["PRESENT"], report: ["WPALLOWED"] });
    assert.deepEqual(untouched.map((r) => [r.firstPage, r.pages, r.names]), [
      [0, 1, ["WPALLOWED"]],
      [3, 2, ["WPALLOWED"]],
      [6, 2, ["WPALLOWED"]],
    ]);
    // maxPages counts pages, not ranges: 2 pages end inside the first range.
    assert.deepEqual(pagemapScan(mem, { require: ["WRITTEN"], maxPages: 2 }).map((r) => [r.firstPage, r.pages]), [
      [1, 2],
    ]);
    // Write-protecting the matching pages clears them for the next scan.
    assert.equal(pagemapScan(mem, { require: ["WRITTEN"], writeProtect: true, checkWpAsync: true }).length, 2);
    assert.deepEqual(pagemapScan(mem, { require: ["WRITTEN"] }), []);
    uffd().unregister(mem);
  },
});
