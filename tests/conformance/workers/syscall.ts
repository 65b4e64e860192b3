/// <reference lib="deno.worker" />
/**
 * A Worker that makes one memory system call on its own OS thread and reports
 * the result: `madvise`, `munmap` or `mremap` on a range registered with
 * EVENT_REMOVE / EVENT_UNMAP / EVENT_REMAP blocks until the event is read, so
 * the main isolate (which reads it) must not make the call itself.
 *
 * In: `{ op: "madvise", address, length, advice }`, `{ op: "munmap", address, length }`,
 * `{ op: "mremap", address, length, to }`, `{ op: "read", fd, address, length }`.
 * Out: `{ rc }` (a negative errno on failure).
 */

import * as libc from "../../../ffi/_libc.ts";
import { MREMAP_FIXED, MREMAP_MAYMOVE } from "../../../ffi/linux.ts";

type Request =
  | { op: "madvise"; address: bigint; length: bigint; advice: number }
  | { op: "munmap"; address: bigint; length: bigint }
  | { op: "mremap"; address: bigint; length: bigint; to: bigint }
  | { op: "read"; fd: number; address: bigint; length: number };

self.onmessage = (e: MessageEvent<Request>) => {
  const r = e.data;
  let rc: number | bigint;
  switch (r.op) {
    case "madvise":
      rc = libc.madvise(r.address, r.length, r.advice);
      break;
    case "munmap":
      rc = libc.munmap(r.address, r.length);
      break;
    case "mremap":
      rc = libc.mremap(r.address, r.length, r.length, MREMAP_MAYMOVE | MREMAP_FIXED, r.to);
      break;
    case "read":
      rc = libc.read(r.fd, new Uint8Array(libc.bufferAt(r.address, r.length)), r.length);
      break;
  }
  self.postMessage({ rc: typeof rc === "bigint" ? (rc < 0n ? Number(rc) : 0) : rc });
};
