/**
 * Checkpoints on the real kernel: a base and five deltas restore byte-identical
 * memory at every step (Region, unaligned ArrayBuffer, growing WebAssembly.Memory);
 * damaged, truncated, reordered or foreign files are refused with a clear error and
 * the target is left untouched; single pages can be read from a chain; files stay
 * self-consistent while another thread writes.
 */

import assert from "node:assert/strict";
import { Checkpoint, CheckpointReader, crc32c, type MemoryTarget, Region, type UffdError, WriteWatch } from "../mod.ts";
import * as libc from "../ffi/_libc.ts";
import { imageBytes } from "../kernel/target.ts";
import { assertUffdError, skipUnless, within } from "./helpers.ts";
import { wasmWriter } from "./fixtures/wasm_writer.ts";

const PAGE = Region.pageSize;
/**
 * The write-watch backends the checkpoint tests run on: the one `Checkpoint.start` picks here, and the sync backend as
 * well where it is not that one (the fallback of kernels without WP_ASYNC, forced here; the real thing on 6.1).
 */
const available = WriteWatch.backends().filter((b) => b.available);
const BACKENDS = [
  ...new Set([available[0]?.name ?? "async", ...available.filter((b) => b.name === "sync").map((b) => b.name)]),
];
const ignore = skipUnless(
  available.length > 0,
  `no write-watch backend: ${WriteWatch.backends().map((b) => `${b.name}: ${b.reason}`).join("; ")}`,
);

function random(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

/** Byte-for-byte equality, reporting the first difference instead of dumping megabytes. */
function assertSameBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      assert.fail(
        `${what}: first difference at byte ${i} (page ${Math.floor(i / PAGE)}): ${actual[i]} ≠ ${expected[i]}`,
      );
    }
  }
}

/** Random writes of random values (some pages zapped) into `bytes`; `zap` drops pages of a Region. */
function scribble(bytes: Uint8Array, next: () => number, writes: number, zap?: (page: number) => void): void {
  const pages = Math.ceil(bytes.length / PAGE);
  for (let i = 0; i < writes; i++) bytes[Math.floor(next() * bytes.length)] = 1 + Math.floor(next() * 255);
  // A run of whole pages, like a memcpy.
  const at = Math.floor(next() * (pages - 4)) * PAGE;
  bytes.fill(1 + Math.floor(next() * 255), at, Math.min(bytes.length, at + 3 * PAGE));
  if (zap) zap(Math.floor(next() * pages));
}

function tempDir(): string {
  return Deno.makeTempDirSync({ prefix: "uffd-ckpt-" });
}

for (const backend of BACKENDS) {
  Deno.test({
    name:
      `${backend}: a base and 5 deltas of a Region restore byte-identical memory at every step, into fresh and dirty targets`,
    ignore,
    fn: () => {
      const dir = tempDir();
      try {
        const pages = 1024;
        using mem = Region.map(pages * PAGE);
        using ckpt = Checkpoint.start(mem, { backend });
        assert.equal(ckpt.watch.backend, backend);
        const next = random(11);
        const snapshots: Uint8Array[] = [];
        for (let step = 0; step <= 5; step++) {
          scribble(mem.bytes, next, step === 0 ? 2000 : 40, (p) => mem.zap(mem.pages(p, 1)));
          const info = ckpt.write(`${dir}/${step}.ckpt`);
          assert.equal(info.kind, step === 0 ? "base" : "delta");
          assert.equal(info.sequence, step);
          snapshots.push(mem.bytes.slice());
          if (step > 0) {
            assert.ok(info.entries < pages / 4, `delta ${step} holds only what was written (${info.entries})`);
          }
        }
        assert.deepEqual(ckpt.files, [0, 1, 2, 3, 4, 5].map((s) => `${dir}/${s}.ckpt`));
        for (let step = 0; step <= 5; step++) {
          const chain = ckpt.files.slice(0, step + 1);
          using fresh = Region.map(pages * PAGE);
          Checkpoint.restore(fresh, chain);
          assertSameBytes(fresh.bytes, snapshots[step]!, `step ${step} into a fresh region`);
          using dirty = Region.map(pages * PAGE);
          dirty.bytes.fill(0xcc);
          Checkpoint.restore(dirty, chain);
          assertSameBytes(dirty.bytes, snapshots[step]!, `step ${step} into a dirty region`);
        }
        assert.deepEqual(Deno.readDirSync(dir).filter((e) => e.name.includes(".tmp")).toArray(), [], "no temp files");
      } finally {
        Deno.removeSync(dir, { recursive: true });
      }
    },
  });
}

