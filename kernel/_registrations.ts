/**
 * What a `Userfaultfd` knows of the ranges registered on it: the registrations
 * it made, cut back by `unregister()` and by unmap events, moved by remap
 * events, and checked for overlap before a new `register()` (the kernel would
 * silently merge or refuse less precisely). When the record disagrees with a
 * new registration, `/proc/self/smaps` decides whether the old one is still
 * there. Internal.
 *
 * @example
 * ```ts
 * import { Registrations } from "./_registrations.ts";
 * const r = new Registrations();
 * r.add(0x10000n, 0x14000n, 2n);
 * r.unmapped(0x11000n, 0x12000n);
 * console.log(r.list()); // [{ start: 65536n, end: 69632n, mode: "wp" }, { start: 73728n, end: 81920n, mode: "wp" }]
 * ```
 *
 * @module
 */

import * as libc from "../ffi/_libc.ts";
import { UFFDIO_REGISTER_MODE_MINOR, UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP } from "../ffi/uapi.ts";
import { ERRNO, invalid } from "./errors.ts";

interface Registration {
  start: bigint;
  end: bigint;
  mode: bigint;
}

/** `missing+wp`: a registration mode mask in words. */
export function describeMode(mode: bigint): string {
  const names = [];
  if (mode & UFFDIO_REGISTER_MODE_MISSING) names.push("missing");
  if (mode & UFFDIO_REGISTER_MODE_WP) names.push("wp");
  if (mode & UFFDIO_REGISTER_MODE_MINOR) names.push("minor");
  return names.join("+");
}

/** The registrations of one userfaultfd, as far as it knows them. */
export class Registrations {
  readonly #registrations: Registration[] = [];

  /** The registrations, with their modes in words. */
  list(): { start: bigint; end: bigint; mode: string }[] {
    return this.#registrations.map((r) => ({ start: r.start, end: r.end, mode: describeMode(r.mode) }));
  }

  /** Records a registration the kernel accepted. */
  add(start: bigint, end: bigint, mode: bigint): void {
    this.#registrations.push({ start, end, mode });
  }

  /** Whether `[start, end)` overlaps a registration. */
  overlaps(start: bigint, end: bigint): boolean {
    return this.#registrations.some((r) => r.start < end && start < r.end);
  }

  /** Whether `[start, end)` lies wholly in ranges registered here (one registration or adjacent ones). */
  covers(start: bigint, end: bigint): boolean {
    let at = start;
    for (;;) {
      const r = this.#registrations.find((r) => r.start <= at && at < r.end);
      if (r === undefined) return false;
      if (r.end >= end) return true;
      at = r.end;
    }
  }

  /** Forgets everything (the userfaultfd is closed). */
  clear(): void {
    this.#registrations.length = 0;
  }

  /**
   * Throws `EBUSY` when `[start, end)` overlaps a registration that is still there;
   * forgets the parts of old registrations whose mapping went away meanwhile.
   */
  refuseOverlap(start: bigint, end: bigint, operation: string): void {
    const clash = this.#registrations.find((r) => r.start < end && start < r.end);
    if (!clash) return;
    // Only the part that overlaps matters: the rest of an old registration may be gone while this part is not,
    // or the other way round (a MAP_FIXED mapping over part of it).
    const overlapStart = clash.start > start ? clash.start : start;
    const overlapEnd = clash.end < end ? clash.end : end;
    if (!stillRegistered(overlapStart, overlapEnd)) {
      // The mapping there went away (munmap, or a new mapping over it, without EVENT_UNMAP): forget that part.
      this.unmapped(overlapStart, overlapEnd);
      return this.refuseOverlap(start, end, operation);
    }
    throw invalid(
      operation,
      `overlaps [0x${clash.start.toString(16)}, 0x${clash.end.toString(16)}) already registered ` +
        `(${describeMode(clash.mode)}) on this userfaultfd; unregister it first`,
      { start, len: end - start },
      ERRNO.EBUSY,
    );
  }

  /** `[start, end)` is no longer registered (unregistered, or unmapped). */
  unmapped(start: bigint, end: bigint): void {
    const kept: Registration[] = [];
    for (const r of this.#registrations) {
      if (r.end <= start || r.start >= end) kept.push(r);
      else {
        if (r.start < start) kept.push({ start: r.start, end: start, mode: r.mode });
        if (r.end > end) kept.push({ start: end, end: r.end, mode: r.mode });
      }
    }
    this.#registrations.splice(0, this.#registrations.length, ...kept);
  }

  /** `length` bytes moved from `from` to `to` (`mremap`): so did their registrations. */
  moved(from: bigint, to: bigint, length: bigint): void {
    const moved = this.#registrations.filter((r) => r.start < from + length && from < r.end);
    this.unmapped(from, from + length);
    for (const r of moved) {
      const s = r.start > from ? r.start : from;
      const e = r.end < from + length ? r.end : from + length;
      this.#registrations.push({ start: s - from + to, end: e - from + to, mode: r.mode });
    }
  }
}

/**
 * Whether `/proc/self/smaps` still shows a userfaultfd registration (`um`, `uw` or
 * `ui` in VmFlags) somewhere in `[start, end)`. Used only when our own record of
 * registrations disagrees with a new one, to tell a real overlap from a mapping
 * that was unmapped behind our back. Unreadable smaps counts as registered.
 */
function stillRegistered(start: bigint, end: bigint): boolean {
  const smaps = libc.readTextFile("/proc/self/smaps");
  if (typeof smaps !== "string") return true;
  let inside = false;
  for (const line of smaps.split("\n")) {
    const header = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (header) {
      const s = BigInt(`0x${header[1]}`);
      const e = BigInt(`0x${header[2]}`);
      inside = s < end && start < e;
    } else if (inside && line.startsWith("VmFlags:")) {
      if (/ (um|uw|ui)\b/.test(line)) return true;
    }
  }
  return false;
}
