/**
 * Helpers for the conformance tests: typed-error assertions, serving faults from
 * the main isolate while another thread faults (the stand-in for the fault
 * handler until it exists), child processes with a deadline, and the memory kinds
 * the kernel's tests iterate over.
 *
 * @module
 */

import assert from "node:assert/strict";
import { MAP_PRIVATE, MFD_CLOEXEC, PROT_READ, PROT_WRITE, type Range, Region } from "../../mod.ts";
import type { PagefaultEvent, UffdEvent, Userfaultfd } from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { DEADLINE_SCALE, isRoot, reserveHugePages, skipUnless } from "../helpers.ts";
export { assertUffdError } from "../helpers.ts";

/** The base page size. */
export const PAGE: number = Region.pageSize;
/** The base page size as a bigint. */
export const P: bigint = BigInt(PAGE);
/** The repository root as a file URL (children import the library from here). */
export const ROOT: URL = new URL("../../", import.meta.url);

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Reads events until `done(all so far)` holds; throws after `ms` (scaled by `DEADLINE_SCALE`). */
export async function collectEvents(
  uffd: Userfaultfd,
  done: (events: UffdEvent[]) => boolean,
  what: string,
  ms = 30_000,
): Promise<UffdEvent[]> {
  ms *= DEADLINE_SCALE; // a loaded machine (a Worker type-checked at start-up) or TCG: generous, it only bounds a hang
  const events: UffdEvent[] = [];
  const deadline = Date.now() + ms * DEADLINE_SCALE;
  for (;;) {
    events.push(...uffd.readEvents());
    if (done(events)) return events;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}; got ${JSON.stringify(events.map((e) => e.type))}`);
    }
    await sleep(1);
  }
}

/** The next page fault (other events before it are returned too). */
export async function nextFault(uffd: Userfaultfd, what = "a page fault", ms = 30_000): Promise<PagefaultEvent> {
  const events = await collectEvents(uffd, (es) => es.some((e) => e.type === "pagefault"), what, ms);
  return events.find((e) => e.type === "pagefault") as PagefaultEvent;
}

/** What {@linkcode serveUntil} saw. */
export interface Served<T> {
  /** What the work resolved to. */
  result: T;
  /** Every page fault, in order. */
  faults: PagefaultEvent[];
  /** Every other event, in order. */
  events: UffdEvent[];
}

/**
 * Serves faults from this thread while `work` (writers or readers on other
 * threads) runs: each page fault goes to `serve`, every other event to
 * `onEvent`. This is the tests' stand-in for the fault handler: a bounded poll
 * loop over `readEvents()`. On timeout it closes the userfaultfd — which wakes
 * every blocked thread — and waits for the work before failing, so that no
 * thread is left touching memory the test is about to unmap. The same when
 * `serve` or `onEvent` throws (a resolution the kernel refused): the error is
 * rethrown only once the work has ended.
 */
export async function serveUntil<T>(
  uffd: Userfaultfd,
  work: Promise<T>,
  serve: (fault: PagefaultEvent) => void,
  options: { ms?: number; onEvent?: (event: UffdEvent) => void } = {},
): Promise<Served<T>> {
  const ms = (options.ms ?? 30_000) * DEADLINE_SCALE;
  let settled = false;
  let failure: unknown;
  let result: T | undefined;
  work.then((r) => result = r, (e) => failure = e).finally(() => settled = true);
  const faults: PagefaultEvent[] = [];
  const events: UffdEvent[] = [];
  const deadline = Date.now() + ms * DEADLINE_SCALE;
  // Closing the userfaultfd wakes every blocked thread; the work then ends by itself. Until it has, its memory
  // must stay mapped: wait for it (the bound only keeps a broken kernel from hanging the test for good).
  const release = async (error: unknown): Promise<never> => {
    uffd.close();
    const waited = Date.now() + 30_000 * DEADLINE_SCALE;
    while (!settled && Date.now() < waited) await sleep(5);
    throw error;
  };
  while (!settled) {
    try {
      for (const event of uffd.readEvents()) {
        if (event.type === "pagefault") {
          faults.push(event);
          serve(event);
        } else {
          events.push(event);
          options.onEvent?.(event);
        }
      }
    } catch (e) {
      await release(e);
    }
    if (Date.now() > deadline) {
      await release(new Error(`the work did not finish within ${ms} ms (${faults.length} faults served)`));
    }
    await sleep(0);
  }
  if (failure !== undefined) throw failure;
  return { result: result as T, faults, events };
}

/** What a child process did. */
export interface ChildResult {
  /** Exit code (128 + signal number when killed). */
  code: number;
  /** The signal that killed it, if one did. */
  signal: Deno.Signal | null;
  /** Its stdout. */
  stdout: string;
  /** Its stderr. */
  stderr: string;
  /** `true` when it was killed for running past its deadline. */
  timedOut: boolean;
}

/** Options of {@linkcode runChild}. */
export interface ChildOptions {
  /** Deadline before the child is killed with SIGKILL (default 20 s; scaled by `DEADLINE_SCALE`). */
  timeoutMs?: number;
  /** Deno permission flags (default `["--allow-all"]`). */
  flags?: string[];
  /** Run as this unprivileged user through `setpriv` (root only). */
  asUser?: { user: string; group: string; denoDir: string };
  /** Extra environment. */
  env?: Record<string, string>;
}

/**
 * Runs TypeScript `source` in a fresh `deno run` (read from stdin), with a
 * deadline. `UFFD/` in the source is replaced by the repository root, so a child
 * imports the library with `import { … } from "UFFD/mod.ts"`.
 */
export async function runChild(source: string, options: ChildOptions = {}): Promise<ChildResult> {
  const flags = options.flags ?? ["--allow-all"];
  const denoArgs = ["run", "--no-prompt", "--quiet", ...flags, "-"];
  const env: Record<string, string> = { NO_COLOR: "1", ...options.env };
  let command = Deno.execPath();
  let args = denoArgs;
  if (options.asUser) {
    command = "setpriv";
    args = [
      `--reuid=${options.asUser.user}`,
      `--regid=${options.asUser.group}`,
      "--clear-groups",
      Deno.execPath(),
      ...denoArgs,
    ];
    env.DENO_DIR = options.asUser.denoDir;
    env.HOME = options.asUser.denoDir;
  }
  const child = new Deno.Command(command, { args, env, stdin: "piped", stdout: "piped", stderr: "piped" }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, (options.timeoutMs ?? 20_000) * DEADLINE_SCALE);
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(source.replaceAll("UFFD/", ROOT.href)));
  await writer.close();
  const out = await child.output();
  clearTimeout(timer);
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, signal: out.signal, stdout: text(out.stdout), stderr: text(out.stderr), timedOut };
}

/** A readable description of a child's end, for assertion messages. */
export function describeChild(r: ChildResult): string {
  return `code ${r.code}, signal ${r.signal}, timedOut ${r.timedOut}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

/**
 * A `memfd` mapped `MAP_PRIVATE` — the kernel tests' "shmem-private". `Region`
 * maps memfds shared only (a private file mapping is a copy-on-write view that the
 * library has no use for), so this test maps it through `ffi/` directly.
 */
export class PrivateMemfd implements Range, Disposable {
  /** Start address. */
  readonly address: bigint;
  /** Length in bytes. */
  readonly length: number;
  readonly #fd: number;

  constructor(length: number) {
    this.#fd = libc.memfdCreate("uffd-conformance", MFD_CLOEXEC);
    assert.ok(this.#fd >= 0, "memfd_create");
    assert.equal(libc.ftruncate(this.#fd, BigInt(length)), 0);
    this.address = libc.mmap(0n, BigInt(length), PROT_READ | PROT_WRITE, MAP_PRIVATE, this.#fd, 0n);
    assert.ok(this.address > 0n, "mmap MAP_PRIVATE memfd");
    this.length = length;
  }

  /** The mapping's bytes. */
  get bytes(): Uint8Array {
    return new Uint8Array(libc.bufferAt(this.address, this.length));
  }

  /** `count` pages from page `first`. */
  pages(first: number, count = 1): Range {
    return { address: this.address + BigInt(first) * P, length: count * PAGE };
  }

  /** Unmaps it and closes the memfd. */
  [Symbol.dispose](): void {
    libc.munmap(this.address, BigInt(this.length));
    libc.close(this.#fd);
  }
}

/** The memory types of the kernel's tests, by their names there. */
export type MemType = "anon" | "shmem" | "shmem-private" | "hugetlb" | "hugetlb-private";

/** A mapping of one memory type: its range, bytes, page size, and a shared alias when it has one. */
export interface TestMemory extends Disposable {
  /** The mapping. */
  readonly range: Range;
  /** The mapping's bytes. */
  readonly bytes: Uint8Array;
  /** The size of its pages (huge page size for hugetlb). */
  readonly pageSize: number;
  /** A second shared mapping of the same memory (shmem, hugetlb), for minor faults and EEXIST. */
  alias(): Region | undefined;
}

/** Maps `pages` pages of a memory type (hugetlb needs huge pages reserved first). */
export function mapMemory(type: MemType, pages: number): TestMemory {
  if (type === "shmem-private") {
    const m = new PrivateMemfd(pages * PAGE);
    return {
      range: m,
      bytes: m.bytes,
      pageSize: PAGE,
      alias: () => undefined,
      [Symbol.dispose]: () => m[Symbol.dispose](),
    };
  }
  const huge = type === "hugetlb" || type === "hugetlb-private";
  const pageSize = huge ? Region.hugePageSize : PAGE;
  const region = Region.map(pages * pageSize, {
    memfd: type === "shmem" || type === "hugetlb",
    hugetlb: huge,
  });
  return {
    range: region,
    bytes: region.bytes,
    pageSize,
    alias: () => region.fd === undefined ? undefined : region.alias(),
    [Symbol.dispose]: () => region.unmap(),
  };
}

/** `ignore:` value for hugetlb tests: root, and the kernel has a huge page size. */
export function needsHugetlbSetup(): boolean {
  return skipUnless(isRoot, "reserving huge pages needs root");
}

/**
 * Reserves `count` huge pages for `fn` and restores `vm.nr_hugepages` afterwards.
 * Returns `false` (and prints why) when the kernel could not reserve them.
 */
export async function withHugePages(count: number, fn: () => void | Promise<void>): Promise<boolean> {
  const restore = reserveHugePages(count);
  if (!restore) {
    console.log(`%cskip: the kernel could not reserve ${count} huge pages`, "color: yellow");
    return false;
  }
  try {
    await fn();
  } finally {
    restore();
  }
  return true;
}

/** The bytes of `length` at `address` (memory the test owns), for reading or filling. */
export function bytesAt(address: bigint, length: number): Uint8Array {
  return new Uint8Array(libc.bufferAt(address, length));
}

/** A request for {@linkcode SyscallThread}. */
export type SyscallRequest =
  | { op: "madvise"; address: bigint; length: bigint; advice: number }
  | { op: "munmap"; address: bigint; length: bigint }
  | { op: "mremap"; address: bigint; length: bigint; to: bigint }
  | { op: "read"; fd: number; address: bigint; length: number };

/**
 * A Worker that makes memory system calls on its own thread (see
 * `workers/syscall.ts`): calls that block until the main isolate reads an event.
 */
export class SyscallThread implements Disposable {
  readonly #worker = new Worker(new URL("./workers/syscall.ts", import.meta.url), { type: "module" });

  /** Makes the call on the Worker; resolves with its result (a negative errno on failure). */
  call(request: SyscallRequest): Promise<number> {
    return new Promise((resolve) => {
      this.#worker.onmessage = (e: MessageEvent<{ rc: number }>) => resolve(e.data.rc);
      this.#worker.postMessage(request);
    });
  }

  /** Terminates the Worker (close the userfaultfd first if the call may still be blocked). */
  [Symbol.dispose](): void {
    this.#worker.terminate();
  }
}
