/**
 * A batch of `uffd_msg`s read with one `read(2)` into a buffer allocated once,
 * with allocation-free accessors for the page-fault fields (a fault handler's hot
 * path) and the full typed decoder for the rare address-space events.
 *
 * Addresses are returned as numbers: user-space addresses on x86_64 and aarch64
 * stay below 2^48 (2^57 only for mappings placed above 2^47 on request), far
 * inside the 2^53 a double holds exactly. {@linkcode MessageBatch.address}
 * refuses anything larger instead of rounding it.
 *
 * `uffd_msg` (32 bytes, packed): `event` u8 @0; page fault: `flags` u64 @8,
 * `address` u64 @16, `ptid` u32 @24.
 *
 * @module
 */

import { read } from "./_libc.ts";
import { decodeUffdMsg, SIZEOF_UFFD_MSG, type UffdMsg } from "./_structs.ts";
import { UFFD_EVENT_PAGEFAULT } from "./uapi.ts";

const TWO_32 = 4294967296;
const MAX_HIGH = 0x1fffff; // high word of 2^53 - 1

/** Room for `capacity` messages, filled by {@linkcode MessageBatch.read}. */
export class MessageBatch {
  /** How many messages one read can return. */
  readonly capacity: number;
  /** Messages held after the last read. */
  count = 0;
  readonly #bytes: Uint8Array;
  readonly #words: Uint32Array;

  /** A batch buffer for up to `capacity` messages. */
  constructor(capacity: number) {
    this.capacity = capacity;
    this.#bytes = new Uint8Array(capacity * SIZEOF_UFFD_MSG);
    this.#words = new Uint32Array(this.#bytes.buffer);
  }

  /**
   * Reads as many queued messages as fit: the number read (≥ 1), or `-errno`
   * (`-EAGAIN` on a non-blocking fd with nothing queued).
   */
  read(fd: number): number {
    const got = read(fd, this.#bytes, this.#bytes.byteLength);
    this.count = got > 0 ? (got / SIZEOF_UFFD_MSG) | 0 : 0;
    return got < 0 ? got : this.count;
  }

  /** The `event` code of message `i` (`UFFD_EVENT_*`). */
  event(i: number): number {
    return this.#bytes[i * SIZEOF_UFFD_MSG]!;
  }

  /** The low 32 bits of a page fault's `flags` (`UFFD_PAGEFAULT_FLAG_*` all live there). */
  flags(i: number): number {
    return this.#words[i * 8 + 2]!;
  }

  /** A page fault's address as a number. */
  address(i: number): number {
    const high = this.#words[i * 8 + 5]!;
    if (high > MAX_HIGH) throw new RangeError(`fault address above 2^53 (high word 0x${high.toString(16)})`);
    return high * TWO_32 + this.#words[i * 8 + 4]!;
  }

  /** A page fault's `ptid` (the faulting thread with `THREAD_ID`, otherwise 0). */
  ptid(i: number): number {
    return this.#words[i * 8 + 6]!;
  }

  /**
   * Decodes every message held into parallel arrays, in one loop (allocation-free):
   * `codes[i]` the `event` byte; for page faults `addresses[i]` (a number, `NaN`
   * above 2^53), `flags[i]` (low 32 bits) and `ptids[i]`; for other events those
   * three are left as they were. The arrays need room for `count` entries.
   */
  decodeInto(codes: Uint8Array, addresses: Float64Array, flags: Uint32Array, ptids: Uint32Array): void {
    const bytes = this.#bytes;
    const words = this.#words;
    for (let i = 0, w = 0; i < this.count; i++, w += 8) {
      const code = bytes[w * 4]!;
      codes[i] = code;
      if (code !== UFFD_EVENT_PAGEFAULT) continue;
      const high = words[w + 5]!;
      addresses[i] = high > MAX_HIGH ? NaN : high * TWO_32 + words[w + 4]!;
      flags[i] = words[w + 2]!;
      ptids[i] = words[w + 6]!;
    }
  }

  /** Message `i` decoded into a typed struct (allocates; for events other than page faults). */
  message(i: number): UffdMsg {
    return decodeUffdMsg(this.#bytes, i * SIZEOF_UFFD_MSG);
  }
}
