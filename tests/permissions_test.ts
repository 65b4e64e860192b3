/**
 * The minimum Deno permissions of each entry point, checked by running children
 * with exactly those flags (README, "Permissions"). The library needs
 * `--allow-ffi` and nothing else: it reads `/proc` and `/dev/userfaultfd` through
 * libc, because Deno's own file APIs refuse those paths without `--allow-all`
 * (so `--allow-read` would add nothing). The CLI's commands need `--allow-ffi`
 * too and nothing else, but for the demo's live snapshot, whose Workers load the
 * package's modules (`--allow-read` of the package; without it that step is
 * refused, exit 3, after the others ran); `--help` needs nothing; colors need no
 * `--allow-env` (Deno lets every program read `NO_COLOR`).
 */

import assert from "node:assert/strict";
import { isRoot, skipUnless } from "./helpers.ts";
import { hasPagemapScan } from "../kernel/pagemap_scan.ts";
import { describeChild, ROOT, runChild } from "./conformance/helpers.ts";

const CLI = new URL("cli.ts", ROOT).pathname;

function scriptAvailable(): boolean {
  try {
    return new Deno.Command("script", { args: ["-V"], stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

/** A library smoke run: everything the library reads or does, reported as JSON. */
const LIBRARY = `
import {
  acceptedCategories, diagnoseAccess, Feature, kernelRelease, pagemapScan, readMaps, readPagemap, Region,
  softDirtySupported, UffdError, Userfaultfd,
} from "UFFD/mod.ts";
import * as libc from "UFFD/ffi/_libc.ts";
const out: Record<string, unknown> = {};
using mem = Region.map(8 * 4096);
// Where the kernel resolves writes itself (WP_ASYNC) and reports them (PAGEMAP_SCAN), a write after protecting;
// elsewhere (Linux before 6.7) the page is written first and unprotected, and the uffd-wp bit of the pagemap says so.
const async = Userfaultfd.supported().features.has(Feature.WP_ASYNC) && acceptedCategories().length > 0;
using uffd = Userfaultfd.open(
  async ? { require: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED] } : { features: [Feature.WP_UNPOPULATED], writers: "other-threads" },
);
out.origin = uffd.origin;
uffd.register(mem.pages(0, 4), { wp: true });
if (!async) mem.bytes[2 * 4096] = 1;
uffd.writeProtect(mem.pages(0, 4));
if (async) {
  mem.bytes[2 * 4096] = 1;
  out.written = pagemapScan(mem.pages(0, 4), { require: ["WRITTEN"] }).map((r) => r.firstPage);
} else {
  uffd.unprotect(mem.pages(2));
  out.written = readPagemap(mem.pages(0, 4)).flatMap((e, i) => e.present && !e.uffdWp ? [i] : []);
}
out.present = readPagemap(mem.pages(0, 4)).map((e) => e.present);
// The hole check reads /proc/self/maps: a range running into a hole must be refused before the syscall.
using holed = Region.map(2 * 4096);
libc.munmap(holed.address + 4096n, 4096n);
try {
  uffd.register(holed, { missing: true });
  out.hole = "registered";
} catch (e) {
  out.hole = e instanceof UffdError ? [e.code, e.beforeSyscall] : String(e);
}
// A refused open is a UffdError, not a permission error from a diagnosis that could not read something.
try {
  Userfaultfd.open({ require: [Feature.MOVE], decline: [Feature.MOVE] });
} catch (e) {
  out.refused = e instanceof UffdError ? e.code : String(e);
}
const access = diagnoseAccess();
out.access = [access.unprivilegedSysctl !== undefined, access.capSysPtrace !== undefined, access.device.accessible];
out.deviceMode = access.device.mode ?? null;
out.maps = readMaps().length > 0;
out.hugePageSize = Region.hugePageSize;
out.kernel = kernelRelease();
out.softDirty = softDirtySupported();
out.categories = acceptedCategories().length;
console.log(JSON.stringify(out));
`;

async function library(flags: string[]) {
  const r = await runChild(LIBRARY, { flags });
  assert.equal(r.code, 0, `${flags.join(" ")}: ${describeChild(r)}`);
  return JSON.parse(r.stdout);
}

async function cli(flags: string[], ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", "--quiet", ...flags, CLI, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("permissions: the library needs --allow-ffi; without it the import fails and says so", async () => {
  const r = await runChild(`import { Userfaultfd } from "UFFD/mod.ts"; console.log(Userfaultfd.supported().origin);`, {
    flags: [],
  });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /Requires ffi access to "libc\.so\.6".*--allow-ffi/);
});

Deno.test("permissions: --allow-ffi alone runs everything in the library; --allow-read adds nothing", async () => {
  const ffi = await library(["--allow-ffi"]);
  assert.equal(ffi.origin, isRoot ? "syscall" : "user-mode-only");
  assert.deepEqual(ffi.written, [2]);
  assert.deepEqual(ffi.present, [false, false, true, false]);
  assert.deepEqual(ffi.hole, ["ENOMEM", true], "the hole check works without --allow-read");
  assert.equal(ffi.refused, "EINVAL");
  assert.deepEqual(ffi.access, [true, true, isRoot], "the access diagnosis reads /proc without --allow-read");
  assert.equal(ffi.deviceMode, null, "only the device's mode bits need more (Deno.statSync of /dev: --allow-all)");
  assert.equal(ffi.maps, true);
  assert.equal(ffi.kernel, Deno.osRelease(), "the kernel release without --allow-sys");
  assert.equal(ffi.categories > 0, hasPagemapScan(), "PAGEMAP_SCAN's categories where the kernel has it");
  const read = await library(["--allow-ffi", "--allow-read"]);
  assert.deepEqual(read, ffi, "--allow-read changes nothing");
  const all = await library(["--allow-all"]);
  assert.deepEqual({ ...all, deviceMode: null }, ffi, "--allow-all changes nothing but the device's mode");
  assert.match(all.deviceMode, /^0[0-7]{3}$/);
});

Deno.test("permissions: the CLI's --help needs nothing; features, semantics, pagemap need --allow-ffi alone", async () => {
  const help = await cli([], "--help");
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout, /commands:/);
  const none = await cli([], "features", "--json");
  assert.equal(none.code, 3, "refused: exit 3");
  assert.match(none.stderr, /--allow-ffi/);
  for (const args of [["features"], ["semantics"], ["pagemap", "self"]]) {
    const r = await cli(["--allow-ffi"], ...args, "--json");
    assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    const report = JSON.parse(r.stdout);
    if ("kernel" in report) assert.equal(report.kernel, Deno.osRelease());
  }
});

Deno.test("permissions: the demo needs --allow-ffi, and --allow-read of the package for its live snapshot", async () => {
  const ffi = await cli(["--allow-ffi"], "demo", "--json");
  const report = JSON.parse(ffi.stdout);
  assert.equal(report.kernel, Deno.osRelease());
  assert.equal(report.features.status, "ok");
  assert.notEqual(report.writeWatch.status, "refused", "the watch needs nothing more");
  const root = new URL(".", ROOT).pathname.replace(/\/$/, "");
  assert.equal(report.liveSnapshot.status, "refused");
  assert.ok(report.liveSnapshot.reason.includes(`--allow-read=${root}`), report.liveSnapshot.reason);
  assert.equal(ffi.code, 3, "refused by the permissions: exit 3");
  assert.equal(ffi.stderr.trim().split("\n").length, 1, "one line on stderr, no Worker's stack trace");
  assert.match(ffi.stderr, /live snapshot refused: .*--allow-read=/);
  const read = await cli(["--allow-ffi", `--allow-read=${root}`], "demo", "--json");
  assert.equal(read.code, 0, read.stderr);
  const snap = JSON.parse(read.stdout).liveSnapshot;
  assert.ok(["ok", "skipped"].includes(snap.status), snap.reason);
  if (snap.status === "ok") assert.equal(snap.consistent, true);
});

Deno.test({
  name: "permissions: the CLI colors a terminal and honours NO_COLOR without --allow-env",
  ignore: skipUnless(scriptAvailable(), "script (util-linux) is needed for a pseudo-terminal"),
  async fn() {
    const inTerminal = async (env: Record<string, string>) => {
      const command = `${Deno.execPath()} run --no-prompt --allow-ffi ${CLI} features`;
      const out = await new Deno.Command("script", { args: ["-qec", command, "/dev/null"], env, clearEnv: true })
        .output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      return new TextDecoder().decode(out.stdout);
    };
    const path = { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", TERM: "xterm" };
    const ESC = "\u001b[";
    assert.ok((await inTerminal(path)).includes(`${ESC}1mkernel`), "bold in a terminal");
    assert.ok(!(await inTerminal({ ...path, NO_COLOR: "1" })).includes(ESC), "plain with NO_COLOR");
  },
});

Deno.test({
  name: "permissions: an unprivileged user with --allow-ffi alone gets the user-mode-only fallback",
  ignore: skipUnless(isRoot, "dropping to nobody needs root"),
  async fn() {
    const denoDir = Deno.makeTempDirSync({ prefix: "uffd-perm-" });
    Deno.chmodSync(denoDir, 0o777);
    try {
      const r = await runChild(LIBRARY, {
        flags: ["--allow-ffi"],
        asUser: { user: "nobody", group: "nogroup", denoDir },
      });
      assert.equal(r.code, 0, describeChild(r));
      const out = JSON.parse(r.stdout);
      assert.equal(out.origin, "user-mode-only");
      assert.deepEqual(out.written, [2]);
      assert.deepEqual(out.hole, ["ENOMEM", true]);
      assert.deepEqual(out.access, [true, true, false], "the device measured as not openable");
    } finally {
      Deno.removeSync(denoDir, { recursive: true });
    }
  },
});
