/**
 * The write-protect semantics matrix, measured on the running kernel: for each
 * memory kind, each scenario (what happened to a page before and after
 * protection) and each mode (which write-protect features were negotiated), does
 * one write to the page raise a fault, and is the page reported written (without
 * write protection) before and after that write — by `PAGEMAP_SCAN`, or before
 * Linux 6.7 by the uffd-wp bit of `/proc/self/pagemap`? It answers the question of the kernel
 * thread behind `UFFD_FEATURE_WP_UNPOPULATED` (which writes does a tracker lose)
 * on this machine instead of from a table.
 *
 * Every cell runs isolated: a fresh mapping, a fresh userfaultfd that negotiates
 * `PAGEFAULT_FLAG_WP` plus only the mode's features (no events), closed after.
 * The write is a one-byte `memset` on another thread (a write-protect fault blocks
 * the writing thread), raced against the userfaultfd on this one; every wait is
 * bounded, and a cell that cannot complete says why.
 *
 * @example
 * ```ts
 * import { losesWrite, measureWpSemantics } from "@uffd/uffd";
 * const matrix = await measureWpSemantics({ memory: ["anon"], modes: ["sync"] });
 * for (const cell of matrix.cells) console.log(cell.scenario, cell.faulted, losesWrite(cell));
 * ```
 *
 * @module
 */

import { kernelRelease } from "./access.ts";
import { UffdError } from "./errors.ts";
import * as libc from "../ffi/_libc.ts";
import { PAGE_SIZE } from "../ffi/_libc.ts";
import { PROT_READ, PROT_WRITE } from "../ffi/linux.ts";
import { hasPagemapScan, pagemapScan } from "./pagemap_scan.ts";
import { readPagemap } from "./pagemap.ts";
import { kernelProfile } from "./profile.ts";
import { pageFloor, type Range } from "./range.ts";
import { Region } from "./region.ts";
import { type Feature, FEATURES } from "../ffi/uapi.ts";
import { Userfaultfd } from "./userfaultfd.ts";

/** The memory a cell protects: private anonymous memory, or a `memfd` mapping (shmem). */
export type WpMemory = "anon" | "shmem";

/** What happened to the page before and after it was write-protected. */
export type WpScenario =
  | "populated"
  | "unpopulated"
  | "zeropage"
  | "zapped"
  | "read-after-protect"
  | "mprotect-roundtrip"
  | "unprotected"
  | "mremap-moved";

/** Which write-protect features the cell's userfaultfd negotiates (besides `PAGEFAULT_FLAG_WP`). */
export type WpMode = "sync" | "sync+unpopulated" | "async" | "async+unpopulated";

/**
 * The memory kinds, in table order.
 *
 * @example
 * ```ts
 * import { WP_MEMORY_KINDS } from "@uffd/uffd";
 * console.log(WP_MEMORY_KINDS.map((m) => m.id)); // ["anon", "shmem"]
 * ```
 */
export const WP_MEMORY_KINDS: readonly { readonly id: WpMemory; readonly description: string }[] = Object.freeze([
  { id: "anon", description: "private anonymous memory" },
  { id: "shmem", description: "a memfd mapping (shared memory)" },
]);

/**
 * The scenarios, in table order, each with what it does to the page.
 *
 * @example
 * ```ts
 * import { WP_SCENARIOS } from "@uffd/uffd";
 * console.log(WP_SCENARIOS.length, WP_SCENARIOS[0].id); // 8 "populated"
 * ```
 */
export const WP_SCENARIOS: readonly { readonly id: WpScenario; readonly description: string }[] = Object.freeze([
  { id: "populated", description: "written before protection" },
  { id: "unpopulated", description: "never touched" },
  { id: "zeropage", description: "only read before protection" },
  { id: "zapped", description: "written before protection, then MADV_DONTNEED after it" },
  { id: "read-after-protect", description: "never touched before protection, read after it" },
  {
    id: "mprotect-roundtrip",
    description: "written before; after protection the range goes PROT_READ, then read-write again",
  },
  { id: "unprotected", description: "written before; after protection that page alone is unprotected" },
  {
    id: "mremap-moved",
    description: "written before; after protection moved by mremap(MREMAP_MAYMOVE|MREMAP_FIXED) into a fresh " +
      "mapping and written at its new address",
  },
]);

/**
 * The modes, in table order: the features each negotiates besides
 * `PAGEFAULT_FLAG_WP`, and whether faults reach user space (`async: false`).
 *
 * @example
 * ```ts
 * import { WP_MODES } from "@uffd/uffd";
 * console.log(WP_MODES.find((m) => m.id === "async")?.features); // ["WP_ASYNC"]
 * ```
 */
