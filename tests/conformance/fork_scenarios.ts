/**
 * The fork scenarios of `uffd-unit-tests.c`, run one per process by `fork_test.ts`
 * (with `EVENT_FORK` the forking thread waits until a handler has read the fork
 * event: a broken handler would block the main isolate for good, so the process
 * is killed at a deadline). The children are native code (`native_code.ts`); the
 * fork events are read by a `FaultHandler`, which hands the child's userfaultfd
 * to the main isolate (`onEvent`).
 *
 * `deno run --allow-all tests/conformance/fork_scenarios.ts <memory> <scenario>…`
 * prints one JSON line: the observations of each scenario.
 *
 * @module
 */

import {
  FaultHandler,
  Feature,
  MADV_DONTNEED,
  MADV_PAGEOUT,
  MADV_REMOVE,
  policies,
  type Range,
  readPagemap,
  Region,
  UffdError,
  Userfaultfd,
} from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { waitFor } from "../helpers.ts";
import { mapMemory, type MemType } from "./helpers.ts";
import { forkPauser, forkReader, waitStatus } from "./native_code.ts";

type Observations = Record<string, unknown>;
const WNOHANG = 1;

function wpFeatures(memory: MemType): Feature[] {
  return memory === "anon" ? [Feature.PAGEFAULT_FLAG_WP] : [Feature.PAGEFAULT_FLAG_WP, Feature.WP_HUGETLBFS_SHMEM];
}

function uffdWp(range: Range, pid?: number): boolean {
  return readPagemap({ address: range.address, length: libc.PAGE_SIZE }, pid ? { pid } : undefined)[0]!.uffdWp;
}

function reap(pid: number): { exited: boolean; code: number; signal: number } {
  return waitStatus(libc.waitpid(pid)[1]);
}

/** The fork events' child userfaultfds, as the main isolate receives them. */
async function startForkReader(uffd: Userfaultfd, policy = policies.unprotect()) {
  const children: Userfaultfd[] = [];
  const handler = await FaultHandler.start(uffd, policy, {
    onEvent: (e) => e.type === "fork" && children.push(e.uffd),
  });
  return { handler, children };
}

const scenarios: Record<string, (memory: MemType, pageSize: number) => Promise<Observations>> = {
  /**
   * wp-fork / wp-fork-with-event: a protected page's uffd-wp bit in a forked child
   * (read from the child's pagemap while it lives): dropped without EVENT_FORK, kept
   * with it — on a present page, then on a zapped one (a pte marker, or a page that
   * could not be paged out).
   */
  async "wp-fork"(memory) {
    return await wpFork(memory, false);
  },
  async "wp-fork-with-event"(memory) {
    return await wpFork(memory, true);
  },

  /**
   * sigbus / sigbus-wp, faulting_process(2): with SIGBUS and EVENT_FORK, a forked
   * child touching a released page gets SIGBUS; no message reaches its userfaultfd
   * or the parent's.
   */
  async "sigbus-fork"(memory, pageSize) {
    return await sigbusFork(memory, pageSize, false);
  },
  async "sigbus-wp-fork"(memory, pageSize) {
    return await sigbusFork(memory, pageSize, true);
  },

  /**
   * events with a forked faulting process: every missing fault of the child reaches
   * the child's userfaultfd (handed over by the fork event) and is served by COPY
   * through it; the child reads what was copied. Then the child has exited: a COPY
   * through its userfaultfd is ESRCH.
   */
  async "events-fork"(memory, pageSize) {
    const PAGES = 4;
    using mem = mapMemory(memory, PAGES);
    using uffd = Userfaultfd.open({ require: [Feature.EVENT_FORK] });
    uffd.register(mem.range, { missing: true });
    const { handler, children } = await startForkReader(uffd, policies.zerofill());
    const pid = forkReader(mem.range.address, PAGES, pageSize); // returns once the fork event is read
    if (pid < 0) throw new Error(`fork: ${pid}`);
    let status: ReturnType<typeof waitStatus> | undefined;
    const faults: number[] = [];
    try {
      await waitFor(() => children.length === 1, 30_000, "the fork event");
      const child = children[0]!;
      const page = new Uint8Array(pageSize);
      await waitFor(
        () => {
          for (const e of child.readEvents()) {
            if (e.type !== "pagefault") throw new Error(`unexpected ${e.type} event`);
            const index = Number(e.address - mem.range.address) / pageSize;
            faults.push(index);
            page[0] = index + 1;
            child.copy({ address: mem.range.address + BigInt(index * pageSize), length: pageSize }, page);
          }
          const [rc, raw] = libc.waitpid(pid, WNOHANG);
          if (rc === pid) status = waitStatus(raw);
          return status !== undefined;
        },
        10_000,
        "the child's faults and exit",
      );
      let copyAfterExit = "";
      try {
        child.copy({ address: mem.range.address, length: pageSize }, page);
      } catch (e) {
        copyAfterExit = e instanceof UffdError ? e.code : String(e);
      }
      child.close();
      const stats = await handler.stop();
      return {
        faults,
        exitCode: status!.code,
        expectedExitCode: Array.from({ length: PAGES }, (_, i) => i + 1).reduce((a, b) => a ^ b, 0),
        forkEvents: stats.events.fork,
        parentFaults: stats.faults,
        copyAfterExit,
      };
    } finally {
      if (status === undefined) {
        Deno.kill(pid, "SIGKILL");
        reap(pid);
      }
    }
  },
};

