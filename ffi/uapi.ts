/**
 * The userfaultfd and PAGEMAP_SCAN kernel interface as typed constants: every
 * `UFFD_FEATURE_*` bit with the kernel release that added it, every `UFFDIO_*`
 * ioctl and mode flag, event codes, page-fault flags and `PAGE_IS_*`
 * categories. Names follow `include/uapi/linux/userfaultfd.h` and
 * `include/uapi/linux/fs.h`; numbers are the same on x86_64 and aarch64.
 *
 * This module holds data only: no FFI, no I/O. The names of the bits in a mask
 * (`featureNames`, `categoryMask`, …) are in `kernel/names.ts`.
 *
 * @example
 * ```ts
 * import { FEATURES, UFFD_FEATURE_WP_ASYNC } from "@uffd/uffd";
 * const wpAsync = FEATURES.find((f) => f.name === "WP_ASYNC")!;
 * console.log(wpAsync.bit, wpAsync.since, UFFD_FEATURE_WP_ASYNC); // 15 "6.7" 32768n
 * ```
 *
 * @module
 */

/** `UFFD_API`: the only API version the kernel knows (`struct uffdio_api.api`). */
export const UFFD_API = 0xaan;

/** `UFFD_USER_MODE_ONLY`: a userfaultfd flag that only handles faults taken in user mode (Linux 5.11). */
export const UFFD_USER_MODE_ONLY = 1;

/** `USERFAULTFD_IOC_NEW`: the `/dev/userfaultfd` ioctl that returns a new userfaultfd (Linux 6.1). */
export const USERFAULTFD_IOC_NEW = 0xaa00n;

/** The ioctl type byte of every `UFFDIO_*` ioctl. */
export const UFFDIO = 0xaa;

// ---------------------------------------------------------------------------
// Features

/** The name of a `UFFD_FEATURE_*` bit, without the prefix. */
export type Feature =
  | "PAGEFAULT_FLAG_WP"
  | "EVENT_FORK"
  | "EVENT_REMAP"
  | "EVENT_REMOVE"
  | "MISSING_HUGETLBFS"
  | "MISSING_SHMEM"
  | "EVENT_UNMAP"
  | "SIGBUS"
  | "THREAD_ID"
  | "MINOR_HUGETLBFS"
  | "MINOR_SHMEM"
  | "EXACT_ADDRESS"
  | "WP_HUGETLBFS_SHMEM"
  | "WP_UNPOPULATED"
  | "POISON"
  | "WP_ASYNC"
  | "MOVE";

/** One `UFFD_FEATURE_*` bit: its name, bit number, mask, the release that added it and what it does. */
export interface FeatureInfo {
  /** The name without `UFFD_FEATURE_`. */
  readonly name: Feature;
  /** Bit number in `uffdio_api.features`. */
  readonly bit: number;
  /** `1n << bit`. */
  readonly mask: bigint;
  /** The mainline Linux release that introduced it. */
  readonly since: string;
  /** One line on what it means. */
  readonly description: string;
}

function feature(name: Feature, bit: number, since: string, description: string): FeatureInfo {
  return Object.freeze({ name, bit, mask: 1n << BigInt(bit), since, description });
}

/**
 * Every `UFFD_FEATURE_*` bit in mainline through Linux 6.18, in bit order.
 * Nothing above bit 16 has a meaning here.
 *
 * @example
 * ```ts
 * import { FEATURES } from "@uffd/uffd";
 * for (const f of FEATURES) console.log(f.bit, f.name, f.since);
 * ```
 */