export const WP_MODES: readonly {
  readonly id: WpMode;
  readonly features: readonly Feature[];
  readonly async: boolean;
}[] = Object.freeze([
  { id: "sync", features: [], async: false },
  { id: "sync+unpopulated", features: ["WP_UNPOPULATED"], async: false },
  { id: "async", features: ["WP_ASYNC"], async: true },
  { id: "async+unpopulated", features: ["WP_ASYNC", "WP_UNPOPULATED"], async: true },
]);

/** One measured cell of the matrix. */
export interface WpCell {
  /** The memory kind. */
  readonly memory: WpMemory;
  /** The scenario. */
  readonly scenario: WpScenario;
  /** The mode. */
  readonly mode: WpMode;
  /**
   * Sync modes: whether the write raised a write-protect fault that the handler saw.
   * `null` in async modes (the kernel resolves the fault itself) and when the cell
   * could not run.
   */
  readonly faulted: boolean | null;
  /**
   * The page was reported written just before the write: `PAGE_IS_WRITTEN` from
   * `PAGEMAP_SCAN`, or the uffd-wp bit of `/proc/self/pagemap` clear where the kernel has
   * no `PAGEMAP_SCAN` (see `WpMatrix.writtenFrom`; `null`: not measured).
   */
  readonly writtenBefore: boolean | null;
  /** The same, just after the write (`null`: not measured). */
  readonly writtenAfter: boolean | null;
  /**
   * `ok`: measured; `unsupported`: the kernel lacks (or the caller declined) a
   * feature the mode needs; `failed`: the cell could not run or complete.
   */
  readonly status: "ok" | "unsupported" | "failed";
  /** Why the cell is `unsupported` or `failed`; absent when it is `ok`. */
  readonly error?: string;
}

/** Where a cell's "written" comes from (see `WpMatrix.writtenFrom`). */
export type WrittenSource = "PAGEMAP_SCAN" | "pagemap";

/**
 * Where this kernel's "written" answers come from: `PAGEMAP_SCAN`, else the pagemap's
 * uffd-wp bit, else nowhere (`null`).
 */
function writtenSource(): WrittenSource | null {
  if (hasPagemapScan()) return "PAGEMAP_SCAN";
  return kernelProfile().pagemap.uffdWpBit === true ? "pagemap" : null;
}

/** The whole matrix, as `uffd semantics --json` prints it. */
export interface WpMatrix {
  /** `uname -r` of the kernel measured. */
  readonly kernel: string;
  /** `x86_64` or `aarch64`. */
  readonly arch: string;
  /** Base page size. */
  readonly pageSize: number;
  /**
   * Where "written" comes from: `"PAGEMAP_SCAN"` (`PAGE_IS_WRITTEN`, Linux 6.7), `"pagemap"`
   * (the uffd-wp bit of `/proc/self/pagemap` clear, Linux 5.17), or `null` (neither: not measured).
   */
  readonly writtenFrom: WrittenSource | null;
  /** Every cell, memory-major, then scenario, then mode (table order). */
  readonly cells: readonly WpCell[];
  /** The cells whose write a tracker would not learn about (see {@linkcode losesWrite}). */
  readonly lostWrites: readonly { memory: WpMemory; scenario: WpScenario; mode: WpMode; why: string }[];
  /** Wall-clock time of the measurement, in milliseconds. */
  readonly elapsedMs: number;
}

/** Options of {@linkcode measureWpSemantics} and {@linkcode measureWpCell}. */
export interface WpSemanticsOptions {
  /** Memory kinds to measure (default: all). */
  memory?: readonly WpMemory[];
  /** Scenarios to measure (default: all). */
  scenarios?: readonly WpScenario[];
  /** Modes to measure (default: all). */
  modes?: readonly WpMode[];
  /** Treat these features as missing, to see how cells that need them report it. */
  decline?: readonly Feature[];
  /** Bound on each wait (the write, the fault, the wake-up), in milliseconds (default 2000). */
  timeoutMs?: number;
  /** Called after each cell, e.g. for progress. */
  onCell?: (cell: WpCell, done: number, total: number) => void;
}

/** Pages in each cell's mapping; the page under test is `TARGET` (not at an edge). */
const PAGES = 4;
const TARGET = 1;
const WRITE_VALUE = 0x5a;
/** Keeps the reads of the read scenarios observable. */
let readSink = 0;

