/**
 * `uffd demo`: a short guided run on this machine, in steps. Each step prints as
 * it goes (text) or contributes one key to the single JSON document (`--json`):
 *
 * 1. `features` — the feature summary: kernel, architecture, page size, the
 *    userfaultfd features, the ones this demo needs, and access.
 * 2. `writeWatch` — a live write watch ({@link ./demo_watch.ts}) over a shared
 *    `WebAssembly.Memory` that a wasm module keeps writing to from a Worker
 *    ({@link ./demo_writer.ts}), as a page heat map per round, each round checked
 *    against the writer's own log.
 * 3. `liveSnapshot` — a live snapshot ({@link ./demo_snapshot.ts}) of that memory
 *    while the writer keeps writing, into a `Uint8Array`, checked against the
 *    writer's log: byte for byte the memory at one instant between `take()` being
 *    called and returning.
 *
 * The writer is shared by the steps: {@linkcode DemoContext.writer} starts it on
 * first use, and the demo stops it at the end.
 *
 * Exit codes: 0 when every step ran or was skipped because this kernel lacks what
 * it needs; 1 when a step failed (a check did not hold, the writer died); 3 when
 * the permissions (or a forced `--backend`) refuse it, with what to change.
 *
 * @example
 * ```ts
 * import { run } from "./_demo.ts";
 * console.log(typeof run); // "function"
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type Feature, FEATURES, type WriteWatchBackendName, type WriteWatchOptions } from "../mod.ts";
import { featuresReport } from "./_features.ts";
import { bold, dim, EXIT, green, printJson, red, UsageError } from "./_output.ts";
import { WasmWriter } from "./_demo_writer.ts";
import { liveWriteWatch, wrap } from "./_demo_watch.ts";
import { liveSnapshot } from "./_demo_snapshot.ts";
import type { DemoContext, StepResult } from "./_demo_context.ts";

/** One step of the demo. */
export interface DemoStep {
  /** Its key in the JSON document. */
  key: string;
  /** Runs it. */
  run(ctx: DemoContext): Promise<StepResult>;
}

/** The feature summary: one short paragraph. */
function featureSummary(ctx: DemoContext): Promise<StepResult> {
  const r = ctx.features;
  const supported = r.features.filter((f) => f.supported).length;
  const has = (name: string) => r.features.find((f) => f.name === name)?.supported ?? false;
  const needed: Record<string, boolean> = {
    WP_ASYNC: has("WP_ASYNC"),
    WP_UNPOPULATED: has("WP_UNPOPULATED"),
    PAGEMAP_SCAN: r.pagemapScan.available,
  };
  const mark = (ok: boolean) => ok ? green("✓") : red("✗");
  ctx.say(bold("uffd demo") + dim(` — Linux ${r.kernel} ${r.arch}, page size ${r.pageSize}`));
  ctx.say(
    r.available
      ? `userfaultfd: ${supported} of ${r.features.length} features (${r.featureMask}), created via ${r.origin}`
      : `userfaultfd: ${red("cannot be created by this process")}`,
  );
  ctx.say(`this demo uses: ${Object.entries(needed).map(([name, ok]) => `${name} ${mark(ok)}`).join("  ")}`);
  for (const line of wrap(`access: ${r.access.summary}`)) ctx.say(dim(line));
  return Promise.resolve({
    status: "ok",
    data: {
      userfaultfd: r.available,
      origin: r.origin,
      featureMask: r.featureMask,
      supported,
      known: r.features.length,
      used: needed,
      access: r.access.summary,
    },
  });
}

/** The steps, in order; they share the writer, which keeps running from one to the next. */
const STEPS: readonly DemoStep[] = [
  { key: "features", run: featureSummary },
  { key: "writeWatch", run: liveWriteWatch },
  { key: "liveSnapshot", run: liveSnapshot },
];

const BACKENDS: readonly WriteWatchBackendName[] = ["async", "sync", "soft-dirty"];

function backendName(value: string, option: string): WriteWatchBackendName {
  if (!(BACKENDS as readonly string[]).includes(value)) {
    throw new UsageError(`--${option}: unknown backend "${value}" (${BACKENDS.join(", ")})`);
  }
  return value as WriteWatchBackendName;
}

/** `--decline NAME`: a write-watch backend, or a userfaultfd feature (for the watch and the snapshot). */
function declined(value: string): WriteWatchBackendName | Feature {
  if (FEATURES.some((f) => f.name === value)) return value as Feature;
  if ((BACKENDS as readonly string[]).includes(value)) return value as WriteWatchBackendName;
  throw new UsageError(
    `--decline: "${value}" is neither a backend (${
      BACKENDS.join(", ")
    }) nor a userfaultfd feature (e.g. WP_UNPOPULATED)`,
  );
}

/** Runs `uffd demo [--json] [--backend NAME] [--decline NAME,…]`. */
export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { json: { type: "boolean" }, backend: { type: "string" }, decline: { type: "string", multiple: true } },
    strict: true,
  });
  const watchOptions: WriteWatchOptions = {};
  if (values.backend !== undefined && values.backend !== "auto") {
    watchOptions.backend = backendName(values.backend, "backend");
  }
  const decline = (values.decline ?? []).flatMap((d) => d.split(",")).filter((d) => d !== "").map(declined);
  if (decline.length > 0) watchOptions.decline = decline;
  const snapshotDecline = decline.filter((d): d is Feature => !(BACKENDS as readonly string[]).includes(d));

  const json = values.json ?? false;
  let writer: Promise<WasmWriter> | undefined;
  const ctx: DemoContext = {
    json,
    say: json ? () => {} : (line = "") => console.log(line),
    features: featuresReport(),
    watchOptions,
    snapshotDecline,
    writer: () => writer ??= WasmWriter.start(),
  };
  const document: Record<string, unknown> = {
    kernel: ctx.features.kernel,
    arch: ctx.features.arch,
    pageSize: ctx.features.pageSize,
  };
  const results: StepResult[] = [];
  try {
    for (const step of STEPS) {
      let result: StepResult;
      try {
        result = await step.run(ctx);
      } catch (e) {
        result = { status: "failed", data: {}, reason: `${step.key}: ${e instanceof Error ? e.message : String(e)}` };
      }
      results.push(result);
      document[step.key] = {
        status: result.status,
        ...(result.reason ? { reason: result.reason } : {}),
        ...result.data,
      };
    }
  } finally {
    if (writer) await (await writer.catch(() => undefined))?.stop();
  }
  if (json) printJson(document);
  for (const r of results) {
    if (r.status === "failed" || r.status === "refused") console.error(red(`uffd demo: ${r.reason}`));
  }
  if (results.some((r) => r.status === "failed")) return EXIT.failure;
  if (results.some((r) => r.status === "refused")) return EXIT.refused;
  return EXIT.ok;
}
