/**
 * How `bench/compare.ts` shows its outcomes: durations in readable units, a
 * plain-text table for the terminal, and the Markdown of `bench/RESULTS.md`
 * (the comparison table, the goals, the scaling tables and an ASCII plot).
 *
 * @example
 * ```ts
 * import { formatNs } from "./report.ts";
 * console.log(formatNs(431.2), formatNs(4_152_793)); // 431 ns 4.15 ms
 * ```
 *
 * @module
 */

import type { Pair } from "../pairs.ts";
import { sizeLabel } from "../pairs.ts";
import { describeMachine, type Machine } from "./machine.ts";
import type { Summary } from "./stats.ts";

/** The outcome of one pair after all its runs. */
export interface Outcome {
  /** What was compared. */
  readonly pair: Pair;
  /** Why it did not run (no compiler, not enough memory, filtered out). */
  readonly skipped?: string;
  /** Why it failed (a program exited non-zero or printed no result). */
  readonly error?: string;
  /** ns per op of our side, one value per run. */
  readonly ours?: Summary;
  /** ns per op of the C side, one value per run. */
  readonly c?: Summary;
  /** ours / C per pair of runs (wall time: the figure goals are judged on). */
  readonly ratio?: Summary;
  /** ours − C per pair of runs, ns (judged instead of the ratio when the goal is a cost above C). */
  readonly excess?: Summary;
  /** Thread CPU ns per op of our side, one value per run. */
  readonly oursCpu?: Summary;
  /** Thread CPU ns per op of the C side, one value per run. */
  readonly cCpu?: Summary;
  /** ours / C of the thread CPU time per pair of runs (less sensitive to a busy machine). */
  readonly ratioCpu?: Summary;
  /** Peak resident set of each side's process (`peak_rss_kib`), KiB, one value per run. */
  readonly rss?: { readonly ours?: Summary; readonly c?: Summary };
  /** Bytes our side allocated per operation (`alloc_bytes_per_op`), where it measures them. */
  readonly allocation?: Summary;
  /** A side's spread exceeded the noise threshold. */
  readonly noisy: boolean;
  /** `met`/`missed` against the goal, `info` without one, or why there is no ratio. */
  readonly status: "met" | "missed" | "info" | "ours only" | "skipped" | "failed";
  /** The `extra` fields of each side's last result. */
  readonly extra: { readonly ours?: Record<string, unknown>; readonly c?: Record<string, unknown> };
  /** Things a reader must know about this row (a wrong result, a short batch). */
  readonly warnings: readonly string[];
}

/** Everything one `bench:compare` run produced. */
export interface Report {
  /** ISO date and time of the run's start. */
  readonly date: string;
  /** `"quick"` or `"full"`. */
  readonly mode: string;
  /** Alternating runs per pair. */
  readonly runs: number;
  /** The spread above which a result is flagged noisy. */
  readonly noise: number;
  /** The machine at the start. */
  readonly machine: Machine;
  /** 1-minute load average at the end. */
  readonly loadAfter: number;
  /** Why there is no C side, when there is none. */
  readonly referencesMissing?: string;
  /** Wall time of the whole run, seconds. */
  readonly seconds: number;
  /** One per pair, in order. */
  readonly outcomes: readonly Outcome[];
}

