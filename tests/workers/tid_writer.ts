/// <reference lib="deno.worker" />
/**
 * A test Worker that knows its OS thread id: `{ type: "tid" }` → `{ tid }`;
 * `{ type: "write", address, offsets, value }` writes `value` at each
 * `address + offset` (each write may block in a fault) → `{ done: true, tid }`.
 */

import { bufferAt, gettid } from "../../ffi/_libc.ts";

type Request = { type: "tid" } | { type: "write"; address: bigint; length: number; offsets: number[]; value: number };

self.onmessage = (e: MessageEvent<Request>) => {
  const request = e.data;
  if (request.type === "tid") {
    self.postMessage({ tid: gettid() });
    return;
  }
  const bytes = new Uint8Array(bufferAt(request.address, request.length));
  for (const offset of request.offsets) bytes[offset] = request.value;
  self.postMessage({ done: true, tid: gettid() });
};
