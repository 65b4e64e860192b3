/**
 * CRC-32C (the checkpoint format's checksum, `checkpoint/crc32c.ts`) in a small
 * hand-assembled WebAssembly module. Whole 4 KiB blocks go through four lanes of
 * 1 KiB side by side (slicing-by-8 in each, four independent dependency chains),
 * joined by a zero-shift table: about 2.9 GB/s here. The rest goes 16 bytes per
 * step (slicing-by-16, about 2.1 GB/s), against 1.4–1.6 GB/s for the TypeScript
 * slicing-by-8; this matters when every byte of a migration is checksummed on both
 * ends. Pages are checksummed sixteen at a time where there are sixteen
 * ({@linkcode CrcArena.pageCrcs}): one page per byte lane of 128-bit SIMD vectors,
 * a byte step of all sixteen being eight swizzles of nibble tables (`crc16`):
 * about 4.8 GB/s here against 2.85 for the same pages one by one. The buffers it checksums live in its own memory ({@linkcode CrcArena}): the
 * migration stages pages there, checksums them in place, and sends or receives
 * them by address. Also a zero check (32 bytes per step) for the pages a round can
 * send as a zero marker instead of bytes.
 *
 * ```wat
 * (func $crc (param $p i32) (param $n i32) (param $c i32) (result i32)  ;; CRC-32C of [p, p+n), continuing c
 *   ;; c = ~c; while 4096 bytes remain: lanes s0 = c, s1 = s2 = s3 = 0 over [p + 1024·i, p + 1024·(i+1)),
 *   ;;   8 bytes per lane per step: s = T7[b0^s0] ^ … ^ T4[b3^s3] ^ T3[b4] ^ … ^ T0[b7];
 *   ;;   then c = Z(Z(Z(s0) ^ s1) ^ s2) ^ s3, Z(s) = Z0[s0] ^ Z1[s1] ^ Z2[s2] ^ Z3[s3] (1 KiB of zeros fed in);
 *   ;; then 16 bytes per step: c = T15[b0^c0] ^ T14[b1^c1] ^ T13[b2^c2] ^ T12[b3^c3] ^ T11[b4] ^ … ^ T0[b15]
 *   ;; (T_k at k·1024: 16 tables of 256 words; Z_b at 16384 + b·1024), then byte by byte:
 *   ;; c = T0[(c ^ b) & 255] ^ (c >> 8); ~c)
 * (func $zero (param $p i32) (param $n i32) (result i32)                ;; 1 when [p, p+n) is all zero (n % 32 = 0)
 * (func $crc16 (param $p i32) (param $stride i32) (param $n i32)         ;; CRC-32C of [p + l·stride, +n), l < 16
 *   ;; lanes of i8x16: per 16 columns, 16 loads transposed; per column x = c0 ^ b, lo = x & 15, hi = x >> 4 & 15,
 *   ;; t_k = swizzle(L_k, lo) ^ swizzle(H_k, hi); c0 = c1 ^ t0, c1 = c2 ^ t1, c2 = c3 ^ t2, c3 = t3; planes out)
 * ```
 *
 * @example
 * ```ts
 * import { CrcArena } from "./_crc32c.ts";
 * const arena = new CrcArena(4096);
 * const text = new TextEncoder().encode("123456789");
 * arena.bytes.set(text, arena.base);
 * console.log(arena.crc(arena.base, text.length).toString(16)); // e3069283
 * console.log(arena.zero(arena.base + 4096 - 32, 32)); // true
 * ```
 *
 * @module
 */

