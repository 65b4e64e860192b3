/**
 * The running kernel's profile: the userfaultfd features and the traits that change
 * what the library's answers mean — whether a read fault maps the shared zero page,
 * what `MADV_POPULATE_READ` and `UFFDIO_ZEROPAGE` put there, the huge zero page,
 * the uffd-wp bit of `/proc/<pid>/pagemap`, soft-dirty, which `PAGEMAP_SCAN`
 * queries give right answers, transparent huge pages. Each trait is measured once
 * per process, on memory of the probe's own, and cached; every backend and fallback
 * decides from it rather than from a kernel version or an assumption.
 *
 * Builds of one release differ (one Linux 6.18 build maps no shared zero page on a
 * read fault: reading untouched anonymous memory allocates a zero-filled page), so
 * nothing here is inferred from `uname -r`.
 *
 * @example
 * ```ts
 * import { kernelProfile } from "@uffd/uffd";
 * const profile = kernelProfile();
 * console.log(profile.zeroPage.readFault, profile.untouchedFill); // e.g. true "populate-read"
 * ```
 *
 * @module
 */

import { kernelRelease } from "./access.ts";
import { failure, UffdError } from "./errors.ts";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE, PAGE_SIZE_N } from "../ffi/_libc.ts";
import {
  MADV_DONTNEED,
  MADV_HUGEPAGE,
  MADV_NOHUGEPAGE,
  MADV_POPULATE_READ,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  MFD_CLOEXEC,
  PROT_READ,
  PROT_WRITE,
} from "../ffi/linux.ts";
import { readPagemapRaw, softDirtySupported } from "./pagemap.ts";
import { acceptedCategories, hasPagemapScan, pagemapScan } from "./pagemap_scan.ts";
import { type Category, type Feature, PM_MMAP_EXCLUSIVE, PM_PFN_MASK, PM_PRESENT, PM_UFFD_WP } from "../ffi/uapi.ts";
import { type Origin, Userfaultfd } from "./userfaultfd.ts";

/** What a mechanism put in a page that held nothing: the shared zero page, or a page of its own (zero-filled). */
export type ZeroFill = "zero-page" | "allocates";

/**
 * How the library makes never-touched pages of private anonymous memory carry
 * write protection where `WP_UNPOPULATED` is not used (Linux before 6.4, or declined):
 * - `"populate-read"`: `MADV_POPULATE_READ` maps the shared zero page there (one call, no memory);
 * - `"uffd-zeropage"`: `UFFDIO_ZEROPAGE` on the holes (found in `/proc/self/pagemap`) maps the
 *   shared zero page, on a kernel whose read faults allocate but whose `UFFDIO_ZEROPAGE` does not;
 * - `"populate-allocates"`: neither maps the zero page: `MADV_POPULATE_READ` allocates a
 *   zero-filled page for each of them — correct, but untouched pages then cost memory;
 * - `"none"`: no way without memory or at all (no `MADV_POPULATE_READ`, Linux before 5.14, and no
 *   `UFFDIO_ZEROPAGE` that maps the zero page): the sync backend and a snapshot then need `WP_UNPOPULATED`.
 */
export type UntouchedFill = "populate-read" | "uffd-zeropage" | "populate-allocates" | "none";

/**
 * What a tracker does to pages nobody has touched: leaves them unpopulated (a
 * uffd-wp marker, or nothing at all), maps the shared zero page there (no memory),
 * or — on a kernel where nothing maps the zero page — allocates a zero-filled page
 * for each (they then cost memory).
 */
export type UntouchedPages = "unpopulated" | "zero-page" | "allocated";

/**
 * What never-touched pages cost when they are filled the way `fill` says
 * (`undefined`/`null`: not filled — markers cover them).
 *
 * @example
 * ```ts
 * import { untouchedPages } from "@uffd/uffd";
 * console.log(untouchedPages("uffd-zeropage"), untouchedPages(undefined)); // zero-page unpopulated
 * ```
 */
export function untouchedPages(fill: UntouchedFill | null | undefined): UntouchedPages {
  if (fill === undefined || fill === null) return "unpopulated";
  return fill === "populate-allocates" ? "allocated" : "zero-page";
}

