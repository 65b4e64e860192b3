/**
 * The library as an unprivileged user: the tests drop to `nobody` in a child
 * process (root can, through `setpriv`). With `vm.unprivileged_userfaultfd=0`
 * the library falls back to `UFFD_USER_MODE_ONLY`: user-space faults are served
 * as usual, a fault the kernel takes for a system call fails with EFAULT instead
 * of blocking, and where nothing can work the error names the sysctl, the
 * capability and the device file. With the sysctl at 1 the syscall gives a full
 * userfaultfd and kernel-mode faults arrive as events. Every sysctl changed is
 * restored.
 */

import assert from "node:assert/strict";
import { DEADLINE_SCALE, isRoot, skipUnless } from "./helpers.ts";
import { type ChildResult, describeChild, ROOT, runChild } from "./conformance/helpers.ts";

const SYSCTL = "/proc/sys/vm/unprivileged_userfaultfd";

/** Whether `nobody` can read the checkout (every directory from / down to it must be searchable). */
function checkoutReadable(): boolean {
  let dir = decodeURIComponent(ROOT.pathname).replace(/\/$/, "");
  while (dir) {
    if (((Deno.statSync(dir).mode ?? 0) & 0o005) !== 0o005) return false;
    dir = dir.slice(0, dir.lastIndexOf("/"));
  }
  return true;
}