for (const backend of BACKENDS) {
  Deno.test({
    name:
      `${backend}: a 16 MiB ArrayBuffer (not page-aligned) restores into another ArrayBuffer, whatever its alignment`,
    ignore,
    fn: () => {
      const dir = tempDir();
      try {
        const size = 16 << 20;
        const buffer = new ArrayBuffer(size);
        const bytes = new Uint8Array(buffer);
        using ckpt = Checkpoint.start(buffer, { backend });
        assert.notEqual(ckpt.watch.head, 0, "the buffer starts inside a page");
        const next = random(5);
        bytes[0] = 0x11;
        bytes[size - 1] = 0x22; // the partial first and last pages
        scribble(bytes, next, 300);
        const base = ckpt.write(`${dir}/base`);
        assert.ok(base.entries < base.imageLength / PAGE / 2, "untouched pages are left out of the base");
        const snapshots = [bytes.slice()];
        for (let step = 1; step <= 5; step++) {
          scribble(bytes, next, 100);
          ckpt.write(`${dir}/delta-${step}`);
          snapshots.push(bytes.slice());
        }
        for (let step = 0; step <= 5; step++) {
          const target = new ArrayBuffer(size);
          Checkpoint.restore(target, ckpt.files.slice(0, step + 1));
          assertSameBytes(new Uint8Array(target), snapshots[step]!, `step ${step}`);
        }
        // A page-aligned target of the same size works too: pages map back to byte offsets.
        using aligned = Region.map(size);
        Checkpoint.restore(aligned, ckpt.files);
        assertSameBytes(aligned.bytes, snapshots[5]!, "into a page-aligned region");
      } finally {
        Deno.removeSync(dir, { recursive: true });
      }
    },
  });
}

for (const backend of BACKENDS) {
  Deno.test({
    name: `${backend}: rollback in place: a base restored into the very memory, which has grown since, zeros what grew`,
    ignore,
    fn: () => {
      const dir = tempDir();
      try {
        const memory = new WebAssembly.Memory({ initial: 2, maximum: 8 });
        const wasm = wasmWriter(memory);
        using ckpt = Checkpoint.start(memory, { backend });
        wasm.fill(1000, 7, 5000);
        ckpt.write(`${dir}/base`);
        const before = new Uint8Array(memory.buffer).slice();
        ckpt.stop();
        // The program goes on: it writes, grows (a wasm memory never shrinks) and writes in the new part.
        wasm.fill(20, 3, 70_000);
        wasm.grow(2);
        wasm.fill(3 * 65536 + 10, 9, 100);
        const result = Checkpoint.restore(memory, [`${dir}/base`]);
        const now = new Uint8Array(memory.buffer);
        assert.equal(now.length, 4 * 65536, "still four wasm pages");
        assertSameBytes(now.subarray(0, 2 * 65536), before, "the image in the first two");
        assert.ok(now.subarray(2 * 65536).every((b) => b === 0), "zeros after it: the memory as it was at that length");
        assert.deepEqual({ ...result, pagesWritten: 0 }, {
          pagesWritten: 0,
          imageLength: 2 * 65536,
          targetLength: 4 * 65536,
          tail: 2 * 65536,
          tailZeroed: PAGE, // the one page written after the growth (bytes 3·65536 + 10 … + 110)
        });
        assert.ok(result.pagesWritten > 0);
        // A shorter target is still refused, and says how far to grow it.
        assertUffdError(
          () => Checkpoint.restore(new WebAssembly.Memory({ initial: 1 }), [`${dir}/base`]),
          "EINVAL",
          /the target has 65536 bytes; the image has 131072: grow\(\) the memory to 2 wasm pages first/,
        );
      } finally {
        Deno.removeSync(dir, { recursive: true });
      }
    },
  });
}

