/**
 * A migration that goes wrong loses nothing and says what went wrong, on the real
 * kernel over real TCP: the destination killed mid-pre-copy or during the pause
 * (the source's writer goes on, its memory intact), stopped without a word (the
 * source times out), the source killed mid-post-copy (the destination reports a
 * typed failure on every page it did not get, with and without `UFFDIO_POISON`,
 * and never hangs); and, through a proxy in this process that edits the stream
 * as it passes (it parses the frames of `docs/migration-format.md`), one corrupt
 * batch (refused, the page named), a truncated stream and a wrong version; a
 * target too short is refused before anything is sent.
 */

import assert from "node:assert/strict";
import { crc32c } from "../checkpoint/crc32c.ts";
import { Feature, Migration, MigrationError, Region } from "../mod.ts";
import { skipUnless } from "./helpers.ts";
import { type Json, pair, Peer, reference, results } from "./migrate_helpers.ts";

const PAGES = 2048;
const DATA = 1536;
const BASE = { pages: PAGES, layout: { dataPages: DATA, pagesPerMs: 0.5, width: 8 }, deadlineMs: 60_000 };
const P = Region.pageSize;
const ignore = skipUnless(P === 4096, `these layouts are in 4 KiB pages, this machine's are ${P}`);

/** The source's writer went on after the failure, and its memory is what the writer wrote: nothing lost. */
async function assertIntact(src: Json): Promise<void> {
  assert.equal(src.type, "error", `the source was expected to fail: ${JSON.stringify(src.result ?? src)}`);
  assert.ok(src.error.name === "MigrationError", JSON.stringify(src.error));
  assert.equal(src.goesOn, true, "the source's writer goes on");
  assert.equal(src.error.resumed, true, "and the error says the program runs");
  assert.equal(src.digest, await reference(src.runs, PAGES), "the source's memory is intact");
}

const tag = (text: string) => new TextEncoder().encode(text);
const PAGE = tag("PAGE");
const HELO = tag("HELO");
const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);

/** What the proxy does to the source's main stream. */
type Edit =
  | { kind: "corrupt"; frame: number } // flip a byte in the page bytes of the frame-th PAGE frame
  | { kind: "truncate"; frame: number } // cut the stream in the middle of the frame-th PAGE frame
  | { kind: "version"; version: number }; // rewrite the HELO's version (and its CRC)

/**
 * A TCP proxy: every connection to it is forwarded to `to`; the first one (the
 * main connection) goes through `edit`, frame by frame. Returns its port and what
 * it did.
 */