/** Unsigned LEB128. */
function leb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 (`i32.const`). */
function sleb(n: number): number[] {
  n |= 0;
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

const section = (id: number, content: number[]) => [id, ...leb(content.length), ...content];
const name = (text: string) => [...leb(text.length), ...new TextEncoder().encode(text)];

/** Bytes of the 16 lookup tables at the start of the module's memory. */
const TABLE_BYTES = 16 * 1024;
/** Lanes of the block loop (four chains hide the table loads' latency; eight are no faster here). */
const LANES = 4;
/** Words each lane takes per step: slicing-by-8 (by-16 is no faster with four lanes). */
const LANE_WORDS = 2;
/** The bytes of one block of the lanes loop. */
const LANE_BLOCK = 4096;
/** Bytes one lane covers per block. */
const LANE = LANE_BLOCK / LANES;
/** Where the 4 tables of the zero shift start (after the 16): `Z_b[v]` = the state `v << 8b` after 1 KiB of zeros. */
const ZERO_TABLES = TABLE_BYTES;

/** Where the 8 nibble tables of `crc16` start (after the zero-shift tables): `L_k` then `H_k`, 16 bytes each. */
const NIBBLE_TABLES = ZERO_TABLES + 4096;
/** Where `crc16` leaves its four state planes (64 bytes). */
const PLANES = NIBBLE_TABLES + 128;
/** Buffers `crc16` checksums side by side, one per byte lane of a vector. */
const SIDE_BY_SIDE = 16;

/**
 * `crc16(p, stride, n)`: the CRC-32C of 16 buffers of `n` bytes (`n % 16 = 0`) at
 * `p + l·stride`, side by side in the 16 byte lanes of 128-bit vectors. The state of
 * lane `l` is four byte planes `c0…c3` (byte `k` of its CRC in lane `l` of `c_k`);
 * one byte step of every lane at once is `x = c0 ^ b; t = T[x]` with `T[x] =
 * T[x & 15] ^ T[x & 0xf0]` (the table is linear), each byte of `T` looked up with
 * a swizzle of a 16-entry nibble table, then `c0 = c1 ^ t0, c1 = c2 ^ t1, c2 = c3 ^
 * t2, c3 = t3` (the `>> 8`). The bytes of column `i` of the 16 buffers are gathered
 * into one vector by a 16 × 16 byte transpose of 16 loads (four rounds of
 * unpacks). The planes are left at {@linkcode PLANES}, inverted (the final XOR).
 * `swizzle` is the opcode (relaxed or not).
 */
function crc16Body(swizzle: number[]): number[] {
  const I32 = 0x7f, V128 = 0x7b;
  const get = (i: number) => [0x20, i];
  const set = (i: number) => [0x21, i];
  const k = (n: number) => [0x41, ...sleb(n)];
  const simd = (op: number) => [0xfd, ...leb(op)];
  const vload = (offset: number) => [...simd(0x00), 0, ...leb(offset)];
  const vstore = (offset: number) => [...simd(0x0b), 0, ...leb(offset)];
  const splat = (byte: number) => [...simd(0x0c), ...new Array(16).fill(byte)];
  const [XOR, AND] = [simd(0x51), simd(0x4e)];
  const [P, STRIDE, N, OFF, Q] = [0, 1, 2, 3, 4];
  const C = [5, 6, 7, 8], L = [9, 10, 11, 12], H = [13, 14, 15, 16];
  const [M, X, LO, HI] = [17, 18, 19, 20];
  const A = Array.from({ length: 16 }, (_, i) => 21 + i);
  const B = Array.from({ length: 16 }, (_, i) => 37 + i);
  const body: number[] = [2, 2, I32, 48, V128];
  for (let j = 0; j < 4; j++) body.push(...splat(0xff), ...set(C[j]!));
  for (let j = 0; j < 4; j++) body.push(...k(0), ...vload(NIBBLE_TABLES + 16 * j), ...set(L[j]!));
  for (let j = 0; j < 4; j++) body.push(...k(0), ...vload(NIBBLE_TABLES + 64 + 16 * j), ...set(H[j]!));
  body.push(...splat(0x0f), ...set(M), ...k(0), ...set(OFF));
  body.push(0x02, 0x40, 0x03, 0x40);
  body.push(...get(OFF), ...get(N), 0x4f, /* i32.ge_u */ 0x0d, 1);
  body.push(...get(P), ...get(OFF), 0x6a, ...set(Q));
  for (let l = 0; l < 16; l++) {
    body.push(...get(Q));
    if (l > 0) body.push(...get(STRIDE), ...k(l), 0x6c, /* i32.mul */ 0x6a);
    body.push(...vload(0), ...set(A[l]!));
  }
  // The transpose: unpacks of width 1, 2, 4, 8 bytes of vectors d = 1, 2, 4, 8 apart (checked by the tests: column
  // i of the 16 buffers ends in vector i, buffer l in lane l).
  let from = A, to = B;
  for (let stage = 0; stage < 4; stage++) {
    const w = 1 << stage;
    let o = 0;
    for (let a = 0; a < 16; a++) {
      if ((a & w) !== 0) continue;
      for (const high of [0, 8]) {
        const lanes: number[] = [];
        for (let e = 0; e < 8 / w; e++) {
          for (let j = 0; j < w; j++) lanes.push(high + e * w + j);
          for (let j = 0; j < w; j++) lanes.push(16 + high + e * w + j);
        }
        body.push(...get(from[a]!), ...get(from[a + w]!), ...simd(0x0d), ...lanes, ...set(to[o++]!));
      }
    }
    [from, to] = [to, from];
  }
  // x = c0 ^ b is carried from step to step instead of c0 (c0' ^ b' = (c1 ^ b') ^ t0, the first XOR off the chain
  // from x to x': four instructions long).
  body.push(...get(C[0]!), ...get(from[0]!), ...XOR, ...set(X));
  for (let i = 0; i < 16; i++) {
    body.push(...get(X), ...get(M), ...AND, ...set(LO));
    // The high nibbles: a 16-bit shift (one instruction; the byte shift is emulated), masked.
    body.push(...get(X), ...k(4), ...simd(0x8d), /* i16x8.shr_u */ ...get(M), ...AND, ...set(HI));
    const last = i === 15;
    body.push(...get(C[1]!));
    if (!last) body.push(...get(from[i + 1]!), ...XOR);
    body.push(...get(L[0]!), ...get(LO), ...swizzle, ...XOR, ...get(H[0]!), ...get(HI), ...swizzle, ...XOR);
    body.push(...set(last ? C[0]! : X));
    for (let j = 1; j < 4; j++) {
      body.push(...get(L[j]!), ...get(LO), ...swizzle, ...get(H[j]!), ...get(HI), ...swizzle, ...XOR);
      if (j < 3) body.push(...get(C[j + 1]!), ...XOR);
      body.push(...set(C[j]!));
    }
  }
  body.push(...get(OFF), ...k(16), 0x6a, ...set(OFF), 0x0c, 0, 0x0b, 0x0b);
  for (let j = 0; j < 4; j++) body.push(...k(0), ...get(C[j]!), ...splat(0xff), ...XOR, ...vstore(PLANES + 16 * j));
  body.push(0x0b);
  return body;
}

/** The module: `crc(p, n, c) -> c'`, `zero(p, n) -> 0/1` and `crc16(p, stride, n)`, over an imported memory `e.m`. */
function moduleBytes(swizzle: number[]): Uint8Array<ArrayBuffer> {
  const I32 = 0x7f, I64 = 0x7e;
  const get = (i: number) => [0x20, i];
  const set = (i: number) => [0x21, i];
  const k = (n: number) => [0x41, ...sleb(n)];
  const load = (offset: number) => [0x28, 2, ...leb(offset)];
  const [XOR, AND, SHR_U, SHL, ADD, GE_U, LT_U] = [0x73, 0x71, 0x76, 0x74, 0x6a, 0x4f, 0x49];
  // crc: params p=0 n=1 c=2; locals end=3, w0..w3 = 4..7
  const [P, N, C, END] = [0, 1, 2, 3];
  const W = [4, 5, 6, 7];
  // locals: end=3, w0..w3=4..7 (the 16-byte loop's words, then a lane step's), lane states 8…, stop
  const S = [C, ...Array.from({ length: LANES - 1 }, (_, i) => 8 + i)];
  const STOP = 8 + LANES - 1;
  const crc: number[] = [1, STOP - 2, I32];
  crc.push(...get(P), ...get(N), ADD, ...set(END));
  crc.push(...get(C), ...k(-1), XOR, ...set(C));
  // Whole blocks while p + LANE_BLOCK <= end: LANES lanes of LANE bytes side by side, 4·LANE_WORDS bytes per lane
  // per step (independent dependency chains instead of one), then the lanes joined by the zero-shift tables.
  // The byte `b` of word `w` as an offset into a table of words: 2 operations (`(w << 2 | w >> …) & 1020`).
  const scaled = (w: number, b: number) =>
    b === 0
      ? [...get(w), ...k(2), SHL, ...k(1020), AND]
      : b === 3
      ? [...get(w), ...k(22), SHR_U, ...k(1020), AND]
      : [...get(w), ...k(8 * b - 2), SHR_U, ...k(1020), AND];
  const STEP = 4 * LANE_WORDS;
  crc.push(0x02, 0x40, 0x03, 0x40);
  crc.push(...get(END), ...get(P), 0x6b, ...k(LANE_BLOCK), LT_U, 0x0d, 1);
  for (const s of S.slice(1)) crc.push(...k(0), ...set(s));
  crc.push(...get(P), ...k(LANE), ADD, ...set(STOP));
  crc.push(0x03, 0x40);
  for (let lane = 0; lane < LANES; lane++) {
    for (let j = 0; j < LANE_WORDS; j++) {
      crc.push(...get(P), ...load(lane * LANE + 4 * j));
      if (j === 0) crc.push(...get(S[lane]!), XOR);
      crc.push(...set(W[j]!));
    }
    for (let i = 0; i < STEP; i++) {
      crc.push(...scaled(W[i >> 2]!, i & 3), ...load((STEP - 1 - i) * 1024));
      if (i > 0) crc.push(XOR);
    }
    crc.push(...set(S[lane]!));
  }
  crc.push(...get(P), ...k(STEP), ADD, ...set(P));
  crc.push(...get(P), ...get(STOP), LT_U, 0x0d, 0, 0x0b);
  // c = Z(…Z(Z(s0) ^ s1)… ) ^ s_last, Z being LANE zero bytes fed in (4 tables of 256 words at ZERO_TABLES).
  for (const s of S.slice(1)) {
    for (let b = 0; b < 4; b++) {
      crc.push(...scaled(C, b), ...load(ZERO_TABLES + b * 1024));
      if (b > 0) crc.push(XOR);
    }
    crc.push(...get(s), XOR, ...set(C));
  }
  crc.push(...get(P), ...k(LANE_BLOCK - LANE), ADD, ...set(P), 0x0c, 0, 0x0b, 0x0b);
  // 16 bytes per step while p + 16 <= end
  crc.push(0x02, 0x40, 0x03, 0x40);
  crc.push(...get(END), ...get(P), 0x6b, /* sub */ ...k(16), LT_U, 0x0d, 1);
  for (let j = 0; j < 4; j++) {
    crc.push(...get(P), ...load(4 * j));
    if (j === 0) crc.push(...get(C), XOR);
    crc.push(...set(W[j]!));
  }
  for (let i = 0; i < 16; i++) {
    crc.push(...scaled(W[i >> 2]!, i & 3), ...load((15 - i) * 1024));
    if (i > 0) crc.push(XOR);
  }
  crc.push(...set(C), ...get(P), ...k(16), ADD, ...set(P), 0x0c, 0, 0x0b, 0x0b);
  // the rest byte by byte
  crc.push(0x02, 0x40, 0x03, 0x40);
  crc.push(...get(P), ...get(END), GE_U, 0x0d, 1);
  crc.push(...get(C), ...get(P), 0x2d, 0, 0, /* i32.load8_u */ XOR, ...k(255), AND, ...k(2), SHL, ...load(0));
  crc.push(...get(C), ...k(8), SHR_U, XOR, ...set(C));
  crc.push(...get(P), ...k(1), ADD, ...set(P), 0x0c, 0, 0x0b, 0x0b);
  crc.push(...get(C), ...k(-1), XOR, 0x0b);
  // zero: params p=0 n=1; local end=2 (i32), acc=3 (i64)
  const i64load = (offset: number) => [0x29, 3, ...leb(offset)];
  const zero: number[] = [2, 1, I32, 1, I64];
  zero.push(...get(0), ...get(1), ADD, ...set(2));
  zero.push(0x02, 0x40, 0x03, 0x40);
  zero.push(...get(0), ...get(2), GE_U, 0x0d, 1);
  zero.push(...get(0), ...i64load(0), ...get(0), ...i64load(8), 0x84, ...get(0), ...i64load(16), 0x84);
  zero.push(...get(0), ...i64load(24), 0x84, 0x50, /* i64.eqz */ 0x45 /* i32.eqz */);
  zero.push(0x04, 0x40, ...k(0), 0x0f, 0x0b); // if nonzero: return 0
  zero.push(...get(0), ...k(32), ADD, ...set(0), 0x0c, 0, 0x0b, 0x0b);
  zero.push(...k(1), 0x0b);
  const crc16 = crc16Body(swizzle);
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, [3, 0x60, 3, I32, I32, I32, 1, I32, 0x60, 2, I32, I32, 1, I32, 0x60, 3, I32, I32, I32, 0]),
    ...section(2, [1, ...name("e"), ...name("m"), 0x02, 0x00, ...leb(1)]),
    ...section(3, [3, 0, 1, 2]),
    ...section(7, [3, ...name("crc"), 0x00, 0, ...name("zero"), 0x00, 1, ...name("crc16"), 0x00, 2]),
    ...section(10, [3, ...leb(crc.length), ...crc, ...leb(zero.length), ...zero, ...leb(crc16.length), ...crc16]),
  ]);
}