for (const backend of BACKENDS) {
  Deno.test({
    name: `${backend}: a WebAssembly.Memory grown between checkpoints restores into a Memory of the same size`,
    ignore,
    fn: () => {
      const dir = tempDir();
      try {
        const memory = new WebAssembly.Memory({ initial: 2, maximum: 8 });
        const wasm = wasmWriter(memory);
        using ckpt = Checkpoint.start(memory, { backend });
        wasm.fill(1000, 7, 5000);
        ckpt.write(`${dir}/base`);
        const before = new Uint8Array(memory.buffer).slice();
        wasm.grow(2);
        wasm.fill(3 * 65536 + 10, 9, 100); // in the new part, before the watch looked
        wasm.store(8, 42);
        const delta = ckpt.write(`${dir}/delta-1`);
        assert.equal(delta.imageLength, 4 * 65536);
        const after = new Uint8Array(memory.buffer).slice();
        const small = new WebAssembly.Memory({ initial: 2 });
        Checkpoint.restore(small, [`${dir}/base`]);
        assertSameBytes(new Uint8Array(small.buffer), before, "base into 2 wasm pages");
        const big = new WebAssembly.Memory({ initial: 4 });
        Checkpoint.restore(big, ckpt.files);
        assertSameBytes(new Uint8Array(big.buffer), after, "base + delta into 4 wasm pages");
        assertUffdError(
          () => Checkpoint.restore(small, ckpt.files),
          "EINVAL",
          /the target has 131072 bytes; .* 262144/,
        );
      } finally {
        Deno.removeSync(dir, { recursive: true });
      }
    },
  });
}

/** A chain of a base and 5 deltas over 64 pages, with the memory's bytes after each. */
function writeChain(dir: string): { files: string[]; snapshots: Uint8Array[] } {
  using mem = Region.map(64 * PAGE);
  using ckpt = Checkpoint.start(mem);
  const next = random(3);
  const snapshots: Uint8Array[] = [];
  for (let step = 0; step <= 5; step++) {
    scribble(mem.bytes, next, 30);
    ckpt.write(`${dir}/${step}`);
    snapshots.push(mem.bytes.slice());
  }
  return { files: [...ckpt.files], snapshots };
}

/** Restores `files` into a target filled with a pattern, expects `code`/`message`, and checks the target is untouched. */
function assertRefused(files: string[], code: string, message: RegExp, length = 64 * PAGE): UffdError {
  using target = Region.map(length);
  target.bytes.fill(0x5a);
  const e = assertUffdError(() => Checkpoint.restore(target, files), code, message);
  assert.ok(target.bytes.every((b) => b === 0x5a), "the target is left untouched");
  return e;
}

function patch(path: string, offset: number, xor = 0xff): void {
  const bytes = Deno.readFileSync(path);
  bytes[offset]! ^= xor;
  Deno.writeFileSync(path, bytes);
}

