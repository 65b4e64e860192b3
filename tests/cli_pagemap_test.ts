/**
 * `uffd pagemap` against regions this test maps and populates in its own process
 * (the CLI runs as a subprocess and reads this process's pagemap), against
 * itself, a process that does not exist, and a process it may not read.
 */

import assert from "node:assert/strict";
import { PROT_READ, readMaps, Region } from "../mod.ts";
import { pagemapReport, parseRange, residencyBar } from "../cli/_pagemap.ts";
import { kernelProfile, overrideKernelProfile } from "../kernel/profile.ts";
import { isRoot, readFaultMapsZeroPage, skipUnless } from "./helpers.ts";
import { hasStackTrace, onPath, runCli } from "./cli_run.ts";

const PAGE = Region.pageSize;
const hex = (n: bigint) => `0x${n.toString(16)}`;

interface Vma {
  start: string;
  end: string;
  path: string;
  pages: number;
  present: number;
  swapped: number;
  file: number;
  zero: number;
  huge: number;
  residency: number[];
  error?: string;
}

type Report = { pid: number; totals: Record<string, number>; vmas: Vma[]; source: string };

/**
 * The CLI's report on a range of this process; where the kernel has PAGEMAP_SCAN, also the report counted from
 * `/proc/<pid>/pagemap` (forced, in this process: what a kernel before 6.7 gets), which must say the same.
 */
async function pagemapOf(range: { address: bigint; length: number }): Promise<Report> {
  const spec = `${hex(range.address)}-${hex(range.address + BigInt(range.length))}`;
  const { code, stdout, stderr } = await runCli(["pagemap", String(Deno.pid), "--range", spec, "--json"]);
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stdout) as Report;
  assert.equal(report.source, kernelProfile().pageBits === "pagemap-scan" ? "PAGEMAP_SCAN" : "pagemap");
  if (report.source === "PAGEMAP_SCAN") {
    overrideKernelProfile({ pageBits: "pagemap" });
    try {
      const file = pagemapReport(Deno.pid, { start: range.address, end: range.address + BigInt(range.length) });
      assert.equal(file.source, "pagemap");
      assert.deepEqual(file.vmas, report.vmas, "the pagemap file counts what PAGEMAP_SCAN counts");
    } finally {
      overrideKernelProfile(undefined);
    }
  }
  return report;
}

Deno.test({
  name: "pagemap --range on this process counts exactly the pages this test populated",
  async fn() {
    using mem = Region.map(64 * PAGE);
    for (const p of [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 40, 41, 42, 43]) mem.bytes[p * PAGE + 7] = 1;
    assert.equal(mem.bytes[20 * PAGE], 0); // a read: page 20 maps the shared zero page, or one of its own
    const report = await pagemapOf(mem);
    assert.equal(report.pid, Deno.pid);
    assert.equal(report.vmas.length, 1, "the range lies in one mapping");
    const [vma] = report.vmas;
    assert.equal(vma!.start, hex(mem.address));
    assert.equal(vma!.pages, 64);
    assert.equal(vma!.present, 15, "14 written pages and the page read");
    // The kernel profile measured it through /proc/self/pagemap; the CLI asks PAGEMAP_SCAN where there is one.
    assert.equal(vma!.zero, readFaultMapsZeroPage ? 1 : 0, "the page read is the zero page where read faults map it");
    assert.equal(vma!.file, 0);
    assert.equal(vma!.swapped, 0);
    assert.equal(vma!.huge, 0);
    // 64 pages over 32 cells: 2 pages per cell.
    const expected = new Array(32).fill(0);
    for (const cell of [0, 1, 2, 3, 4, 20, 21]) expected[cell] = 1;
    expected[10] = 0.5;
    assert.deepEqual(vma!.residency, expected);
    assert.equal(residencyBar(vma!.residency), "█████·····▒·········██··········");
    assert.equal(report.totals.present, 15);
  },
});

Deno.test({
  name: "pagemap counts memfd pages as file pages",
  async fn() {
    using shm = Region.map(8 * PAGE, { memfd: true, name: "uffd-pagemap-test" });
    shm.bytes.fill(1, 0, 3 * PAGE);
    const report = await pagemapOf(shm);
    const [vma] = report.vmas;
    assert.match(vma!.path, /memfd:uffd-pagemap-test/);
    assert.equal(vma!.pages, 8);
    assert.equal(vma!.present, 3);
    assert.equal(vma!.file, 3, "shmem pages are not anonymous");
    assert.deepEqual(vma!.residency, [1, 1, 1, 0, 0, 0, 0, 0], "one cell per page when there are few");
  },
});

