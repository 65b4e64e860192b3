/**
 * `uffd migrate --demo`: a wasm writer (`_migrate_writer.ts`) runs in this
 * process and is moved, while it runs, to a second process this command starts
 * (`uffd migrate --destination`): its memory over loopback TCP with
 * `Migration.send`/`receive` in the mode asked for, its state (the pass it was
 * parked at), and then it goes on there. Prints each pre-copy round (pages, zero
 * pages, bytes, time, bandwidth, the pages dirtied meanwhile and the dirty rate),
 * the downtime, the bytes, the post-copy's requests and stream, and the check:
 * the source's memory at the pause is its writer's (replayed from its log), and
 * the destination's memory after it ran on is, byte for byte, what an undisturbed
 * run of the same passes leaves (the two processes' logs replayed with
 * `_demo_snapshot_check.ts`'s `replay`) — and, in pre-copy, its memory at resume
 * was the source's at the pause.
 *
 * Exit codes: 0 when the migration ran and the check held; 1 when either failed;
 * 2 on a usage error; 3 when the permissions refuse it (the second process needs
 * `--allow-run`, the Workers `--allow-read` of the package).
 *
 * @example
 * ```ts
 * import { parseBandwidth } from "./_migrate.ts";
 * console.log(parseBandwidth("100mbit"), parseBandwidth("1Gbit"), parseBandwidth("50MiB/s")); // 12500000 125000000 52428800
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  Migration,
  MigrationError,
  type MigrationMode,
  type MigrationProgress,
  type MigrationResult,
  Region,
} from "../mod.ts";
import { replay } from "./_demo_snapshot_check.ts";
import { wrap } from "./_demo_watch.ts";
import { logOf, migrationLayout, MigrationWriter, type WriterState } from "./_migrate_writer.ts";
import { bold, bytes, dim, EXIT, green, printJson, red, table, UsageError } from "./_output.ts";

const MODES: readonly MigrationMode[] = ["precopy", "postcopy", "hybrid"];
const PACKAGE = new URL("../", import.meta.url);
/** The command's entry, which the second process runs (a process, not an import). */
const CLI = new URL("cli.ts", PACKAGE);

/**
 * A bandwidth in bytes per second: a number of bytes per second, or with a unit —
 * `k`/`M`/`G` (bytes, powers of 1000), `KiB`/`MiB`/`GiB` (powers of 1024), each
 * optionally with `/s`, or `kbit`/`mbit`/`gbit` (bits).
 *
 * @throws {UsageError} For anything else.
 */
export function parseBandwidth(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)(\/s)?$/i.exec(text.trim());
  const units: Record<string, number> = {
    "": 1,
    b: 1,
    k: 1e3,
    kb: 1e3,
    m: 1e6,
    mb: 1e6,
    g: 1e9,
    gb: 1e9,
    kib: 1024,
    mib: 1024 ** 2,
    gib: 1024 ** 3,
    kbit: 1e3 / 8,
    mbit: 1e6 / 8,
    gbit: 1e9 / 8,
  };
  const unit = m ? units[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined || !(Number(m[1]) > 0)) {
    throw new UsageError(`--bandwidth ${text}: a rate such as 100mbit, 1gbit, 50MiB/s or 20000000 (bytes per second)`);
  }
  return Math.round(Number(m[1]) * unit);
}

/** Why the second process or the Workers cannot start under these permissions, or `undefined`. */
function permissionProblem(): string | undefined {
  if (Deno.permissions.querySync({ name: "run", command: Deno.execPath() }).state !== "granted") {
    return `the destination is a second process: it needs --allow-run=${Deno.execPath()} (or -A)`;
  }
  if (PACKAGE.protocol === "file:") {
    const path = decodeURIComponent(PACKAGE.pathname).replace(/(.)\/$/, "$1");
    if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") {
      return `the migration's Workers load the package's modules from ${path}: --allow-read=${path} (or -A)`;
    }
  }
  return undefined;
}

