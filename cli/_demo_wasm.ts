/**
 * The demo's WebAssembly writer, assembled by hand from bytes (no toolchain, no
 * binary file). It imports a shared memory and exports two functions:
 *
 * ```wat
 * (module
 *   (import "env" "memory" (memory 1 65536 shared))
 *   (func (export "stride") (param $at i32) (param $step i32) (param $count i32) (param $value i32)
 *     (block
 *       (br_if 0 (i32.eqz (local.get $count)))
 *       (loop
 *         (i32.store8 (local.get $at) (local.get $value))
 *         (local.set $at (i32.add (local.get $at) (local.get $step)))
 *         (br_if 0 (local.tee $count (i32.sub (local.get $count) (i32.const 1)))))))
 *   (func (export "stamp") (param $at i32) (param $step i32) (param $count i32)
 *                          (param $pass i32) (param $page i32) (param $pageStep i32)
 *     (block
 *       (br_if 0 (i32.eqz (local.get $count)))
 *       (loop
 *         (i64.store (local.get $at)
 *           (i64.or (i64.shl (i64.extend_i32_u (local.get $pass)) (i64.const 32))
 *                   (i64.extend_i32_u (local.get $page))))
 *         (local.set $at (i32.add (local.get $at) (local.get $step)))
 *         (local.set $page (i32.add (local.get $page) (local.get $pageStep)))
 *         (br_if 0 (local.tee $count (i32.sub (local.get $count) (i32.const 1))))))))
 * ```
 *
 * `stride(at, step, count, value)` stores the byte `value` at `at`, `at + step`,
 * … (`count` times): one byte with `count = 1`, one byte in each of `count`
 * consecutive pages with `step` = the page size.
 *
 * `stamp(at, step, count, pass, page, pageStep)` stores, at the same places, the
 * 8-byte stamp `pass << 32 | page` (little-endian: the page number first, then
 * the pass), `page` growing by `pageStep` from one store to the next: each store
 * says who made it and where it was meant to go. One `i64.store` is one machine
 * store: it is in memory entirely or not at all.
 *
 * Their stores are plain wasm stores — to the kernel they are ordinary writes
 * from the thread that runs them.
 *
 * @example
 * ```ts
 * import { wasmStrideWriter } from "./_demo_wasm.ts";
 * const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
 * const stride = wasmStrideWriter(memory);
 * stride(100, 10, 3, 7);
 * const bytes = new Uint8Array(memory.buffer);
 * console.log(bytes[100], bytes[110], bytes[120], bytes[130]); // 7 7 7 0
 * ```
 *
 * @module
 */

import { leb, name, section } from "./_wasm_bytes.ts";

/** `stride(at, step, count, value)`: see the module documentation. */
export type StrideWriter = (at: number, step: number, count: number, value: number) => void;

/** `stamp(at, step, count, pass, page, pageStep)`: see the module documentation. */
export type StampWriter = (
  at: number,
  step: number,
  count: number,
  pass: number,
  page: number,
  pageStep: number,
) => void;

const I32 = 0x7f;
const [AT, STEP, COUNT, VALUE] = [0, 1, 2, 3]; // parameter indices

/** The body of `stride` (no locals beyond its parameters). */
const STRIDE_BODY = [
  0x00, // no local declarations
  0x02,
  0x40, // block (no result)
  0x20,
  COUNT,
  0x45,
  0x0d,
  0, //   br_if 0 (i32.eqz count): nothing to write
  0x03,
  0x40, //   loop
  0x20,
  AT,
  0x20,
  VALUE,
  0x3a,
  0x00,
  0x00, //     i32.store8 align=1 offset=0 (at, value)
  0x20,
  AT,
  0x20,
  STEP,
  0x6a,
  0x21,
  AT, //     at = at + step
  0x20,
  COUNT,
  0x41,
  1,
  0x6b,
  0x22,
  COUNT, //     count = count - 1 (local.tee)
  0x0d,
  0, //     br_if 0: loop again while count != 0
  0x0b, //   end loop
  0x0b, // end block
  0x0b, // end function
];

