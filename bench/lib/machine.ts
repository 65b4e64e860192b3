/**
 * What the benchmarks ran on: kernel, CPU model, cores, memory, load, and the
 * Deno and C compiler versions — printed with every comparison, since figures
 * from different machines do not compare.
 *
 * @example
 * ```ts
 * import { describeMachine, machine } from "./machine.ts";
 * console.log(describeMachine(await machine())); // e.g. "Linux 6.18.0 x86_64, AMD EPYC, 2 cores, ..."
 * ```
 *
 * @module
 */

/** The machine, as `bench/compare.ts` reports it. */
export interface Machine {
  /** `uname -r`. */
  readonly kernel: string;
  /** `x86_64`, `aarch64`. */
  readonly arch: string;
  /** `model name` from `/proc/cpuinfo`. */
  readonly cpu: string;
  /** Online CPUs. */
  readonly cores: number;
  /** `MemTotal`, bytes. */
  readonly memoryTotal: number;
  /** `MemAvailable` when asked, bytes. */
  readonly memoryAvailable: number;
  /** 1-minute load average when asked. */
  readonly load: number;
  /** `deno --version` first line. */
  readonly deno: string;
  /** `cc --version` first line, or `undefined` without a compiler. */
  readonly cc: string | undefined;
}

function readText(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

/** Bytes of a `/proc/meminfo` field (`MemAvailable`, `MemTotal`). */
export function meminfo(field: string): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readText("/proc/meminfo"));
  return match ? Number(match[1]) * 1024 : 0;
}

/** The 1-minute load average. */
export function loadAverage(): number {
  return Number(readText("/proc/loadavg").split(" ")[0] ?? NaN);
}

/** The first line a command prints with `--version`, or `undefined` when it cannot run. */
export async function versionOf(command: string): Promise<string | undefined> {
  try {
    const { success, stdout } = await new Deno.Command(command, { args: ["--version"], stderr: "null" }).output();
    return success ? new TextDecoder().decode(stdout).split("\n")[0]!.trim() : undefined;
  } catch {
    return undefined;
  }
}

/** Reads the machine's description now. */
export async function machine(): Promise<Machine> {
  const cpuinfo = readText("/proc/cpuinfo");
  const model = /^(model name|Hardware|CPU part)\s*:\s*(.+)$/m.exec(cpuinfo)?.[2]?.trim() ?? "unknown CPU";
  return {
    kernel: Deno.osRelease(),
    arch: Deno.build.arch,
    cpu: model,
    cores: navigator.hardwareConcurrency,
    memoryTotal: meminfo("MemTotal"),
    memoryAvailable: meminfo("MemAvailable"),
    load: loadAverage(),
    deno: `deno ${Deno.version.deno} (V8 ${Deno.version.v8})`,
    cc: await versionOf("cc"),
  };
}

/** One line: kernel, CPU, cores, memory, toolchain. */
export function describeMachine(m: Machine): string {
  const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;
  return `Linux ${m.kernel} ${m.arch}, ${m.cpu}, ${m.cores} cores, ${gib(m.memoryTotal)} RAM ` +
    `(${gib(m.memoryAvailable)} available); ${m.deno}; ${m.cc ?? "no C compiler"}`;
}
