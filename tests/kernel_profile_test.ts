/**
 * The kernel profile against measurements of another kind: the profile decides its
 * zero-page traits from `/proc/self/pagemap` (a present page not mapped exclusively
 * is the zero page); these tests check the same facts through the process's memory
 * use (`RssAnon` grows by a page for each page a read allocates, and not for the zero
 * page), `PAGEMAP_SCAN`'s `PFNZERO` and the PFNs themselves — so a wrong probe fails
 * here, on any kernel, whichever way the kernel goes.
 */

import assert from "node:assert/strict";
import {
  isZeroFrame,
  kernelProfile,
  MADV_NOHUGEPAGE,
  MADV_POPULATE_READ,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_NORESERVE,
  MAP_PRIVATE,
  pagemapScan,
  PROT_READ,
  PROT_WRITE,
  readPagemap,
  Region,
  Userfaultfd,
} from "../mod.ts";
import { overrideKernelProfile } from "../kernel/profile.ts";
import * as libc from "../ffi/_libc.ts";
import { assertUffdError, isRoot, needsPagemapScan, skipUnless } from "./helpers.ts";

const PAGE = Region.pageSize;
const PAGES = 4096; // 16 MiB: far above the RSS counters' per-CPU slack
const profile = kernelProfile();

/** `RssAnon` of this process, in bytes. */
function rssAnon(): number {
  const m = /^RssAnon:\s+(\d+) kB/m.exec(Deno.readTextFileSync("/proc/self/status"));
  return Number(m![1]) * 1024;
}

/** How much anonymous memory `fill` made this process use, for a fresh 16 MiB mapping. */
function costOf(fill: (mem: Region) => void): number {
  using mem = Region.map(PAGES * PAGE);
  mem.advise(MADV_NOHUGEPAGE);
  const before = rssAnon();
  fill(mem);
  return rssAnon() - before;
}

/** "allocates" when the fill cost at least half a page per page, "zero-page" when almost nothing. */
function verdict(cost: number): string {
  if (cost > PAGES * PAGE / 2) return "allocates";
  if (cost < PAGES * PAGE / 8) return "zero-page";
  return `unclear (${cost} bytes for ${PAGES} pages)`;
}

/** Reads a byte of every page (summed and checked: an unused load may be optimised away). */
const readAll = (mem: Region) => {
  let sum = 0;
  for (let p = 0; p < PAGES; p++) sum += mem.bytes[p * PAGE]!;
  assert.equal(sum, 0);
};

Deno.test("kernel profile: measured once and cached; every trait has a value", () => {
  assert.equal(kernelProfile(), profile, "the same object on every call");
  assert.equal(profile.pageSize, PAGE);
  assert.equal(profile.release, Deno.osRelease());
  assert.ok(["populate-read", "uffd-zeropage", "populate-allocates", "none"].includes(profile.untouchedFill));
  assert.equal(profile.userfaultfd.available, profile.userfaultfd.featureMask !== null);
});

Deno.test("kernel profile: a read fault maps the zero page exactly when the process's memory use says so", () => {
  assert.equal(verdict(costOf(readAll)), profile.zeroPage.readFault ? "zero-page" : "allocates");
});

Deno.test({
  name: "kernel profile: a read fault against PAGEMAP_SCAN's PFNZERO",
  ignore: needsPagemapScan(),
  fn: () => {
    using mem = Region.map(4 * PAGE);
    void mem.bytes[PAGE];
    const zero = pagemapScan(mem, { require: ["PFNZERO"] });
    assert.deepEqual(zero.map((r) => r.firstPage), profile.zeroPage.readFault ? [1] : []);
  },
});

Deno.test({
  name: "kernel profile: a read fault against the PFNs (two pages read in two mappings share one frame)",
  ignore: skipUnless(isRoot && profile.pagemap.pfnVisible, "PFNs are visible only with CAP_SYS_ADMIN"),
  fn: () => {
    using a = Region.map(PAGE);
    using b = Region.map(PAGE);
    void a.bytes[0];
    void b.bytes[0];
    const [pa, pb] = [readPagemap(a)[0]!.pfn, readPagemap(b)[0]!.pfn];
    assert.ok(pa !== undefined && pb !== undefined);
    assert.equal(pa === pb, profile.zeroPage.readFault, `PFNs ${pa} and ${pb}`);
    if (profile.zeroPage.readFault) assert.equal(pa, profile.zeroPage.zeroPfn);
  },
});

