/**
 * The live migration's wire format, version 1 (for humans:
 * `docs/migration-format.md`): a 16-byte frame header (tag, payload length,
 * sequence number, CRC-32C), the payloads of every frame type, and the checks a
 * receiver makes before it uses anything. Pure encoding and decoding: the
 * connections are `_link.ts`'s, the page batches are built in place by
 * {@linkcode BatchBuilder} in a `CrcArena`.
 *
 * ```text
 * header   0 tag (4 ASCII bytes)   4 payload length u32   8 sequence u32   12 CRC-32C u32
 * PAGE     round u32, runs r u32, r × (first page u32, pages u32), n × page CRC u32, n × P page bytes
 *          (the header CRC covers header bytes 0–11 and the payload up to the page bytes; each page its own CRC)
 * ```
 *
 * @example
 * ```ts
 * import { decodeHello, encodeHello, TAG } from "./_wire.ts";
 * const hello = { version: 1, pageSize: 4096, imageLength: 65536, imagePages: 16, session: 7n, maxPayload: 1 << 20 };
 * console.log(TAG.HELO, decodeHello(encodeHello(hello)).imagePages); // 1330398536 16
 * ```
 *
 * @module
 */

import type { CrcArena } from "./_crc32c.ts";
import type { MigrationErrorCode } from "./migration_error.ts";

/** The first 8 bytes of a `HELO` payload. */
export const MAGIC = "UFFDMIGR";
/** The version this library speaks. */
export const VERSION = 1;
/** Bytes of a frame header. */
export const HEADER_BYTES = 16;
/** The largest payload a receiver accepts (a `PAGE` frame of 1 MiB of pages is about 1.01 MiB). */
export const MAX_PAYLOAD = 16 << 20;
/** Sequence number of a frame that is not about a particular frame (in `FAIL`). */
export const NONE = 0xffff_ffff;

function tag(text: string): number {
  return text.charCodeAt(0) | (text.charCodeAt(1) << 8) | (text.charCodeAt(2) << 16) | (text.charCodeAt(3) << 24);
}

/** The frame tags, as the little-endian u32 of their four ASCII bytes. */
export const TAG = {
  /** Source → destination, the first frame of the main connection: who, what, which version. */
  HELO: tag("HELO") >>> 0,
  /** Destination → source: accepted, in this mode. */
  ACPT: tag("ACPT") >>> 0,
  /** Source → destination, the first frame of the fault connection (post-copy): the session it belongs to. */
  FCON: tag("FCON") >>> 0,
  /** Source → destination: a batch of pages with their bytes. */
  PAGE: tag("PAGE") >>> 0,
  /** Source → destination: runs of pages that are all zero (no bytes). */
  ZERO: tag("ZERO") >>> 0,
  /** Source → destination: the end of a pre-copy round. */
  ROND: tag("ROND") >>> 0,
  /** Destination → source: a round taken in (every page of it placed): the round's true end-to-end time. */
  RACK: tag("RACK") >>> 0,
  /** Source → destination: switch to post-copy; the pages still to come. */
  POST: tag("POST") >>> 0,
  /** Source → destination: the program's state (what lives outside the memory). */
  STAT: tag("STAT") >>> 0,
  /** Source → destination: the end — page counts and the digest of the whole image. */
  END: tag("END_") >>> 0,
  /** Destination → source: confirmed — the destination holds the state (and every page, before post-copy) and resumes. */
  CONF: tag("CONF") >>> 0,
  /** Destination → source: post-copy complete — every page is in and the digest matches. */
  COMP: tag("COMP") >>> 0,
  /** Destination → source, on the fault connection: send these pages now. */
  REQ: tag("REQ_") >>> 0,
  /** Either way: a refusal or a failure, with its code and reason; the sender closes after it. */
  FAIL: tag("FAIL") >>> 0,
} as const;

const TAG_NAMES = new Map<number, string>(
  Object.entries(TAG).map(([k, v]) => [v, k === "END" ? "END_" : k === "REQ" ? "REQ_" : k]),
);

/** The four ASCII bytes of a tag, for messages (`"PAGE"`), or its hex when it is none of ours. */
export function tagName(value: number): string {
  return TAG_NAMES.get(value >>> 0) ?? `0x${(value >>> 0).toString(16).padStart(8, "0")}`;
}

/** How the destination takes the memory. */
export type MigrationMode = "precopy" | "postcopy" | "hybrid";

