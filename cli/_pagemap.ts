/**
 * `uffd pagemap <pid|self> [--range A-B]`: the memory map of a process, one line
 * per mapping (VMA) of `/proc/<pid>/maps`, with how many of its pages are present,
 * swapped, file-backed, the shared zero page or part of a huge page, and a
 * residency bar across the mapping. One PAGEMAP_SCAN walk per mapping (the kernel
 * returns runs of pages, never one entry per page), so it stays fast on processes
 * with gigabytes mapped. A mapping PAGEMAP_SCAN refuses (`[vsyscall]`, which lies
 * outside the user address space) is marked unreadable; the rest still print.
 * Before Linux 6.7 (no PAGEMAP_SCAN) the same counts come from the 64-bit entries
 * of `/proc/<pid>/pagemap`, read only for the mappings `/proc/<pid>/smaps` says
 * hold something, and the huge pages from smaps' per-mapping sizes.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type Category,
  hasPagemapScan,
  isZeroFrame,
  kernelProfile,
  type Mapping,
  PAGE_IS_FILE,
  PAGE_IS_HUGE,
  PAGE_IS_PFNZERO,
  PAGE_IS_PRESENT,
  PAGE_IS_SWAPPED,
  pagemapScan,
  type Pid,
  PM_FILE,
  PM_MMAP_EXCLUSIVE,
  PM_PFN_MASK,
  PM_PRESENT,
  PM_SWAP,
  readMaps,
  readPagemapRaw,
  readProcFile,
  Region,
  UffdError,
} from "../mod.ts";
import { bold, bytes, cyan, dim, EXIT, printJson, red, table, UsageError, yellow } from "./_output.ts";

/** Cells in a residency bar. */
export const BAR_CELLS = 32;

/** One mapping's line, as `--json` prints it (addresses as hex strings, counts in base pages). */
export interface VmaReport {
  /** Start address (hex), clipped to `--range`. */
  start: string;
  /** End address (hex, exclusive), clipped to `--range`. */
  end: string;
  /** `rwxp` permissions as in `/proc/<pid>/maps`. */
  perms: string;
  /** The file or pseudo-path (`[heap]`, `[stack]`, `/memfd:…`), or `""`. */
  path: string;
  /** Pages in the (clipped) mapping. */
  pages: number;
  /** Pages resident in memory (`PAGE_IS_PRESENT`). */
  present: number;
  /** Pages swapped out, or holding a swap-like marker such as a uffd-wp marker (`PAGE_IS_SWAPPED`). */
  swapped: number;
  /** Present or swapped pages that are file-backed or shared memory (`PAGE_IS_FILE`). */
  file: number;
  /** Pages mapping the shared zero page (`PAGE_IS_PFNZERO`). */
  zero: number;
  /** Pages mapped by a huge page (THP or hugetlb, `PAGE_IS_HUGE`). */
  huge: number;
  /** Fraction of present pages in each cell of the bar, left to right (at most {@linkcode BAR_CELLS} cells). */
  residency: number[];
  /** Why PAGEMAP_SCAN could not read this mapping (the counts are then 0). */
  error?: string;
}

/** The whole `pagemap` report. */
export interface PagemapReport {
  /** The process id (the CLI's own for `self`). */
  pid: number;
  /** `/proc/<pid>/comm`. */
  command: string;
  /** Base page size; every count is in these pages. */
  pageSize: number;
  /** The `--range` asked for, as hex strings, or `null`. */
  range: { start: string; end: string } | null;
  /** Sums over the readable mappings. */
  totals: {
    mappings: number;
    unreadable: number;
    pages: number;
    present: number;
    swapped: number;
    file: number;
    zero: number;
    huge: number;
  };
  /** One entry per mapping. */
  vmas: VmaReport[];
  /**
   * How the pages were counted: `"PAGEMAP_SCAN"`, or `"pagemap"` — the entries of
   * `/proc/<pid>/pagemap` and `/proc/<pid>/smaps` on a kernel without PAGEMAP_SCAN
   * (where PFNs are hidden, without `CAP_SYS_ADMIN`, a zero page is a present page
   * mapped by more than one process, which may also be a page shared after `fork`).
   */
  source: "PAGEMAP_SCAN" | "pagemap";
  /** Time spent scanning, in milliseconds. */
  elapsedMs: number;
}