async function digest(memory: WebAssembly.Memory): Promise<string> {
  const copy = new Uint8Array(memory.buffer).slice();
  return [...new Uint8Array(await crypto.subtle.digest("SHA-256", copy))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function replayDigest(runs: readonly (readonly number[])[], pages: number): Promise<string> {
  const image = replay(logOf(runs), Region.pageSize, pages * Region.pageSize, { pass: runs.length, store: Infinity });
  return [...new Uint8Array(await crypto.subtle.digest("SHA-256", image as Uint8Array<ArrayBuffer>))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** What both processes build their writer from. */
function layoutFor(pages: number) {
  // The first three quarters hold data; the hot spot sweeps a tenth of the memory in two seconds.
  return migrationLayout(pages, { pagesPerMs: Math.max(1, Math.floor(pages / 10)) / 2000 });
}

/** The second process: listen, receive, run on, report (one JSON line per event on stdout). */
async function destination(options: { pages: number; mode: MigrationMode; passes: number }): Promise<number> {
  const print = (value: unknown) => console.log(JSON.stringify(value));
  using listener = Migration.listen({ hostname: "127.0.0.1", port: 0 });
  print({ type: "listening", port: listener.port });
  const wasmPages = (options.pages * Region.pageSize) / 65536;
  const memory = new WebAssembly.Memory({ initial: wasmPages, maximum: wasmPages, shared: true });
  const t0 = performance.now();
  let received;
  try {
    received = await Migration.receive(listener, {
      target: memory,
      mode: options.mode,
      onProgress: (p) => print({ type: "progress", phase: p.phase, round: p.round, bytes: p.bytes }),
    });
  } catch (e) {
    print({ type: "error", code: e instanceof MigrationError ? e.code : null, message: String(e) });
    return EXIT.failure;
  }
  const receivedMs = performance.now() - t0;
  // Pre-copy: every page is in: the memory at resume can be compared with the source's at the pause.
  const atResume = options.mode === "precopy" ? await digest(memory) : null;
  const state = received.state as WriterState;
  const writer = await MigrationWriter.start({
    layout: layoutFor(options.pages),
    memory,
    from: state,
    stopAfter: state.pass + options.passes,
  });
  const resumedMs = performance.now() - t0;
  let readyError: string | null = null;
  try {
    await writer.until(state.pass + options.passes, 60_000);
    await received.ready;
  } catch (e) {
    readyError = String(e);
  }
  const stats = received.stats();
  const final = await digest(memory);
  const runs = writer.runs(state.pass + 1, state.pass + options.passes);
  await writer.stop();
  await received.close();
  print({ type: "result", receivedMs, resumedMs, atResume, digest: final, runs, stats, readyError });
  return readyError === null ? EXIT.ok : EXIT.failure;
}

/** A line a child printed. */
// deno-lint-ignore no-explicit-any
type Line = any;

/** Reads a child's JSON lines, handing each to `onLine`. */
async function lines(stream: ReadableStream<Uint8Array>, onLine: (line: Line) => void): Promise<void> {
  let text = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    text += chunk;
    let nl;
    while ((nl = text.indexOf("\n")) >= 0) {
      const line = text.slice(0, nl);
      text = text.slice(nl + 1);
      try {
        onLine(JSON.parse(line));
      } catch { /* not ours */ }
    }
  }
}

const ms = (n: number) => `${n < 10 ? n.toFixed(2) : n.toFixed(1)} ms`;
const rate = (n: number) => `${bytes(Math.round(n))}/s`;

/** The demo: see the module documentation. */
async function demo(options: {
  json: boolean;
  mode: MigrationMode;
  pages: number;
  bandwidth: number | undefined;
  downtime: number;
  passes: number;
}): Promise<number> {
  const say = (line = "") => options.json || console.log(line);
  const problem = permissionProblem();
  if (problem !== undefined) {
    if (options.json) printJson({ status: "refused", reason: problem });
    else console.error(red(`uffd migrate: ${problem}`));
    return EXIT.refused;
  }
  const P = Region.pageSize;
  const layout = layoutFor(options.pages);
  say(bold("uffd migrate") + dim(` — ${options.mode}, ${bytes(options.pages * P)} of wasm memory, over loopback TCP`));
  for (
    const line of wrap(
      `A wasm writer runs in a Worker of this process: its first pass fills ${layout.dataPages} pages with data ` +
        `(the last quarter is never touched), then every pass it stamps its globals and a hot spot that moves ` +
        `${layout.hotSpot.pagesPerMs.toFixed(2)} pages per millisecond. It is moved, while it runs, to a second ` +
        `process, which then runs it on for ${options.passes} passes.`,
    )
  ) say(dim(line));
  say();
  const packageRoot = decodeURIComponent(PACKAGE.pathname).replace(/(.)\/$/, "$1");
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-ffi",
      ...(PACKAGE.protocol === "file:" ? [`--allow-read=${packageRoot}`] : []),
      "--no-prompt",
      CLI.href,
      "migrate",
      "--destination",
      `--mode=${options.mode}`,
      `--pages=${options.pages}`,
      `--passes=${options.passes}`,
    ],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const received: Line[] = [];
  let wake: (() => void) | undefined;
  const reading = lines(child.stdout, (line) => {
    received.push(line);
    wake?.();
  });
  const stderr = new Response(child.stderr).text();
  const next = async (type: string, timeoutMs: number): Promise<Line | undefined> => {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const found = received.find((l) => l.type === type || l.type === "error");
      if (found) return found;
      if (performance.now() > deadline) return undefined;
      await Promise.race([
        new Promise<void>((r) => wake = r),
        new Promise((r) => setTimeout(r, 100)),
        reading,
      ]);
      if ((await Promise.race([child.status, Promise.resolve(undefined)])) !== undefined) {
        await reading;
        return received.find((l) => l.type === type || l.type === "error");
      }
    }
  };
  const writer = await MigrationWriter.start({ layout });
  try {
    const listening = await next("listening", 30_000);
    if (listening?.type !== "listening") {
      throw new Error(`the destination did not start: ${listening?.message ?? (await stderr).trim()}`);
    }
    await writer.until(20);
    const rows: string[][] = [[
      "round",
      "pages",
      "zero",
      "bytes",
      "time",
      "bandwidth",
      "dirtied meanwhile",
      "dirty rate",
    ]];
    let shown = 0;
    const showRounds = (result: Pick<MigrationResult, "rounds">) => {
      for (; shown < result.rounds.length; shown++) {
        const r = result.rounds[shown]!;
        rows.push([
          `${r.round}${r.paused ? " (paused)" : ""}`,
          String(r.dataPages),
          String(r.zeroPages),
          bytes(r.bytes),
          ms(r.ms),
          rate(r.bandwidth),
          r.paused ? "—" : `${r.dirtyPages} pages`,
          r.paused ? "—" : `${Math.round(r.dirtyRate)} pages/s`,
        ]);
      }
    };
    let parked: WriterState | undefined;
    let pauseDigest = "";
    const progress: MigrationProgress[] = [];
    let result: MigrationResult;
    try {
      result = await Migration.send(writer.memory, {
        connection: { hostname: "127.0.0.1", port: listening.port },
        pause: async () => {
          parked = await writer.park();
        },
        resume: () => writer.resume(),
        state: () => writer.state,
        throttle: (level) => writer.throttle(level),
        maxBandwidth: options.bandwidth,
        downtime: options.downtime,
        onProgress: (p) => progress.push(p),
      });
    } catch (e) {
      const reason = e instanceof MigrationError ? e.message : String(e);
      if (options.json) printJson({ status: "failed", reason });
      else console.error(red(`uffd migrate: ${reason}`));
      return EXIT.failure;
    }
    pauseDigest = await digest(writer.memory); // still parked: the memory at the pause
    const sourceRuns = writer.runs(1, parked!.pass);
    showRounds(result);
    if (result.rounds.length > 0) say(table(rows));
    const summary = [
      `${result.mode}: ${result.rounds.length} pre-copy round${result.rounds.length === 1 ? "" : "s"}` +
      (result.mode === "precopy" ? `, ${result.converged ? "converged" : "did not converge"}` : "") +
      `; downtime ${ms(result.downtimeMs)} (the writer parked at pass ${parked!.pass} until the destination ` +
      `confirmed); ${bytes(result.bytesSent)} sent in ${ms(result.totalMs)}: ${result.dataPages} pages with ` +
      `their bytes, ${result.zeroPages} as zero runs (never sent)` +
      (result.throttle > 0 ? `; auto-converge slowed the writer to ${Math.round(100 * (1 - result.throttle))}%` : "") +
      ".",
    ];
    if (result.postcopy) {
      summary.push(
        `post-copy: the destination ran at once; ${result.postcopy.requests} pages came on first touch (their own ` +
          `connection), ${result.postcopy.streamed} in the background stream at ${rate(result.postcopy.bandwidth)}, ` +
          `${result.postcopy.skipped} skipped (already requested); every page in ${ms(result.postcopy.ms)} later.`,
      );
    }
    for (const part of summary) for (const line of wrap(part)) say(line);
    const end = await next("result", 60_000);
    const status = await child.status;
    await reading;
    if (end?.type !== "result") {
      const reason = `the destination failed: ${end?.message ?? `exit ${status.code}: ${(await stderr).trim()}`}`;
      if (options.json) printJson({ status: "failed", reason, source: result });
      else console.error(red(`uffd migrate: ${reason}`));
      return EXIT.failure;
    }
    // The check: the replays of both processes' logs, byte for byte.
    const sourceIntact = pauseDigest === await replayDigest(sourceRuns, options.pages);
    const atResume = end.atResume === null ? null : end.atResume === pauseDigest;
    const reference = await replayDigest([...sourceRuns, ...end.runs], options.pages);
    const continued = end.digest === reference;
    const ok = sourceIntact && atResume !== false && continued;
    const mark = (good: boolean) => good ? green("✓") : red("✗");
    say();
    say(`${mark(sourceIntact)} the source's memory at the pause is its writer's after pass ${parked!.pass}`);
    if (atResume !== null) say(`${mark(atResume)} the destination's memory at resume is the source's at the pause`);
    say(
      `${mark(continued)} after ${options.passes} more passes there, the destination's memory is, byte for byte, ` +
        `an undisturbed run's after pass ${parked!.pass + options.passes}`,
    );
    say(
      dim(
        `(checked by replaying both processes' logs; the destination resumed ${ms(end.resumedMs)} after it listened)`,
      ),
    );
    if (options.json) {
      printJson({
        status: ok ? "ok" : "failed",
        mode: options.mode,
        memory: { pages: options.pages, pageSize: P, bytes: options.pages * P, dataPages: layout.dataPages },
        parkedAt: parked,
        source: result,
        destination: { receivedMs: end.receivedMs, resumedMs: end.resumedMs, stats: end.stats },
        progress: progress.length,
        check: { sourceIntact, atResume, continued, reference, destination: end.digest },
      });
    }
    return ok ? EXIT.ok : EXIT.failure;
  } finally {
    await writer.stop();
    try {
      child.kill();
    } catch { /* it ended */ }
    await child.status;
  }
}

/**
 * Runs `uffd migrate` with its arguments.
 *
 * @example
 * ```ts ignore
 * import { run } from "./_migrate.ts";
 * Deno.exit(await run(["--demo", "--mode", "postcopy"]));
 * ```
 */
export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      demo: { type: "boolean", default: false },
      destination: { type: "boolean", default: false },
      mode: { type: "string", default: "precopy" },
      bandwidth: { type: "string" },
      downtime: { type: "string", default: "20" },
      memory: { type: "string", default: "64" },
      pages: { type: "string" },
      passes: { type: "string", default: "200" },
      json: { type: "boolean", default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  const mode = values.mode as MigrationMode;
  if (!MODES.includes(mode)) throw new UsageError(`--mode ${values.mode}: precopy, postcopy or hybrid`);
  const P = Region.pageSize;
  const count = (text: string, name: string) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n <= 0) throw new UsageError(`--${name} ${text}: a positive integer`);
    return n;
  };
  const pages = values.pages !== undefined ? count(values.pages, "pages") : (count(values.memory!, "memory") << 20) / P;
  if ((pages * P) % (64 * 65536) !== 0) throw new UsageError(`the memory must be whole MiB multiples of 4 MiB`);
  const passes = count(values.passes!, "passes");
  if (values.destination) return await destination({ pages, mode, passes });
  if (!values.demo) throw new UsageError("migrate needs --demo (or --destination, the demo's second process)");
  const downtime = Number(values.downtime);
  if (!(downtime > 0)) throw new UsageError(`--downtime ${values.downtime}: milliseconds, more than 0`);
  return await demo({
    json: values.json!,
    mode,
    pages,
    bandwidth: values.bandwidth === undefined ? undefined : parseBandwidth(values.bandwidth),
    downtime,
    passes,
  });
}