/** The zero-page traits of the running kernel. */
export interface ZeroPageTraits {
  /** A read fault on never-touched private anonymous memory maps the shared zero page (else it allocates a page). */
  readonly readFault: boolean;
  /** What `MADV_POPULATE_READ` maps on never-touched memory (`"unsupported"`: Linux before 5.14). */
  readonly populateRead: ZeroFill | "unsupported";
  /** What `UFFDIO_ZEROPAGE` maps (`"unavailable"`: no userfaultfd could be created to measure it). */
  readonly uffdZeropage: ZeroFill | "unavailable";
  /**
   * A read fault on a 2 MiB-aligned `MADV_HUGEPAGE` range: maps the huge zero page
   * (`"huge-zero-page"`), allocates a huge page (`"allocates"`), or is served by small
   * pages (`"small-pages"`: transparent huge pages off, or none to be had).
   */
  readonly hugeReadFault: "huge-zero-page" | "allocates" | "small-pages";
  /** The page frame number of the shared zero page, when this process may see PFNs (CAP_SYS_ADMIN). */
  readonly zeroPfn: bigint | null;
  /**
   * The first page frame number of the huge zero page, where a read fault maps it and
   * PFNs are visible: its frames are this one and the next `pmdSize / pageSize - 1`
   * (a snapshot or fill that meets them under THP `always` sees zeros, not data).
   */
  readonly hugeZeroPfn: bigint | null;
}

/**
 * Whether a page frame number is one of the zero page's (the shared zero page or a
 * frame of the huge zero page), as this kernel's profile measured them.
 *
 * @param pfn The PFN from a pagemap entry.
 * @param zeroPage The profile's zero-page traits.
 * @param pmdPages Pages in one PMD (512 with 4 KiB pages).
 * @returns `true` for a zero-page frame; `false` when it is not, or PFNs are not known.
 *
 * @example
 * ```ts
 * import { isZeroFrame, kernelProfile } from "@uffd/uffd";
 * const zero = kernelProfile().zeroPage;
 * console.log(zero.zeroPfn === null || isZeroFrame(zero.zeroPfn, zero, 512)); // true
 * ```
 */
export function isZeroFrame(
  pfn: bigint,
  zeroPage: Pick<ZeroPageTraits, "zeroPfn" | "hugeZeroPfn">,
  pmdPages: number,
): boolean {
  if (zeroPage.zeroPfn !== null && pfn === zeroPage.zeroPfn) return true;
  const huge = zeroPage.hugeZeroPfn;
  return huge !== null && pfn >= huge && pfn < huge + BigInt(pmdPages);
}

/** What `PAGEMAP_SCAN` offers here and which of its answers hold. */
export interface PagemapScanTraits {
  /** The ioctl exists (Linux 6.7). */
  readonly available: boolean;
  /** The categories the kernel accepts. */
  readonly categories: readonly Category[];
  /** A zero page (from a read fault or `UFFDIO_ZEROPAGE`) reports `PFNZERO` (`null`: not measured). */
  readonly pfnZero: boolean | null;
  /**
   * The fast path (`category_mask == return_mask == PAGE_IS_WRITTEN`, nothing inverted or
   * any-of) reports exactly the written pages of a known layout (`null`: not measured —
   * no `WP_ASYNC`).
   */
  readonly writtenFastPath: boolean | null;
  /**
   * `WRITTEN` asked with other masks (`WRITTEN|WPALLOWED`, and reported beside `PRESENT`)
   * gives the fast path's answer on the same layout — zapped pages and PMD holes
   * included. Kernels before the July 2026 stable fixes disagree there: the library then
   * only uses the fast path. (`null`: not measured.)
   */
  readonly writtenMasked: boolean | null;
}

/** Transparent huge pages, from `/sys/kernel/mm/transparent_hugepage`. */
export interface ThpTraits {
  /** The selected value of `enabled` (`always`, `madvise`, `never`). */
  readonly enabled: string | null;
  /** The selected value of `defrag`. */
  readonly defrag: string | null;
  /** The selected value of `shmem_enabled`. */
  readonly shmemEnabled: string | null;
  /** `use_zero_page`: whether a read fault may map the huge zero page. */
  readonly useZeroPage: boolean | null;
  /** `hpage_pmd_size` in bytes. */
  readonly pmdSize: number | null;
  /**
   * A write fault can populate pages of a *neighbouring* mapping: two adjacent private
   * anonymous mappings with the same flags merge into one, and a transparent huge page
   * faulted in through one fills the whole 2 MiB block, the other's share included
   * (measured: THP `always`; `madvise` only with `MADV_HUGEPAGE`, which also stops the
   * merge). A region registered for missing faults after such a write finds zero-filled
   * pages it never touched — the "lost data" of a bounce buffer mapped next to it — and
   * a write tracker sees 512 pages change at once. `Region.map` therefore maps private
   * anonymous memory `MADV_NOHUGEPAGE` where this is true (see `MapOptions.thp`).
   * `null`: not measured.
   */
  readonly fillsNeighbours: boolean | null;
}