/** `i8x16.relaxed_swizzle` (the nibble indices are below 16, so it equals `i8x16.swizzle`), else `i8x16.swizzle`. */
const RELAXED_SWIZZLE = [0xfd, 0x80, 0x02];
const SWIZZLE = [0xfd, 0x0e];

/** The module compiled, with the relaxed swizzle where the runtime validates it. */
function compileModule(): WebAssembly.Module {
  const bytes = moduleBytes(RELAXED_SWIZZLE);
  return WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : new WebAssembly.Module(moduleBytes(SWIZZLE));
}

let compiled: WebAssembly.Module | undefined;

/** The CRC-32C of `P` zero bytes, by page size. */
const zeroPageCrcs = new Map<number, number>();

/**
 * A WebAssembly memory holding the CRC tables and `bytes` of buffer space from
 * {@linkcode base}, with the checksum and the zero check over it. The memory
 * never grows, so its address ({@linkcode address}) stays valid for `send`/`recv`.
 * One per thread that needs it (a Worker makes its own).
 *
 * @example
 * ```ts
 * import { CrcArena } from "./_crc32c.ts";
 * const arena = new CrcArena(8192);
 * arena.bytes.fill(7, arena.base, arena.base + 8192);
 * const out = new Uint32Array(2);
 * arena.pageCrcs(arena.base, 2, 4096, out, 0);
 * console.log(out[0] === out[1], arena.zero(arena.base, 4096)); // true false
 * ```
 */
