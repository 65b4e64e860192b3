/**
 * The round trip of issue 5: a `LiveSnapshot` of a running WebAssembly
 * instance's memory written to a file, then a `LazyRegion` that restores it on
 * demand into a fresh instance's memory, which runs on and gives the same
 * results. The program (`tests/fixtures/wasm_app.ts`) keeps a PRNG seed, a
 * checksum and a table of words spread over every other 4 KiB page of its first
 * 4 MiB; each step reads a word earlier steps wrote and folds it into the
 * checksum, so one wrong or missing page changes every checksum after it.
 *
 * Both halves make the main isolate touch memory a fault handler must serve (A
 * writes while its memory is write-protected, B runs over missing memory): they
 * run in a child process killed at its deadline, as in the LazyRegion tests.
 * The README's "Round trip" block is run as written, the same way.
 */

import assert from "node:assert/strict";
import { Feature, Region } from "../mod.ts";
import { DEADLINE_SCALE, needs } from "./helpers.ts";
import { appPages4k, WASM_APP_BYTES } from "./fixtures/wasm_app.ts";

const ROOT = new URL("../", import.meta.url);
const SCENARIOS = new URL("./scenarios/wasm_roundtrip.ts", import.meta.url);
const PAGE = Region.pageSize;
/** What LiveSnapshot needs (its own tests skip on the same). */
const FEATURES = [Feature.PAGEFAULT_FLAG_WP, Feature.EVENT_REMOVE, Feature.EVENT_UNMAP, Feature.EVENT_REMAP];
const ignore = needs(...FEATURES);

// deno-lint-ignore no-explicit-any
type Json = any;

interface Child {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `deno <args>` (stdin from `input`); fails if it does not end by itself within `deadlineMs`. */
async function runDeno(args: string[], deadlineMs: number, input?: string): Promise<Child> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    stdin: input === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    child.kill("SIGKILL");
  }, deadlineMs * DEADLINE_SCALE);
  if (input !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(input));
    await writer.close();
  }
  const out = await child.output();
  clearTimeout(timer);
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.ok(!killed, `deno ${args.join(" ")} did not end by itself within ${deadlineMs} ms\n${stdout}\n${stderr}`);
  return { code: out.code, stdout, stderr };
}

/** The pages of this machine's size the program touches (513 with 4 KiB pages). */
function touchedPages(): number {
  return new Set(appPages4k().map((p) => Math.floor((p * 4096) / PAGE))).size;
}

