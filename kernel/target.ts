/**
 * The memory the library watches, snapshots, checkpoints and restores into: a
 * {@linkcode MemoryTarget} is a `Region`, an `ArrayBuffer` (or
 * `SharedArrayBuffer`), a typed array or `DataView`, or a `WebAssembly.Memory`.
 * This module is the one place that turns a target into where its bytes are
 * ({@linkcode locateTarget}) and tells what backs them; `WriteWatch`,
 * `Checkpoint`, `CheckpointReader.restore` and `LiveSnapshot` resolve their
 * target here once and pass the span down.
 *
 * @example
 * ```ts
 * import type { MemoryTarget } from "@uffd/uffd";
 * import { locateTarget } from "./target.ts";
 * const target: MemoryTarget = new WebAssembly.Memory({ initial: 1 });
 * console.log(locateTarget(target).length); // 65536
 * ```
 *
 * @module
 */

import { type ExternalMemory, Region, spanOf } from "./region.ts";
import { invalid } from "./errors.ts";
import { readMaps } from "./maps.ts";

/** Memory the library can act on: a `Region`, or memory someone else owns (see `Region.of`). */
export type MemoryTarget = Region | ExternalMemory;

/** Where a target's bytes are right now. */
export interface TargetSpan {
  /** The first byte's address (`0n` when the memory is empty, detached or unmapped). */
  readonly address: bigint;
  /** Length in bytes (0 when the memory is empty, detached or unmapped). */
  readonly length: number;
  /**
   * For an `ArrayBuffer` or a view: the whole buffer's bytes, the memory whose pages
   * surround the target's; `undefined` for a `Region` or a `WebAssembly.Memory`.
   */
  readonly owner: { readonly address: bigint; readonly length: number } | undefined;
}

/** Whether `value` is a {@linkcode MemoryTarget}. */
export function isMemoryTarget(value: unknown): value is MemoryTarget {
  return value instanceof Region || value instanceof WebAssembly.Memory || ArrayBuffer.isView(value) ||
    value instanceof ArrayBuffer ||
    (typeof SharedArrayBuffer !== "undefined" && value instanceof SharedArrayBuffer);
}

/**
 * Refuses anything but a {@linkcode MemoryTarget} with a `TypeError` naming the operation.
 *
 * @throws {TypeError} When `value` is not a memory target.
 */
export function checkTarget(value: unknown, operation: string): asserts value is MemoryTarget {
  if (isMemoryTarget(value)) return;
  throw new TypeError(
    `${operation}: expected a Region, an ArrayBuffer, a SharedArrayBuffer, a typed array, a DataView ` +
      `or a WebAssembly.Memory, not ${value === null ? "null" : typeof value}`,
  );
}

/**
 * Where the target's bytes are now (a `WebAssembly.Memory` moves when it grows).
 * Empty, detached and unmapped memory has length 0; nothing is thrown.
 */
export function locateTarget(target: MemoryTarget): TargetSpan {
  if (target instanceof Region) {
    if (!target.mapped) return { address: 0n, length: 0, owner: undefined };
    return { address: target.address, length: target.length, owner: undefined };
  }
  const { address, length } = spanOf(target);
  if (target instanceof WebAssembly.Memory) return { address, length, owner: undefined };
  return { address, length, owner: ArrayBuffer.isView(target) ? spanOf(target.buffer) : { address, length } };
}

/**
 * The target's bytes, as a `Uint8Array` over them (empty for empty memory).
 *
 * @throws {TypeError} When `target` is not a memory target.
 */
export function imageBytes(target: MemoryTarget): Uint8Array {
  checkTarget(target, "imageBytes");
  if (target instanceof Region) return target.bytes;
  if (!(target instanceof WebAssembly.Memory) && target.byteLength === 0) return new Uint8Array(0);
  return Region.of(target).bytes;
}

/** Whether every mapping under `[start, end)` is private anonymous memory (a `Region` knows without asking). */
export function privateAnonymous(target: MemoryTarget, start: bigint, end: bigint): boolean {
  if (target instanceof Region && target.kind !== "external") return target.kind === "private";
  try {
    const maps = readMaps().filter((m) => m.start < end && start < m.end);
    return maps.length > 0 && maps.every((m) => m.perms[3] === "p" && m.inode === 0);
  } catch {
    return false;
  }
}

/** Whether any mapping under `[start, end)` is shared (`s` in `/proc/self/maps`). */
export function sharedMemory(target: MemoryTarget, start: bigint, end: bigint): boolean {
  if (target instanceof Region && target.kind !== "external") return target.kind !== "private";
  try {
    return readMaps().some((m) => m.start < end && start < m.end && m.perms[3] === "s");
  } catch {
    return false;
  }
}

/**
 * The one rule for restoring an image into memory (`Checkpoint.restore`,
 * `CheckpointReader.restore`, `LazyRegion.open` with a `target`): the target must
 * be at least as long as the image. A longer one takes the image in its first bytes
 * and zeros after it — the state a program had when its memory was that long (a
 * `WebAssembly.Memory` cannot shrink, so rolling back a memory that grew since the
 * image means exactly this). A shorter one is refused, saying how far to grow it.
 *
 * @param operation For the error.
 * @param target The memory restored into.
 * @param targetLength Its length in bytes.
 * @param imageLength The image's length in bytes.
 * @returns The bytes after the image that the restore zeros (0 for a target of the image's length).
 * @throws {UffdError} `EINVAL` (before any system call) for a target shorter than the image.
 *
 * @example
 * ```ts
 * import { restoreRoom } from "./target.ts";
 * const memory = new WebAssembly.Memory({ initial: 3 });
 * console.log(restoreRoom("restore", memory, memory.buffer.byteLength, 2 * 65536)); // 65536
 * ```
 */
export function restoreRoom(
  operation: string,
  target: MemoryTarget,
  targetLength: number,
  imageLength: number,
): number {
  if (targetLength >= imageLength) return targetLength - imageLength;
  const grow = target instanceof WebAssembly.Memory
    ? `: grow() the memory to ${Math.ceil(imageLength / 65536)} wasm pages first`
    : ": restore into memory at least as long as the image (a longer one is zeroed after it)";
  throw invalid(operation, `the target has ${targetLength} bytes; the image has ${imageLength}${grow}`, {
    target: targetLength,
    image: imageLength,
  });
}
