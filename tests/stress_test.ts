/**
 * The stress run with integrity checks (the kernel's uffd-stress idea; see
 * `tests/stress/README.md`), short: a few seconds per memory type, in a child
 * process killed at its deadline. `deno task stress` runs it for minutes.
 *
 * The sabotaged runs break the bounce on purpose — a page zapped without saving it
 * (stale), half saved (torn), served with the zero page (content lost) — and must
 * fail with the page and what was lost: the checks that pass the clean runs can fail.
 */

import assert from "node:assert/strict";
import { Feature, Userfaultfd } from "../mod.ts";
import { DEADLINE_SCALE, isRoot, needs, skipUnless } from "./helpers.ts";
import type { MemType } from "./conformance/helpers.ts";
import { runStressChild } from "./stress/run.ts";
import type { StressOptions, StressReport } from "./stress/bounce.ts";

async function stress(options: Partial<StressOptions>, deadlineMs = 60_000): Promise<StressReport> {
  const child = await runStressChild(options, deadlineMs);
  assert.ok(!child.timedOut, `the stress run hung (killed after ${deadlineMs} ms)\n${child.stderr}`);
  assert.ok(child.report, `no report (exit ${child.code})\n${child.stderr}`);
  return child.report;
}

/**
 * How much a clean run must have done for its checks to mean something: enough increments and faults that a lost,
 * stale or torn page would have been met. The floors are for a real machine; under an emulator
 * (`DEADLINE_SCALE` > 1, the same run going that many times slower) they shrink in proportion.
 */
const floor = (n: number) => Math.ceil(n / DEADLINE_SCALE);

function assertClean(r: StressReport, wpExpected: boolean): void {
  assert.deepEqual(r.failures, [], "no integrity failure");
  assert.equal(r.ok, true);
  assert.equal(r.verified.pages, r.options.pages, "every page checked at the end");
  assert.equal(r.verified.totalInPages, r.verified.sumOfWorkers, "the pages hold every increment made");
  assert.ok(r.increments > floor(1000), `${r.increments} increments`);
  assert.ok(r.perWorker.every((n) => n > 0), `every Worker made progress: ${r.perWorker}`);
  assert.ok(r.missingFaults > floor(100), `${r.missingFaults} missing faults`);
  assert.equal(r.wp, wpExpected);
  if (wpExpected) assert.ok(r.wpFaults > floor(100), `${r.wpFaults} write-protect faults`);
  assert.equal(r.resolved + r.vanished, r.faults, "every fault read was resolved");
  assert.ok(r.removeEvents > 0 && r.removeEvents === r.bouncer.zaps, "one remove event per zap, read by the handler");
  assert.ok(r.racingWrites > 0 && r.racingReads > 0, "unlocked accesses raced with the others");
}

const TYPES: { memory: MemType; seconds: number; pages: number; ignore: boolean }[] = [
  { memory: "anon", seconds: 4, pages: 512, ignore: needs(Feature.EVENT_REMOVE, Feature.PAGEFAULT_FLAG_WP) },
  { memory: "shmem", seconds: 2, pages: 512, ignore: needs(Feature.EVENT_REMOVE, Feature.MISSING_SHMEM) },
  { memory: "shmem-private", seconds: 1.5, pages: 256, ignore: needs(Feature.EVENT_REMOVE, Feature.MISSING_SHMEM) },
  {
    memory: "hugetlb",
    seconds: 2,
    pages: 16,
    ignore: needs(Feature.EVENT_REMOVE, Feature.MISSING_HUGETLBFS) ||
      skipUnless(isRoot, "reserving huge pages needs root"),
  },
  {
    memory: "hugetlb-private",
    seconds: 1.5,
    pages: 8,
    ignore: needs(Feature.EVENT_REMOVE, Feature.MISSING_HUGETLBFS) ||
      skipUnless(isRoot, "reserving huge pages needs root"),
  },
];

for (const { memory, seconds, pages, ignore } of TYPES) {
  Deno.test({
    name:
      `uffd-stress.c bounce on ${memory}: Workers increment counters while pages are zapped, bounced back and re-protected; nothing lost or torn`,
    ignore,
    async fn() {
      const r = await stress({ memory, pages, durationMs: seconds * 1000 });
      const features = Userfaultfd.supported().features;
      const wp = features.has(Feature.PAGEFAULT_FLAG_WP) &&
        (memory === "anon" || features.has(Feature.WP_HUGETLBFS_SHMEM));
      assertClean(r, wp);
      assert.equal(r.options.workers, navigator.hardwareConcurrency * 2, "N = cores × 2");
      console.log(
        `${memory}: ${r.increments} increments, ${r.faults} faults (${r.missingFaults} missing, ${r.wpFaults} wp), ` +
          `${r.retried} retried, ${r.bouncer.zappedPages} pages zapped in ${r.seconds} s`,
      );
    },
  });
}

Deno.test({
  name: "uffd-stress.c bounce, sabotaged: a stale, a torn and a zero-filled bounce are each caught",
  ignore: needs(Feature.EVENT_REMOVE, Feature.PAGEFAULT_FLAG_WP),
  async fn(t) {
    const expectations: [StressOptions["sabotage"], RegExp][] = [
      ["stale", /Worker \d+ made \d+ increments, the page holds \d+ \(lost\)/],
      ["torn", /torn: body word \d+ is not that of total \d+/],
      ["zero", /no magic \(0x0\): its content was lost/],
    ];
    for (const [sabotage, pattern] of expectations) {
      await t.step(sabotage, async () => {
        const r = await stress({ sabotage, durationMs: 20_000 });
        assert.equal(r.ok, false, `the ${sabotage} bounce went unnoticed for ${r.seconds} s`);
        assert.match(r.failures[0]!, pattern);
        assert.ok(r.seconds < 20, "caught before the end of the run");
      });
    }
  },
});
