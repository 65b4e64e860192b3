/**
 * A seeded fuzz loop over the decoders: random `uffd_msg`s (decoded directly, and
 * read through `Userfaultfd.readEvents()` itself from a file full of them),
 * `pm_scan_arg`s, `page_region`s and pagemap entries — 100,000 cases each. A
 * decoder never throws on content, an unknown event comes back as its raw bytes,
 * and everything round-trips where the layout defines every byte.
 *
 * The seed is printed; set `FUZZ_SEED` to replay a run.
 */

import assert from "node:assert/strict";
import { decodePagemapEntry, UFFD_FEATURE_THREAD_ID, type UffdEvent, Userfaultfd } from "../mod.ts";
import * as libc from "../ffi/_libc.ts";
import * as s from "../ffi/_structs.ts";
import { O_CLOEXEC, O_RDONLY } from "../ffi/linux.ts";

const CASES = 100_000;
const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 0x5eed_1e55) >>> 0;
const KNOWN_EVENTS = [0x12, 0x13, 0x14, 0x15, 0x16];

/** sfc32: a small, fast, seedable generator of 32-bit words. */
function generator(seed: number): () => number {
  let a = 0x9e3779b9, b = 0x243f6a88, c = 0xb7e15162, d = seed;
  const next = () => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return t >>> 0;
  };
  for (let i = 0; i < 16; i++) next();
  return next;
}

/** `count` random records of `size` bytes; for messages, half get a known event code. */
function randomRecords(next: () => number, count: number, size: number, knownEvents = false): Uint8Array {
  const bytes = new Uint8Array(count * size);
  const words = new Uint32Array(bytes.buffer);
  for (let i = 0; i < words.length; i++) words[i] = next();
  if (knownEvents) {
    for (let i = 0; i < count; i++) {
      if (next() & 1) bytes[i * size] = KNOWN_EVENTS[next() % KNOWN_EVENTS.length]!;
    }
  }
  return bytes;
}

console.log(`fuzz seed ${SEED} (FUZZ_SEED=${SEED} replays it)`);

Deno.test(`fuzz: ${CASES} random uffd_msgs through decodeUffdMsg never throw, unknown ones stay raw, known ones round-trip`, () => {
  const next = generator(SEED);
  const batch = randomRecords(next, CASES, s.SIZEOF_UFFD_MSG, true);
  let unknown = 0;
  for (let i = 0; i < CASES; i++) {
    const offset = i * s.SIZEOF_UFFD_MSG;
    const original = batch.subarray(offset, offset + s.SIZEOF_UFFD_MSG);
    const msg = s.decodeUffdMsg(batch, offset);
    assert.equal(msg.event, original[0]);
    if ("raw" in msg) {
      unknown++;
      assert.deepEqual(msg.raw, original, `case ${i}: raw bytes`);
      assert.deepEqual(s.encodeUffdMsg(msg), original, `case ${i}: raw round trip`);
    } else {
      assert.ok(KNOWN_EVENTS.includes(msg.event), `case ${i}: event ${msg.event}`);
      assert.deepEqual(s.decodeUffdMsg(s.encodeUffdMsg(msg)), msg, `case ${i}: round trip`);
    }
  }
  assert.ok(unknown > CASES / 3 && unknown < CASES * 2 / 3, `${unknown} unknown`);
});