function proxy(to: number, edit: Edit): { port: number; done: { page?: number }; close(): void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const done: { page?: number } = {};
  let first = true;
  const conns: Deno.Conn[] = [];
  (async () => {
    for await (const client of listener) {
      const upstream = await Deno.connect({ hostname: "127.0.0.1", port: to });
      conns.push(client, upstream);
      const main = first;
      first = false;
      // destination → source: as is
      upstream.readable.pipeTo(client.writable).catch(() => {});
      if (!main) {
        client.readable.pipeTo(upstream.writable).catch(() => {});
        continue;
      }
      (async () => {
        const writer = upstream.writable.getWriter();
        let buffer = new Uint8Array(0);
        let pages = 0;
        try {
          for await (const chunk of client.readable) {
            const all = new Uint8Array(buffer.length + chunk.length);
            all.set(buffer);
            all.set(chunk, buffer.length);
            buffer = all;
            for (;;) {
              if (buffer.length < 16) break;
              const view = new DataView(buffer.buffer, buffer.byteOffset);
              const length = 16 + view.getUint32(4, true);
              const head = buffer.subarray(0, 4);
              if (edit.kind === "truncate" && same(head, PAGE) && pages + 1 === edit.frame) {
                if (buffer.length < 16 + 1000) break;
                await writer.write(buffer.slice(0, 16 + 1000)); // the header and part of the payload, then nothing
                upstream.close();
                client.close();
                return;
              }
              if (buffer.length < length) break;
              const frame = buffer.slice(0, length);
              buffer = buffer.slice(length);
              if (same(head, PAGE)) {
                pages++;
                if (edit.kind === "corrupt" && pages === edit.frame) {
                  const runs = view.getUint32(16 + 4, true);
                  let count = 0;
                  for (let r = 0; r < runs; r++) count += view.getUint32(16 + 12 + 8 * r, true);
                  const first = view.getUint32(16 + 8, true);
                  const dataAt = 16 + 8 + 8 * runs + 4 * count;
                  frame[dataAt + 5 * P + 100] ^= 0x40; // the sixth page of the batch
                  done.page = first + 5; // (runs are consecutive in round 0)
                }
              }
              if (same(head, HELO) && edit.kind === "version") {
                const v = new DataView(frame.buffer);
                v.setUint16(16 + 8, edit.version, true);
                const crc = crc32c(frame.subarray(16), crc32c(frame.subarray(0, 12)));
                v.setUint32(12, crc, true);
              }
              await writer.write(frame);
            }
          }
        } catch { /* a side went away */ }
        try {
          await writer.close();
        } catch { /* closed */ }
      })();
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    done,
    close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

/** A destination, a proxy editing the source's stream to it, and the source. */
async function throughProxy(edit: Edit, source: Json = {}, destination: Json = {}) {
  const dst = new Peer("destination", { ...BASE, mode: "precopy", checkAtResume: true, ...destination });
  const listening = await dst.line((l) => l.type === "listening", 60_000, "the destination's port");
  const relay = proxy(listening.port, edit);
  const src = new Peer("source", { ...BASE, maxBandwidth: 50e6, ...source, port: relay.port });
  try {
    const [s, d] = await results({ source: src, destination: dst }, 60_000);
    return { src: s, dst: d, relay };
  } finally {
    relay.close();
  }
}

Deno.test({
  name: "migrate faults: a corrupt batch is refused at the destination, which names the page; the source goes on",
  ignore,
  async fn() {
    const { src, dst, relay } = await throughProxy({ kind: "corrupt", frame: 2 });
    assert.equal(dst.type, "error");
    assert.equal(dst.error.code, "corrupt", JSON.stringify(dst.error));
    assert.equal(dst.error.page, relay.done.page, `the page the proxy changed (${relay.done.page}) is named`);
    assert.match(dst.error.message, new RegExp(`page ${relay.done.page} does not match its CRC-32C`));
    assert.equal(dst.error.frame.tag, "PAGE");
    await assertIntact(src);
    assert.equal(src.error.code, "corrupt", "the source learns why, from the destination");
    assert.equal(src.error.remote, true);
  },
});

Deno.test({
  name: "migrate faults: a stream cut inside a batch is 'truncated' at the destination; the source goes on",
  ignore,
  async fn() {
    const { src, dst } = await throughProxy({ kind: "truncate", frame: 3 });
    assert.equal(dst.type, "error");
    assert.equal(dst.error.code, "truncated", JSON.stringify(dst.error));
    assert.match(dst.error.message, /inside the PAGE frame/);
    await assertIntact(src);
    assert.ok(["peer-gone", "truncated"].includes(src.error.code), JSON.stringify(src.error));
  },
});

Deno.test({
  name: "migrate faults: another version of the wire format is refused by name, before any page",
  ignore,
  async fn() {
    const { src, dst } = await throughProxy({ kind: "version", version: 2 });
    assert.equal(dst.type, "error");
    assert.equal(dst.error.code, "version", JSON.stringify(dst.error));
    assert.match(dst.error.message, /version 2 of the wire format; this end speaks 1/);
    await assertIntact(src);
    assert.equal(src.error.code, "version");
    assert.equal(src.error.remote, true);
  },
});

Deno.test({
  name: "migrate faults: a target too short is refused, with the growth it needs; nothing is sent",
  ignore,
  async fn() {
    const p = await pair({ ...BASE }, { ...BASE, pages: 1024, layout: { dataPages: 512 }, checkAtResume: true });
    const [src, dst] = await results(p, 60_000);
    assert.equal(dst.type, "error");
    assert.equal(dst.error.code, "refused");
    assert.match(dst.error.message, /grow it to 128 wasm pages: memory\.grow\(64\)/);
    await assertIntact(src);
    assert.equal(src.error.code, "refused");
  },
});

Deno.test({
  name: "migrate faults: the destination killed mid-pre-copy — the source reports it, its writer goes on intact",
  ignore,
  async fn() {
    // 3 MB/s: round 0 takes two seconds, the kill lands in it.
    const p = await pair({ ...BASE, maxBandwidth: 3e6 }, { ...BASE, checkAtResume: true });
    await p.source.line((l) => l.type === "progress" && l.phase === "connected", 30_000, "the connection");
    await new Promise((r) => setTimeout(r, 500));
    p.destination.kill();
    const src = await p.source.end(60_000);
    await p.source.done;
    await assertIntact(src);
    assert.equal(src.parkedAt, null, "killed before the pause: the writer never stopped");
    assert.equal(src.error.code, "peer-gone", JSON.stringify(src.error));
  },
});

Deno.test({
  name: "migrate faults: the destination killed during the pause — the source resumes its writer, memory intact",
  ignore,
  async fn() {
    // state() takes 3 s: the destination dies while the source is paused, before it confirms.
    const p = await pair({ ...BASE, stateDelayMs: 3000 }, { ...BASE, checkAtResume: true });
    await p.source.line((l) => l.type === "progress" && l.phase === "paused", 30_000, "the pause");
    p.destination.kill();
    const src = await p.source.end(60_000);
    await p.source.done;
    await assertIntact(src);
    assert.ok(src.parkedAt !== null && src.parkedAt.pass > 0, "the writer had been parked…");
    assert.ok(src.state.pass > src.parkedAt.pass, "…and went on after resume()");
  },
});

Deno.test({
  name: "migrate faults: a destination that goes silent (SIGSTOP) is a timeout at the source, not a hang",
  ignore,
  async fn() {
    const p = await pair({ ...BASE, maxBandwidth: 3e6, timeoutMs: 1500 }, { ...BASE, checkAtResume: true });
    await p.source.line((l) => l.type === "progress" && l.phase === "connected", 30_000, "the connection");
    await new Promise((r) => setTimeout(r, 300));
    p.destination.child.kill("SIGSTOP");
    try {
      const src = await p.source.end(60_000);
      await assertIntact(src);
      assert.equal(src.error.code, "timeout", JSON.stringify(src.error));
    } finally {
      p.destination.kill();
      await Promise.all([p.source.done, p.destination.done]);
    }
  },
});

for (const decline of [[], [Feature.POISON]]) {
  Deno.test({
    name: `migrate faults: the source killed mid-post-copy — every page it did not send fails on the destination, ` +
      `typed${decline.length ? ", without UFFDIO_POISON" : ""}, no hang`,
    ignore,
    async fn() {
      // 1 MB/s: the stream takes six seconds; the source dies a second and a half into it.
      const p = await pair(
        { ...BASE, maxBandwidth: 1e6 },
        { ...BASE, mode: "postcopy", touch: true, touchAfterMs: 2500, decline, timeoutMs: 3000 },
      );
      await p.destination.line((l) => l.type === "progress" && l.phase === "postcopy", 30_000, "the switch");
      await new Promise((r) => setTimeout(r, 1500));
      p.source.kill();
      const dst = await p.destination.end(60_000);
      await Promise.all([p.source.done, p.destination.done]);
      assert.equal(dst.type, "result", JSON.stringify(dst));
      console.log(
        `source killed: ${dst.ok} pages readable, ${dst.failedCount} failed (${dst.codes.join(", ")}); ` +
          `ready: ${dst.ready?.code}; poisoned ${dst.stats.poisoned}`,
      );
      assert.ok(dst.failedCount > 0, "pages the source never sent fail");
      assert.deepEqual(dst.codes, ["EIO"], "as a UffdError EIO each, not a signal");
      // With UFFDIO_POISON or without it (the page made inaccessible, its waiters woken), each page fails alone.
      assert.ok(dst.ok > PAGES - DATA, "the zero pages and what came before the kill read fine");
      assert.equal(dst.ready?.name, "MigrationError");
      assert.ok(["peer-gone", "timeout"].includes(dst.ready.code), JSON.stringify(dst.ready));
      assert.ok(dst.stats.poisoned > 0, "the failed pages are marked (poisoned, or PROT_NONE without POISON)");
    },
  });
}

Deno.test({
  name: "migrate faults: an aborted migration rejects as 'aborted' on the source, which keeps its memory",
  ignore,
  async fn() {
    using listener = Migration.listen({ hostname: "127.0.0.1", port: 0 });
    const memory = new WebAssembly.Memory({ initial: 64 });
    new Uint8Array(memory.buffer).fill(5);
    const target = new WebAssembly.Memory({ initial: 64 });
    const controller = new AbortController();
    const received = Migration.receive(listener, { target, timeoutMs: 5000 });
    received.catch(() => {});
    const sent = Migration.send(memory, {
      connection: listener,
      maxBandwidth: 1e6,
      signal: controller.signal,
      onProgress: (p) => p.phase === "connected" && setTimeout(() => controller.abort(), 100),
    });
    await assert.rejects(sent, (e) => e instanceof MigrationError && e.code === "aborted");
    await assert.rejects(received, (e) => e instanceof MigrationError);
    assert.ok(new Uint8Array(memory.buffer).every((b) => b === 5), "the source's memory is untouched");
  },
});
