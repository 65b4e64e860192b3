/**
 * Unpacks the uncompressed `vmlinux` ELF from a `vmlinuz` (bzImage), as the
 * kernel's `scripts/extract-vmlinux` does: find the compressed payload by its
 * magic (xz, zstd, gzip) and decompress from there with the host's tool. QEMU
 * boots that ELF through its PVH entry point (`CONFIG_PVH=y`), which skips the
 * in-guest decompression (seconds under TCG).
 *
 * @module
 */

const FORMATS: { name: string; magic: number[]; cmd: string[] }[] = [
  { name: "xz", magic: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], cmd: ["xz", "-dc", "--single-stream"] },
  { name: "zstd", magic: [0x28, 0xb5, 0x2f, 0xfd], cmd: ["zstd", "-dcq"] },
  { name: "gzip", magic: [0x1f, 0x8b, 0x08], cmd: ["gzip", "-dc"] },
];

function* offsetsOf(data: Uint8Array, magic: number[]): Generator<number> {
  outer: for (
    let i = data.indexOf(magic[0]);
    i >= 0 && i + magic.length <= data.length;
    i = data.indexOf(magic[0], i + 1)
  ) {
    for (let j = 1; j < magic.length; j++) if (data[i + j] !== magic[j]) continue outer;
    yield i;
  }
}

async function decompress(cmd: string[], input: Uint8Array): Promise<Uint8Array> {
  const child = new Deno.Command(cmd[0], { args: cmd.slice(1), stdin: "piped", stdout: "piped", stderr: "null" })
    .spawn();
  const writer = child.stdin.getWriter();
  // A decompressor that stops at the end of its stream may close its stdin early.
  const writing = writer.write(input).then(() => writer.close()).catch(() => {});
  const out = await child.output();
  await writing;
  return out.stdout; // trailing bytes after the stream make some tools exit non-zero: judge by content
}

/** True when `data` is an x86-64 ELF with a PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`). */
export function isPvhElf(data: Uint8Array): boolean {
  if (data.length < 64 || data[0] !== 0x7f || data[1] !== 0x45 || data[2] !== 0x4c || data[3] !== 0x46) return false;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const phoff = Number(view.getBigUint64(0x20, true));
  const phentsize = view.getUint16(0x36, true);
  const phnum = view.getUint16(0x38, true);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (view.getUint32(at, true) !== 4) continue; // PT_NOTE
    const off = Number(view.getBigUint64(at + 8, true));
    const size = Number(view.getBigUint64(at + 32, true));
    for (let p = off; p + 12 <= off + size;) {
      const namesz = view.getUint32(p, true);
      const descsz = view.getUint32(p + 4, true);
      const type = view.getUint32(p + 8, true);
      const name = new TextDecoder().decode(data.subarray(p + 12, p + 12 + namesz)).replace(/\0+$/, "");
      if (name === "Xen" && type === 18) return true;
      p += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3);
    }
  }
  return false;
}

/** The vmlinux ELF inside `vmlinuz`, or `undefined` (with the reason) when none is found. */
export async function extractVmlinux(vmlinuz: Uint8Array): Promise<{ elf?: Uint8Array; format?: string; why: string }> {
  for (const f of FORMATS) {
    for (const off of offsetsOf(vmlinuz, f.magic)) {
      let out: Uint8Array;
      try {
        out = await decompress(f.cmd, vmlinuz.subarray(off));
      } catch (e) {
        return { why: `${f.cmd[0]}: ${e instanceof Error ? e.message : e}` };
      }
      if (out.length > 1 << 20 && isPvhElf(out)) return { elf: out, format: f.name, why: `${f.name} at ${off}` };
    }
  }
  return { why: "no compressed ELF with a PVH note found" };
}
