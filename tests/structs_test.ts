/**
 * Every struct encoder and decoder against byte layouts written out by hand from
 * include/uapi/linux/userfaultfd.h and include/uapi/linux/fs.h.
 */

import assert from "node:assert/strict";
import * as s from "../ffi/_structs.ts";
import { ioctlNames } from "../kernel/names.ts";
import {
  IOCTLS,
  PAGEMAP_SCAN,
  UFFD_EVENT_FORK,
  UFFD_EVENT_PAGEFAULT,
  UFFD_EVENT_REMAP,
  UFFD_EVENT_REMOVE,
  UFFD_EVENT_UNMAP,
} from "../ffi/uapi.ts";

/** Little-endian bytes of u64 words, laid out by hand. */
function le64(...words: bigint[]): Uint8Array {
  const out = new Uint8Array(words.length * 8);
  words.forEach((w, i) => {
    let v = BigInt.asUintN(64, w);
    for (let b = 0; b < 8; b++) {
      out[i * 8 + b] = Number(v & 0xffn);
      v >>= 8n;
    }
  });
  return out;
}

Deno.test("struct sizes are the sizes encoded in the kernel's ioctl numbers", () => {
  const sizes: Record<string, number> = {
    REGISTER: s.SIZEOF_UFFDIO_REGISTER,
    UNREGISTER: s.SIZEOF_UFFDIO_RANGE,
    WAKE: s.SIZEOF_UFFDIO_RANGE,
    COPY: s.SIZEOF_UFFDIO_COPY,
    ZEROPAGE: s.SIZEOF_UFFDIO_ZEROPAGE,
    MOVE: s.SIZEOF_UFFDIO_MOVE,
    WRITEPROTECT: s.SIZEOF_UFFDIO_WRITEPROTECT,
    CONTINUE: s.SIZEOF_UFFDIO_CONTINUE,
    POISON: s.SIZEOF_UFFDIO_POISON,
    API: s.SIZEOF_UFFDIO_API,
  };
  for (const info of IOCTLS) {
    assert.equal(s.ioctlSize(info.request), sizes[info.name], info.name);
    assert.equal(Number((info.request >> 8n) & 0xffn), 0xaa, `${info.name} type byte`);
    assert.equal(Number(info.request & 0xffn), info.number, `${info.name} number`);
  }
  assert.equal(s.ioctlSize(PAGEMAP_SCAN), 96);
  assert.equal(Number((PAGEMAP_SCAN >> 8n) & 0xffn), "f".charCodeAt(0));
});

Deno.test("ioctls masks decode by ioctl number, not request value", () => {
  assert.deepEqual(ioctlNames(0x17cn), ["WAKE", "COPY", "ZEROPAGE", "MOVE", "WRITEPROTECT", "POISON"]);
  assert.deepEqual(ioctlNames((1n << 0x3fn) | 3n), ["REGISTER", "UNREGISTER", "API"]);
});

Deno.test("uffdio_api: api@0 features@8 ioctls@16", () => {
  const value = { api: 0xaan, features: 0x1ffffn, ioctls: 0x8000000000000003n };
  const bytes = le64(0xaan, 0x1ffffn, 0x8000000000000003n);
  assert.deepEqual(s.encodeUffdioApi(value), bytes);
  assert.deepEqual(s.decodeUffdioApi(bytes), value);
});

Deno.test("uffdio_range and uffdio_register: start@0 len@8 mode@16 ioctls@24", () => {
  assert.deepEqual(s.encodeUffdioRange({ start: 0x7f0000001000n, len: 0x2000n }), le64(0x7f0000001000n, 0x2000n));
  assert.deepEqual(s.decodeUffdioRange(le64(1n << 47n, 4096n)), { start: 1n << 47n, len: 4096n });
  const reg = { start: 0x1000n, len: 0x3000n, mode: 3n, ioctls: 0x17cn };
  assert.deepEqual(s.encodeUffdioRegister(reg), le64(0x1000n, 0x3000n, 3n, 0x17cn));
  assert.deepEqual(s.decodeUffdioRegister(le64(0x1000n, 0x3000n, 3n, 0x17cn)), reg);
});

Deno.test("uffdio_writeprotect: start@0 len@8 mode@16", () => {
  const v = { start: 0x5000n, len: 0x1000n, mode: 1n };
  assert.deepEqual(s.encodeUffdioWriteprotect(v), le64(0x5000n, 0x1000n, 1n));
  assert.deepEqual(s.decodeUffdioWriteprotect(le64(0x5000n, 0x1000n, 1n)), v);
});

Deno.test("uffdio_copy and uffdio_move: dst@0 src@8 len@16 mode@24 out(s64)@32", () => {
  const copy = { dst: 0x1000n, src: 0x9000n, len: 0x1000n, mode: 2n, copy: -17n };
  assert.deepEqual(s.encodeUffdioCopy(copy), le64(0x1000n, 0x9000n, 0x1000n, 2n, -17n));
  assert.deepEqual(s.decodeUffdioCopy(le64(0x1000n, 0x9000n, 0x1000n, 2n, -17n)), copy);
  const move = { dst: 0x2000n, src: 0xa000n, len: 0x2000n, mode: 3n, move: 0x2000n };
  assert.deepEqual(s.encodeUffdioMove(move), le64(0x2000n, 0xa000n, 0x2000n, 3n, 0x2000n));
  assert.deepEqual(s.decodeUffdioMove(le64(0x2000n, 0xa000n, 0x2000n, 3n, -11n)), { ...move, move: -11n });
});

