/**
 * `deno task bench:migrate`: live migration over loopback, measured against the
 * plain transport in the same run. Each run (default 3) measures, every one in
 * fresh processes (`bench/lib/migrate_peer.ts`):
 *
 * - a plain socket copy of the same bytes over the same transport, into a reused
 *   buffer (the loopback TCP bandwidth) and into fresh memory (what receiving an
 *   image into new pages costs here);
 * - the round trip of one page on the fault path, and a local `LazyRegion`'s
 *   first-touch fault (the post-copy's floor: 2 × fault + RTT);
 * - migrations of 256 MiB in which every page holds data and the writer dirties a
 *   tenth of them while it runs: stop-and-copy (the baseline), pre-copy (with and
 *   without `populate` at the destination), post-copy (its background stream
 *   alone, then with random first touches at the destination), hybrid.
 *
 * Reports the medians, judges the issue's goals, and rewrites the "Live
 * migration" section of `bench/RESULTS.md` (between its markers; `compare.ts`
 * keeps it).
 *
 * ```sh
 * deno task bench:migrate            # 3 runs, 256 MiB
 * deno task bench:migrate --quick    # 1 run, 64 MiB
 * deno task bench:migrate --json --no-write
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { describeMachine, loadAverage, machine } from "./lib/machine.ts";

// deno-lint-ignore no-explicit-any
type Json = any;

const PEER = new URL("./lib/migrate_peer.ts", import.meta.url).pathname;
const RESULTS = new URL("./RESULTS.md", import.meta.url).pathname;
export const BEGIN = "<!-- migrate:begin -->";
export const END = "<!-- migrate:end -->";
const P = 4096;

/** Runs one role; resolves with its JSON lines once it ends (killed after `timeoutMs`). */
function spawn(role: string, options: Json, timeoutMs = 300_000) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-prompt", PEER, role, JSON.stringify(options)],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: Json[] = [];
  let wake: (() => void) | undefined;
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const reading = (async () => {
    let text = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      let nl;
      while ((nl = text.indexOf("\n")) >= 0) {
        try {
          lines.push(JSON.parse(text.slice(0, nl)));
        } catch { /* not ours */ }
        text = text.slice(nl + 1);
        wake?.();
      }
    }
  })();
  const stderr = new Response(child.stderr).text();
  const done = (async () => {
    const status = await child.status;
    await reading;
    clearTimeout(timer);
    wake?.();
    return { status, stderr: await stderr };
  })();
  const first = async (type: string): Promise<Json> => {
    for (;;) {
      const found = lines.find((l) => l.type === type || l.type === "error");
      if (found) {
        if (found.type === "error") throw new Error(`${role}: ${found.message}`);
        return found;
      }
      const ended = await Promise.race([done, new Promise<void>((r) => wake = r)]);
      if (ended !== undefined && !lines.some((l) => l.type === type || l.type === "error")) {
        throw new Error(`${role} ended without a ${type}: ${ended.status.code} ${ended.stderr.trim().slice(-500)}`);
      }
    }
  };
  return { first, done };
}

/** A server role and its client: the server's result. */
async function serverClient(server: string, client: string, options: Json, resultOf: "server" | "client") {
  const s = spawn(server, options);
  const { port } = await s.first("listening");
  const c = spawn(client, { ...options, port });
  const [a, b] = await Promise.all([s.first("result").catch((e) => e), c.first("result").catch((e) => e)]);
  await Promise.all([s.done, c.done]);
  const result = resultOf === "server" ? a : b;
  if (result instanceof Error) throw result;
  // Both ends' CPU time, where they report it.
  return { ...result, bothCpuMs: (a instanceof Error ? NaN : a.cpuMs) + (b instanceof Error ? NaN : b.cpuMs) };
}

async function migration(pages: number, source: Json, destination: Json) {
  const d = spawn("destination", { pages, ...destination });
  const { port } = await d.first("listening");
  const s = spawn("source", { pages, port, ...source });
  const [src, dst] = await Promise.all([s.first("result"), d.first("result")]);
  await Promise.all([s.done, d.done]);
  return { src, dst };
}

