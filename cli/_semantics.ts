/**
 * `uffd semantics`: the write-protect semantics matrix of this kernel — which
 * writes a write-protect tracker sees, for each memory kind, scenario and mode —
 * measured by `measureWpSemantics()` (`kernel/semantics.ts`) and printed as one table per
 * memory kind, with the cells that lose a write said in words under each table.
 * `--compare OTHER.json` puts another kernel's matrix (saved with `--json`) beside
 * this one's and marks the cells that differ; `--from SAVED.json` uses a saved matrix
 * instead of measuring.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  losesWrite,
  measureWpSemantics,
  WP_MEMORY_KINDS,
  WP_MODES,
  WP_SCENARIOS,
  type WpCell,
  type WpMatrix,
} from "../mod.ts";
import {
  bold,
  dim,
  EXIT,
  green,
  printJson,
  progress,
  progressDone,
  red,
  table,
  UsageError,
  yellow,
} from "./_output.ts";

function mark(value: boolean | null): string {
  return value === null ? "?" : value ? "✓" : "-";
}

/** The compact text of one cell: `fault  w:-→✓`, `none*  w:✓→✓`, `w:-→✓` (async). */
export function cellText(cell: WpCell): string {
  if (cell.status === "unsupported") return dim("n/a");
  if (cell.status === "failed") return red("✗ failed");
  const written = `w:${mark(cell.writtenBefore)}→${mark(cell.writtenAfter)}`;
  const lost = losesWrite(cell) === true;
  const async = WP_MODES.find((m) => m.id === cell.mode)!.async;
  if (async) return lost ? red(`${written}*`) : written;
  const fault = cell.faulted ? green("fault ") : red("none* ");
  return `${fault} ${written}`;
}

function list(items: string[]): string {
  return items.length === 0 ? "none" : items.join(", ");
}

/** The sentence under a table: which cells lose a write, in words (a mode nothing measured says so). */
export function lostWritesLine(matrix: WpMatrix, memory: string): string {
  const parts: string[] = [];
  for (const mode of WP_MODES) {
    const cells = matrix.cells.filter((c) => c.memory === memory && c.mode === mode.id);
    if (cells.length === 0) continue;
    if (cells.every((c) => losesWrite(c) === null)) {
      parts.push(`${mode.id}: not measured`);
      continue;
    }
    const lost = cells.filter((c) => losesWrite(c) === true).map((c) =>
      c.scenario === "unprotected" ? "unprotected (on purpose)" : c.scenario
    );
    const unknown = cells.filter((c) => losesWrite(c) === null).length;
    parts.push(`${mode.id}: ${list(lost)}${unknown > 0 ? ` (${unknown} not measured)` : ""}`);
  }
  const lines = [`lost writes (${memory}) — ${parts.join("; ")}.`];
  const early = matrix.cells.filter((c) =>
    c.memory === memory && c.status === "ok" && WP_MODES.find((m) => m.id === c.mode)!.async && c.writtenBefore
  );
  const earlyScenarios = [...new Set(early.map((c) => c.scenario))];
  if (earlyScenarios.length > 0) {
    lines.push(
      `  in async modes these pages are reported written already before the write (the write itself cannot be ` +
        `told apart): ${list(earlyScenarios)}.`,
    );
  }
  return lines.join("\n");
}

