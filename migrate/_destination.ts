/**
 * The destination end of a live migration (`Migration.receive`): accept the
 * source, check its `HELO` (version, page size, the target's length) and answer
 * with the mode; then take frames — every batch checked (its CRC-32C, each
 * page's) before a byte of it is used — into the target (pre-copy) or a staging
 * memory (the hybrid's rounds); at the end check the whole image's digest and
 * confirm. Post-copy opens a `LazyRegion` over the target early (its Worker
 * waits), and at the switch hands it the connections: the state is returned and
 * the program resumes at once, its faults served from the network. Internal; the
 * design: `docs/live-migration.md`.
 *
 * @module
 */

import { PAGE_SIZE } from "../ffi/_libc.ts";
import type { Feature } from "../ffi/uapi.ts";
import { Region } from "../kernel/region.ts";
import { LazyRegion } from "../lazy/lazy_region.ts";
import { CrcArena, zeroPageCrc } from "./_crc32c.ts";
import { Link, type Received, SMALL_BYTES } from "./_link.ts";
import { KIND, POST_CTRL, POST_MESSAGE_BYTES, POST_STAT, type PostcopyOptions } from "./_postcopy_source.ts";
import type { Socket } from "./_socket.ts";
import type { MigrationProgress, ReceivedMigration, ReceiveOptions, ReceiveStats } from "./_types.ts";
import {
  decodeBatch,
  decodeEnd,
  decodeHello,
  decodeRoundEnd,
  decodeRuns,
  decodeSession,
  decodeState,
  encodeAccept,
  encodeSession,
  encodeU32,
  type End,
  hex,
  imageDigest,
  MAX_PAYLOAD,
  type MigrationMode,
  TAG,
  tagName,
  VERSION,
  WireError,
} from "./_wire.ts";
import { MigrationError } from "./migration_error.ts";

const POSTCOPY_URL = new URL("./_postcopy_source.ts", import.meta.url).href;
const MODES: readonly MigrationMode[] = ["precopy", "postcopy", "hybrid"];

/** The page-aligned private anonymous memory of a target. */
function targetRegion(target: unknown): Region {
  let region: Region;
  if (target instanceof WebAssembly.Memory) region = Region.of(target);
  else if (target instanceof Region) {
    if (target.kind !== "private") {
      throw new TypeError(`Migration.receive: a target Region must be private anonymous memory, not ${target.kind}`);
    }
    region = target;
  } else throw new TypeError("Migration.receive: target must be a WebAssembly.Memory or a Region");
  if (region.address % BigInt(PAGE_SIZE) !== 0n || region.length % PAGE_SIZE !== 0) {
    throw new TypeError("Migration.receive: the target must start and end on page boundaries");
  }
  return region;
}

/**
 * Allocates every page of `region` (`MADV_POPULATE_WRITE`), then writes a byte of
 * each: on a VM whose host backs guest memory on the first write, the populate
 * alone leaves that cost to the first real write (measured on Linux 6.18 in a
 * Firecracker VM: 11 µs per page, against 1 µs for the populate).
 */
function populate(region: Region): void {
  region.populate({ write: true });
  const bytes = region.bytes;
  for (let i = 0; i < bytes.length; i += PAGE_SIZE) bytes[i] = 0;
}

