/** The CLI as a user runs it: a subprocess, its stdout, its exit code. */

import assert from "node:assert/strict";
import { Userfaultfd } from "../mod.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;

async function run(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", CLI, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

Deno.test("features --json is one JSON document that matches Userfaultfd.supported()", async () => {
  const { code, stdout } = await run("features", "--json");
  assert.equal(code, 0);
  const report = JSON.parse(stdout);
  const support = Userfaultfd.supported();
  assert.equal(report.kernel, Deno.osRelease());
  assert.equal(BigInt(report.featureMask), support.featureMask);
  for (const f of report.features) assert.equal(f.supported, support.features.has(f.name), f.name);
  assert.ok(Array.isArray(report.registerIoctls["wp (anon)"]));
  assert.ok(report.registerIoctls["wp (anon)"].includes("WRITEPROTECT"));
});

Deno.test("usage errors exit 2 with one line of help", async () => {
  for (const args of [["no-such-command"], ["features", "--no-such-flag"]]) {
    const { code, stderr, stdout } = await run(...args);
    assert.equal(code, 2, args.join(" "));
    assert.equal(stdout, "");
    assert.equal(stderr.trim().split("\n").length, 1, stderr);
  }
});

Deno.test("--help works for the tool and for each command", async () => {
  const top = await run("--help");
  assert.equal(top.code, 0);
  assert.match(top.stdout, /commands:/);
  const features = await run("features", "--help");
  assert.equal(features.code, 0);
  assert.match(features.stdout, /usage: uffd features/);
});
