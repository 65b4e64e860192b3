/**
 * No hang, no leak, for what exists today (the kernel boundary): closing a
 * userfaultfd wakes every thread blocked in a fault on it — missing, write-protect
 * or minor, a blocking-pool thread or a Worker — and a process with a registered
 * range and a blocked writer still exits, whichever way it ends. Each check
 * counts `/proc/self/fd`, `/proc/self/maps`, `/proc/self/task` (and the threads
 * sleeping in `handle_userfault`) before and after. Anything that could hang
 * runs with a deadline or in a child process that is killed at its deadline.
 *
 * The fault handler's own cases (a handler that throws, a worker killed, a
 * handler running at exit) come with the handler: see tests/conformance/README.md.
 */

import assert from "node:assert/strict";
import { Feature, readMaps, Region, Userfaultfd } from "../mod.ts";
import * as libc from "../ffi/_libc.ts";
import { fdCount, mappingCount, threadCount, waitFor, within } from "./helpers.ts";
import { describeChild, nextFault, runChild } from "./conformance/helpers.ts";

const PAGE = Region.pageSize;
const P = BigInt(PAGE);

/** Threads of this process sleeping in the kernel's userfaultfd wait. */
function threadsInFault(): number {
  let n = 0;
  for (const task of Deno.readDirSync("/proc/self/task")) {
    try {
      if (Deno.readTextFileSync(`/proc/self/task/${task.name}/wchan`).startsWith("handle_userfault")) n++;
    } catch { /* the thread ended meanwhile */ }
  }
  return n;
}

interface Counts {
  fds: number;
  maps: number;
  threads: number;
}

/**
 * Counts now. Mappings inside `region` are left out: registering its pages one by one splits it into as many
 * mappings, and whether closing the userfaultfd merges them back depends on the kernel (6.18 does; 6.1 and 6.12
 * leave the pieces when each page was faulted in on its own) — pieces of a mapping, not mappings leaked.
 */
function counts(region?: { address: bigint; length: number }): Counts {
  let maps = mappingCount();
  if (region) {
    const end = region.address + BigInt(region.length);
    maps -= readMaps().filter((m) => m.start >= region.address && m.end <= end).length;
  }
  return { fds: fdCount(), maps, threads: threadCount() };
}

/** After the test: no fd more, no thread more, no thread in a fault; a few mappings of V8's own are tolerated. */
async function assertNothingLeft(
  before: Counts,
  what: string,
  region?: { address: bigint; length: number },
): Promise<void> {
  // Generous: on a loaded 2-core machine (or under TCG) a thread may take seconds to leave.
  await waitFor(() => threadsInFault() === 0, 30_000, `${what}: no thread left in a fault`);
  await waitFor(() => threadCount() <= before.threads, 30_000, `${what}: threads back to ${before.threads}`);
  await waitFor(() => fdCount() <= before.fds, 30_000, `${what}: file descriptors back to ${before.fds}`);
  const after = counts(region);
  assert.equal(after.fds, before.fds, `${what}: file descriptors`);
  assert.ok(after.maps <= before.maps + 8, `${what}: ${after.maps - before.maps} more mappings`);
}

/**
 * Warms up the blocking pool (and Workers), so that what the runtime keeps alive
 * is counted before: idle pool threads, and the event-loop fds Deno releases a
 * while after a Worker is terminated (about two Workers' worth, measured).
 */
async function warmUp(workers = 0): Promise<void> {
  const scratch = new Uint8Array(64);
  await Promise.all([0, 1, 2].map(() => libc.memsetOffThread(libc.addressOf(scratch), 0, 64n)));
  for (let i = 0; i < workers; i++) {
    const w = new Worker(new URL("./workers/writer.ts", import.meta.url), { type: "module" });
    await new Promise((resolve) => {
      w.onmessage = resolve;
      w.postMessage({ address: libc.addressOf(scratch), length: 1, value: 0 });
    });
    w.terminate();
  }
  await new Promise((resolve) => setTimeout(resolve, 100));
}

