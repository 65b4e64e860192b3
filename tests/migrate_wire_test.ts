/**
 * The migration's wire format (`docs/migration-format.md`), frame by frame, in
 * this process: the wasm CRC-32C against the reference TypeScript one, batches
 * built and decoded (zero pages left out, runs, per-page CRCs), and every check
 * a receiver makes — a changed byte anywhere is refused and named, other versions
 * and magics are told apart, lengths and runs are bounded.
 */

import assert from "node:assert/strict";
import { crc32c } from "../checkpoint/crc32c.ts";
import { CrcArena, zeroPageCrc } from "../migrate/_crc32c.ts";
import {
  BatchBuilder,
  checkFrame,
  decodeAccept,
  decodeBatch,
  decodeEnd,
  decodeFailure,
  decodeHello,
  decodeRuns,
  encodeAccept,
  encodeEnd,
  encodeFailure,
  encodeHello,
  encodeRuns,
  HEADER_BYTES,
  imageDigest,
  MAX_PAYLOAD,
  NONE,
  readHeader,
  sealFrame,
  TAG,
  tagName,
  VERSION,
  WireError,
  writeHeader,
} from "../migrate/_wire.ts";

const P = 4096;

function wireError(fn: () => unknown, code: string, message?: RegExp): WireError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof WireError, `expected a WireError ${code}, got ${e}`);
    assert.equal(e.code, code, e.message);
    if (message) assert.match(e.message, message);
    return e;
  }
  assert.fail(`expected a WireError ${code}`);
}

Deno.test("wire: the wasm CRC-32C is the checkpoint format's, at every length and alignment", () => {
  const arena = new CrcArena(1 << 16);
  const random = crypto.getRandomValues(new Uint8Array(40_000));
  for (const length of [0, 1, 3, 15, 16, 17, 31, 32, 33, 255, 4095, 4096, 4097, 8192, 12_300, 39_000]) {
    for (const offset of [0, 1, 7]) {
      const bytes = random.subarray(offset, offset + length);
      arena.bytes.set(bytes, arena.base + offset);
      assert.equal(arena.crc(arena.base + offset, length), crc32c(bytes), `${length} bytes at +${offset}`);
    }
  }
  // Continued over pieces, like the TypeScript one.
  arena.bytes.set(random.subarray(0, 100), arena.base);
  assert.equal(arena.crc(arena.base + 40, 60, arena.crc(arena.base, 40)), crc32c(random.subarray(0, 100)));
  // A 4 KiB block (the four-lane loop) continuing a CRC: its first lane starts from that CRC, not from zero.
  arena.bytes.set(random.subarray(0, 8200), arena.base);
  assert.equal(arena.crc(arena.base + 5, 8195, arena.crc(arena.base, 5)), crc32c(random.subarray(0, 8200)));
  assert.equal(arena.crc(arena.base, 9, 0), crc32c(random.subarray(0, 9)));
  arena.bytes.set(new TextEncoder().encode("123456789"), arena.base);
  assert.equal(arena.crc(arena.base, 9), 0xe3069283);
  assert.equal(zeroPageCrc(P), crc32c(new Uint8Array(P)));
});

Deno.test("wire: page CRCs sixteen side by side are each page's own, for every lane and page size", () => {
  for (const pageSize of [4096, 16384, 64]) {
    const count = 2 * 16 + 5; // two groups of sixteen, then five one by one
    const arena = new CrcArena(count * pageSize);
    const image = noise(count * pageSize);
    arena.bytes.set(image, arena.base);
    const out = new Uint32Array(count + 3);
    arena.pageCrcs(arena.base, count, pageSize, out, 3);
    for (let i = 0; i < count; i++) {
      assert.equal(out[3 + i], crc32c(image.subarray(i * pageSize, (i + 1) * pageSize)), `page ${i} of ${pageSize}`);
    }
    // One changed byte changes its page's CRC and no other (each lane holds its own page).
    for (const page of [0, 7, 15, 16, 31]) {
      const at = arena.base + page * pageSize + ((page * 37) % pageSize);
      arena.bytes[at] ^= 0x10;
      const changed = new Uint32Array(count + 3);
      arena.pageCrcs(arena.base, count, pageSize, changed, 3);
      const differ = [...changed.keys()].filter((i) => changed[i] !== out[i]).map((i) => i - 3);
      assert.deepEqual(differ, [page]);
      arena.bytes[at] ^= 0x10;
    }
  }
});