const MODES: readonly MigrationMode[] = ["precopy", "postcopy", "hybrid"];

/** The `FAIL` codes, in wire order (code `i + 1`). */
const FAIL_CODES: readonly MigrationErrorCode[] = [
  "refused",
  "version",
  "protocol",
  "corrupt",
  "truncated",
  "peer-gone",
  "timeout",
  "digest",
  "connect",
  "hook",
  "aborted",
  "memory",
];

/** A frame that cannot be used: why, as a {@linkcode MigrationErrorCode}. */
export class WireError extends Error {
  /** What is wrong. */
  readonly code: MigrationErrorCode;
  /** The page concerned, if one is. */
  readonly page: number | undefined;
  /** A frame that is wrong in `code`'s way; `page` when one page is. */
  constructor(code: MigrationErrorCode, message: string, page?: number) {
    super(message);
    this.name = "WireError";
    this.code = code;
    this.page = page;
  }
}

/** A decoded frame header. */
export interface Header {
  /** The tag (see {@linkcode TAG}). */
  readonly tag: number;
  /** Payload bytes after the header. */
  readonly length: number;
  /** The sequence number: 0, 1, 2… per connection and direction. */
  readonly sequence: number;
  /** The CRC-32C it carries. */
  readonly crc: number;
}

/** Writes a header at `at` of `bytes` (the CRC is filled in by {@linkcode sealFrame}). */
export function writeHeader(bytes: Uint8Array, at: number, tagValue: number, length: number, sequence: number): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset + at, HEADER_BYTES);
  view.setUint32(0, tagValue, true);
  view.setUint32(4, length, true);
  view.setUint32(8, sequence, true);
  view.setUint32(12, 0, true);
}

/** Reads the header at `at`, checking its length against {@linkcode MAX_PAYLOAD}. */
export function readHeader(bytes: Uint8Array, at: number): Header {
  const view = new DataView(bytes.buffer, bytes.byteOffset + at, HEADER_BYTES);
  const header = {
    tag: view.getUint32(0, true),
    length: view.getUint32(4, true),
    sequence: view.getUint32(8, true),
    crc: view.getUint32(12, true),
  };
  if (header.length > MAX_PAYLOAD) {
    throw new WireError(
      "protocol",
      `a ${tagName(header.tag)} frame claims ${header.length} bytes of payload (at most ${MAX_PAYLOAD})`,
    );
  }
  return header;
}

/** How many payload bytes the frame's CRC covers: all of it, except a `PAGE` frame's page bytes. */
export function checkedLength(tagValue: number, payload: Uint8Array, at: number, length: number): number {
  if (tagValue !== TAG.PAGE) return length;
  if (length < 8) throw new WireError("protocol", `a PAGE frame of ${length} bytes (at least 8)`);
  const runs = new DataView(payload.buffer, payload.byteOffset + at, 8).getUint32(4, true);
  if (runs > length / 8) throw new WireError("protocol", `a PAGE frame lists ${runs} runs in ${length} bytes`);
  let pages = 0;
  const view = new DataView(payload.buffer, payload.byteOffset + at, length);
  for (let r = 0; r < runs; r++) pages += view.getUint32(12 + 8 * r, true);
  const checked = 8 + 8 * runs + 4 * pages;
  if (checked > length) throw new WireError("protocol", `a PAGE frame's directory runs past its ${length} bytes`);
  return checked;
}

/** Fills in the CRC of the frame whose header is at `at` (payload right after it) in the arena's bytes. */
export function sealFrame(arena: CrcArena, at: number): void {
  const bytes = arena.bytes;
  const header = readHeader(bytes, at);
  const checked = checkedLength(header.tag, bytes, at + HEADER_BYTES, header.length);
  const crc = arena.crc(at + HEADER_BYTES, checked, arena.crc(at, 12));
  new DataView(bytes.buffer, at + 12, 4).setUint32(0, crc, true);
}

/** Checks the CRC of a received frame: header at `headerAt`, payload at `payloadAt` (both in the arena). */
export function checkFrame(arena: CrcArena, headerAt: number, payloadAt: number, header: Header): void {
  const checked = checkedLength(header.tag, arena.bytes, payloadAt, header.length);
  const crc = arena.crc(payloadAt, checked, arena.crc(headerAt, 12));
  if (crc !== header.crc) {
    throw new WireError(
      "corrupt",
      `the ${tagName(header.tag)} frame ${header.sequence} does not match its CRC-32C ` +
        `(carried 0x${hex(header.crc)}, computed 0x${hex(crc)})`,
    );
  }
}