const ALL: Category[] = ["PRESENT", "SWAPPED", "FILE", "PFNZERO", "HUGE"];
const ADDRESS_LIMIT = 1n << 64n;

function hex(n: bigint): string {
  return `0x${n.toString(16)}`;
}

/** Parses `<pid|self>`: a positive decimal integer or `self`; anything else is a usage error. */
export function parsePid(text: string | undefined): Pid {
  if (text === undefined) throw new UsageError("which process? give a pid or self");
  if (text === "self") return "self";
  if (!/^[1-9][0-9]*$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw new UsageError(`bad pid ${JSON.stringify(text)}: expected a positive integer or self`);
  }
  return Number(text);
}

function parseAddress(text: string): bigint | undefined {
  const digits = text.replace(/^0x/i, "");
  if (!/^[0-9a-f]{1,16}$/i.test(digits)) return undefined;
  return BigInt(`0x${digits}`);
}

/**
 * Parses `--range A-B`: hexadecimal addresses with or without `0x` (as
 * `/proc/<pid>/maps` prints them), A < B. The range is widened to whole pages.
 */
export function parseRange(text: string): { start: bigint; end: bigint } {
  const m = /^([^-\s]+)-([^-\s]+)$/.exec(text.trim());
  const start = m ? parseAddress(m[1]!) : undefined;
  const end = m ? parseAddress(m[2]!) : undefined;
  if (start === undefined || end === undefined) {
    throw new UsageError(
      `bad range ${JSON.stringify(text)}: expected hex addresses A-B, e.g. 0x7f0000000000-0x7f0000100000`,
    );
  }
  if (start >= end) throw new UsageError(`bad range ${JSON.stringify(text)}: the start must be below the end`);
  const page = BigInt(Region.pageSize);
  const endUp = (end + page - 1n) / page * page;
  return { start: start / page * page, end: endUp >= ADDRESS_LIMIT ? ADDRESS_LIMIT - page : endUp };
}

/**
 * Counts one mapping from one PAGEMAP_SCAN walk: the regions it returns (runs of
 * pages with the same categories) are summed per category and spread over the
 * residency bar's cells.
 */
export function scanVma(start: bigint, end: bigint, pid: Pid): Omit<VmaReport, "perms" | "path" | "start" | "end"> {
  const PAGE_SIZE_N = BigInt(Region.pageSize);
  const pages = Number((end - start) / PAGE_SIZE_N);
  const cells = Math.min(BAR_CELLS, pages);
  const presentInCell = new Array<number>(cells).fill(0);
  const counts = { present: 0, swapped: 0, file: 0, zero: 0, huge: 0 };
  const regions = pagemapScan({ address: start, length: end - start }, { pid, anyOf: ALL, report: ALL });
  for (const r of regions) {
    const n = r.pages;
    const c = r.categories;
    if (c & PAGE_IS_SWAPPED) counts.swapped += n;
    if (c & PAGE_IS_FILE) counts.file += n;
    if (c & PAGE_IS_PFNZERO) counts.zero += n;
    if (c & PAGE_IS_HUGE) counts.huge += n;
    if ((c & PAGE_IS_PRESENT) === 0n) continue;
    counts.present += n;
    addPresent(presentInCell, pages, r.firstPage, r.firstPage + n);
  }
  return { pages, ...counts, residency: residencyOf(presentInCell, pages) };
}

/** The bar's cells for a run of present pages `[first, last)` of `pages`, added into `presentInCell`. */
function addPresent(presentInCell: number[], pages: number, first: number, last: number): void {
  const cells = presentInCell.length;
  // Cell k covers pages [ceil(k*pages/cells), ceil((k+1)*pages/cells)); page p is in cell floor(p*cells/pages).
  for (let k = Math.floor(first * cells / pages); k < cells; k++) {
    const cellStart = Math.ceil(k * pages / cells);
    if (cellStart >= last) break;
    const cellEnd = Math.ceil((k + 1) * pages / cells);
    presentInCell[k]! += Math.min(cellEnd, last) - Math.max(cellStart, first);
  }
}

