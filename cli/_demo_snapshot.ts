/**
 * The demo's live snapshot: `LiveSnapshot.take(memory, { sink })` on the shared
 * `WebAssembly.Memory` the wasm writer keeps writing to, into a `Uint8Array`,
 * while the writer goes on; then the image is checked against the writer's log
 * ({@link ./demo_snapshot_check.ts}): it must be, byte for byte, the memory right
 * after one of the writer's stores, made between `take()` being called and
 * `take()` returning.
 *
 * `take()` is a mark of the writer (`WasmWriter.markAsync`), which is what ties
 * the writer's log to it. The step prints what the snapshot did — pages, bytes,
 * time, pages saved by the copier and by faults (the writer's first write to a
 * page not saved yet waits while the fault handler saves it), bandwidth — and the
 * check.
 *
 * When it cannot run it says why and what to change: `refused` when the
 * permissions do not let `LiveSnapshot`'s Workers load the package's modules
 * (`--allow-read` of the package's directory, checked before anything starts; for
 * a remote package, the Workers' import says so) or no userfaultfd can be
 * created; `skipped` when this kernel lacks what it needs (or `--decline` made it
 * so).
 *
 * @example
 * ```ts
 * import { workerAccess } from "./_demo_snapshot.ts";
 * console.log(workerAccess()); // undefined (the tests run with --allow-all)
 * ```
 *
 * @module
 */

import { LiveSnapshot, LiveSnapshotError, type SnapshotResult, UffdError } from "../mod.ts";
import type { DemoContext, StepResult } from "./_demo_context.ts";
import { checkSnapshot, type SnapshotCheck } from "./_demo_snapshot_check.ts";
import { wrap } from "./_demo_watch.ts";
import { bold, bytes, dim, green, red, yellow } from "./_output.ts";

/** The package's directory (or remote base), from which `LiveSnapshot`'s Workers load their modules. */
const PACKAGE = new URL("../", import.meta.url);

/**
 * Whether `LiveSnapshot`'s Workers may load the package's modules under the
 * current permissions: `undefined` when they may, else what is missing and the
 * flag that grants it. Asked of `Deno.permissions` (no prompt), before anything
 * starts: a Worker refused its module dies with an error printed on stderr.
 *
 * @example
 * ```ts
 * import { workerAccess } from "./_demo_snapshot.ts";
 * const missing = workerAccess();
 * console.log(missing === undefined || missing.includes("--allow-")); // true
 * ```
 */
export function workerAccess(): string | undefined {
  if (PACKAGE.protocol === "file:") {
    const path = decodeURIComponent(PACKAGE.pathname).replace(/(.)\/$/, "$1");
    if (Deno.permissions.querySync({ name: "read", path }).state === "granted") return undefined;
    return `LiveSnapshot's two Workers load the package's modules from ${path}, which needs ` +
      `--allow-read=${path} (or -A)`;
  }
  if (PACKAGE.protocol === "https:" || PACKAGE.protocol === "http:") {
    // Deno allows some hosts (jsr.io among them) by default, which the query does not show:
    // refuse only what is denied outright, and let a refused import say so when the Worker starts.
    const host = PACKAGE.host;
    if (Deno.permissions.querySync({ name: "import", host }).state !== "denied") return undefined;
    return `LiveSnapshot's two Workers import the package's modules from ${host}, which needs ` +
      `--allow-import=${host} (or -A)`;
  }
  return undefined;
}

/** A rate in bytes per second, binary units: `2.5 GiB/s`. */
function rate(bytesPerSecond: number): string {
  return `${bytes(Math.round(bytesPerSecond))}/s`;
}

/** The bucket of the median writer's wait (buckets `[0, 1)`, `[1, 2)`, `[2, 4)`, … µs), as text. */
function medianWait(stallMicros: readonly number[]): string | undefined {
  const total = stallMicros.reduce((a, b) => a + b, 0);
  if (total === 0) return undefined;
  let seen = 0;
  for (let i = 0; i < stallMicros.length; i++) {
    seen += stallMicros[i]!;
    if (2 * seen >= total) {
      const lo = i === 0 ? 0 : 2 ** (i - 1);
      return i === stallMicros.length - 1 ? `${lo} µs or more` : `${lo}–${2 ** i} µs`;
    }
  }
  return undefined;
}

