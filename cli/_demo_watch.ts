/**
 * The demo's live write watch: `WriteWatch.start(memory)` on the shared
 * `WebAssembly.Memory` the wasm writer keeps writing to, then a few rounds of
 * `collect()`, each printed as a page heat map and checked against the writer's log.
 *
 * **The check** (see `_demo_writer.ts` for the log): the watch's start and each
 * `collect()` are marks. At round `r` (mark `m`), once the log is final for `m`:
 *
 * - every page written by a pass that began after the watch started and ended
 *   before this `collect()` began must have been reported by now — by this
 *   `collect()`, or, when the pass was still writing while an earlier `collect()`
 *   ran, by that one (`due`); otherwise it is **missed**;
 * - every page this `collect()` reports must have been written by a pass that
 *   could land in it (`may`); otherwise it was **never written**.
 *
 * Both follow from `collect()` being get-and-clear and from the order of the
 * writer's loads and stores, so a `✓` cannot be wrong, and a `✗` is a real lost or
 * invented write. Pages written while a `collect()` runs may show up in that round
 * or the next: they are counted apart (`racing`) and never asserted either way.
 *
 * @example
 * ```ts
 * import { heatCells } from "./_demo_watch.ts";
 * console.log(heatCells([0, 1, 2, 3, 5], 8, 4)); // [4, 1]
 * ```
 *
 * @module
 */

import { UffdError, type WriteSet, WriteWatch } from "../mod.ts";
import type { DemoContext, StepResult } from "./_demo_context.ts";
import type { WriterLayout } from "./_demo_writer.ts";
import { bold, bytes, cyan, dim, green, red, width, yellow } from "./_output.ts";

/** Rounds of the watch. */
export const ROUNDS = 5;
/** Milliseconds between two `collect()`s. */
export const INTERVAL_MS = 150;
/** Cells of the heat map. */
const CELLS = 64;

/** The check of one round: see the module documentation. */
export interface RoundCheck {
  /** `true` when nothing was missed and nothing unwritten was reported. */
  ok: boolean;
  /** Pages written after the watch started and before this `collect()` began. */
  writtenBefore: number;
  /** Of those, reported by this `collect()`. */
  reportedHere: number;
  /** Of those, reported by an earlier one (written while it ran). */
  reportedEarlier: number;
  /** Of those, reported by none: lost writes. */
  missed: number[];
  /** Pages reported that no pass could have written in this round. */
  neverWritten: number[];
  /** Pages reported that were being written while this `collect()` ran (here or next time: both are right). */
  racing: number;
  /** Pages the watch reported it could no longer watch. */
  lost: number;
}

/** One round as `--json` prints it. */
export interface WatchRound {
  /** 1, 2, … */
  round: number;
  /** Milliseconds since the watch started, when this `collect()` began. */
  atMs: number;
  /** How long `collect()` took, in milliseconds. */
  collectMs: number;
  /** Number of pages reported written. */
  count: number;
  /** The pages reported written, ascending. */
  pages: number[];
  /** The writer's progress when `collect()` returned. */
  writer: { passes: number; stores: number };
  /** The check against the writer's log. */
  check: RoundCheck;
  /**
   * The log it was checked against: `due` as `[page, earliest round]` (each page
   * must have been reported by a round from that one to this one), `may` as the
   * pages this round may report.
   */
  log: { due: [number, number][]; may: number[] };
}

/**
 * Written pages per heat-map cell: `pages` pages in cells of `perCell` pages.
 *
 * @example
 * ```ts
 * import { heatCells } from "./_demo_watch.ts";
 * console.log(heatCells([1, 6, 7], 8, 2)); // [1, 0, 0, 2]
 * ```
 */
export function heatCells(written: Iterable<number>, pages: number, perCell: number): number[] {
  const cells = new Array<number>(Math.ceil(pages / perCell)).fill(0);
  for (const page of written) cells[Math.floor(page / perCell)]!++;
  return cells;
}

