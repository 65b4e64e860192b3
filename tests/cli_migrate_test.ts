/**
 * `uffd migrate`: the demo moves its wasm writer to a second process in each
 * mode and its check holds (`--json`: one document), the text shows the rounds,
 * the downtime and the check, `--bandwidth` limits the stream, usage errors exit
 * 2, and missing permissions exit 3 saying which.
 */

import assert from "node:assert/strict";
import { runCli } from "./cli_run.ts";
import { skipUnless } from "./helpers.ts";
import { Region } from "../mod.ts";

const ignore = skipUnless(Region.pageSize === 4096, "the demo's sizes are in 4 KiB pages");
const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname).replace(/\/$/, "");

for (const mode of ["precopy", "postcopy", "hybrid"]) {
  Deno.test({
    name: `cli migrate --demo --mode ${mode} --json: the writer moved, and its memory checks against the replay`,
    ignore,
    async fn() {
      const r = await runCli(["migrate", "--demo", "--mode", mode, "--memory", "16", "--passes", "50", "--json"]);
      assert.equal(r.code, 0, r.stderr + r.stdout.slice(0, 2000));
      assert.equal(r.stderr, "");
      const o = JSON.parse(r.stdout);
      assert.equal(o.status, "ok");
      assert.equal(o.mode, mode);
      assert.equal(o.check.sourceIntact, true);
      assert.equal(o.check.continued, true, "the destination's memory is the undisturbed run's");
      assert.equal(o.check.atResume, mode === "precopy" ? true : null);
      assert.equal(o.source.mode, mode);
      assert.ok(o.source.downtimeMs > 0);
      assert.equal(o.source.zeroPages >= o.memory.pages - o.memory.dataPages, true, "the untouched quarter not sent");
      if (mode === "postcopy") assert.equal(o.source.rounds.length, 0);
      else assert.ok(o.source.rounds.length >= 1);
    },
  });
}

Deno.test({
  name: "cli migrate --demo (text): the rounds, the downtime, the bytes and three checks",
  ignore,
  async fn() {
    const r = await runCli(["migrate", "--demo", "--memory", "16", "--passes", "50"]);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /^round +pages +zero +bytes +time +bandwidth +dirtied meanwhile +dirty rate$/m);
    assert.match(r.stdout, /^0 +3072 +1024 /m, "round 0: the data pages, the untouched quarter as zero");
    assert.match(r.stdout, /\(paused\)/);
    assert.match(r.stdout, /downtime [\d.]+ ms/);
    assert.equal((r.stdout.match(/✓/g) ?? []).length, 3, r.stdout);
  },
});

Deno.test({
  name: "cli migrate --bandwidth 100mbit holds the stream to 12.5 MB/s",
  ignore,
  async fn() {
    const r = await runCli([
      "migrate",
      "--demo",
      "--memory",
      "4",
      "--passes",
      "20",
      "--bandwidth",
      "100mbit",
      "--json",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const o = JSON.parse(r.stdout);
    const round0 = o.source.rounds[0];
    assert.ok(round0.bandwidth <= 1.5 * 12.5e6, `round 0 at ${round0.bandwidth} B/s`);
    assert.ok(round0.ms >= 0.5 * (round0.bytes / 12.5e6) * 1000, "and so took about as long as 12.5 MB/s takes");
  },
});

Deno.test("cli migrate: usage errors exit 2 with one line", async () => {
  for (
    const args of [
      ["migrate"],
      ["migrate", "--demo", "--mode", "sideways"],
      ["migrate", "--demo", "--bandwidth", "fast"],
      ["migrate", "--demo", "--memory", "3"],
      ["migrate", "--demo", "--downtime", "-1"],
    ]
  ) {
    const { code, stderr, stdout } = await runCli(args);
    assert.equal(code, 2, `${args.join(" ")}: ${stderr}`);
    assert.equal(stdout, "");
    assert.equal(stderr.trim().split("\n").length, 1, stderr);
  }
});

Deno.test({
  name: "cli migrate --demo without --allow-run exits 3 and says which permission",
  ignore,
  async fn() {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-ffi", `--allow-read=${ROOT}`, "--no-prompt", `${ROOT}/cli.ts`, "migrate", "--demo"],
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 3, stderr);
    assert.match(stderr, /--allow-run/);
  },
});
