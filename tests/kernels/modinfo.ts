/**
 * Reads a kernel module's `.modinfo` section (what `modinfo` prints) straight
 * from the ELF file, and orders a set of modules so each comes after the ones
 * its `depends=` names: a Debian kernel package unpacked with `dpkg-deb -x`
 * has no `modules.dep`, and busybox `insmod` loads no dependencies itself.
 *
 * @module
 */

/** The `key=value` strings of an ELF64 little-endian module's `.modinfo` section. */
export function readModinfo(elf: Uint8Array): Map<string, string[]> {
  const view = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  if (elf.length < 64 || view.getUint32(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) {
    throw new Error("not an ELF64 little-endian file");
  }
  const shoff = Number(view.getBigUint64(0x28, true));
  const shentsize = view.getUint16(0x3a, true);
  const shnum = view.getUint16(0x3c, true);
  const shstrndx = view.getUint16(0x3e, true);
  const section = (i: number) => {
    const at = shoff + i * shentsize;
    return {
      name: view.getUint32(at, true),
      offset: Number(view.getBigUint64(at + 24, true)),
      size: Number(view.getBigUint64(at + 32, true)),
    };
  };
  const strtab = section(shstrndx);
  const nameAt = (off: number) => {
    let end = strtab.offset + off;
    while (elf[end] !== 0) end++;
    return new TextDecoder().decode(elf.subarray(strtab.offset + off, end));
  };
  const info = new Map<string, string[]>();
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    if (nameAt(s.name) !== ".modinfo") continue;
    const text = new TextDecoder().decode(elf.subarray(s.offset, s.offset + s.size));
    for (const entry of text.split("\0")) {
      const eq = entry.indexOf("=");
      if (eq <= 0) continue;
      const key = entry.slice(0, eq);
      info.set(key, [...(info.get(key) ?? []), entry.slice(eq + 1)]);
    }
  }
  return info;
}

/** A module's name as the kernel spells it (`-` and `_` are the same; no `.ko`, `.ko.xz`). */
export function moduleName(fileOrName: string): string {
  return fileOrName.replace(/^.*\//, "").replace(/\.ko(\.(xz|zst|gz))?$/, "").replaceAll("-", "_");
}

/** The module names a module's `depends=` lists. */
export function dependsOf(info: Map<string, string[]>): string[] {
  return (info.get("depends") ?? []).flatMap((d) => d.split(",")).filter((d) => d !== "").map(moduleName);
}

/**
 * Orders `wanted` and everything they depend on (transitively) so that each
 * module comes after its dependencies. `depsOf(name)` gives a module's
 * dependencies, or `undefined` when the package has no such module file (built
 * in, or missing: `builtin(name)` decides, and a missing one that is not built
 * in throws).
 */
export function loadOrder(
  wanted: readonly string[],
  depsOf: (name: string) => string[] | undefined,
  builtin: (name: string) => boolean,
): string[] {
  const order: string[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (name: string, path: string[]) => {
    const st = state.get(name);
    if (st === "done") return;
    if (st === "visiting") throw new Error(`module dependency cycle: ${[...path, name].join(" -> ")}`);
    state.set(name, "visiting");
    const deps = depsOf(name);
    if (deps === undefined) {
      if (!builtin(name)) throw new Error(`module ${name} is neither in the package nor built in`);
    } else {
      for (const d of deps) visit(d, [...path, name]);
      order.push(name);
    }
    state.set(name, "done");
  };
  for (const w of wanted) visit(moduleName(w), []);
  return order;
}