Deno.test({
  name: "pagemap --range across two mappings clips both to the range",
  async fn() {
    using mem = Region.map(8 * PAGE);
    mem.bytes.fill(1);
    mem.protect(PROT_READ, mem.pages(4, 4)); // two mappings now: rw-p, then r--p
    const report = await pagemapOf({ address: mem.pageAddress(2), length: 4 * PAGE });
    assert.deepEqual(
      report.vmas.map((v) => [v.start, v.end, v.pages, v.present]),
      [
        [hex(mem.pageAddress(2)), hex(mem.pageAddress(4)), 2, 2],
        [hex(mem.pageAddress(4)), hex(mem.pageAddress(6)), 2, 2],
      ],
    );
    assert.deepEqual(report.vmas.map((v) => (v as Vma & { perms: string }).perms), ["rw-p", "r--p"]);
  },
});

Deno.test({
  name: "pagemap self: every mapping gets a line; one PAGEMAP_SCAN refuses is marked unreadable, not fatal",
  async fn() {
    const { code, stdout, stderr } = await runCli(["pagemap", "self", "--json"]);
    assert.equal(code, 0, stderr);
    const report = JSON.parse(stdout) as { totals: Record<string, number>; vmas: Vma[] };
    assert.ok(report.vmas.length > 10);
    assert.ok(report.totals.present > 0);
    assert.ok(report.totals.file > 0, "the deno binary and libc are file pages");
    const heap = report.vmas.find((v) => v.path === "[heap]");
    assert.ok(heap && heap.present > 0 && heap.error === undefined);
    const vsyscall = report.vmas.find((v) => v.path === "[vsyscall]");
    if (readMaps().some((m) => m.path === "[vsyscall]")) {
      assert.ok(vsyscall, "[vsyscall] is listed");
      assert.match(
        vsyscall.error ?? "",
        /^EFAULT/,
        "outside the user address space: PAGEMAP_SCAN (or pagemap) refuses it",
      );
      assert.equal(report.totals.unreadable, 1);
    }
    const text = await runCli(["pagemap", "self"]);
    assert.equal(text.code, 0);
    assert.match(text.stdout, /^pid \d+ \(deno\): \d+ mappings/);
    if (vsyscall) assert.match(text.stdout, /\[vsyscall\] \(unreadable: EFAULT/);
  },
});

Deno.test("pagemap of a process that does not exist: one clear line, exit 1, no stack trace", async () => {
  const { code, stdout, stderr } = await runCli(["pagemap", "999999999"]);
  assert.ok(code === 1 || code === 3, `exit ${code}`);
  assert.equal(stdout, "");
  assert.equal(stderr.trim().split("\n").length, 1, stderr);
  assert.match(stderr, /no process 999999999/);
  assert.ok(!hasStackTrace(stderr));
});

Deno.test({
  name: "pagemap of a process this user may not read: exit 3 with what to change",
  ignore: skipUnless(isRoot && onPath("setpriv"), "needs root and setpriv to run the CLI as nobody"),
  async fn() {
    const { code, stdout, stderr } = await runCli(["pagemap", String(Deno.pid)], { asNobody: true });
    assert.equal(code, 3, stderr);
    assert.equal(stdout, "");
    assert.equal(stderr.trim().split("\n").length, 1, stderr);
    assert.match(stderr, /permission denied/);
    assert.match(stderr, /root|CAP_SYS_PTRACE/);
    assert.ok(!hasStackTrace(stderr));
  },
});

Deno.test("--range takes hex with or without 0x, as /proc/<pid>/maps prints it, widened to whole pages", () => {
  assert.deepEqual(parseRange("7f0000001000-7f0000003000"), { start: 0x7f0000001000n, end: 0x7f0000003000n });
  assert.deepEqual(parseRange("0x1234-0x2001"), { start: 0x1000n, end: 0x3000n });
  assert.throws(() => parseRange("0x3000-0x3000"), /start must be below the end/);
  assert.throws(() => parseRange("-0x3000"), /bad range/);
});