Deno.test("uffdio_zeropage, uffdio_continue, uffdio_poison: start@0 len@8 mode@16 out(s64)@24", () => {
  const v = { start: 0x3000n, len: 0x1000n, mode: 1n, result: -11n };
  const bytes = le64(0x3000n, 0x1000n, 1n, -11n);
  for (
    const [enc, dec] of [
      [s.encodeUffdioZeropage, s.decodeUffdioZeropage],
      [s.encodeUffdioContinue, s.decodeUffdioContinue],
      [s.encodeUffdioPoison, s.decodeUffdioPoison],
    ] as const
  ) {
    assert.deepEqual(enc(v), bytes);
    assert.deepEqual(dec(bytes), v);
  }
});

Deno.test("uffd_msg: every variant decodes from hand-laid bytes and round-trips", () => {
  const pf = new Uint8Array(32);
  pf[0] = 0x12;
  pf.set(le64(3n, 0x7f1234567000n), 8); // flags WRITE|WP, address
  pf.set([0x39, 0x30, 0, 0], 24); // ptid 12345
  assert.deepEqual(s.decodeUffdMsg(pf), {
    event: UFFD_EVENT_PAGEFAULT,
    flags: 3n,
    address: 0x7f1234567000n,
    ptid: 12345,
  });
  const fork = new Uint8Array(32);
  fork[0] = 0x13;
  fork.set([7, 0, 0, 0], 8);
  assert.deepEqual(s.decodeUffdMsg(fork), { event: UFFD_EVENT_FORK, ufd: 7 });
  const remap = new Uint8Array(32);
  remap[0] = 0x14;
  remap.set(le64(0x1000n, 0x9000n, 0x2000n), 8);
  assert.deepEqual(s.decodeUffdMsg(remap), { event: UFFD_EVENT_REMAP, from: 0x1000n, to: 0x9000n, len: 0x2000n });
  for (const code of [UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP]) {
    const m = new Uint8Array(32);
    m[0] = code;
    m.set(le64(0x4000n, 0x6000n), 8);
    assert.deepEqual(s.decodeUffdMsg(m), { event: code, start: 0x4000n, end: 0x6000n });
  }
  for (const bytes of [pf, fork, remap]) assert.deepEqual(s.encodeUffdMsg(s.decodeUffdMsg(bytes)), bytes);
  const unknown = new Uint8Array(32).fill(0xee);
  unknown[0] = 0x42;
  const decoded = s.decodeUffdMsg(unknown);
  assert.deepEqual(decoded, { event: 0x42, raw: unknown });
  assert.deepEqual(s.encodeUffdMsg(decoded), unknown);
});

Deno.test("uffd_msg: a batch decodes in place at offsets", () => {
  const batch = new Uint8Array(96);
  for (let i = 0; i < 3; i++) {
    batch[i * 32] = 0x12;
    batch.set(le64(1n, BigInt(0x1000 * (i + 1))), i * 32 + 8);
  }
  const addresses = [0, 32, 64].map((o) => {
    const m = s.decodeUffdMsg(batch, o);
    return "address" in m ? m.address : -1n;
  });
  assert.deepEqual(addresses, [0x1000n, 0x2000n, 0x3000n]);
  assert.throws(() => s.decodeUffdMsg(batch, 80), RangeError);
});

Deno.test("pm_scan_arg: twelve u64 fields in header order; page_region: start end categories", () => {
  const arg = {
    size: 96n,
    flags: 3n,
    start: 0x1000n,
    end: 0x9000n,
    walkEnd: 0x5000n,
    vec: 0xdead000n,
    vecLen: 16n,
    maxPages: 8n,
    categoryInverted: 0x2n,
    categoryMask: 0xan,
    categoryAnyofMask: 0x30n,
    returnMask: 0x1ffn,
  };
  const bytes = le64(96n, 3n, 0x1000n, 0x9000n, 0x5000n, 0xdead000n, 16n, 8n, 2n, 0xan, 0x30n, 0x1ffn);
  assert.deepEqual(s.encodePmScanArg(arg), bytes);
  assert.deepEqual(s.decodePmScanArg(bytes), arg);
  const region = { start: 0x1000n, end: 0x3000n, categories: 0xan };
  assert.deepEqual(s.encodePageRegion(region), le64(0x1000n, 0x3000n, 0xan));
  assert.deepEqual(s.decodePageRegion(le64(0x1000n, 0x3000n, 0xan)), region);
});

Deno.test("encoders write into a caller's buffer and refuse one that is too small", () => {
  const into = new Uint8Array(40);
  const out = s.encodeUffdioCopy({ dst: 1n, src: 2n, len: 3n, mode: 0n, copy: 0n }, into);
  assert.equal(out, into);
  assert.throws(() => s.encodeUffdioCopy({ dst: 1n, src: 2n, len: 3n, mode: 0n, copy: 0n }, new Uint8Array(39)), {
    name: "RangeError",
    message: /uffdio_copy needs 40 bytes/,
  });
});