function setprivAvailable(): boolean {
  try {
    return new Deno.Command("setpriv", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

const ignore = skipUnless(isRoot, "dropping to nobody needs root") ||
  skipUnless(setprivAvailable(), "setpriv (util-linux) is not installed") ||
  skipUnless(checkoutReadable(), "the checkout is not readable by nobody");

/** Runs `fn` with the sysctl at `value`, and restores what it was. */
async function withSysctl(value: string, fn: () => Promise<void>): Promise<void> {
  const before = Deno.readTextFileSync(SYSCTL).trim();
  Deno.writeTextFileSync(SYSCTL, value);
  try {
    await fn();
  } finally {
    Deno.writeTextFileSync(SYSCTL, before);
    assert.equal(Deno.readTextFileSync(SYSCTL).trim(), before, "the sysctl is restored");
  }
}

/** Runs `source` (or a `deno test` of `paths`) as nobody with a DENO_DIR nobody can write. */
async function asNobody(source: string, denoTest?: string[]): Promise<ChildResult> {
  const denoDir = Deno.makeTempDirSync({ prefix: "uffd-nobody-" });
  Deno.chmodSync(denoDir, 0o777);
  const asUser = { user: "nobody", group: "nogroup", denoDir };
  try {
    if (!denoTest) return await runChild(source, { asUser, timeoutMs: 30_000 });
    const child = new Deno.Command("setpriv", {
      args: [
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        Deno.execPath(),
        "test",
        "-A",
        "--no-prompt",
        "--no-check",
        ...denoTest,
      ],
      cwd: "/tmp",
      env: { DENO_DIR: denoDir, HOME: denoDir, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, 120_000 * DEADLINE_SCALE);
    const out = await child.output();
    clearTimeout(timer);
    const text = (b: Uint8Array) => new TextDecoder().decode(b);
    return { code: out.code, signal: out.signal, stdout: text(out.stdout), stderr: text(out.stderr), timedOut };
  } finally {
    Deno.removeSync(denoDir, { recursive: true });
  }
}

const RESULT = `
const replacer = (_k: string, v: unknown) => typeof v === "bigint" ? v.toString() : v;
const outcome = (f: () => unknown) => {
  try {
    f();
    return "no error";
  } catch (e) {
    return e instanceof UffdError ? { code: e.code, message: e.message } : String(e);
  }
};
`;

Deno.test({
  name:
    "unprivileged, vm.unprivileged_userfaultfd=0: user-mode-only fallback, served faults, EFAULT for syscalls, clear refusals",
  ignore,
  async fn() {
    await withSysctl("0", async () => {
      const r = await asNobody(`
import { Feature, hasPagemapScan, pagemapScan, readPagemap, Region, UffdError, Userfaultfd, diagnoseAccess } from "UFFD/mod.ts";
import * as libc from "UFFD/ffi/_libc.ts";
import { serveUntil } from "UFFD/tests/conformance/helpers.ts";
${RESULT}
const out: Record<string, unknown> = { uid: Deno.uid(), access: diagnoseAccess() };
{
  using mem = Region.map(4 * 4096);
  using uffd = Userfaultfd.open();
  out.origin = uffd.origin;
  uffd.register(mem, { missing: true });
  // A user-space write on another thread: a missing fault, served here.
  const writer = libc.memsetOffThread(mem.address + 4096n, 7, 16n);
  const served = await serveUntil(uffd, writer, (f) => uffd.zeropage({ address: f.address, length: 4096 }));
  out.userFaults = served.faults.length;
  out.written = mem.bytes[4096];
  // The kernel writing into a missing page for read(2): EFAULT, no event, no blocking.
  const zero = libc.open("/dev/zero", 0);
  out.readIntoMissing = libc.read(zero, new Uint8Array(libc.bufferAt(mem.address + 8192n, 64)), 64);
  libc.close(zero);
  out.eventsAfterRead = uffd.readEvents().length;
}
{
  // Write tracking on the user-mode-only fd: WP_ASYNC and PAGEMAP_SCAN where the kernel has them (6.7+); elsewhere
  // sync write-protect, read back from the pagemap's uffd-wp bit (page 3 written first, then unprotected).
  using mem = Region.map(8 * 4096);
  const async = Userfaultfd.supported().features.has(Feature.WP_ASYNC) && hasPagemapScan();
  using uffd = Userfaultfd.open(
    async ? { require: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED] } : { writers: "other-threads" },
  );
  uffd.register(mem, { wp: true });
  if (!async) mem.bytes.fill(1, 0, 4 * 4096);
  uffd.writeProtect(mem);
  if (async) {
    mem.bytes[3 * 4096] = 1;
    out.written = [out.written, pagemapScan(mem, { require: ["WRITTEN"] }).map((r) => r.firstPage)];
  } else {
    uffd.unprotect({ address: mem.address + 3n * 4096n, length: 4096 });
    out.written = [out.written, readPagemap(mem).flatMap((e, i) => e.present && !e.uffdWp ? [i] : [])];
  }
}
out.strict = outcome(() => Userfaultfd.open({ userModeOnly: false }));
out.device = outcome(() => Userfaultfd.open({ via: "device" }));
out.forkWished = [...Userfaultfd.open({ features: [Feature.EVENT_FORK, Feature.THREAD_ID] }).features];
out.forkRequired = outcome(() => Userfaultfd.open({ require: [Feature.EVENT_FORK] }));
console.log(JSON.stringify(out, replacer));
`);
      assert.equal(r.code, 0, describeChild(r));
      const out = JSON.parse(r.stdout);
      assert.equal(out.uid, 65534);
      assert.deepEqual(
        [out.access.unprivilegedSysctl, out.access.capSysPtrace, out.access.device.accessible],
        [0, false, false],
      );
      assert.equal(out.origin, "user-mode-only", "the library fell back to UFFD_USER_MODE_ONLY");
      assert.equal(out.userFaults, 1);
      assert.deepEqual(out.written, [7, [3]]);
      assert.equal(out.readIntoMissing, -14, "read(2) into a missing page: EFAULT, not a hang");
      assert.equal(out.eventsAfterRead, 0);
      assert.equal(out.strict.code, "EPERM", JSON.stringify(out.strict));
      for (const needle of ["vm.unprivileged_userfaultfd", "CAP_SYS_PTRACE", "/dev/userfaultfd"]) {
        assert.ok(out.strict.message.includes(needle), `the refusal names ${needle}: ${out.strict.message}`);
      }
      assert.equal(out.device.code, "EACCES");
      assert.match(out.device.message, /\/dev\/userfaultfd (\([^)]*\) )?cannot be opened by this user/);
      assert.deepEqual(out.forkWished, ["THREAD_ID"], "EVENT_FORK wished for is left out without CAP_SYS_PTRACE");
      assert.equal(out.forkRequired.code, "EPERM");
      assert.match(out.forkRequired.message, /EVENT_FORK needs CAP_SYS_PTRACE/);
    });
  },
});

Deno.test({
  name: "unprivileged, vm.unprivileged_userfaultfd=1: a full userfaultfd; a kernel-mode fault is an event, served",
  ignore,
  async fn() {
    await withSysctl("1", async () => {
      const r = await asNobody(`
import { Feature, Region, UffdError, Userfaultfd } from "UFFD/mod.ts";
import * as libc from "UFFD/ffi/_libc.ts";
import { serveUntil, SyscallThread } from "UFFD/tests/conformance/helpers.ts";
${RESULT}
const out: Record<string, unknown> = {};
{
  using thread = new SyscallThread();
  using mem = Region.map(2 * 4096);
  using uffd = Userfaultfd.open({ userModeOnly: false });
  out.origin = uffd.origin;
  uffd.register(mem, { missing: true });
  // read(2) from /dev/zero into the missing page, on a Worker: the kernel's own fault arrives here.
  const zero = libc.open("/dev/zero", 0);
  const read = thread.call({ op: "read", fd: zero, address: mem.address, length: 64 });
  const served = await serveUntil(uffd, read, (f) => uffd.zeropage({ address: f.address, length: 4096 }));
  out.kernelFaults = served.faults.length;
  out.readResult = served.result;
  libc.close(zero);
}
out.forkRequired = outcome(() => Userfaultfd.open({ require: [Feature.EVENT_FORK] }));
console.log(JSON.stringify(out));
`);
      assert.equal(r.code, 0, describeChild(r));
      const out = JSON.parse(r.stdout);
      assert.equal(out.origin, "syscall");
      assert.equal(out.kernelFaults, 1, "the fault read(2) took in the kernel was delivered");
      assert.equal(out.readResult, 64);
      assert.equal(out.forkRequired.code, "EPERM", "EVENT_FORK still needs CAP_SYS_PTRACE");
    });
  },
});

Deno.test({
  name: "unprivileged: the conformance suite passes as nobody with vm.unprivileged_userfaultfd=0",
  ignore,
  async fn() {
    await withSysctl("0", async () => {
      const r = await asNobody("", [new URL("./conformance/", import.meta.url).pathname]);
      assert.equal(r.code, 0, describeChild(r));
      const summary = /ok \| (\d+) passed.*\| 0 failed/.exec(r.stdout);
      // Most of the suite runs as nobody, not only its skips: 37 tests on 6.1 (no POISON, MOVE, PAGEMAP_SCAN), 40+ on 6.7+.
      assert.ok(summary && Number(summary[1]) >= 30, `summary: ${r.stdout.slice(-400)}`);
    });
  },
});