function residencyOf(presentInCell: number[], pages: number): number[] {
  const cells = presentInCell.length;
  return presentInCell.map((present, k) => {
    const size = Math.ceil((k + 1) * pages / cells) - Math.ceil(k * pages / cells);
    return Math.round(present / size * 1000) / 1000;
  });
}

/** What `/proc/<pid>/smaps` says about one mapping: whether anything is in it, and its huge-page bytes. */
export interface SmapsEntry {
  /** Resident or swapped bytes (`Rss` + `Swap`). */
  inUse: number;
  /** Bytes mapped by huge pages (THP: `AnonHugePages`, `ShmemPmdMapped`, `FilePmdMapped`; hugetlb). */
  huge: number;
}

/** Parses `/proc/<pid>/smaps` into one entry per mapping, keyed by its start address. */
export function parseSmaps(text: string): Map<bigint, SmapsEntry> {
  const out = new Map<bigint, SmapsEntry>();
  let current: SmapsEntry | undefined;
  for (const line of text.split("\n")) {
    const head = /^([0-9a-f]+)-[0-9a-f]+ /.exec(line);
    if (head) {
      current = { inUse: 0, huge: 0 };
      out.set(BigInt(`0x${head[1]}`), current);
      continue;
    }
    const field = /^(\w+):\s+(\d+) kB/.exec(line);
    if (!field || !current) continue;
    const bytes = Number(field[2]) * 1024;
    if (field[1] === "Rss" || field[1] === "Swap") current.inUse += bytes;
    if (/^(AnonHugePages|ShmemPmdMapped|FilePmdMapped|Shared_Hugetlb|Private_Hugetlb)$/.test(field[1]!)) {
      current.huge += bytes;
    }
  }
  return out;
}

/** Entries read at a time from `/proc/<pid>/pagemap` (512 KiB). */
const PAGEMAP_CHUNK = 65536;
let entries: BigUint64Array | undefined;

/**
 * Counts one mapping from the entries of `/proc/<pid>/pagemap` (a kernel without
 * PAGEMAP_SCAN): present, swapped, file (present or swapped, not anonymous), the zero
 * page (its PFN where visible, else present and mapped by more than this process) and
 * the residency bar; the huge pages from `smaps`. A mapping smaps says holds nothing is
 * not read at all (a reservation of terabytes costs nothing then).
 */
export function readVma(
  start: bigint,
  end: bigint,
  pid: Pid,
  smaps: SmapsEntry | undefined,
): Omit<VmaReport, "perms" | "path" | "start" | "end"> {
  const PAGE_SIZE_N = BigInt(Region.pageSize);
  const pages = Number((end - start) / PAGE_SIZE_N);
  const presentInCell = new Array<number>(Math.min(BAR_CELLS, pages)).fill(0);
  const counts = { present: 0, swapped: 0, file: 0, zero: 0, huge: 0 };
  // One entry even where nothing is in use: a mapping beyond the pagemap (`[vsyscall]`) says so (EFAULT).
  if (smaps !== undefined && smaps.inUse === 0) readPagemapRaw({ address: start, length: PAGE_SIZE_N }, { pid });
  else {
    const profile = kernelProfile();
    const zeroPfn = profile.pagemap.pfnVisible ? profile.zeroPage.zeroPfn : null;
    const pmdPages = (profile.thp?.pmdSize ?? 2 << 20) / Number(PAGE_SIZE_N);
    entries ??= new BigUint64Array(PAGEMAP_CHUNK);
    let runStart = -1;
    for (let done = 0; done < pages;) {
      const want = Math.min(PAGEMAP_CHUNK, pages - done);
      const raw = readPagemapRaw(
        { address: start + BigInt(done) * PAGE_SIZE_N, length: BigInt(want) * PAGE_SIZE_N },
        { pid, into: entries },
      );
      for (let i = 0; i < want; i++) {
        const e = raw[i]!;
        const present = (e & PM_PRESENT) !== 0n;
        if ((e & PM_SWAP) !== 0n) counts.swapped++;
        if ((e & PM_FILE) !== 0n) counts.file++;
        if (present) {
          counts.present++;
          const zero = zeroPfn !== null
            ? isZeroFrame(e & PM_PFN_MASK, profile.zeroPage, pmdPages)
            : (e & (PM_MMAP_EXCLUSIVE | PM_FILE)) === 0n;
          if (zero) counts.zero++;
          if (runStart < 0) runStart = done + i;
        } else if (runStart >= 0) {
          addPresent(presentInCell, pages, runStart, done + i);
          runStart = -1;
        }
      }
      done += want;
    }
    if (runStart >= 0) addPresent(presentInCell, pages, runStart, pages);
  }
  counts.huge = Math.min(pages, Math.round((smaps?.huge ?? 0) / Region.pageSize));
  return { pages, ...counts, residency: residencyOf(presentInCell, pages) };
}