export class CrcArena {
  /** The whole memory, tables included. */
  readonly bytes: Uint8Array;
  /** Where the buffer space starts (an offset into {@linkcode bytes}, page-aligned). */
  readonly base: number;
  /** Bytes of buffer space. */
  readonly size: number;
  /** The address of `bytes[0]` (for system calls). */
  readonly address: number;
  readonly #crc: (p: number, n: number, c: number) => number;
  readonly #zero: (p: number, n: number) => number;
  readonly #crc16: (p: number, stride: number, n: number) => void;
  readonly #planes: Uint8Array;
  // Kept: the memory must outlive its views.
  readonly #memory: WebAssembly.Memory;

  /** An arena with `size` bytes of buffer space after the tables. */
  constructor(size: number) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`CrcArena: bad size ${size}`);
    const base = 65536; // the tables, then page-aligned buffers
    const pages = Math.ceil((base + size) / 65536);
    this.#memory = new WebAssembly.Memory({ initial: pages, maximum: pages });
    compiled ??= compileModule();
    const exports = new WebAssembly.Instance(compiled, { e: { m: this.#memory } }).exports;
    this.#crc = exports.crc as (p: number, n: number, c: number) => number;
    this.#zero = exports.zero as (p: number, n: number) => number;
    this.#crc16 = exports.crc16 as (p: number, stride: number, n: number) => void;
    this.bytes = new Uint8Array(this.#memory.buffer);
    this.base = base;
    this.size = size;
    const table = new Uint32Array(this.#memory.buffer, 0, TABLE_BYTES / 4);
    for (let i = 0; i < 256; i++) {
      let c = i;
      for (let b = 0; b < 8; b++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
      table[i] = c >>> 0;
    }
    for (let i = 0; i < 256; i++) {
      for (let s = 1; s < 16; s++) {
        const prev = table[(s - 1) * 256 + i]!;
        table[s * 256 + i] = (prev >>> 8) ^ table[prev & 0xff]!;
      }
    }
    // The zero shift: linear in the state, so built from its value at each of the 32 single-bit states.
    const bit = new Uint32Array(32);
    for (let b = 0; b < 32; b++) {
      let c = (1 << b) >>> 0;
      for (let i = 0; i < LANE; i++) c = (table[c & 0xff]! ^ (c >>> 8)) >>> 0;
      bit[b] = c;
    }
    const zeros = new Uint32Array(this.#memory.buffer, ZERO_TABLES, 1024);
    for (let b = 0; b < 4; b++) {
      for (let v = 0; v < 256; v++) {
        let z = 0;
        for (let j = 0; j < 8; j++) if (v & (1 << j)) z ^= bit[8 * b + j]!;
        zeros[b * 256 + v] = z >>> 0;
      }
    }
    // crc16's nibble tables: byte k of T[n] (L_k) and of T[n << 4] (H_k), n = 0…15.
    const nibbles = new Uint8Array(this.#memory.buffer, NIBBLE_TABLES, 128);
    for (let b = 0; b < 4; b++) {
      for (let n = 0; n < 16; n++) {
        nibbles[16 * b + n] = table[n]! >>> (8 * b);
        nibbles[64 + 16 * b + n] = table[n << 4]! >>> (8 * b);
      }
    }
    this.#planes = new Uint8Array(this.#memory.buffer, PLANES, 64);
    const pointer = Deno.UnsafePointer.of(this.#memory.buffer);
    this.address = pointer === null ? 0 : Number(Deno.UnsafePointer.value(pointer));
  }

  /** The CRC-32C of `length` bytes at offset `at` of {@linkcode bytes}, continuing `crc` (default: a new one). */
  crc(at: number, length: number, crc = 0): number {
    return this.#crc(at, length, crc) >>> 0;
  }

  /** Whether `length` bytes (a multiple of 32) at offset `at` are all zero. */
  zero(at: number, length: number): boolean {
    return this.#zero(at, length) === 1;
  }

  /**
   * The CRC-32C of each of `count` pages of `pageSize` bytes from offset `at`, into
   * `out[from…]`: sixteen at a time side by side (SIMD), the rest one by one.
   */
  pageCrcs(at: number, count: number, pageSize: number, out: Uint32Array, from: number): void {
    let i = 0;
    if (pageSize % 16 === 0) {
      // Sixteen pages at a time side by side (the SIMD function), the rest one by one.
      const planes = this.#planes;
      for (; i + SIDE_BY_SIDE <= count; i += SIDE_BY_SIDE) {
        this.#crc16(at + i * pageSize, pageSize, pageSize);
        for (let l = 0; l < SIDE_BY_SIDE; l++) {
          out[from + i + l] = (planes[l]! | planes[16 + l]! << 8 | planes[32 + l]! << 16 | planes[48 + l]! << 24) >>> 0;
        }
      }
    }
    for (; i < count; i++) out[from + i] = this.#crc(at + i * pageSize, pageSize, 0) >>> 0;
  }
}

/**
 * The CRC-32C of a page of `pageSize` zero bytes (what a zero page's entry in the
 * image digest is).
 *
 * @example
 * ```ts
 * import { zeroPageCrc } from "./_crc32c.ts";
 * console.log(zeroPageCrc(4096) !== 0); // true
 * ```
 */
export function zeroPageCrc(pageSize: number): number {
  let crc = zeroPageCrcs.get(pageSize);
  if (crc === undefined) {
    const arena = new CrcArena(pageSize);
    crc = arena.crc(arena.base, pageSize);
    zeroPageCrcs.set(pageSize, crc);
  }
  return crc;
}