Deno.test("wire: a changed byte in a page of a large batch (checked sixteen at a time) is named", () => {
  const arena = new CrcArena(2 << 20);
  const builder = new BatchBuilder(arena, arena.base, 1 << 20, P);
  const image = noise(140 * P); // pages 100…139 are sent
  builder.begin(0);
  assert.equal(builder.addRun(100, 40, image, () => assert.fail("no zero page")), 40);
  const frame = builder.seal(1);
  const header = readHeader(arena.bytes, frame.at);
  const payload = frame.at + HEADER_BYTES;
  const decoded = decodeBatch(arena, payload, header.length, P, 200);
  const expected = [...Array(40).keys()].map((i) => crc32c(image.subarray((100 + i) * P, (101 + i) * P)));
  assert.deepEqual([...decoded.crcs], expected);
  arena.bytes[decoded.dataAt + 29 * P + 4000] ^= 1;
  const e = wireError(() => decodeBatch(arena, payload, header.length, P, 200), "corrupt", /page 129 does not match/);
  assert.equal(e.page, 129);
});

Deno.test("wire: the zero check finds a single non-zero byte anywhere in a page", () => {
  const arena = new CrcArena(2 * P);
  arena.bytes.fill(0, arena.base, arena.base + P);
  assert.equal(arena.zero(arena.base, P), true);
  for (const at of [0, 1, 31, 32, 2047, P - 1]) {
    arena.bytes[arena.base + at] = 1;
    assert.equal(arena.zero(arena.base, P), false, `byte ${at}`);
    arena.bytes[arena.base + at] = 0;
  }
});

/** A built batch: pages 3, 4 (data), 5 (zero), 9 (data), sealed as frame `sequence`. */
/** `length` random bytes (`getRandomValues` gives 64 KiB at most per call). */
function noise(length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let at = 0; at < length; at += 65536) crypto.getRandomValues(out.subarray(at, at + 65536));
  return out;
}

function batch(arena: CrcArena, sequence = 7) {
  const builder = new BatchBuilder(arena, arena.base + 65536, 1 << 20, P);
  builder.begin(2);
  const page = (fill: number) => new Uint8Array(P).fill(fill);
  assert.equal(builder.add(3, page(3)), true);
  assert.equal(builder.add(4, page(4)), true);
  assert.equal(builder.add(5, page(0)), false, "an all-zero page is left out");
  assert.equal(builder.add(9, page(9).subarray(0, 100)), true, "a short page is zero-padded");
  return builder.seal(sequence);
}

Deno.test("wire: a PAGE frame decodes to its pages, runs and CRCs; the page bytes follow the directory", () => {
  const arena = new CrcArena(2 << 20);
  const frame = batch(arena);
  const header = readHeader(arena.bytes, frame.at);
  assert.equal(tagName(header.tag), "PAGE");
  assert.equal(header.sequence, 7);
  assert.equal(frame.length, HEADER_BYTES + header.length);
  assert.equal(header.length, 8 + 2 * 8 + 3 * 4 + 3 * P, "two runs, three pages");
  checkFrame(arena, frame.at, frame.at + HEADER_BYTES, header);
  const b = decodeBatch(arena, frame.at + HEADER_BYTES, header.length, P, 16);
  assert.equal(b.round, 2);
  assert.deepEqual([...b.pages], [3, 4, 9]);
  assert.deepEqual([...b.crcs], [
    crc32c(new Uint8Array(P).fill(3)),
    crc32c(new Uint8Array(P).fill(4)),
    crc32c(
      new Uint8Array([...new Uint8Array(100).fill(9), ...new Uint8Array(P - 100)]),
    ),
  ]);
  assert.equal(arena.bytes[b.dataAt + 2 * P + 99], 9);
  assert.equal(arena.bytes[b.dataAt + 2 * P + 100], 0);
  // Outside the image: refused.
  wireError(() => decodeBatch(arena, frame.at + HEADER_BYTES, header.length, P, 9), "protocol", /outside the image/);
});

Deno.test("wire: a changed byte is refused — in a page (named), in the directory, in the header", () => {
  const arena = new CrcArena(2 << 20);
  const frame = batch(arena);
  const header = readHeader(arena.bytes, frame.at);
  const payload = frame.at + HEADER_BYTES;
  const dataAt = payload + 8 + 16 + 12;
  // A page byte: the frame's CRC holds (it covers the directory), the page's does not: named.
  arena.bytes[dataAt + P + 17] ^= 1;
  checkFrame(arena, frame.at, payload, header);
  const e = wireError(() => decodeBatch(arena, payload, header.length, P, 16), "corrupt", /page 4 does not match/);
  assert.equal(e.page, 4);
  arena.bytes[dataAt + P + 17] ^= 1;
  // A directory byte (a page's CRC): the frame's CRC.
  arena.bytes[payload + 8 + 16 + 4] ^= 0x80;
  wireError(() => checkFrame(arena, frame.at, payload, header), "corrupt", /PAGE frame 7 does not match its CRC-32C/);
  arena.bytes[payload + 8 + 16 + 4] ^= 0x80;
  // The sequence number in the header.
  arena.bytes[frame.at + 8] ^= 1;
  wireError(() => checkFrame(arena, frame.at, payload, readHeader(arena.bytes, frame.at)), "corrupt");
});