/**
 * Whether the cell's write is one a tracker would not learn about: a sync-mode
 * write that raised no fault, or an async-mode page not reported written after the
 * write. `null` when the cell did not produce the observation.
 *
 * @example
 * ```ts
 * import { losesWrite } from "@uffd/uffd";
 * const cell = { memory: "anon", scenario: "unpopulated", mode: "sync", faulted: false,
 *   writtenBefore: true, writtenAfter: true, status: "ok" } as const;
 * console.log(losesWrite(cell)); // true
 * ```
 */
export function losesWrite(cell: WpCell): boolean | null {
  if (cell.status !== "ok") return null;
  const mode = WP_MODES.find((m) => m.id === cell.mode);
  if (mode?.async) return cell.writtenAfter === null ? null : !cell.writtenAfter;
  return cell.faulted === null ? null : !cell.faulted;
}

function lostWhy(cell: WpCell): string {
  const mode = WP_MODES.find((m) => m.id === cell.mode);
  return mode?.async
    ? "PAGEMAP_SCAN does not report the page written after the write"
    : "the write went through without a fault";
}

/**
 * Measures every selected cell, one after the other, and returns the matrix.
 * Throws a `UffdError` only when no userfaultfd can be created at all; a cell that
 * cannot run (a missing feature, a kernel refusal, a write that neither faults nor
 * completes in time) says why in its `status` and `error`.
 *
 * @param options Which memory kinds, scenarios and modes to measure, and what to decline.
 * @returns Every cell measured; a cell that could not run says why.
 *
 * @example
 * ```ts
 * import { measureWpSemantics } from "@uffd/uffd";
 * const m = await measureWpSemantics({ memory: ["anon"], scenarios: ["populated"], modes: ["sync", "async"] });
 * console.log(m.cells.map((c) => [c.mode, c.faulted, c.writtenAfter])); // [["sync", true, true], ["async", null, true]]
 * ```
 */
export async function measureWpSemantics(options: WpSemanticsOptions = {}): Promise<WpMatrix> {
  checkOptions(options, "measureWpSemantics");
  const started = performance.now();
  Userfaultfd.supported(); // throws (EPERM, with what to change) when no userfaultfd can be created
  const memories = options.memory ?? WP_MEMORY_KINDS.map((m) => m.id);
  const scenarios = options.scenarios ?? WP_SCENARIOS.map((s) => s.id);
  const modes = options.modes ?? WP_MODES.map((m) => m.id);
  const total = memories.length * scenarios.length * modes.length;
  const cells: WpCell[] = [];
  for (const memory of memories) {
    for (const scenario of scenarios) {
      for (const mode of modes) {
        const cell = await measureWpCell(memory, scenario, mode, options);
        cells.push(cell);
        options.onCell?.(cell, cells.length, total);
      }
    }
  }
  const lostWrites = cells.filter((c) => losesWrite(c) === true).map((c) => ({
    memory: c.memory,
    scenario: c.scenario,
    mode: c.mode,
    why: lostWhy(c),
  }));
  return {
    kernel: kernelRelease(),
    arch: Deno.build.arch,
    pageSize: Region.pageSize,
    writtenFrom: writtenSource(),
    cells,
    lostWrites,
    elapsedMs: Math.round(performance.now() - started),
  };
}

/** Refuses options of the wrong shape before anything is measured (a `TypeError` naming the option). */
function checkOptions(options: unknown, operation: string): void {
  if (options === null || typeof options !== "object") throw new TypeError(`${operation}: options must be an object`);
  const o = options as Record<string, unknown>;
  const lists: [string, string, readonly { readonly id: string }[]][] = [
    ["memory", "memory", WP_MEMORY_KINDS],
    ["scenarios", "scenario", WP_SCENARIOS],
    ["modes", "mode", WP_MODES],
    ["decline", "feature", FEATURES.map((f) => ({ id: f.name }))],
  ];
  for (const [name, what, known] of lists) {
    const list = o[name];
    if (list === undefined) continue;
    if (!Array.isArray(list)) throw new TypeError(`${operation}: ${name} must be a list`);
    for (const id of list) {
      if (!known.some((k) => k.id === id)) throw new TypeError(`${operation}: unknown ${what} ${JSON.stringify(id)}`);
    }
  }
  const timeoutMs = o.timeoutMs;
  if (timeoutMs !== undefined && (typeof timeoutMs !== "number" || !Number.isFinite(timeoutMs) || timeoutMs < 0)) {
    throw new TypeError(`${operation}: timeoutMs must be a non-negative number`);
  }
  if (o.onCell !== undefined && typeof o.onCell !== "function") {
    throw new TypeError(`${operation}: onCell must be a function`);
  }
}