/** A u32 in 8 hex digits. */
export function hex(n: number): string {
  return (n >>> 0).toString(16).padStart(8, "0");
}

// --- HELO / ACPT / FCON ---

/** What the source says first. */
export interface Hello {
  /** The wire format's version. */
  readonly version: number;
  /** The source's page size. */
  readonly pageSize: number;
  /** Bytes of the image (the memory's length). */
  readonly imageLength: number;
  /** Pages of the image: `ceil(imageLength / pageSize)`. */
  readonly imagePages: number;
  /** A random number naming this migration (the fault connection quotes it). */
  readonly session: bigint;
  /** The largest `PAGE` payload the source sends. */
  readonly maxPayload: number;
}

/** Bytes of a `HELO` payload. */
export const HELLO_BYTES = 48;

/** A `HELO` payload. */
export function encodeHello(h: Hello): Uint8Array {
  const bytes = new Uint8Array(HELLO_BYTES);
  const view = new DataView(bytes.buffer);
  bytes.set(new TextEncoder().encode(MAGIC), 0);
  view.setUint16(8, h.version, true);
  view.setUint16(10, 0, true);
  view.setUint32(12, h.pageSize, true);
  view.setBigUint64(16, BigInt(h.imageLength), true);
  view.setUint32(24, h.imagePages, true);
  view.setBigUint64(32, h.session, true);
  view.setUint32(40, h.maxPayload, true);
  return bytes;
}

/**
 * Decodes a `HELO` payload: the magic first, then the version (any other version
 * is a `version` error: the first 12 bytes keep their meaning in every version),
 * then the geometry.
 */
export function decodeHello(bytes: Uint8Array): Hello {
  if (bytes.length < 12 || new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) {
    throw new WireError("protocol", "the first frame is not a migration's HELO (no UFFDMIGR magic)");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint16(8, true);
  if (version !== VERSION) {
    throw new WireError(
      "version",
      `the source speaks version ${version} of the wire format; this end speaks ${VERSION}`,
    );
  }
  if (bytes.length < HELLO_BYTES) throw new WireError("protocol", `a HELO of ${bytes.length} bytes (${HELLO_BYTES})`);
  const pageSize = view.getUint32(12, true);
  const imageLength = Number(view.getBigUint64(16, true));
  const imagePages = view.getUint32(24, true);
  if (pageSize < 1024 || (pageSize & (pageSize - 1)) !== 0) {
    throw new WireError("protocol", `HELO: page size ${pageSize} is not a power of two of at least 1024`);
  }
  if (!Number.isSafeInteger(imageLength) || imagePages !== Math.ceil(imageLength / pageSize)) {
    throw new WireError("protocol", `HELO: ${imagePages} pages do not cover ${imageLength} bytes of ${pageSize}`);
  }
  return {
    version,
    pageSize,
    imageLength,
    imagePages,
    session: view.getBigUint64(32, true),
    maxPayload: view.getUint32(40, true),
  };
}

/** What the destination answers. */
export interface Accept {
  /** The version it speaks (the source's). */
  readonly version: number;
  /** How it takes the memory. */
  readonly mode: MigrationMode;
  /** Hybrid: the pre-copy rounds before post-copy. */
  readonly hybridRounds: number;
}

/** An `ACPT` payload. */
export function encodeAccept(a: Accept): Uint8Array {
  const bytes = new Uint8Array(8);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, a.version, true);
  bytes[2] = MODES.indexOf(a.mode) + 1;
  bytes[3] = a.hybridRounds;
  return bytes;
}

/** Decodes an `ACPT` payload. */
export function decodeAccept(bytes: Uint8Array): Accept {
  if (bytes.length < 8) throw new WireError("protocol", `an ACPT of ${bytes.length} bytes (8)`);
  const version = new DataView(bytes.buffer, bytes.byteOffset, 2).getUint16(0, true);
  const mode = MODES[bytes[2]! - 1];
  if (version !== VERSION) throw new WireError("version", `the destination answered in version ${version}`);
  if (mode === undefined) throw new WireError("protocol", `ACPT: unknown mode ${bytes[2]}`);
  return { version, mode, hybridRounds: bytes[3]! };
}