const count = (n: number) => n.toLocaleString("en-US");

const ordinal = (n: number) => {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ["th", "st", "nd", "rd"][n % 10] ?? "th";
  return `${count(n)}${suffix}`;
};

/** The check's lines, plain text (colored by the caller). */
function describeCheck(c: SnapshotCheck, takeMs: number, passesAtDone: number): string[] {
  const w = c.window;
  const during = `${w.passes} pass${w.passes === 1 ? "" : "es"}, ${count(w.stores)} stores, ran meanwhile`;
  if (c.ok && c.instant) {
    const i = c.instant;
    const where = i.pass === 0
      ? "before the writer's first store"
      : `right after the writer's ${ordinal(i.totalStores)} store (` +
        (i.store === i.storesInPass
          ? `the end of pass ${i.pass}`
          : `pass ${i.pass}, ${i.store} of its ${i.storesInPass}`) +
        ")";
    return [
      `consistent: yes — all ${bytes(c.bytes)} are, byte for byte, the memory ${where}, one of the ` +
      `${count(w.stores + 1)} instants between take() being called and returning ${takeMs.toFixed(0)} ms later: ` +
      `${during}.`,
      `Checked by replaying the writer's log, store by store: the image holds every store of the passes that ` +
      `ended before take() began, none of those that began after it returned, and of the stores in between ` +
      `exactly those up to one instant. The writer ` +
      `made ${count(Math.max(0, passesAtDone - i.pass))} more passes while the pages were being saved: none of ` +
      `their stores is in the image.`,
    ];
  }
  if (c.reason) return [`consistent: not checked — ${c.reason}.`];
  const closest = c.closest!;
  const pages = closest.pages.join(", ") + (closest.pages.length === 16 ? ", …" : "");
  return [
    `consistent: NO — the image is the memory at none of the ${count(w.stores + 1)} instants between take() ` +
    `being called and returning ${takeMs.toFixed(0)} ms later (${during}). Closest: after the writer's ` +
    `${ordinal(closest.instant.totalStores)} ` +
    `store (pass ${closest.instant.pass}, ${closest.instant.store} of ${closest.instant.storesInPass}), from ` +
    `which ${closest.slots} stamp${closest.slots === 1 ? "" : "s"} differ, in pages ${pages}.`,
  ];
}

/** The step's text: what the snapshot did, and the check. */
function report(
  ctx: DemoContext,
  r: SnapshotResult,
  size: number,
  times: { takeMs: number; doneMs: number; passesAtDone: number },
  check: SnapshotCheck,
): void {
  const { takeMs, doneMs, passesAtDone } = times;
  const wait = medianWait(r.stallMicros);
  const lines = [
    `${r.pages} pages (${bytes(size)}) saved in ${r.elapsedMs.toFixed(1)} ms from the instant the memory was ` +
    `protected; take() took ${takeMs.toFixed(0)} ms (it starts two Workers), done came ${doneMs.toFixed(0)} ms ` +
    `after it returned.`,
    `Saved by the copier: ${r.byCopier}; by faults: ${r.byFault} (the writer's first write to a page not saved ` +
    `yet${wait ? `, median wait ${wait}` : ""}${
      r.faults > r.byFault ? `; ${r.faults - r.byFault} more faults hit pages the copier had just saved` : ""
    }). ${r.zeroPages} were zero pages, saved without being read` +
    (r.wpUnpopulated ? " (WP_UNPOPULATED)." : " (mapped to the zero page first: WP_UNPOPULATED declined)."),
    `Bandwidth: ${rate(r.bytesPerSecond)} (${bytes(size)} in ${r.elapsedMs.toFixed(1)} ms, mostly the copier's ` +
    `Worker starting up; docs/live-snapshot.md has figures for 1 GiB).`,
  ];
  for (const line of lines) for (const part of wrap(line)) ctx.say(part);
  const [verdict, how] = describeCheck(check, takeMs, passesAtDone);
  const paint = check.ok ? green : check.reason ? yellow : red;
  const mark = check.ok ? green("✓") : check.reason ? yellow("!") : red("✗");
  wrap(verdict!, 78).forEach((part, i) => ctx.say(i === 0 ? `${mark} ${paint(part)}` : `  ${paint(part)}`));
  if (how) { for (const part of wrap(how)) ctx.say(dim(part)); }
}

