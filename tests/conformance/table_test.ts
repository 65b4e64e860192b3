/**
 * The conformance table (README.md here) cannot rot: every row has a status
 * (covered, n/a, not yet); every "covered" row names, in backticks, tests that
 * exist (the part of a test's name before its first ": "); every other row
 * gives its reason.
 */

import assert from "node:assert/strict";

const HERE = new URL("./", import.meta.url);
const TESTS = new URL("../", import.meta.url);

/** Every Deno.test name in the test files of tests/ and tests/conformance/, as written (templates included). */
function testNames(): string[] {
  const names: string[] = [];
  for (const dir of [HERE, TESTS]) {
    for (const entry of Deno.readDirSync(dir)) {
      if (!entry.isFile || !entry.name.endsWith("_test.ts")) continue;
      const source = Deno.readTextFileSync(new URL(entry.name, dir));
      for (const m of source.matchAll(/(?:name:\s*|Deno\.test\(\s*)(["`])((?:\\.|(?!\1)[^\\])*)\1/gs)) {
        names.push(m[2]!);
      }
    }
  }
  return names;
}

/** The head of a name (before ": ") as a regex; `${…}` in a template matches anything. */
function headPattern(name: string): RegExp {
  const head = name.split(": ")[0]!;
  const parts = head.split(/\$\{[^}]*\}/).map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`^${parts.join(".+")}$`);
}

interface Row {
  section: string;
  cells: string[];
}

function rows(): Row[] {
  const out: Row[] = [];
  let section = "";
  for (const line of Deno.readTextFileSync(new URL("README.md", HERE)).split("\n")) {
    if (line.startsWith("## ")) section = line.slice(3);
    if (!line.startsWith("|") || /^\|\s*-/.test(line) || /^\|\s*source\s*\|/.test(line)) continue;
    out.push({ section, cells: line.split("|").slice(1, -1).map((c) => c.trim()) });
  }
  return out;
}

Deno.test("the conformance table: statuses, existing tests for covered rows, reasons for the rest", () => {
  const names = testNames().map((name) => ({ name, head: headPattern(name) }));
  const table = rows();
  assert.ok(table.length >= 90, `${table.length} rows`);
  const counts: Record<string, number> = {};
  for (const { section, cells } of table) {
    const where = `${section}: ${cells.slice(0, 3).join(" | ")}`;
    assert.equal(cells.length, 5, where);
    const [, scenario, , status, detail] = cells as [string, string, string, string, string];
    assert.ok(scenario.length > 0, where);
    assert.ok(["covered", "n/a", "not yet"].includes(status), `${where}: status "${status}"`);
    counts[status] = (counts[status] ?? 0) + 1;
    if (status !== "covered") {
      assert.ok(detail.length > 20, `${where}: a reason`);
      continue;
    }
    const refs = [...detail.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
    assert.ok(refs.length > 0, `${where}: names a test`);
    for (const ref of refs) {
      const [head, ...rest] = ref.split(": ");
      const tail = rest.join(": ");
      const found = names.some((n) =>
        n.head.test(head!) && (!tail || n.name.split(": ").slice(1).join(": ").startsWith(tail))
      );
      assert.ok(found, `${where}: no test named "${ref}"`);
    }
  }
  console.log(`conformance table: ${JSON.stringify(counts)}`);
});
