/**
 * `deno task stress`: the stress run with integrity checks (see
 * `tests/stress/README.md`), for as long as asked, on one or more memory types.
 * Each run is a child process (`bounce.ts`) killed at a deadline, so a hang is
 * reported as such instead of stalling.
 *
 * ```sh
 * deno task stress                              # 60 s on anonymous memory
 * deno task stress --duration 300               # 5 minutes
 * deno task stress --memory anon,shmem,hugetlb --duration 30 --json
 * ```
 *
 * Exit codes: 0 every run clean; 1 an integrity or handler failure; 2 bad usage;
 * 3 a run hung past its deadline or died without a report.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { defaultOptions, type StressOptions, type StressReport } from "./bounce.ts";
import type { MemType } from "../conformance/helpers.ts";
import { DEADLINE_SCALE } from "../helpers.ts";

const ENGINE = new URL("./bounce.ts", import.meta.url);
const MEMORY: readonly MemType[] = ["anon", "shmem", "shmem-private", "hugetlb", "hugetlb-private"];

/** How a child run ended. */
export interface ChildRun {
  /** The report, when the child printed one. */
  report: StressReport | undefined;
  /** Killed at its deadline. */
  timedOut: boolean;
  /** Exit code. */
  code: number;
  /** Its stderr (progress lines, errors). */
  stderr: string;
}

/**
 * Runs `bounce.ts` with `options` in a child process, killed after `deadlineMs` (scaled by
 * `DEADLINE_SCALE` from `tests/helpers.ts`).
 * Progress lines go to `onLine` as they come.
 */
export async function runStressChild(
  options: Partial<StressOptions>,
  deadlineMs: number,
  onLine?: (line: string) => void,
): Promise<ChildRun> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-prompt", ENGINE.pathname, JSON.stringify(options)],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, deadlineMs * DEADLINE_SCALE);
  const stderrLines: string[] = [];
  const readErr = (async () => {
    let rest = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      rest += chunk;
      const lines = rest.split("\n");
      rest = lines.pop()!;
      for (const line of lines) {
        stderrLines.push(line);
        onLine?.(line);
      }
    }
    if (rest) stderrLines.push(rest);
  })();
  const stdout = new Response(child.stdout).text();
  const status = await child.status;
  clearTimeout(timer);
  await readErr;
  const last = (await stdout).trim().split("\n").at(-1) ?? "";
  let report: StressReport | undefined;
  try {
    report = last.startsWith("{") ? JSON.parse(last) : undefined;
  } catch { /* no report */ }
  return { report, timedOut, code: status.code, stderr: stderrLines.join("\n") };
}

/** One line per run, for people. */
export function summary(r: StressReport): string {
  const o = r.options;
  const lines = [
    `${o.memory}: ${r.ok ? "clean" : "FAILED"} — ${r.seconds} s, ${o.workers} Workers, ${o.pages} pages of ${
      r.pageSize / 1024
    } KiB${r.wp ? ", missing + wp" : ", missing only (no write-protect for this memory here)"}`,
    `  increments: ${r.increments} (${r.incrementsPerSecond}/s), per Worker ${r.perWorker.join(" ")}; ` +
    `racing writes ${r.racingWrites}, reads ${r.racingReads}`,
    `  faults served: ${r.faults} (${r.faultsPerSecond}/s): ${r.missingFaults} missing, ${r.wpFaults} wp; ` +
    `retried after EAGAIN ${r.retried}; remove events ${r.removeEvents}; batches ${r.batches} (largest ${r.largestBatch})`,
    `  fault latency (read → resolved): p50 ${r.latency.p50}, p99 ${r.latency.p99}, max ${r.latency.max}`,
    `  bouncer: ${r.bouncer.zappedPages} pages zapped in ${r.bouncer.zaps} zaps, ${r.bouncer.protectedPages} pages ` +
    `write-protected in ${r.bouncer.protects} calls`,
    `  verified: ${r.verified.pages}/${o.pages} pages, ${r.verified.totalInPages} increments in the pages, ` +
    `${r.verified.sumOfWorkers} made by the Workers`,
  ];
  for (const f of r.failures) lines.push(`  failure: ${f}`);
  return lines.join("\n");
}

