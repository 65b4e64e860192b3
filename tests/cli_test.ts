/**
 * The CLI as a user runs it: a subprocess, its stdout, its exit code. Usage
 * errors, help, JSON on stdout only, colors, and `features` against the library's
 * own probes — as root, and as an unprivileged user.
 */

import assert from "node:assert/strict";
import { acceptedCategories, hasPagemapScan, softDirtySupported, Userfaultfd } from "../mod.ts";
import { isRoot, reserveHugePages, skipUnless } from "./helpers.ts";
import { onPath, runCli, runCliOnTerminal } from "./cli_run.ts";

Deno.test("features --json is one JSON document that matches Userfaultfd.supported() and the pagemap probes", async () => {
  const { code, stdout, stderr } = await runCli(["features", "--json"]);
  assert.equal(code, 0, stderr);
  const report = JSON.parse(stdout);
  const support = Userfaultfd.supported();
  assert.equal(report.kernel, Deno.osRelease());
  assert.equal(report.available, true);
  assert.equal(BigInt(report.featureMask), support.featureMask);
  assert.equal(report.origin, support.origin);
  for (const f of report.features) assert.equal(f.supported, support.features.has(f.name), f.name);
  assert.ok(report.registerIoctls["wp (anon)"].includes("WRITEPROTECT"));
  assert.ok(report.registerIoctls["minor (memfd)"].includes("CONTINUE"), "minor registration on a memfd");
  assert.equal(report.registerIoctls["minor (anon)"], undefined, "minor mode does not apply to anonymous memory");
  assert.equal(report.pagemapScan.available, hasPagemapScan());
  assert.deepEqual(report.pagemapScan.categories, acceptedCategories());
  assert.equal(report.softDirty.works, softDirtySupported());
  assert.equal(report.softDirty.categoryAccepted, acceptedCategories().includes("SOFT_DIRTY"));
  if (report.softDirty.categoryAccepted && !report.softDirty.works) {
    assert.match(report.softDirty.note, /compiled out/);
  }
  // The way the library picked is one that the report says works.
  const picked = report.creation.find((w: { way: string }) => w.way === support.origin);
  assert.equal(picked.works, true);
  assert.equal(report.access.uid, Deno.uid());
});

Deno.test("features text shows each creation way, PAGEMAP_SCAN, soft-dirty, THP and hugetlb", async () => {
  const { code, stdout } = await runCli(["features"]);
  assert.equal(code, 0);
  for (const heading of ["userfaultfd(2)", "/dev/userfaultfd", "UFFD_USER_MODE_ONLY", "PAGEMAP_SCAN", "soft-dirty"]) {
    assert.ok(stdout.includes(heading), heading);
  }
  assert.match(stdout, /hugetlb default/);
  const thp = Deno.readTextFileSync("/sys/kernel/mm/transparent_hugepage/enabled");
  const selected = /\[([^\]]+)\]/.exec(thp)![1]!;
  assert.ok(stdout.includes(`transparent huge pages enabled [${selected}]`), "THP mode read from sysfs");
});

Deno.test({
  name: "features measures hugetlb registrations once a huge page is free (forced by reserving one)",
  ignore: skipUnless(isRoot, "needs root to reserve a huge page"),
  async fn() {
    const restore = reserveHugePages(1);
    if (!restore) {
      console.log("skip: no huge page could be reserved on this machine");
      return;
    }
    try {
      const { code, stdout } = await runCli(["features", "--json"]);
      assert.equal(code, 0);
      const report = JSON.parse(stdout);
      assert.equal(report.hugetlb.available, true);
      assert.ok(report.registerIoctls["minor (hugetlb)"].includes("CONTINUE"), "minor on hugetlb");
      const missing = report.registerIoctls["missing (hugetlb)"];
      assert.ok(missing.includes("COPY"));
      assert.equal(missing.includes("ZEROPAGE"), false, "hugetlb has no ZEROPAGE");
    } finally {
      restore();
    }
    // And without free huge pages it says it skipped them, and why.
    const after = JSON.parse((await runCli(["features", "--json"])).stdout);
    if (!after.hugetlb.available) assert.match(after.registerIoctls["wp (hugetlb)"].skipped, /vm\.nr_hugepages/);
  },
});

