/**
 * Running the two ends of a migration test as two processes
 * (`tests/fixtures/migrate_peer.ts`), optionally in network namespaces, with a
 * deadline; and the reference the results are checked against: the writer's
 * memory replayed from its pass logs (the undisturbed run), as a SHA-256 digest.
 *
 * @module
 */

import { Region } from "../mod.ts";
import { replay } from "../cli/_demo_snapshot_check.ts";
import { logOf } from "../cli/_migrate_writer.ts";
import { DEADLINE_SCALE } from "./helpers.ts";

// deno-lint-ignore no-explicit-any
export type Json = any;

const PEER = new URL("./fixtures/migrate_peer.ts", import.meta.url).pathname;
const ROOT = new URL("../", import.meta.url);

/** A running end: its JSON lines as they come, and its end. */
export class Peer {
  readonly lines: Json[] = [];
  readonly child: Deno.ChildProcess;
  readonly done: Promise<{ code: number; signal: string | null; stderr: string }>;
  #waiters: (() => void)[] = [];

  constructor(role: "source" | "destination", options: Json, netns?: string) {
    const args = ["run", "--allow-all", "--no-prompt", PEER, role, JSON.stringify(options)];
    const command = netns === undefined ? Deno.execPath() : "ip";
    const argv = netns === undefined ? args : ["netns", "exec", netns, Deno.execPath(), ...args];
    const child = this.child = new Deno.Command(command, {
      args: argv,
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const stdout = this.#read(child.stdout);
    const stderr = new Response(child.stderr).text();
    this.done = (async () => {
      const status = await child.status;
      await stdout;
      return { code: status.code, signal: status.signal, stderr: await stderr };
    })();
  }

  async #read(stream: ReadableStream<Uint8Array>): Promise<void> {
    let text = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      let nl;
      while ((nl = text.indexOf("\n")) >= 0) {
        const line = text.slice(0, nl);
        text = text.slice(nl + 1);
        try {
          this.lines.push(JSON.parse(line));
        } catch {
          this.lines.push({ type: "text", text: line });
        }
        for (const w of this.#waiters.splice(0)) w();
      }
    }
    for (const w of this.#waiters.splice(0)) w();
  }

  /** The first line that `match`es, waiting for it (at most `ms`, scaled). */
  async line(match: (line: Json) => boolean, ms = 60_000, what = "a line"): Promise<Json> {
    const deadline = Date.now() + ms * DEADLINE_SCALE;
    for (;;) {
      const found = this.lines.find(match);
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.lines)}`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((r) => this.#waiters.push(r)),
        new Promise((r) => timer = setTimeout(r, 100)),
        this.done,
      ]);
      clearTimeout(timer);
      const status = await Promise.race([this.done, Promise.resolve(undefined)]);
      if (status !== undefined && this.lines.find(match) === undefined) {
        throw new Error(`the ${what} never came: exit ${status.code} ${status.signal ?? ""}\n${status.stderr}`);
      }
    }
  }

  /** The final line (`result` or `error`). */
  end(ms = 120_000): Promise<Json> {
    return this.line((l) => l.type === "result" || l.type === "error", ms, "the result");
  }

  /** Kills it (SIGKILL): a peer that vanishes. */
  kill(): void {
    try {
      this.child.kill("SIGKILL");
    } catch { /* gone already */ }
  }
}

/** Starts a destination, waits for its port, starts the source against it. */
export async function pair(
  source: Json,
  destination: Json,
  where?: { sourceNs?: string; destinationNs?: string; hostname?: string },
): Promise<{ source: Peer; destination: Peer }> {
  const dst = new Peer("destination", destination, where?.destinationNs);
  const listening = await dst.line((l) => l.type === "listening", 60_000, "the destination's port");
  const src = new Peer(
    "source",
    { ...source, port: listening.port, hostname: where?.hostname ?? source.hostname },
    where?.sourceNs,
  );
  return { source: src, destination: dst };
}

/** Both ends' final lines; a peer that has not finished by `ms` is killed and the test fails. */
export async function results(p: { source: Peer; destination: Peer }, ms = 120_000): Promise<[Json, Json]> {
  try {
    const [s, d] = await Promise.all([p.source.end(ms), p.destination.end(ms)]);
    await Promise.all([p.source.done, p.destination.done]);
    return [s, d];
  } catch (e) {
    p.source.kill();
    p.destination.kill();
    const [s, d] = await Promise.all([p.source.done, p.destination.done]);
    throw new Error(`${(e as Error).message}\nsource stderr:\n${s.stderr}\ndestination stderr:\n${d.stderr}`);
  }
}

/** The SHA-256 of bytes, in hex. */
export async function sha256(bytes: Uint8Array): Promise<string> {
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes.slice()));
  return [...hash].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The writer's memory of `pages` pages right after pass `runs.length`, replayed from its log, as a digest. */
export async function reference(runs: readonly (readonly number[])[], pages: number): Promise<string> {
  const P = Region.pageSize;
  return await sha256(replay(logOf(runs), P, pages * P, { pass: runs.length, store: Infinity }));
}