/** Prints the matrix as text: one table per memory kind, the lost writes in words, a legend. */
export function printSemantics(matrix: WpMatrix): void {
  console.log(
    `${bold("write-protect semantics")} on Linux ${matrix.kernel} (${matrix.arch}), ${matrix.cells.length} cells ` +
      `measured in ${matrix.elapsedMs} ms`,
  );
  console.log(
    dim(
      "each cell: a fresh mapping and userfaultfd (PAGEFAULT_FLAG_WP + the mode's features, no events), the " +
        "range protected, the scenario applied, then one write to the page",
    ),
  );
  const modes = WP_MODES.filter((m) => matrix.cells.some((c) => c.mode === m.id));
  for (const memory of WP_MEMORY_KINDS) {
    const cells = matrix.cells.filter((c) => c.memory === memory.id);
    if (cells.length === 0) continue;
    console.log(`\n${bold(memory.id)} ${dim(`— ${memory.description}`)}`);
    const rows = WP_SCENARIOS.filter((s) => cells.some((c) => c.scenario === s.id)).map((s) => [
      s.id,
      ...modes.map((m) => {
        const cell = cells.find((c) => c.scenario === s.id && c.mode === m.id);
        return cell ? cellText(cell) : "";
      }),
    ]);
    console.log(table([["scenario", ...modes.map((m) => m.id)], ...rows]));
    console.log(lostWritesLine(matrix, memory.id));
    for (const c of cells.filter((c) => c.status !== "ok")) {
      const line = `  ${c.scenario} / ${c.mode}: ${c.error}`;
      console.log(c.status === "failed" ? red(line) : dim(line));
    }
  }
  console.log(`\n${bold("legend")}`);
  console.log(`  ${green("fault")}   sync modes: the write raised a write-protect fault that the handler saw`);
  console.log(`  ${red("none*")}   sync modes: the write went through without a fault — lost to a sync tracker`);
  console.log(`  w:B→A   ${writtenLegend(matrix)} just before → just after the write (✓ yes, - no, ? unknown)`);
  console.log(`  ${red("w:B→-*")}  async modes: the page is not reported written after the write — lost`);
  console.log(
    `  ${dim("n/a")}     the kernel lacks a feature the mode needs;  ${red("✗ failed")}: the cell could not run`,
  );
  console.log(dim("  modes: sync = PAGEFAULT_FLAG_WP only; +unpopulated = WP_UNPOPULATED; async = WP_ASYNC"));
  for (const s of WP_SCENARIOS) console.log(dim(`  ${s.id.padEnd(19)} ${s.description}`));
  const failed = matrix.cells.filter((c) => c.status === "failed").length;
  if (failed > 0) console.log(yellow(`\n${failed} cell(s) could not run; see the lines under the tables`));
}

/** What "w:" means for this matrix: where its "written" answers came from. */
function writtenLegend(matrix: WpMatrix): string {
  switch (matrix.writtenFrom) {
    case "PAGEMAP_SCAN":
      return "PAGEMAP_SCAN PAGE_IS_WRITTEN";
    case "pagemap":
      return "the uffd-wp bit of /proc/self/pagemap clear (no PAGEMAP_SCAN here)";
    default:
      return "written (not measurable on this kernel)";
  }
}

/** One cell of two matrices side by side. */
export interface ComparedCell {
  readonly memory: WpCell["memory"];
  readonly scenario: WpCell["scenario"];
  readonly mode: WpCell["mode"];
  /** This side's cell (`null`: absent from its matrix). */
  readonly a: WpCell | null;
  /** The other side's cell. */
  readonly b: WpCell | null;
  /** The cells disagree: status, fault or a written answer. */
  readonly differs: boolean;
}

/** Two matrices side by side, as `uffd semantics --compare --json` prints it. */
export interface WpComparison {
  readonly a: { readonly kernel: string; readonly arch: string; readonly writtenFrom: string | null };
  readonly b: { readonly kernel: string; readonly arch: string; readonly writtenFrom: string | null };
  readonly cells: readonly ComparedCell[];
  /** How many cells differ. */
  readonly differing: number;
  /** Cells measured (`ok`) on both kernels. */
  readonly bothMeasured: number;
  /** Of those, how many differ: a difference in behaviour, not in what the kernels offer. */
  readonly differingMeasured: number;
}

function same(a: WpCell | null, b: WpCell | null): boolean {
  if (a === null || b === null) return a === b;
  return a.status === b.status && a.faulted === b.faulted && a.writtenBefore === b.writtenBefore &&
    a.writtenAfter === b.writtenAfter;
}

/**
 * Puts two matrices side by side, cell by cell in table order.
 *
 * @example
 * ```ts
 * import { compareMatrices } from "./_semantics.ts";
 * const m = { kernel: "x", arch: "x86_64", pageSize: 4096, writtenFrom: null, cells: [], lostWrites: [], elapsedMs: 0 };
 * console.log(compareMatrices(m, m).differing); // 0
 * ```
 */