/** The running kernel, measured: see the module documentation. */
export interface KernelProfile {
  /** `uname -r`. */
  readonly release: string;
  /** `x86_64` or `aarch64`. */
  readonly arch: string;
  /** Base page size in bytes. */
  readonly pageSize: number;
  /** Whether a userfaultfd can be created here, how, and what the kernel offers on it. */
  readonly userfaultfd: {
    readonly available: boolean;
    readonly origin: Origin | null;
    /** The raw `UFFDIO_API` feature mask, in hex (`null` when none could be created). */
    readonly featureMask: string | null;
    readonly features: readonly Feature[];
    /**
     * `UFFDIO_CONTINUE` accepts `UFFDIO_CONTINUE_MODE_WP` (Linux 6.4; no feature bit says so), measured on a
     * memfd page (`null`: no userfaultfd, or no minor faults on shmem to measure it with).
     */
    readonly continueWp: boolean | null;
    /** Why no userfaultfd could be created. */
    readonly error?: string;
  };
  /** Zero-page traits. */
  readonly zeroPage: ZeroPageTraits;
  /** How never-touched pages are made protectable without `WP_UNPOPULATED` (decided from {@linkcode zeroPage}). */
  readonly untouchedFill: UntouchedFill;
  /**
   * How the library reads which pages are protected and which hold data (decided from
   * {@linkcode pagemapScan} and {@linkcode pagemap}): `"pagemap-scan"` where PAGEMAP_SCAN
   * exists and its `PFNZERO` answers hold, else `"pagemap"` — the 64-bit entries of
   * `/proc/<pid>/pagemap` (present, exclusive, PFN, swapped, the uffd-wp bit).
   */
  readonly pageBits: "pagemap-scan" | "pagemap";
  /** `/proc/<pid>/pagemap` traits. */
  readonly pagemap: {
    /** PFNs are visible to this process (CAP_SYS_ADMIN); otherwise they read as 0. */
    readonly pfnVisible: boolean;
    /** Bit 57 (uffd-wp, Linux 5.17) is set on a write-protected page (`null`: no userfaultfd to measure it). */
    readonly uffdWpBit: boolean | null;
  };
  /** Soft-dirty: the `PAGEMAP_SCAN` category is accepted, and tracking really works (`CONFIG_MEM_SOFT_DIRTY`). */
  readonly softDirty: { readonly categoryAccepted: boolean; readonly works: boolean };
  /** `PAGEMAP_SCAN`. */
  readonly pagemapScan: PagemapScanTraits;
  /** Transparent huge pages (`null` when the kernel has none). */
  readonly thp: ThpTraits | null;
}

let cache: KernelProfile | undefined;
/** The decisions of the profile a test may replace ({@linkcode overrideKernelProfile}). */
export type ProfileDecisions = Partial<Pick<KernelProfile, "untouchedFill" | "pageBits">>;
let override: ProfileDecisions | undefined;

/**
 * The running kernel's profile, measured on the first call (a few milliseconds) and
 * cached for the process. It never throws: a trait that cannot be measured says so.
 *
 * @returns The profile, measured on the first call and the same object on every later one.
 *
 * @example
 * ```ts
 * import { kernelProfile } from "@uffd/uffd";
 * const p = kernelProfile();
 * if (!p.zeroPage.readFault) console.log("read faults allocate memory on this kernel");
 * ```
 */
export function kernelProfile(): KernelProfile {
  const measured = cache ??= measure();
  return override === undefined ? measured : Object.freeze({ ...measured, ...override });
}

/**
 * Replaces decisions of the profile for this process (tests use it to force a
 * fallback on a kernel that would not choose it); `undefined` restores the
 * measured profile. Only a choice that does what its name says on this kernel is
 * accepted (`"populate-read"` where `MADV_POPULATE_READ` maps the zero page,
 * `"populate-allocates"` where it allocates, `"uffd-zeropage"` where `UFFDIO_ZEROPAGE`
 * maps the zero page; `pageBits: "pagemap"` everywhere, `"pagemap-scan"` where it works).
 *
 * @example
 * ```ts
 * import { kernelProfile, overrideKernelProfile } from "./profile.ts";
 * overrideKernelProfile({ untouchedFill: "none" }); // as if nothing could fill untouched pages here
 * console.log(kernelProfile().untouchedFill); // "none"
 * overrideKernelProfile(undefined);
 * ```
 */