/** One character per cell: `·` nothing present, `░ ▒ ▓` partly, `█` all. */
export function residencyBar(residency: number[]): string {
  return residency.map((f) => f === 0 ? "·" : f === 1 ? "█" : f <= 1 / 3 ? "░" : f <= 2 / 3 ? "▒" : "▓").join("");
}

function readComm(pid: Pid): string {
  return readProcFile(`/proc/${pid}/comm`)?.trim() ?? "?";
}

/** A refusal to read the process, with what to change (exit 3). */
class Refused extends Error {}

/** The process is not there (exit 1). */
class Gone extends Error {}

function mapsOf(pid: Pid): Mapping[] {
  try {
    return readMaps(pid);
  } catch (e) {
    if (!(e instanceof UffdError)) throw e;
    if (e.code === "ESRCH") throw new Gone(`no process ${pid} (it does not exist or has exited)`);
    if (e.code === "EACCES" || e.code === "EPERM") {
      let uid = "?";
      try {
        uid = String(Deno.uid());
      } catch { /* unknown */ }
      throw new Refused(
        `cannot read /proc/${pid}/maps: permission denied (this is uid ${uid}) — reading another user's memory map ` +
          `needs ptrace read access: run as that process's user, or as root (CAP_SYS_PTRACE)`,
      );
    }
    throw e;
  }
}

/** Builds the report for a process (`self`: the CLI's own). */
export function pagemapReport(pid: Pid, range?: { start: bigint; end: bigint }): PagemapReport {
  const maps = mapsOf(pid);
  const started = performance.now();
  // The profile's decision (a test may force the pagemap file on a kernel with PAGEMAP_SCAN).
  const scan = hasPagemapScan() && kernelProfile().pageBits === "pagemap-scan";
  const smapsText = scan ? undefined : readProcFile(`/proc/${pid}/smaps`);
  const smaps = smapsText === undefined ? undefined : parseSmaps(smapsText);
  const vmas: VmaReport[] = [];
  for (const m of maps) {
    const start = range && range.start > m.start ? range.start : m.start;
    const end = range && range.end < m.end ? range.end : m.end;
    if (start >= end) continue;
    const base = { start: hex(start), end: hex(end), perms: m.perms, path: m.path };
    try {
      vmas.push({ ...base, ...(scan ? scanVma(start, end, pid) : readVma(start, end, pid, smaps?.get(m.start))) });
    } catch (e) {
      if (!(e instanceof UffdError)) throw e;
      if (e.code === "EACCES" || e.code === "EPERM") {
        throw new Refused(
          `cannot read /proc/${pid}/pagemap: ${e.code} — it needs ptrace read access to process ${pid}: run as ` +
            "its user, or as root (CAP_SYS_PTRACE)",
        );
      }
      if (e.code === "ESRCH") throw new Gone(`process ${pid} exited while it was being scanned`);
      const pages = Number((end - start) / BigInt(Region.pageSize));
      vmas.push({
        ...base,
        pages,
        present: 0,
        swapped: 0,
        file: 0,
        zero: 0,
        huge: 0,
        residency: [],
        error: `${e.code}${e.code === "EFAULT" ? " — outside the user address space" : ""}`,
      });
    }
  }
  const elapsedMs = Math.round((performance.now() - started) * 10) / 10;
  const readable = vmas.filter((v) => v.error === undefined);
  const sum = (key: "pages" | "present" | "swapped" | "file" | "zero" | "huge") =>
    readable.reduce((a, v) => a + v[key], 0);
  return {
    pid: pid === "self" ? Deno.pid : pid,
    command: readComm(pid),
    pageSize: Region.pageSize,
    range: range ? { start: hex(range.start), end: hex(range.end) } : null,
    totals: {
      mappings: vmas.length,
      unreadable: vmas.length - readable.length,
      pages: sum("pages"),
      present: sum("present"),
      swapped: sum("swapped"),
      file: sum("file"),
      zero: sum("zero"),
      huge: sum("huge"),
    },
    vmas,
    source: scan ? "PAGEMAP_SCAN" : "pagemap",
    elapsedMs,
  };
}