/** Why a mode cannot run here, or `undefined` when it can. */
function unavailable(mode: (typeof WP_MODES)[number], decline: readonly Feature[]): string | undefined {
  const support = Userfaultfd.supported().features;
  const missing = (["PAGEFAULT_FLAG_WP", ...mode.features] as Feature[]).filter((f) =>
    !support.has(f) || decline.includes(f)
  );
  if (missing.length === 0) return undefined;
  const names = (fs: Feature[]) =>
    fs.map((f) => `${f} (Linux ${FEATURES.find((x) => x.name === f)!.since}+)`).join(", ");
  const declined = missing.filter((f) => decline.includes(f));
  const lacking = missing.filter((f) => !decline.includes(f));
  const parts: string[] = [];
  if (declined.length > 0) parts.push(`${names(declined)}, declined by the caller`);
  if (lacking.length > 0) parts.push(`${names(lacking)}, which kernel ${kernelRelease()} lacks`);
  return `needs ${parts.join("; and ")}`;
}

function describe(e: unknown): string {
  if (e instanceof UffdError) return e.message;
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether `promise` settles within `ms` milliseconds (the timer is cleared either way). */
function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), ms));
  return Promise.race([promise.then(() => true, () => true), timeout]).finally(() => clearTimeout(timer));
}

/** Whether the page at `address` is reported written (see `WpCell.writtenBefore`); `null` where nothing says. */
function written(address: bigint): boolean | null {
  const range = { address, length: Region.pageSize };
  switch (writtenSource()) {
    case "PAGEMAP_SCAN":
      return pagemapScan(range, { require: ["WRITTEN"] }).length > 0;
    case "pagemap":
      return !readPagemap(range)[0]!.uffdWp;
    default:
      return null;
  }
}

/** How the one-byte write went. */
interface WriteOutcome {
  /** A page fault reached the userfaultfd (and was resolved by unprotecting its page). */
  faulted: boolean;
  /** The writer finished. */
  completed: boolean;
  /** The writer's promise (still pending when `completed` is false). */
  writer: Promise<unknown>;
  /** What went wrong, if anything. */
  problem?: string;
}

/**
 * Writes one byte at `address` on another thread, and watches the userfaultfd on
 * this one: a fault is recorded and resolved by unprotecting its page (which wakes
 * the writer); a writer that finishes with nothing queued did not fault (a fault
 * would have kept it blocked until resolved).
 */
async function writeOnce(uffd: Userfaultfd, address: bigint, timeoutMs: number): Promise<WriteOutcome> {
  let settled = false;
  let failure: unknown;
  const writer = libc.memsetOffThread(address, WRITE_VALUE, 1n).then(
    () => void (settled = true),
    (e) => void (settled = true, failure = e),
  );
  const deadline = performance.now() + timeoutMs;
  let faulted = false;
  for (;;) {
    const events = uffd.readEvents();
    const fault = events.find((e) => e.type === "pagefault");
    if (fault && fault.type === "pagefault") {
      faulted = true;
      uffd.unprotect({ address: pageFloor(fault.address), length: Region.pageSize });
      break;
    }
    if (events.length > 0) {
      return { faulted, completed: false, writer, problem: `unexpected ${events[0]!.type} event` };
    }
    if (settled) {
      if (uffd.readEvents().length > 0) return { faulted, completed: true, writer, problem: "a late event arrived" };
      break;
    }
    if (performance.now() > deadline) {
      return {
        faulted,
        completed: false,
        writer,
        problem: `the write neither completed nor raised a fault within ${timeoutMs} ms`,
      };
    }
    await sleep(1);
  }
  if (!settled) {
    if (!await settlesWithin(writer, timeoutMs)) {
      return {
        faulted,
        completed: false,
        writer,
        problem: `the writer was not woken within ${timeoutMs} ms of unprotecting the page`,
      };
    }
  }
  if (failure !== undefined) return { faulted, completed: true, writer, problem: describe(failure) };
  return { faulted, completed: true, writer };
}

/**
 * Measures one cell: maps a fresh region (4 pages; page 1 is the one under test),
 * sets the page up, registers the region for write-protect on a fresh userfaultfd
 * with `PAGEFAULT_FLAG_WP` plus the mode's features, protects the whole region,
 * applies the scenario's action, scans, writes one byte from another thread,
 * scans again, and releases everything.
 *
 * @example
 * ```ts
 * import { measureWpCell } from "@uffd/uffd";
 * const cell = await measureWpCell("anon", "unpopulated", "sync+unpopulated");
 * console.log(cell.faulted); // true: WP_UNPOPULATED protects never-touched anonymous pages
 * ```
 */