export function overrideKernelProfile(decisions: ProfileDecisions | undefined): void {
  if (decisions?.pageBits === "pagemap-scan" && (cache ??= measure()).pageBits !== "pagemap-scan") {
    throw new Error("overrideKernelProfile: PAGEMAP_SCAN does not work on this kernel");
  }
  if (decisions?.untouchedFill !== undefined) {
    const z = (cache ??= measure()).zeroPage;
    const works: Record<UntouchedFill, boolean> = {
      "populate-read": z.populateRead === "zero-page",
      "populate-allocates": z.populateRead === "allocates",
      "uffd-zeropage": z.uffdZeropage === "zero-page",
      "none": true,
    };
    if (!works[decisions.untouchedFill]) {
      throw new Error(`overrideKernelProfile: ${decisions.untouchedFill} does not work on this kernel`);
    }
  }
  override = decisions;
}

/** An anonymous private mapping of the probe's own, unmapped by `dispose`. */
function scratch(length: bigint): { address: bigint; [Symbol.dispose](): void } {
  const address = libc.mmap(0n, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0n);
  if (address < 0n) throw failure("mmap", address, { length });
  return { address, [Symbol.dispose]: () => void libc.munmap(address, length) };
}

function entry(address: bigint): bigint {
  return readPagemapRaw({ address, length: PAGE_SIZE_N })[0]!;
}

/** A present page that this process does not map exclusively is the zero page (no fork is in play here). */
function fillOf(raw: bigint): ZeroFill | undefined {
  if ((raw & PM_PRESENT) === 0n) return undefined;
  return (raw & PM_MMAP_EXCLUSIVE) === 0n ? "zero-page" : "allocates";
}

function readByte(address: bigint): void {
  void new Uint8Array(libc.bufferAt(address, 1))[0];
}

function readText(path: string): string | undefined {
  const text = libc.readTextFile(path);
  return typeof text === "string" ? text : undefined;
}

function selected(path: string): string | null {
  const text = readText(path);
  return text === undefined ? null : /\[([^\]]+)\]/.exec(text)?.[1] ?? text.trim();
}

let thpCache: ThpTraits | null | undefined;

/**
 * The transparent-huge-page traits alone ({@linkcode KernelProfile.thp}), measured once
 * per isolate without the rest of the profile (`Region.map` asks for them).
 *
 * @example
 * ```ts
 * import { thpTraits } from "./profile.ts";
 * console.log(thpTraits()?.enabled); // e.g. "madvise"
 * ```
 */
export function thpTraits(): ThpTraits | null {
  if (thpCache === undefined) thpCache = thp();
  return thpCache;
}

function thp(): ThpTraits | null {
  const dir = "/sys/kernel/mm/transparent_hugepage";
  const enabled = selected(`${dir}/enabled`);
  if (enabled === null) return null;
  const pmd = readText(`${dir}/hpage_pmd_size`);
  const zero = readText(`${dir}/use_zero_page`);
  const pmdSize = pmd === undefined ? null : Number(pmd.trim());
  return Object.freeze({
    enabled,
    defrag: selected(`${dir}/defrag`),
    shmemEnabled: selected(`${dir}/shmem_enabled`),
    useZeroPage: zero === undefined ? null : zero.trim() === "1",
    pmdSize,
    fillsNeighbours: pmdSize ? fillsNeighbours(pmdSize) : null,
  });
}

/**
 * Two adjacent private anonymous mappings whose boundary lies in the middle of a
 * PMD-aligned block; a write to the first, in that block: are pages of the second
 * present afterwards? (See `ThpTraits.fillsNeighbours`.)
 */