/** Prints the report as text. */
export function printPagemap(report: PagemapReport): void {
  const t = report.totals;
  const size = (pages: number) => bytes(pages * report.pageSize);
  console.log(
    `${bold(`pid ${report.pid}`)} (${report.command}): ${t.mappings} mappings, ${size(t.pages)} mapped, ` +
      `${size(t.present)} present, ${size(t.swapped)} swapped, ${size(t.file)} file, ${size(t.huge)} in huge pages` +
      (report.range ? dim(` — range ${report.range.start}-${report.range.end}`) : ""),
  );
  const rows = report.vmas.map((v) => [
    `${v.start.slice(2)}-${v.end.slice(2)}`,
    v.perms,
    size(v.pages),
    ...(v.error === undefined
      ? [v.present, v.swapped, v.file, v.zero, v.huge].map((n) => n === 0 ? dim("0") : String(n))
      : ["", "", "", "", ""]),
    v.error === undefined ? cyan(residencyBar(v.residency)) : yellow("?"),
    v.error === undefined ? v.path : `${v.path} ${yellow(`(unreadable: ${v.error})`)}`.trim(),
  ]);
  console.log(table([
    ["address", "perms", "size", "present", "swapped", "file", "zero", "huge", "residency", "path"],
    ...rows,
  ]));
  console.log(
    dim(
      `counts are ${report.pageSize}-byte pages; residency: ${BAR_CELLS} cells across each mapping, ` +
        `· none present ░ ▒ ▓ partly █ all; ${
          report.source === "PAGEMAP_SCAN"
            ? "one PAGEMAP_SCAN walk per mapping"
            : "read from /proc/<pid>/pagemap and smaps (no PAGEMAP_SCAN on this kernel)"
        }, ${report.elapsedMs} ms in all`,
    ),
  );
}

/** Runs `uffd pagemap <pid|self> [--range A-B] [--json]`. */
export function run(args: string[]): number {
  const { values, positionals } = parseArgs({
    args,
    options: { json: { type: "boolean" }, range: { type: "string" } },
    strict: true,
    allowPositionals: true,
  });
  if (positionals.length > 1) throw new UsageError(`one process at a time (got ${positionals.join(" ")})`);
  const pid = parsePid(positionals[0]);
  const range = values.range === undefined ? undefined : parseRange(values.range);
  let report: PagemapReport;
  try {
    report = pagemapReport(pid, range);
  } catch (e) {
    if (e instanceof Refused) {
      console.error(red(`uffd pagemap: ${e.message}`));
      return EXIT.refused;
    }
    if (e instanceof Gone) {
      console.error(red(`uffd pagemap: ${e.message}`));
      return EXIT.failure;
    }
    throw e;
  }
  if (values.json) printJson(report);
  else printPagemap(report);
  return EXIT.ok;
}