Deno.test({
  name: "features as an unprivileged user: the syscall and the device are refused; what is left is reported",
  ignore: skipUnless(isRoot && onPath("setpriv"), "needs root and setpriv to run the CLI as nobody"),
  async fn() {
    const sysctl = "/proc/sys/vm/unprivileged_userfaultfd";
    const before = Deno.readTextFileSync(sysctl).trim();
    if (before !== "0") Deno.writeTextFileSync(sysctl, "0");
    try {
      const { code, stdout, stderr } = await runCli(["features", "--json"], { asNobody: true });
      assert.ok(code === 0 || code === 3, `exit ${code}: ${stderr}`);
      const report = JSON.parse(stdout);
      const ways = Object.fromEntries(report.creation.map((w: { way: string }) => [w.way, w]));
      assert.equal(report.access.uid, 65534);
      assert.equal(report.access.capSysPtrace, false);
      assert.equal(ways.syscall.works, false);
      assert.equal(ways.syscall.error, "EPERM", "unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE");
      const dev = Deno.statSync("/dev/userfaultfd");
      if ((dev.mode! & 0o006) !== 0o006) assert.equal(ways.device.works, false, "the device is not world-writable");
      if (ways["user-mode-only"].works) {
        // Linux 5.11+: UFFD_USER_MODE_ONLY lets an unprivileged process in, for user-mode faults only.
        console.log("as nobody: userfaultfd via UFFD_USER_MODE_ONLY (syscall EPERM, device " + ways.device.error + ")");
        assert.equal(code, 0);
        assert.equal(report.origin, "user-mode-only");
        assert.match(report.access.summary, /UFFD_USER_MODE_ONLY/);
      } else {
        console.log(`as nobody: no userfaultfd at all (user-mode-only: ${ways["user-mode-only"].error})`);
        assert.equal(code, 3);
        assert.equal(report.available, false);
        assert.equal(stderr.trim().split("\n").length, 1);
        assert.match(stderr, /vm\.unprivileged_userfaultfd/);
      }
    } finally {
      if (before !== "0") Deno.writeTextFileSync(sysctl, before);
    }
  },
});

Deno.test("every usage error exits 2 with one line of help on stderr and nothing on stdout", async () => {
  const cases = [
    ["no-such-command"],
    ["features", "--no-such-flag"],
    ["features", "extra"],
    ["semantics", "--no-such-flag"],
    ["demo", "--no-such-flag"],
    ["pagemap"],
    ["pagemap", "abc"],
    ["pagemap", "0"],
    ["pagemap", "-5"],
    ["pagemap", "1.5"],
    ["pagemap", "self", "1"],
    ["pagemap", "self", "--no-such-flag"],
    ["pagemap", "self", "--range"],
    ["pagemap", "self", "--range", "0x2000-0x1000"],
    ["pagemap", "self", "--range", "0x1000"],
    ["pagemap", "self", "--range", "zz-0x1000"],
    ["pagemap", "self", "--range", "0x1000-0x10000000000000000"],
    ["help", "no-such-command"],
  ];
  for (const args of cases) {
    const { code, stderr, stdout } = await runCli(args);
    assert.equal(code, 2, `${args.join(" ")}: ${stderr}`);
    assert.equal(stdout, "", args.join(" "));
    assert.equal(stderr.trim().split("\n").length, 1, `${args.join(" ")}: ${stderr}`);
    assert.match(stderr, /^uffd/, args.join(" "));
  }
});

Deno.test("--help works for the tool and for each command, and help <command> says the same", async () => {
  const top = await runCli(["--help"]);
  assert.equal(top.code, 0);
  assert.match(top.stdout, /commands:/);
  for (const command of ["demo", "features", "semantics", "pagemap", "migrate"]) {
    assert.ok(top.stdout.includes(`  ${command} `), command);
    const help = await runCli([command, "--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, new RegExp(`^usage: uffd ${command}`));
    assert.equal((await runCli(["help", command])).stdout, help.stdout);
  }
});

Deno.test("--json prints one JSON document on stdout and nothing on stderr, for every command", async () => {
  for (
    const args of [["demo", "--json"], ["features", "--json"], ["semantics", "--json"], ["pagemap", "self", "--json"]]
  ) {
    const { code, stdout, stderr } = await runCli(args);
    assert.equal(code, 0, `${args.join(" ")}: ${stderr}`);
    assert.doesNotThrow(() => JSON.parse(stdout), args.join(" "));
    assert.equal(stderr, "", `${args.join(" ")}: no progress text when stderr is not a terminal`);
  }
});

Deno.test("colors: on a terminal unless NO_COLOR is set; never when stdout is a pipe", async () => {
  // deno-lint-ignore no-control-regex
  const escape = /\x1b\[[0-9;]*m/;
  const piped = await runCli(["features"], { color: true });
  assert.equal(piped.code, 0);
  assert.doesNotMatch(piped.stdout, escape, "stdout is a pipe");
  if (skipUnless(onPath("script"), "no `script` to give the CLI a terminal")) return;
  const tty = await runCliOnTerminal(["features"], { color: true });
  assert.equal(tty.code, 0, tty.stdout);
  assert.match(tty.stdout, escape, "a terminal gets colors");
  const noColor = await runCliOnTerminal(["features"]);
  assert.equal(noColor.code, 0);
  assert.doesNotMatch(noColor.stdout, escape, "NO_COLOR");
});
