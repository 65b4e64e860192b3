/**
 * `uffd demo` as a user runs it (a subprocess: exit code, stdout, stderr, time),
 * its JSON checked independently of the demo's own check, its fallbacks forced
 * with `--decline` and `--backend`; the round check itself on the real kernel,
 * shown to fail when a write is really lost or a page really was not written by
 * the writer; and the snapshot check on a real live snapshot, shown to fail on an
 * image with a page taken later, a page taken earlier, or halves copied apart.
 */

import assert from "node:assert/strict";
import { Feature, LiveSnapshot, Userfaultfd, type WriteSet, WriteWatch } from "../mod.ts";
import { checkRound, ROUNDS } from "../cli/_demo_watch.ts";
import { checkSnapshot } from "../cli/_demo_snapshot_check.ts";
import { WasmWriter } from "../cli/_demo_writer.ts";
import { passRuns } from "../cli/_demo_pattern.ts";
import { wasmStrideWriter } from "../cli/_demo_wasm.ts";
import { hasStackTrace, onPath, runCli, runCliOnTerminal } from "./cli_run.ts";
import { DEADLINE_SCALE, needs, skipUnless, waitFor } from "./helpers.ts";

/** `text` as a regular expression matching it literally (a release like 6.12.117+deb12 has `.` and `+`). */
const literal = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

const backends = WriteWatch.backends();
const best = backends.find((b) => b.available);

/** `ignore:` for tests that need some write-watch backend. */
function needsAnyBackend(): boolean {
  return skipUnless(best !== undefined, `no write-watch backend here: ${backends.map((b) => b.reason).join("; ")}`);
}

/** What `LiveSnapshot` needs. */
const SNAPSHOT_FEATURES = [Feature.PAGEFAULT_FLAG_WP, Feature.EVENT_REMOVE, Feature.EVENT_UNMAP, Feature.EVENT_REMAP];

/** `ignore:` for tests that need a live snapshot (Linux 5.17+: sync write-protect and the pagemap's uffd-wp bit). */
function needsLiveSnapshot(): boolean {
  return needs(...SNAPSHOT_FEATURES);
}

/** The demo's `liveSnapshot` key, as far as the tests read it. */
interface SnapshotStep {
  status: string;
  reason?: string;
  pages: number;
  bytes: number;
  savedPages: number;
  byFault: number;
  byCopier: number;
  faults: number;
  elapsedMs: number;
  bytesPerSecond: number;
  takeMs: number;
  wpUnpopulated: boolean;
  consistent: boolean;
  check: {
    ok: boolean;
    instant: { pass: number; store: number; storesInPass: number; totalStores: number };
    window: { afterPass: number; untilPass: number; passes: number; stores: number };
    newestStamp: number;
    bytes: number;
  };
}

/** The JSON's snapshot step, checked for what holds whenever it ran: every page saved once, one instant in the window. */
function assertSnapshotRan(snap: SnapshotStep, memoryBytes: number): void {
  assert.equal(snap.status, "ok", snap.reason);
  assert.equal(snap.consistent, true);
  assert.equal(snap.check.ok, true);
  assert.equal(snap.bytes, memoryBytes);
  assert.equal(snap.check.bytes, memoryBytes, "the whole image was compared");
  assert.equal(snap.savedPages, snap.pages, "every page saved");
  assert.equal(snap.byFault + snap.byCopier, snap.savedPages, "each page saved once, by a fault or by the copier");
  assert.ok(snap.faults >= snap.byFault, "a page saved by a fault was faulted on");
  assert.ok(snap.elapsedMs > 0 && snap.bytesPerSecond > 0 && snap.takeMs > 0);
  const { instant, window, newestStamp } = snap.check;
  assert.ok(instant.pass >= window.afterPass && instant.pass <= window.untilPass, JSON.stringify(snap.check));
  assert.ok(instant.store >= 1 && instant.store <= instant.storesInPass, JSON.stringify(instant));
  assert.equal(newestStamp, instant.pass, "the newest stamp in the image is the instant's pass");
  assert.ok(window.passes >= 1, "the writer made at least one pass while take() ran");
}