export const FEATURES: readonly FeatureInfo[] = Object.freeze([
  feature("PAGEFAULT_FLAG_WP", 0, "4.3", "write-protect faults (UFFDIO_REGISTER_MODE_WP works from 5.7)"),
  feature("EVENT_FORK", 1, "4.11", "fork events carry a userfaultfd for the child (needs CAP_SYS_PTRACE)"),
  feature("EVENT_REMAP", 2, "4.11", "mremap events report moved ranges"),
  feature("EVENT_REMOVE", 3, "4.11", "MADV_DONTNEED/MADV_REMOVE events report zapped ranges"),
  feature("MISSING_HUGETLBFS", 4, "4.11", "missing faults on hugetlbfs (advertising only)"),
  feature("MISSING_SHMEM", 5, "4.11", "missing faults on shmem (advertising only)"),
  feature("EVENT_UNMAP", 6, "4.11", "munmap events report unmapped ranges"),
  feature("SIGBUS", 7, "4.14", "missing faults raise SIGBUS instead of a message"),
  feature("THREAD_ID", 8, "4.14", "page-fault messages carry the faulting thread id"),
  feature("MINOR_HUGETLBFS", 9, "5.13", "minor faults on hugetlbfs (advertising only)"),
  feature("MINOR_SHMEM", 10, "5.14", "minor faults on shmem (advertising only)"),
  feature("EXACT_ADDRESS", 11, "5.18", "fault addresses are not masked to the page"),
  feature("WP_HUGETLBFS_SHMEM", 12, "5.19", "write-protect on hugetlbfs and shmem (advertising only)"),
  feature("WP_UNPOPULATED", 13, "6.4", "write-protect marks never-populated anonymous pages too"),
  feature("POISON", 14, "6.6", "UFFDIO_POISON marks pages so that touching them raises SIGBUS"),
  feature("WP_ASYNC", 15, "6.7", "the kernel resolves write-protect faults itself; PAGEMAP_SCAN reports them"),
  feature("MOVE", 16, "6.8", "UFFDIO_MOVE moves pages instead of copying them"),
]);

/** Bit masks by feature name, e.g. `FEATURE_MASK.WP_ASYNC === 1n << 15n`. */
export const FEATURE_MASK: Readonly<Record<Feature, bigint>> = Object.freeze(
  Object.fromEntries(FEATURES.map((f) => [f.name, f.mask])) as Record<Feature, bigint>,
);

/**
 * Feature names as constants, so that `Feature.WP_ASYNC` reads like the kernel's `UFFD_FEATURE_WP_ASYNC`.
 *
 * @example
 * ```ts
 * import { Feature, Userfaultfd } from "@uffd/uffd";
 * using uffd = Userfaultfd.open({ require: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED] });
 * console.log(uffd.features.has(Feature.WP_ASYNC));
 * ```
 */
export const Feature: { readonly [K in Feature]: K } = Object.freeze(
  Object.fromEntries(FEATURES.map((f) => [f.name, f.name])) as { [K in Feature]: K },
);

/** `UFFD_FEATURE_PAGEFAULT_FLAG_WP` */
export const UFFD_FEATURE_PAGEFAULT_FLAG_WP: bigint = 1n << 0n;
/** `UFFD_FEATURE_EVENT_FORK` */
export const UFFD_FEATURE_EVENT_FORK: bigint = 1n << 1n;
/** `UFFD_FEATURE_EVENT_REMAP` */
export const UFFD_FEATURE_EVENT_REMAP: bigint = 1n << 2n;
/** `UFFD_FEATURE_EVENT_REMOVE` */
export const UFFD_FEATURE_EVENT_REMOVE: bigint = 1n << 3n;
/** `UFFD_FEATURE_MISSING_HUGETLBFS` */
export const UFFD_FEATURE_MISSING_HUGETLBFS: bigint = 1n << 4n;
/** `UFFD_FEATURE_MISSING_SHMEM` */
export const UFFD_FEATURE_MISSING_SHMEM: bigint = 1n << 5n;
/** `UFFD_FEATURE_EVENT_UNMAP` */
export const UFFD_FEATURE_EVENT_UNMAP: bigint = 1n << 6n;
/** `UFFD_FEATURE_SIGBUS` */
export const UFFD_FEATURE_SIGBUS: bigint = 1n << 7n;
/** `UFFD_FEATURE_THREAD_ID` */
export const UFFD_FEATURE_THREAD_ID: bigint = 1n << 8n;
/** `UFFD_FEATURE_MINOR_HUGETLBFS` */
export const UFFD_FEATURE_MINOR_HUGETLBFS: bigint = 1n << 9n;
/** `UFFD_FEATURE_MINOR_SHMEM` */
export const UFFD_FEATURE_MINOR_SHMEM: bigint = 1n << 10n;
/** `UFFD_FEATURE_EXACT_ADDRESS` */
export const UFFD_FEATURE_EXACT_ADDRESS: bigint = 1n << 11n;
/** `UFFD_FEATURE_WP_HUGETLBFS_SHMEM` */
export const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: bigint = 1n << 12n;
/** `UFFD_FEATURE_WP_UNPOPULATED` */
export const UFFD_FEATURE_WP_UNPOPULATED: bigint = 1n << 13n;
/** `UFFD_FEATURE_POISON` */
export const UFFD_FEATURE_POISON: bigint = 1n << 14n;
/** `UFFD_FEATURE_WP_ASYNC` */
export const UFFD_FEATURE_WP_ASYNC: bigint = 1n << 15n;
/** `UFFD_FEATURE_MOVE` */
export const UFFD_FEATURE_MOVE: bigint = 1n << 16n;

