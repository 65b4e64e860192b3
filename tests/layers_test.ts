/**
 * The layout keeps its layers (CONTRIBUTING.md, "Layers"): every module of the
 * library and the CLI, read as text, with the modules it imports — static and
 * dynamic imports, re-exports, and Worker or policy modules named by
 * `new URL("./x.ts", import.meta.url)`. No import circle; no import from a later
 * layer into an earlier one (`snapshot/` and `lazy/` share a floor and do not
 * import each other); `ffi/` imports nothing outside itself; `cli/` and `cli.ts`
 * reach the library through `mod.ts` or an entry only; the entries name their
 * exports and import no internal module; the root holds no library module but
 * `mod.ts` and `cli.ts`.
 */

import assert from "node:assert/strict";

const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname).replace(/\/$/, "");
const FOLDERS = ["ffi", "kernel", "handler", "watch", "checkpoint", "snapshot", "lazy", "migrate", "cli"];
/** Floor of each folder (of a root file: by name). */
const FLOOR: Record<string, number> = {
  ffi: 0,
  kernel: 1,
  handler: 2,
  watch: 3,
  checkpoint: 4,
  snapshot: 5,
  lazy: 5,
  migrate: 6,
  "mod.ts": 7,
  cli: 8,
};
const ENTRIES = ["kernel", "handler", "watch", "checkpoint", "snapshot", "lazy", "migrate"].map((f) => `${f}/mod.ts`);

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(`${ROOT}/${dir}`)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...walk(path));
    else if (e.name.endsWith(".ts")) out.push(path);
  }
  return out;
}

function normalize(path: string): string {
  const parts: string[] = [];
  for (const s of path.split("/")) {
    if (s === "..") parts.pop();
    else if (s !== "." && s !== "") parts.push(s);
  }
  return parts.join("/");
}

