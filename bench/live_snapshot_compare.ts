/**
 * The live-snapshot benchmark: our `LiveSnapshot` (`bench/ours/live_snapshot.ts`)
 * against a C program doing the same QEMU-style background snapshot with a
 * fault-handler thread and a copier (`bench/reference/live_snapshot.c`), each
 * beside a plain `memcpy` of the whole buffer in the same process — idle, and
 * under a concurrent writer that times every write. Runs are alternated (ours, C,
 * ours, C, …), each in a fresh process; the table shows medians and the median
 * of the per-run ratios.
 *
 * ```sh
 * deno run -A bench/live_snapshot_compare.ts               # 1 GiB, 3 runs of each
 * deno run -A bench/live_snapshot_compare.ts --mib=256 --runs=5 --json
 * ```
 *
 * Goals (issue 5): a snapshot under a concurrent writer at no less than 50% of
 * `memcpy` bandwidth; the writer's stall per fault within 1.2× of the C handler's.
 *
 * @module
 */

import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    mib: { type: "string", default: "1024" },
    runs: { type: "string", default: "3" },
    chunk: { type: "string", default: "64" },
    json: { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  console.log("usage: deno run -A bench/live_snapshot_compare.ts [--mib=1024] [--runs=3] [--chunk=64] [--json]");
  Deno.exit(0);
}

type Row = Record<string, number | string>;
const here = new URL(".", import.meta.url).pathname;
const dir = await Deno.makeTempDir({ prefix: "uffd-snapshot-bench-" });
const binary = `${dir}/live_snapshot`;
const cc = await new Deno.Command("cc", {
  args: ["-O2", "-pthread", "-o", binary, `${here}reference/live_snapshot.c`],
  stderr: "piped",
}).output();
if (!cc.success) {
  console.error(`the C reference does not build:\n${new TextDecoder().decode(cc.stderr)}`);
  Deno.exit(1);
}

async function run(side: "ours" | "c", writer: number): Promise<Row> {
  const common = [`--mib=${values.mib}`, `--writer=${writer}`, `--chunk=${values.chunk}`];
  const command = side === "c"
    ? new Deno.Command(binary, { args: common, stdout: "piped", stderr: "piped" })
    : new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-prompt", `${here}ours/live_snapshot.ts`, ...common],
      stdout: "piped",
      stderr: "piped",
    });
  const out = await command.output();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
  if (!out.success) throw new Error(`${side} failed: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(text);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

const load = () => Deno.readTextFileSync("/proc/loadavg").split(" ")[0];
const report: Record<string, unknown> = { mib: Number(values.mib), loadBefore: load() };
const runs = Number(values.runs);
for (const writer of [0, 1]) {
  const rows: { ours: Row; c: Row }[] = [];
  for (let i = 0; i < runs; i++) rows.push({ ours: await run("ours", writer), c: await run("c", writer) });
  const pick = (side: "ours" | "c", key: string) => median(rows.map((r) => Number(r[side][key])));
  const ratio = (key: string, a: "ours" | "c", b: "ours" | "c", keyB = key) =>
    median(rows.map((r) => Number(r[a][key]) / Number(r[b][keyB])));
  report[writer ? "writer" : "idle"] = {
    ours: {
      snapshot_gbps: pick("ours", "snapshot_gbps"),
      memcpy_gbps: pick("ours", "memcpy_gbps"),
      of_memcpy: ratio("snapshot_gbps", "ours", "ours", "memcpy_gbps"),
      take_ms: pick("ours", "take_ms"),
      faults: pick("ours", "faults"),
      stall_mean_us: pick("ours", "stall_mean_us"),
      stall_p50_us: pick("ours", "stall_p50_us"),
      stall_p99_us: pick("ours", "stall_p99_us"),
      wrong_pages: Math.max(...rows.map((r) => Number(r.ours.wrong_pages))),
    },
    c: {
      snapshot_gbps: pick("c", "snapshot_gbps"),
      memcpy_gbps: pick("c", "memcpy_gbps"),
      of_memcpy: ratio("snapshot_gbps", "c", "c", "memcpy_gbps"),
      faults: pick("c", "faults"),
      stall_mean_us: pick("c", "stall_mean_us"),
      stall_p50_us: pick("c", "stall_p50_us"),
      stall_p99_us: pick("c", "stall_p99_us"),
      wrong_pages: Math.max(...rows.map((r) => Number(r.c.wrong_pages))),
    },
    stall_p50_ours_over_c: writer ? ratio("stall_p50_us", "ours", "c") : undefined,
    runs: rows,
  };
}
report.loadAfter = load();
await Deno.remove(dir, { recursive: true });

if (values.json) {
  console.log(JSON.stringify(report));
} else {
  console.log(
    `live snapshot of ${values.mib} MiB, ${runs} alternating runs each; load ${report.loadBefore} → ${report.loadAfter}`,
  );
  for (const mode of ["idle", "writer"] as const) {
    const m = report[mode] as { ours: Row; c: Row; stall_p50_ours_over_c?: number };
    for (const side of ["ours", "c"] as const) {
      const r = m[side];
      console.log(
        `${mode.padEnd(6)} ${side.padEnd(4)} snapshot ${Number(r.snapshot_gbps).toFixed(2)} GB/s = ` +
          `${(Number(r.of_memcpy) * 100).toFixed(0)}% of memcpy (${Number(r.memcpy_gbps).toFixed(2)} GB/s)` +
          (mode === "writer"
            ? `; ${r.faults} faults, writer stall p50 ${r.stall_p50_us} µs, mean ${r.stall_mean_us} µs, p99 ${r.stall_p99_us} µs`
            : "") +
          (Number(r.wrong_pages) ? `; WRONG PAGES ${r.wrong_pages}` : ""),
      );
    }
    if (m.stall_p50_ours_over_c !== undefined) {
      console.log(`${"".padEnd(6)} stall p50 ours / C: ${m.stall_p50_ours_over_c.toFixed(2)}×`);
    }
  }
}