export async function measureWpCell(
  memory: WpMemory,
  scenario: WpScenario,
  mode: WpMode,
  options: Pick<WpSemanticsOptions, "decline" | "timeoutMs"> = {},
): Promise<WpCell> {
  checkOptions(options, "measureWpCell");
  const modeInfo = WP_MODES.find((m) => m.id === mode);
  if (!modeInfo) throw new TypeError(`unknown mode ${JSON.stringify(mode)}`);
  if (!WP_SCENARIOS.some((s) => s.id === scenario)) throw new TypeError(`unknown scenario ${JSON.stringify(scenario)}`);
  if (!WP_MEMORY_KINDS.some((m) => m.id === memory)) throw new TypeError(`unknown memory ${JSON.stringify(memory)}`);
  const timeoutMs = options.timeoutMs ?? 2000;
  const decline = options.decline ?? [];
  const base = {
    memory,
    scenario,
    mode,
    faulted: null,
    writtenBefore: null,
    writtenAfter: null,
    status: "ok",
  } as const;
  const why = unavailable(modeInfo, decline);
  if (why) return { ...base, status: "unsupported", error: why };

  let mem: Region | undefined;
  let destination: Region | undefined;
  let uffd: Userfaultfd | undefined;
  let pendingWriter: Promise<unknown> | undefined;
  const cell: { -readonly [K in keyof WpCell]: WpCell[K] } = { ...base };
  const fail = (why: string) => {
    cell.status = "failed";
    cell.error = cell.error === undefined ? why : `${cell.error}; ${why}`;
  };
  try {
    mem = Region.map(PAGES * PAGE_SIZE, { memfd: memory === "shmem", name: "uffd-semantics" });
    const page = mem.pages(TARGET);
    if (scenario !== "unpopulated" && scenario !== "zeropage" && scenario !== "read-after-protect") {
      mem.page(TARGET)[0] = 1;
    }
    if (scenario === "zeropage") readSink ^= mem.page(TARGET)[0]!;

    // The write under test is made off-thread and its fault served from here.
    uffd = Userfaultfd.open({
      require: ["PAGEFAULT_FLAG_WP", ...modeInfo.features],
      decline: [...decline],
      writers: "other-threads",
    });
    uffd.register(mem, { wp: true });
    uffd.writeProtect(mem);

    let target: Range = page;
    switch (scenario) {
      case "zapped":
        mem.zap(page);
        break;
      case "read-after-protect":
        readSink ^= mem.page(TARGET)[0]!;
        break;
      case "mprotect-roundtrip":
        mem.protect(PROT_READ);
        mem.protect(PROT_READ | PROT_WRITE);
        break;
      case "unprotected":
        uffd.unprotect(page);
        break;
      case "mremap-moved":
        destination = Region.map(PAGE_SIZE);
        target = { address: mem.movePages(page, destination.address), length: PAGE_SIZE };
        break;
    }

    cell.writtenBefore = written(target.address);
    const outcome = await writeOnce(uffd, target.address, timeoutMs);
    if (!outcome.completed) pendingWriter = outcome.writer;
    if (modeInfo.async) {
      // The kernel resolves the fault itself; one reaching user space is worth saying.
      if (outcome.faulted) {
        cell.faulted = true;
        fail("a write-protect fault reached user space although WP_ASYNC was negotiated");
      }
    } else cell.faulted = outcome.faulted;
    if (outcome.problem) {
      fail(outcome.problem);
      return cell;
    }
    cell.writtenAfter = written(target.address);
    const landed = (destination ?? mem).bytes[destination ? 0 : TARGET * PAGE_SIZE];
    if (landed !== WRITE_VALUE) fail(`the written byte reads back as ${landed}, not ${WRITE_VALUE}`);
    return cell;
  } catch (e) {
    fail(describe(e));
    return cell;
  } finally {
    // Closing the userfaultfd wakes a writer still blocked in a fault; only once it has
    // finished may its mapping go away (a woken writer retries its access).
    uffd?.close();
    let writerDone = true;
    if (pendingWriter) {
      writerDone = await settlesWithin(pendingWriter, timeoutMs);
      if (!writerDone) {
        fail("the writer thread is still blocked after the userfaultfd was closed, so its mapping is left mapped");
      }
    }
    if (writerDone) {
      destination?.unmap();
      mem?.unmap();
    }
  }
}
