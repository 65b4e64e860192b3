/**
 * Shared test helpers: skip reasons printed from the runtime probe, fd and mapping
 * counts for leak checks, waiting with a deadline.
 *
 * @module
 */

import assert from "node:assert/strict";
import { hasPagemapScan } from "../pagemap.ts";
import { type Feature, UffdError, Userfaultfd } from "../mod.ts";

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

/** Resolves when `check()` is true; rejects after `ms` milliseconds. */
export async function waitFor(check: () => boolean, ms = 5000, what = "condition"): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Rejects if `promise` does not settle within `ms` milliseconds. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
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
 * hang — and fails the test if it does not end by itself within `deadlineMs`.
 */
export async function runScenario(
  script: URL,
  name: string,
  options: { deadlineMs?: number; env?: Record<string, string> } = {},
): Promise<ScenarioRun> {
  const deadlineMs = options.deadlineMs ?? 60_000;
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
