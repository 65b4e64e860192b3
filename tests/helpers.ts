/**
 * Shared test helpers: skip reasons printed from the runtime probe, fd and mapping
 * counts for leak checks, waiting with a deadline.
 *
 * @module
 */

import assert from "node:assert/strict";
import { bufferAt } from "../ffi/_libc.ts";
import { hasPagemapScan } from "../kernel/pagemap_scan.ts";
import {
  type Feature,
  isZeroFrame,
  kernelProfile,
  type Range,
  readPagemap,
  Region,
  UffdError,
  Userfaultfd,
} from "../mod.ts";

/**
 * `ignore:` value for a test that needs something the machine may lack. Prints the
 * reason when the test will be skipped, so a skip is never silent.
 */
export function skipUnless(condition: boolean, reason: string): boolean {
  if (!condition) console.log(`%cskip: ${reason}`, "color: yellow");
  return !condition;
}

/** `ignore:` value for a test that needs userfaultfd features. */
export function needs(...features: Feature[]): boolean {
  const support = Userfaultfd.supported();
  const missing = features.filter((f) => !support.features.has(f));
  return skipUnless(missing.length === 0, `kernel ${Deno.osRelease()} lacks ${missing.join(", ")}`);
}

/** `ignore:` value for a test that needs PAGEMAP_SCAN. */
export function needsPagemapScan(): boolean {
  return skipUnless(hasPagemapScan(), `kernel ${Deno.osRelease()} has no PAGEMAP_SCAN (6.7+)`);
}

/**
 * Whether a read fault on never-touched private anonymous memory maps the shared zero
 * page on this kernel (the profile's measurement). Where it does not, a page only
 * read holds a zero-filled page of its own — present, exclusive, not `PFNZERO`.
 */
export const readFaultMapsZeroPage: boolean = kernelProfile().zeroPage.readFault;

/**
 * Makes each page of `ranges` map the shared zero page, the way this kernel can: a
 * read where read faults map it, else `UFFDIO_ZEROPAGE` (on a userfaultfd closed
 * right after: the zero page stays). Returns `false` when the kernel can do neither
 * (pass {@linkcode needsZeroPage} to `ignore:`).
 */
export function mapZeroPages(...ranges: Range[]): boolean {
  const profile = kernelProfile();
  for (const r of ranges) {
    if (profile.zeroPage.readFault) {
      const view = new Uint8Array(bufferAt(BigInt(r.address), Number(r.length)));
      let sum = 0; // summed and checked: an unused load may be optimised away
      for (let i = 0; i < view.length; i += profile.pageSize) sum += view[i]!;
      assert.equal(sum, 0, "pages to map the zero page must hold zeros");
      continue;
    }
    if (profile.zeroPage.uffdZeropage !== "zero-page") return false;
    using uffd = Userfaultfd.open();
    uffd.register(r, { missing: true });
    uffd.zeropage(r);
  }
  return true;
}

/** `ignore:` value for a test that needs pages mapping the shared zero page ({@linkcode mapZeroPages}). */
export function needsZeroPage(): boolean {
  const z = kernelProfile().zeroPage;
  return skipUnless(
    z.readFault || z.uffdZeropage === "zero-page",
    `kernel ${Deno.osRelease()} maps no shared zero page (read faults allocate; UFFDIO_ZEROPAGE: ${z.uffdZeropage})`,
  );
}

/**
 * Pages of `range` in every category of `require`, from `/proc/self/pagemap` (every kernel has it, with or without
 * PAGEMAP_SCAN): `PRESENT`; `PFNZERO`, present and the shared zero page (its PFN where PFNs are visible, else a page
 * not mapped exclusively — the zero page never is).
 */
export function pagesIn(range: Range, ...require: ("PRESENT" | "PFNZERO")[]): number {
  const profile = kernelProfile();
  const zeroPfn = profile.pagemap.pfnVisible ? profile.zeroPage.zeroPfn : null;
  const pmdPages = (profile.thp?.pmdSize ?? 2 << 20) / Region.pageSize; // a huge zero page has this many frames
  let n = 0;
  for (const e of readPagemap(range)) {
    const zero = e.present && (zeroPfn === null ? !e.exclusive : isZeroFrame(e.pfn ?? -1n, profile.zeroPage, pmdPages));
    if (require.every((c) => c === "PRESENT" ? e.present : zero)) n++;
  }
  return n;
}

/** `true` when running as root (some tests arrange the machine: huge pages, sysctls, users). */
export const isRoot: boolean = Deno.uid() === 0;

