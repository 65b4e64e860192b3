/**
 * The checkpoint file format, version 1 (described for humans in
 * `docs/checkpoint-format.md`): a 64-byte header, page slots, a page table and an
 * 8-byte trailer, little-endian, every part checksummed with CRC-32C. This module
 * encodes and decodes the header and the table and checks everything that can be
 * checked without reading page data; `checkpoint.ts` writes files,
 * `reader.ts` reads chains of them.
 *
 * ```text
 * offset        size     field
 * 0             8        magic "UFFDCKPT"
 * 8             2        version (1)
 * 10            2        kind: 1 base, 2 delta
 * 12            4        page size P
 * 16            8        image length L (bytes)
 * 24            4        head: offset of the image's first byte in its first page
 * 28            4        image pages N = ceil((head + L) / P)
 * 32            4        sequence: 0 for the base, k for the k-th delta
 * 36            4        entries n
 * 40            8        chain id (random, shared by every file of a chain)
 * 48            8        table offset T = P × (1 + data pages)
 * 56            4        parent CRC: the previous file's header CRC (0 for the base)
 * 60            4        header CRC: CRC-32C of bytes 0..59
 * 64 .. P                zero padding
 * P .. T                 page slots, P bytes each, in table order
 * T             16 × n   table: page u32, CRC-32C of the slot u32, slot offset u64 (0: a zero page, no slot)
 * T + 16n       4        CRC-32C of the table
 * T + 16n + 4   4        end magic "CKPT"
 * ```
 *
 * @example
 * ```ts
 * import { decodeCheckpointHeader, encodeCheckpointHeader } from "./_format.ts";
 * const bytes = encodeCheckpointHeader({
 *   kind: "base", pageSize: 4096, imageLength: 8192, head: 0, imagePages: 2, sequence: 0,
 *   entries: 1, chainId: 7n, tableOffset: 8192, parentCrc: 0,
 * });
 * console.log(decodeCheckpointHeader(bytes).imagePages); // 2
 * ```
 *
 * @module
 */

import { crc32c } from "./crc32c.ts";

/** `"UFFDCKPT"`: the first 8 bytes of every checkpoint file. */
export const CHECKPOINT_MAGIC = "UFFDCKPT";
/** The trailer's last 4 bytes. */
export const CHECKPOINT_END_MAGIC = "CKPT";
/** The format version this library writes and reads. */
export const CHECKPOINT_VERSION = 1;
/** Size of the header. */
export const CHECKPOINT_HEADER_SIZE = 64;
/** Size of one page-table entry. */
export const CHECKPOINT_ENTRY_SIZE = 16;
/** Size of the trailer. */
export const CHECKPOINT_TRAILER_SIZE = 8;

/** A base image or a delta. */
export type CheckpointKind = "base" | "delta";

/** The fields of a checkpoint header (everything but the magic, the version and the header CRC). */
export interface CheckpointHeaderFields {
  /** Base image (sequence 0) or delta. */
  kind: CheckpointKind;
  /** Page size the image is cut into. */
  pageSize: number;
  /** Length of the image in bytes. */
  imageLength: number;
  /** Offset of the image's first byte inside its first page. */
  head: number;
  /** Pages covering the image: `ceil((head + imageLength) / pageSize)`. */
  imagePages: number;
  /** 0 for the base, k for the k-th delta. */
  sequence: number;
  /** Number of page-table entries. */
  entries: number;
  /** Random id shared by every file of a chain. */
  chainId: bigint;
  /** Where the page table starts. */
  tableOffset: number;
  /** Header CRC of the previous file of the chain (0 for the base). */
  parentCrc: number;
}

/** A decoded header, with its own CRC. */
export interface CheckpointHeader extends CheckpointHeaderFields {
  /** Format version. */
  version: number;
  /** CRC-32C of the header's first 60 bytes (the next file's `parentCrc`). */
  headerCrc: number;
}

const KINDS: Record<number, CheckpointKind> = { 1: "base", 2: "delta" };
const MAGIC = new TextEncoder().encode(CHECKPOINT_MAGIC);
const END_MAGIC = new TextEncoder().encode(CHECKPOINT_END_MAGIC);

/**
 * Encodes a header (64 bytes), computing its CRC.
 *
 * @example
 * ```ts
 * import { encodeCheckpointHeader } from "./_format.ts";
 * const h = encodeCheckpointHeader({
 *   kind: "delta", pageSize: 4096, imageLength: 4096, head: 0, imagePages: 1, sequence: 1,
 *   entries: 0, chainId: 1n, tableOffset: 4096, parentCrc: 0x1234,
 * });
 * console.log(new TextDecoder().decode(h.subarray(0, 8)), h.length); // UFFDCKPT 64
 * ```
 */
