/**
 * `pagemapScanPacked`, `PagemapScanner.scanPacked` and `PackedScan` on the real
 * kernel: the same regions as `pagemapScan`'s objects for every kind of query
 * (required and reported categories, merging across a full output vector,
 * `maxPages` with `walkEnd`, `PM_SCAN_WP_MATCHING`), a result reused by the next
 * scan (its arrays grow when a scan finds more regions and are never reallocated
 * otherwise, whatever the size of the range), and its accessors.
 */

import assert from "node:assert/strict";
import {
  type Category,
  Feature,
  PackedScan,
  pagemapScan,
  PagemapScanner,
  pagemapScanPacked,
  prepareQuery,
  Region,
  Userfaultfd,
} from "../mod.ts";
import { needs, needsPagemapScan } from "./helpers.ts";

const PAGE = Region.pageSize;

/** `[firstPage, pages, categories]` of each region of a packed result. */
function packedSummary(p: PackedScan): [number, number, number][] {
  const out: [number, number, number][] = [];
  for (let i = 0; i < p.length; i++) out.push([p.firstPages[i]!, p.pageCounts[i]!, p.categories[i]!]);
  return out;
}

/** The same of an object result. */
function objectSummary(regions: readonly { firstPage: number; pages: number; categories: bigint }[]) {
  return regions.map((r) => [r.firstPage, r.pages, Number(r.categories)]);
}

Deno.test({
  name: "pagemapScanPacked: the regions pagemapScan finds, for any vector length, with walkEnd and calls",
  ignore: needsPagemapScan(),
  fn: () => {
    const pages = 3000;
    using mem = Region.map(pages * PAGE);
    for (let p = 0; p < pages; p += 3) mem.bytes[p * PAGE] = 1;
    mem.bytes.fill(1, 1000 * PAGE, 1100 * PAGE); // one run of 100 pages among single ones
    for (const vectorLength of [1, 7, 512, 1024, 4096]) {
      const objects = pagemapScan(mem, { require: ["PRESENT"], vectorLength });
      const packed = pagemapScanPacked(mem, { require: ["PRESENT"], vectorLength });
      assert.deepEqual(packedSummary(packed), objectSummary(objects), `vectorLength ${vectorLength}`);
      assert.equal(packed.length, objects.length);
      assert.equal(packed.pages, objects.reduce((n, r) => n + r.pages, 0));
      assert.equal(packed.walkEnd, objects.walkEnd);
      assert.equal(packed.calls, objects.calls);
      assert.equal(packed.base, mem.address);
    }
    // Reported categories beyond the required one, and the object form rebuilt from the packed one.
    const query = { require: ["PRESENT"] as Category[], report: ["PRESENT", "WRITTEN", "FILE"] as Category[] };
    const packed = pagemapScanPacked(mem, query);
    const objects = pagemapScan(mem, query);
    assert.deepEqual(
      packed.toArray().map((r) => [r.start, r.end, r.categories, r.names, r.firstPage, r.pages]),
      objects.map((r) => [r.start, r.end, r.categories, r.names, r.firstPage, r.pages]),
    );
    const run = objects.findIndex((r) => r.firstPage === 999);
    assert.equal(packed.start(run), mem.address + BigInt(999 * PAGE));
    assert.equal(packed.end(run), mem.address + BigInt(1100 * PAGE), "999 and the run 1000..1099 are one region");
    assert.deepEqual(packed.names(run), objects[run]!.names);
    assert.throws(() => packed.start(packed.length), RangeError);
    assert.throws(() => packed.names(-1), RangeError);
  },
});

Deno.test({
  name: "pagemapScanPacked: maxPages stops the walk and walkEnd says where to resume",
  ignore: needsPagemapScan(),
  fn: () => {
    using mem = Region.map(64 * PAGE);
    for (let p = 0; p < 64; p += 2) mem.bytes[p * PAGE] = 1;
    const first = pagemapScanPacked(mem, { require: ["PRESENT"], maxPages: 5 });
    assert.equal(first.pages, 5);
    assert.deepEqual(packedSummary(first).map(([p]) => p), [0, 2, 4, 6, 8]);
    const end = mem.address + BigInt(64 * PAGE);
    const rest = pagemapScanPacked({ address: first.walkEnd, length: end - first.walkEnd }, { require: ["PRESENT"] });
    assert.equal(first.pages + rest.pages, 32, "every present page, once");
  },
});

Deno.test({
  name: "PagemapScanner.scanPacked: a reused result is refilled in place; its arrays grow only for more regions",
  ignore: needsPagemapScan(),
  fn: () => {
    using big = Region.map(2 ** 30); // 1 GiB of address space, three pages of it touched
    for (const p of [1, 1000, 200_000]) big.bytes[p * PAGE] = 1;
    using scanner = new PagemapScanner({ vectorLength: 64 });
    const present = prepareQuery({ require: ["PRESENT"] });
    const packed = new PackedScan(4);
    const arrays = () => [packed.firstPages, packed.pageCounts, packed.categories];
    const before = arrays();
    for (let i = 0; i < 3; i++) {
      assert.equal(scanner.scanPacked(big, present, packed), packed);
      assert.deepEqual(packedSummary(packed), [[1, 1, 8], [1000, 1, 8], [200_000, 1, 8]]);
    }
    assert.equal(packed.capacity, 4, "a few regions of a large range: no array proportional to the range");
    assert.deepEqual(arrays(), before, "the same arrays, refilled");
    // More regions than it holds: the arrays grow (and keep what earlier regions of this scan put there).
    using many = Region.map(100 * PAGE);
    for (let p = 0; p < 100; p += 2) many.bytes[p * PAGE] = 1;
    scanner.scanPacked(many, present, packed);
    assert.equal(packed.length, 50);
    assert.ok(packed.capacity >= 50);
    assert.deepEqual(packedSummary(packed).map(([p]) => p), Array.from({ length: 50 }, (_, i) => 2 * i));
    // A smaller result afterwards: same storage, shorter length.
    const grown = packed.capacity;
    scanner.scanPacked(big, present, packed);
    assert.equal(packed.length, 3);
    assert.equal(packed.capacity, grown);
    assert.throws(() => scanner.scanPacked(big, present, {} as PackedScan), TypeError);
    assert.throws(() => new PackedScan(0), TypeError);
  },
});

Deno.test({
  name: "pagemapScanPacked with writeProtect: one walk reports the written pages and protects them again",
  ignore: needs(Feature.WP_ASYNC) || needsPagemapScan(),
  fn: () => {
    using mem = Region.map(32 * PAGE);
    using uffd = Userfaultfd.open({ require: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED] });
    uffd.register(mem, { wp: true });
    uffd.writeProtect(mem);
    for (const p of [4, 5, 20]) mem.bytes[p * PAGE] = 1;
    const query = { require: ["WRITTEN"] as Category[], writeProtect: true };
    const packed = pagemapScanPacked(mem, query);
    assert.deepEqual(packedSummary(packed), [[4, 2, 2], [20, 1, 2]]);
    assert.equal(pagemapScanPacked(mem, query, packed).length, 0, "protected again by the same walk");
  },
});
