/**
 * `uffd semantics`: the write-protect semantics matrix of this kernel — which
 * writes a write-protect tracker sees, for each memory kind, scenario and mode —
 * measured by `measureWpSemantics()` (`kernel/semantics.ts`) and printed as one table per
 * memory kind, with the cells that lose a write said in words under each table.
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
import { bold, dim, EXIT, green, printJson, progress, progressDone, red, table, yellow } from "./_output.ts";

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

/** The sentence under a table: which cells lose a write, in words. */
export function lostWritesLine(matrix: WpMatrix, memory: string): string {
  const parts: string[] = [];
  for (const mode of WP_MODES) {
    const cells = matrix.cells.filter((c) => c.memory === memory && c.mode === mode.id);
    if (cells.length === 0) continue;
    const lost = cells.filter((c) => losesWrite(c) === true).map((c) =>
      c.scenario === "unprotected" ? "unprotected (on purpose)" : c.scenario
    );
    parts.push(`${mode.id}: ${list(lost)}`);
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
  console.log("  w:B→A   PAGEMAP_SCAN PAGE_IS_WRITTEN just before → just after the write (✓ yes, - no, ? unknown)");
  console.log(`  ${red("w:B→-*")}  async modes: the page is not reported written after the write — lost`);
  console.log(
    `  ${dim("n/a")}     the kernel lacks a feature the mode needs;  ${red("✗ failed")}: the cell could not run`,
  );
  console.log(dim("  modes: sync = PAGEFAULT_FLAG_WP only; +unpopulated = WP_UNPOPULATED; async = WP_ASYNC"));
  for (const s of WP_SCENARIOS) console.log(dim(`  ${s.id.padEnd(19)} ${s.description}`));
  const failed = matrix.cells.filter((c) => c.status === "failed").length;
  if (failed > 0) console.log(yellow(`\n${failed} cell(s) could not run; see the lines under the tables`));
}

/** Runs `uffd semantics [--json]`: exit 0, 1 when a cell failed, 3 when no userfaultfd can be created. */
export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: "boolean" } }, strict: true });
  let matrix: WpMatrix;
  try {
    matrix = await measureWpSemantics({
      onCell: (c, done, total) => progress(`measuring ${done}/${total}: ${c.memory} ${c.scenario} ${c.mode}`),
    });
  } finally {
    progressDone();
  }
  if (values.json) printJson(matrix);
  else printSemantics(matrix);
  return matrix.cells.some((c) => c.status === "failed") ? EXIT.failure : EXIT.ok;
}
