/**
 * The README's live migration blocks run as written, as two processes with
 * `--allow-ffi --allow-read` (over the hand-assembled `app.wasm` of the round
 * trip, `tests/fixtures/wasm_app.ts`, on a free port instead of 7070): the
 * destination prints the steps the source took and the checksum they left, and
 * the source the same — the instance goes on at the destination from exactly
 * where it stopped.
 */

import assert from "node:assert/strict";
import { WASM_APP_BYTES } from "./fixtures/wasm_app.ts";
import { DEADLINE_SCALE } from "./helpers.ts";

const ROOT = new URL("../", import.meta.url);

function blocks(): [string, string] {
  const readme = Deno.readTextFileSync(new URL("README.md", ROOT));
  const start = readme.indexOf("## Live migration");
  assert.ok(start >= 0, "README has a ## Live migration section");
  const section = readme.slice(start, readme.indexOf("\n## ", start + 1));
  const found = [...section.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
  assert.equal(found.length, 2, "the destination's block, then the source's");
  return [found[0]!, found[1]!];
}

async function run(code: string, dir: string, deadlineMs: number) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-ffi", "--allow-read", "--no-prompt", "-"],
    cwd: ROOT,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), deadlineMs * DEADLINE_SCALE);
  const writer = child.stdin.getWriter();
  // Imports are hoisted: the block runs from the directory holding app.wasm.
  await writer.write(new TextEncoder().encode(`Deno.chdir(${JSON.stringify(dir)});\n${code}`));
  await writer.close();
  const out = await child.output();
  clearTimeout(timer);
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("README live migration: the two blocks, as two processes, agree on the steps and the checksum", async () => {
  const [destination, source] = blocks();
  assert.match(destination, /Migration\.receive\(listener, \{ target: memory \}\)/);
  assert.match(source, /pause: \(\) => clearInterval\(timer\)/);
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = String((probe.addr as Deno.NetAddr).port);
  probe.close();
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/app.wasm`, WASM_APP_BYTES);
    const [d, s] = await Promise.all([
      run(destination.replace("port: 7070", `port: ${port}`), dir, 60_000),
      run(source.replace("port: 7070", `port: ${port}`), dir, 60_000),
    ]);
    assert.equal(d.code, 0, `the destination's block failed:\n${d.stdout}\n${d.stderr}`);
    assert.equal(s.code, 0, `the source's block failed:\n${s.stdout}\n${s.stderr}`);
    const [dSteps, dSum] = d.stdout.trim().split(" ");
    const [sSteps, sSum, rounds] = s.stdout.trim().split(" ");
    assert.ok(Number(sSteps) > 0, s.stdout);
    assert.equal(dSteps, sSteps, "the destination got the source's state");
    assert.equal(dSum, sSum, "and its memory: the same checksum");
    assert.ok(Number(rounds) >= 1, s.stdout);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