function fillsNeighbours(pmd: number): boolean | null {
  const PMD = BigInt(pmd);
  const flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  const reserve = libc.mmap(0n, 3n * PMD, PROT_READ | PROT_WRITE, flags, -1, 0n);
  if (reserve < 0n) return null;
  try {
    const block = (reserve + PMD - 1n) / PMD * PMD; // a whole aligned block inside the reservation
    const boundary = block + PMD / 2n;
    // Two mappings made one by one (MAP_FIXED over the reservation): [reserve, boundary) and [boundary, end).
    const end = reserve + 3n * PMD;
    if (libc.mmap(reserve, boundary - reserve, PROT_READ | PROT_WRITE, flags | MAP_FIXED, -1, 0n) !== reserve) {
      return null;
    }
    if (libc.mmap(boundary, end - boundary, PROT_READ | PROT_WRITE, flags | MAP_FIXED, -1, 0n) !== boundary) {
      return null;
    }
    new Uint8Array(libc.bufferAt(block, 1))[0] = 1; // in the first mapping, in the shared block
    return (entry(boundary) & PM_PRESENT) !== 0n;
  } finally {
    libc.munmap(reserve, 3n * PMD);
  }
}

function measure(): KernelProfile {
  let support: ReturnType<typeof Userfaultfd.supported> | undefined;
  let error: string | undefined;
  try {
    support = Userfaultfd.supported();
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
  }
  const has = (f: Feature) => support?.features.has(f) === true;
  const huge = thpTraits();

  // A read fault, and what it mapped.
  let readFault = true;
  let zeroPfn: bigint | null = null;
  {
    using m = scratch(PAGE_SIZE_N);
    libc.madvise(m.address, PAGE_SIZE_N, MADV_NOHUGEPAGE);
    readByte(m.address);
    const raw = entry(m.address);
    readFault = fillOf(raw) !== "allocates";
    if (readFault && (raw & PM_PFN_MASK) !== 0n) zeroPfn = raw & PM_PFN_MASK;
  }
  let populateRead: ZeroPageTraits["populateRead"] = "unsupported";
  {
    using m = scratch(PAGE_SIZE_N);
    libc.madvise(m.address, PAGE_SIZE_N, MADV_NOHUGEPAGE);
    if (libc.madvise(m.address, PAGE_SIZE_N, MADV_POPULATE_READ) === 0) {
      populateRead = fillOf(entry(m.address)) ?? "allocates";
    }
  }
  let uffdZeropage: ZeroPageTraits["uffdZeropage"] = "unavailable";
  let uffdWpBit: boolean | null = null;
  if (support !== undefined) {
    try {
      using m = scratch(2n * PAGE_SIZE_N);
      // Nobody writes the protected page: it is only read afterwards.
      using uffd = Userfaultfd.open({ features: ["PAGEFAULT_FLAG_WP"], writers: "other-threads" });
      const zero = { address: m.address, length: PAGE_SIZE_N };
      uffd.register(zero, { missing: true });
      if (uffd.zeropage(zero) === PAGE_SIZE) {
        const raw = entry(m.address);
        uffdZeropage = fillOf(raw) ?? "allocates";
        if (uffdZeropage === "zero-page" && zeroPfn === null && (raw & PM_PFN_MASK) !== 0n) zeroPfn = raw & PM_PFN_MASK;
      }
      if (uffd.features.has("PAGEFAULT_FLAG_WP")) {
        // A page written before protection; only read afterwards (a write would wait for a handler).
        const page = { address: m.address + PAGE_SIZE_N, length: PAGE_SIZE_N };
        new Uint8Array(libc.bufferAt(page.address, 1))[0] = 1;
        uffd.register(page, { wp: true });
        uffd.writeProtect(page);
        uffdWpBit = (entry(page.address) & PM_UFFD_WP) !== 0n;
      }
    } catch { /* user-mode-only or refused: left unmeasured */ }
  }
  let continueWp: boolean | null = null;
  if (has("MINOR_SHMEM") && has("WP_HUGETLBFS_SHMEM")) {
    // A page in a memfd's page cache (written through one mapping), continued through a second mapping.
    const fd = libc.memfdCreate("uffd-profile", MFD_CLOEXEC);
    const maps: bigint[] = [];
    try {
      if (fd >= 0 && libc.ftruncate(fd, PAGE_SIZE_N) === 0) {
        for (let i = 0; i < 2; i++) {
          const address = libc.mmap(0n, PAGE_SIZE_N, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0n);
          if (address >= 0n) maps.push(address);
        }
      }
      if (maps.length === 2) {
        new Uint8Array(libc.bufferAt(maps[0]!, 1))[0] = 1;
        const alias = { address: maps[1]!, length: PAGE_SIZE_N };
        // Nobody writes the alias: the page is only mapped, protected, and unmapped.
        using uffd = Userfaultfd.open({ require: ["MINOR_SHMEM", "WP_HUGETLBFS_SHMEM"], writers: "other-threads" });
        uffd.register(alias, { minor: true, wp: true });
        try {
          uffd.continue(alias, { wp: true });
          continueWp = true;
        } catch (e) {
          if (!(e instanceof UffdError) || e.code !== "EINVAL") throw e;
          continueWp = false;
        }
      }
    } catch {
      /* refused: left unmeasured */
    } finally {
      for (const address of maps) libc.munmap(address, PAGE_SIZE_N);
      if (fd >= 0) libc.close(fd);
    }
  }
  let hugeReadFault: ZeroPageTraits["hugeReadFault"] = "small-pages";
  let hugeZeroPfn: bigint | null = null;
  const pmd = huge?.pmdSize ?? 0;
  if (huge !== null && huge.enabled !== "never" && pmd > 0) {
    const length = BigInt(2 * pmd);
    using m = scratch(length);
    const aligned = (m.address + BigInt(pmd) - 1n) / BigInt(pmd) * BigInt(pmd);
    libc.madvise(aligned, BigInt(pmd), MADV_HUGEPAGE);
    readByte(aligned);
    const raw = readPagemapRaw({ address: aligned, length: pmd });
    let present = 0;
    for (const e of raw) if ((e & PM_PRESENT) !== 0n) present++;
    if (present === raw.length) hugeReadFault = fillOf(raw[0]!) === "zero-page" ? "huge-zero-page" : "allocates";
    if (hugeReadFault === "huge-zero-page" && (raw[0]! & PM_PFN_MASK) !== 0n) hugeZeroPfn = raw[0]! & PM_PFN_MASK;
  }
  const zeroPage: ZeroPageTraits = Object.freeze({
    readFault,
    populateRead,
    uffdZeropage,
    hugeReadFault,
    zeroPfn,
    hugeZeroPfn,
  });

  const scan = pagemapScanTraits(has("WP_ASYNC") && has("WP_UNPOPULATED"), zeroPage, pmd);
  const pfnVisible = (() => {
    using m = scratch(PAGE_SIZE_N);
    new Uint8Array(libc.bufferAt(m.address, 1))[0] = 1;
    return (entry(m.address) & PM_PFN_MASK) !== 0n;
  })();
  return Object.freeze({
    release: kernelRelease(),
    arch: Deno.build.arch,
    pageSize: PAGE_SIZE,
    userfaultfd: Object.freeze({
      available: support !== undefined,
      origin: support?.origin ?? null,
      featureMask: support ? `0x${support.featureMask.toString(16)}` : null,
      features: Object.freeze(support ? [...support.features] : []),
      continueWp,
      ...(error === undefined ? {} : { error }),
    }),
    zeroPage,
    untouchedFill: decideUntouchedFill(zeroPage, huge),
    pageBits: scan.available && scan.pfnZero !== false ? "pagemap-scan" : "pagemap",
    pagemap: Object.freeze({ pfnVisible, uffdWpBit }),
    softDirty: Object.freeze({
      categoryAccepted: scan.categories.includes("SOFT_DIRTY"),
      works: softDirtySupported(),
    }),
    pagemapScan: scan,
    thp: huge,
  });
}