/** An `FCON` payload: the session. */
export function encodeSession(session: bigint): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, session, true);
  return bytes;
}

/** Decodes an `FCON` payload. */
export function decodeSession(bytes: Uint8Array): bigint {
  if (bytes.length < 8) throw new WireError("protocol", `an FCON of ${bytes.length} bytes (8)`);
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
}

// --- FAIL ---

/** A refusal or failure, as a `FAIL` frame carries it. */
export interface Failure {
  /** What went wrong. */
  readonly code: MigrationErrorCode;
  /** The sequence number of the frame concerned, or {@linkcode NONE}. */
  readonly sequence: number;
  /** The page concerned, or {@linkcode NONE}. */
  readonly page: number;
  /** The reason, in words. */
  readonly message: string;
}

/** A `FAIL` payload (the message cut to 4 KiB). */
export function encodeFailure(f: Failure): Uint8Array {
  const text = new TextEncoder().encode(f.message).subarray(0, 4096);
  const bytes = new Uint8Array(12 + text.length);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, FAIL_CODES.indexOf(f.code) + 1, true);
  view.setUint32(4, f.sequence, true);
  view.setUint32(8, f.page, true);
  bytes.set(text, 12);
  return bytes;
}

/** Decodes a `FAIL` payload (an unknown code reads as `protocol`). */
export function decodeFailure(bytes: Uint8Array): Failure {
  if (bytes.length < 12) return { code: "protocol", sequence: NONE, page: NONE, message: "a short FAIL frame" };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    code: FAIL_CODES[view.getUint16(0, true) - 1] ?? "protocol",
    sequence: view.getUint32(4, true),
    page: view.getUint32(8, true),
    message: new TextDecoder().decode(bytes.subarray(12)),
  };
}

// --- runs: ZERO, POST ---

/** Page runs `[first, count, first, count, …]`, as `ZERO` (after a round number) and `POST` carry them. */
export function encodeRuns(runs: ArrayLike<number>, round = NONE): Uint8Array {
  const count = runs.length / 2;
  const bytes = new Uint8Array(8 + 8 * count);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, round, true);
  view.setUint32(4, count, true);
  for (let i = 0; i < runs.length; i++) view.setUint32(8 + 4 * i, runs[i]!, true);
  return bytes;
}

/** Decodes runs, checking that they are ascending, not empty, and inside `pages`. */
export function decodeRuns(bytes: Uint8Array, pages: number, what: string): { round: number; runs: Uint32Array } {
  if (bytes.length < 8) throw new WireError("protocol", `a ${what} frame of ${bytes.length} bytes`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = view.getUint32(4, true);
  if (bytes.length !== 8 + 8 * count) {
    throw new WireError("protocol", `a ${what} frame of ${bytes.length} bytes lists ${count} runs`);
  }
  const runs = new Uint32Array(2 * count);
  let end = 0;
  for (let i = 0; i < count; i++) {
    const first = view.getUint32(8 + 8 * i, true);
    const n = view.getUint32(12 + 8 * i, true);
    if (n === 0 || first < end || first + n > pages) {
      throw new WireError(
        "protocol",
        `${what}: run ${first}+${n} is empty, out of order or outside the ${pages} pages`,
      );
    }
    runs[2 * i] = first;
    runs[2 * i + 1] = n;
    end = first + n;
  }
  return { round: view.getUint32(0, true), runs };
}

// --- ROND, STAT, END, CONF/COMP, REQ ---

/** What a `ROND` frame says about the round that ended. */
export interface RoundEnd {
  /** The round (0 for the first). */
  readonly round: number;
  /** Pages sent with their bytes in it. */
  readonly dataPages: number;
  /** Pages sent as zero. */
  readonly zeroPages: number;
}

/** A `ROND` payload. */
export function encodeRoundEnd(r: RoundEnd): Uint8Array {
  const bytes = new Uint8Array(12);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, r.round, true);
  view.setUint32(4, r.dataPages, true);
  view.setUint32(8, r.zeroPages, true);
  return bytes;
}