for (const kind of ["missing", "wp", "minor"] as const) {
  Deno.test(`no hang: closing the userfaultfd while a ${kind} fault is pending lets the writer finish`, async () => {
    await warmUp();
    const before = counts();
    {
      // The memory outlives the writer: it is unmapped only after the writer is done (a woken writer retries).
      using backing = Region.map(2 * PAGE, { memfd: true });
      using mem = kind === "minor" ? backing.alias() : Region.map(2 * PAGE, { memfd: kind === "wp" });
      if (kind === "minor") backing.bytes.fill(3);
      if (kind === "wp") mem.bytes.fill(4);
      {
        const uffd = Userfaultfd.open({ features: [Feature.MINOR_SHMEM], writers: "other-threads" });
        uffd.register(mem, { missing: kind === "missing", wp: kind === "wp", minor: kind === "minor" });
        if (kind === "wp") uffd.writeProtect(mem);
        let done = false;
        const writer = libc.memsetOffThread(mem.address + P + 10n, 0x7e, 20n).then(() => done = true);
        try {
          const fault = await nextFault(uffd, `the ${kind} fault`);
          assert.equal(fault.wp, kind === "wp");
          assert.equal(fault.minor, kind === "minor");
          // The message is queued before the writer goes to sleep: under load it may be read first.
          await waitFor(() => threadsInFault() === 1, 30_000, "the writer asleep in handle_userfault");
          assert.equal(done, false);
        } finally {
          // Whatever failed, release the writer before its memory goes away.
          uffd.close();
          await within(writer, 30_000, "the writer after close()");
        }
      }
      assert.equal(mem.bytes[PAGE + 10], 0x7e, "the write landed once the fault was released");
      assert.equal(mem.bytes[PAGE + 30], kind === "missing" ? 0 : kind === "minor" ? 3 : 4);
    }
    await assertNothingLeft(before, kind);
  });
}

Deno.test("no hang: a Worker blocked in a fault finishes when the userfaultfd is closed, and can then be terminated", async () => {
  await warmUp(3);
  const before = counts();
  const mem = Region.map(2 * PAGE);
  const worker = new Worker(new URL("./workers/writer.ts", import.meta.url), { type: "module" });
  try {
    const uffd = Userfaultfd.open();
    uffd.register(mem, { missing: true });
    const done = new Promise((resolve) => worker.onmessage = resolve);
    worker.postMessage({ address: mem.address, length: 64, value: 9 });
    await nextFault(uffd, "the Worker's fault");
    uffd.close();
    await within(done, 30_000, "the Worker after close()");
    assert.equal(mem.bytes[63], 9);
  } finally {
    worker.terminate();
  }
  mem.unmap();
  await assertNothingLeft(before, "worker");
});

Deno.test("no leak: 200 userfaultfds closed with a fault pending leave no fd, mapping or thread behind", async () => {
  await warmUp();
  using mem = Region.map(256 * PAGE);
  const before = counts(mem);
  for (let i = 0; i < 200; i++) {
    const uffd = Userfaultfd.open();
    const page = { address: mem.address + BigInt(i) * P, length: PAGE };
    uffd.register(page, { missing: true });
    const writer = libc.memsetOffThread(page.address, 1, 8n);
    await nextFault(uffd, `fault ${i}`);
    uffd.close();
    await within(writer, 30_000, `writer ${i}`);
  }
  await assertNothingLeft(before, "200 rounds", mem);
});

/** A child with a registered range and a writer blocked in a fault on it, ending as `end` says. */
function blockedChild(writer: "pool" | "worker", end: string): string {
  return `
import { Region, Userfaultfd } from "UFFD/mod.ts";
import * as libc from "UFFD/ffi/_libc.ts";
import { nextFault } from "UFFD/tests/conformance/helpers.ts";
const mem = Region.map(4 * 4096); // never unmapped: a writer woken at exit may still touch it
${end.includes("using") ? "using" : "const"} uffd = Userfaultfd.open();
uffd.register(mem, { missing: true });
${
    writer === "pool"
      ? `libc.memsetOffThread(mem.address, 1, 64n).then(() => console.log("writer done"));`
      : `const w = new Worker(new URL("UFFD/tests/workers/writer.ts", import.meta.url), { type: "module" });
w.onmessage = () => { console.log("writer done"); w.terminate(); };
w.postMessage({ address: mem.address, length: 64, value: 1 });`
  }
await nextFault(uffd, "the writer's fault");
console.log("blocked");
${end}
`;
}

const ENDINGS: [string, string, (r: { code: number; signal: Deno.Signal | null; stdout: string }) => void][] = [
  ["Deno.exit(0)", "Deno.exit(0);", (r) => assert.equal(r.code, 0)],
  ["an uncaught exception", `throw new Error("the script fails");`, (r) => assert.equal(r.code, 1)],
  ["SIGTERM", `Deno.kill(Deno.pid, "SIGTERM"); await new Promise(() => {});`, (r) => assert.equal(r.signal, "SIGTERM")],
  ["the end of the module, with \`using\` closing the userfaultfd", "// using", (r) => {
    assert.equal(r.code, 0);
    assert.match(r.stdout, /writer done/, "closing woke the writer");
  }],
];

for (const writer of ["pool", "worker"] as const) {
  for (const [how, end, check] of ENDINGS) {
    Deno.test(`no hang: a process with a writer (${writer === "pool" ? "blocking pool" : "Worker"}) blocked in a fault exits on ${how}`, async () => {
      const r = await runChild(blockedChild(writer, end), { timeoutMs: 15_000 });
      assert.equal(r.timedOut, false, `the child hung: ${describeChild(r)}`);
      assert.match(r.stdout, /blocked/, describeChild(r));
      check(r);
    });
  }
}