export function encodeCheckpointHeader(fields: CheckpointHeaderFields): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(CHECKPOINT_HEADER_SIZE);
  const v = new DataView(bytes.buffer);
  bytes.set(MAGIC, 0);
  v.setUint16(8, CHECKPOINT_VERSION, true);
  v.setUint16(10, fields.kind === "base" ? 1 : 2, true);
  v.setUint32(12, fields.pageSize, true);
  v.setBigUint64(16, BigInt(fields.imageLength), true);
  v.setUint32(24, fields.head, true);
  v.setUint32(28, fields.imagePages, true);
  v.setUint32(32, fields.sequence, true);
  v.setUint32(36, fields.entries, true);
  v.setBigUint64(40, fields.chainId, true);
  v.setBigUint64(48, BigInt(fields.tableOffset), true);
  v.setUint32(56, fields.parentCrc >>> 0, true);
  v.setUint32(60, crc32c(bytes.subarray(0, 60)), true);
  return bytes;
}

/**
 * Decodes and checks a header: magic, version, kind, CRC and the consistency of its
 * sizes. Throws an `Error` naming the first problem (the caller adds the file).
 *
 * @example
 * ```ts
 * import { decodeCheckpointHeader } from "./_format.ts";
 * try { decodeCheckpointHeader(new Uint8Array(64)); } catch (e) { console.log((e as Error).message); }
 * // not a checkpoint file (bad magic)
 * ```
 */
export function decodeCheckpointHeader(bytes: Uint8Array): CheckpointHeader {
  if (bytes.length < CHECKPOINT_HEADER_SIZE) throw new Error(`too short for a header (${bytes.length} bytes)`);
  for (let i = 0; i < 8; i++) if (bytes[i] !== MAGIC[i]) throw new Error("not a checkpoint file (bad magic)");
  const v = new DataView(bytes.buffer, bytes.byteOffset, CHECKPOINT_HEADER_SIZE);
  const version = v.getUint16(8, true);
  if (version !== CHECKPOINT_VERSION) throw new Error(`format version ${version}; this library reads version 1`);
  const stored = v.getUint32(60, true);
  const computed = crc32c(bytes.subarray(0, 60));
  if (stored !== computed) {
    throw new Error(`header checksum mismatch (stored ${hex(stored)}, computed ${hex(computed)})`);
  }
  const kind = KINDS[v.getUint16(10, true)];
  if (kind === undefined) throw new Error(`unknown kind ${v.getUint16(10, true)}`);
  const header: CheckpointHeader = {
    version,
    kind,
    pageSize: v.getUint32(12, true),
    imageLength: safe(v.getBigUint64(16, true), "image length"),
    head: v.getUint32(24, true),
    imagePages: v.getUint32(28, true),
    sequence: v.getUint32(32, true),
    entries: v.getUint32(36, true),
    chainId: v.getBigUint64(40, true),
    tableOffset: safe(v.getBigUint64(48, true), "table offset"),
    parentCrc: v.getUint32(56, true),
    headerCrc: stored,
  };
  const P = header.pageSize;
  if (P < 1024 || (P & (P - 1)) !== 0) throw new Error(`page size ${P} is not a power of two of at least 1024`);
  if (header.head >= P) throw new Error(`head ${header.head} is not inside a page`);
  if (header.imagePages !== Math.ceil((header.head + header.imageLength) / P)) {
    throw new Error(`image pages ${header.imagePages} do not match the image length ${header.imageLength}`);
  }
  if ((kind === "base") !== (header.sequence === 0)) throw new Error(`a ${kind} with sequence ${header.sequence}`);
  if (header.entries > header.imagePages) throw new Error(`${header.entries} entries for ${header.imagePages} pages`);
  if (header.tableOffset < P || header.tableOffset % P !== 0) throw new Error(`table offset ${header.tableOffset}`);
  if ((header.tableOffset - P) / P > header.entries) throw new Error("more page slots than entries");
  return header;
}

/**
 * The exact length of a file with this header: slots, table and trailer.
 *
 * @example
 * ```ts
 * import { checkpointFileLength } from "./_format.ts";
 * console.log(checkpointFileLength({
 *   kind: "base", pageSize: 4096, imageLength: 8192, head: 0, imagePages: 2, sequence: 0,
 *   entries: 2, chainId: 1n, tableOffset: 3 * 4096, parentCrc: 0,
 * })); // 12328
 * ```
 */