Deno.test("wire: a small frame is sealed over its header and whole payload", () => {
  const arena = new CrcArena(1 << 16);
  const at = arena.base;
  const payload = encodeEnd({ imagePages: 10, dataPages: 4, zeroPages: 6, rounds: 2, digest: 0x1234 });
  writeHeader(arena.bytes, at, TAG.END, payload.length, 3);
  arena.bytes.set(payload, at + HEADER_BYTES);
  sealFrame(arena, at);
  const header = readHeader(arena.bytes, at);
  assert.equal(header.crc, crc32c(new Uint8Array([...arena.bytes.subarray(at, at + 12), ...payload])));
  checkFrame(arena, at, at + HEADER_BYTES, header);
  assert.deepEqual(decodeEnd(payload), { imagePages: 10, dataPages: 4, zeroPages: 6, rounds: 2, digest: 0x1234 });
  arena.bytes[at + HEADER_BYTES + 19] ^= 1;
  wireError(() => checkFrame(arena, at, at + HEADER_BYTES, header), "corrupt", /END_ frame 3/);
});

Deno.test("wire: HELO — the magic, then the version, then the geometry", () => {
  const hello = { version: VERSION, pageSize: P, imageLength: 3 * P + 1, imagePages: 4, session: 99n, maxPayload: 1 };
  assert.deepEqual(decodeHello(encodeHello(hello)), hello);
  const bytes = encodeHello(hello);
  new DataView(bytes.buffer).setUint16(8, 2, true);
  wireError(() => decodeHello(bytes), "version", /version 2 of the wire format; this end speaks 1/);
  wireError(() => decodeHello(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n...............")), "protocol", /magic/);
  wireError(() => decodeHello(encodeHello({ ...hello, imagePages: 3 })), "protocol", /do not cover/);
  wireError(() => decodeHello(encodeHello({ ...hello, pageSize: 3000 })), "protocol", /power of two/);
  assert.deepEqual(decodeAccept(encodeAccept({ version: 1, mode: "hybrid", hybridRounds: 3 })), {
    version: 1,
    mode: "hybrid",
    hybridRounds: 3,
  });
});

Deno.test("wire: runs must ascend, be non-empty and lie in the image; lengths are bounded", () => {
  assert.deepEqual([...decodeRuns(encodeRuns([0, 2, 5, 1], 4), 6, "ZERO").runs], [0, 2, 5, 1]);
  assert.equal(decodeRuns(encodeRuns([1, 1], 4), 6, "ZERO").round, 4);
  wireError(() => decodeRuns(encodeRuns([5, 1, 0, 2]), 6, "ZERO"), "protocol", /out of order/);
  wireError(() => decodeRuns(encodeRuns([0, 0]), 6, "POST"), "protocol", /empty/);
  wireError(() => decodeRuns(encodeRuns([4, 3]), 6, "POST"), "protocol", /outside the 6 pages/);
  wireError(() => decodeRuns(encodeRuns([0, 1]).subarray(0, 12), 6, "POST"), "protocol", /lists 1 runs/);
  const header = new Uint8Array(16);
  writeHeader(header, 0, TAG.PAGE, MAX_PAYLOAD + 1, 0);
  wireError(() => readHeader(header, 0), "protocol", /claims \d+ bytes of payload/);
});

Deno.test("wire: FAIL carries its code, frame, page and reason; an unknown code reads as protocol", () => {
  const f = { code: "corrupt" as const, sequence: 12, page: 345, message: "page 345 does not match" };
  assert.deepEqual(decodeFailure(encodeFailure(f)), f);
  assert.deepEqual(decodeFailure(encodeFailure({ ...f, code: "memory", sequence: NONE })).code, "memory");
  const odd = encodeFailure(f);
  new DataView(odd.buffer).setUint16(0, 999, true);
  assert.equal(decodeFailure(odd).code, "protocol");
});

Deno.test("wire: the image digest is the CRC-32C of the page CRCs, little-endian, whatever the arena's size", () => {
  const crcs = new Uint32Array(5000).map((_, i) => (i * 2654435761) >>> 0);
  const small = new CrcArena(4096);
  const expected = crc32c(new Uint8Array(crcs.buffer));
  assert.equal(imageDigest(small, crcs, small.base), expected);
  const big = new CrcArena(1 << 20);
  assert.equal(imageDigest(big, crcs, big.base), expected);
});
