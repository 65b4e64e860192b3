/**
 * pagemapScan, PagemapScanner and readPagemap on the real kernel: every
 * PAGEMAP_SCAN option (category_mask, category_inverted, category_anyof_mask,
 * return_mask, max_pages with resume from walk_end, PM_SCAN_WP_MATCHING,
 * PM_SCAN_CHECK_WPASYNC), the output vector reused and resumed, categories the
 * kernel cannot answer refused, another process scanned, and the errors for a pid
 * that does not exist or may not be read.
 */

import assert from "node:assert/strict";
import {
  acceptedCategories,
  CATEGORIES,
  type Category,
  Feature,
  kernelProfile,
  pagemapScan,
  PagemapScanner,
  prepareQuery,
  readPagemap,
  readPagemapRaw,
  Region,
  softDirtySupported,
  Userfaultfd,
} from "../mod.ts";
import {
  assertUffdError,
  isRoot,
  mapZeroPages,
  needs,
  needsPagemapScan,
  needsZeroPage,
  readFaultMapsZeroPage,
  skipUnless,
  within,
} from "./helpers.ts";

const PAGE = Region.pageSize;

/** `[firstPage, pages, names]` of each region, for compact assertions. */
function summary(regions: readonly { firstPage: number; pages: number; names: readonly Category[] }[]) {
  return regions.map((r) => [r.firstPage, r.pages, r.names.join("|")]);
}

/**
 * 16 pages: 1–2 and 5 written, 8 mapping the shared zero page (read, or
 * `UFFDIO_ZEROPAGE` on a kernel whose read faults allocate), the rest untouched.
 */
function layout(): Region {
  const mem = Region.map(16 * PAGE);
  mem.bytes[1 * PAGE] = 1;
  mem.bytes[2 * PAGE] = 1;
  mem.bytes[5 * PAGE] = 1;
  assert.ok(mapZeroPages(mem.pages(8, 1)));
  return mem;
}

Deno.test({
  name: "category_mask and return_mask: required categories, reported categories, merging",
  ignore: needsPagemapScan() || needsZeroPage(),
  fn: () => {
    using mem = layout();
    assert.deepEqual(summary(pagemapScan(mem, { require: ["PRESENT"] })), [
      [1, 2, "PRESENT"],
      [5, 1, "PRESENT"],
      [8, 1, "PRESENT"],
    ]);
    // Reporting PFNZERO as well splits the zero page from the written ones.
    const detailed = pagemapScan(mem, { require: ["PRESENT"], report: ["PRESENT", "PFNZERO"] });
    assert.deepEqual(summary(detailed), [[1, 2, "PRESENT"], [5, 1, "PRESENT"], [8, 1, "PRESENT|PFNZERO"]]);
    assert.equal(detailed[2]!.start, mem.address + BigInt(8 * PAGE));
    assert.equal(detailed[2]!.end, mem.address + BigInt(9 * PAGE));
    assert.equal(detailed[2]!.categories, 0x28n);
    // Pages 1-2 and 5 are not adjacent, so they stay separate even with an empty return mask.
    assert.deepEqual(summary(pagemapScan(mem, { require: ["PRESENT"], report: [] })), [
      [1, 2, ""],
      [5, 1, ""],
      [8, 1, ""],
    ]);
    // With nothing named, every answerable category is reported, and every page matches.
    const all = pagemapScan(mem);
    assert.equal(all.reduce((n, r) => n + r.pages, 0), 16);
    assert.equal(all.walkEnd, mem.address + BigInt(16 * PAGE));
  },
});

Deno.test({
  name: "category_inverted: pages that are not present",
  ignore: needsPagemapScan() || needsZeroPage(),
  fn: () => {
    using mem = layout();
    assert.deepEqual(summary(pagemapScan(mem, { require: ["PRESENT"], invert: ["PRESENT"] })), [
      [0, 1, ""],
      [3, 2, ""],
      [6, 2, ""],
      [9, 7, ""],
    ]);
    // Present and not the zero page: the pages someone wrote.
    const written = pagemapScan(mem, { require: ["PRESENT", "PFNZERO"], invert: ["PFNZERO"], report: ["PRESENT"] });
    assert.deepEqual(summary(written), [[1, 2, "PRESENT"], [5, 1, "PRESENT"]]);
  },
});

