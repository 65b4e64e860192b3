/**
 * The kernel runner's pure parts, on the host (no QEMU): the console parser,
 * the cpio writer, the module load order, the plan's shell quoting.
 */

import assert from "node:assert/strict";
import { cpio } from "./cpio.ts";
import { loadOrder, moduleName } from "./modinfo.ts";
import { commandOf, planScript } from "./plan.ts";
import { ResultCollector } from "./results.ts";

const PLAN = [
  { label: "tests/a_test.ts", kind: "test" as const },
  { label: "tests/b_test.ts", kind: "test" as const },
  { label: "tests/c_test.ts", kind: "test" as const },
  { label: "uname -r", kind: "cmd" as const },
];

function feed(lines: string[]): ResultCollector {
  const c = new ResultCollector(PLAN);
  for (const l of lines) c.line(l);
  return c;
}

Deno.test("results: a passing, a failing and a hung file, and a command", () => {
  const c = feed([
    "UFFD-INFO release=6.1.0-57-amd64 thp=[always] madvise never cpus=2 mem_kb=4009148 uptime_cs=305",
    "UFFD-BEGIN 1 tests/a_test.ts",
    "running 2 tests from ./tests/a_test.ts",
    "one ... ok (3ms)",
    "two ...",
    "  step ... ok (1ms)",
    "two ... ok (5ms)",
    "ok | 2 passed (1 step) | 0 failed | 1 ignored (9s)",
    "UFFD-END 1 rc=0 how=exited cs=467",
    "UFFD-BEGIN 2 tests/b_test.ts",
    "bad ... FAILED (2ms)",
    " ERRORS ",
    "",
    "bad => ./tests/b_test.ts:3:6",
    "error: AssertionError: Values are not equal.",
    " FAILURES ",
    "bad => ./tests/b_test.ts:3:6",
    "FAILED | 0 passed | 1 failed (1s)",
    "error: Test failed",
    "UFFD-END 2 rc=1 how=exited cs=100",
    "UFFD-BEGIN 3 tests/c_test.ts",
    "first ... ok (1ms)",
    "stuck ...",
    "UFFD-HANG 3 tests/c_test.ts: no exit after 20 s; kernel stacks of its tasks:",
    "UFFD-DUMP-BEGIN 270",
    "  tid 286 tokio-runtime-w [S (sleeping)] wchan=handle_userfault",
    "    [<0>] handle_userfault+0x511/0x730",
    "UFFD-DUMP-END 270",
    "UFFD-END 3 rc=137 how=hung cs=2100",
    "UFFD-BEGIN 4 uname -r",
    "6.1.0-57-amd64",
    "UFFD-END 4 rc=0 how=exited cs=10",
    "UFFD-EXIT 2",
  ]);
  assert.equal(c.info?.release, "6.1.0-57-amd64");
  assert.equal(c.info?.thp, "[always] madvise never");
  assert.equal(c.exit, 2);
  const [a, b, h, cmd] = c.results;
  assert.deepEqual([a.status, a.passed, a.failed, a.ignored, a.guestSeconds], ["ok", 2, 0, 1, 4.67]);
  assert.deepEqual([b.status, b.passed, b.failed], ["failed", 0, 1]);
  assert.deepEqual(b.errors.slice(0, 2), [
    "bad => ./tests/b_test.ts:3:6",
    "error: AssertionError: Values are not equal.",
  ]);
  assert.deepEqual([h.status, h.passed, h.failed, h.exitCode, h.signal], ["hang", 1, 1, 137, 9]);
  assert.equal(h.lastStarted, "stuck");
  assert.match(h.dump.join("\n"), /handle_userfault/);
  assert.deepEqual([cmd.status, cmd.passed, cmd.failed], ["ok", 1, 0]);
});