/** Number of open file descriptors of this process. */
export function fdCount(): number {
  return [...Deno.readDirSync("/proc/self/fd")].length;
}

/** Number of mappings of this process. */
export function mappingCount(): number {
  return Deno.readTextFileSync("/proc/self/maps").trim().split("\n").length;
}

/** Number of threads of this process. */
export function threadCount(): number {
  return [...Deno.readDirSync("/proc/self/task")].length;
}

/**
 * Every deadline of {@linkcode waitFor} and {@linkcode within} is multiplied by
 * `UFFD_TEST_DEADLINE_SCALE` (default 1): the kernel runner sets it under QEMU's
 * TCG, where everything runs several times slower. Deadlines only bound a wait for
 * something that must happen; a green run never waits for them.
 */
export const DEADLINE_SCALE: number = Math.max(1, Number(Deno.env.get("UFFD_TEST_DEADLINE_SCALE") ?? 1) || 1);

/** Resolves when `check()` is true; rejects after `ms` milliseconds (scaled by {@linkcode DEADLINE_SCALE}). */
export async function waitFor(check: () => boolean, ms = 30_000, what = "condition"): Promise<void> {
  ms *= DEADLINE_SCALE;
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Rejects if `promise` does not settle within `ms` milliseconds (scaled by {@linkcode DEADLINE_SCALE}). */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  ms *= DEADLINE_SCALE;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Reserves `count` huge pages (root only) and returns a function that restores the old value. */
export function reserveHugePages(count: number): (() => void) | undefined {
  const path = "/proc/sys/vm/nr_hugepages";
  try {
    const before = Deno.readTextFileSync(path).trim();
    Deno.writeTextFileSync(path, String(Number(before) + count));
    const after = Number(Deno.readTextFileSync(path).trim());
    if (after < Number(before) + count) {
      Deno.writeTextFileSync(path, before);
      return undefined;
    }
    return () => Deno.writeTextFileSync(path, before);
  } catch {
    return undefined;
  }
}

/**
 * Asserts that `fn` throws a `UffdError` with errno name `code` (and, when given, a
 * message matching `message`), and returns it for further checks.
 */
export function assertUffdError(fn: () => unknown, code: string, message?: RegExp): UffdError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof UffdError, `expected a UffdError ${code}, got ${caught}`);
  assert.equal(caught.code, code, caught.message);
  if (message) assert.match(caught.message, message);
  return caught;
}

/** How a scenario process ended ({@linkcode runScenario}). */
export interface ScenarioRun {
  /** Its exit code. */
  code: number;
  /** The signal that ended it, if one did. */
  signal: Deno.Signal | null;
  /** Its standard output. */
  stdout: string;
  /** Its standard error. */
  stderr: string;
}

/**
 * Runs `deno run --allow-all <script> <name>` in its own process — the pattern for
 * anything where the main isolate touches protected or missing memory and could
 * hang — and fails the test if it does not end by itself within `deadlineMs` (scaled by
 * {@linkcode DEADLINE_SCALE}).
 */
export async function runScenario(
  script: URL,
  name: string,
  options: { deadlineMs?: number; env?: Record<string, string> } = {},
): Promise<ScenarioRun> {
  const deadlineMs = (options.deadlineMs ?? 60_000) * DEADLINE_SCALE;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-prompt", script.pathname, name],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...options.env },
  }).spawn();
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    child.kill("SIGKILL");
  }, deadlineMs);
  const out = await child.output();
  clearTimeout(timer);
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.ok(!killed, `scenario "${name}" did not end by itself: killed after ${deadlineMs} ms\n${stdout}\n${stderr}`);
  return { code: out.code, signal: out.signal, stdout, stderr };
}

/**
 * A scenario that must succeed ({@linkcode runScenario}, exit code 0): its last line
 * of output, parsed as JSON.
 */
// deno-lint-ignore no-explicit-any
export async function scenarioResult(...args: Parameters<typeof runScenario>): Promise<any> {
  const r = await runScenario(...args);
  assert.equal(r.code, 0, `scenario "${args[1]}" failed:\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1) ?? "");
}

/**
 * Open anonymous-inode fds of this process by kind (`[userfaultfd]`, `[eventfd]`,
 * `[eventpoll]`, …).
 */
export function anonInodes(): Record<string, number> {
  const kinds: Record<string, number> = {};
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      const target = Deno.readLinkSync(`/proc/self/fd/${entry.name}`);
      if (target.startsWith("anon_inode:")) kinds[target.slice(11)] = (kinds[target.slice(11)] ?? 0) + 1;
    } catch { /* closed meanwhile */ }
  }
  return kinds;
}