const SHADES = ["░", "▒", "▓", "█"];

/** One character per cell: `·` for none, then `░ ▒ ▓ █` by the written fraction of the cell. */
function heatLine(cells: number[], perCell: number): string {
  return cells.map((n) => n === 0 ? dim("·") : cyan(SHADES[Math.ceil((n / perCell) * 4) - 1]!)).join("");
}

/** The regions of the layout, drawn under the heat map's columns. */
function regionLine(layout: WriterLayout, perCell: number): string {
  const line = new Array<string>(Math.ceil(layout.pages / perCell)).fill(" ");
  const draw = (first: number, pages: number, label: string, short: string) => {
    const from = Math.floor(first / perCell);
    const width = Math.ceil(pages / perCell);
    let text = short.slice(0, width).padEnd(width);
    if (width >= label.length + 4) {
      const left = Math.floor((width - label.length - 2) / 2);
      const right = width - label.length - 2 - left;
      text = "┌" + "─".repeat(left - 1) + ` ${label} ` + "─".repeat(right - 1) + "┐";
    }
    [...text].forEach((c, i) => line[from + i] = c);
  };
  draw(layout.globals.first, layout.globals.pages, "globals", "g");
  draw(layout.hotSpot.first, layout.hotSpot.pages, "moving hot spot", "h");
  draw(layout.stripes.first, layout.stripes.pages, "stripes", "s");
  return line.join("");
}

/** The writer's log for one round, in round numbers (see the module documentation). */
export interface RoundLog {
  /**
   * Per page: the earliest round that may report the writes that oblige this round
   * (this round for a write that fell between two scans, an earlier one for a write
   * made while that one ran); 0 or less when no write obliges this round.
   */
  due: ArrayLike<number>;
  /** Per page: 1 when a write that may land in this round wrote it. */
  may: ArrayLike<number>;
}

/**
 * Checks round `round` (1 for the first) against the writer's log: `reported[i]`
 * is what round `i + 1` reported, up to this one. `atomic`: whether the backend's
 * `collect()` is get-and-clear (a miss is then a failure).
 *
 * @example
 * ```ts
 * import { WriteSet } from "@uffd/uffd";
 * import { checkRound } from "./_demo_watch.ts";
 * const set = (...runs: number[]) =>
 *   new WriteSet({ runs: new Uint32Array(runs), pageCount: 8, pageSize: 4096, head: 0, byteLength: 32768 });
 * const log = { due: [0, 1, 2, 0, 0, 0, 0, 0], may: [0, 1, 1, 1, 0, 0, 0, 0] };
 * const check = checkRound(2, [set(1, 1), set(2, 2)], log, true);
 * console.log(check.ok, check.writtenBefore, check.reportedHere, check.reportedEarlier, check.racing); // true 2 1 1 1
 * console.log(checkRound(2, [set(5, 1), set(2, 1)], log, true).missed); // [1]
 * ```
 */
export function checkRound(round: number, reported: readonly WriteSet[], log: RoundLog, atomic: boolean): RoundCheck {
  const set = reported[round - 1]!;
  let writtenBefore = 0;
  let reportedHere = 0;
  let reportedEarlier = 0;
  const missed: number[] = [];
  for (let page = 0; page < log.due.length; page++) {
    const from = log.due[page]!;
    if (from <= 0) continue; // not written, or by a pass that began before the watch did
    writtenBefore++;
    if (set.has(page)) reportedHere++;
    else if (reported.slice(from - 1, round - 1).some((s) => s.has(page))) reportedEarlier++;
    else missed.push(page);
  }
  const neverWritten = [...set].filter((page) => log.may[page] !== 1);
  const lost = set.lost.reduce((n, r) => n + r.pages, 0);
  return {
    ok: (missed.length === 0 || !atomic) && neverWritten.length === 0 && lost === 0,
    writtenBefore,
    reportedHere,
    reportedEarlier,
    missed,
    neverWritten,
    racing: set.count - reportedHere - neverWritten.length,
    lost,
  };
}