async function wpFork(memory: MemType, withEvent: boolean): Promise<Observations> {
  using mem = mapMemory(memory, 2);
  const page: Range = { address: mem.range.address, length: mem.pageSize };
  using uffd = Userfaultfd.open({
    require: [...wpFeatures(memory), ...(withEvent ? [Feature.EVENT_FORK] : [])],
    writers: "other-threads", // the forked child writes
  });
  uffd.register(mem.range, { wp: true });
  mem.bytes[0] = 1; // touch
  uffd.writeProtect(page);
  const reader = withEvent ? await startForkReader(uffd) : undefined;
  const observe = async () => {
    const pid = forkPauser(); // with EVENT_FORK: returns once the handler has read the fork event
    if (pid < 0) throw new Error(`fork: ${pid}`);
    try {
      return uffdWp(page, pid);
    } finally {
      Deno.kill(pid, "SIGKILL");
      reap(pid);
      if (reader) {
        await waitFor(() => reader.children.length > 0, 30_000, "the fork event");
        reader.children.shift()!.close();
      }
    }
  };
  const parentPresent = uffdWp(page);
  const childPresent = await observe();
  const shared = memory === "shmem" || memory === "hugetlb";
  // Zap the page table entry to expose markers: DONTNEED on shared memory, PAGEOUT (which may do nothing) on private.
  libc.madvise(page.address, BigInt(page.length), shared ? MADV_DONTNEED : MADV_PAGEOUT);
  const presentAfterZap = readPagemap({ address: page.address, length: libc.PAGE_SIZE })[0]!.present;
  const parentZapped = uffdWp(page);
  const childZapped = await observe();
  uffd.unprotect(page);
  const parentUnprotected = uffdWp(page);
  mem.bytes[0] = 2; // faults the page back in (from swap or the page cache), no userfault
  const parentRewritten = uffdWp(page);
  const stats = reader ? await reader.handler.stop() : undefined;
  return {
    parentPresent,
    childPresent,
    presentAfterZap,
    parentZapped,
    childZapped,
    parentUnprotected,
    parentRewritten,
    value: mem.bytes[0],
    forkEvents: stats?.events.fork ?? 0,
    wpFaults: stats?.wp ?? 0,
  };
}

async function sigbusFork(memory: MemType, pageSize: number, wp: boolean): Promise<Observations> {
  using mem = mapMemory(memory, 2);
  const require = [Feature.SIGBUS, Feature.EVENT_FORK, ...(wp ? wpFeatures(memory) : [])];
  using uffd = Userfaultfd.open({ require });
  uffd.register(mem.range, { missing: true, wp });
  // release_pages: the range is missing (fresh memory; MADV_REMOVE / DONTNEED for good measure)
  const shared = memory === "shmem" || memory === "hugetlb";
  libc.madvise(mem.range.address, BigInt(mem.range.length), shared ? MADV_REMOVE : MADV_DONTNEED);
  const { handler, children } = await startForkReader(uffd, policies.zerofill());
  const pid = forkReader(mem.range.address + BigInt(pageSize), 1, 0);
  if (pid < 0) throw new Error(`fork: ${pid}`);
  const status = reap(pid);
  await waitFor(() => children.length === 1, 30_000, "the fork event");
  const child = children[0]!;
  const childEvents = child.readEvents().length;
  child.close();
  const stats = await handler.stop();
  return {
    childSignal: status.signal,
    childEvents,
    parentFaults: stats.faults,
    forkEvents: stats.events.fork,
  };
}

const [memory = "anon", ...names] = Deno.args;
const huge = memory.startsWith("hugetlb");
const pageSize = huge ? Region.hugePageSize : libc.PAGE_SIZE;
const results: Record<string, Observations> = {};
for (const name of names) {
  const scenario = scenarios[name];
  if (!scenario) {
    throw new Error(`unknown scenario ${JSON.stringify(name)}; known: ${Object.keys(scenarios).join(", ")}`);
  }
  results[name] = await scenario(memory as MemType, pageSize);
}
console.log(JSON.stringify(results));