Deno.test({
  name: "category_anyof_mask: at least one of the categories",
  ignore: needsPagemapScan() || needsZeroPage(),
  fn: () => {
    using mem = layout();
    assert.deepEqual(summary(pagemapScan(mem, { anyOf: ["PFNZERO", "SWAPPED"] })), [[8, 1, "PFNZERO"]]);
    assert.deepEqual(summary(pagemapScan(mem, { require: ["PRESENT"], anyOf: ["PFNZERO", "HUGE"] })), [
      [8, 1, "PRESENT|PFNZERO"],
    ]);
    assert.deepEqual(summary(pagemapScan(mem, { anyOf: ["HUGE", "SWAPPED"] })), []);
  },
});

Deno.test({
  name: "max_pages: the walk stops after that many pages, walkEnd says where, and scanning from there resumes",
  ignore: needsPagemapScan(),
  fn: () => {
    using mem = Region.map(16 * PAGE);
    for (const p of [1, 3, 5, 7, 9]) mem.bytes[p * PAGE] = 1;
    const first = pagemapScan(mem, { require: ["PRESENT"], maxPages: 3 });
    assert.deepEqual(first.map((r) => r.firstPage), [1, 3, 5]);
    // The kernel stops at the next matching page it could not report (page 7 here): any
    // point after the last reported page and up to the next unreported one resumes correctly.
    const at = (p: number) => mem.address + BigInt(p * PAGE);
    assert.ok(
      first.walkEnd >= at(6) && first.walkEnd <= at(7),
      `walkEnd at page ${(first.walkEnd - mem.address) / BigInt(PAGE)}`,
    );
    const end = mem.address + BigInt(16 * PAGE);
    const rest = pagemapScan({ address: first.walkEnd, length: end - first.walkEnd }, { require: ["PRESENT"] });
    assert.deepEqual(rest.map((r) => r.start), [7, 9].map((p) => mem.address + BigInt(p * PAGE)));
    // max_pages splits a region in the middle.
    mem.bytes.fill(1, 0, 10 * PAGE);
    const split = pagemapScan(mem, { require: ["PRESENT"], maxPages: 4 });
    assert.deepEqual(summary(split), [[0, 4, "PRESENT"]]);
    assert.equal(split.walkEnd, at(4), "inside a region the walk ends right after the last page");
    assert.throws(() => pagemapScan(mem, { maxPages: -1 }), /maxPages must be a non-negative integer/);
  },
});

Deno.test({
  name: "a full output vector: the walk resumes from walk_end and the answer is the same as with a big vector",
  ignore: needsPagemapScan(),
  fn: () => {
    using mem = Region.map(512 * PAGE);
    for (let p = 0; p < 512; p += 2) mem.bytes[p * PAGE] = 1;
    mem.bytes.fill(1, 300 * PAGE, 310 * PAGE); // one run of 10 pages
    const big = pagemapScan(mem, { require: ["PRESENT"] });
    assert.equal(big.calls, 1);
    const small = pagemapScan(mem, { require: ["PRESENT"], vectorLength: 1 });
    assert.ok(small.calls >= big.length, `${small.calls} ioctls for ${big.length} regions`);
    assert.deepEqual(summary(small), summary(big));
    assert.equal(big.find((r) => r.firstPage === 300)?.pages, 11, "pages 300..310 form one region");
    // The same PagemapScanner (and its vector) serves any number of scans.
    using scanner = new PagemapScanner({ vectorLength: 3 });
    const query = prepareQuery({ require: ["PRESENT"] });
    for (let i = 0; i < 3; i++) assert.deepEqual(summary(scanner.scan(mem, query)), summary(big));
    let pages = 0;
    const visited = scanner.visit(mem, query, (_first, count, categories) => {
      pages += count;
      assert.equal(categories, 0x8);
    });
    assert.equal(visited.regions, big.length);
    assert.equal(visited.pages, pages);
    assert.equal(pages, 256 + 5);
    assert.throws(() => new PagemapScanner({ vectorLength: 0 }), /vectorLength must be an integer/);
  },
});