Deno.test({
  name: "a corrupted delta is refused with a clear error and the target is left untouched",
  ignore,
  fn: () => {
    const dir = tempDir();
    try {
      const { files, snapshots } = writeChain(dir);
      using reader = CheckpointReader.open(files.slice(0, 4));
      const victim = reader.files[3]!;
      assert.ok(victim.dataPages > 0);
      // Flip one bit in the middle of delta 3's first page slot.
      patch(files[3]!, PAGE + 100, 0x01);
      const e = assertRefused(
        files,
        "EIO",
        /delta 3: page \d+: checksum mismatch .* damaged or truncated; nothing was written/,
      );
      assert.equal(e.args.path, files[3]);
      // The chain up to delta 2 is still good.
      using ok = Region.map(64 * PAGE);
      Checkpoint.restore(ok, files.slice(0, 3));
      assertSameBytes(ok.bytes, snapshots[2]!, "base + 2 deltas");
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "damaged headers and tables, truncation, reordering, gaps, foreign files and wrong sizes are all refused",
  ignore,
  fn: async (t) => {
    const dir = tempDir();
    try {
      const { files } = writeChain(dir);
      const copy = (from: string, name: string) => {
        Deno.copyFileSync(from, `${dir}/${name}`);
        return `${dir}/${name}`;
      };
      await t.step("header bit flipped", () => {
        const bad = copy(files[2]!, "h");
        patch(bad, 20, 0x04);
        assertRefused([files[0]!, files[1]!, bad], "EIO", /header checksum mismatch/);
      });
      await t.step("not a checkpoint", () => {
        const bad = `${dir}/junk`;
        Deno.writeTextFileSync(bad, "hello".repeat(100));
        assertRefused([bad], "EIO", /not a checkpoint file \(bad magic\)/);
      });
      await t.step("page table bit flipped", () => {
        const bad = copy(files[1]!, "t");
        const size = Deno.statSync(bad).size;
        patch(bad, size - 8 - 5);
        assertRefused([files[0]!, bad], "EIO", /delta 1: page table checksum mismatch/);
      });
      await t.step("truncated", () => {
        const bad = copy(files[1]!, "short");
        Deno.truncateSync(bad, Deno.statSync(bad).size - 1);
        assertRefused([files[0]!, bad], "EIO", /delta 1: the file has \d+ bytes; its header says \d+/);
      });
      await t.step("deltas out of order or missing", () => {
        assertRefused([files[0]!, files[2]!, files[1]!], "EINVAL", /is delta 2 where delta 1 belongs/);
        assertRefused([files[1]!], "EINVAL", /the chain must start with its base/);
        assertRefused([], "EINVAL", /no files: a chain starts with its base/);
      });
      await t.step("a delta from another chain", () => {
        const other = tempDir();
        try {
          const foreign = writeChain(other).files;
          assertRefused([files[0]!, foreign[1]!], "EINVAL", /belongs to another chain/);
        } finally {
          Deno.removeSync(other, { recursive: true });
        }
      });
      await t.step("a target of the wrong size", () => {
        assertRefused(files, "EINVAL", /the target has \d+ bytes; the image has 262144/, 32 * PAGE);
      });
      await t.step("a missing file", () => {
        assertRefused([files[0]!, `${dir}/nope`], "ENOENT", /open \{ path: ".*nope" \}/);
      });
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "CheckpointReader returns single pages from the newest file holding them, checking each checksum",
  ignore,
  fn: () => {
    const dir = tempDir();
    try {
      const { files, snapshots } = writeChain(dir);
      {
        using reader = CheckpointReader.open(files);
        assert.equal(reader.pageCount, 64);
        assert.equal(reader.imageLength, 64 * PAGE);
        assert.equal(reader.files.length, 6);
        const into = new Uint8Array(PAGE);
        for (let page = 0; page < 64; page++) {
          const expected = snapshots[5]!.subarray(page * PAGE, (page + 1) * PAGE);
          assertSameBytes(reader.readPage(page, into), expected, `page ${page}`);
          const source = reader.source(page);
          if (source === undefined) assert.ok(expected.every((b) => b === 0), `page ${page} is all zeros`);
          else assert.equal(source.offset % PAGE, 0, "slots are page-aligned in the file");
        }
        assert.throws(() => reader.readPage(64), RangeError);
        reader.verify();
      }
      // A damaged page is caught when it is read, and only that page.
      using reader = CheckpointReader.open(files);
      const damaged = [...Array(64).keys()].find((p) => reader.source(p)?.file === 5)!;
      const source = reader.source(damaged)!;
      patch(files[5]!, source.offset + 7);
      assertUffdError(() => reader.readPage(damaged), "EIO", new RegExp(`delta 5: page ${damaged}: checksum mismatch`));
      const fine = [...Array(64).keys()].find((p) => reader.source(p) !== undefined && reader.source(p)!.file !== 5)!;
      assert.equal(reader.readPage(fine).length, PAGE);
      assertUffdError(() => reader.verify(), "EIO", /delta 5: page \d+: checksum mismatch/);
      reader.close();
      assertUffdError(() => reader.readPage(0), "EBADF", /the reader is closed/);
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

for (const backend of BACKENDS) {
  Deno.test({
    name:
      `${backend}: a base of shared memory reads pages the mapping has not touched (written through another mapping)`,
    ignore,
    fn: () => {
      const dir = tempDir();
      try {
        using shm = Region.map(16 * PAGE, { memfd: true });
        using alias = shm.alias();
        using ckpt = Checkpoint.start(shm, { backend });
        alias.bytes[5 * PAGE] = 0x77; // in the page cache, not mapped in `shm` yet
        const base = ckpt.write(`${dir}/base`);
        assert.equal(base.entries, 1);
        using copy = Region.map(16 * PAGE);
        Checkpoint.restore(copy, ckpt.files);
        assert.equal(copy.bytes[5 * PAGE], 0x77);
      } finally {
        Deno.removeSync(dir, { recursive: true });
      }
    },
  });
}

for (const backend of BACKENDS) {
  Deno.test({
    name: `${backend}: write() refuses a delta when pages can no longer be watched, and writes nothing`,
    ignore,
    fn: () => {
      const dir = tempDir();
      try {
        using mem = Region.map(8 * PAGE);
        using ckpt = Checkpoint.start(mem, { backend });
        ckpt.write(`${dir}/base`);
        assert.equal(libc.munmap(mem.address + BigInt(6 * PAGE), BigInt(2 * PAGE)), 0);
        assertUffdError(
          () => ckpt.write(`${dir}/delta`),
          "EIO",
          /pages 6\.\.7 can no longer be watched .* start a new chain/,
        );
        assert.throws(() => Deno.statSync(`${dir}/delta`), Deno.errors.NotFound);
        assert.equal(ckpt.sequence, 1);
      } finally {
        Deno.removeSync(dir, { recursive: true });
      }
    },
  });
}

for (const backend of BACKENDS) {
  Deno.test({
    name: `${backend}: deltas written while a Worker keeps writing are self-consistent, and the last one catches up`,
    ignore,
    fn: async () => {
      const dir = tempDir();
      const pages = 1024;
      using mem = Region.map(pages * PAGE);
      const control = new SharedArrayBuffer(8);
      const ctl = new Int32Array(control);
      const log = new SharedArrayBuffer(4 * (1 + 3 * 1_000_000));
      const worker = new Worker(new URL("./workers/random_writer.ts", import.meta.url), { type: "module" });
      const done = new Promise<unknown>((resolve, reject) => {
        worker.onmessage = (e) => resolve(e.data);
        worker.onerror = (e) => reject(e);
      });
      try {
        using ckpt = Checkpoint.start(mem, { backend });
        ckpt.write(`${dir}/0`);
        worker.postMessage({ address: mem.address, pages, control, log, seed: 9 });
        for (let step = 1; step <= 5; step++) {
          await new Promise((r) => setTimeout(r, 5));
          ckpt.write(`${dir}/${step}`);
          using reader = CheckpointReader.open(ckpt.files);
          reader.verify(); // every checksum matches the bytes in the file
        }
        Atomics.store(ctl, 1, 1);
        await within(done, 10_000, "the writer");
        ckpt.write(`${dir}/6`); // the writer has stopped: this delta completes the image
        using copy = Region.map(pages * PAGE);
        Checkpoint.restore(copy, ckpt.files);
        assertSameBytes(copy.bytes, mem.bytes, "restored image after the writer stopped");
      } finally {
        Atomics.store(ctl, 1, 1);
        await done.catch(() => {});
        worker.terminate();
        Deno.removeSync(dir, { recursive: true });
      }
    },
  });
}

Deno.test("crc32c: the standard check value, continuation, and imageBytes of every target kind", () => {
  assert.equal(crc32c(new TextEncoder().encode("123456789")), 0xe3069283);
  assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa);
  const data = crypto.getRandomValues(new Uint8Array(1001));
  assert.equal(crc32c(data.subarray(3), crc32c(data.subarray(0, 3))), crc32c(data));
  assert.equal(crc32c(data.subarray(1, 1000)), crc32c(data.slice(1, 1000)), "unaligned views");
  const targets: [MemoryTarget, number][] = [
    [new ArrayBuffer(10), 10],
    [new Uint16Array(8), 16],
    [new DataView(new ArrayBuffer(12), 4), 8],
    [new WebAssembly.Memory({ initial: 1 }), 65536],
  ];
  for (const [target, length] of targets) assert.equal(imageBytes(target).length, length);
});