/** Runs one migration from the destination's side. */
export class DestinationRun {
  readonly #options: ReceiveOptions;
  readonly #listener: Socket;
  readonly #ownsListener: boolean;
  readonly #region: Region;
  readonly #mode: MigrationMode;
  readonly #hybridRounds: number;
  readonly #timeoutMs: number;
  readonly #P = PAGE_SIZE;
  #N = 0;
  #L = 0;
  #arena: CrcArena | undefined;
  #link: Link | undefined;
  #faultLink: Link | undefined;
  #staging: Region | undefined;
  #lazy: LazyRegion | undefined;
  #crcShared: SharedArrayBuffer | undefined;
  #crcs: Uint32Array = new Uint32Array(0);
  #hasData = new Uint8Array(0);
  #post: {
    kinds: Uint8Array;
    stats: Float64Array;
    control: Int32Array;
    message: Uint8Array;
    end: Uint8Array;
  } | undefined;
  #dataPages = 0;
  #zeroPages = 0;
  #rounds = 0;
  #closed = false;
  #abort: (() => void) | undefined;

  constructor(listener: Socket, ownsListener: boolean, options: ReceiveOptions) {
    if (options === null || typeof options !== "object") throw new TypeError("Migration.receive: options are required");
    this.#region = targetRegion(options.target);
    const mode = options.mode ?? "precopy";
    if (!MODES.includes(mode)) {
      throw new TypeError(`Migration.receive: mode must be precopy, postcopy or hybrid, not ${String(mode)}`);
    }
    const rounds = options.hybridRounds ?? 2;
    if (!Number.isInteger(rounds) || rounds < 1 || rounds > 255) {
      throw new TypeError(`Migration.receive: hybridRounds must be an integer from 1 to 255, not ${rounds}`);
    }
    if (options.onProgress !== undefined && typeof options.onProgress !== "function") {
      throw new TypeError("Migration.receive: onProgress must be a function");
    }
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    if (options.populate === true && mode !== "precopy") {
      throw new TypeError("Migration.receive: populate is for pre-copy (post-copy fills pages as they come)");
    }
    this.#options = options;
    this.#listener = listener;
    this.#ownsListener = ownsListener;
    this.#mode = mode;
    this.#hybridRounds = rounds;
  }

  async run(): Promise<ReceivedMigration> {
    const signal = this.#options.signal;
    signal?.throwIfAborted();
    if (this.#options.populate === true) populate(this.#region); // before the source connects
    this.#abort = () => {
      this.#link?.socket.shutdown();
      this.#faultLink?.socket.shutdown();
    };
    signal?.addEventListener("abort", this.#abort);
    try {
      return await this.#receive();
    } catch (e) {
      const error = this.#asError(e);
      await this.#link?.fail(error, 1000);
      await this.#teardown();
      throw error;
    } finally {
      if (this.#ownsListener) this.#listener.close();
    }
  }

  #asError(e: unknown): MigrationError {
    if (this.#options.signal?.aborted) {
      return new MigrationError({ code: "aborted", side: "destination", detail: "the signal was aborted", cause: e });
    }
    if (e instanceof MigrationError) return e;
    if (this.#link) return this.#link.error(e, "");
    return new MigrationError({
      code: "connect",
      side: "destination",
      detail: e instanceof Error ? e.message : String(e),
      cause: e,
    });
  }

  async #teardown(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#abort) this.#options.signal?.removeEventListener("abort", this.#abort);
    try {
      await this.#lazy?.close();
    } catch { /* closing anyway */ }
    this.#link?.close();
    this.#faultLink?.close();
    if (this.#staging?.mapped) this.#staging.unmap();
  }

  async #accept(what: string): Promise<Socket> {
    try {
      return await this.#listener.accept({
        timeoutMs: this.#options.acceptTimeoutMs ?? 60_000,
        silenceMs: this.#timeoutMs,
        signal: this.#options.signal,
      });
    } catch (e) {
      throw new MigrationError({
        code: this.#options.signal?.aborted ? "aborted" : "connect",
        side: "destination",
        detail: `no ${what} came: ${e instanceof Error ? e.message : e}`,
        cause: e,
      });
    }
  }

  #refuse(code: "refused" | "version" | "protocol", detail: string): MigrationError {
    return new MigrationError({ code, side: "destination", detail });
  }

  async #receive(): Promise<ReceivedMigration> {
    const small = new CrcArena(SMALL_BYTES);
    const link = this.#link = new Link(await this.#accept("source"), small, "destination");
    const first = await link.receive();
    if (first.tag !== TAG.HELO) throw this.#refuse("protocol", `the first frame is ${tagName(first.tag)}, not HELO`);
    const hello = (() => {
      try {
        return decodeHello(link.payload(first));
      } catch (e) {
        if (e instanceof WireError) throw this.#refuse(e.code as "version" | "protocol", e.message);
        throw e;
      }
    })();
    if (hello.pageSize !== this.#P) {
      throw this.#refuse("refused", `the source's pages are ${hello.pageSize} bytes, this machine's ${this.#P}`);
    }
    if (hello.imageLength > this.#region.length) {
      const wasm = Math.ceil(hello.imageLength / 65536);
      throw this.#refuse(
        "refused",
        `the target holds ${this.#region.length} bytes, the source's memory ${hello.imageLength}` +
          (this.#options.target instanceof WebAssembly.Memory
            ? ` (grow it to ${wasm} wasm pages: memory.grow(${wasm - this.#region.length / 65536}))`
            : ""),
      );
    }
    this.#N = hello.imagePages;
    this.#L = hello.imageLength;
    const room = Math.min(MAX_PAYLOAD, Math.max(hello.maxPayload, 64 * 1024));
    // The link's small area, then two payload buffers: one is read while the other is used.
    const arena = this.#arena = new CrcArena(SMALL_BYTES + 2 * room);
    const main = this.#link = new Link(link.socket, arena, "destination");
    main.received = link.received;
    main.bytesReceived = link.bytesReceived;
    this.#crcShared = new SharedArrayBuffer(4 * this.#N);
    this.#crcs = new Uint32Array(this.#crcShared);
    this.#crcs.fill(zeroPageCrc(this.#P));
    this.#hasData = new Uint8Array(this.#N);
    if (this.#mode === "hybrid") this.#staging = Region.map(Math.max(this.#P, this.#N * this.#P));
    else if (this.#mode === "precopy") {
      // The image's zero pages are dropped as their ZERO runs come (a fresh target has nothing to drop, and a
      // populated one keeps its pages for the data); the pages past the image are zero from the start.
      const end = this.#N * this.#P;
      if (end < this.#region.length) {
        this.#region.zap(this.#region.pages(this.#N, this.#region.length / this.#P - this.#N));
      }
    }
    await main.send(TAG.ACPT, encodeAccept({ version: VERSION, mode: this.#mode, hybridRounds: this.#hybridRounds }));
    if (this.#mode !== "precopy") await this.#prepareLazy(hello.session, room);
    this.#progress("connected");
    return await this.#frames(room);
  }

  /** Post-copy: the fault connection, and the `LazyRegion` whose Worker waits for the switch. */
  async #prepareLazy(session: bigint, room: number): Promise<void> {
    const socket = await this.#accept("fault connection");
    const faultLink = this.#faultLink = new Link(socket, new CrcArena(SMALL_BYTES), "destination");
    const hello = await faultLink.receive();
    if (hello.tag !== TAG.FCON || decodeSession(faultLink.payload(hello)) !== session) {
      throw this.#refuse("protocol", "the second connection is not this migration's fault connection");
    }
    const post = this.#post = {
      kinds: new Uint8Array(new SharedArrayBuffer(this.#N)),
      stats: new Float64Array(new SharedArrayBuffer(8 * POST_STAT.SIZE)),
      control: new Int32Array(new SharedArrayBuffer(4 * POST_CTRL.SIZE)),
      message: new Uint8Array(new SharedArrayBuffer(POST_MESSAGE_BYTES)),
      end: new Uint8Array(new SharedArrayBuffer(20)),
    };
    const options: PostcopyOptions = {
      streamFd: this.#link!.socket.fd,
      faultFd: socket.fd,
      pageSize: this.#P,
      imagePages: this.#N,
      kinds: post.kinds.buffer as SharedArrayBuffer,
      staging: this.#staging ? Number(this.#staging.address) : 0,
      stagingLength: this.#staging?.length ?? 0,
      crcs: this.#crcShared!,
      stats: post.stats.buffer as SharedArrayBuffer,
      control: post.control.buffer as SharedArrayBuffer,
      message: post.message.buffer as SharedArrayBuffer,
      end: post.end.buffer as SharedArrayBuffer,
      timeoutMs: this.#timeoutMs,
      maxPayload: room,
    };
    const decline: Iterable<Feature> | undefined = this.#options.decline;
    this.#lazy = await LazyRegion.open(
      { module: POSTCOPY_URL, export: "postcopySource", options },
      { target: this.#options.target, prefetch: true, prefetchChunk: 256, decline },
    );
    await faultLink.send(TAG.FCON, encodeSession(session)); // the echo: faults can be served from now on
  }

  /** Takes frames until the end (pre-copy) or the switch (post-copy). */
  async #frames(room: number): Promise<ReceivedMigration> {
    const link = this.#link!;
    const arena = this.#arena!;
    const buffers = [arena.base + SMALL_BYTES, arena.base + SMALL_BYTES + room];
    const batchRoom = { pages: new Uint32Array(8192), crcs: new Uint32Array(8192) };
    const into = this.#staging ?? this.#region;
    const bytes = into.bytes;
    const P = this.#P;
    let which = 0;
    let state: { json: boolean; data: Uint8Array } | undefined;
    let pending: Uint32Array | undefined;
    const read = (at: number) => {
      const promise = link.receive(at, room);
      promise.catch(() => {}); // awaited below; never an unhandled rejection meanwhile
      return promise;
    };
    let next: Promise<Received> | undefined = read(buffers[0]!);
    for (;;) {
      const frame = await next!;
      next = undefined;
      which ^= 1;
      const preread = frame.tag !== TAG.END && !(frame.tag === TAG.STAT && pending !== undefined);
      if (preread) next = read(buffers[which]!);
      const payload = link.payload(frame);
      const where = { tag: tagName(frame.tag), sequence: frame.sequence };
      try {
        if (frame.tag === TAG.PAGE) {
          const batch = decodeBatch(arena, frame.at, frame.length, P, this.#N, batchRoom);
          for (let i = 0; i < batch.count; i++) {
            const page = batch.pages[i]!;
            const from = batch.dataAt + i * P;
            const length = Math.min(P, this.#L - page * P);
            bytes.set(arena.bytes.subarray(from, from + length), page * P);
            this.#crcs[page] = batch.crcs[i]!;
            this.#hasData[page] = 1;
          }
          this.#dataPages += batch.count;
        } else if (frame.tag === TAG.ZERO) {
          const { runs } = decodeRuns(payload, this.#N, "ZERO");
          const zero = zeroPageCrc(P);
          for (let r = 0; r < runs.length; r += 2) {
            const first = runs[r]!;
            const count = runs[r + 1]!;
            this.#hasData.fill(0, first, first + count);
            this.#crcs.fill(zero, first, first + count);
            // Zero, and not allocated: dropped (a target's page past the image's end is not the image's).
            into.zap(into.pages(first, count));
            this.#zeroPages += count;
          }
        } else if (frame.tag === TAG.ROND) {
          const round = decodeRoundEnd(payload).round;
          this.#rounds++;
          await link.send(TAG.RACK, encodeU32(round)); // every page of the round is in place
          this.#progress("precopy");
        } else if (frame.tag === TAG.STAT) {
          state = decodeState(payload);
          if (pending !== undefined) return await this.#switch(pending, state);
        } else if (frame.tag === TAG.POST) {
          if (this.#mode === "precopy") throw new WireError("protocol", "a POST frame in a pre-copy migration");
          const more = decodeRuns(payload, this.#N, "POST").runs;
          if (
            pending !== undefined && pending.length > 0 && more.length > 0 &&
            more[0]! < pending.at(-2)! + pending.at(-1)!
          ) {
            throw new WireError("protocol", "POST frames out of order");
          }
          const all = new Uint32Array((pending?.length ?? 0) + more.length);
          if (pending) all.set(pending);
          all.set(more, pending?.length ?? 0);
          if (pending === undefined) this.#progress("paused");
          pending = all;
        } else if (frame.tag === TAG.END) {
          if (this.#mode !== "precopy" || state === undefined) {
            throw new WireError("protocol", "an END_ frame before the state, or in a post-copy migration");
          }
          const digest = this.#check(decodeEnd(payload));
          await link.send(TAG.CONF, encodeU32(digest));
          this.#progress("complete");
          void link.linger(1000); // the source closes on CONF; the program need not wait for it
          return this.#result(state, Promise.resolve());
        } else throw new WireError("protocol", `a ${tagName(frame.tag)} frame from the source`);
      } catch (e) {
        throw link.error(e, "", where);
      }
    }
  }

  /** The end's counts and digest against what arrived; returns the digest. */
  #check(end: End): number {
    if (end.imagePages !== this.#N) {
      throw new MigrationError({
        code: "digest",
        side: "destination",
        detail: `the end counts ${end.imagePages} pages, the HELO ${this.#N}`,
      });
    }
    const digest = imageDigest(this.#arena!, this.#crcs, this.#arena!.base + SMALL_BYTES);
    if (digest !== end.digest) {
      throw new MigrationError({
        code: "digest",
        side: "destination",
        detail: `the image's digest is 0x${hex(digest)} here, 0x${hex(end.digest)} at the source`,
      });
    }
    return digest;
  }

  /** The switch to post-copy: hand the stream to the `LazyRegion`'s source, confirm, resolve. */
  async #switch(pending: Uint32Array, state: { json: boolean; data: Uint8Array }): Promise<ReceivedMigration> {
    const post = this.#post!;
    const kinds = post.kinds;
    for (let p = 0; p < this.#N; p++) kinds[p] = this.#hasData[p] === 1 ? KIND.STAGED : KIND.ZERO;
    for (let r = 0; r < pending.length; r += 2) kinds.fill(KIND.NETWORK, pending[r]!, pending[r]! + pending[r + 1]!);
    const link = this.#link!;
    Atomics.store(post.control, POST_CTRL.STREAM_SEQUENCE, link.received);
    Atomics.store(post.control, POST_CTRL.GO, 1);
    Atomics.notify(post.control, POST_CTRL.GO);
    await link.send(TAG.CONF, encodeU32(0));
    this.#progress("postcopy");
    const ready = this.#complete();
    ready.catch(() => {}); // observed through `ready`
    return this.#result(state, ready);
  }

  /** Post-copy's end: every page settled, the `END_` read and checked, `COMP` sent, the lazy region closed. */
  async #complete(): Promise<void> {
    const post = this.#post!;
    const lazy = this.#lazy!;
    const link = this.#link!;
    const gone = () => {
      const n = Atomics.load(post.control, POST_CTRL.MESSAGE_LENGTH);
      return n > 0 ? new TextDecoder().decode(post.message.slice(0, n)) : "the source vanished";
    };
    try {
      await lazy.ready;
    } catch (e) {
      throw new MigrationError({ code: "peer-gone", side: "destination", detail: gone(), cause: e });
    }
    // The stream's END read by the source Worker marks the source gone for pages still to come; with every page
    // settled and none poisoned it was the orderly end (seen first under a slow machine's timing, e.g. on 6.1 under TCG).
    const ended = Atomics.load(post.control, POST_CTRL.END_SEEN) === 1;
    if (lazy.stats.poisoned > 0 || (Atomics.load(post.control, POST_CTRL.GONE) === 1 && !ended)) {
      throw new MigrationError({
        code: /silent/.test(gone()) ? "timeout" : "peer-gone",
        side: "destination",
        detail: `${gone()}: ${lazy.stats.poisoned} pages never came and are poisoned`,
      });
    }
    let end: End;
    try {
      if (Atomics.load(post.control, POST_CTRL.END_SEEN) === 1) end = decodeEnd(post.end);
      else {
        link.received = Atomics.load(post.control, POST_CTRL.STREAM_SEQUENCE);
        const room = this.#arena!.size - SMALL_BYTES;
        for (;;) {
          const frame = await link.receive(this.#arena!.base + SMALL_BYTES, room);
          if (frame.tag === TAG.END) {
            end = decodeEnd(link.payload(frame));
            break;
          }
          if (frame.tag !== TAG.PAGE && frame.tag !== TAG.ZERO) {
            throw new WireError("protocol", `a ${tagName(frame.tag)} frame after the post-copy stream`);
          }
        }
      }
      const digest = this.#check(end);
      await link.send(TAG.COMP, encodeU32(digest));
      this.#progress("complete");
    } catch (e) {
      const error = link.error(e, "");
      await link.fail(error, 1000);
      throw error;
    }
    await link.linger(1000);
    this.#faultLink?.close();
    await lazy.close();
    if (this.#staging?.mapped) this.#staging.unmap();
  }

  #result(state: { json: boolean; data: Uint8Array }, ready: Promise<void>): ReceivedMigration {
    let value: unknown = state.data;
    if (state.json) {
      try {
        value = JSON.parse(new TextDecoder().decode(state.data));
      } catch (e) {
        throw new MigrationError({ code: "protocol", side: "destination", detail: "the state is not JSON", cause: e });
      }
    }
    // deno-lint-ignore no-this-alias
    const run = this;
    const target = this.#region;
    const stats = (): ReceiveStats => run.#stats();
    return {
      mode: this.#mode,
      state: value,
      imageLength: this.#L,
      imagePages: this.#N,
      ready,
      read(offset: number, length: number): Uint8Array {
        const lazy = run.#lazy;
        if (lazy !== undefined && lazy.state !== "closed") return lazy.read(offset, length);
        if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
          throw new RangeError(`read: bad range ${offset}+${length}`);
        }
        return target.bytes.slice(offset, offset + length);
      },
      stats,
      close: () => run.#teardown(),
      [Symbol.asyncDispose]: () => run.#teardown(),
    };
  }

  #stats(): ReceiveStats {
    const s = this.#post?.stats;
    const requests = s?.[POST_STAT.requests] ?? 0;
    return {
      bytesReceived: (this.#link?.bytesReceived ?? 0) + (s?.[POST_STAT.bytes] ?? 0),
      dataPages: this.#dataPages + (s?.[POST_STAT.streamed] ?? 0) + requests,
      zeroPages: this.#zeroPages,
      rounds: this.#rounds,
      requests,
      requestMs: requests > 0 ? s![POST_STAT.requestMs]! / requests : 0,
      streamed: s?.[POST_STAT.streamed] ?? 0,
      poisoned: this.#lazy?.state === "closed" ? 0 : this.#lazy?.stats.poisoned ?? 0,
    };
  }

  #progress(phase: MigrationProgress["phase"]): void {
    const hook = this.#options.onProgress;
    if (hook === undefined) return;
    const s = this.#stats();
    hook({
      side: "destination",
      phase,
      round: this.#rounds,
      dataPages: s.dataPages,
      zeroPages: s.zeroPages,
      bytes: s.bytesReceived,
      dirtyPages: 0,
      dirtyRate: 0,
      bandwidth: 0,
      estimatedDowntimeMs: 0,
      throttle: 0,
    });
  }
}