function decideUntouchedFill(z: ZeroPageTraits, thp: ThpTraits | null): UntouchedFill {
  // THP `always` with a huge zero page: MADV_POPULATE_READ over a whole 2 MiB block maps the huge zero page — one
  // PMD, which the first write anywhere in it turns into 512 allocated pages (measured on 6.1: a snapshot then saved a
  // never-touched 2 MiB as data). UFFDIO_ZEROPAGE maps the small zero page, one PTE per page.
  const hugeZero = thp?.enabled === "always" && z.hugeReadFault === "huge-zero-page";
  if (hugeZero && z.uffdZeropage === "zero-page") return "uffd-zeropage";
  if (z.populateRead === "zero-page") return "populate-read";
  if (z.uffdZeropage === "zero-page") return "uffd-zeropage";
  if (z.populateRead === "allocates") return "populate-allocates";
  return "none";
}

/**
 * Which PAGEMAP_SCAN answers hold, on a layout whose truth is known: page 0 written
 * after protection, page 1 written before it only, page 2 never touched (a marker),
 * page 3 written and then zapped by `MADV_DONTNEED` (its marker is gone: written, the
 * conservative answer), page 4 only read; and, where transparent huge pages are on, a
 * huge page zapped whole after protection (a PMD hole).
 */
function pagemapScanTraits(async: boolean, zero: ZeroPageTraits, pmd: number): PagemapScanTraits {
  const available = hasPagemapScan();
  if (!available) {
    return Object.freeze({ available, categories: [], pfnZero: null, writtenFastPath: null, writtenMasked: null });
  }
  const categories = Object.freeze(acceptedCategories());
  let pfnZero: boolean | null = null;
  if (zero.readFault || zero.uffdZeropage === "zero-page") {
    try {
      using m = scratch(PAGE_SIZE_N);
      if (zero.readFault) readByte(m.address);
      else {
        using uffd = Userfaultfd.open();
        uffd.register({ address: m.address, length: PAGE_SIZE_N }, { missing: true });
        uffd.zeropage({ address: m.address, length: PAGE_SIZE_N });
      }
      pfnZero = pagemapScan({ address: m.address, length: PAGE_SIZE_N }, { require: ["PFNZERO"] }).length === 1;
    } catch { /* left unmeasured */ }
  }
  let writtenFastPath: boolean | null = null;
  let writtenMasked: boolean | null = null;
  if (async) {
    try {
      const hugeHole = pmd > 0;
      const length = BigInt(hugeHole ? 3 * pmd : 8 * PAGE_SIZE);
      using m = scratch(length);
      const base = hugeHole ? (m.address + BigInt(pmd) - 1n) / BigInt(pmd) * BigInt(pmd) : m.address;
      const small = { address: base, length: 5 * PAGE_SIZE };
      const at = (page: number) => base + BigInt(page) * PAGE_SIZE_N;
      const write = (address: bigint) => void (new Uint8Array(libc.bufferAt(address, 1))[0] = 1);
      libc.madvise(base, 5n * PAGE_SIZE_N, MADV_NOHUGEPAGE);
      write(at(0));
      write(at(1));
      write(at(3));
      readByte(at(4));
      const huge = hugeHole ? { address: base + BigInt(pmd), length: pmd } : undefined;
      if (huge) {
        libc.madvise(huge.address, BigInt(pmd), MADV_HUGEPAGE);
        write(huge.address);
      }
      using uffd = Userfaultfd.open({ require: ["WP_ASYNC", "WP_UNPOPULATED"] });
      const range = { address: base, length: huge ? 2 * pmd : small.length };
      uffd.register(range, { wp: true });
      uffd.writeProtect(range);
      write(at(0));
      libc.madvise(at(3), PAGE_SIZE_N, MADV_DONTNEED);
      if (huge) libc.madvise(huge.address, BigInt(pmd), MADV_DONTNEED);
      const pages = (regions: readonly { firstPage: number; pages: number }[]) => {
        const out: number[] = [];
        for (const r of regions) for (let p = r.firstPage; p < r.firstPage + r.pages; p++) out.push(p);
        return out.join(",");
      };
      const expected = pages([{ firstPage: 0, pages: 1 }, { firstPage: 3, pages: 1 }]) +
        (huge ? "," + pages([{ firstPage: pmd / PAGE_SIZE, pages: pmd / PAGE_SIZE }]) : "");
      const fast = pages(pagemapScan(range, { require: ["WRITTEN"], report: ["WRITTEN"] }));
      writtenFastPath = fast === expected;
      const masked = pages(pagemapScan(range, { require: ["WRITTEN", "WPALLOWED"], report: ["WRITTEN"] }));
      const beside = pages(pagemapScan(range, { require: ["WRITTEN"], report: ["WRITTEN", "PRESENT"] }));
      writtenMasked = masked === fast && beside === fast;
    } catch { /* left unmeasured */ }
  }
  return Object.freeze({ available, categories, pfnZero, writtenFastPath, writtenMasked });
}