/** Decodes a `ROND` payload. */
export function decodeRoundEnd(bytes: Uint8Array): RoundEnd {
  if (bytes.length < 12) throw new WireError("protocol", `a ROND of ${bytes.length} bytes (12)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, 12);
  return { round: view.getUint32(0, true), dataPages: view.getUint32(4, true), zeroPages: view.getUint32(8, true) };
}

/** A `STAT` payload: kind 0 raw bytes, 1 JSON text. */
export function encodeState(state: Uint8Array, json: boolean): Uint8Array {
  const bytes = new Uint8Array(4 + state.length);
  bytes[0] = json ? 1 : 0;
  bytes.set(state, 4);
  return bytes;
}

/** Decodes a `STAT` payload. */
export function decodeState(bytes: Uint8Array): { json: boolean; data: Uint8Array } {
  if (bytes.length < 4 || bytes[0]! > 1) throw new WireError("protocol", "a STAT frame of an unknown kind");
  return { json: bytes[0] === 1, data: bytes.slice(4) };
}

/** What the `END_` frame carries. */
export interface End {
  /** Pages of the image. */
  readonly imagePages: number;
  /** Pages sent with their bytes, every round and the post-copy included (a page sent twice counts twice). */
  readonly dataPages: number;
  /** Pages sent as zero (run markers), every round included. */
  readonly zeroPages: number;
  /** Pre-copy rounds. */
  readonly rounds: number;
  /** CRC-32C of the image's `imagePages` page CRCs (u32, little-endian, in page order). */
  readonly digest: number;
}

/** An `END_` payload. */
export function encodeEnd(e: End): Uint8Array {
  const bytes = new Uint8Array(20);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, e.imagePages, true);
  view.setUint32(4, e.dataPages, true);
  view.setUint32(8, e.zeroPages, true);
  view.setUint32(12, e.rounds, true);
  view.setUint32(16, e.digest, true);
  return bytes;
}

/** Decodes an `END_` payload. */
export function decodeEnd(bytes: Uint8Array): End {
  if (bytes.length < 20) throw new WireError("protocol", `an END_ of ${bytes.length} bytes (20)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, 20);
  return {
    imagePages: view.getUint32(0, true),
    dataPages: view.getUint32(4, true),
    zeroPages: view.getUint32(8, true),
    rounds: view.getUint32(12, true),
    digest: view.getUint32(16, true),
  };
}

/** A u32 payload (`CONF`, `COMP`: the destination's digest, or 0 before it has one). */
export function encodeU32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value, true);
  return bytes;
}

/** Decodes a u32 payload. */
export function decodeU32(bytes: Uint8Array, what: string): number {
  if (bytes.length < 4) throw new WireError("protocol", `a ${what} of ${bytes.length} bytes (4)`);
  return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
}

// --- PAGE ---

/** The image digest: the CRC-32C of the page CRCs, little-endian u32 in page order. */
export function imageDigest(arena: CrcArena, crcs: Uint32Array, at: number): number {
  let crc = 0;
  const chunk = Math.floor(arena.size / 4);
  for (let i = 0; i < crcs.length; i += chunk) {
    const part = crcs.subarray(i, Math.min(crcs.length, i + chunk));
    new Uint32Array(arena.bytes.buffer, at, part.length).set(part);
    crc = arena.crc(at, part.length * 4, crc);
  }
  return crc;
}

/** A decoded `PAGE` payload: where its pages are and what each CRC is. */
export interface Batch {
  /** The round it belongs to ({@linkcode NONE}: a post-copy page). */
  readonly round: number;
  /** Pages in the batch. */
  readonly count: number;
  /** Page numbers, ascending. */
  readonly pages: Uint32Array;
  /** The CRC of each (as carried). */
  readonly crcs: Uint32Array;
  /** Where the first page's bytes are in the arena (the others follow, `pageSize` apart). */
  readonly dataAt: number;
}

/** The CRCs `decodeBatch` computes, to check them against those carried (grown as needed, never shrunk). */
let computedCrcs = new Uint32Array(256);

/**
 * Decodes a `PAGE` payload at `at` (`length` bytes) of the arena, checks it against
 * the image's `imagePages` and checks every page's CRC-32C (a mismatch is a
 * `corrupt` error naming the page). `pages` and `crcs` are reused when large enough.
 */