/** Every feature bit mainline defines through 6.18 (`0x1ffff`). */
export const UFFD_KNOWN_FEATURES: bigint = (1n << 17n) - 1n;

// ---------------------------------------------------------------------------
// Ioctls

/** The name of a `UFFDIO_*` ioctl, without the prefix. */
export type Ioctl =
  | "REGISTER"
  | "UNREGISTER"
  | "WAKE"
  | "COPY"
  | "ZEROPAGE"
  | "MOVE"
  | "WRITEPROTECT"
  | "CONTINUE"
  | "POISON"
  | "API";

/** An ioctl's number (`_UFFDIO_*`, the bit in `ioctls` masks), request value and argument size. */
export interface IoctlInfo {
  /** The name without `UFFDIO_`. */
  readonly name: Ioctl;
  /** `_UFFDIO_<name>`: the ioctl number; `ioctls` masks hold `1n << number`. */
  readonly number: number;
  /** The request value passed to `ioctl(2)`. */
  readonly request: bigint;
  /** Size of the argument struct in bytes. */
  readonly size: number;
}

function ioctl(name: Ioctl, number: number, request: bigint, size: number): IoctlInfo {
  return Object.freeze({ name, number, request, size });
}

/** `UFFDIO_REGISTER`: `_IOWR(0xAA, 0x00, struct uffdio_register)` */
export const UFFDIO_REGISTER = 0xc020aa00n;
/** `UFFDIO_UNREGISTER`: `_IOR(0xAA, 0x01, struct uffdio_range)` */
export const UFFDIO_UNREGISTER = 0x8010aa01n;
/** `UFFDIO_WAKE`: `_IOR(0xAA, 0x02, struct uffdio_range)` */
export const UFFDIO_WAKE = 0x8010aa02n;
/** `UFFDIO_COPY`: `_IOWR(0xAA, 0x03, struct uffdio_copy)` */
export const UFFDIO_COPY = 0xc028aa03n;
/** `UFFDIO_ZEROPAGE`: `_IOWR(0xAA, 0x04, struct uffdio_zeropage)` */
export const UFFDIO_ZEROPAGE = 0xc020aa04n;
/** `UFFDIO_MOVE`: `_IOWR(0xAA, 0x05, struct uffdio_move)` */
export const UFFDIO_MOVE = 0xc028aa05n;
/** `UFFDIO_WRITEPROTECT`: `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)` */
export const UFFDIO_WRITEPROTECT = 0xc018aa06n;
/** `UFFDIO_CONTINUE`: `_IOWR(0xAA, 0x07, struct uffdio_continue)` */
export const UFFDIO_CONTINUE = 0xc020aa07n;
/** `UFFDIO_POISON`: `_IOWR(0xAA, 0x08, struct uffdio_poison)` */
export const UFFDIO_POISON = 0xc020aa08n;
/** `UFFDIO_API`: `_IOWR(0xAA, 0x3F, struct uffdio_api)` */
export const UFFDIO_API = 0xc018aa3fn;

/**
 * Every `UFFDIO_*` ioctl with its number, request value and argument size.
 *
 * @example
 * ```ts
 * import { IOCTLS } from "@uffd/uffd";
 * console.log(IOCTLS.find((i) => i.name === "COPY")!.request.toString(16)); // "c028aa03"
 * ```
 */
export const IOCTLS: readonly IoctlInfo[] = Object.freeze([
  ioctl("REGISTER", 0x00, UFFDIO_REGISTER, 32),
  ioctl("UNREGISTER", 0x01, UFFDIO_UNREGISTER, 16),
  ioctl("WAKE", 0x02, UFFDIO_WAKE, 16),
  ioctl("COPY", 0x03, UFFDIO_COPY, 40),
  ioctl("ZEROPAGE", 0x04, UFFDIO_ZEROPAGE, 32),
  ioctl("MOVE", 0x05, UFFDIO_MOVE, 40),
  ioctl("WRITEPROTECT", 0x06, UFFDIO_WRITEPROTECT, 24),
  ioctl("CONTINUE", 0x07, UFFDIO_CONTINUE, 32),
  ioctl("POISON", 0x08, UFFDIO_POISON, 32),
  ioctl("API", 0x3f, UFFDIO_API, 24),
]);

