/**
 * The names of the bits in the kernel's masks, both ways: `UFFD_FEATURE_*`
 * masks ({@linkcode featureNames}, {@linkcode featureMask}), ioctl bit sets
 * ({@linkcode ioctlNames}) and `PAGE_IS_*` category masks
 * ({@linkcode categoryNames}, {@linkcode categoryMask}). The tables they read
 * are the constants of `ffi/uapi.ts`.
 *
 * @example
 * ```ts
 * import { featureMask, featureNames } from "@uffd/uffd";
 * console.log(featureNames(featureMask(["WP_ASYNC", "MOVE"]))); // ["WP_ASYNC", "MOVE"]
 * ```
 *
 * @module
 */

import { CATEGORIES, type Category, type Feature, FEATURE_MASK, FEATURES, type Ioctl, IOCTLS } from "../ffi/uapi.ts";
import { bigintArg, describe } from "./_validate.ts";

/** A list of names: any iterable but a string (whose characters are not names). */
function iterableArg(names: unknown, operation: string): void {
  if (typeof names !== "object" || names === null || !(Symbol.iterator in names)) {
    throw new TypeError(`${operation}: names must be a list of names, not ${describe(names)}`);
  }
}

/**
 * Names of the known features set in a mask, in bit order; unknown bits are ignored.
 *
 * @example
 * ```ts
 * import { featureNames } from "@uffd/uffd";
 * console.log(featureNames(0x8001n)); // ["PAGEFAULT_FLAG_WP", "WP_ASYNC"]
 * ```
 */
export function featureNames(mask: bigint): Feature[] {
  bigintArg(mask, "featureNames", "mask");
  return FEATURES.filter((f) => (mask & f.mask) !== 0n).map((f) => f.name);
}

/**
 * The mask of a list of feature names.
 *
 * @example
 * ```ts
 * import { featureMask } from "@uffd/uffd";
 * console.log(featureMask(["WP_ASYNC", "WP_UNPOPULATED"]) === 0xa000n); // true
 * ```
 */
export function featureMask(names: Iterable<Feature>): bigint {
  iterableArg(names, "featureMask");
  let mask = 0n;
  for (const name of names) {
    const bit = FEATURE_MASK[name];
    if (bit === undefined) throw new TypeError(`unknown userfaultfd feature: ${String(name)}`);
    mask |= bit;
  }
  return mask;
}

/**
 * Decodes an `ioctls` bit set (from `uffdio_api` or `uffdio_register`) into ioctl names.
 * The bits are ioctl *numbers* (`1 << _UFFDIO_COPY`), not request values.
 *
 * @example
 * ```ts
 * import { ioctlNames } from "@uffd/uffd";
 * console.log(ioctlNames(0x17cn)); // ["WAKE", "COPY", "ZEROPAGE", "MOVE", "WRITEPROTECT", "POISON"]
 * ```
 */
export function ioctlNames(mask: bigint): Ioctl[] {
  bigintArg(mask, "ioctlNames", "mask");
  return IOCTLS.filter((i) => (mask & (1n << BigInt(i.number))) !== 0n).map((i) => i.name);
}

/**
 * Names of the categories set in a mask, in bit order.
 *
 * @example
 * ```ts
 * import { categoryNames } from "@uffd/uffd";
 * console.log(categoryNames(0xan)); // ["WRITTEN", "PRESENT"]
 * ```
 */
export function categoryNames(mask: bigint): Category[] {
  bigintArg(mask, "categoryNames", "mask");
  return CATEGORIES.filter((c) => (mask & c.mask) !== 0n).map((c) => c.name);
}

/**
 * The mask of a list of category names.
 *
 * @example
 * ```ts
 * import { categoryMask } from "@uffd/uffd";
 * console.log(categoryMask(["WRITTEN", "PRESENT"])); // 10n
 * ```
 */
export function categoryMask(names: Iterable<Category>): bigint {
  iterableArg(names, "categoryMask");
  let mask = 0n;
  for (const name of names) {
    const info = CATEGORIES.find((c) => c.name === name);
    if (!info) throw new TypeError(`unknown PAGEMAP_SCAN category: ${String(name)}`);
    mask |= info.mask;
  }
  return mask;
}
