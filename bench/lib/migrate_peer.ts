/**
 * The processes of `bench/migrate.ts`, one role each (`deno run -A
 * migrate_peer.ts <role> '<options as JSON>'`), printing JSON lines:
 *
 * - `copy-server` / `copy-client`: the plain socket copy — `bytes` sent in 1 MiB
 *   sends over the migration's own transport (`migrate/_socket.ts`, libc, off the
 *   main thread), received into one reused 1 MiB buffer (`into: "reused"`: the
 *   TCP bandwidth) or into a fresh mapping of `bytes` (`"fresh"`: what any
 *   receiver of an image pays for new memory on this machine);
 * - `ping-server` / `ping-client`: one round trip of the post-copy's fault path,
 *   a 24-byte request answered with a 4 KiB page, blocking calls, `count` times;
 * - `lazy-local`: a local `LazyRegion` over an in-memory image, `touches` random
 *   first touches by the main isolate (the post-copy's latency floor);
 * - `source` / `destination`: a migration of the migration writer's memory
 *   (`cli/_migrate_writer.ts`), every page holding data and a tenth of them
 *   dirtied while it runs; the destination may `populate` its target, or touch
 *   `touches` random pages of the upper half right after post-copy resumes (the
 *   first-touch latency, counting only touches that went to the network).
 *
 * @module
 */

import { LazyRegion, Migration, Region } from "../../mod.ts";
import { Socket } from "../../migrate/_socket.ts";
import { recvSync, sendSync } from "../../migrate/_socket.ts";
import { migrationLayout, MigrationWriter } from "../../cli/_migrate_writer.ts";

// deno-lint-ignore no-explicit-any
type Json = any;
const role = Deno.args[0];
const o: Json = JSON.parse(Deno.args[1] ?? "{}");
const P = Region.pageSize;
const print = (v: Json) => console.log(JSON.stringify(v));
const CHUNK = 1 << 20;

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor(s.length / 2)]!;
}

