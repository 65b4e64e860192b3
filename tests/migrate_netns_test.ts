/**
 * "Another machine": the two ends in two network namespaces joined by a veth
 * pair, each direction held by a `tc qdisc … tbf` to 100 Mbit/s, then 1 Gbit/s
 * (`netem` is not available on these kernels). For each bandwidth: a
 * stop-and-copy baseline (`maxRounds: 0`), pre-copy, post-copy and hybrid, each
 * checked byte for byte against the writer's replayed log, with their downtime
 * and bytes printed side by side; pre-copy must beat the baseline's downtime,
 * converge when the writer dirties far less than the link carries, and report
 * that it did not when it dirties more.
 *
 * Needs root and iproute2 (`ip`, `tc`; `apt-get install -y iproute2`); skipped
 * with the reason otherwise.
 */

import assert from "node:assert/strict";
import { Region } from "../mod.ts";
import { DEADLINE_SCALE, isRoot, skipUnless } from "./helpers.ts";
import { type Json, pair, reference, results } from "./migrate_helpers.ts";

const PAGES = 2048; // 8 MiB
const DATA = 1536; // 6 MiB of data: half a second at 100 Mbit/s
/**
 * ~1 MB/s of new pages: far below either link. Where everything runs slower (UFFD_TEST_DEADLINE_SCALE: under QEMU each
 * round's own work takes ten times longer while the writer keeps its wall-clock pace), the writer is slowed by the same
 * factor, so that its rate stays far below what a round can carry.
 */
const SLOW = { dataPages: DATA, pagesPerMs: 0.25 / DEADLINE_SCALE, width: 4 };
const P = Region.pageSize;