Deno.test(`fuzz: ${CASES} random uffd_msgs read through Userfaultfd.readEvents() become typed events`, () => {
  const next = generator(SEED ^ 0x1234567);
  const batch = randomRecords(next, CASES, s.SIZEOF_UFFD_MSG, true);
  // A memfd full of messages, read back through a second open file description at offset 0:
  // readEvents() reads it exactly as it reads a userfaultfd (many messages per read(2)).
  const memfd = libc.memfdCreate("uffd-fuzz", 1);
  assert.ok(memfd >= 0);
  let fd = -1;
  try {
    assert.equal(libc.write(memfd, batch, batch.byteLength), batch.byteLength);
    fd = libc.open(`/proc/self/fd/${memfd}`, O_RDONLY | O_CLOEXEC);
    assert.ok(fd >= 0);
    const reader = Userfaultfd.adopt(fd, UFFD_FEATURE_THREAD_ID, true);
    let events: UffdEvent[] = [];
    try {
      events = reader.readEvents();
      assert.deepEqual(reader.readEvents(), [], "at the end of the file: no more events");
    } finally {
      reader.close();
      fd = -1;
    }
    assert.equal(events.length, CASES);
    const forks: number[] = [];
    events.forEach((event, i) => {
      const msg = s.decodeUffdMsg(batch, i * s.SIZEOF_UFFD_MSG);
      switch (event.type) {
        case "unknown":
          assert.ok("raw" in msg);
          assert.equal(event.code, msg.event);
          assert.deepEqual(event.raw, batch.subarray(i * 32, i * 32 + 32));
          break;
        case "pagefault":
          assert.ok("flags" in msg);
          assert.deepEqual([event.address, event.flags, event.threadId], [msg.address, msg.flags, msg.ptid]);
          assert.deepEqual([event.write, event.wp, event.minor], [
            (msg.flags & 1n) !== 0n,
            (msg.flags & 2n) !== 0n,
            (msg.flags & 4n) !== 0n,
          ]);
          break;
        case "fork":
          // The fd number is whatever the bytes said; the object is never used (and never closed: not ours).
          assert.ok("ufd" in msg);
          assert.equal(event.uffd.fd, msg.ufd);
          forks.push(msg.ufd);
          break;
        case "remap":
          assert.ok("from" in msg);
          assert.deepEqual([event.from, event.to, event.length], [msg.from, msg.to, msg.len]);
          break;
        case "remove":
        case "unmap":
          assert.ok("start" in msg);
          assert.equal(msg.event, event.type === "remove" ? 0x15 : 0x16);
          assert.deepEqual([event.start, event.end], [msg.start, msg.end]);
          break;
      }
    });
    assert.ok(forks.length > 1000, `${forks.length} fork events`);
  } finally {
    if (fd >= 0) libc.close(fd);
    libc.close(memfd);
  }
});

Deno.test(`fuzz: ${CASES} random pm_scan_args and page_regions decode and round-trip byte for byte`, () => {
  const next = generator(SEED ^ 0x7777);
  const args = randomRecords(next, CASES, s.SIZEOF_PM_SCAN_ARG);
  for (let i = 0; i < CASES; i++) {
    const offset = i * s.SIZEOF_PM_SCAN_ARG;
    const arg = s.decodePmScanArg(args, offset);
    assert.deepEqual(s.encodePmScanArg(arg), args.subarray(offset, offset + s.SIZEOF_PM_SCAN_ARG), `case ${i}`);
  }
  const regions = randomRecords(next, CASES, s.SIZEOF_PAGE_REGION);
  for (let i = 0; i < CASES; i++) {
    const offset = i * s.SIZEOF_PAGE_REGION;
    const region = s.decodePageRegion(regions, offset);
    assert.deepEqual(s.encodePageRegion(region), regions.subarray(offset, offset + s.SIZEOF_PAGE_REGION), `case ${i}`);
  }
  // Offsets that run past the buffer are a RangeError about the buffer, never a misread.
  assert.throws(() => s.decodePmScanArg(args, args.byteLength - 8), RangeError);
  assert.throws(() => s.decodePageRegion(regions, -1), RangeError);
  assert.throws(() => s.decodeUffdMsg(new Uint8Array(31)), RangeError);
});

Deno.test(`fuzz: ${CASES} random pagemap entries decode consistently`, () => {
  const next = generator(SEED ^ 0x4242);
  for (let i = 0; i < CASES; i++) {
    const raw = (BigInt(next()) << 32n) | BigInt(next());
    const e = decodePagemapEntry(0x1000n, raw);
    assert.equal(e.raw, raw);
    assert.equal(e.present, (raw >> 63n) === 1n);
    assert.equal(e.swapped, ((raw >> 62n) & 1n) === 1n);
    assert.equal(e.uffdWp, ((raw >> 57n) & 1n) === 1n);
    const pfn = raw & ((1n << 55n) - 1n);
    assert.equal(e.pfn, e.present && pfn !== 0n ? pfn : undefined);
  }
});
