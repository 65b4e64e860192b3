/**
 * The source end of a live migration (`Migration.send`): connect, say `HELO`,
 * learn the destination's mode, then pre-copy rounds (round 0: the pages that
 * hold data, the rest as zero runs; then each round the pages a `WriteWatch`
 * collected) until what is left fits the downtime budget at the bandwidth
 * measured, or the rounds stop shrinking; then `pause()`, the last pages, the
 * state and the end, and the destination's confirmation. Post-copy and hybrid
 * switch instead: the state and the list of pages still to come, the
 * confirmation, then the background stream on the main connection while the
 * page server Worker answers the destination's faults on the other one.
 * Whatever fails before the destination confirmed resumes the program. Internal;
 * the design: `docs/live-migration.md`.
 *
 * @module
 */

import { Worker } from "node:worker_threads";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE } from "../ffi/_libc.ts";
import { EFD_CLOEXEC } from "../ffi/linux.ts";
import { visitDataPages } from "../kernel/_page_contents.ts";
import { failure } from "../kernel/errors.ts";
import { checkTarget, imageBytes, locateTarget, type MemoryTarget, privateAnonymous } from "../kernel/target.ts";
import { RunList, type WriteSet } from "../watch/write_set.ts";
import { WriteWatch } from "../watch/write_watch.ts";
import { CrcArena, zeroPageCrc } from "./_crc32c.ts";
import { Link, SMALL_BYTES } from "./_link.ts";
import { type PageServerData, SERVER_CTRL, SERVER_MESSAGE_BYTES, SERVER_STAT, SERVER_STATE } from "./_page_server.ts";
import { LinkError, Socket } from "./_socket.ts";
import type { MigrationProgress, MigrationResult, RoundStats, SendOptions } from "./_types.ts";
import {
  BatchBuilder,
  decodeAccept,
  decodeU32,
  encodeEnd,
  encodeHello,
  encodeRoundEnd,
  encodeRuns,
  encodeSession,
  encodeState,
  hex,
  imageDigest,
  type MigrationMode,
  NONE,
  TAG,
  tagName,
  VERSION,
} from "./_wire.ts";
import { MigrationError } from "./migration_error.ts";

const PAGE_SERVER_URL = new URL("./_page_server.ts", import.meta.url).href;
/** `node:worker_threads` takes `file:` and `data:` URLs: a `data:` module importing the real one works for both. */
const BOOTSTRAP = new URL(`data:text/javascript,${encodeURIComponent(`import ${JSON.stringify(PAGE_SERVER_URL)};`)}`);

/** Zero runs kept before they are flushed as a `ZERO` frame. */
const MAX_ZERO_RUNS = 4096;
/**
 * A round during which the program dirtied at least this share of the bytes the
 * round sent does not shrink the rest fast enough (QEMU's throttle trigger
 * threshold, 50%): it is a strike against convergence.
 */
const DIRTY_SHARE = 0.5;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function nonNegative(value: unknown, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !(value >= 0) || !Number.isFinite(value)) {
    throw new TypeError(`Migration.send: ${name} must be a non-negative number, not ${String(value)}`);
  }
  return value;
}

function hookOf(value: unknown, name: string): ((...args: never[]) => unknown) | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "function") throw new TypeError(`Migration.send: ${name} must be a function`);
  return value as (...args: never[]) => unknown;
}

/** The page server's Worker, as the main isolate drives it. */
class PageServer {
  readonly served: Uint8Array;
  readonly stats: Float64Array;
  readonly #control: Int32Array;
  readonly #message: Uint8Array;
  readonly #worker: Worker;
  readonly #wakeFd: number;
  #stopped = false;

  constructor(faultFd: number, address: number, length: number, pages: number, crcs: SharedArrayBuffer) {
    const wakeFd = libc.eventfd(0, EFD_CLOEXEC);
    if (wakeFd < 0) throw failure("eventfd", wakeFd);
    this.#wakeFd = wakeFd;
    const data: PageServerData = {
      faultFd,
      wakeFd,
      address,
      imageLength: length,
      pageSize: PAGE_SIZE,
      imagePages: pages,
      served: new SharedArrayBuffer(pages),
      crcs,
      stats: new SharedArrayBuffer(8 * SERVER_STAT.SIZE),
      control: new SharedArrayBuffer(4 * SERVER_CTRL.SIZE),
      message: new SharedArrayBuffer(SERVER_MESSAGE_BYTES),
      sendSequence: 1,
      recvSequence: 1,
    };
    this.served = new Uint8Array(data.served);
    this.stats = new Float64Array(data.stats);
    this.#control = new Int32Array(data.control);
    this.#message = new Uint8Array(data.message);
    this.#worker = new Worker(BOOTSTRAP, { workerData: data });
    this.#worker.on("error", () => Atomics.store(this.#control, SERVER_CTRL.STATE, SERVER_STATE.FAILED));
  }