/** A duration in ns as `431 ns`, `12.3 µs`, `4.15 ms` or `1.20 s`. */
export function formatNs(ns: number): string {
  if (!Number.isFinite(ns)) return "—";
  const [value, unit] = ns < 1e3
    ? [ns, "ns"]
    : ns < 1e6
    ? [ns / 1e3, "µs"]
    : ns < 1e9
    ? [ns / 1e6, "ms"]
    : [ns / 1e9, "s"];
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${unit}`;
}

function ratioText(o: Outcome): string {
  if (!o.ratio) return "—";
  const r = o.ratio;
  const text = `${r.median.toFixed(2)}× (${r.min.toFixed(2)}–${r.max.toFixed(2)})`;
  return o.pair.goalKind === "excess" && o.excess ? `${text}, +${formatNs(o.excess.median)}` : text;
}

/** The figure the goal is judged on, as text: `1.04×`, or `+1.20 µs` for a cost above the reference. */
function judgedText(o: Outcome): string {
  if (o.pair.goalKind === "excess") {
    return o.excess ? `${o.excess.median < 0 ? "−" : "+"}${formatNs(Math.abs(o.excess.median))}` : "—";
  }
  return o.ratio ? `${o.ratio.median.toFixed(2)}×` : "—";
}

function statusText(o: Outcome): string {
  const base = o.status === "met" ? "goal met" : o.status === "missed" ? "GOAL MISSED" : o.status;
  return [base, o.noisy ? "noisy" : "", o.warnings.length ? "see notes" : ""].filter(Boolean).join(", ");
}

function perOp(s: Summary | undefined, pair: Pair): string {
  return s ? `${formatNs(s.median)}/${pair.unit}` : "—";
}

function goalText(pair: Pair): string {
  if (pair.goal === undefined) return "";
  return pair.goalText ?? (pair.goalKind === "excess" ? `≤ C + ${formatNs(pair.goal)}` : `≤ ${pair.goal}×`);
}

/** The rows of the comparison table (header first). */
function rows(outcomes: readonly Outcome[]): string[][] {
  const out = [["comparison", "ours (median)", "C (median)", "ours / C (min–max)", "CPU ours / C", "goal", "status"]];
  for (const o of outcomes) {
    out.push([
      o.pair.title,
      perOp(o.ours, o.pair),
      perOp(o.c, o.pair),
      ratioText(o),
      o.ratioCpu ? `${o.ratioCpu.median.toFixed(2)}×` : "—",
      goalText(o.pair),
      o.skipped ? `skipped: ${o.skipped}` : o.error ? `failed: ${o.error.split("\n")[0]}` : statusText(o),
    ]);
  }
  return out;
}

function kib(s: Summary | undefined): string {
  if (!s) return "—";
  const k = s.median;
  return k >= 1024 * 1024
    ? `${(k / 1024 / 1024).toFixed(2)} GiB`
    : k >= 1024
    ? `${(k / 1024).toFixed(1)} MiB`
    : `${k} KiB`;
}

function bytesText(s: Summary | undefined): string {
  if (!s) return "—";
  const b = s.median;
  return b >= 1024 * 1024
    ? `${(b / 1024 / 1024).toFixed(1)} MiB`
    : b >= 1024
    ? `${(b / 1024).toFixed(1)} KiB`
    : `${b} B`;
}

/** The memory table (header first): one row per set of runs (pairs that share runs are shown once). */
function memoryRows(outcomes: readonly Outcome[]): string[][] {
  const out = [["runs of", "peak RSS ours", "peak RSS C", "ours / C", "allocated per op (ours)"]];
  const seen = new Set<string>();
  for (const o of outcomes) {
    const ours = o.rss?.ours;
    const c = o.rss?.c;
    const key = `${o.pair.program} ${ours?.values.join()} ${c?.values.join()}`;
    if (!ours || seen.has(key)) continue;
    seen.add(key);
    out.push([
      o.pair.title,
      kib(ours),
      o.pair.baseline ? `${kib(c)} (${o.pair.baseline})` : kib(c),
      c && c.median > 0 ? `${(ours.median / c.median).toFixed(2)}×` : "—",
      o.allocation ? `${bytesText(o.allocation)}/${o.pair.unit}` : "—",
    ]);
  }
  return out;
}

/** The comparison as an aligned plain-text table. */
export function terminalTable(outcomes: readonly Outcome[]): string {
  const table = rows(outcomes);
  const widths = table[0]!.map((_, i) => Math.max(...table.map((r) => [...r[i]!].length)));
  return table.map((r, k) => {
    const line = r.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd();
    return k === 0 ? `${line}\n${widths.map((w) => "-".repeat(w)).join("  ")}` : line;
  }).join("\n");
}

function markdownTable(table: string[][]): string {
  const esc = (cell: string) => cell.replaceAll("|", "\\|");
  const [head, ...body] = table;
  return [
    `| ${head!.map(esc).join(" | ")} |`,
    `| ${head!.map(() => "---").join(" | ")} |`,
    ...body.map((r) => `| ${r.map(esc).join(" | ")} |`),
  ].join("\n");
}

/** A scaling point's value in its series' unit (time per GiB scanned, or per op). */
function scaled(s: Summary | undefined, pair: Pair): number {
  if (!s) return NaN;
  return pair.series?.per === "GiB" ? s.median / (Number(pair.args.bytes) / 2 ** 30) : s.median;
}

/** Groups the outcomes that belong to a scaling series, by series name, in size order. */
export function seriesOf(outcomes: readonly Outcome[]): Map<string, Outcome[]> {
  const groups = new Map<string, Outcome[]>();
  for (const o of outcomes) {
    if (!o.pair.series) continue;
    const list = groups.get(o.pair.series.name) ?? [];
    list.push(o);
    groups.set(o.pair.series.name, list);
  }
  for (const list of groups.values()) list.sort((a, b) => Number(a.pair.args.bytes) - Number(b.pair.args.bytes));
  return groups;
}

/** A horizontal bar chart of one series: ours (`█`) and C (`░`) at each size, scaled to the largest. */
export function asciiPlot(name: string, points: readonly Outcome[], width = 48): string {
  const per = points[0]?.pair.series?.per === "GiB" ? "per GiB scanned" : `per ${points[0]?.pair.unit ?? "op"}`;
  const values = points.flatMap((o) => [scaled(o.ours, o.pair), scaled(o.c, o.pair)]).filter(Number.isFinite);
  const top = Math.max(...values, 1e-9);
  const lines = [`${name}: time ${per} (█ ours, ░ C)`];
  for (const o of points) {
    const label = sizeLabel(Number(o.pair.args.bytes)).padStart(7);
    for (const [side, mark, s] of [["ours", "█", o.ours], ["C   ", "░", o.c]] as const) {
      const v = scaled(s, o.pair);
      const bar = Number.isFinite(v) ? mark.repeat(Math.max(1, Math.round((v / top) * width))) : "";
      lines.push(
        `${side === "ours" ? label : " ".repeat(7)} ${side} │${bar} ${Number.isFinite(v) ? formatNs(v) : "—"}`,
      );
    }
  }
  return lines.join("\n");
}

/** The Markdown of `bench/RESULTS.md`. */
export function resultsMarkdown(report: Report): string {
  const main = report.outcomes.filter((o) => !o.pair.series || o.pair.headline);
  const goals = report.outcomes.filter((o) => o.pair.goal !== undefined);
  const series = seriesOf(report.outcomes);
  const out: string[] = [];
  out.push("# Benchmark results");
  out.push("");
  out.push(
    `Written by \`deno task bench:compare${report.mode === "quick" ? " --quick" : ""}\` on ${report.date} ` +
      `(${report.mode} mode, ${report.runs} alternating runs per pair, ${Math.round(report.seconds)} s). ` +
      "How the figures are taken, and what is behind the ones that miss a goal: [README.md](README.md).",
  );
  out.push("");
  out.push(`Machine: ${describeMachine(report.machine)}.`);
  out.push(
    `Load average (1 min): ${report.machine.load.toFixed(2)} at the start, ${report.loadAfter.toFixed(2)} at the end.`,
  );
  out.push("");
  const busy = Math.max(report.machine.load, report.loadAfter) > 0.25 * report.machine.cores;
  if (report.mode === "quick" || busy) {
    out.push(
      "> **Caveat:** " +
        [
          report.mode === "quick" ? "a quick run (shorter loops, smaller sizes)" : "",
          busy ? "the machine was busy with other work during the run" : "",
        ].filter(Boolean).join("; ") +
        ". Treat these figures as a check that the benchmarks run, not as the project's numbers.",
    );
    out.push("");
  }
  if (report.referencesMissing) {
    out.push(`> The C side did not run: ${report.referencesMissing}.`);
    out.push("");
  }
  out.push("## Ours against C");
  out.push("");
  out.push(
    "Wall time per operation, median over the runs; the ratio is the median of the per-run ratios ours / C " +
      '(run *i* of each side ran back to back); goals are judged on it. "CPU ours / C" is the same ratio of ' +
      "the timed thread's CPU time, which leaves out time spent waiting for a CPU (a cross-check on a busy " +
      `machine). "noisy": a side's runs spread by more than ${Math.round(report.noise * 100)}% of its median.`,
  );
  out.push("");
  out.push(markdownTable(rows(main)));
  out.push("");
  out.push("## Goals");
  out.push("");
  for (const o of goals) {
    const verdict = o.ratio
      ? `${judgedText(o)} against ${goalText(o.pair)}: ${o.status === "met" ? "met" : "**missed**"}` +
        (o.noisy ? " (noisy)" : "")
      : o.skipped ?? o.error ?? "no ratio";
    out.push(`- ${o.pair.title}: ${verdict}`);
  }
  out.push("");
  const memory = memoryRows(report.outcomes);
  if (memory.length > 1) {
    out.push("## Memory");
    out.push("");
    out.push(
      "Peak resident set of each side's process (`VmHWM`, median over the runs; the Deno runtime alone is some " +
        "40 MiB of it), and the bytes our side allocates per operation in its isolate (V8 heap and `ArrayBuffer` " +
        "stores, from `Deno.memoryUsage()` over untimed windows of the same operation), where the program measures " +
        "them. One row per set of runs.",
    );
    out.push("");
    out.push(markdownTable(memory));
    out.push("");
  }
  const notes = report.outcomes.filter((o) => o.warnings.length > 0);
  if (notes.length > 0) {
    out.push("## Notes on single rows");
    out.push("");
    for (const o of notes) for (const w of o.warnings) out.push(`- ${o.pair.title}: ${w}`);
    out.push("");
  }
  if (series.size > 0) {
    out.push("## Scaling");
    out.push("");
    out.push(
      "The same measurements at each size, as ours / C (median ratio). PAGEMAP_SCAN over resident pages and " +
        "`WriteWatch.collect()` are shown as time per GiB scanned (flat = linear in the size), PAGEMAP_SCAN over an " +
        "untouched range as time per scan (a fixed cost); the resolving ioctls as time per page.",
    );
    out.push("");
    const sizes = [...new Set([...series.values()].flat().map((o) => Number(o.pair.args.bytes)))].sort((a, b) => a - b);
    const table = [["series", ...sizes.map((s) => `${sizeLabel(s)} ours / C`)]];
    for (const [name, points] of series) {
      table.push([
        name,
        ...sizes.map((size) => {
          const o = points.find((p) => Number(p.pair.args.bytes) === size);
          if (!o) return "—";
          if (!o.ours) return o.skipped ? "skipped" : "failed";
          const c = o.c ? formatNs(scaled(o.c, o.pair)) : "—";
          const ratio = o.ratio ? ` (${o.ratio.median.toFixed(2)}×)` : "";
          return `${formatNs(scaled(o.ours, o.pair))} / ${c}${ratio}`;
        }),
      ]);
    }
    out.push(markdownTable(table));
    out.push("");
    out.push("```");
    out.push([...series].map(([name, points]) => asciiPlot(name, points)).join("\n\n"));
    out.push("```");
    out.push("");
  }
  return out.join("\n");
}