function list(pages: number[]): string {
  return pages.length <= 6 ? pages.join(", ") : `${pages.slice(0, 6).join(", ")}, …`;
}

/** The check line under a round's heat map. */
function describeCheck(c: RoundCheck, atomic: boolean): string {
  const reported = c.reportedHere + c.reportedEarlier;
  const missedMark = c.missed.length === 0 ? green("✓") : atomic ? red("✗") : yellow("!");
  const parts = [
    `${missedMark} ${reported}/${c.writtenBefore} written before` +
    (c.reportedEarlier > 0 ? ` (${c.reportedEarlier} earlier)` : "") +
    (c.missed.length > 0 ? ` — missed ${list(c.missed)}${atomic ? "" : " (this backend is not atomic)"}` : ""),
    `${c.neverWritten.length === 0 ? green("✓") : red("✗")} ${c.neverWritten.length} spurious` +
    (c.neverWritten.length > 0 ? ` (${list(c.neverWritten)})` : ""),
  ];
  if (c.lost > 0) parts.push(`${red("✗")} ${c.lost} pages no longer watched`);
  return parts.join(" · ");
}

/**
 * Wraps plain text (no color codes) into lines of at most `columns` characters.
 *
 * @example
 * ```ts
 * import { wrap } from "./_demo_watch.ts";
 * console.log(wrap("one two three", 8)); // ["one two", "three"]
 * ```
 */
export function wrap(text: string, columns = 80): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/)) {
    if (line !== "" && line.length + 1 + word.length > columns) {
      lines.push(line);
      line = word;
    } else line = line === "" ? word : `${line} ${word}`;
  }
  if (line !== "") lines.push(line);
  return lines;
}

