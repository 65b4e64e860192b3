/**
 * The write-protect semantics matrix on the real kernel: the library
 * (`measureWpSemantics`, `measureWpCell`) in this process, and `uffd semantics`
 * as a user runs it. Only the cells whose behaviour the kernel documents are
 * asserted; the rest are measured and printed.
 */

import assert from "node:assert/strict";
import {
  type Feature,
  kernelProfile,
  losesWrite,
  measureWpCell,
  measureWpSemantics,
  readPagemap,
  Region,
  Userfaultfd,
  WP_MEMORY_KINDS,
  WP_MODES,
  WP_SCENARIOS,
  type WpCell,
} from "../mod.ts";
import { fdCount, needs } from "./helpers.ts";
import { hasPagemapScan } from "../kernel/pagemap_scan.ts";
import { runCli } from "./cli_run.ts";

const support = Userfaultfd.supported();
const has = (...features: Feature[]) => features.every((f) => support.features.has(f));
const ASYNC_MODES = WP_MODES.filter((m) => m.async).map((m) => m.id);
const SYNC_MODES = WP_MODES.filter((m) => !m.async).map((m) => m.id);

/**
 * Whether this kernel keeps the uffd-wp bit of a protected page that `mremap` moves into a fresh, unregistered
 * mapping, even after the page is written there: Debian's 6.1.0-50 does (the pagemap then reports that write as
 * never made), 6.18 clears it with the move. Probed here on its own (one page, written from this thread: the moved
 * page's new mapping is not registered, so the write cannot fault), so that the matrix's mremap-moved cells are held
 * to what the probe predicts.
 */
function wpBitSurvivesMove(memory: "anon" | "shmem"): boolean {
  const PAGE = Region.pageSize;
  using mem = Region.map(PAGE, { memfd: memory === "shmem" });
  mem.bytes[0] = 1;
  // SIGBUS, not a sleeping fault: were the new mapping registered after all, the write would crash, not hang.
  using uffd = Userfaultfd.open({ features: ["SIGBUS"] });
  uffd.register(mem, { wp: true });
  uffd.writeProtect(mem);
  using destination = Region.map(PAGE);
  const moved = mem.movePages(mem.pages(0), destination.address);
  destination.bytes[0] = 2;
  return readPagemap({ address: moved, length: PAGE })[0]!.uffdWp;
}
const SURVIVES_MOVE = kernelProfile().pagemap.uffdWpBit === true && has("PAGEFAULT_FLAG_WP")
  ? { anon: wpBitSurvivesMove("anon"), shmem: wpBitSurvivesMove("shmem") }
  : { anon: false, shmem: false };
if (SURVIVES_MOVE.anon || SURVIVES_MOVE.shmem) {
  console.log(
    `this kernel keeps the uffd-wp bit of a page mremap moved and then written: ${JSON.stringify(SURVIVES_MOVE)}`,
  );
}

/**
 * Asserts what the kernel documents about the matrix:
 * - a page written before protection faults in every sync mode;
 * - anonymous memory: a never-touched page does not fault without WP_UNPOPULATED, and does with it
 *   ("handle anonymous memory the same way as file memory"); shmem protects never-touched pages always;
 * - a page unprotected again never faults;
 * - async modes: no fault reaches user space, a freshly protected page is not WRITTEN, and a never-touched
 *   page is protected too (WP_ASYNC implies WP_UNPOPULATED);
 * - a page just written is always reported WRITTEN (PAGEMAP_SCAN, or the pagemap's uffd-wp bit, loses no write).
 */
function assertDocumented(
  cells: readonly WpCell[],
  survivesMove: { anon: boolean; shmem: boolean } = SURVIVES_MOVE,
): void {
  const cell = (memory: string, scenario: string, mode: string) => {
    const c = cells.find((c) => c.memory === memory && c.scenario === scenario && c.mode === mode);
    assert.ok(c, `${memory}/${scenario}/${mode} is present`);
    return c;
  };
  const ok = (c: WpCell) => c.status === "ok";
  for (const memory of ["anon", "shmem"]) {
    for (const mode of SYNC_MODES) {
      const populated = cell(memory, "populated", mode);
      if (ok(populated)) assert.equal(populated.faulted, true, `${memory} populated faults in ${mode}`);
      const unprotected = cell(memory, "unprotected", mode);
      if (ok(unprotected)) assert.equal(unprotected.faulted, false, `${memory} unprotected never faults (${mode})`);
    }
    for (const mode of ASYNC_MODES) {
      for (const scenario of ["populated", "unpopulated"]) {
        const c = cell(memory, scenario, mode);
        if (!ok(c)) continue;
        assert.equal(c.writtenBefore, false, `${memory}/${scenario}/${mode}: protected, so not written before`);
        assert.equal(c.writtenAfter, true, `${memory}/${scenario}/${mode}: written after`);
      }
    }
    const unpopulated = cell(memory, "unpopulated", "sync+unpopulated");
    if (ok(unpopulated)) assert.equal(unpopulated.faulted, true, `${memory} unpopulated faults with WP_UNPOPULATED`);
  }
  const anonSync = cell("anon", "unpopulated", "sync");
  if (ok(anonSync)) assert.equal(anonSync.faulted, false, "anon: a never-touched page is not protected in sync");
  const shmemSync = cell("shmem", "unpopulated", "sync");
  if (ok(shmemSync)) assert.equal(shmemSync.faulted, true, "shmem: never-touched pages are protected (file memory)");
  for (const c of cells.filter(ok)) {
    const async = ASYNC_MODES.includes(c.mode);
    if (async) assert.equal(c.faulted, null, `${c.memory}/${c.scenario}/${c.mode}: no fault reaches user space`);
    else assert.equal(typeof c.faulted, "boolean");
    // Except a page mremap moved, on a kernel that keeps its uffd-wp bit through the move and the write (probed).
    const stale = !async && c.scenario === "mremap-moved" && survivesMove[c.memory as "anon" | "shmem"] === true;
    assert.equal(
      c.writtenAfter,
      !stale,
      `${c.memory}/${c.scenario}/${c.mode}: a page just written reads ${stale ? "not WRITTEN (the probe)" : "WRITTEN"}`,
    );
    assert.equal(losesWrite(c), async ? false : !c.faulted);
  }
}

