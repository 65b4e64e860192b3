/**
 * What the steps of `uffd demo` share with the demo that runs them: the context
 * each step gets ({@linkcode DemoContext}) and how it reports back
 * ({@linkcode StepResult}). Apart from `_demo.ts`, so that the steps
 * (`_demo_watch.ts`, `_demo_snapshot.ts`) and the demo do not import each other.
 *
 * @example
 * ```ts
 * import type { StepResult } from "./_demo_context.ts";
 * const skipped: StepResult = { status: "skipped", data: {}, reason: "no WP_ASYNC" };
 * console.log(skipped.status); // "skipped"
 * ```
 *
 * @module
 */

import type { Feature, WriteWatchOptions } from "../mod.ts";
import type { FeaturesReport } from "./_features.ts";
import type { WasmWriter } from "./_demo_writer.ts";

/** What every step gets. */
export interface DemoContext {
  /** `--json`: steps print nothing; their data goes into the one JSON document. */
  readonly json: boolean;
  /** Prints a line on stdout in text mode (nothing with `--json`). */
  say(line?: string): void;
  /** The measured feature report (taken once). */
  readonly features: FeaturesReport;
  /** The options for `WriteWatch.start` (`--backend`, `--decline`). */
  readonly watchOptions: WriteWatchOptions;
  /** The userfaultfd features `LiveSnapshot.take` must do without (`--decline FEATURE`). */
  readonly snapshotDecline: readonly Feature[];
  /** The running wasm writer: started on first use, stopped when the demo ends. */
  writer(): Promise<WasmWriter>;
}

/** How a step ended. */
export interface StepResult {
  /** `skipped`: this kernel lacks what the step needs (not an error); `refused`: permissions or a forced choice. */
  status: "ok" | "skipped" | "refused" | "failed";
  /** The step's part of the JSON document (with `status` and `reason` added). */
  data: Record<string, unknown>;
  /** Why it was skipped, refused or failed (printed on stderr when refused or failed). */
  reason?: string;
}