export function compareMatrices(a: WpMatrix, b: WpMatrix): WpComparison {
  const find = (m: WpMatrix, memory: string, scenario: string, mode: string) =>
    m.cells.find((c) => c.memory === memory && c.scenario === scenario && c.mode === mode) ?? null;
  const cells: ComparedCell[] = [];
  for (const memory of WP_MEMORY_KINDS) {
    for (const scenario of WP_SCENARIOS) {
      for (const mode of WP_MODES) {
        const ca = find(a, memory.id, scenario.id, mode.id);
        const cb = find(b, memory.id, scenario.id, mode.id);
        if (ca === null && cb === null) continue;
        cells.push({ memory: memory.id, scenario: scenario.id, mode: mode.id, a: ca, b: cb, differs: !same(ca, cb) });
      }
    }
  }
  const side = (m: WpMatrix) => ({ kernel: m.kernel, arch: m.arch, writtenFrom: m.writtenFrom ?? null });
  const both = cells.filter((c) => c.a?.status === "ok" && c.b?.status === "ok");
  return {
    a: side(a),
    b: side(b),
    cells,
    differing: cells.filter((c) => c.differs).length,
    bothMeasured: both.length,
    differingMeasured: both.filter((c) => c.differs).length,
  };
}

/** Prints two matrices side by side: one table per memory kind, a row per scenario and mode, `≠` where they differ. */
export function printComparison(c: WpComparison, names: [string, string]): void {
  console.log(
    `${bold("write-protect semantics")}: Linux ${c.a.kernel} (${names[0]}) beside Linux ${c.b.kernel} ` +
      `(${names[1]}); ${c.differing} of ${c.cells.length} cells differ (${yellow("≠")}), ` +
      `${c.differingMeasured} of the ${c.bothMeasured} measured on both`,
  );
  for (const memory of WP_MEMORY_KINDS) {
    const cells = c.cells.filter((x) => x.memory === memory.id);
    if (cells.length === 0) continue;
    console.log(`\n${bold(memory.id)} ${dim(`— ${memory.description}`)}`);
    const text = (cell: WpCell | null) => cell === null ? dim("absent") : cellText(cell);
    const rows = cells.map((x) => [
      x.scenario,
      x.mode,
      text(x.a),
      text(x.b),
      x.differs ? yellow("≠") : "",
    ]);
    console.log(table([["scenario", "mode", c.a.kernel, c.b.kernel, ""], ...rows]));
  }
  console.log(
    `\n${bold("legend")}: as in \`uffd semantics\`; w: is ${c.a.kernel}: ${c.a.writtenFrom ?? "unmeasured"}, ` +
      `${c.b.kernel}: ${c.b.writtenFrom ?? "unmeasured"}`,
  );
}

/** Reads a matrix saved by `uffd semantics --json`; a file that is not one is a usage error. */
function readMatrix(path: string): WpMatrix {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`no such file: ${path}`);
    throw e; // a permission error: the CLI says to run with --allow-read
  }
  let m: WpMatrix;
  try {
    m = JSON.parse(text);
  } catch {
    throw new UsageError(`${path} is not JSON (save a matrix with uffd semantics --json)`);
  }
  if (m === null || typeof m !== "object" || typeof m.kernel !== "string" || !Array.isArray(m.cells)) {
    throw new UsageError(`${path} is not a matrix saved by uffd semantics --json`);
  }
  return m;
}

/**
 * Runs `uffd semantics [--json] [--compare OTHER.json] [--from SAVED.json]`: exit 0, 1 when a
 * measured cell failed, 2 for a file that is not a saved matrix, 3 when no userfaultfd can be created.
 */
export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { json: { type: "boolean" }, compare: { type: "string" }, from: { type: "string" } },
    strict: true,
  });
  const other = values.compare === undefined ? undefined : readMatrix(values.compare);
  let matrix: WpMatrix;
  if (values.from !== undefined) matrix = readMatrix(values.from);
  else {
    try {
      matrix = await measureWpSemantics({
        onCell: (c, done, total) => progress(`measuring ${done}/${total}: ${c.memory} ${c.scenario} ${c.mode}`),
      });
    } finally {
      progressDone();
    }
  }
  if (other) {
    const comparison = compareMatrices(matrix, other);
    if (values.json) printJson(comparison);
    else printComparison(comparison, [values.from ?? "this machine", values.compare!]);
  } else if (values.json) printJson(matrix);
  else printSemantics(matrix);
  return values.from === undefined && matrix.cells.some((c) => c.status === "failed") ? EXIT.failure : EXIT.ok;
}
