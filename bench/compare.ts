/**
 * `deno task bench:compare`: our code against C, side by side, in one run.
 *
 * Builds every C reference (`bench/reference/*.c`, `cc -O2`) into a temporary
 * folder, then runs each {@linkcode Pair} of `bench/pairs.ts` A B A B …: our
 * program, then its C reference, with the same arguments, several times. Reports
 * the median time per operation of each side, the median of the per-run ratios
 * ours / C, the goal where the issue sets one, and flags results whose runs
 * spread widely; prints the machine; shows it all as a table (or JSON with
 * `--json`) and rewrites `bench/RESULTS.md`. Without a C compiler the C side is
 * skipped with the reason, and our side still runs.
 *
 * Exit status: 0 when every measurement ran (missed goals are reported, not
 * failed), 1 when one failed, 2 on a usage error.
 *
 * @example
 * ```ts
 * // deno task bench:compare --quick        (development: two or three minutes)
 * // deno task bench:compare --json > r.json
 * import { pairs } from "./pairs.ts";
 * console.log(pairs({ quick: true }).length > 0); // true
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type Pair, pairs } from "./pairs.ts";
import { describeMachine, loadAverage, machine, meminfo, versionOf } from "./lib/machine.ts";
import type { Result } from "./lib/measure.ts";
import {
  formatNs,
  type Outcome,
  performanceLine,
  README_MARKERS,
  type Report,
  resultsMarkdown,
  terminalTable,
} from "./lib/report.ts";
import { differences, ratios, summarize } from "./lib/stats.ts";

const HELP = `deno task bench:compare [options]

Runs each benchmark pair (bench/pairs.ts) A B A B …: ours (bench/ours/*.ts) then
the C reference (bench/reference/*.c, built with cc -O2), with the same arguments.
Prints the machine and a table (median per side, median ratio ours / C, goals,
noisy results), and rewrites bench/RESULTS.md.

Options:
  --quick          development mode: smaller sizes, shorter loops, 3 runs
  --runs=N         alternating runs per pair (default 5; 3 with --quick)
  --only=TEXT      only pairs whose id contains TEXT (RESULTS.md is then left alone)
  --json           print the report as JSON on stdout (progress goes to stderr)
  --no-write       do not rewrite bench/RESULTS.md
  --noise=F        flag a side whose runs spread by more than F × median (default 0.1)
  --timeout=S      seconds one program may run (default 180)
  --help           this text

Exit status: 0 all measurements ran, 1 one failed, 2 usage error.`;

interface Options {
  quick: boolean;
  runs: number;
  only: string | undefined;
  json: boolean;
  write: boolean;
  noise: number;
  timeoutMs: number;
}

function options(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: "boolean", default: false },
      runs: { type: "string" },
      only: { type: "string" },
      json: { type: "boolean", default: false },
      "no-write": { type: "boolean", default: false },
      noise: { type: "string", default: "0.1" },
      timeout: { type: "string", default: "180" },
      help: { type: "boolean", default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  const number = (text: string, name: string, min: number) => {
    const n = Number(text);
    if (!Number.isFinite(n) || n < min) throw new TypeError(`--${name} must be a number ≥ ${min}, got ${text}`);
    return n;
  };
  const quick = values.quick!;
  return {
    quick,
    runs: Math.round(number(values.runs ?? (quick ? "3" : "5"), "runs", 1)),
    only: values.only,
    json: values.json!,
    write: !values["no-write"] && values.only === undefined,
    noise: number(values.noise!, "noise", 0),
    timeoutMs: number(values.timeout!, "timeout", 1) * 1000,
  };
}

const here = (path: string) => decodeURIComponent(new URL(path, import.meta.url).pathname);
const progress = (text: string) => console.error(text);

/** Builds the C references a set of pairs needs; returns the binaries, or why there are none. */
async function buildReferences(
  programs: string[],
  dir: string,
): Promise<{ binaries: Map<string, string>; failures: Map<string, string>; missing?: string }> {
  const binaries = new Map<string, string>();
  const failures = new Map<string, string>();
  if (await versionOf("cc") === undefined) {
    return { binaries, failures, missing: "no C compiler: `cc --version` did not run, so only our side is measured" };
  }
  for (const program of programs) {
    const output = `${dir}/${program}`;
    const source = here(`./reference/${program}.c`);
    const { success, stderr } = await new Deno.Command("cc", {
      args: ["-O2", "-Wall", "-o", output, source, "-lpthread"],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (success) binaries.set(program, output);
    else failures.set(program, `cc -O2 ${program}.c failed: ${new TextDecoder().decode(stderr).trim()}`);
  }
  return { binaries, failures };
}

/** Runs one program and returns its result line. */
async function runOnce(command: string, args: string[], timeoutMs: number): Promise<Result> {
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command(command, {
      args,
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(timeoutMs),
    }).output();
  } catch (error) {
    throw new Error(`${command} ${args.join(" ")}: ${error instanceof Error ? error.message : error}`);
  }
  const stdout = new TextDecoder().decode(output.stdout);
  const stderr = new TextDecoder().decode(output.stderr).trim();
  const line = stdout.trim().split("\n").reverse().find((l) => l.startsWith("{") && l.includes('"bench"'));
  if (!output.success || line === undefined) {
    const why = output.signal ? `killed by ${output.signal}` : `exit ${output.code}`;
    throw new Error(`${why}${stderr ? `: ${stderr.split("\n").slice(-3).join(" / ")}` : ", no result line"}`);
  }
  const result = JSON.parse(line) as Result;
  if (!(result.ns_per_op > 0)) throw new Error(`no time measured: ${line}`);
  return result;
}

function argList(args: Pair["args"]): string[] {
  return Object.entries(args).map(([key, value]) => `--${key}=${value}`);
}

/** One pair's runs, or why they failed: shared by pairs that differ only in what they report. */
type Runs = { ours: Result[]; c: Result[] } | { error: string };

/** Runs of the same programs with the same arguments, kept for the pairs that read them differently. */
const runCache = new Map<string, Runs>();

/** A side's figure in one run: `ns_per_op`, or a field of `extra` (see `Pair.measure`). */
function figure(result: Result, field: string): number {
  return field === "ns_per_op" ? result.ns_per_op : Number(result.extra[field]);
}

/** The runs of one side's figure `field` of `extra` (peak RSS, allocations), when every run has it. */
function extraSummary(results: readonly Result[], field: string) {
  const values = results.map((r) => Number(r.extra[field]));
  return values.length > 0 && values.every((v) => Number.isFinite(v)) ? summarize(values) : undefined;
}

/**
 * Runs one pair `runs` times (the pair's own count, if it has one), alternating
 * ours and its reference: the C program, or (`pair.baseline`) another variant of
 * ours.
 */
async function comparePair(
  pair: Pair,
  opts: Options,
  binary: string | undefined,
  missing: string | undefined,
): Promise<Outcome> {
  const need = pair.memory + 512 * 2 ** 20;
  const available = meminfo("MemAvailable");
  if (pair.memory > 0 && need > available) {
    const gib = (n: number) => `${(n / 2 ** 30).toFixed(1)} GiB`;
    return {
      pair,
      skipped: `needs ${gib(pair.memory)} (+0.5 GiB margin), ${gib(available)} available`,
      noisy: false,
      status: "skipped",
      extra: {},
      warnings: [],
    };
  }
  const oursCommand = (impl: string, args: Pair["args"]) => [
    "run",
    "--allow-all",
    "--no-prompt",
    here(`./ours/${pair.program}.ts`),
    ...argList(args),
    `--impl=${impl}`,
  ];
  // `cpus`: both sides under taskset, so that every thread of each runs on those CPUs.
  const pinned = (command: string, args: string[]): [string, string[]] =>
    pair.cpus === undefined ? [command, args] : ["taskset", ["-c", pair.cpus, command, ...args]];
  const [oursProgram, oursArgs] = pinned(Deno.execPath(), oursCommand(pair.impl, pair.args));
  // The reference: our own baseline variant (always there), or the C binary (when it built).
  const reference: [string, string[]] | undefined = pair.baseline !== undefined
    ? pinned(Deno.execPath(), oursCommand(pair.baseline, pair.cArgs ?? pair.args))
    : binary
    ? pinned(binary, argList(pair.cArgs ?? pair.args))
    : undefined;
  const key = JSON.stringify([pair.program, oursArgs, reference ?? null]);
  const count = Math.min(opts.runs, pair.runs ?? opts.runs);
  let runs = runCache.get(key);
  if (runs === undefined) {
    const ours: Result[] = [];
    const c: Result[] = [];
    try {
      for (let run = 0; run < count; run++) {
        ours.push(await runOnce(oursProgram, oursArgs, opts.timeoutMs));
        if (reference) c.push(await runOnce(reference[0], reference[1], opts.timeoutMs));
      }
      runs = { ours, c };
    } catch (error) {
      runs = { error: error instanceof Error ? error.message : String(error) };
    }
    runCache.set(key, runs);
  }
  if ("error" in runs) return { pair, error: runs.error, noisy: false, status: "failed", extra: {}, warnings: [] };
  const { ours: oursRuns, c } = runs;
  const oursValues = oursRuns.map((r) => figure(r, pair.measure?.ours ?? "ns_per_op"));
  const cValues = c.map((r) => figure(r, pair.measure?.c ?? "ns_per_op"));
  const oursSummary = summarize(oursValues);
  const cSummary = c.length ? summarize(cValues) : undefined;
  const ratio = cSummary ? ratios(oursValues, cValues) : undefined;
  const excess = cSummary ? differences(oursValues, cValues) : undefined;
  const cpu = pair.measure === undefined && oursRuns.every((r) => r.cpu_ns_per_op > 0);
  const ratioCpu = cSummary && cpu
    ? ratios(oursRuns.map((r) => r.cpu_ns_per_op), c.map((r) => r.cpu_ns_per_op))
    : undefined;
  const noisy = oursSummary.spread > opts.noise || (cSummary?.spread ?? 0) > opts.noise;
  const warnings: string[] = [];
  const lastOurs = oursRuns[oursRuns.length - 1]!.extra;
  if (lastOurs.correct === false) {
    warnings.push(
      `our result was wrong (${JSON.stringify(lastOurs)}); the time is still ours, for the same ioctls`,
    );
  }
  const judged = pair.goalKind === "excess" ? excess : ratio;
  const status: Outcome["status"] = !judged
    ? "ours only"
    : pair.goal === undefined
    ? "info"
    : judged.median <= pair.goal
    ? "met"
    : "missed";
  if (!reference && missing === undefined) warnings.push("the C reference did not build");
  return {
    pair,
    ours: oursSummary,
    c: cSummary,
    ratio,
    excess,
    oursCpu: cpu ? summarize(oursRuns.map((r) => r.cpu_ns_per_op)) : undefined,
    cCpu: cpu && c.length ? summarize(c.map((r) => r.cpu_ns_per_op)) : undefined,
    ratioCpu,
    rss: { ours: extraSummary(oursRuns, "peak_rss_kib"), c: extraSummary(c, "peak_rss_kib") },
    allocation: extraSummary(oursRuns, "alloc_bytes_per_op"),
    noisy,
    status,
    extra: { ours: lastOurs, c: c[c.length - 1]?.extra },
    warnings,
  };
}

async function main(argv: string[]): Promise<number> {
  let opts: Options;
  try {
    opts = options(argv);
  } catch (error) {
    console.error(`bench:compare: ${error instanceof Error ? error.message : error}\n\n${HELP}`);
    return 2;
  }
  const started = performance.now();
  const date = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const m = await machine();
  const selected = pairs({ quick: opts.quick }).filter((p) => opts.only === undefined || p.id.includes(opts.only));
  if (selected.length === 0) {
    console.error(`bench:compare: no pair id contains ${JSON.stringify(opts.only)}`);
    return 2;
  }
  progress(`machine: ${describeMachine(m)}; load ${m.load.toFixed(2)}`);
  if (m.load > 0.25 * m.cores) progress("note: the machine is busy (load average); figures will be noisy");

  const dir = await Deno.makeTempDir({ prefix: "uffd-bench-" });
  let outcomes: Outcome[] = [];
  let missing: string | undefined;
  try {
    const built = await buildReferences([...new Set(selected.map((p) => p.program))], dir);
    missing = built.missing;
    if (missing) progress(`skipping the C side: ${missing}`);
    for (const [program, why] of built.failures) progress(`C reference ${program}: ${why}`);
    for (const [i, pair] of selected.entries()) {
      const outcome = await comparePair(pair, opts, built.binaries.get(pair.program), missing);
      outcomes.push(outcome);
      const summary = outcome.skipped
        ? `skipped: ${outcome.skipped}`
        : outcome.error
        ? `FAILED: ${outcome.error}`
        : `ours ${formatNs(outcome.ours!.median)}, ${pair.baseline ? "reference" : "C"} ${
          outcome.c ? formatNs(outcome.c.median) : "—"
        }` +
          (outcome.ratio ? `, ${outcome.ratio.median.toFixed(2)}×` : "") +
          (pair.goalKind === "excess" && outcome.excess ? ` (+${formatNs(outcome.excess.median)})` : "") +
          (outcome.ratioCpu ? ` (CPU ${outcome.ratioCpu.median.toFixed(2)}×)` : "") +
          (outcome.noisy ? " (noisy)" : "");
      progress(`[${i + 1}/${selected.length}] ${pair.id}: ${summary}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  outcomes = outcomes.filter(Boolean);

  const report: Report = {
    date,
    mode: opts.quick ? "quick" : "full",
    runs: opts.runs,
    noise: opts.noise,
    machine: m,
    loadAfter: loadAverage(),
    referencesMissing: missing,
    seconds: (performance.now() - started) / 1000,
    outcomes,
  };
  if (opts.json) console.log(JSON.stringify(report, null, 2));
  else {
    console.log(`\n${describeMachine(m)}`);
    console.log(
      `load average ${m.load.toFixed(2)} → ${report.loadAfter.toFixed(2)}; ${report.mode} mode, ` +
        `${opts.runs} runs per pair, ${Math.round(report.seconds)} s\n`,
    );
    console.log(terminalTable(outcomes));
    for (const o of outcomes) for (const w of o.warnings) console.log(`\nnote: ${o.pair.id}: ${w}`);
  }
  const line = performanceLine(report);
  if (!opts.json) console.log(`\nREADME.md, Performance:\n${line}`);
  if (opts.write) {
    const path = here("./RESULTS.md");
    // The live migration's section is bench:migrate's (bench/migrate.ts): kept as it is.
    const old = await Deno.readTextFile(path).catch(() => "");
    const [begin, end] = ["<!-- migrate:begin -->", "<!-- migrate:end -->"];
    const kept = old.includes(begin) && old.includes(end)
      ? `\n\n${old.slice(old.indexOf(begin), old.indexOf(end) + end.length)}\n`
      : "";
    await Deno.writeTextFile(path, resultsMarkdown(report).trimEnd() + kept);
    await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", path] }).output();
    progress(`wrote ${path}`);
    if (report.mode === "full") {
      // The README quotes the full run's like-for-like figures, between its markers.
      const readme = here("../README.md");
      const text = await Deno.readTextFile(readme);
      const [open, close] = README_MARKERS;
      const from = text.indexOf(open);
      const to = text.indexOf(close);
      if (from >= 0 && to > from) {
        await Deno.writeTextFile(readme, `${text.slice(0, from + open.length)}\n\n${line}\n\n${text.slice(to)}`);
        await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", readme] }).output();
        progress(`rewrote the Performance paragraph of ${readme}`);
      } else progress(`README.md has no ${open} … ${close} markers: its Performance paragraph was left alone`);
    }
  } else if (opts.only !== undefined) progress("--only: bench/RESULTS.md and README.md left as they were");
  return outcomes.some((o) => o.status === "failed") ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