Deno.test({
  name: "wasm round trip: A snapshotted to a file while it runs, B restored lazily from it runs on to A's results",
  ignore,
  async fn() {
    const r = await runDeno(["run", "--allow-all", "--no-prompt", SCENARIOS.pathname, "roundtrip"], 120_000);
    assert.equal(r.code, 0, `the scenario failed:\n${r.stdout}\n${r.stderr}`);
    const o: Json = JSON.parse(r.stdout.trim().split("\n").at(-1) ?? "");
    const pages: number = o.pages;
    const touched = touchedPages();
    const untouched = pages - touched;
    console.log(
      `A under the snapshot: ${o.aRunMs.toFixed(1)} ms (undisturbed ${o.cRunMs.toFixed(1)} ms), ` +
        `${o.snapshot.byFault} pages saved by faults, ${o.snapshot.byCopier} by the copier; ` +
        `B restoring: ${o.bRunMs.toFixed(1)} ms, ${o.afterRun.faults} faults; open ${o.openMs.toFixed(1)} ms`,
    );

    // The snapshot: every page saved once, at step N, while A ran on undisturbed.
    assert.equal(o.aAtN, true, "A and the reference agree up to the snapshot");
    assert.equal(o.snapshot.savedPages, pages);
    assert.equal(o.snapshot.byFault + o.snapshot.byCopier, pages, "each page saved once, by a fault or the copier");
    // Never-touched pages are saved as zeros — except those a transparent huge page gave a zeroed frame of its own
    // (THP "always" on 6.1: the whole 2 MiB block of a touched page), which the snapshot saves as data.
    const thpFilled = o.framesBefore - touched;
    assert.ok(
      thpFilled >= 0,
      `${o.framesBefore} pages held frames before the snapshot, fewer than the ${touched} touched`,
    );
    if (thpFilled > 0) {
      console.log(`${thpFilled} untouched pages held zeroed frames of a huge page before the snapshot`);
    }
    assert.equal(o.snapshot.zeroPages, untouched - thpFilled, "never-touched pages without a frame saved as zeros");
    assert.equal(o.snapshot.dataPages, touched + thpFilled, "only the pages holding frames are in the file");
    assert.deepEqual(o.fileImage, [], "the file is the image at step N, every page");
    assert.equal(o.aFinal, true, "A, written during the snapshot, still computes the reference's checksum");
    assert.deepEqual(o.aImage, [], "…and holds the reference's memory");

    // B: the same results, from a memory filled on demand.
    assert.equal(o.residentBefore, 0, "nothing restored before B runs");
    assert.equal(o.bFinal, true, "B's checksum after M steps is the reference's after N + M");
    assert.deepEqual(o.bImage, [], "B's memory equals the reference's, page for page");
    assert.equal(o.afterRun.faults, touched, "B faulted in exactly the pages the program touches");
    assert.equal(o.afterRun.resident, touched, "and nothing else was restored");
    assert.equal(o.presentAfterRun, touched, "pagemap: only those pages are present");
    assert.equal(o.afterRun.bytesRead, touched * PAGE, "each read from the file once");
    assert.equal(o.afterRun.zeroPages, 0);
    assert.equal(o.afterRun.prefetched, 0);
    assert.equal(o.afterRun.refaults, 0);
    assert.equal(o.afterCompare.faults, pages, "reading the rest faulted each page once");
    assert.equal(o.afterCompare.zeroPages, untouched, "the never-touched pages came in as zero pages…");
    assert.equal(o.afterCompare.bytesRead, touched * PAGE, "…without reading the file");
    assert.equal(o.pfnZero, untouched, "pagemap: they map the shared zero page");
    assert.equal(o.state, "closed");
    assert.equal(o.mappedAfterClose, true, "close() leaves B's memory to B");
    assert.equal(o.afterClose, true, "A, B and the reference go on alike after the lazy region is closed");
    assert.equal(o.earlyCloseZero, true, "a lazy region closed before any touch leaves its target zero");

    // The checksum notices a wrong page: the comparisons above can fail.
    assert.equal(o.controlIntact, true, "the file, restored eagerly, gives the reference's checksum");
    assert.equal(o.controlMissing, false, "one page zeroed in the image changes the checksum");
    assert.equal(o.controlStale, false, "one page from a later moment changes the checksum");

    // Everything closed.
    assert.equal(o.after.userfaultfds, 0, "no userfaultfd left open");
    assert.equal(o.after.workers, o.before.workers, "no Worker thread left");
    assert.equal(o.after.loneEventfds, o.before.loneEventfds, "no eventfd left (beyond the Worker runtime's own)");
    assert.deepEqual(o.after.others, o.before.others, "no file, memfd or pagemap fd left");
    assert.ok(o.after.runtimePairs <= o.before.runtimePairs + 1, "the Worker runtime keeps at most one more fd pair");
  },
});

/** The README's round-trip block. */
function readmeRoundTrip(): string {
  const readme = Deno.readTextFileSync(new URL("README.md", ROOT));
  const start = readme.indexOf("## Round trip");
  assert.ok(start >= 0, "README has a ## Round trip section");
  const match = /```ts\n([\s\S]*?)```/.exec(readme.slice(start));
  assert.ok(match, "README has a ts block under ## Round trip");
  return match[1]!;
}

Deno.test({
  name: "README round trip runs as written with --allow-ffi --allow-read --allow-write: B ends equal to A",
  ignore,
  async fn() {
    const example = readmeRoundTrip();
    assert.match(example, /LiveSnapshot\.take\(memoryA, \{ sink: "app\.ckpt" \}\)/);
    assert.match(
      example,
      /LazyRegion\.open\(\{ checkpoint: \["app\.ckpt"\] \}, \{ target: memoryB, prefetch: true \}\)/,
    );
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeFile(`${dir}/app.wasm`, WASM_APP_BYTES);
      // Imports are hoisted: the block's own run first, from the directory holding app.wasm.
      const before = `Deno.chdir(${JSON.stringify(dir)});\n`;
      const after = `
const __a = new Uint8Array(memoryA.buffer), __b = new Uint8Array(memoryB.buffer);
const { handler: _, ...__stats } = lazy.stats;
console.log(JSON.stringify({ ...__stats, state: lazy.state, equal: __a.length === __b.length && __a.every((x, i) => x === __b[i]) }));
`;
      const r = await runDeno(
        ["run", "--allow-ffi", "--allow-read", "--allow-write", "--no-prompt", "-"],
        60_000,
        before + example + after,
      );
      assert.equal(r.code, 0, `the README block failed:\n${r.stdout}\n${r.stderr}`);
      const lines = r.stdout.trim().split("\n");
      assert.equal(lines[0], "true", "the block prints true");
      const o: Json = JSON.parse(lines.at(-1)!);
      assert.equal(o.state, "ready");
      assert.equal(o.equal, true, "B's memory ends equal to A's, byte for byte");
      assert.ok(o.faults > 0, `B faulted pages in (${o.faults})`);
      assert.equal(o.faults + o.prefetched, o.pages, "each page restored once, by a fault or the prefetcher");
      assert.equal(o.resident, o.pages);
      assert.ok(Deno.statSync(`${dir}/app.ckpt`).isFile, "the snapshot's file is where the block said");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
