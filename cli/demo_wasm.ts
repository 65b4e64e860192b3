/**
 * The demo's WebAssembly writer, assembled by hand from bytes (no toolchain, no
 * binary file). It imports a shared memory and exports one function:
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
 *         (br_if 0 (local.tee $count (i32.sub (local.get $count) (i32.const 1))))))))
 * ```
 *
 * `stride(at, step, count, value)` stores the byte `value` at `at`, `at + step`,
 * … (`count` times): one byte with `count = 1`, one byte in each of `count`
 * consecutive pages with `step` = the page size. Its stores are plain wasm
 * stores — to the kernel they are ordinary writes from the thread that runs it.
 *
 * @example
 * ```ts
 * import { wasmStrideWriter } from "./demo_wasm.ts";
 * const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
 * const stride = wasmStrideWriter(memory);
 * stride(100, 10, 3, 7);
 * const bytes = new Uint8Array(memory.buffer);
 * console.log(bytes[100], bytes[110], bytes[120], bytes[130]); // 7 7 7 0
 * ```
 *
 * @module
 */

/** `stride(at, step, count, value)`: see the module documentation. */
export type StrideWriter = (at: number, step: number, count: number, value: number) => void;

/** Unsigned LEB128, the encoding of every count and index in a module. */
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

/** A section: id, byte length, content. */
function section(id: number, content: number[]): number[] {
  return [id, ...leb(content.length), ...content];
}

/** A name: length, UTF-8 bytes. */
function name(text: string): number[] {
  return [text.length, ...new TextEncoder().encode(text)];
}

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

/** The module's bytes. */
export const WASM_STRIDE_BYTES: Uint8Array<ArrayBuffer> = new Uint8Array([
  ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], // "\0asm", version 1
  ...section(1, [1, 0x60, 4, I32, I32, I32, I32, 0]), // types: (i32 i32 i32 i32) -> ()
  // imports: env.memory, a memory (0x02) with limits 0x03 = shared + maximum, min 1, max 65536
  ...section(2, [1, ...name("env"), ...name("memory"), 0x02, 0x03, ...leb(1), ...leb(65536)]),
  ...section(3, [1, 0]), // functions: one, of type 0
  ...section(7, [1, ...name("stride"), 0x00, 0]), // exports: "stride" = function 0
  ...section(10, [1, ...leb(STRIDE_BODY.length), ...STRIDE_BODY]), // code
]);

/**
 * Instantiates the writer over a shared `memory` and returns its `stride` export.
 *
 * @example
 * ```ts
 * import { wasmStrideWriter } from "./demo_wasm.ts";
 * const memory = new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true });
 * wasmStrideWriter(memory)(0, 1, 4, 9);
 * console.log([...new Uint8Array(memory.buffer, 0, 5)]); // [9, 9, 9, 9, 0]
 * ```
 */
export function wasmStrideWriter(memory: WebAssembly.Memory): StrideWriter {
  const instance = new WebAssembly.Instance(new WebAssembly.Module(WASM_STRIDE_BYTES), { env: { memory } });
  return instance.exports.stride as StrideWriter;
}