/** A random permutation of `[from, to)` (Fisher–Yates, a 32-bit LCG, seed 12345). */
function permutation(from: number, to: number): number[] {
  const out = Array.from({ length: to - from }, (_, i) => from + i);
  let seed = 12345;
  for (let i = out.length - 1; i > 0; i--) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    const j = seed % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

function writerLayout(pages: number) {
  const lane = Math.floor(pages / 10);
  return migrationLayout(pages, {
    dataPages: pages,
    lane,
    laneAt: Math.floor(pages / 2),
    width: 32,
    pagesPerMs: lane / (o.sweepMs ?? 1500),
  });
}

/**
 * CPU time this process has used, in ms (every thread's, from `/proc/self/task/N/schedstat`, nanoseconds on the
 * CPU), leaving out `skip`'s threads (by name: the writer's Worker is not the migration's work). On a busy machine
 * the CPU an end spends per byte holds where wall-clock throughput does not.
 */
function cpuMs(skip = "worker-", only?: string): number {
  let ns = 0;
  for (const entry of Deno.readDirSync("/proc/self/task")) {
    if (only !== undefined && entry.name !== only) continue;
    try {
      const comm = Deno.readTextFileSync(`/proc/self/task/${entry.name}/comm`);
      if (comm.startsWith(skip)) continue;
      ns += Number(Deno.readTextFileSync(`/proc/self/task/${entry.name}/schedstat`).split(" ")[0]);
    } catch { /* the thread ended */ }
  }
  return ns / 1e6;
}

async function copyServer(): Promise<void> {
  using listener = Socket.listen({ hostname: "127.0.0.1", port: 0 });
  print({ type: "listening", port: listener.local.port });
  const socket = await listener.accept();
  const whole = o.into === "fresh" || o.into === "populated";
  const into = whole
    ? Region.map(o.bytes, { populate: o.into === "populated" })
    : Region.map(CHUNK, { populate: true });
  if (o.into === "populated") { for (let i = 0; i < o.bytes; i += P) into.bytes[i] = o.fill ?? 0; // as receive({ populate })
   }
  using stage = Region.map(CHUNK, { populate: true });
  const t0 = performance.now();
  const c0 = cpuMs();
  for (let done = 0; done < o.bytes; done += CHUNK) {
    const at = whole ? into.address + BigInt(o.wrap ? done % o.wrap : done) : into.address;
    if (o.staged) {
      // Received into a reused buffer, then copied into place by this thread (what the destination does).
      await socket.recvAsync(Number(stage.address), CHUNK);
      into.bytes.set(stage.bytes, done);
    } else await socket.recvAsync(Number(at), CHUNK);
  }
  const ms = performance.now() - t0;
  const cpu = cpuMs() - c0;
  socket.close();
  print({ type: "result", bytes: o.bytes, ms, bandwidth: (o.bytes * 1000) / ms, cpuMs: cpu });
}

async function copyClient(): Promise<void> {
  const socket = await Socket.connect({ hostname: "127.0.0.1", port: o.port });
  using buffer = Region.map(CHUNK, { populate: true });
  buffer.bytes.fill(7);
  const c0 = cpuMs();
  for (let done = 0; done < o.bytes; done += CHUNK) await socket.sendAsync(Number(buffer.address), CHUNK);
  const cpu = cpuMs() - c0;
  socket.close();
  print({ type: "result", cpuMs: cpu });
}

async function pingServer(): Promise<void> {
  using listener = Socket.listen({ hostname: "127.0.0.1", port: 0 });
  print({ type: "listening", port: listener.local.port });
  const socket = await listener.accept();
  using buffer = Region.map(2 * P, { populate: true });
  const at = Number(buffer.address);
  for (let i = 0; i < o.count; i++) {
    recvSync(socket.fd, at, 24);
    sendSync(socket.fd, at, P + 36);
  }
  socket.close();
}

async function pingClient(): Promise<void> {
  const socket = await Socket.connect({ hostname: "127.0.0.1", port: o.port });
  using buffer = Region.map(2 * P, { populate: true });
  const at = Number(buffer.address);
  const times: number[] = [];
  for (let i = 0; i < o.count; i++) {
    const t0 = performance.now();
    sendSync(socket.fd, at, 24);
    recvSync(socket.fd, at, P + 36);
    times.push(performance.now() - t0);
  }
  socket.close();
  print({ type: "result", rttMs: median(times.slice(o.count / 10)) });
}

async function lazyLocal(): Promise<void> {
  using image = Region.map(o.bytes);
  const words = new Uint32Array(image.bytes.buffer);
  for (let i = 0; i < words.length; i++) words[i] = (Math.imul(i, 2654435761) >>> 0) | 1;
  await using lazy = await LazyRegion.open({ address: image.address, length: image.length });
  const bytes = lazy.bytes;
  const order = permutation(0, o.bytes / P);
  const times: number[] = [];
  let sum = 0;
  for (let i = 0; i < o.touches + 256; i++) {
    const t0 = performance.now();
    sum += bytes[order[i]! * P]!;
    if (i >= 256) times.push(performance.now() - t0); // the first ones warm the Worker up
  }
  print({ type: "result", faultMs: median(times), faults: lazy.stats.faults, sum });
}

async function source(): Promise<void> {
  const writer = await MigrationWriter.start({ layout: writerLayout(o.pages), pauseMs: 1 });
  await writer.until(10, 120_000);
  const startPass = writer.passes;
  let pausePass = 0;
  // The CPU round 0 took (this end, the writer's Worker left out): from the handshake to round 1's first report.
  let c0 = NaN, round0Cpu = NaN, m0 = NaN, round0MainCpu = NaN;
  try {
    const result = await Migration.send(writer.memory, {
      onProgress: (p) => {
        if (p.phase === "connected") [c0, m0] = [cpuMs(), cpuMs("-", String(Deno.pid))];
        else if (Number.isNaN(round0Cpu) && p.round >= 1) {
          [round0Cpu, round0MainCpu] = [cpuMs() - c0, cpuMs("-", String(Deno.pid)) - m0];
        }
      },
      connection: { hostname: "127.0.0.1", port: o.port },
      pause: async () => {
        pausePass = (await writer.park()).pass;
      },
      resume: () => writer.resume(),
      state: () => writer.state,
      downtime: o.downtime ?? 20,
      maxRounds: o.maxRounds,
      maxBandwidth: o.maxBandwidth,
    });
    // The pages the writer dirtied while the migration ran (between its start and the pause).
    const dirtied = new Set<number>();
    for (let g = startPass + 1; g <= pausePass; g++) {
      const runs = writer.log.at(g).runs;
      for (let i = 0; i < runs.length; i += 3) {
        for (let k = 0; k < runs[i + 1]!; k++) dirtied.add(runs[i]! + k * runs[i + 2]!);
      }
    }
    print({ type: "result", result, dirtied: dirtied.size, round0Cpu, round0MainCpu });
  } catch (e) {
    print({ type: "error", message: String(e) });
  } finally {
    await writer.stop();
  }
}

async function destination(): Promise<void> {
  using listener = Migration.listen({ hostname: "127.0.0.1", port: 0 });
  const wasmPages = (o.pages * P) / 65536;
  const memory = new WebAssembly.Memory({ initial: wasmPages, maximum: wasmPages, shared: true });
  if (o.populate) {
    // Populated before the port is announced, as the plain copy's target is: `populate` in the migration then finds
    // every page there, and round 0 is not timed against a destination still populating (the source would connect
    // at once and fill the socket buffers meanwhile).
    const bytes = new Uint8Array(memory.buffer);
    for (let at = 0; at < bytes.length; at += P) bytes[at] = 0;
  }
  print({ type: "listening", port: listener.port });
  try {
    let c0 = NaN, round0Cpu = NaN, m0 = NaN, round0MainCpu = NaN;
    const received = await Migration.receive(listener, {
      target: memory,
      mode: o.mode,
      populate: o.populate,
      onProgress: (p) => {
        if (p.phase === "connected") [c0, m0] = [cpuMs(), cpuMs("-", String(Deno.pid))];
        else if (Number.isNaN(round0Cpu) && p.round >= 1) {
          [round0Cpu, round0MainCpu] = [cpuMs() - c0, cpuMs("-", String(Deno.pid)) - m0];
        }
      },
    });
    const latencies: number[] = [];
    if (o.touches > 0) {
      const bytes = new Uint8Array(memory.buffer);
      const order = permutation(Math.floor(o.pages / 2), o.pages);
      let sum = 0;
      for (let i = 0; i < o.touches; i++) {
        const before = received.stats().requests;
        const t0 = performance.now();
        sum += bytes[order[i]! * P]!;
        const ms = performance.now() - t0;
        if (received.stats().requests > before) latencies.push(ms); // went to the network
      }
      if (sum < 0) print({ sum });
    }
    await received.ready;
    const stats = received.stats();
    await received.close();
    print({
      type: "result",
      stats,
      touchMs: median(latencies),
      networkTouches: latencies.length,
      round0Cpu,
      round0MainCpu,
    });
  } catch (e) {
    print({ type: "error", message: String(e) });
  }
}

const roles: Record<string, () => Promise<void>> = {
  "copy-server": copyServer,
  "copy-client": copyClient,
  "ping-server": pingServer,
  "ping-client": pingClient,
  "lazy-local": lazyLocal,
  source,
  destination,
};
const run = roles[role!];
if (run === undefined) throw new Error(`unknown role ${role}`);
await run();