export function decodeBatch(
  arena: CrcArena,
  at: number,
  length: number,
  pageSize: number,
  imagePages: number,
  into?: { pages: Uint32Array; crcs: Uint32Array },
): Batch {
  const view = new DataView(arena.bytes.buffer, at, length);
  const round = view.getUint32(0, true);
  const runs = view.getUint32(4, true);
  let count = 0;
  for (let r = 0; r < runs; r++) count += view.getUint32(12 + 8 * r, true);
  const dataAt = at + 8 + 8 * runs + 4 * count;
  if (dataAt - at + count * pageSize !== length) {
    throw new WireError("protocol", `a PAGE frame of ${length} bytes does not hold its ${count} pages`);
  }
  const pages = into && into.pages.length >= count ? into.pages.subarray(0, count) : new Uint32Array(count);
  const crcs = into && into.crcs.length >= count ? into.crcs.subarray(0, count) : new Uint32Array(count);
  let k = 0;
  let end = 0;
  for (let r = 0; r < runs; r++) {
    const first = view.getUint32(8 + 8 * r, true);
    const n = view.getUint32(12 + 8 * r, true);
    if (n === 0 || first < end || first + n > imagePages) {
      throw new WireError("protocol", `PAGE: run ${first}+${n} is empty, out of order or outside the image`);
    }
    for (let i = 0; i < n; i++) pages[k++] = first + i;
    end = first + n;
  }
  const crcAt = 8 + 8 * runs;
  if (computedCrcs.length < count) computedCrcs = new Uint32Array(Math.max(count, 2 * computedCrcs.length));
  arena.pageCrcs(dataAt, count, pageSize, computedCrcs, 0);
  for (let i = 0; i < count; i++) {
    const carried = view.getUint32(crcAt + 4 * i, true);
    crcs[i] = carried;
    const computed = computedCrcs[i]!;
    if (computed !== carried) {
      throw new WireError(
        "corrupt",
        `page ${pages[i]} does not match its CRC-32C (carried 0x${hex(carried)}, computed 0x${hex(computed)})`,
        pages[i],
      );
    }
  }
  return { round, count, pages, crcs, dataAt };
}

/**
 * Builds one `PAGE` frame in place in a region of a `CrcArena`: pages are copied
 * into slots one by one (a page that turns out to be all zero is not kept and
 * counts as zero), each checksummed in its slot; `seal()` writes the directory
 * just before the first slot and the header before it, so that the frame is one
 * contiguous range to send.
 *
 * @example
 * ```ts
 * import { CrcArena } from "./_crc32c.ts";
 * import { BatchBuilder } from "./_wire.ts";
 * const arena = new CrcArena(1 << 20);
 * const batch = new BatchBuilder(arena, arena.base, 1 << 20, 4096);
 * const page = new Uint8Array(4096).fill(1);
 * batch.begin(0);
 * console.log(batch.add(5, page), batch.add(6, new Uint8Array(4096))); // true false
 * const frame = batch.seal(0);
 * console.log(frame.length); // 16 + 8 + 8 + 4 + 4096 = 4132
 * ```
 */
export class BatchBuilder {
  /** The most pages one frame holds. */
  readonly capacity: number;
  readonly #arena: CrcArena;
  readonly #slots: number;
  readonly #pageSize: number;
  readonly #pages: Uint32Array;
  readonly #crcs: Uint32Array;
  #count = 0;
  #round = 0;