Deno.test({
  name: "kernel profile: a read fault on a huge-page block maps the huge zero page where the profile says, at its PFN",
  ignore: skipUnless(isRoot && profile.pagemap.pfnVisible, "PFNs are visible only with CAP_SYS_ADMIN") ||
    skipUnless(profile.thp !== null && profile.thp.enabled !== "never", "no transparent huge pages here"),
  fn: () => {
    const pmd = profile.thp!.pmdSize ?? 2 << 20;
    using mem = Region.map(2 * pmd, { thp: true });
    const first = Number(((mem.address + BigInt(pmd) - 1n) / BigInt(pmd)) * BigInt(pmd) - mem.address) / PAGE;
    const block = mem.pages(first, pmd / PAGE);
    void mem.bytes[first * PAGE];
    const entries = readPagemap(block);
    const zero = entries.filter((e) => e.present && isZeroFrame(e.pfn ?? -1n, profile.zeroPage, pmd / PAGE)).length;
    if (profile.zeroPage.hugeReadFault === "huge-zero-page") {
      assert.equal(entries[0]!.pfn, profile.zeroPage.hugeZeroPfn);
      assert.equal(zero, pmd / PAGE, "every frame of the huge zero page reads as zero");
    } else {
      assert.equal(profile.zeroPage.hugeZeroPfn, null);
      assert.ok(zero <= 1, `${zero} zero frames without a huge zero page`);
    }
  },
});

Deno.test({
  name: "kernel profile: MADV_POPULATE_READ maps what the profile says",
  ignore: skipUnless(profile.zeroPage.populateRead !== "unsupported", "no MADV_POPULATE_READ (Linux 5.14+)"),
  fn: () => {
    const cost = costOf((mem) => assert.equal(mem.advise(MADV_POPULATE_READ), undefined));
    assert.equal(verdict(cost), profile.zeroPage.populateRead);
  },
});

Deno.test({
  name: "kernel profile: UFFDIO_ZEROPAGE maps what the profile says",
  ignore: skipUnless(profile.zeroPage.uffdZeropage !== "unavailable", "no userfaultfd to measure it"),
  fn: () => {
    const cost = costOf((mem) => {
      using uffd = Userfaultfd.open();
      uffd.register(mem, { missing: true });
      assert.equal(uffd.zeropage(mem), mem.length);
    });
    assert.equal(verdict(cost), profile.zeroPage.uffdZeropage);
  },
});

Deno.test("kernel profile: the way untouched pages are filled follows from the zero-page traits", () => {
  const z = profile.zeroPage;
  const hugeZero = profile.thp?.enabled === "always" && z.hugeReadFault === "huge-zero-page";
  const expected = hugeZero && z.uffdZeropage === "zero-page"
    ? "uffd-zeropage" // the huge zero page would turn into 512 allocated pages on the first write
    : z.populateRead === "zero-page"
    ? "populate-read"
    : z.uffdZeropage === "zero-page"
    ? "uffd-zeropage"
    : z.populateRead === "allocates"
    ? "populate-allocates"
    : "none";
  assert.equal(profile.untouchedFill, expected);
});

Deno.test("kernel profile: a forced fill must do what its name says here; undefined restores the measurement", () => {
  const z = profile.zeroPage;
  const fills = [
    ["populate-read", z.populateRead === "zero-page"],
    ["populate-allocates", z.populateRead === "allocates"],
    ["uffd-zeropage", z.uffdZeropage === "zero-page"],
  ] as const;
  try {
    for (const [fill, works] of fills) {
      if (works) {
        overrideKernelProfile({ untouchedFill: fill });
        assert.equal(kernelProfile().untouchedFill, fill);
        assert.equal(kernelProfile().zeroPage, z, "measurements are not overridden");
      } else assert.throws(() => overrideKernelProfile({ untouchedFill: fill }), /does not work on this kernel/);
    }
  } finally {
    overrideKernelProfile(undefined);
  }
  assert.equal(kernelProfile(), profile);
});

Deno.test({
  name: "kernel profile: the pagemap uffd-wp bit as measured",
  ignore: skipUnless(profile.pagemap.uffdWpBit !== null, "no userfaultfd with write-protect to measure it"),
  fn: () => {
    using mem = Region.map(PAGE, { populate: true });
    using uffd = Userfaultfd.open({ writers: "other-threads" }); // nobody writes it
    uffd.register(mem, { wp: true });
    uffd.writeProtect(mem);
    assert.equal(readPagemap(mem)[0]!.uffdWp, profile.pagemap.uffdWpBit);
  },
});

