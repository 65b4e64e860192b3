/**
 * How a userfaultfd behaves under `poll()`, and signals: userfaultfd.rst says
 * poll() reports POLLERR on a userfaultfd that is not initialised (no UFFDIO_API
 * yet) or blocking; uffd-common.c's readers treat EINTR as "try again"
 * (`uffd_read_msg`) and stop on a pipe polled beside the userfaultfd
 * (`uffd_poll_thread`).
 *
 * The library never polls a blocking userfaultfd (events() and FaultHandler
 * refuse one) and never blocks in read(): the POLLERR checks poll through `ffi/`
 * directly; the EINTR check interrupts the handler's poll() with signals.
 */

import assert from "node:assert/strict";
import {
  FaultHandler,
  O_CLOEXEC,
  O_NONBLOCK,
  policies,
  POLLERR,
  POLLIN,
  Region,
  UFFD_USER_MODE_ONLY,
  UffdError,
  Userfaultfd,
} from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { PollSet } from "../../ffi/_pollset.ts";
import { sysUserfaultfd } from "../../ffi/_syscalls.ts";
import { uffdioApi } from "../../ffi/_uffd_ioctls.ts";
import { skipUnless, waitFor, within } from "../helpers.ts";
import { describeChild, runChild } from "./helpers.ts";
import { nativeCodeAvailable } from "./native_code.ts";

function revents(fd: number): number {
  const set = new PollSet([fd]);
  assert.ok(set.poll(0) >= 0);
  return set.revents(0);
}

Deno.test("userfaultfd.rst POLLERR: poll() on a userfaultfd before UFFDIO_API, and on a blocking one; the API refuses to poll a blocking one", async (t) => {
  await t.step("before UFFDIO_API (ffi: the library always completes the handshake)", () => {
    const fd = libc.userfaultfd(sysUserfaultfd(), O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    assert.ok(fd >= 0, `userfaultfd: errno ${-fd}`);
    try {
      assert.ok(revents(fd) & POLLERR, "POLLERR before the handshake");
      assert.equal(uffdioApi(fd, 0n).rc, 0);
      assert.equal(revents(fd) & POLLERR, 0, "no POLLERR once initialised (non-blocking)");
    } finally {
      libc.close(fd);
    }
  });
  await t.step("a blocking userfaultfd", () => {
    using blocking = Userfaultfd.open({ nonblocking: false });
    assert.ok(revents(blocking.fd) & POLLERR, "POLLERR: poll() cannot promise a blocking read will not block");
    using nonblocking = Userfaultfd.open();
    assert.equal(revents(nonblocking.fd), 0, "an idle non-blocking userfaultfd: nothing to report");
  });
  await t.step("a queued fault makes a non-blocking one readable (POLLIN) until it is read", async () => {
    using mem = Region.map(Region.pageSize);
    using uffd = Userfaultfd.open();
    uffd.register(mem, { missing: true });
    const reader = libc.memcpyOffThread(libc.addressOf(new Uint8Array(8)), mem.address, 8n);
    try {
      await waitFor(() => (revents(uffd.fd) & POLLIN) !== 0, 30_000, "POLLIN for the queued fault");
      const events = uffd.readEvents();
      assert.equal(events.length, 1);
      assert.equal(revents(uffd.fd) & POLLIN, 0, "read: nothing queued any more (the fault still waits)");
      uffd.zeropage(mem);
      await within(reader, 30_000, "the reader");
    } finally {
      uffd.close(); // whatever failed, the reader is released before the page is unmapped
      await reader;
    }
  });
  await t.step("events() and FaultHandler.start refuse a blocking userfaultfd, naming POLLERR", async () => {
    using blocking = Userfaultfd.open({ nonblocking: false });
    assert.throws(
      () => blocking.events(),
      (e) => e instanceof UffdError && e.code === "EINVAL" && /POLLERR/.test(e.message),
    );
    await assert.rejects(
      FaultHandler.start(blocking, policies.zerofill()),
      (e) => e instanceof UffdError && e.code === "EINVAL",
    );
  });
});

Deno.test({
  name: "uffd-common.c uffd_read_msg: EINTR: signals interrupting the handler's poll() are retried; it keeps serving",
  ignore: skipUnless(nativeCodeAvailable, `no native tgkill for ${Deno.build.arch}`),
  async fn() {
    const r = await runChild(
      `
import { FaultHandler, policies, Region, Userfaultfd } from "UFFD/mod.ts";
import { tgkill } from "UFFD/tests/conformance/native_code.ts";
let delivered = 0;
Deno.addSignalListener("SIGUSR1", () => delivered++); // a handler: the signal interrupts system calls
using mem = Region.map(64 * 4096, { populate: true });
using uffd = Userfaultfd.open();
uffd.register(mem, { wp: true });
await using handler = await FaultHandler.start(uffd, policies.module(new URL("UFFD/tests/conformance/tid_policy.ts")));
uffd.writeProtect(mem);
const tid = handler.control("tid");
const before = handler.stats.wakeups;
for (let i = 0; i < 50; i++) {
  if (tgkill(Deno.pid, tid, 10) !== 0) throw new Error("tgkill");
  await new Promise((resolve) => setTimeout(resolve, 3));
}
const interrupted = handler.stats.wakeups - before;
for (let p = 0; p < 64; p++) mem.bytes[p * 4096] = 1; // the main isolate's writes: served after all that
console.log(JSON.stringify({ interrupted, delivered, state: handler.state, wp: handler.stats.wp, tid }));
Deno.exit(0);
`,
      { timeoutMs: 20_000 },
    );
    assert.equal(r.timedOut, false, describeChild(r));
    assert.equal(r.code, 0, describeChild(r));
    const o = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    assert.ok(o.interrupted >= 25, `poll() returned early for ${o.interrupted} of 50 signals (EINTR)`);
    assert.equal(o.state, "running", "EINTR is not an error");
    assert.equal(o.wp, 64, "and the handler served every fault after them");
    console.log(`${o.interrupted} of 50 signals interrupted poll(); ${o.delivered} reached the listener`);
  },
});