interface Round {
  round: number;
  count: number;
  pages: number[];
  writer: { passes: number; stores: number };
  check: { ok: boolean; writtenBefore: number; missed: number[]; neverWritten: number[]; lost: number };
  log: { due: [number, number][]; may: number[] };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const last = <T>(items: T[]): T => items[items.length - 1]!;

Deno.test({
  name: "demo --json: under 10 s, one document, every round reports what the writer wrote before it and nothing " +
    "else, the snapshot is the memory at one instant",
  ignore: needsAnyBackend(),
  async fn() {
    const t0 = performance.now();
    const { code, stdout, stderr } = await runCli(["demo", "--json"]);
    const seconds = (performance.now() - t0) / 1000;
    assert.equal(code, 0, stderr);
    assert.equal(stderr, "");
    assert.ok(seconds < 10 * DEADLINE_SCALE, `demo --json took ${seconds.toFixed(1)} s`);
    const doc = JSON.parse(stdout);
    assert.equal(doc.kernel, Deno.osRelease());
    assert.equal(doc.features.status, "ok");
    assert.equal(typeof doc.features.used.WP_ASYNC, "boolean");
    const watch = doc.writeWatch;
    assert.equal(watch.status, "ok", watch.reason);
    assert.equal(watch.backend, best!.name, "automatic selection picks the best backend available");
    assert.equal(watch.ok, true);
    const rounds: Round[] = watch.rounds;
    assert.ok(rounds.length >= ROUNDS, `${rounds.length} rounds`);
    const { stripes, globals } = watch.layout;
    let passesBefore = 0;
    for (const r of rounds) {
      assert.deepEqual(r.pages, [...new Set(r.pages)].sort((a, b) => a - b), "pages ascending, once each");
      assert.equal(r.count, r.pages.length);
      // Independently of the demo's check: each page the writer wrote before this
      // collect() began is reported by a round from `from` to this one...
      for (const [page, from] of r.log.due) {
        assert.ok(from >= 1 && from <= r.round, `round ${r.round}: page ${page} due from round ${from}`);
        const seen = rounds.slice(from - 1, r.round).some((earlier) => earlier.pages.includes(page));
        assert.ok(seen, `round ${r.round}: page ${page}, written before the collect, was never reported`);
      }
      // ...and each reported page was written by a pass that could land in this round.
      const may = new Set(r.log.may);
      for (const page of r.pages) assert.ok(may.has(page), `round ${r.round}: page ${page} reported, never written`);
      assert.equal(r.check.ok, true);
      assert.equal(r.check.writtenBefore, r.log.due.length);
      // The writer's pattern is there: its globals in every round, this round's stripes — in each round in which the
      // writer finished a pass (every one on a real machine; under an emulator a pass may outlast a round).
      // (Round 1 needs a whole pass begun after the watch started: the one under way then does not count.)
      const passed = r.writer.passes > passesBefore + (r.round === 1 ? 1 : 0);
      passesBefore = r.writer.passes;
      if (!passed && DEADLINE_SCALE > 1) continue;
      const dueNow = new Set(r.log.due.filter(([, from]) => from === r.round).map(([page]) => page));
      assert.ok(dueNow.has(globals.first), `round ${r.round}: the writer's globals were written`);
      const stride = stripes.strides[(r.round - 1) % stripes.strides.length];
      const stripePages = [...dueNow].filter((p) => p >= stripes.first && p < stripes.first + stripes.pages);
      assert.ok(stripePages.length > 0 && stripePages.every((p) => (p - stripes.first) % stride === 0));
      assert.equal(stripePages.length, stripes.pages / stride, `round ${r.round}: every ${stride}th stripe page`);
    }
    assert.ok(rounds[rounds.length - 1]!.writer.passes > rounds[0]!.writer.passes, "the writer kept writing");
    // The hot spot moves (with time, wrapping at the end of its lane): the last round's is not the first round's.
    const hot = (r: Round) => r.pages.filter((p) => p >= watch.layout.hotSpot.first && p < stripes.first - 8).join();
    const withHot = rounds.filter((r) => hot(r) !== "");
    assert.ok(withHot.length >= 2, "the hot spot was written in two rounds at least");
    assert.notEqual(hot(withHot.at(-1)!), hot(withHot[0]!), "the hot spot moved");
    // Then the live snapshot of the same memory, the writer still running.
    if (needsLiveSnapshot()) return;
    const snap: SnapshotStep = doc.liveSnapshot;
    assertSnapshotRan(snap, watch.memory.bytes);
    assert.equal(snap.wpUnpopulated, Userfaultfd.supported().features.has(Feature.WP_UNPOPULATED));
    assert.ok(snap.check.instant.pass >= last(rounds).writer.passes, "the snapshot came after the watch's last round");
  },
});

Deno.test({
  name: "demo (text): feature summary, a heat map per round that fits 80 columns, each round checked, the snapshot",
  ignore: needsAnyBackend(),
  async fn() {
    const { code, stdout, stderr } = await runCli(["demo"]);
    assert.equal(code, 0, stderr);
    assert.ok(!hasStackTrace(stdout + stderr));
    assert.match(stdout, new RegExp(`^uffd demo — Linux ${literal(Deno.osRelease())} `));
    assert.match(stdout, /this demo uses: WP_ASYNC [✓✗] {2}WP_UNPOPULATED [✓✗] {2}PAGEMAP_SCAN [✓✗]/);
    assert.match(stdout, /1 cell = 4 pages/);
    const maps = stdout.split("\n").filter((line) => /^\s+\d+\s{4}[·░▒▓█]{64}\s+\d+$/.test(line));
    assert.equal(maps.length, ROUNDS, stdout);
    for (const line of maps) assert.ok(line.length <= 80, `${line.length} columns: ${line}`);
    const checks = stdout.split("\n").filter((line) => / written before .* spurious/.test(line));
    assert.equal(checks.length, ROUNDS);
    for (const line of checks) {
      assert.match(line, /^\s+✓ (\d+)\/\1 written before.* · ✓ 0 spurious · writer \+\d+ passes$/);
    }
    // No check failed (the features line may say ✗ for what this kernel lacks).
    assert.doesNotMatch(stdout.split("\n").filter((l) => !l.startsWith("this demo uses:")).join("\n"), /✗/);
    // deno-lint-ignore no-control-regex
    assert.doesNotMatch(stdout, /\x1b\[/, "NO_COLOR: no escapes");
    // The live snapshot, after the rounds: its figures and its check.
    const snapshot = stdout.slice(stdout.indexOf("\nlive snapshot\n"));
    assert.ok(snapshot.length > 0 && stdout.indexOf("\nlive snapshot\n") > stdout.lastIndexOf("written before"));
    assert.match(snapshot, /^256 pages \(1 MiB\) saved in [\d.]+ ms from the instant the memory was protected;/m);
    assert.match(snapshot, /^Saved by the copier: \d+; by faults: \d+ /m);
    assert.match(snapshot, /^Bandwidth: [\d.]+ [KMG]?i?B\/s /m);
    assert.match(snapshot, /^✓ consistent: yes — all 1 MiB are, byte for byte, the memory right after the/m);
    for (const line of snapshot.split("\n")) assert.ok(line.length <= 80, `${line.length} columns: ${line}`);
  },
});

Deno.test({
  name: "demo on a terminal: colors, and none with NO_COLOR",
  ignore: needsAnyBackend() || skipUnless(onPath("script"), "no `script` to give the CLI a terminal"),
  async fn() {
    const colored = await runCliOnTerminal(["demo"], { color: true });
    assert.equal(colored.code, 0, colored.stdout);
    assert.ok(colored.stdout.includes("\x1b[36m█\x1b[0m"), "heat map cells are colored");
    const plain = await runCliOnTerminal(["demo"]);
    assert.equal(plain.code, 0, plain.stdout);
    assert.ok(!plain.stdout.includes("\x1b["), "NO_COLOR");
    assert.match(plain.stdout, /[░▒▓█]{4}/);
  },
});

Deno.test("demo --decline async: falls back to the next backend, or says why the watch is skipped and exits 0", async () => {
  const { code, stdout, stderr } = await runCli(["demo", "--json", "--decline", "async"]);
  assert.equal(code, 0, stderr);
  const watch = JSON.parse(stdout).writeWatch;
  const fallback = backends.find((b) => b.name !== "async" && b.available);
  if (fallback) {
    assert.equal(watch.status, "ok");
    assert.equal(watch.backend, fallback.name);
  } else {
    assert.equal(watch.status, "skipped");
    assert.match(watch.reason, /async: declined/);
    for (const b of backends.filter((b) => b.name !== "async")) assert.ok(watch.reason.includes(b.reason!), b.name);
    const text = await runCli(["demo", "--decline=async,sync"]);
    assert.equal(text.code, 0);
    assert.match(text.stdout, /live write watch skipped: .*async: declined/s);
    assert.doesNotMatch(text.stdout, /^\s+1\s{4}/m, "no rounds");
  }
});

Deno.test("demo --backend NAME: a backend that cannot run here is refused (exit 3) with its reason", async () => {
  const unavailable = backends.find((b) => !b.available);
  if (skipUnless(unavailable !== undefined, "every write-watch backend can run here")) return;
  const { code, stdout, stderr } = await runCli(["demo", "--json", "--backend", unavailable!.name]);
  assert.equal(code, 3, stderr);
  const watch = JSON.parse(stdout).writeWatch;
  assert.equal(watch.status, "refused");
  assert.equal(stderr.trim().split("\n").length, 1);
  assert.ok(stderr.includes(unavailable!.reason!), stderr);
});

Deno.test("demo usage: --help lists the options; bad options exit 2 with one line", async () => {
  const help = await runCli(["demo", "--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^usage: uffd demo \[--json\] \[--backend NAME\] \[--decline NAME,\.\.\.\]/);
  assert.match(help.stdout, /--decline NAME/);
  for (const args of [["demo", "--backend", "bogus"], ["demo", "--decline", "nope"], ["demo", "--backend"]]) {
    const r = await runCli(args);
    assert.equal(r.code, 2, args.join(" "));
    assert.equal(r.stdout, "");
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
});

Deno.test({
  name: "demo --decline WP_UNPOPULATED: the snapshot maps never-touched pages to the zero page first, still consistent",
  ignore: needsAnyBackend() || needsLiveSnapshot(),
  async fn() {
    const { code, stdout, stderr } = await runCli(["demo", "--json", "--decline", "WP_UNPOPULATED"]);
    assert.equal(code, 0, stderr);
    const doc = JSON.parse(stdout);
    assertSnapshotRan(doc.liveSnapshot, doc.writeWatch.memory.bytes);
    assert.equal(doc.liveSnapshot.wpUnpopulated, false);
    assert.deepEqual(doc.liveSnapshot.decline, ["WP_UNPOPULATED"]);
  },
});

Deno.test("demo --decline PAGEFAULT_FLAG_WP: the snapshot is skipped with its reason, and the demo exits 0", async () => {
  const { code, stdout, stderr } = await runCli(["demo", "--json", "--decline", "PAGEFAULT_FLAG_WP"]);
  assert.equal(code, 0, stderr);
  assert.equal(stderr, "");
  const snap = JSON.parse(stdout).liveSnapshot;
  assert.equal(snap.status, "skipped");
  assert.match(snap.reason, /^live snapshot skipped: .*PAGEFAULT_FLAG_WP.*declined/);
  assert.equal(snap.consistent, undefined, "no figures for a snapshot that was not taken");
  const text = await runCli(["demo", "--decline", "PAGEFAULT_FLAG_WP"]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^live snapshot skipped: .*PAGEFAULT_FLAG_WP/m);
  assert.doesNotMatch(text.stdout, /consistent:/);
});

// ---------------------------------------------------------------------------
// The snapshot check, on the real kernel

/** A writer and one live snapshot of its memory taken as a mark; the writer keeps going. */
async function snapshotOfWriter() {
  const writer = await WasmWriter.start();
  try {
    await sleep(20);
    const earlier = writer.memory.buffer.slice(0); // a plain copy, before the snapshot
    const copied = writer.passes;
    await waitPasses(writer, copied + 2); // so that pass copied + 2 ended before take() began
    const sink = new Uint8Array(writer.memory.buffer.byteLength);
    const taken = await writer.markAsync(() => LiveSnapshot.take(writer.memory, { sink }));
    const result = await taken.result.done;
    await writer.settled(taken.index);
    return { writer, sink, mark: taken.index, result, earlier: new Uint8Array(earlier) };
  } catch (e) {
    await writer.stop();
    throw e;
  }
}

async function waitPasses(writer: WasmWriter, passes: number): Promise<void> {
  const deadline = performance.now() + 5000;
  while (writer.passes < passes) {
    assert.ok(performance.now() < deadline, `the writer did not reach pass ${passes}`);
    await sleep(1);
  }
}

Deno.test({
  name: "snapshot check: a live snapshot of the running writer is the memory at one instant; the same image with " +
    "one page taken later, or earlier, is not, and the check names that page",
  ignore: needsLiveSnapshot(),
  async fn() {
    const { writer, sink, mark, result, earlier } = await snapshotOfWriter();
    try {
      const P = writer.pageSize;
      assert.equal(result.savedPages, writer.pages);
      const check = checkSnapshot(sink, writer.passLog, mark, P);
      assert.equal(check.ok, true, JSON.stringify(check));
      assert.ok(check.window.passes >= 1, "the writer made passes while take() ran");
      // Page 0 (the writer's globals, stamped by every pass) as it is now, after passes that began
      // after take() returned: no instant of the window has it.
      const later = sink.slice();
      later.set(new Uint8Array(writer.memory.buffer, 0, P), 0);
      const torn = checkSnapshot(later, writer.passLog, mark, P);
      assert.equal(torn.ok, false);
      assert.deepEqual(torn.closest?.pages, [0]);
      // Page 0 as it was before passes that ended before take() began: no instant of the window lacks them.
      const stale = sink.slice();
      stale.set(earlier.subarray(0, P), 0);
      const old = checkSnapshot(stale, writer.passLog, mark, P);
      assert.equal(old.ok, false);
      assert.deepEqual(old.closest?.pages, [0]);
      // A page moved to another page's place.
      const moved = sink.slice();
      moved.copyWithin(5 * P, 0, P);
      assert.deepEqual(checkSnapshot(moved, writer.passLog, mark, P).closest?.pages, [5]);
    } finally {
      await writer.stop();
    }
  },
});

Deno.test("snapshot check: two halves copied a few passes apart match no instant", async () => {
  await using writer = await WasmWriter.start();
  await sleep(20);
  const P = writer.pageSize;
  const half = writer.memory.buffer.byteLength / 2;
  const image = new Uint8Array(2 * half);
  const { index } = await writer.markAsync(async () => {
    image.set(new Uint8Array(writer.memory.buffer, 0, half), 0);
    // Pass `copied + 2` begins after `copied + 1` ends, so after the first half was copied;
    // it ends before the second half is: the halves disagree about it (globals first, stripes last).
    const copied = writer.passes;
    await waitPasses(writer, copied + 2);
    image.set(new Uint8Array(writer.memory.buffer, half, half), half);
  });
  await writer.settled(index);
  const check = checkSnapshot(image, writer.passLog, index, P);
  assert.equal(check.ok, false, JSON.stringify(check.instant));
  assert.equal(check.reason, undefined);
  assert.ok(check.closest!.pages.length > 0);
  assert.ok(check.window.passes >= 2);
});

// ---------------------------------------------------------------------------
// The round check, on the real kernel

/** Starts a writer and a watch marked as mark 1, and returns a function that runs one marked, checked round. */
async function session(options: Parameters<typeof WasmWriter.start>[0] = {}) {
  const writer = await WasmWriter.start(options);
  const start = writer.mark(() => WriteWatch.start(writer.memory));
  const watch = start.result;
  const reported: WriteSet[] = [];
  const round = async () => {
    const collected = writer.mark(() => watch.collect());
    reported.push(collected.result);
    await writer.settled(collected.index);
    const log = {
      due: Array.from(writer.dueAt(collected.index), (m) => m - start.index),
      may: writer.mayAt(collected.index),
    };
    return checkRound(reported.length, reported, log, watch.backend !== "soft-dirty");
  };
  return {
    writer,
    watch,
    round,
    async [Symbol.asyncDispose]() {
      watch.stop();
      await writer.stop();
    },
  };
}

Deno.test({
  name: "round check: 20 quick rounds against a writer racing every collect(): nothing missed, nothing spurious",
  ignore: needsAnyBackend(),
  async fn() {
    await using s = await session({ pauseMs: 0.2 });
    let boundary = 0;
    for (let i = 1; i <= 20; i++) {
      await sleep(10);
      // At least one pass of the writer since the last round (under an emulator one can take longer than 10 ms);
      // before round 1, a whole pass begun after the watch started (the one under way then does not count).
      const passes = s.writer.passes + (i === 1 ? 1 : 0);
      await waitFor(() => s.writer.passes > passes, 10_000, "a pass of the writer");
      const c = await s.round();
      assert.deepEqual(c.missed, [], `round ${i}`);
      assert.deepEqual(c.neverWritten, [], `round ${i}`);
      assert.ok(c.writtenBefore > 0, `round ${i}: the writer wrote`);
      boundary += c.racing + c.reportedEarlier;
    }
    console.log(`${s.writer.passes} passes; ${boundary} pages written while a collect() ran`);
  },
});

Deno.test({
  name: "round check: a reset the log does not know of loses writes, and the check reports them missed",
  ignore: needsAnyBackend(),
  async fn() {
    await using s = await session();
    await sleep(30);
    assert.equal((await s.round()).ok, true);
    const passes = s.writer.passes;
    while (s.writer.passes < passes + 5) await sleep(1);
    await sleep(150); // the hot spot moves on by ~30 pages: the pages it left are not written again
    // What every pass after the reset writes again: the globals and the stripes at this mark's stride. (The pass that
    // was running at round 1's mark wrote the stripes at the stride before it — pages that may be lost too.)
    const [gFirst, gPages, , , , , sFirst, sCount, sStep] = passRuns(s.writer.layout, 0, s.writer.marks);
    const rewritten = new Set<number>();
    for (let i = 0; i < gPages!; i++) rewritten.add(gFirst! + i);
    for (let i = 0; i < sCount!; i++) rewritten.add(sFirst! + i * sStep!);
    s.watch.reset(); // not a mark: the writes before it are gone
    // Two more passes: the globals and stripes are written again, the pages the hot spot left are not.
    const after = s.writer.passes;
    await waitFor(() => s.writer.passes >= after + 2, 10_000, "two passes of the writer after the reset");
    const c = await s.round();
    assert.equal(c.ok, false);
    const { hotSpot } = s.writer.layout;
    const inHotSpot = (page: number) => page >= hotSpot.first && page < hotSpot.first + hotSpot.pages;
    assert.ok(c.missed.some(inHotSpot), `the check saw the hot spot's lost writes: missed ${c.missed}`);
    for (const page of c.missed) assert.ok(!rewritten.has(page), `missed page ${page} was written after the reset`);
    assert.deepEqual(c.neverWritten, []);
  },
});

Deno.test({
  name: "round check: a page written by someone else than the writer is reported spurious",
  ignore: needsAnyBackend(),
  async fn() {
    await using s = await session();
    await sleep(20);
    assert.equal((await s.round()).ok, true);
    const gap = s.writer.layout.globals.pages + 1; // between the globals and the hot spot's lane
    wasmStrideWriter(s.writer.memory)(gap * s.writer.pageSize, 1, 1, 0x5a); // from the main thread
    await sleep(20);
    const c = await s.round();
    assert.equal(c.ok, false);
    assert.deepEqual(c.neverWritten, [gap]);
    assert.deepEqual(c.missed, []);
  },
});