/** `UFFDIO_REGISTER_MODE_MISSING`: report faults on missing pages. */
export const UFFDIO_REGISTER_MODE_MISSING = 1n;
/** `UFFDIO_REGISTER_MODE_WP`: report writes to write-protected pages. */
export const UFFDIO_REGISTER_MODE_WP = 2n;
/** `UFFDIO_REGISTER_MODE_MINOR`: report faults on pages in the page cache but not mapped (shmem, hugetlbfs). */
export const UFFDIO_REGISTER_MODE_MINOR = 4n;

/** `UFFDIO_COPY_MODE_DONTWAKE` */
export const UFFDIO_COPY_MODE_DONTWAKE = 1n;
/** `UFFDIO_COPY_MODE_WP`: the copied page stays write-protected. */
export const UFFDIO_COPY_MODE_WP = 2n;
/** `UFFDIO_ZEROPAGE_MODE_DONTWAKE` */
export const UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1n;
/** `UFFDIO_WRITEPROTECT_MODE_WP`: protect (otherwise unprotect). */
export const UFFDIO_WRITEPROTECT_MODE_WP = 1n;
/** `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`: unprotect without waking waiters. */
export const UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 2n;
/** `UFFDIO_CONTINUE_MODE_DONTWAKE` */
export const UFFDIO_CONTINUE_MODE_DONTWAKE = 1n;
/** `UFFDIO_CONTINUE_MODE_WP`: map the page write-protected (Linux 6.4). */
export const UFFDIO_CONTINUE_MODE_WP = 2n;
/** `UFFDIO_POISON_MODE_DONTWAKE` */
export const UFFDIO_POISON_MODE_DONTWAKE = 1n;
/** `UFFDIO_MOVE_MODE_DONTWAKE` */
export const UFFDIO_MOVE_MODE_DONTWAKE = 1n;
/** `UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES`: holes in the source are skipped instead of failing with ENOENT. */
export const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES = 2n;

// ---------------------------------------------------------------------------
// Messages

/** `UFFD_EVENT_PAGEFAULT` */
export const UFFD_EVENT_PAGEFAULT = 0x12;
/** `UFFD_EVENT_FORK` */
export const UFFD_EVENT_FORK = 0x13;
/** `UFFD_EVENT_REMAP` */
export const UFFD_EVENT_REMAP = 0x14;
/** `UFFD_EVENT_REMOVE` */
export const UFFD_EVENT_REMOVE = 0x15;
/** `UFFD_EVENT_UNMAP` */
export const UFFD_EVENT_UNMAP = 0x16;

/** `UFFD_PAGEFAULT_FLAG_WRITE`: the fault was a write. */
export const UFFD_PAGEFAULT_FLAG_WRITE = 1n;
/** `UFFD_PAGEFAULT_FLAG_WP`: the fault was a write to a write-protected page. */
export const UFFD_PAGEFAULT_FLAG_WP = 2n;
/** `UFFD_PAGEFAULT_FLAG_MINOR`: the page is in the page cache but not mapped. */
export const UFFD_PAGEFAULT_FLAG_MINOR = 4n;

// ---------------------------------------------------------------------------
// PAGEMAP_SCAN (include/uapi/linux/fs.h, Linux 6.7)

/** `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)` on `/proc/<pid>/pagemap`. */
export const PAGEMAP_SCAN = 0xc0606610n;
/** `PM_SCAN_WP_MATCHING`: write-protect the matching pages in the same walk. */
export const PM_SCAN_WP_MATCHING = 1n;
/** `PM_SCAN_CHECK_WPASYNC`: fail with EPERM instead of skipping ranges without async write-protect. */
export const PM_SCAN_CHECK_WPASYNC = 2n;

/** The name of a `PAGE_IS_*` category, without the prefix. */
export type Category =
  | "WPALLOWED"
  | "WRITTEN"
  | "FILE"
  | "PRESENT"
  | "SWAPPED"
  | "PFNZERO"
  | "HUGE"
  | "SOFT_DIRTY"
  | "GUARD";

