/**
 * Boots one guest under `qemu-system-x86_64` with TCG (no KVM needed): the
 * kernel (its unpacked vmlinux through the PVH entry when there is one, else
 * vmlinuz), the initramfs, the host's / shared read-only over virtio-9p (tag
 * `hostroot`), and the serial console on QEMU's stdio, handed back as text
 * chunks and as lines (without `\r`).
 *
 * @module
 */

import type { Kernel } from "./fetch.ts";

/** How to boot. */
export interface BootOptions {
  /** The kernel. */
  kernel: Kernel;
  /** The initramfs file. */
  initrd: string;
  /** Guest memory, QEMU syntax ("4G"). */
  memory: string;
  /** vCPUs. */
  smp: number;
  /** `-cpu` model and flags. */
  cpu: string;
  /** Boot the vmlinux ELF through PVH when there is one (saves the in-guest decompression). */
  pvh: boolean;
  /** Extra kernel command line. */
  append?: string;
}

/** The CPU model: measured about 2× faster for Deno under TCG than `-cpu max`. */
export const DEFAULT_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+erms";

/** A running guest. */
export interface Guest {
  /** Kills QEMU (SIGKILL); `reason` is reported by `done`. */
  kill(reason: string): void;
  /** Resolves when QEMU has exited. */
  done: Promise<{ code: number; killed?: string; stderr: string }>;
  /** The QEMU command line, for the log. */
  argv: string[];
}

/** The QEMU argument list for `opts`. */
export function qemuArgs(opts: BootOptions): string[] {
  const image = opts.pvh && opts.kernel.vmlinux ? opts.kernel.vmlinux : opts.kernel.vmlinuz;
  const cmdline = ["console=ttyS0", "quiet", "loglevel=4", "panic=-1", "mitigations=off", opts.append ?? ""]
    .filter((s) => s).join(" ");
  return [
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
    "-machine",
    "pc",
    "-accel",
    "tcg,thread=multi",
    "-cpu",
    opts.cpu,
    "-smp",
    String(opts.smp),
    "-m",
    opts.memory,
    "-kernel",
    image,
    "-initrd",
    opts.initrd,
    "-append",
    cmdline,
    "-chardev",
    "stdio,id=con,signal=off",
    "-serial",
    "chardev:con",
    "-fsdev",
    "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
    "-device",
    "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
  ];
}

/**
 * Starts the guest. `onText` gets the console output as it comes (for
 * streaming), `onLine` each complete line.
 */
export function startGuest(opts: BootOptions, onText: (text: string) => void, onLine: (line: string) => void): Guest {
  const argv = ["qemu-system-x86_64", ...qemuArgs(opts)];
  const child = new Deno.Command(argv[0], { args: argv.slice(1), stdin: "null", stdout: "piped", stderr: "piped" })
    .spawn();
  let killed: string | undefined;
  const pump = async () => {
    const dec = new TextDecoder();
    // `partial` is the unfinished line, of which `shown` characters were already passed to onText.
    let partial = "";
    let shown = 0;
    // A line is what the terminal would show: the text after its last carriage return.
    const visible = (l: string) => l.replace(/\r+$/, "").replace(/^.*\r/s, "");
    for await (const chunk of child.stdout) {
      const lines = (partial + dec.decode(chunk, { stream: true }).replaceAll("\r\n", "\n")).split("\n");
      partial = lines.pop()!;
      for (const l of lines) {
        onText(l.slice(shown) + "\n");
        shown = 0;
        onLine(visible(l));
      }
      if (partial.length > shown) {
        onText(partial.slice(shown));
        shown = partial.length;
      }
    }
    if (partial) onLine(visible(partial));
  };
  const stderr = new Response(child.stderr).text();
  const done = (async () => {
    const [status] = await Promise.all([child.status, pump()]);
    return { code: status.code, killed, stderr: await stderr };
  })();
  return {
    argv,
    done,
    kill(reason: string) {
      if (killed) return;
      killed = reason;
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
    },
  };
}