Deno.test("results: a signal is a crash; a guest that dies mid-file is one too", () => {
  const c = feed([
    "UFFD-BEGIN 1 tests/a_test.ts",
    "one ... ok (1ms)",
    "UFFD-SIGNAL 1 signal 11; kernel log since it started:",
    "[    9.07] deno[225]: segfault at 10 ip 00005609ba9097ab",
    "UFFD-END 1 rc=139 how=exited cs=200",
    "UFFD-BEGIN 2 tests/b_test.ts",
    "[   10.00] Kernel panic - not syncing: sysrq triggered crash",
  ]);
  assert.deepEqual([c.results[0].status, c.results[0].signal, c.results[0].passed, c.results[0].failed], [
    "crash",
    11,
    1,
    1,
  ]);
  assert.match(c.results[0].kernelLog[0], /segfault/);
  assert.equal(c.running?.label, "tests/b_test.ts");
  const cut = c.abort("crash", "QEMU exited");
  assert.deepEqual([cut?.status, cut?.failed], ["crash", 1]);
  assert.match(c.kernelTrouble[0], /^Kernel panic/);
});

Deno.test("results: a non-zero exit without a summary is an error", () => {
  const c = feed([
    "UFFD-BEGIN 1 tests/a_test.ts",
    "error: Module not found",
    "UFFD-END 1 rc=1 how=exited cs=50",
  ]);
  assert.deepEqual([c.results[0].status, c.results[0].failed, c.results[0].errors], [
    "error",
    1,
    ["error: Module not found"],
  ]);
});

Deno.test("cpio: newc headers, 4-byte alignment, the trailer", () => {
  const bytes = cpio([{ kind: "file", path: "/init", data: new TextEncoder().encode("abc"), mode: 0o755 }]);
  const text = new TextDecoder().decode(bytes);
  assert.ok(text.startsWith("070701"));
  assert.equal(parseInt(text.slice(6 + 8, 6 + 16), 16), 0o100755);
  assert.equal(parseInt(text.slice(6 + 6 * 8, 6 + 7 * 8), 16), 3);
  assert.ok(text.includes("init\0"));
  assert.ok(text.includes("TRAILER!!!\0"));
  assert.equal(bytes.length % 4, 0);
});

Deno.test("modinfo: dependencies load first, built-in ones are skipped, missing ones throw", () => {
  const deps: Record<string, string[]> = {
    "9p": ["9pnet", "netfs", "fscache"],
    "9pnet": [],
    netfs: [],
    fscache: ["netfs"],
    "9pnet_virtio": ["9pnet", "virtio", "virtio_ring"],
  };
  const order = loadOrder(["9pnet_virtio", "9p"], (n) => deps[n], (n) => n.startsWith("virtio"));
  assert.deepEqual(order, ["9pnet", "9pnet_virtio", "netfs", "fscache", "9p"]);
  assert.throws(() => loadOrder(["nope"], () => undefined, () => false), /neither in the package nor built in/);
  assert.equal(moduleName("kernel/net/9p/9pnet-virtio.ko.xz"), "9pnet_virtio");
});

Deno.test("plan: commands are quoted for sh, and every item gets its watchdog", () => {
  const opts = { repo: "/w/it's", deno: "/opt/deno/deno", denoArgs: ["--filter", "a b"], thp: "never" };
  assert.equal(
    commandOf({ kind: "test", label: "tests/x_test.ts", timeout: 9 }, opts),
    `cd '/w/it'"'"'s' && exec '/opt/deno/deno' 'test' '--allow-all' '--no-prompt' '--no-check' '--filter' 'a b' 'tests/x_test.ts'`,
  );
  const plan = planScript([{ kind: "cmd", label: "echo hi", timeout: 5 }], opts);
  assert.match(plan, /^UFFD_THP='never'$/m);
  assert.match(plan, /^export PATH='\/opt\/deno':"\$PATH"$/m);
  assert.match(plan, /^ {2}uffd_run 'echo hi' 5 /m);
});