Deno.test({
  name: "thousands of regions: no region reported twice whatever the vector length (the kernel's stale walk_end)",
  ignore: needsPagemapScan(),
  fn: () => {
    const pages = 6000;
    using mem = Region.map(pages * PAGE);
    for (let p = 0; p < pages; p += 2) mem.bytes[p * PAGE] = 1;
    for (const vectorLength of [1, 511, 512, 1024, 2999, 3000, 3001, 8192]) {
      const regions = pagemapScan(mem, { require: ["PRESENT"], vectorLength });
      assert.equal(regions.length, pages / 2, `vectorLength ${vectorLength}`);
      assert.ok(regions.every((r, i) => r.firstPage === 2 * i && r.pages === 1), `vectorLength ${vectorLength}`);
      assert.equal(regions.walkEnd, mem.address + BigInt(pages * PAGE));
    }
    assert.equal(pagemapScan(mem, { require: ["PRESENT"], vectorLength: 8192 }).calls, 1);
  },
});

Deno.test({
  name: "PM_SCAN_WP_MATCHING: one walk reports the written pages and protects them again",
  ignore: needs(Feature.WP_ASYNC) || needsPagemapScan(),
  fn: () => {
    using mem = Region.map(32 * PAGE);
    using uffd = Userfaultfd.open({ require: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED] });
    uffd.register(mem, { wp: true });
    uffd.writeProtect(mem);
    assert.deepEqual(pagemapScan(mem, { require: ["WRITTEN"] }), []);
    for (const p of [4, 5, 20]) mem.bytes[p * PAGE] = 1;
    const query = { require: ["WRITTEN"] as Category[], writeProtect: true };
    assert.deepEqual(summary(pagemapScan(mem, query)), [[4, 2, "WRITTEN"], [20, 1, "WRITTEN"]]);
    assert.deepEqual(pagemapScan(mem, query), [], "protected again by the same walk");
    assert.deepEqual(readPagemap(mem.pages(4, 2)).map((e) => e.uffdWp), [true, true]);
    mem.bytes[5 * PAGE] = 2;
    assert.deepEqual(summary(pagemapScan(mem, query)), [[5, 1, "WRITTEN"]]);
    // Every page of the range may be write-protected by the walk: WPALLOWED says so.
    assert.deepEqual(summary(pagemapScan(mem, { require: ["WPALLOWED"], report: ["WPALLOWED"] })), [
      [0, 32, "WPALLOWED"],
    ]);
  },
});

Deno.test({
  name: "PM_SCAN_CHECK_WPASYNC: EPERM where async write-protect is not set up; without it the range is skipped",
  ignore: needsPagemapScan(),
  fn: () => {
    using mem = Region.map(4 * PAGE);
    mem.bytes.fill(1);
    // Not registered: every resident page reads as written (no uffd-wp bit) ...
    assert.deepEqual(summary(pagemapScan(mem, { require: ["WRITTEN"] })), [[0, 4, "WRITTEN"]]);
    // ... but WP_MATCHING silently skips the mapping,
    assert.deepEqual(pagemapScan(mem, { require: ["WRITTEN"], writeProtect: true }), []);
    assert.deepEqual(readPagemap(mem).map((e) => e.uffdWp), [false, false, false, false], "nothing was protected");
    // and CHECK_WPASYNC turns that into an error.
    const e = assertUffdError(
      () => pagemapScan(mem, { require: ["WRITTEN"], writeProtect: true, checkWpAsync: true }),
      "EPERM",
      /PAGEMAP_SCAN .*checkWpAsync: part of the range is not registered \{ wp: true \} on a userfaultfd with WP_ASYNC/,
    );
    assert.equal(e.beforeSyscall, false);
  },
});