/**
 * The live snapshot step: see the module documentation.
 *
 * @example
 * ```ts ignore
 * import { liveSnapshot } from "./_demo_snapshot.ts";
 * const result = await liveSnapshot(ctx); // ctx: the demo's context
 * ```
 */
export async function liveSnapshot(ctx: DemoContext): Promise<StepResult> {
  const writer = await ctx.writer();
  const memory = { bytes: writer.memory.buffer.byteLength, pages: writer.pages, pageSize: writer.pageSize };
  const declined = [...ctx.snapshotDecline];
  let headed = false;
  const stop = (status: "skipped" | "refused", why: string): StepResult => {
    const reason = `live snapshot ${status}: ${why}`;
    if (!headed) ctx.say();
    for (const line of wrap(reason)) ctx.say((status === "refused" ? red : yellow)(line));
    return { status, reason, data: { memory, decline: declined } };
  };

  const access = workerAccess();
  if (access !== undefined) return stop("refused", access);

  ctx.say();
  ctx.say(bold("live snapshot"));
  headed = true;
  for (
    const line of wrap(
      `Now LiveSnapshot.take() copies that memory while the writer keeps going: it write-protects the whole ` +
        `memory at one instant and returns. A copier thread then saves the pages in address order, unprotecting ` +
        `them as it goes; a write to a page not saved yet faults, and waits while the fault handler saves the ` +
        `page first. Into a Uint8Array.`,
    )
  ) ctx.say(line);
  ctx.say();

  const sink = new Uint8Array(memory.bytes);
  let taken;
  try {
    taken = await writer.markAsync(() => LiveSnapshot.take(writer.memory, { sink, decline: declined }));
  } catch (e) {
    if (e instanceof UffdError) {
      const permissions = !ctx.features.available;
      return stop(
        permissions ? "refused" : "skipped",
        e.message + (permissions ? `. To change: ${ctx.features.access.summary}` : ""),
      );
    }
    // A Worker refused its module (a permission the check above could not see): its first line says which.
    // deno-lint-ignore no-control-regex
    const first = (e instanceof Error ? e.message : String(e)).split("\n")[0]!.replace(/\x1b\[[0-9;]*m/g, "");
    if (e instanceof LiveSnapshotError && /Requires \w+ access/.test(first)) return stop("refused", first);
    throw e;
  }
  await using snap = taken.result;
  const returned = performance.now();
  let result: SnapshotResult;
  try {
    result = await snap.done;
  } catch (e) {
    const reason = `live snapshot: ${e instanceof Error ? e.message : String(e)}`;
    for (const line of wrap(reason)) ctx.say(red(line));
    return { status: "failed", reason, data: { memory, decline: declined } };
  }
  const doneMs = performance.now() - returned;
  const passesAtDone = writer.passes;
  await writer.settled(taken.index);
  const check = checkSnapshot(sink, writer.passLog, taken.index, writer.pageSize);
  report(ctx, result, result.pages * snap.pageSize, { takeMs: taken.ms, doneMs, passesAtDone }, check);
  return {
    status: check.ok ? "ok" : "failed",
    ...(check.ok ? {} : {
      reason: check.reason
        ? `live snapshot: the check could not be made: ${check.reason}`
        : `live snapshot: the image is not the memory at any one instant (pages ${check.closest!.pages.join(", ")})`,
    }),
    data: {
      memory,
      sink: "Uint8Array",
      decline: declined,
      takeMs: Number(taken.ms.toFixed(3)),
      doneMs: Number(doneMs.toFixed(3)),
      writer: { passesAtTake: taken.passes, passesAtDone },
      bytes: result.pages * snap.pageSize,
      ...result,
      elapsedMs: Number(result.elapsedMs.toFixed(3)),
      bytesPerSecond: Math.round(result.bytesPerSecond),
      consistent: check.ok,
      check,
    },
  };
}