/** Where "written" comes from here: PAGEMAP_SCAN (6.7), else the pagemap's uffd-wp bit (5.17). */
const expectedSource = hasPagemapScan()
  ? "PAGEMAP_SCAN"
  : kernelProfile().pagemap.uffdWpBit === true
  ? "pagemap"
  : null;

/** The modes this kernel can run; the others must say why they cannot. */
function expectedStatus(mode: string): "ok" | "unsupported" {
  const features = WP_MODES.find((m) => m.id === mode)!.features;
  return has("PAGEFAULT_FLAG_WP", ...features) ? "ok" : "unsupported";
}

Deno.test({
  name: "measureWpSemantics: every cell of 2 x 8 x 4, the documented ones as documented, nothing left behind",
  ignore: needs("PAGEFAULT_FLAG_WP"),
  async fn() {
    const fds = fdCount();
    const seen: number[] = [];
    const matrix = await measureWpSemantics({ onCell: (_c, done) => seen.push(done) });
    assert.equal(matrix.cells.length, 64);
    assert.deepEqual(seen, Array.from({ length: 64 }, (_, i) => i + 1));
    for (const memory of WP_MEMORY_KINDS) {
      for (const scenario of WP_SCENARIOS) {
        for (const mode of WP_MODES) {
          const c = matrix.cells.find((c) =>
            c.memory === memory.id && c.scenario === scenario.id && c.mode === mode.id
          );
          assert.ok(c, `${memory.id}/${scenario.id}/${mode.id}`);
          assert.equal(c.status, expectedStatus(mode.id), `${memory.id}/${scenario.id}/${mode.id}: ${c.error}`);
        }
      }
    }
    assertDocumented(matrix.cells);
    assert.equal(matrix.writtenFrom, expectedSource);
    assert.deepEqual(
      matrix.lostWrites.map((l) => `${l.memory}/${l.scenario}/${l.mode}`),
      matrix.cells.filter((c) => losesWrite(c) === true).map((c) => `${c.memory}/${c.scenario}/${c.mode}`),
    );
    assert.equal(fdCount(), fds, "every userfaultfd and memfd closed");
    // (The JS heap grows while measuring, so a count of mappings proves nothing; the memfd ones are named.)
    assert.doesNotMatch(Deno.readTextFileSync("/proc/self/maps"), /memfd:uffd-semantics/, "memfd mappings released");
  },
});

Deno.test({
  name: "a mode whose feature is missing says so in every cell (forced by declining WP_ASYNC)",
  ignore: needs("PAGEFAULT_FLAG_WP"),
  async fn() {
    const matrix = await measureWpSemantics({ memory: ["anon"], scenarios: ["populated"], decline: ["WP_ASYNC"] });
    assert.equal(matrix.cells.length, 4);
    for (const c of matrix.cells) {
      if (ASYNC_MODES.includes(c.mode)) {
        assert.equal(c.status, "unsupported");
        assert.match(c.error!, /WP_ASYNC \(Linux 6\.7\+\), declined by the caller/);
        assert.equal(c.faulted, null);
        assert.equal(c.writtenBefore, null);
        assert.equal(losesWrite(c), null, "an unmeasured cell neither loses nor keeps a write");
      } else assert.equal(c.status, expectedStatus(c.mode));
    }
  },
});

Deno.test({
  name: "measureWpCell: a sync fault is seen and resolved, and the written byte lands",
  ignore: needs("PAGEFAULT_FLAG_WP"),
  async fn() {
    const zeropage = await measureWpCell("anon", "zeropage", "sync");
    assert.equal(zeropage.status, "ok", zeropage.error);
    assert.equal(zeropage.faulted, true, "the zero page is a present pte: protected like any other");
    const moved = await measureWpCell("shmem", "mremap-moved", "sync");
    assert.equal(moved.status, "ok", moved.error);
    assert.equal(typeof moved.faulted, "boolean");
    await assert.rejects(() => measureWpCell("anon", "nope" as "populated", "sync"), TypeError);
  },
});