const HELP = `deno task stress [options]

Hammers a region registered for missing and write-protect faults from N Workers
while a FaultHandler serves the faults, bounce-copying zapped pages back and
re-protecting ranges; checks every page's counters and checksum (uffd-stress).

Options:
  --duration <s>      seconds per memory type (default 60)
  --memory <list>     comma-separated: ${MEMORY.join(", ")}, or all (default anon)
  --workers <n>       hammer Workers (default cores × 2 = ${defaultOptions().workers})
  --pages <n>         pages in the region (default 512; 16 huge pages for hugetlb)
  --seed <n>          seed of the random choices (default 1)
  --wp-every <n>      copy with MODE_WP every n-th copy, 0 never (default 2)
  --no-racing         no unlocked accesses (no racing faults on one page)
  --no-events         no EVENT_REMOVE (zaps do not wait for the handler)
  --sabotage <kind>   stale, torn or zero: break the bounce on purpose (the run must fail)
  --progress <s>      a progress line every s seconds (default 10; 0 never)
  --json              print the reports as JSON
  -h, --help          this text

Exit codes: 0 clean, 1 integrity or handler failure, 2 bad usage, 3 hang or crash.`;

function positive(value: string | undefined, name: string, fallback: number, zero = false): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < (zero ? 0 : 1e-9)) {
    throw new TypeError(`--${name} must be a ${zero ? "non-negative" : "positive"} number`);
  }
  return n;
}

async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        duration: { type: "string" },
        memory: { type: "string" },
        workers: { type: "string" },
        pages: { type: "string" },
        seed: { type: "string" },
        "wp-every": { type: "string" },
        "no-racing": { type: "boolean" },
        "no-events": { type: "boolean" },
        sabotage: { type: "string" },
        progress: { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    });
  } catch (e) {
    console.error(`${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  const v = parsed.values;
  if (v.help) {
    console.log(HELP);
    return 0;
  }
  const base = defaultOptions();
  let memories: MemType[];
  let options: Omit<StressOptions, "memory" | "pages">;
  let pages: number | undefined;
  try {
    const list = (v.memory ?? "anon").split(",").map((m) => m.trim());
    memories = list.includes("all") ? [...MEMORY] : list as MemType[];
    for (const m of memories) if (!MEMORY.includes(m)) throw new TypeError(`unknown memory type ${m}`);
    const sabotage = (v.sabotage ?? "none") as StressOptions["sabotage"];
    if (!["none", "stale", "torn", "zero"].includes(sabotage)) throw new TypeError(`unknown sabotage ${sabotage}`);
    pages = v.pages === undefined ? undefined : Math.floor(positive(v.pages, "pages", 0));
    options = {
      durationMs: positive(v.duration, "duration", 60) * 1000,
      workers: Math.floor(positive(v.workers, "workers", base.workers)),
      seed: Math.floor(positive(v.seed, "seed", 1)),
      racing: !v["no-racing"],
      events: !v["no-events"],
      wpEvery: Math.floor(positive(v["wp-every"], "wp-every", 2, true)),
      sabotage,
      progressMs: positive(v.progress, "progress", v.json ? 0 : 10, true) * 1000,
    };
  } catch (e) {
    console.error(`${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  const reports: StressReport[] = [];
  let code = 0;
  for (const memory of memories) {
    if (memory.startsWith("hugetlb") && Deno.uid() !== 0) {
      console.error(`${memory}: skipped: reserving huge pages needs root`);
      continue;
    }
    const run: StressOptions = {
      ...options,
      memory,
      pages: pages ?? (memory.startsWith("hugetlb") ? 16 : base.pages),
    };
    const deadline = run.durationMs + 60_000;
    const child = await runStressChild(run, deadline, (line) => console.error(line));
    if (!child.report) {
      console.error(
        `${memory}: ${
          child.timedOut ? `hung: killed after ${deadline / 1000} s` : `died (exit ${child.code}) without a report`
        }`,
      );
      code = 3;
      continue;
    }
    reports.push(child.report);
    if (!v.json) console.log(summary(child.report));
    if (!child.report.ok && code === 0) code = 1;
  }
  if (v.json) console.log(JSON.stringify(reports, null, 2));
  return code;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