/** One `PAGE_IS_*` category of PAGEMAP_SCAN. */
export interface CategoryInfo {
  /** The name without `PAGE_IS_`. */
  readonly name: Category;
  /** The category bit. */
  readonly mask: bigint;
  /** The mainline Linux release that introduced it. */
  readonly since: string;
  /** One line on what it means. */
  readonly description: string;
}

function category(name: Category, mask: bigint, since: string, description: string): CategoryInfo {
  return Object.freeze({ name, mask, since, description });
}

/** `PAGE_IS_WPALLOWED` */
export const PAGE_IS_WPALLOWED = 0x1n;
/** `PAGE_IS_WRITTEN` */
export const PAGE_IS_WRITTEN = 0x2n;
/** `PAGE_IS_FILE` */
export const PAGE_IS_FILE = 0x4n;
/** `PAGE_IS_PRESENT` */
export const PAGE_IS_PRESENT = 0x8n;
/** `PAGE_IS_SWAPPED` */
export const PAGE_IS_SWAPPED = 0x10n;
/** `PAGE_IS_PFNZERO` */
export const PAGE_IS_PFNZERO = 0x20n;
/** `PAGE_IS_HUGE` */
export const PAGE_IS_HUGE = 0x40n;
/** `PAGE_IS_SOFT_DIRTY` */
export const PAGE_IS_SOFT_DIRTY = 0x80n;
/** `PAGE_IS_GUARD` */
export const PAGE_IS_GUARD = 0x100n;

/**
 * Every `PAGE_IS_*` category of PAGEMAP_SCAN through Linux 6.18.
 *
 * @example
 * ```ts
 * import { CATEGORIES } from "@uffd/uffd";
 * console.log(CATEGORIES.map((c) => c.name).join(" "));
 * ```
 */
export const CATEGORIES: readonly CategoryInfo[] = Object.freeze([
  category("WPALLOWED", PAGE_IS_WPALLOWED, "6.7", "registered for async write-protect (PM_SCAN_WP_MATCHING allowed)"),
  category("WRITTEN", PAGE_IS_WRITTEN, "6.7", "written since last protected (no uffd-wp bit)"),
  category("FILE", PAGE_IS_FILE, "6.7", "file-backed or shared anonymous"),
  category("PRESENT", PAGE_IS_PRESENT, "6.7", "resident in memory"),
  category("SWAPPED", PAGE_IS_SWAPPED, "6.7", "swapped out (a uffd-wp marker counts too)"),
  category("PFNZERO", PAGE_IS_PFNZERO, "6.7", "mapped to the shared zero page"),
  category("HUGE", PAGE_IS_HUGE, "6.7", "part of a huge page"),
  category("SOFT_DIRTY", PAGE_IS_SOFT_DIRTY, "6.8", "soft-dirty (needs CONFIG_MEM_SOFT_DIRTY)"),
  category("GUARD", PAGE_IS_GUARD, "6.15", "a guard region (MADV_GUARD_INSTALL)"),
]);

/** Every category bit through 6.18 (`0x1ff`). */
export const PAGE_IS_KNOWN: bigint = 0x1ffn;

// ---------------------------------------------------------------------------
// /proc/<pid>/pagemap entries (Documentation/admin-guide/mm/pagemap.rst)

/** Bits 0–54 of a pagemap entry: the page frame number (zero without CAP_SYS_ADMIN) or swap type/offset. */
export const PM_PFN_MASK: bigint = (1n << 55n) - 1n;
/** Bit 55: soft-dirty. */
export const PM_SOFT_DIRTY: bigint = 1n << 55n;
/** Bit 56: exclusively mapped. */
export const PM_MMAP_EXCLUSIVE: bigint = 1n << 56n;
/** Bit 57: uffd-wp write-protected (present, swapped or marker). */
export const PM_UFFD_WP: bigint = 1n << 57n;
/** Bit 58: guard region (Linux 6.15). */
export const PM_GUARD_REGION: bigint = 1n << 58n;
/** Bit 61: file page or shared anonymous. */
export const PM_FILE: bigint = 1n << 61n;
/** Bit 62: swapped. */
export const PM_SWAP: bigint = 1n << 62n;
/** Bit 63: present. */
export const PM_PRESENT: bigint = 1n << 63n;