/** One trait in words: what was measured and what it changes. */
export interface TraitNote {
  /** The trait, as `uffd features` names it. */
  readonly trait: string;
  /** What was measured. */
  readonly value: string;
  /** What it changes in the library's behaviour. */
  readonly effect: string;
}

/**
 * The profile's traits in words, one note each: what was measured and what it
 * changes (`uffd features` prints these).
 *
 * @example
 * ```ts
 * import { kernelProfile, profileNotes } from "@uffd/uffd";
 * for (const n of profileNotes(kernelProfile())) console.log(`${n.trait}: ${n.value} — ${n.effect}`);
 * ```
 */
export function profileNotes(p: KernelProfile): TraitNote[] {
  const z = p.zeroPage;
  const s = p.pagemapScan;
  const notes: TraitNote[] = [];
  notes.push({
    trait: "read fault",
    value: z.readFault ? "maps the shared zero page" : "allocates a zero-filled page",
    effect: z.readFault
      ? "pages only read cost no memory and are told apart from written ones"
      : "pages only read cost memory and look like data: they are saved as data by a base checkpoint or a " +
        "snapshot, and a grown tail is checked by content before its pages are reported written",
  });
  notes.push({
    trait: "MADV_POPULATE_READ",
    value: z.populateRead === "unsupported" ? "unsupported (Linux 5.14+)" : z.populateRead,
    effect: "",
  });
  notes.push({ trait: "UFFDIO_ZEROPAGE", value: z.uffdZeropage, effect: "" });
  const fill: Record<UntouchedFill, string> = {
    "populate-read": "MADV_POPULATE_READ maps the zero page there: no memory used",
    "uffd-zeropage": "UFFDIO_ZEROPAGE maps the zero page on the holes: no memory used",
    "populate-allocates": "MADV_POPULATE_READ allocates a page for each: untouched pages cost memory",
    "none": "impossible: the sync backend and a snapshot need WP_UNPOPULATED here",
  };
  notes.push({
    trait: "untouched pages without WP_UNPOPULATED",
    value: p.untouchedFill,
    effect: fill[p.untouchedFill],
  });
  notes.push({
    trait: "huge read fault",
    value: z.hugeReadFault,
    effect: z.hugeReadFault === "allocates" ? "reading an untouched THP range allocates 2 MiB" : "",
  });
  notes.push({
    trait: "UFFDIO_CONTINUE_MODE_WP",
    value: p.userfaultfd.continueWp === null
      ? "not measured"
      : p.userfaultfd.continueWp
      ? "accepted (6.4+)"
      : "refused",
    effect: p.userfaultfd.continueWp === false ? "a minor fault cannot be resolved write-protected" : "",
  });
  notes.push({
    trait: "pagemap uffd-wp bit",
    value: p.pagemap.uffdWpBit === null ? "not measured" : p.pagemap.uffdWpBit ? "set (5.17+)" : "absent",
    effect: p.pagemap.uffdWpBit === false ? "protection cannot be read back without PAGEMAP_SCAN" : "",
  });
  notes.push({
    trait: "PFNs",
    value: p.pagemap.pfnVisible ? "visible" : "hidden (no CAP_SYS_ADMIN)",
    effect: "",
  });
  notes.push({
    trait: "soft-dirty",
    value: p.softDirty.works ? "works" : p.softDirty.categoryAccepted ? "accepted but never set" : "absent",
    effect: p.softDirty.works ? "the soft-dirty write-watch backend can run" : "no soft-dirty backend",
  });
  const verdict = (v: boolean | null) => v === null ? "not measured" : v ? "exact" : "WRONG";
  notes.push({
    trait: "PAGEMAP_SCAN",
    value: s.available ? `available; PFNZERO ${verdict(s.pfnZero)}` : "absent (Linux 6.7+)",
    effect: s.available ? "" : "no async write watch; data pages are found in /proc/self/pagemap",
  });
  if (s.available) {
    notes.push({
      trait: "PAGEMAP_SCAN WRITTEN",
      value: `fast path ${verdict(s.writtenFastPath)}, other masks ${verdict(s.writtenMasked)}`,
      effect: s.writtenMasked === false ? "written() asks the fast path only" : "",
    });
  }
  if (p.thp) {
    notes.push({
      trait: "transparent huge pages",
      value: `${p.thp.enabled}, defrag ${p.thp.defrag}, shmem ${p.thp.shmemEnabled}`,
      effect: p.thp.enabled === "always" ? "untouched halves of a 2 MiB block may be populated by a write" : "",
    });
    notes.push({
      trait: "THP fills a merged neighbour",
      value: p.thp.fillsNeighbours === null ? "not measured" : p.thp.fillsNeighbours ? "yes" : "no",
      effect: p.thp.fillsNeighbours
        ? "a write can populate pages of an adjacent mapping: Region.map maps private memory MADV_NOHUGEPAGE"
        : "",
    });
  }
  return notes;
}
