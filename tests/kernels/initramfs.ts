/**
 * The guest's initramfs: a base archive, built once per kernel and busybox and
 * cached beside the kernel (busybox, `/init` from `guest_init.sh`, the
 * kernel's modules with their load order), followed per boot by a small
 * second archive holding `/plan.sh` (see `plan.ts`). The kernel unpacks
 * concatenated newc archives in order, so the two are simply joined.
 *
 * @module
 */

import { cpio, type CpioEntry } from "./cpio.ts";
import type { Busybox, Kernel } from "./fetch.ts";
import { digest, exists } from "./host.ts";

const INIT = new URL("./guest_init.sh", import.meta.url);

/** The path of the cached base archive for `kernel` and `busybox`, built if missing. */
export async function baseInitramfs(kernel: Kernel, busybox: Busybox): Promise<string> {
  const init = await Deno.readFile(INIT);
  const key = await digest(init, busybox.version, kernel.package, kernel.version, kernel.modules.join(","));
  const path = `${kernel.dir}/initramfs-${key}.cpio`;
  if (await exists(path)) return path;
  const entries: CpioEntry[] = [
    ...["bin", "dev", "proc", "sys", "host", "rw", "newroot", "modules", "tmp"].map((d) => ({
      kind: "dir" as const,
      path: d,
    })),
    { kind: "chardev", path: "dev/console", major: 5, minor: 1 },
    { kind: "chardev", path: "dev/null", major: 1, minor: 3, mode: 0o666 },
    { kind: "file", path: "bin/busybox", data: await Deno.readFile(busybox.path), mode: 0o755 },
    { kind: "symlink", path: "bin/sh", target: "busybox" },
    { kind: "file", path: "init", data: init, mode: 0o755 },
    { kind: "file", path: "modules/order", data: new TextEncoder().encode(kernel.modules.join("\n") + "\n") },
  ];
  for (const m of kernel.modules) {
    entries.push({ kind: "file", path: `modules/${m}`, data: await Deno.readFile(`${kernel.dir}/modules/${m}`) });
  }
  // Stale archives of an older init or busybox go.
  for await (const e of Deno.readDir(kernel.dir)) {
    if (/^initramfs-.*\.cpio$/.test(e.name)) await Deno.remove(`${kernel.dir}/${e.name}`).catch(() => {});
  }
  await Deno.writeFile(`${path}.tmp`, cpio(entries));
  await Deno.rename(`${path}.tmp`, path);
  return path;
}

/** Writes `base` followed by an archive holding `/plan.sh` to `out`. */
export async function withPlan(base: string, plan: string, out: string): Promise<void> {
  const head = await Deno.readFile(base);
  const tail = cpio([{ kind: "file", path: "plan.sh", data: new TextEncoder().encode(plan), mode: 0o644 }]);
  const all = new Uint8Array(head.length + tail.length);
  all.set(head);
  all.set(tail, head.length);
  await Deno.writeFile(out, all);
}
