/**
 * A writer of "newc" cpio archives, the initramfs format the kernel unpacks
 * (several archives may be concatenated: the kernel unpacks them in order).
 * Only what an initramfs needs: folders, files, symlinks, device nodes.
 *
 * @module
 */

/** One archive member. */
export type CpioEntry =
  | { kind: "dir"; path: string; mode?: number }
  | { kind: "file"; path: string; data: Uint8Array; mode?: number }
  | { kind: "symlink"; path: string; target: string }
  | { kind: "chardev"; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000, S_IFREG = 0o100000, S_IFLNK = 0o120000, S_IFCHR = 0o020000;

const hex8 = (n: number) => n.toString(16).padStart(8, "0");
const pad4 = (n: number) => (4 - (n % 4)) % 4;

/** The archive of `entries` (paths without a leading `/`), with its trailer. */
export function cpio(entries: readonly CpioEntry[]): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  let ino = 1;
  const add = (name: string, mode: number, data: Uint8Array, rdev: [number, number] = [0, 0]) => {
    const nameBytes = enc.encode(name + "\0");
    const fields = [
      ino++,
      mode,
      0,
      0,
      (mode & 0o170000) === S_IFDIR ? 2 : 1,
      0,
      data.length,
      0,
      0,
      rdev[0],
      rdev[1],
      nameBytes.length,
      0,
    ];
    const header = enc.encode("070701" + fields.map(hex8).join(""));
    parts.push(header, nameBytes, new Uint8Array(pad4(header.length + nameBytes.length)));
    parts.push(data, new Uint8Array(pad4(data.length)));
  };
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, "");
    switch (e.kind) {
      case "dir":
        add(path, S_IFDIR | (e.mode ?? 0o755), new Uint8Array());
        break;
      case "file":
        add(path, S_IFREG | (e.mode ?? 0o644), e.data);
        break;
      case "symlink":
        add(path, S_IFLNK | 0o777, enc.encode(e.target));
        break;
      case "chardev":
        add(path, S_IFCHR | (e.mode ?? 0o600), new Uint8Array(), [e.major, e.minor]);
        break;
    }
  }
  add("TRAILER!!!", 0, new Uint8Array());
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