/** The README's Performance paragraph lies between these two lines; `bench:compare` (full) rewrites it. */
export const README_MARKERS: readonly [string, string] = [
  "<!-- bench:compare writes the paragraph below (full mode) -->",
  "<!-- end of bench:compare's paragraph -->",
];

/**
 * The README's one-paragraph summary of a run: like-for-like figures only (our
 * handlers against C's with the same spin, the wrapper against the bare symbol),
 * each the median ratio of its row in `RESULTS.md`.
 */
export function performanceLine(report: Report): string {
  const byId = new Map(report.outcomes.map((o) => [o.pair.id, o]));
  const r = (id: string) => {
    const o = byId.get(id);
    return o?.ratio ? `${o.ratio.median.toFixed(2)}×` : "—";
  };
  const plus = (id: string) => {
    const o = byId.get(id);
    return o?.excess ? `${o.excess.median < 0 ? "−" : "+"}${formatNs(Math.abs(o.excess.median))}` : "—";
  };
  const bandwidth = (id: string) => {
    const o = byId.get(id);
    return o?.ratio ? `${Math.round(100 / o.ratio.median)}%` : "—";
  };
  const m = report.machine;
  const missed = report.outcomes.filter((o) => o.status === "missed").length;
  const goals = report.outcomes.filter((o) => o.pair.goal !== undefined).length;
  const snap = "live_snapshot/1GiB";
  return [
    `In one line (${m.kernel.split("-")[0]}, ${m.cores} cores, ${report.runs} alternating runs, load ` +
    `${m.load.toFixed(1)}–${report.loadAfter.toFixed(1)}${report.mode === "quick" ? ", quick mode" : ""}; every ` +
    "figure against C doing the same the same way): a WP fault round trip " +
    `${r("fault_roundtrip/default/chunk1/c-spin30")} of C's with the same 30 µs spin, chunked ` +
    `${r("fault_roundtrip/default/chunk16-vs-c-chunk1")} of C's one-page handler, lazy restore ` +
    `${r("lazy_restore/default/c-spin30")} per fault, the async first write ${r("async_first_write/watch")}; ` +
    `the ffi/ ioctl wrapper ${r("ioctl_roundtrip/wrapper-vs-symbol")} the bare dlopen'd symbol (which is ` +
    `${r("ioctl_roundtrip/raw-symbol")} C's ioctl), \`copy()\` ${r("uffdio_resolve/method/copy/256MiB")} and ` +
    `\`zeropage()\` ${r("uffdio_resolve/method/zeropage/256MiB")} per page, \`readEventsInto()\` ` +
    `${r("read_events/batch/one-cpu")} per event (both on one CPU; ${
      r("read_events/batch")
    } unpinned), \`pagemapScanPacked()\` over 1 GiB at 1% ` +
    `${r("pagemap_scan/packed/1GiB/0.01")} (\`pagemapScan()\`'s objects ${r("pagemap_scan/method/1GiB/0.01")}), ` +
    `an untouched scan ${plus("pagemap_scan/method/1GiB/0")} above C's, \`collect()\` over 1 GiB at 1% ` +
    `${r("write_watch_collect/method/1GiB/0.01")} and of 128 scattered pages of 512 ` +
    `${r("write_watch_collect/method/2MiB/scatter128")}; a live snapshot of 1 GiB ${r(`${snap}/idle`)} of C's ` +
    `idle and ${r(`${snap}/writer`)} under a writer, at ${bandwidth(`${snap}/writer/vs-memcpy`)} of \`memcpy\` ` +
    `bandwidth, the writer's stall per fault ${r(`${snap}/writer/stall`)} of C's. ` +
    `${goals - missed} of ${goals} goals met in that run.`,
  ].join("");
}