const BACKEND_NOTE: Record<string, string> = {
  "async": "(WP_ASYNC + PAGEMAP_SCAN): the kernel resolves every write itself, no fault reaches user space, " +
    "and the writer never waits.",
  "sync": "(write-protect faults served by a handler thread): the first write to a page after a scan waits " +
    "until the handler has recorded and unprotected it.",
  "soft-dirty": "(clear_refs + the pagemap soft-dirty bit). Not atomic: a write racing a scan can be lost.",
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

/**
 * The live write watch step: see the module documentation.
 *
 * @example
 * ```ts ignore
 * import { liveWriteWatch } from "./_demo_watch.ts";
 * const result = await liveWriteWatch(ctx); // ctx: the demo's context
 * ```
 */
export async function liveWriteWatch(ctx: DemoContext): Promise<StepResult> {
  const writer = await ctx.writer();
  const pages = writer.pages;
  const perCell = Math.ceil(pages / CELLS);
  const memory = {
    bytes: writer.memory.buffer.byteLength,
    pages,
    pageSize: writer.pageSize,
    wasmPages: writer.memory.buffer.byteLength / 65536,
    shared: true,
  };

  let start;
  try {
    start = writer.mark(() => WriteWatch.start(writer.memory, ctx.watchOptions));
  } catch (e) {
    if (!(e instanceof UffdError)) throw e;
    const forced = ctx.watchOptions.backend !== undefined;
    const permissions = !ctx.features.available;
    const reason = `live write watch skipped: ${e.message}` +
      (permissions ? `. To change: ${ctx.features.access.summary}` : "");
    ctx.say();
    for (const line of wrap(reason)) ctx.say((forced || permissions ? red : yellow)(line));
    return {
      status: forced || permissions ? "refused" : "skipped",
      reason,
      data: { memory, backends: WriteWatch.backends() },
    };
  }
  using watch = start.result;
  const atomic = watch.backend !== "soft-dirty";
  const t0 = performance.now();

  ctx.say();
  ctx.say(bold("live write watch"));
  for (
    const line of wrap(
      `A wasm module in a Worker thread keeps writing to a shared ${bytes(memory.bytes)} WebAssembly.Memory ` +
        `(${pages} pages of ${bytes(writer.pageSize)}): its globals, a hot spot that moves along the memory, and ` +
        `stripes whose stride changes every round. Every ${INTERVAL_MS} ms the main thread calls ` +
        `WriteWatch.collect(), which reports the pages written since the last call and protects them again, ` +
        `in one atomic step. Backend ${watch.backend} ${BACKEND_NOTE[watch.backend]}`,
    )
  ) ctx.say(line);
  for (
    const line of wrap(
      `Each round is checked against the writer's own log. "N/N written before": every page it wrote ` +
        `before the scan was reported, by that scan or ("K earlier") by the previous one, for a write made ` +
        `while that one ran. "0 spurious": every page reported was written. A page written during a scan may ` +
        `show in that round or the next.`,
    )
  ) ctx.say(dim(line));
  ctx.say();
  const legend = `1 cell = ${perCell} page${perCell === 1 ? "" : "s"}: ${dim("·")} none ` +
    SHADES.map((s, i) => `${cyan(s)} ${perCell === 4 ? i + 1 : `${25 * (i + 1)}%`}`).join(" ") + " written";
  ctx.say(bold("round") + "  " + legend + " ".repeat(Math.max(1, CELLS + 2 - width(legend))) + bold("pages"));
  ctx.say(" ".repeat(7) + dim(regionLine(writer.layout, perCell)));

  const reported: WriteSet[] = [];
  const rounds: WatchRound[] = [];
  let passesBefore = start.passes;
  for (let round = 1; round <= ROUNDS; round++) {
    await sleep(t0 + round * INTERVAL_MS - performance.now());
    const atMs = performance.now() - t0;
    const collected = writer.mark(() => watch.collect());
    const set = collected.result;
    reported.push(set);
    await writer.settled(collected.index);
    const due = Array.from(writer.dueAt(collected.index), (mark) => mark - start.index); // marks to rounds
    const may = Array.from(writer.mayAt(collected.index));
    const log: RoundLog = { due, may };
    const c = checkRound(round, reported, log, atomic);
    const cells = heatCells(set, pages, perCell);
    ctx.say(`${String(round).padStart(3)}    ${heatLine(cells, perCell)}  ${String(set.count).padStart(5)}`);
    ctx.say(`       ${describeCheck(c, atomic)} · ${dim(`writer +${collected.passes - passesBefore} passes`)}`);
    passesBefore = collected.passes;
    rounds.push({
      round,
      atMs: Math.round(atMs),
      collectMs: Number(collected.ms.toFixed(3)),
      count: set.count,
      pages: [...set.pages],
      writer: { passes: collected.passes, stores: collected.stores },
      check: c,
      log: {
        due: due.flatMap((from, page) => from > 0 ? [[page, from] as [number, number]] : []),
        may: may.flatMap((m, page) => m === 1 ? [page] : []),
      },
    });
  }
  const elapsed = performance.now() - t0;
  const ok = rounds.every((r) => r.check.ok);
  const last = rounds[rounds.length - 1]!;
  const collectMs = rounds.map((r) => r.collectMs);
  const summary = `${ROUNDS} rounds in ${(elapsed / 1000).toFixed(2)} s, each collect() ` +
    `${Math.min(...collectMs).toFixed(2)}–${Math.max(...collectMs).toFixed(2)} ms; the writer made ` +
    `${last.writer.passes} passes (${last.writer.stores.toLocaleString("en-US")} stores) and kept going throughout.`;
  for (const line of wrap(summary)) ctx.say(dim(line));
  const failed = rounds.filter((r) => !r.check.ok).map((r) => r.round);
  return {
    status: ok ? "ok" : "failed",
    ...(ok ? {} : { reason: `live write watch: the check failed in round ${failed.join(", ")}` }),
    data: {
      backend: watch.backend,
      memory,
      layout: writer.layout,
      intervalMs: INTERVAL_MS,
      pagesPerCell: perCell,
      rounds,
      ok,
    },
  };
}