Deno.test({
  name: "categories: accepted ones probed once; SOFT_DIRTY refused where soft-dirty is compiled out; unknown names",
  ignore: needsPagemapScan(),
  fn: () => {
    const accepted = acceptedCategories();
    assert.ok(accepted.includes("WRITTEN") && accepted.includes("PRESENT"));
    assert.ok(accepted.every((c) => CATEGORIES.some((k) => k.name === c)));
    assert.deepEqual(acceptedCategories(), accepted);
    using mem = Region.map(PAGE);
    if (!softDirtySupported()) {
      // This kernel accepts the category (EINVAL would be a refusal) but never sets it.
      for (const query of [{ require: ["SOFT_DIRTY"] }, { invert: ["SOFT_DIRTY"] }, { report: ["SOFT_DIRTY"] }]) {
        assertUffdError(
          () => pagemapScan(mem, query as { require: Category[] }),
          "EOPNOTSUPP",
          /SOFT_DIRTY is accepted by this kernel but never set: it was built without CONFIG_MEM_SOFT_DIRTY/,
        );
      }
      assert.ok(!pagemapScan(mem).some((r) => r.names.includes("SOFT_DIRTY")), "not in the default report");
    }
    assert.throws(() => pagemapScan(mem, { require: ["DIRTY" as Category] }), TypeError);
    assert.throws(() => pagemapScan(mem, { require: "WRITTEN" as unknown as Category[] }), TypeError);
    assertUffdError(() => pagemapScan({ address: mem.address + 1n, length: PAGE }), "EINVAL", /page-aligned/);
    // Above 2^53 (the vsyscall page) the scan still reaches the kernel, which refuses it.
    assertUffdError(() => pagemapScan({ address: 0xffffffffff600000n, length: PAGE }), "EFAULT", /PAGEMAP_SCAN/);
  },
});

// ---------------------------------------------------------------------------
// Another process

interface Child {
  pid: number;
  address: bigint;
  process: Deno.ChildProcess;
  stdin: WritableStreamDefaultWriter<Uint8Array>;
}

async function startChild(): Promise<Child> {
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-lock", new URL("./fixtures/resident_child.ts", import.meta.url).pathname],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = process.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await within(reader.read(), 20_000, "the child's first line");
    if (done) throw new Error(`the child exited before printing: ${text}`);
    text += value;
  }
  reader.releaseLock();
  const { pid, address } = JSON.parse(text.split("\n")[0]!);
  return { pid, address: BigInt(address), process, stdin: process.stdin.getWriter() };
}

Deno.test({
  name: "pagemapScan on another process reports its resident ranges; a pid that has exited is ESRCH",
  ignore: needsPagemapScan(),
  fn: async () => {
    const child = await startChild();
    try {
      const range = { address: child.address, length: 16 * PAGE };
      assert.deepEqual(summary(pagemapScan(range, { pid: child.pid, require: ["PRESENT"] })), [
        [1, 1, "PRESENT"],
        [3, 2, "PRESENT"],
        [9, 1, "PRESENT"],
      ]);
      using scanner = new PagemapScanner({ pid: child.pid });
      assert.equal(scanner.scan(range, { require: ["PRESENT"] }).length, 3);
      const entries = readPagemap(range, { pid: child.pid });
      assert.deepEqual(entries.map((e) => e.present).map((p, i) => p ? i : -1).filter((i) => i >= 0), [1, 3, 4, 9]);
    } finally {
      await child.stdin.close();
      await child.process.status;
    }
    // The child is gone (and reaped): its pid names no process.
    assertUffdError(
      () => pagemapScan({ address: child.address, length: PAGE }, { pid: child.pid }),
      "ESRCH",
      new RegExp(`no process ${child.pid} — it does not exist or has exited`),
    );
    assertUffdError(() => pagemapScan({ address: 0x10000n, length: PAGE }, { pid: -5 }), "ESRCH", /positive integer/);
  },
});