Deno.test({
  name: "kernel profile: UFFDIO_CONTINUE_MODE_WP as measured (maps the page protected, or EINVAL with a hint)",
  ignore: skipUnless(profile.userfaultfd.continueWp !== null, "no minor faults on shmem to measure it with"),
  fn: () => {
    using backing = Region.map(2 * PAGE, { memfd: true });
    backing.bytes.fill(5);
    using alias = backing.alias();
    using uffd = Userfaultfd.open({ require: ["MINOR_SHMEM", "WP_HUGETLBFS_SHMEM"], writers: "other-threads" });
    uffd.register(alias, { minor: true, wp: true });
    if (profile.userfaultfd.continueWp) {
      assert.equal(uffd.continue(alias.pages(0), { wp: true }), PAGE);
      assert.deepEqual(readPagemap(alias).map((e) => [e.present, e.uffdWp]), [[true, true], [false, false]]);
    } else {
      const e = assertUffdError(() => uffd.continue(alias.pages(0), { wp: true }), "EINVAL", /UFFDIO_CONTINUE/);
      assert.match(e.hint ?? "", /wp mode needs Linux 6\.4/);
    }
    assert.equal(uffd.continue(alias.pages(1)), PAGE, "without wp it is accepted everywhere");
  },
});

/** The `VmFlags` of the mapping that starts at `address` (`/proc/self/smaps`). */
function vmFlags(address: bigint): string[] {
  const smaps = Deno.readTextFileSync("/proc/self/smaps");
  const at = smaps.indexOf(`\n${address.toString(16)}-`);
  assert.ok(at >= 0, "the mapping is in smaps");
  return /\nVmFlags:([^\n]*)/.exec(smaps.slice(at))![1]!.trim().split(/\s+/);
}

Deno.test({
  name: "kernel profile: a THP faulted in through a merged neighbour fills it as measured; a Region is never filled so",
  ignore: skipUnless(profile.thp?.pmdSize != null, "no transparent huge pages"),
  fn: () => {
    const pmd = BigInt(profile.thp!.pmdSize!);
    const flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    // Two plain mappings, the second starting in the middle of a PMD-aligned block: they merge into one.
    const reserve = libc.mmap(0n, 4n * pmd, PROT_READ | PROT_WRITE, flags, -1, 0n);
    assert.ok(reserve > 0n);
    try {
      const block = (reserve + pmd - 1n) / pmd * pmd;
      const boundary = block + pmd / 2n;
      assert.equal(libc.mmap(boundary, pmd, PROT_READ | PROT_WRITE, flags | MAP_FIXED, -1, 0n), boundary);
      new Uint8Array(libc.bufferAt(block, 1))[0] = 1;
      const filled = readPagemap({ address: boundary, length: PAGE })[0]!.present;
      assert.equal(filled, profile.thp!.fillsNeighbours, "the neighbour's first page, never touched");
    } finally {
      libc.munmap(reserve, 4n * pmd);
    }
    // A Region is mapped MADV_NOHUGEPAGE where that happens (so it never merges with a plain neighbour), and
    // with MADV_HUGEPAGE or MADV_NOHUGEPAGE when asked.
    using plain = Region.map(Number(pmd));
    assert.equal(vmFlags(plain.address).includes("nh"), profile.thp!.fillsNeighbours === true);
    using huge = Region.map(Number(pmd), { thp: true });
    assert.ok(vmFlags(huge.address).includes("hg"));
    using none = Region.map(Number(pmd), { thp: false, populate: true });
    assert.ok(vmFlags(none.address).includes("nh"));
    assert.ok(readPagemap(none).every((e) => e.present), "populated after the advice");
  },
});

/** `cc` on the PATH (the host and the kernel runner's guests have it). */
function compilerAvailable(): boolean {
  try {
    return new Deno.Command("cc", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

Deno.test({
  name: "kernel profile: the THP neighbour fill in C, without Deno or the library (tests/fixtures/thp_neighbour.c)",
  ignore: skipUnless(profile.thp?.fillsNeighbours != null, "no transparent huge pages") ||
    skipUnless(compilerAvailable(), "no C compiler (cc) on the PATH"),
  fn: () => {
    const dir = Deno.makeTempDirSync({ prefix: "uffd-thp-" });
    try {
      const source = new URL("./fixtures/thp_neighbour.c", import.meta.url).pathname;
      const binary = `${dir}/thp_neighbour`;
      const cc = new Deno.Command("cc", { args: ["-O2", "-o", binary, source] }).outputSync();
      assert.ok(cc.success, new TextDecoder().decode(cc.stderr));
      const run = (...args: string[]) => {
        const out = new Deno.Command(binary, { args }).outputSync();
        assert.ok(out.success, new TextDecoder().decode(out.stderr));
        return Number(new TextDecoder().decode(out.stdout).split(" ")[0]);
      };
      // The region starts in the middle of a 2 MiB block: the bounce buffer's huge page covers its first half.
      const filled = run("straddle");
      assert.equal(filled > 0, profile.thp!.fillsNeighbours, `${filled} pages present that nothing touched`);
      if (profile.thp!.fillsNeighbours) assert.equal(filled, 256, "the half of the block that lies in the region");
      assert.equal(run("straddle", "nohugepage"), 0, "MADV_NOHUGEPAGE (what Region.map does): nothing");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
