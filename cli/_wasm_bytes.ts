/**
 * The few pieces of the WebAssembly binary format that hand-assembled modules need:
 * unsigned LEB128 numbers, sections and names. Used by the demo's writer module
 * ({@link ./demo_wasm.ts}) and by the tests' wasm fixtures.
 *
 * @example
 * ```ts
 * import { leb, name, section } from "./_wasm_bytes.ts";
 * console.log(leb(300), section(1, [0x60]), name("run")); // [ 172, 2 ] [ 1, 1, 96 ] [ 3, 114, 117, 110 ]
 * ```
 *
 * @module
 */

/** Unsigned LEB128, the encoding of every count and index in a module. */
export function leb(n: number): number[] {
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
export function section(id: number, content: number[]): number[] {
  return [id, ...leb(content.length), ...content];
}

/** A name: length, UTF-8 bytes. */
export function name(text: string): number[] {
  const bytes = new TextEncoder().encode(text);
  return [...leb(bytes.length), ...bytes];
}
