/// <reference lib="deno.worker" />
/**
 * A test Worker that writes into raw memory from its own OS thread:
 * `{ address, length, value }` in, `{ done: true }` out once the bytes are written.
 */

import { bufferAt } from "../../ffi/_libc.ts";

self.onmessage = (e: MessageEvent<{ address: bigint; length: number; value: number }>) => {
  const { address, length, value } = e.data;
  new Uint8Array(bufferAt(address, length)).fill(value);
  self.postMessage({ done: true });
};