function have(command: string): boolean {
  try {
    return new Deno.Command(command, { args: ["-V"], stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

/**
 * Whether this kernel can make the link: a veth pair shaped by tbf in a throw-away namespace. A kernel built or booted
 * without them (the initramfs of tests/kernels loads neither veth nor sch_tbf) cannot run these tests at all.
 */
function linkProblem(): string | undefined {
  const ns = `umig-probe-${Deno.pid % 100000}`;
  const step = (args: string[]) =>
    new Deno.Command(args[0]!, { args: args.slice(1), stdout: "null", stderr: "piped" }).outputSync();
  try {
    if (!step(["ip", "netns", "add", ns]).success) return "cannot make a network namespace";
    const veth = step(["ip", "-n", ns, "link", "add", "pa", "type", "veth", "peer", "name", "pb"]);
    if (!veth.success) return `no veth in this kernel: ${new TextDecoder().decode(veth.stderr).trim()}`;
    const tbf = step([
      "tc",
      "-n",
      ns,
      "qdisc",
      "add",
      "dev",
      "pa",
      "root",
      "tbf",
      "rate",
      "1mbit",
      "burst",
      "32kb",
      "latency",
      "50ms",
    ]);
    if (!tbf.success) return `no tbf qdisc in this kernel: ${new TextDecoder().decode(tbf.stderr).trim()}`;
    return undefined;
  } finally {
    step(["ip", "netns", "del", ns]);
  }
}

const ignore = skipUnless(isRoot, "network namespaces need root") ||
  skipUnless(have("ip") && have("tc"), "no iproute2 (ip, tc): apt-get install -y iproute2") ||
  skipUnless(P === 4096, `these layouts are in 4 KiB pages, this machine's are ${P}`) ||
  ((problem) => skipUnless(problem === undefined, problem ?? ""))(linkProblem());

function run(args: string[]): void {
  const out = new Deno.Command(args[0]!, { args: args.slice(1), stdout: "piped", stderr: "piped" }).outputSync();
  if (!out.success) throw new Error(`${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
}

/** Two namespaces and a veth pair between them, each end shaped by tbf at `rate`. */
function link(rate: string): { source: string; destination: string; address: string; close(): void } {
  const id = `${Deno.pid % 100000}`;
  const [a, b] = [`umig-s-${id}`, `umig-d-${id}`];
  const [va, vb] = [`ums${id}`, `umd${id}`];
  const burst = rate === "100mbit" ? "64kb" : "512kb";
  const steps = [
    ["ip", "netns", "add", a],
    ["ip", "netns", "add", b],
    ["ip", "link", "add", va, "type", "veth", "peer", "name", vb],
    ["ip", "link", "set", va, "netns", a],
    ["ip", "link", "set", vb, "netns", b],
    ["ip", "-n", a, "addr", "add", "10.77.0.1/24", "dev", va],
    ["ip", "-n", b, "addr", "add", "10.77.0.2/24", "dev", vb],
    ["ip", "-n", a, "link", "set", va, "up"],
    ["ip", "-n", b, "link", "set", vb, "up"],
    ["ip", "-n", a, "link", "set", "lo", "up"],
    ["ip", "-n", b, "link", "set", "lo", "up"],
    ["tc", "-n", a, "qdisc", "add", "dev", va, "root", "tbf", "rate", rate, "burst", burst, "latency", "50ms"],
    ["tc", "-n", b, "qdisc", "add", "dev", vb, "root", "tbf", "rate", rate, "burst", burst, "latency", "50ms"],
  ];
  const close = () => {
    for (const ns of [a, b]) {
      try {
        run(["ip", "netns", "del", ns]);
      } catch { /* not made */ }
    }
  };
  try {
    for (const step of steps) run(step);
  } catch (e) {
    close();
    throw e;
  }
  return { source: a, destination: b, address: "10.77.0.2", close };
}

interface Row {
  what: string;
  downtimeMs: number;
  bytes: number;
  rounds: number;
  converged: boolean;
  totalMs: number;
}

async function migrate(
  where: { source: string; destination: string; address: string },
  what: string,
  source: Json,
  destination: Json,
): Promise<{ row: Row; src: Json }> {
  const base = { pages: PAGES, deadlineMs: 100_000 };
  const pages = source.pages ?? PAGES;
  const p = await pair({ ...base, ...source }, { ...base, hostname: "0.0.0.0", ...destination }, {
    sourceNs: where.source,
    destinationNs: where.destination,
    hostname: where.address,
  });
  const [src, dst] = await results(p, 120_000);
  assert.equal(src.type, "result", `${what}: ${JSON.stringify(src.error)}`);
  assert.equal(dst.type, "result", `${what}: ${JSON.stringify(dst.error)}`);
  if (dst.digestAtResume !== undefined) assert.equal(dst.digestAtResume, src.digest, `${what}: the memory at resume`);
  else assert.equal(dst.digest, await reference([...src.runs, ...dst.runs], pages), `${what}: after resuming`);
  const r = src.result;
  return {
    row: {
      what,
      downtimeMs: r.downtimeMs,
      bytes: r.bytesSent,
      rounds: r.rounds.length,
      converged: r.converged,
      totalMs: r.totalMs,
    },
    src,
  };
}

for (const rate of ["100mbit", "1gbit"]) {
  Deno.test({
    name: `migrate netns at ${rate}: downtime and bytes of each mode against stop-and-copy; convergence`,
    ignore,
    async fn() {
      const net = link(rate);
      try {
        const slow = { layout: SLOW };
        const rows: Row[] = [];
        const baseline = await migrate(net, "stop-and-copy", { ...slow, maxRounds: 0 }, { checkAtResume: true });
        rows.push(baseline.row);
        const pre = await migrate(net, "pre-copy", { ...slow, downtime: 30 }, { checkAtResume: true });
        rows.push(pre.row);
        rows.push((await migrate(net, "post-copy", slow, { mode: "postcopy", runPasses: 30 })).row);
        rows.push((await migrate(net, "hybrid", slow, { mode: "hybrid", runPasses: 30 })).row);
        // A writer that dirties more than the link carries: a lane swept many times per round.
        const fast = rate === "100mbit"
          ? { pages: PAGES, layout: { dataPages: DATA, lane: 1400, width: 200, pagesPerMs: 20 } }
          : { pages: 8192, layout: { dataPages: 6144, lane: 4000, width: 400, pagesPerMs: 60 } };
        // A 5 ms budget: a round's leftover must fit 5 ms of the link (15 pages at 100 Mbit/s, 152 at 1 Gbit/s), which
        // a writer at even a sixth of its speed (a loaded machine) re-dirties many times over in a round.
        const hot = await migrate(net, "pre-copy, dirty rate > bandwidth", { ...fast, downtime: 5, maxRounds: 6 }, {
          pages: fast.pages,
          checkAtResume: true,
        });
        rows.push(hot.row);
        console.log(`\n${rate}: ${DATA} data pages (${(DATA * P) / 2 ** 20} MiB) of ${PAGES}`);
        console.log("mode                              downtime     bytes  rounds  converged  total");
        for (const r of rows) {
          console.log(
            `${r.what.padEnd(33)} ${r.downtimeMs.toFixed(1).padStart(8)} ms ${
              (r.bytes / 2 ** 20).toFixed(2).padStart(6)
            } MiB` +
              `  ${String(r.rounds).padStart(6)}  ${String(r.converged).padStart(9)}  ${r.totalMs.toFixed(0)} ms`,
          );
        }
        const link = rate === "100mbit" ? 12.5e6 : 125e6;
        const transfer = (DATA * P * 1000) / link;
        assert.ok(baseline.row.downtimeMs >= 0.8 * transfer, "stop-and-copy's pause holds the whole transfer");
        assert.ok(pre.row.downtimeMs < baseline.row.downtimeMs / 2, "pre-copy pauses far less than stop-and-copy");
        assert.equal(pre.row.converged, true, "a dirty rate far below the bandwidth converges");
        assert.ok(pre.row.bytes >= DATA * P, "pre-copy sends the data at least once");
        assert.equal(hot.row.converged, false, "a dirty rate above the bandwidth is reported as not converging");
        const measured = pre.src.result.rounds[0].bandwidth;
        assert.ok(measured <= 1.3 * link, `round 0 ran at ${measured} B/s: the link's limit holds`);
      } finally {
        net.close();
      }
    },
  });
}