  /** Lets it read the fault connection (once the main isolate has read the destination's echo). */
  go(): void {
    Atomics.store(this.#control, SERVER_CTRL.GO, 1);
    Atomics.notify(this.#control, SERVER_CTRL.GO);
  }

  get state(): number {
    return Atomics.load(this.#control, SERVER_CTRL.STATE);
  }

  get reason(): string {
    const n = Atomics.load(this.#control, SERVER_CTRL.MESSAGE_LENGTH);
    return n > 0 ? new TextDecoder().decode(this.#message.slice(0, n)) : "its Worker failed";
  }

  /** Waits until the Worker serves (or failed), at most `ms`. */
  async started(ms: number): Promise<boolean> {
    const deadline = performance.now() + ms;
    while (this.state === SERVER_STATE.STARTING && performance.now() < deadline) {
      const wait = Atomics.waitAsync(this.#control, SERVER_CTRL.STATE, SERVER_STATE.STARTING, 50);
      if (wait.async) await wait.value;
    }
    return this.state === SERVER_STATE.RUNNING;
  }

  /** Stops it (the eventfd), waits a little for it to say so, and ends the Worker. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    libc.eventfdSignal(this.#wakeFd);
    const deadline = performance.now() + 2000;
    while (this.state <= SERVER_STATE.RUNNING && performance.now() < deadline) {
      const state = this.state;
      const wait = Atomics.waitAsync(this.#control, SERVER_CTRL.STATE, state, 50);
      if (wait.async) await wait.value;
    }
    await this.#worker.terminate();
    libc.close(this.#wakeFd);
  }
}

/** Runs one migration from the source's side; see the module documentation. */
export class SourceRun {
  readonly #memory: MemoryTarget;
  readonly #options: SendOptions;
  readonly #P = PAGE_SIZE;
  readonly #L: number;
  readonly #N: number;
  readonly #head: number;
  readonly #spanAddress: bigint;
  readonly #spanPages: number;
  readonly #bytes: Uint8Array;
  readonly #address: number;
  readonly #arena: CrcArena;
  readonly #builders: [BatchBuilder, BatchBuilder];
  readonly #crcShared = new SharedArrayBuffer(0);
  readonly #crcs: Uint32Array;
  readonly #zeroCrc: number;
  readonly #downtime: number;
  readonly #maxRounds: number;
  readonly #maxBandwidth: number;
  readonly #timeoutMs: number;
  readonly #t0 = performance.now();
  #link: Link | undefined;
  #faultLink: Link | undefined;
  #watch: WriteWatch | undefined;
  #server: PageServer | undefined;
  #current = 0;
  #inflight: Promise<void> | undefined;
  #zeroRuns: number[] = [];
  #dataPages = 0;
  #zeroPages = 0;
  #rounds: RoundStats[] = [];
  #paused = false;
  #pausedAt = 0;
  #confirmed = false;
  #throttle = 0;
  #maxThrottle = 0;
  #mode: MigrationMode = "precopy";
  #bandwidth = 0;
  #lastCollect = 0;
  /** The pacing clock of `maxBandwidth`: when the bytes sent so far may all have gone. */
  #paceUntil = 0;
  #skip: Uint8Array | undefined;
  #skipped = 0;

  constructor(memory: MemoryTarget, options: SendOptions) {
    checkTarget(memory, "Migration.send");
    if (options === null || typeof options !== "object") throw new TypeError("Migration.send: options are required");
    const c = options.connection;
    if (c === null || typeof c !== "object" || typeof c.hostname !== "string" || typeof c.port !== "number") {
      throw new TypeError("Migration.send: connection must be { hostname, port } (the destination's listener)");
    }
    for (const name of ["pause", "resume", "state", "throttle", "onProgress"] as const) hookOf(options[name], name);
    this.#downtime = nonNegative(options.downtime, "downtime", 300);
    this.#maxRounds = Math.floor(nonNegative(options.maxRounds, "maxRounds", 30));
    this.#maxBandwidth = nonNegative(options.maxBandwidth, "maxBandwidth", 0);
    this.#timeoutMs = nonNegative(options.timeoutMs, "timeoutMs", 10_000);
    const batchBytes = Math.floor(nonNegative(options.batchBytes, "batchBytes", 1 << 20));
    if (batchBytes < this.#P || batchBytes > 8 << 20) {
      throw new TypeError(`Migration.send: batchBytes must be between one page and 8 MiB, not ${batchBytes}`);
    }
    this.#memory = memory;
    this.#options = options;
    const span = locateTarget(memory);
    if (span.length === 0) {
      throw new MigrationError({ code: "memory", side: "source", detail: "the memory is empty, detached or unmapped" });
    }
    this.#L = span.length;
    this.#N = Math.ceil(span.length / this.#P);
    this.#head = Number(span.address % BigInt(this.#P));
    this.#spanAddress = span.address - BigInt(this.#head);
    this.#spanPages = Math.ceil((this.#head + span.length) / this.#P);
    this.#bytes = imageBytes(memory);
    this.#address = Number(span.address);
    const room = batchBytes + 12 * Math.ceil(batchBytes / this.#P) + 1024;
    this.#arena = new CrcArena(SMALL_BYTES + 2 * room);
    this.#builders = [
      new BatchBuilder(this.#arena, this.#arena.base + SMALL_BYTES, room, this.#P),
      new BatchBuilder(this.#arena, this.#arena.base + SMALL_BYTES + room, room, this.#P),
    ];
    this.#crcShared = new SharedArrayBuffer(4 * this.#N);
    this.#crcs = new Uint32Array(this.#crcShared);
    this.#zeroCrc = zeroPageCrc(this.#P);
    this.#crcs.fill(this.#zeroCrc); // the destination starts from zeros
  }

  async run(): Promise<MigrationResult> {
    const signal = this.#options.signal;
    signal?.throwIfAborted();
    const onAbort = () => {
      this.#link?.socket.shutdown();
      this.#faultLink?.socket.shutdown();
    };
    signal?.addEventListener("abort", onAbort);
    try {
      return await this.#migrate();
    } catch (e) {
      const error = this.#asError(e);
      let resumed = false;
      if (this.#paused && !this.#confirmed) {
        try {
          await this.#options.resume?.();
          resumed = true;
        } catch { /* reported through the error below */ }
      }
      if (this.#throttle > 0) await this.#setThrottle(0).catch(() => {});
      await this.#link?.fail(error, 500);
      throw new MigrationError({
        code: error.code,
        side: "source",
        detail: error.detail,
        remote: error.remote,
        frame: error.frame,
        page: error.page,
        resumed: resumed || (!this.#paused && !this.#confirmed),
        cause: error.cause ?? error,
      });
    } finally {
      signal?.removeEventListener("abort", onAbort);
      this.#watch?.stop();
      await this.#server?.stop();
      this.#link?.close();
      this.#faultLink?.close();
    }
  }

  #asError(e: unknown): MigrationError {
    if (this.#options.signal?.aborted) {
      return new MigrationError({ code: "aborted", side: "source", detail: "the signal was aborted", cause: e });
    }
    if (e instanceof MigrationError) return e;
    if (this.#link) return this.#link.error(e, "");
    return new MigrationError({
      code: "connect",
      side: "source",
      detail: e instanceof Error ? e.message : String(e),
      cause: e,
    });
  }

  async #migrate(): Promise<MigrationResult> {
    const o = this.#options;
    let socket: Socket;
    try {
      socket = await Socket.connect(o.connection, {
        timeoutMs: o.connectTimeoutMs ?? 10_000,
        silenceMs: this.#timeoutMs,
        signal: o.signal,
      });
    } catch (e) {
      throw new MigrationError({
        code: o.signal?.aborted ? "aborted" : "connect",
        side: "source",
        detail: `could not connect to ${o.connection.hostname}:${o.connection.port}: ${
          e instanceof Error ? e.message : e
        }`,
        cause: e,
      });
    }
    const link = this.#link = new Link(socket, this.#arena, "source");
    const session = crypto.getRandomValues(new BigUint64Array(1))[0]! | 1n;
    await link.send(
      TAG.HELO,
      encodeHello({
        version: VERSION,
        pageSize: this.#P,
        imageLength: this.#L,
        imagePages: this.#N,
        session,
        maxPayload: this.#builders[0].capacity * (this.#P + 12) + 8,
      }),
    );
    const answer = await link.receive();
    if (answer.tag !== TAG.ACPT) throw this.#unexpected(answer.tag, answer.sequence, "ACPT");
    const accept = decodeAccept(link.payload(answer));
    this.#mode = accept.mode;
    this.#progress("connected", 0, 0);
    if (this.#mode !== "precopy") await this.#openFaultConnection(session);
    if (this.#maxRounds > 0 || this.#mode === "postcopy") this.#watch = WriteWatch.start(this.#memory, o.watch);

    let pending: Uint32Array;
    let converged = true;
    if (this.#mode === "postcopy" || this.#maxRounds === 0) {
      // The data map before the pause (what the write watch sees after it is added in): less downtime.
      if (this.#watch === undefined) {
        await this.#pause(); // stop-and-copy: everything happens in the pause
        pending = this.#dataRuns();
      } else {
        const data = this.#dataRuns();
        await this.#pause();
        pending = union(data, this.#collect().runs);
      }
      if (this.#mode === "postcopy") {
        let count = 0;
        for (let i = 1; i < pending.length; i += 2) count += pending[i]!;
        this.#zeroPages += this.#N - count; // zero by the POST frame: never sent
      }
      if (this.#mode === "precopy") {
        await this.#round(0, pending, true, true, () => this.#stateAndEnd());
        return await this.#finishPrecopy(converged);
      }
    } else {
      const limit = this.#mode === "hybrid" ? Math.max(1, accept.hybridRounds) : this.#maxRounds;
      this.#lastCollect = performance.now();
      await this.#round(0, this.#dataRuns(), true, false);
      let set = this.#collect();
      let strikes = 0;
      for (;;) {
        const round = this.#rounds.length;
        const estimate = this.#estimate(set.count);
        if (estimate <= this.#downtime) break;
        if (round >= limit) {
          converged = this.#mode === "hybrid";
          break;
        }
        const last = this.#rounds[round - 1]!;
        if (round >= 2 && set.count * this.#P >= DIRTY_SHARE * last.bytes) {
          strikes++;
          if (o.throttle !== undefined && this.#throttle < 0.99) {
            await this.#setThrottle(this.#throttle === 0 ? 0.2 : Math.min(0.99, this.#throttle + 0.1));
          } else if (strikes >= 2) {
            converged = false;
            break;
          }
        } else strikes = 0;
        await this.#round(round, set.runs, false, false);
        set = this.#collect();
      }
      await this.#pause();
      pending = union(set.runs, this.#collect().runs);
      if (this.#mode === "precopy") {
        await this.#round(this.#rounds.length, pending, false, true, () => this.#stateAndEnd());
        return await this.#finishPrecopy(converged);
      }
    }
    return await this.#postcopy(pending, converged);
  }

  /** The page runs of round 0: what may hold data (the kernel's view for private anonymous memory), as image runs. */
  #dataRuns(): Uint32Array {
    const P = this.#P;
    if (!privateAnonymous(this.#memory, this.#spanAddress, this.#spanAddress + BigInt(this.#spanPages * P))) {
      return new Uint32Array([0, this.#N]);
    }
    const runs = new RunList();
    visitDataPages({ address: this.#spanAddress, length: this.#spanPages * P }, (f, n) => runs.add(f, n));
    return this.#toImage(runs.freeze());
  }

  /** Span page runs (the write watch's) as image page runs. */
  #toImage(span: Uint32Array): Uint32Array {
    const out = new RunList();
    for (let i = 0; i < span.length; i += 2) {
      const first = this.#head === 0 ? span[i]! : Math.max(0, span[i]! - 1);
      const end = Math.min(this.#N, span[i]! + span[i + 1]!);
      if (end > first) out.add(first, end - first);
    }
    return out.freeze();
  }

  /** The write watch's next set, as image runs, refusing a memory that changed shape. */
  #collect(): { runs: Uint32Array; count: number } {
    const set: WriteSet = this.#watch!.collect();
    const now = performance.now();
    if (set.lostRuns.length > 0 || set.relocated || set.grewFrom !== undefined) {
      throw new MigrationError({
        code: "memory",
        side: "source",
        detail: set.grewFrom !== undefined
          ? `the memory grew from ${set.grewFrom} pages during the migration`
          : set.relocated
          ? "the memory moved during the migration"
          : "part of the memory was unmapped during the migration",
      });
    }
    const runs = this.#toImage(set.runs);
    let count = 0;
    for (let i = 1; i < runs.length; i += 2) count += runs[i]!;
    const last = this.#rounds.at(-1);
    if (last !== undefined && !last.paused) {
      const ms = Math.max(1e-3, now - this.#lastCollect);
      this.#rounds[this.#rounds.length - 1] = { ...last, dirtyPages: count, dirtyRate: (count * 1000) / ms };
    }
    this.#lastCollect = now;
    this.#progress("precopy", this.#rounds.length, count);
    return { runs, count };
  }

  /** The pause `pages` would take at the bandwidth measured so far, in ms. */
  #estimate(pages: number): number {
    if (pages === 0) return 0;
    if (this.#bandwidth <= 0) return Infinity;
    return (pages * (this.#P + 12) * 1000) / this.#bandwidth;
  }

  async #pause(): Promise<void> {
    try {
      await this.#options.pause?.();
    } catch (e) {
      throw new MigrationError({ code: "hook", side: "source", detail: `pause() threw: ${e}`, cause: e });
    }
    this.#paused = true;
    this.#pausedAt = performance.now();
    this.#progress("paused", this.#rounds.length, 0);
  }

  async #setThrottle(level: number): Promise<void> {
    try {
      await this.#options.throttle?.(level);
    } catch (e) {
      throw new MigrationError({ code: "hook", side: "source", detail: `throttle(${level}) threw: ${e}`, cause: e });
    }
    this.#throttle = level;
    this.#maxThrottle = Math.max(this.#maxThrottle, level);
  }

  /**
   * Sends one round: `runs` (round 0: with the gaps as zero runs), then its `ROND`
   * — in one send with the frames `tail()` returns (the paused round's state and end).
   */
  async #round(
    round: number,
    runs: Uint32Array,
    first: boolean,
    paused: boolean,
    tail?: () => Promise<[number, Uint8Array][]>,
  ): Promise<void> {
    const t0 = performance.now();
    const before = { data: this.#dataPages, zero: this.#zeroPages, bytes: this.#link!.bytesSent };
    await this.#stream(runs, round, first);
    await this.#drain();
    const end = encodeRoundEnd({
      round,
      dataPages: this.#dataPages - before.data,
      zeroPages: this.#zeroPages - before.zero,
    });
    await this.#link!.sendMany([[TAG.ROND, end], ...(tail ? await tail() : [])]);
    // The round ends when the destination has placed it (not when the socket took it: the buffers on the way
    // hold megabytes, which would otherwise inflate the bandwidth and land in the next pause).
    if (!paused) await this.#roundAck(round);
    const ms = performance.now() - t0;
    const bytes = this.#link!.bytesSent - before.bytes;
    const bandwidth = (bytes * 1000) / Math.max(ms, 1e-3);
    // The bandwidth of a round that moved enough to measure it.
    if (bytes >= 256 * 1024 || this.#bandwidth === 0) this.#bandwidth = bandwidth;
    this.#rounds.push({
      round,
      dataPages: this.#dataPages - before.data,
      zeroPages: this.#zeroPages - before.zero,
      bytes,
      ms,
      bandwidth,
      dirtyPages: 0,
      dirtyRate: 0,
      paused,
    });
  }

  /**
   * Streams the pages of `runs` in order: each page is copied into a batch, checked
   * for zeros and checksummed there; zero pages (and, with `gaps`, the pages between
   * the runs) go out as `ZERO` runs, before the batch that follows them.
   */
  async #stream(runs: Uint32Array, round: number, gaps: boolean): Promise<void> {
    const P = this.#P;
    const L = this.#L;
    const bytes = this.#bytes;
    const skip = this.#skip;
    let builder = this.#builders[this.#current]!;
    builder.begin(round);
    let end = 0;
    const zero = (first: number, count: number) => {
      const z = this.#zeroRuns;
      const n = z.length;
      if (n > 0 && z[n - 2]! + z[n - 1]! === first) z[n - 1] = z[n - 1]! + count;
      else z.push(first, count);
      this.#zeroPages += count;
      for (let p = first; p < first + count; p++) this.#crcs[p] = this.#zeroCrc;
    };
    const zeroPage = (page: number) => zero(page, 1);
    for (let r = 0; r < runs.length; r += 2) {
      const first = runs[r]!;
      const stop = first + runs[r + 1]!;
      if (gaps && first > end) zero(end, first - end);
      // Without pages to skip (pre-copy), a run goes into the batch in pieces of as many pages as it has room for.
      for (let p = first; skip === undefined && p < stop;) {
        p += builder.addRun(p, stop - p, bytes, zeroPage);
        if (builder.full || this.#zeroRuns.length >= 2 * MAX_ZERO_RUNS) {
          await this.#flush(builder, round);
          builder = this.#builders[this.#current]!;
          builder.begin(round);
        }
      }
      for (let p = first; skip !== undefined && p < stop; p++) {
        if (skip !== undefined && Atomics.load(skip, p) === 1) {
          this.#skipped++;
          continue;
        }
        if (!builder.add(p, bytes.subarray(p * P, Math.min(L, (p + 1) * P)))) zero(p, 1);
        if (builder.full || this.#zeroRuns.length >= 2 * MAX_ZERO_RUNS) {
          await this.#flush(builder, round);
          builder = this.#builders[this.#current]!;
          builder.begin(round);
        }
      }
      end = stop;
    }
    if (gaps && end < this.#N) zero(end, this.#N - end);
    await this.#flush(builder, round);
  }

  /** Sends the zero runs gathered so far, then the batch (its send runs while the next batch is built). */
  async #flush(builder: BatchBuilder, round: number): Promise<void> {
    const link = this.#link!;
    await this.#drain();
    await this.#checkPeer();
    if (this.#zeroRuns.length > 0) {
      const payload = encodeRuns(this.#zeroRuns, round);
      this.#zeroRuns = [];
      await link.send(TAG.ZERO, payload);
    }
    if (builder.count === 0) return;
    const pages = builder.pages;
    const crcs = builder.crcs;
    for (let i = 0; i < pages.length; i++) this.#crcs[pages[i]!] = crcs[i]!;
    this.#dataPages += pages.length;
    const frame = builder.seal(link.nextSequence());
    await this.#pace(frame.length);
    this.#inflight = link.sendBuilt(frame.at, frame.length);
    this.#current ^= 1;
  }

  /** Waits for the batch in flight. */
  async #drain(): Promise<void> {
    const inflight = this.#inflight;
    this.#inflight = undefined;
    if (inflight !== undefined) await inflight;
  }

  /** `maxBandwidth`: waits until `bytes` more may go. */
  async #pace(bytes: number): Promise<void> {
    if (this.#maxBandwidth <= 0) return;
    const now = performance.now();
    this.#paceUntil = Math.max(this.#paceUntil, now) + (bytes * 1000) / this.#maxBandwidth;
    const wait = this.#paceUntil - now - (bytes * 1000) / this.#maxBandwidth;
    if (wait > 1) await sleep(wait);
  }

  /** A frame (or the end) from the destination while we send: a `FAIL`, read and thrown; anything else is wrong. */
  async #checkPeer(): Promise<void> {
    const link = this.#link!;
    if (!link.socket.readable()) return;
    const frame = await link.receive();
    throw this.#unexpected(frame.tag, frame.sequence, "nothing");
  }

  async #finishPrecopy(converged: boolean): Promise<MigrationResult> {
    const digest = await this.#confirmation(TAG.CONF);
    const downtimeMs = performance.now() - this.#pausedAt;
    this.#progress("complete", this.#rounds.length, 0);
    if (this.#throttle > 0) await this.#setThrottle(0);
    return this.#result(converged, downtimeMs, digest, undefined);
  }

  /** The paused round's tail: the state, then the end (its digest covers the round just sent). */
  async #stateAndEnd(): Promise<[number, Uint8Array][]> {
    const state = await this.#stateFrame();
    return [state, [TAG.END, this.#end()]];
  }

  /** The `STAT` frame of what `state()` returns. */
  async #stateFrame(): Promise<[number, Uint8Array]> {
    let state: unknown;
    try {
      state = await this.#options.state?.();
    } catch (e) {
      throw new MigrationError({ code: "hook", side: "source", detail: `state() threw: ${e}`, cause: e });
    }
    const bytes = state instanceof Uint8Array
      ? state
      : new TextEncoder().encode(JSON.stringify(state === undefined ? null : state));
    if (bytes.length > SMALL_BYTES - 64) {
      throw new MigrationError({
        code: "hook",
        side: "source",
        detail: `the state takes ${bytes.length} bytes; at most ${SMALL_BYTES - 64} travel in a STAT frame`,
      });
    }
    return [TAG.STAT, encodeState(bytes, !(state instanceof Uint8Array))];
  }

  #end(): Uint8Array {
    return encodeEnd({
      imagePages: this.#N,
      dataPages: this.#dataPages + (this.#server ? this.#server.stats[SERVER_STAT.pages]! : 0),
      zeroPages: this.#zeroPages,
      rounds: this.#rounds.length,
      digest: imageDigest(this.#arena, this.#crcs, this.#arena.base + SMALL_BYTES),
    });
  }

  /** Waits for the destination's `RACK` of `round`. */
  async #roundAck(round: number): Promise<void> {
    const link = this.#link!;
    const frame = await link.receive();
    if (frame.tag !== TAG.RACK) throw this.#unexpected(frame.tag, frame.sequence, "RACK");
    const acked = decodeU32(link.payload(frame), "RACK");
    if (acked !== round) throw this.#unexpected(frame.tag, frame.sequence, `RACK ${round} (not ${acked})`);
  }

  /** Waits for `CONF` or `COMP` (past the `RACK` of a paused round), and checks the destination's digest. */
  async #confirmation(tag: number): Promise<number> {
    const link = this.#link!;
    let frame = await link.receive();
    while (frame.tag === TAG.RACK && tag === TAG.CONF) frame = await link.receive();
    if (frame.tag !== tag) throw this.#unexpected(frame.tag, frame.sequence, tagName(tag));
    const theirs = decodeU32(link.payload(frame), tagName(tag));
    if (tag === TAG.CONF) this.#confirmed = true;
    const ours = imageDigest(this.#arena, this.#crcs, this.#arena.base + SMALL_BYTES);
    if (theirs !== 0 && theirs !== ours) {
      throw new MigrationError({
        code: "digest",
        side: "source",
        detail: `the destination's image digest is 0x${hex(theirs)}, ours 0x${hex(ours)}`,
      });
    }
    return ours;
  }

  async #openFaultConnection(session: bigint): Promise<void> {
    const o = this.#options;
    const socket = await Socket.connect(o.connection, {
      timeoutMs: o.connectTimeoutMs ?? 10_000,
      silenceMs: this.#timeoutMs,
      signal: o.signal,
    });
    const faultLink = this.#faultLink = new Link(socket, new CrcArena(SMALL_BYTES), "source");
    await faultLink.send(TAG.FCON, encodeSession(session));
    this.#server = new PageServer(socket.fd, this.#address, this.#L, this.#N, this.#crcShared);
    // Its echo: the destination's LazyRegion serves (its Worker's start is not part of the downtime). The
    // page server does not read the connection before it is told to (it starts while we wait here).
    const echo = await faultLink.receive();
    if (echo.tag !== TAG.FCON) throw this.#unexpected(echo.tag, echo.sequence, "FCON");
    this.#server.go();
    if (!(await this.#server.started(10_000))) {
      throw new MigrationError({ code: "protocol", side: "source", detail: `the page server: ${this.#server.reason}` });
    }
  }

  /** Post-copy (and the hybrid's switch): the pages still to come, the state, the confirmation, the stream. */
  async #postcopy(pending: Uint32Array, converged: boolean): Promise<MigrationResult> {
    const link = this.#link!;
    const server = this.#server!;
    // The pages still to come (POST frames of at most 4096 runs each), then the state, in one send.
    const frames: [number, Uint8Array][] = [];
    for (let i = 0; i < pending.length || frames.length === 0; i += 2 * MAX_ZERO_RUNS) {
      frames.push([TAG.POST, encodeRuns(pending.subarray(i, i + 2 * MAX_ZERO_RUNS))]);
    }
    frames.push(await this.#stateFrame());
    for (let i = 0; i < frames.length; i += 6) await link.sendMany(frames.slice(i, i + 6));
    await this.#confirmation(TAG.CONF);
    const downtimeMs = performance.now() - this.#pausedAt;
    this.#progress("postcopy", this.#rounds.length, 0);
    const t0 = performance.now();
    const before = { data: this.#dataPages, bytes: link.bytesSent };
    this.#skip = server.served;
    await this.#stream(pending, NONE, false);
    await this.#drain();
    if (server.state === SERVER_STATE.FAILED) {
      throw new MigrationError({ code: "protocol", side: "source", detail: `the page server: ${server.reason}` });
    }
    await link.send(TAG.END, this.#end());
    const streamMs = performance.now() - t0;
    // The destination confirms once it has placed every page, which for a large memory can take longer than the
    // silence timeout: wait on while its fault connection is open (a destination that dies closes it; a machine
    // that vanishes is found by TCP keepalive).
    let digest: number;
    for (;;) {
      try {
        digest = await this.#confirmation(TAG.COMP);
        break;
      } catch (e) {
        const alive = server.state === SERVER_STATE.RUNNING && this.#faultLink?.socket.pendingError() === 0;
        const idle = e instanceof MigrationError && e.code === "timeout" && e.cause instanceof LinkError &&
          e.cause.done === 0; // silent between frames: nothing half read
        if (!(idle && alive)) throw e;
      }
    }
    const ms = performance.now() - t0;
    this.#progress("complete", this.#rounds.length, 0);
    if (this.#throttle > 0) await this.#setThrottle(0);
    const streamedBytes = link.bytesSent - before.bytes;
    return this.#result(converged, downtimeMs, digest, {
      requests: server.stats[SERVER_STAT.requests]!,
      serviceMs: server.stats[SERVER_STAT.serviceMs]! / Math.max(1, server.stats[SERVER_STAT.requests]!),
      streamed: this.#dataPages - before.data,
      skipped: this.#skipped,
      ms,
      bandwidth: (streamedBytes * 1000) / Math.max(streamMs, 1e-3),
    });
  }

  #result(
    converged: boolean,
    downtimeMs: number,
    digest: number,
    postcopy: MigrationResult["postcopy"],
  ): MigrationResult {
    const link = this.#link!;
    const server = this.#server;
    return {
      mode: this.#mode,
      converged,
      rounds: this.#rounds,
      downtimeMs,
      totalMs: performance.now() - this.#t0,
      bytesSent: link.bytesSent + (this.#faultLink?.bytesSent ?? 0) + (server?.stats[SERVER_STAT.bytes] ?? 0),
      bytesReceived: link.bytesReceived + (server?.stats[SERVER_STAT.bytesIn] ?? 0),
      dataPages: this.#dataPages + (server?.stats[SERVER_STAT.pages] ?? 0),
      zeroPages: this.#zeroPages,
      imagePages: this.#N,
      imageLength: this.#L,
      postcopy,
      throttle: this.#maxThrottle,
      digest,
    };
  }

  #unexpected(tag: number, sequence: number, wanted: string): MigrationError {
    return new MigrationError({
      code: "protocol",
      side: "source",
      detail: `a ${tagName(tag)} frame where ${wanted} was due`,
      frame: { tag: tagName(tag), sequence },
    });
  }

  #progress(phase: MigrationProgress["phase"], round: number, dirtyPages: number): void {
    const hook = this.#options.onProgress;
    if (hook === undefined) return;
    const last = this.#rounds.at(-1);
    const event: MigrationProgress = {
      side: "source",
      phase,
      round,
      dataPages: this.#dataPages,
      zeroPages: this.#zeroPages,
      bytes: this.#link?.bytesSent ?? 0,
      dirtyPages,
      dirtyRate: last?.dirtyRate ?? 0,
      bandwidth: this.#bandwidth,
      estimatedDowntimeMs: this.#estimate(dirtyPages),
      throttle: this.#throttle,
    };
    try {
      hook(event);
    } catch (e) {
      throw new MigrationError({ code: "hook", side: "source", detail: `onProgress threw: ${e}`, cause: e });
    }
  }
}

/** The union of two sorted run lists. */
function union(a: Uint32Array, b: Uint32Array): Uint32Array {
  const runs = new RunList();
  for (let i = 0; i < a.length; i += 2) runs.add(a[i]!, a[i + 1]!);
  for (let i = 0; i < b.length; i += 2) runs.add(b[i]!, b[i + 1]!);
  return runs.freeze();
}

/**
 * Sends `memory` (see `Migration.send`).
 *
 * @param memory What to migrate.
 * @param options The connection, the hooks, the budget.
 * @returns What happened, once the destination holds everything.
 */
export async function send(memory: MemoryTarget, options: SendOptions): Promise<MigrationResult> {
  return await new SourceRun(memory, options).run();
}