const [PASS, PAGE, PAGE_STEP] = [3, 4, 5]; // parameter indices of `stamp` (after at, step, count)

/** The body of `stamp` (no locals beyond its parameters). */
const STAMP_BODY = [
  0x00, // no local declarations
  0x02,
  0x40, // block (no result)
  0x20,
  COUNT,
  0x45,
  0x0d,
  0, //   br_if 0 (i32.eqz count): nothing to write
  0x03,
  0x40, //   loop
  0x20,
  AT, //     address
  0x20,
  PASS,
  0xad, //     i64.extend_i32_u pass
  0x42,
  32, //     i64.const 32 (signed LEB128)
  0x86, //     i64.shl
  0x20,
  PAGE,
  0xad, //     i64.extend_i32_u page
  0x84, //     i64.or
  0x37,
  0x03,
  0x00, //     i64.store align=8 offset=0 (at, pass << 32 | page)
  0x20,
  AT,
  0x20,
  STEP,
  0x6a,
  0x21,
  AT, //     at = at + step
  0x20,
  PAGE,
  0x20,
  PAGE_STEP,
  0x6a,
  0x21,
  PAGE, //     page = page + pageStep
  0x20,
  COUNT,
  0x41,
  1,
  0x6b,
  0x22,
  COUNT, //     count = count - 1 (local.tee)
  0x0d,
  0, //     br_if 0: loop again while count != 0
  0x0b, //   end loop
  0x0b, // end block
  0x0b, // end function
];

/** The module's bytes. */
export const WASM_WRITER_BYTES: Uint8Array<ArrayBuffer> = new Uint8Array([
  ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // "\0asm", version 1
  // types: 0 = (i32 i32 i32 i32) -> (), 1 = (i32 i32 i32 i32 i32 i32) -> ()
  ...section(1, [2, 0x60, 4, I32, I32, I32, I32, 0, 0x60, 6, I32, I32, I32, I32, I32, I32, 0]),
  // imports: env.memory, a memory (0x02) with limits 0x03 = shared + maximum, min 1, max 65536
  ...section(2, [1, ...name("env"), ...name("memory"), 0x02, 0x03, ...leb(1), ...leb(65536)]),
  ...section(3, [2, 0, 1]), // functions: stride of type 0, stamp of type 1
  ...section(7, [2, ...name("stride"), 0x00, 0, ...name("stamp"), 0x00, 1]), // exports: functions 0 and 1
  ...section(10, [2, ...leb(STRIDE_BODY.length), ...STRIDE_BODY, ...leb(STAMP_BODY.length), ...STAMP_BODY]), // code
]);

/**
 * Instantiates the writer over a shared `memory` and returns its `stride` export.
 *
 * @example
 * ```ts
 * import { wasmStrideWriter } from "./_demo_wasm.ts";
 * const memory = new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true });
 * wasmStrideWriter(memory)(0, 1, 4, 9);
 * console.log([...new Uint8Array(memory.buffer, 0, 5)]); // [9, 9, 9, 9, 0]
 * ```
 */
export function wasmStrideWriter(memory: WebAssembly.Memory): StrideWriter {
  const instance = new WebAssembly.Instance(new WebAssembly.Module(WASM_WRITER_BYTES), { env: { memory } });
  return instance.exports.stride as StrideWriter;
}

/**
 * Instantiates the writer over a shared `memory` and returns its `stamp` export.
 *
 * @example
 * ```ts
 * import { wasmStampWriter } from "./_demo_wasm.ts";
 * const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
 * wasmStampWriter(memory)(8, 4096, 3, 7, 10, 1); // pages 0, 1, 2 of the memory, stamped as pages 10, 11, 12
 * const words = new Uint32Array(memory.buffer);
 * console.log(words[2], words[3], words[1024 + 2], words[2048 + 3], words[3072 + 2]); // 10 7 11 7 0
 * ```
 */
export function wasmStampWriter(memory: WebAssembly.Memory): StampWriter {
  const instance = new WebAssembly.Instance(new WebAssembly.Module(WASM_WRITER_BYTES), { env: { memory } });
  return instance.exports.stamp as StampWriter;
}