  /** A builder over `size` bytes from `start` of the arena's bytes, for pages of `pageSize`. */
  constructor(arena: CrcArena, start: number, size: number, pageSize: number) {
    this.#arena = arena;
    this.#pageSize = pageSize;
    // Each page: its bytes, its CRC and at worst a run entry of its own.
    this.capacity = Math.max(1, Math.floor((size - HEADER_BYTES - 8) / (pageSize + 12)));
    const directory = HEADER_BYTES + 8 + 12 * this.capacity;
    this.#slots = start + Math.ceil(directory / 64) * 64;
    if (this.#slots + this.capacity * pageSize > start + size) throw new RangeError("BatchBuilder: region too small");
    this.#pages = new Uint32Array(this.capacity);
    this.#crcs = new Uint32Array(this.capacity);
  }

  /** Pages in the frame so far. */
  get count(): number {
    return this.#count;
  }

  /** Whether the frame is full. */
  get full(): boolean {
    return this.#count === this.capacity;
  }

  /** The page numbers added so far (valid until the next `begin`). */
  get pages(): Uint32Array {
    return this.#pages.subarray(0, this.#count);
  }

  /** The CRCs of the pages added so far. */
  get crcs(): Uint32Array {
    return this.#crcs.subarray(0, this.#count);
  }

  /** Starts a frame of round `round` ({@linkcode NONE} for post-copy pages). */
  begin(round: number): void {
    this.#count = 0;
    this.#round = round;
  }

  /**
   * Copies `bytes` (at most one page; shorter is zero-padded) as page `page`, after
   * the pages added so far (ascending). Returns `false`, keeping nothing, when the
   * page is all zero (unless `keepZero`). The frame must not be full.
   */
  add(page: number, bytes: Uint8Array, keepZero = false): boolean {
    const P = this.#pageSize;
    const slot = this.#slots + this.#count * P;
    const all = this.#arena.bytes;
    all.set(bytes, slot);
    if (bytes.length < P) all.fill(0, slot + bytes.length, slot + P);
    if (!keepZero && this.#arena.zero(slot, P)) return false;
    this.#pages[this.#count] = page;
    this.#crcs[this.#count] = this.#arena.crc(slot, P);
    this.#count++;
    return true;
  }

  /**
   * Adds pages `first`, `first + 1`… of `image` (page `p` is bytes `[p·P, (p+1)·P)`,
   * the last one zero-padded), as many of `count` as the frame has room for: one copy
   * for the whole run, then each page checked for zeros and checksummed in its slot.
   * An all-zero page is not kept: `zero(page)` is called for it. Returns how many
   * pages of the run it took (kept or zero).
   *
   * @example
   * ```ts
   * import { CrcArena } from "./_crc32c.ts";
   * import { BatchBuilder } from "./_wire.ts";
   * const arena = new CrcArena(1 << 20);
   * const batch = new BatchBuilder(arena, arena.base, 1 << 20, 4096);
   * const image = new Uint8Array(4 * 4096).fill(1, 0, 4096).fill(2, 2 * 4096);
   * batch.begin(0);
   * const zeros: number[] = [];
   * console.log(batch.addRun(0, 4, image, (p) => zeros.push(p)), batch.pages, zeros); // 4 Uint32Array(3) [ 0, 2, 3 ] [ 1 ]
   * ```
   */
  addRun(first: number, count: number, image: Uint8Array, zero: (page: number) => void): number {
    const P = this.#pageSize;
    const take = Math.min(count, this.capacity - this.#count);
    const all = this.#arena.bytes;
    let slot = this.#slots + this.#count * P;
    const from = first * P;
    const end = Math.min(image.length, (first + take) * P);
    all.set(image.subarray(from, end), slot);
    if (end - from < take * P) all.fill(0, slot + (end - from), slot + take * P);
    let read = slot;
    const kept = this.#count;
    const firstSlot = slot;
    for (let i = 0; i < take; i++, read += P) {
      if (this.#arena.zero(read, P)) {
        zero(first + i);
        continue;
      }
      if (read !== slot) all.copyWithin(slot, read, read + P);
      this.#pages[this.#count] = first + i;
      this.#count++;
      slot += P;
    }
    // The pages kept lie in consecutive slots: checksummed together (sixteen side by side).
    this.#arena.pageCrcs(firstSlot, this.#count - kept, P, this.#crcs, kept);
    return take;
  }

  /** Writes the directory and the header (sequence `sequence`) and the CRC: the frame's place in the arena. */
  seal(sequence: number): { at: number; length: number } {
    const P = this.#pageSize;
    const n = this.#count;
    const pages = this.#pages;
    let runs = 0;
    for (let i = 0; i < n; i++) if (i === 0 || pages[i] !== pages[i - 1]! + 1) runs++;
    const directory = 8 + 8 * runs + 4 * n;
    const payloadAt = this.#slots - directory;
    const at = payloadAt - HEADER_BYTES;
    const bytes = this.#arena.bytes;
    const view = new DataView(bytes.buffer, payloadAt, directory);
    view.setUint32(0, this.#round, true);
    view.setUint32(4, runs, true);
    let r = 0;
    for (let i = 0; i < n;) {
      let end = i + 1;
      while (end < n && pages[end] === pages[end - 1]! + 1) end++;
      view.setUint32(8 + 8 * r, pages[i]!, true);
      view.setUint32(12 + 8 * r, end - i, true);
      r++;
      i = end;
    }
    const crcAt = 8 + 8 * runs;
    for (let i = 0; i < n; i++) view.setUint32(crcAt + 4 * i, this.#crcs[i]!, true);
    const length = directory + n * P;
    writeHeader(bytes, at, TAG.PAGE, length, sequence);
    sealFrame(this.#arena, at);
    return { at, length: HEADER_BYTES + length };
  }
}