const med = (values: number[]) => {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor((s.length - 1) / 2)]!;
};
const spread = (values: number[]) => {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  return s.length === 0 ? "—" : s.length === 1 ? "" : ` (${fmt(s[0]!)}–${fmt(s.at(-1)!)})`;
};
const fmt = (n: number) => n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2);
const mbps = (bytesPerSecond: number) => bytesPerSecond / 1e6;

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      runs: { type: "string" },
      quick: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      "no-write": { type: "boolean", default: false },
    },
    strict: true,
  });
  const quick = values.quick!;
  const runs = Number(values.runs ?? (quick ? 1 : 3));
  const mib = quick ? 64 : 256;
  const bytes = mib << 20;
  const pages = bytes / P;
  const log = (text: string) => console.error(text);
  const m = await machine();
  log(`machine: ${describeMachine(m)}; load ${m.load.toFixed(2)}; ${runs} runs of ${mib} MiB`);
  const samples: Record<string, number[]> = {};
  const add = (key: string, value: number) => (samples[key] ??= []).push(value);
  const started = performance.now();
  for (let run = 0; run < runs; run++) {
    log(`run ${run + 1}/${runs}`);
    const reused = await serverClient("copy-server", "copy-client", { bytes, into: "reused" }, "server");
    add("copy.reused", reused.bandwidth);
    const fresh = await serverClient("copy-server", "copy-client", { bytes, into: "fresh" }, "server");
    add("copy.fresh", fresh.bandwidth);
    // Like for like with a populated target: the kernel receiving straight into 256 MiB of populated memory,
    // and receiving into a reused buffer then copying into it (what the destination does).
    const populated = await serverClient("copy-server", "copy-client", { bytes, into: "populated" }, "server");
    add("copy.populated", populated.bandwidth);
    const staged = await serverClient(
      "copy-server",
      "copy-client",
      { bytes, into: "populated", staged: true },
      "server",
    );
    add("copy.staged", staged.bandwidth);
    add("copy.reused.cpu", reused.bothCpuMs);
    add("copy.populated.cpu", populated.bothCpuMs);
    add("copy.staged.cpu", staged.bothCpuMs);
    const ping = await serverClient("ping-server", "ping-client", { count: 2000 }, "client");
    add("rtt", ping.rttMs);
    const local = spawn("lazy-local", { bytes: 64 << 20, touches: 2000 });
    add("lazy.fault", (await local.first("result")).faultMs);
    await local.done;
    log(
      `  copy ${fmt(mbps(reused.bandwidth))} MB/s (fresh memory ${fmt(mbps(fresh.bandwidth))}), rtt ${
        fmt(ping.rttMs * 1000)
      } µs`,
    );

    const stop = await migration(pages, { maxRounds: 0 }, { mode: "precopy" });
    add("stop.downtime", stop.src.result.downtimeMs);
    add("stop.bytes", stop.src.result.bytesSent);
    for (const populate of [false, true]) {
      const pre = await migration(pages, { downtime: 20 }, { mode: "precopy", populate });
      const r = pre.src.result;
      const key = populate ? "pre.populated" : "pre";
      add(`${key}.downtime`, r.downtimeMs);
      add(`${key}.bytes`, r.bytesSent);
      add(`${key}.round0`, (r.rounds[0].bytes * 1000) / r.rounds[0].ms);
      add(`${key}.rounds`, r.rounds.length);
      add(`${key}.dirtied`, pre.src.dirtied);
      add(`${key}.converged`, r.converged ? 1 : 0);
      add(`${key}.round0.cpu.src`, pre.src.round0Cpu);
      add(`${key}.round0.cpu.dst`, pre.dst.round0Cpu);
      add(`${key}.round0.bytes`, r.rounds[0].bytes);
      log(
        `  pre-copy${populate ? " (populated)" : ""}: downtime ${fmt(r.downtimeMs)} ms, ${r.rounds.length} rounds, ` +
          `round 0 ${fmt(mbps((r.rounds[0].bytes * 1000) / r.rounds[0].ms))} MB/s, dirtied ${pre.src.dirtied} pages`,
      );
    }
    const post = await migration(pages, {}, { mode: "postcopy" });
    const pr = post.src.result;
    add("post.downtime", pr.downtimeMs);
    add("post.bytes", pr.bytesSent);
    add("post.stream", (pr.postcopy.streamed * P * 1000) / pr.postcopy.ms);
    const touched = await migration(pages, {}, { mode: "postcopy", touches: 2000 });
    add("post.touch", touched.dst.touchMs);
    add("post.touches", touched.dst.networkTouches);
    // Where a first touch's time goes: the request's round trip in the destination's handler, and the part of it
    // the source's page server spent; the rest is the fault's own path (as in a local LazyRegion).
    add("post.request", touched.dst.stats.requestMs);
    add("post.service", touched.src.result.postcopy.serviceMs);
    add("post.requests", touched.src.result.postcopy.requests);
    const hybrid = await migration(pages, { downtime: 20 }, { mode: "hybrid" });
    add("hybrid.downtime", hybrid.src.result.downtimeMs);
    add("hybrid.bytes", hybrid.src.result.bytesSent);
    log(
      `  post-copy: downtime ${fmt(pr.downtimeMs)} ms, stream ${
        fmt(mbps((pr.postcopy.streamed * P * 1000) / pr.postcopy.ms))
      } MB/s, ` +
        `first touch ${fmt(touched.dst.touchMs * 1000)} µs (${touched.dst.networkTouches} over the network); ` +
        `hybrid downtime ${fmt(hybrid.src.result.downtimeMs)} ms`,
    );
  }
  const M = (key: string) => med(samples[key] ?? []);
  /** A round 0 CPU figure scaled to the whole memory (round 0 sends what holds data: about all of it). */
  const perMib = (key: string) => {
    const round0 = key.replace(/\.cpu\.(src|dst)$/, ".bytes");
    return M(key) * bytes / M(round0);
  };
  const data = bytes;
  const goals = [
    {
      goal: "pre-copy downtime ≤ 20 ms",
      value: `${fmt(M("pre.downtime"))} ms${spread(samples["pre.downtime"]!)}`,
      met: M("pre.downtime") <= 20,
    },
    {
      goal: "pre-copy total bytes ≤ 1.3 × the data pages",
      value: `${(M("pre.bytes") / data).toFixed(3)}×`,
      met: M("pre.bytes") / data <= 1.3,
    },
    {
      goal: "round 0 ≥ 50% of the plain socket copy (reused buffer)",
      value: `${fmt(mbps(M("pre.round0")))} MB/s = ${(100 * M("pre.round0") / M("copy.reused")).toFixed(0)}% of ` +
        `${fmt(mbps(M("copy.reused")))} MB/s`,
      met: M("pre.round0") >= 0.5 * M("copy.reused"),
    },
    {
      goal: "round 0 ≥ 50% of the plain socket copy into fresh memory",
      value: `${fmt(mbps(M("pre.round0")))} MB/s = ${(100 * M("pre.round0") / M("copy.fresh")).toFixed(0)}% of ` +
        `${fmt(mbps(M("copy.fresh")))} MB/s`,
      met: M("pre.round0") >= 0.5 * M("copy.fresh"),
    },
    {
      goal: "round 0 with a populated target ≥ 50% of the plain socket copy (reused buffer)",
      value: `${fmt(mbps(M("pre.populated.round0")))} MB/s = ` +
        `${(100 * M("pre.populated.round0") / M("copy.reused")).toFixed(0)}%`,
      met: M("pre.populated.round0") >= 0.5 * M("copy.reused"),
    },
    {
      goal: "round 0 with a populated target ≥ 50% of the plain socket copy into populated memory (staged)",
      value: `${fmt(mbps(M("pre.populated.round0")))} MB/s = ` +
        `${(100 * M("pre.populated.round0") / M("copy.staged")).toFixed(0)}% of ${fmt(mbps(M("copy.staged")))} MB/s`,
      met: M("pre.populated.round0") >= 0.5 * M("copy.staged"),
    },
    {
      goal: "post-copy first touch ≤ 2 × local LazyRegion fault + RTT",
      value: `${fmt(M("post.touch") * 1000)} µs against 2 × ${fmt(M("lazy.fault") * 1000)} + ${
        fmt(M("rtt") * 1000)
      } = ${fmt((2 * M("lazy.fault") + M("rtt")) * 1000)} µs`,
      met: M("post.touch") <= 2 * M("lazy.fault") + M("rtt"),
    },
    {
      goal: "post-copy background stream ≥ 50% of the plain socket copy (reused buffer)",
      value: `${fmt(mbps(M("post.stream")))} MB/s = ${(100 * M("post.stream") / M("copy.reused")).toFixed(0)}%`,
      met: M("post.stream") >= 0.5 * M("copy.reused"),
    },
    {
      goal: "post-copy background stream ≥ 50% of the plain socket copy into fresh memory",
      value: `${fmt(mbps(M("post.stream")))} MB/s = ${(100 * M("post.stream") / M("copy.fresh")).toFixed(0)}%`,
      met: M("post.stream") >= 0.5 * M("copy.fresh"),
    },
  ];
  const modes = [
    ["stop-and-copy (baseline)", "stop"],
    ["pre-copy", "pre"],
    ["pre-copy, populated target", "pre.populated"],
    ["post-copy", "post"],
    ["hybrid (2 rounds, then post-copy)", "hybrid"],
  ] as const;
  const date = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const lines = [
    BEGIN,
    "## Live migration",
    "",
    `Written by \`deno task bench:migrate\` on ${date} (${runs} run${runs === 1 ? "" : "s"}, medians, min–max in ` +
    `brackets; ${Math.round((performance.now() - started) / 1000)} s). ${describeMachine(m)}; load ${
      m.load.toFixed(2)
    } → ${loadAverage().toFixed(2)}.`,
    "",
    `${mib} MiB of wasm memory, every page holding data; the writer dirties a tenth of it (a lane of ` +
    `${pages / 10} pages swept in 1.5 s) while the migration runs; loopback TCP; downtime is from \`pause()\` ` +
    `resolving to the destination's confirmation.`,
    "",
    "| mode | downtime | bytes sent | × data |",
    "| --- | --- | --- | --- |",
    ...modes.map(([name, key]) =>
      `| ${name} | ${fmt(M(`${key}.downtime`))} ms${spread(samples[`${key}.downtime`]!)} | ${
        (M(`${key}.bytes`) / 2 ** 20).toFixed(1)
      } MiB | ${(M(`${key}.bytes`) / data).toFixed(3)} |`
    ),
    "",
    `Plain socket copy of ${mib} MiB (the migration's transport, 1 MiB sends): ${
      fmt(mbps(M("copy.reused")))
    } MB/s into a reused buffer${spread(samples["copy.reused"]!.map(mbps))}, ${
      fmt(mbps(M("copy.fresh")))
    } MB/s into fresh memory${spread(samples["copy.fresh"]!.map(mbps))}, ${
      fmt(mbps(M("copy.populated")))
    } MB/s straight into populated memory${spread(samples["copy.populated"]!.map(mbps))}, ${
      fmt(mbps(M("copy.staged")))
    } MB/s into a reused buffer and copied from there into populated memory${
      spread(samples["copy.staged"]!.map(mbps))
    }. CPU time of both ends (every thread but the writer's, per ${mib} MiB): the plain copy ${
      fmt(M("copy.reused.cpu"))
    } ms (reused buffer), ${fmt(M("copy.populated.cpu"))} ms (straight into populated memory), ${
      fmt(M("copy.staged.cpu"))
    } ms (staged); round 0 into a populated target ${
      fmt(perMib("pre.populated.round0.cpu.src") + perMib("pre.populated.round0.cpu.dst"))
    } ms (source ${fmt(perMib("pre.populated.round0.cpu.src"))}, destination ${
      fmt(perMib("pre.populated.round0.cpu.dst"))
    }), into a fresh one ${
      fmt(perMib("pre.round0.cpu.src") + perMib("pre.round0.cpu.dst"))
    } ms. Round trip of a page: ${fmt(M("rtt") * 1000)} µs; local \`LazyRegion\` first-touch fault: ${
      fmt(M("lazy.fault") * 1000)
    } µs. Pre-copy: ${fmt(M("pre.rounds"))} rounds, ${fmt(M("pre.dirtied"))} pages dirtied during the migration (${
      (100 * M("pre.dirtied") / pages).toFixed(1)
    }%); post-copy first touches that went to the network: ${fmt(M("post.touches"))} of 2000 (${
      fmt(M("post.requests"))
    } pages asked for in all), each request's round trip ${
      fmt(M("post.request") * 1000)
    } µs in the destination's handler, of which the source's page server took ${fmt(M("post.service") * 1000)} µs.`,
    "",
    "| goal | measured | status |",
    "| --- | --- | --- |",
    ...goals.map((g) => `| ${g.goal} | ${g.value} | ${g.met ? "met" : "**missed**"} |`),
    END,
  ];
  const section = lines.join("\n");
  if (values.json) console.log(JSON.stringify({ date, machine: m, runs, mib, samples, goals }, null, 2));
  else console.log(section);
  if (!values["no-write"]) {
    const old = await Deno.readTextFile(RESULTS).catch(() => "# Benchmark results\n");
    const start = old.indexOf(BEGIN);
    const stop = old.indexOf(END);
    const next = start >= 0 && stop > start
      ? old.slice(0, start) + section + old.slice(stop + END.length)
      : `${old.trimEnd()}\n\n${section}\n`;
    await Deno.writeTextFile(RESULTS, next);
    await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", RESULTS] }).output();
    log(`wrote ${RESULTS}`);
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