Deno.test({
  name: "uffd semantics --json: 64 cells, the documented ones as documented, the lost writes listed",
  ignore: needs("PAGEFAULT_FLAG_WP"),
  async fn() {
    const { code, stdout, stderr } = await runCli(["semantics", "--json"]);
    assert.equal(code, 0, stderr);
    const matrix = JSON.parse(stdout);
    assert.equal(matrix.kernel, Deno.osRelease());
    assert.equal(matrix.cells.length, 64);
    for (const c of matrix.cells) {
      for (const key of ["memory", "scenario", "mode", "faulted", "writtenBefore", "writtenAfter"]) {
        assert.ok(key in c, `${key} in every cell`);
      }
      assert.equal(c.status, expectedStatus(c.mode), `${c.memory}/${c.scenario}/${c.mode}: ${c.error}`);
    }
    assertDocumented(matrix.cells);
    assert.ok(Array.isArray(matrix.lostWrites));
  },
});

Deno.test({
  name: "uffd semantics: one table per memory kind, the lost writes in words under each, a legend",
  ignore: needs("PAGEFAULT_FLAG_WP"),
  async fn() {
    const { code, stdout } = await runCli(["semantics"]);
    assert.equal(code, 0);
    const header = /^scenario\s+sync\s+sync\+unpopulated\s+async\s+async\+unpopulated$/gm;
    assert.equal(stdout.match(header)?.length, 2, "two tables");
    for (const scenario of WP_SCENARIOS) {
      assert.equal(stdout.match(new RegExp(`^${scenario.id}\\s+\\S`, "gm"))?.length, 2, scenario.id);
    }
    const anonLine = /^lost writes \(anon\) — sync: (.*?); sync\+unpopulated/m.exec(stdout);
    assert.ok(anonLine, "the anon table says which cells lose a write");
    assert.match(anonLine[1]!, /^unpopulated\b/, "anon sync loses writes to never-touched pages");
    assert.match(stdout, /^lost writes \(shmem\) — /m);
    assert.match(stdout, /^legend/m);
  },
});

const FIXTURES = ["semantics-6.1.json", "semantics-6.18.json"].map((f) => new URL(`../docs/${f}`, import.meta.url));

Deno.test("the matrices kept in docs/ are whole: 64 cells each, the documented ones as documented", () => {
  for (const url of FIXTURES) {
    const matrix = JSON.parse(Deno.readTextFileSync(url));
    assert.equal(matrix.cells.length, 64, url.pathname);
    assert.ok(matrix.cells.every((c: WpCell) => c.status !== "failed"), `${url.pathname}: no cell failed`);
    // Measured on kernels that clear the uffd-wp bit of a moved page (6.1.0-57 and 6.18), not on this one.
    assertDocumented(matrix.cells, { anon: false, shmem: false });
  }
});

Deno.test({
  name: "uffd semantics --compare: two kernels side by side, the differing cells marked and counted",
  ignore: needs("PAGEFAULT_FLAG_WP"),
  async fn() {
    const [old, recent] = FIXTURES.map((u) => u.pathname);
    // Two saved matrices, nothing measured: 6.1 has neither WP_ASYNC nor WP_UNPOPULATED.
    const json = await runCli(["semantics", "--from", old!, "--compare", recent!, "--json"]);
    assert.equal(json.code, 0, json.stderr);
    const c = JSON.parse(json.stdout);
    assert.equal(c.a.kernel, JSON.parse(Deno.readTextFileSync(old!)).kernel);
    assert.equal(c.cells.length, 64);
    assert.equal(c.differing, c.cells.filter((x: { differs: boolean }) => x.differs).length);
    const cell = (memory: string, scenario: string, mode: string) =>
      c.cells.find((x: WpCell) => x.memory === memory && x.scenario === scenario && x.mode === mode);
    assert.equal(cell("anon", "unpopulated", "async").differs, true, "n/a on 6.1, measured on 6.18");
    assert.equal(cell("anon", "populated", "sync").differs, false, "a fault on both");
    const text = await runCli(["semantics", "--from", old!, "--compare", recent!]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, new RegExp(`${c.differing} of 64 cells differ`));
    const marked = text.stdout.split("\n").filter((l) => /≠\s*$/.test(l)).length;
    assert.equal(marked, c.differing, "one ≠ per differing row");
    // This kernel beside a saved one: measured here, compared there.
    const live = await runCli(["semantics", "--compare", recent!, "--json"]);
    assert.equal(live.code, 0, live.stderr);
    assert.equal(JSON.parse(live.stdout).a.kernel, Deno.osRelease());
    const bad = await runCli(["semantics", "--compare", new URL(import.meta.url).pathname]);
    assert.equal(bad.code, 2, "a file that is not a matrix is a usage error");
  },
});