Deno.test({
  name: "pagemapScan without permission to read the other process fails with EACCES and says why",
  ignore: needsPagemapScan() ||
    skipUnless(isRoot || Deno.uid() !== 0, "needs root (to run a scanner as nobody) or a non-root user"),
  fn: async () => {
    if (!isRoot) {
      // Not root: init (pid 1) belongs to root and may not be read.
      assertUffdError(
        () => pagemapScan({ address: 0x10000n, length: PAGE }, { pid: 1 }),
        "EACCES",
        /no permission to read another process's pagemap/,
      );
      return;
    }
    // Root: run the scanner as nobody (setpriv drops every privilege) against this process.
    const setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => {
      try {
        return Deno.statSync(p).isFile;
      } catch {
        return false;
      }
    });
    if (setpriv === undefined) {
      console.log("%cskip: setpriv is not installed; cannot drop to nobody", "color: yellow");
      return;
    }
    const home = Deno.makeTempDirSync({ prefix: "uffd-nobody-" });
    try {
      Deno.chownSync(home, 65534, 65534);
      const out = await new Deno.Command(setpriv, {
        args: [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          Deno.execPath(),
          "run",
          "-A",
          "--no-lock",
          new URL("./fixtures/scan_pid.ts", import.meta.url).pathname,
          String(Deno.pid),
        ],
        env: { DENO_DIR: home, HOME: home, NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout).trim();
      assert.ok(text.length > 0, `the scanner printed nothing: ${new TextDecoder().decode(out.stderr)}`);
      const result = JSON.parse(text.split("\n").at(-1)!);
      assert.equal(result.uid, 65534, "the scanner ran as nobody");
      assert.equal(result.ok, false);
      assert.equal(result.code, "EACCES");
      assert.match(result.message, /no permission to read another process's pagemap: it takes ptrace read access/);
    } finally {
      Deno.removeSync(home, { recursive: true });
    }
  },
});

// ---------------------------------------------------------------------------
// readPagemap

Deno.test("readPagemap decodes present, exclusive, file, uffd-wp and PFN bits; readPagemapRaw reuses its array", () => {
  using mem = Region.map(4 * PAGE);
  mem.bytes[0] = 1;
  void mem.bytes[3 * PAGE]; // only read: the zero page, or a page of its own where read faults allocate
  const zeroMapped = mapZeroPages(mem.pages(2, 1));
  const [written, untouched, zero, read] = readPagemap(mem);
  assert.equal(read!.present, true);
  assert.equal(
    read!.exclusive,
    !readFaultMapsZeroPage,
    "a page only read is exclusive exactly where read faults allocate",
  );
  assert.equal(written!.present, true);
  assert.equal(written!.exclusive, true);
  assert.equal(written!.file, false);
  // A new mapping is soft-dirty as a whole (VM_SOFTDIRTY) where soft-dirty works; the bit never shows elsewhere.
  assert.equal(written!.softDirty, kernelProfile().softDirty.works);
  assert.equal(untouched!.present, false);
  assert.equal(untouched!.pfn, undefined);
  if (zeroMapped) {
    assert.equal(zero!.present, true);
    assert.equal(zero!.exclusive, false, "the shared zero page is not exclusive");
  }
  if (isRoot) assert.ok(written!.pfn !== undefined && written!.pfn > 0n, "PFNs are visible to root");
  using shm = Region.map(PAGE, { memfd: true });
  shm.bytes[0] = 1;
  assert.equal(readPagemap(shm)[0]!.file, true, "memfd pages are file pages");
  const into = new BigUint64Array(8);
  assert.equal(readPagemapRaw(mem, { into }), into);
  assert.equal(into[0], written!.raw);
  assert.throws(() => readPagemapRaw(mem, { into: new BigUint64Array(2) }), /into holds 2 entries; the range has 4/);
});

Deno.test("Workers that scan their pagemap and end leave no /proc/self/pagemap fd behind", async () => {
  const pagemapFds = () =>
    [...Deno.readDirSync("/proc/self/fd")].filter((e) => {
      try {
        return Deno.readLinkSync(`/proc/self/fd/${e.name}`).endsWith("/pagemap");
      } catch {
        return false;
      }
    }).length;
  const before = pagemapFds();
  for (let i = 0; i < 5; i++) {
    const worker = new Worker(new URL("./workers/pagemap_user.ts", import.meta.url), { type: "module" });
    try {
      const reply = await new Promise<{ ok: boolean; regions: number }>((resolve) => {
        worker.onmessage = (e) => resolve(e.data);
        worker.postMessage(null);
      });
      assert.equal(reply.regions, 1);
    } finally {
      worker.terminate();
    }
  }
  assert.equal(pagemapFds(), before, "each Worker closed the pagemap fds it opened");
});