/** The relative `.ts` modules a file imports, outside comments and doc examples. */
function importsOf(file: string): string[] {
  const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : "";
  const found = new Set<string>();
  let inBlockComment = false;
  for (const line of Deno.readTextFileSync(`${ROOT}/${file}`).split("\n")) {
    const text = line.trimStart();
    if (inBlockComment) {
      if (text.includes("*/")) inBlockComment = false;
      continue;
    }
    if (text.startsWith("/*")) {
      inBlockComment = !text.includes("*/");
      continue;
    }
    if (text.startsWith("//") || text.startsWith("*")) continue;
    const specs = [
      ...line.matchAll(/^(?:import|export)\b[^"]*\bfrom\s+"([^"]+)"/g),
      ...line.matchAll(/^\} from "([^"]+)"/g),
      ...line.matchAll(/^import\s+"([^"]+)"/g),
      ...line.matchAll(/\bimport\("([^"]+)"\)/g),
      // A module a Worker loads by URL (not one named in a message: an even number of backticks before it).
      ...[...line.matchAll(/\bnew URL\("([^"]+\.ts)", import\.meta\.url\)/g)]
        .filter((m) => (line.slice(0, m.index).match(/`/g)?.length ?? 0) % 2 === 0),
    ].map((m) => m[1]!);
    for (const spec of specs) if (spec.startsWith(".")) found.add(normalize(`${dir}/${spec}`));
  }
  return [...found];
}

/** The layer a module belongs to: its folder (`cli.ts` goes with `cli/`, `mod.ts` stands alone). */
function folderOf(file: string): string {
  if (file === "cli.ts") return "cli";
  return file.includes("/") ? file.slice(0, file.indexOf("/")) : file;
}

const files = [
  ...FOLDERS.flatMap((f) => walk(f)),
  ...[...Deno.readDirSync(ROOT)].filter((e) => e.isFile && e.name.endsWith(".ts")).map((e) => e.name),
].sort();
const graph = new Map(files.map((f) => [f, importsOf(f)]));

Deno.test("layers: the graph is read (every module has its imports, every import is a module here)", () => {
  assert.ok(files.length > 60, `${files.length} modules`);
  for (const [file, deps] of graph) {
    for (const dep of deps) assert.ok(graph.has(dep), `${file} imports ${dep}, which is not a module here`);
  }
  assert.ok(graph.get("mod.ts")!.length >= ENTRIES.length, "mod.ts re-exports the entries");
});

Deno.test("layers: the root holds no library module but mod.ts and cli.ts", () => {
  const root = files.filter((f) => !f.includes("/"));
  assert.deepEqual(root, ["cli.ts", "mod.ts"]);
});

Deno.test("layers: no import circle", () => {
  const state = new Map<string, "active" | "done">();
  const circles: string[] = [];
  const visit = (file: string, path: string[]) => {
    if (state.get(file) === "done") return;
    if (state.get(file) === "active") {
      circles.push([...path.slice(path.indexOf(file)), file].join(" → "));
      return;
    }
    state.set(file, "active");
    for (const dep of graph.get(file) ?? []) visit(dep, [...path, file]);
    state.set(file, "done");
  };
  for (const file of files) visit(file, []);
  assert.deepEqual(circles, []);
});

Deno.test("layers: no module imports from a later layer, and snapshot/ and lazy/ do not import each other", () => {
  const wrong: string[] = [];
  for (const [file, deps] of graph) {
    const floor = FLOOR[folderOf(file)]!;
    assert.ok(floor !== undefined, `${file}: no layer`);
    for (const dep of deps) {
      const other = folderOf(dep);
      if (FLOOR[other]! > floor) wrong.push(`${file} → ${dep}`);
      if (FLOOR[other] === floor && other !== folderOf(file)) wrong.push(`${file} → ${dep} (the same floor)`);
    }
  }
  assert.deepEqual(wrong, []);
});

Deno.test("layers: ffi/ imports nothing outside ffi/", () => {
  const outside = [...graph].filter(([f]) => f.startsWith("ffi/"))
    .flatMap(([f, deps]) => deps.filter((d) => !d.startsWith("ffi/")).map((d) => `${f} → ${d}`));
  assert.deepEqual(outside, []);
});

Deno.test("layers: cli/ and cli.ts use the library through mod.ts or an entry only", () => {
  const past = [...graph].filter(([f]) => f === "cli.ts" || f.startsWith("cli/"))
    .flatMap(([f, deps]) =>
      deps.filter((d) => !d.startsWith("cli/") && d !== "mod.ts" && !ENTRIES.includes(d)).map((d) => `${f} → ${d}`)
    );
  assert.deepEqual(past, []);
});

/** The names a module re-exports, by source: `export { a, type B } from "./x.ts"`. */
function reExports(file: string): Map<string, string[]> {
  const text = Deno.readTextFileSync(`${ROOT}/${file}`);
  const out = new Map<string, string[]>();
  for (const m of text.matchAll(/^export (type )?\{([^}]*)\} from "([^"]+)";/gm)) {
    const names = m[2]!.split(",").map((n) => n.trim().replace(/^type /, "")).filter((n) => n !== "");
    out.set(m[3]!, [...(out.get(m[3]!) ?? []), ...names]);
  }
  return out;
}

Deno.test("layers: mod.ts and the entries name their exports; the entries import no internal module", () => {
  for (const file of ["mod.ts", ...ENTRIES]) {
    const text = Deno.readTextFileSync(`${ROOT}/${file}`);
    assert.doesNotMatch(text, /^export \*/m, `${file} uses export *`);
    for (const dep of graph.get(file)!) {
      assert.ok(!dep.slice(dep.lastIndexOf("/") + 1).startsWith("_"), `${file} imports the internal ${dep}`);
    }
  }
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}/deno.json`));
  for (const entry of ENTRIES) {
    const folder = entry.slice(0, entry.indexOf("/"));
    assert.equal(config.exports[`./${folder}`], `./${entry}`, `deno.json exports ./${folder}`);
  }
});

Deno.test("layers: mod.ts exports exactly what the entries export of their own", () => {
  const own = new Set<string>();
  for (const entry of ENTRIES) {
    for (const [source, names] of reExports(entry)) {
      if (!source.endsWith("/mod.ts")) { for (const n of names) own.add(n); }
    }
  }
  const root = new Set([...reExports("mod.ts").values()].flat());
  assert.deepEqual([...root].filter((n) => !own.has(n)), [], "exported by mod.ts but by no entry");
  assert.deepEqual([...own].filter((n) => !root.has(n)), [], "exported by an entry but not by mod.ts");
});
