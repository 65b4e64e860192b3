/** The README's example runs as written, and the page it writes is the one PAGEMAP_SCAN reports written. */

import assert from "node:assert/strict";
import { needs, needsPagemapScan } from "./helpers.ts";

const ROOT = new URL("../", import.meta.url);

function readmeExample(): string {
  const readme = Deno.readTextFileSync(new URL("README.md", ROOT));
  const section = readme.slice(readme.indexOf("## Example"));
  const match = /```ts\n([\s\S]*?)```/.exec(section);
  assert.ok(match, "README has a ts example under ## Example");
  return match[1]!;
}

Deno.test({
  name: "README example runs as written and PAGEMAP_SCAN reports exactly the page it wrote",
  ignore: needs("WP_ASYNC", "WP_UNPOPULATED") || needsPagemapScan(),
  async fn() {
    const example = readmeExample();
    assert.match(example, /mem\.bytes\[5 \* Region\.pageSize\] = 1;/);
    const check = `
import { pagemapScan as __scan } from "@uffd/uffd";
console.log(JSON.stringify(__scan(mem, { require: ["WRITTEN"] }).map((r) => [r.firstPage, r.pages])));
`;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", "-"],
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(example + check));
    await writer.close();
    const out = await child.output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), [[5, 1]]);
  },
});