export function checkpointFileLength(header: CheckpointHeaderFields): number {
  return header.tableOffset + header.entries * CHECKPOINT_ENTRY_SIZE + CHECKPOINT_TRAILER_SIZE;
}

/** A decoded page table: parallel arrays, one element per entry. */
export interface CheckpointTable {
  /** Page index of each entry, ascending. */
  pages: Uint32Array;
  /** CRC-32C of each entry's slot (of a zero page for zero entries). */
  crcs: Uint32Array;
  /** Slot offset of each entry in the file, 0 for a zero page. */
  offsets: Float64Array;
}

/**
 * Encodes a page table and its trailer.
 *
 * @example
 * ```ts
 * import { decodeCheckpointTable, encodeCheckpointTable } from "./_format.ts";
 * const bytes = encodeCheckpointTable({
 *   pages: new Uint32Array([3]), crcs: new Uint32Array([0xabc]), offsets: new Float64Array([4096]),
 * });
 * console.log(decodeCheckpointTable(bytes, 1, 4096, 8192, 4).pages[0]); // 3
 * ```
 */
export function encodeCheckpointTable(table: CheckpointTable): Uint8Array<ArrayBuffer> {
  const n = table.pages.length;
  const bytes = new Uint8Array(n * CHECKPOINT_ENTRY_SIZE + CHECKPOINT_TRAILER_SIZE);
  const v = new DataView(bytes.buffer);
  for (let i = 0; i < n; i++) {
    v.setUint32(i * 16, table.pages[i]!, true);
    v.setUint32(i * 16 + 4, table.crcs[i]!, true);
    v.setBigUint64(i * 16 + 8, BigInt(table.offsets[i]!), true);
  }
  v.setUint32(n * 16, crc32c(bytes.subarray(0, n * 16)), true);
  bytes.set(END_MAGIC, n * 16 + 4);
  return bytes;
}

/**
 * Decodes and checks a page table with its trailer: the CRC, the end magic, pages
 * ascending and below `imagePages`, and slots laid out one after the other from
 * `pageSize` up to `tableOffset` in table order. Throws an `Error` naming the problem.
 *
 * @example
 * ```ts
 * import { decodeCheckpointTable } from "./_format.ts";
 * try { decodeCheckpointTable(new Uint8Array(8), 0, 4096, 4096, 1); } catch (e) { console.log((e as Error).message); }
 * // page table checksum mismatch ...
 * ```
 */
export function decodeCheckpointTable(
  bytes: Uint8Array,
  entries: number,
  pageSize: number,
  tableOffset: number,
  imagePages: number,
): CheckpointTable {
  const size = entries * CHECKPOINT_ENTRY_SIZE;
  if (bytes.length !== size + CHECKPOINT_TRAILER_SIZE) throw new Error("page table has the wrong size");
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const stored = v.getUint32(size, true);
  const computed = crc32c(bytes.subarray(0, size));
  if (stored !== computed) {
    throw new Error(`page table checksum mismatch (stored ${hex(stored)}, computed ${hex(computed)})`);
  }
  for (let i = 0; i < 4; i++) if (bytes[size + 4 + i] !== END_MAGIC[i]) throw new Error("bad end magic");
  const pages = new Uint32Array(entries);
  const crcs = new Uint32Array(entries);
  const offsets = new Float64Array(entries);
  let nextSlot = pageSize;
  for (let i = 0; i < entries; i++) {
    const page = v.getUint32(i * 16, true);
    if (page >= imagePages) throw new Error(`entry ${i}: page ${page} is outside the image (${imagePages} pages)`);
    if (i > 0 && page <= pages[i - 1]!) throw new Error(`entry ${i}: pages are not in ascending order`);
    const offset = safe(v.getBigUint64(i * 16 + 8, true), "slot offset");
    if (offset !== 0) {
      if (offset !== nextSlot) throw new Error(`entry ${i}: slot at ${offset}, expected ${nextSlot}`);
      nextSlot += pageSize;
    }
    pages[i] = page;
    crcs[i] = v.getUint32(i * 16 + 4, true);
    offsets[i] = offset;
  }
  if (nextSlot !== tableOffset) throw new Error(`the slots end at ${nextSlot}, the table starts at ${tableOffset}`);
  return { pages, crcs, offsets };
}

function safe(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${what} ${value} is too large`);
  return Number(value);
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, "0")}`;
}
