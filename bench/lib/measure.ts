/**
 * What every `bench/ours/*.ts` program shares with its C reference
 * (`bench/reference/bench.h`): `--key=value` arguments, a stopwatch on the same
 * clocks (wall time by `CLOCK_MONOTONIC`, and the thread's CPU time, read outside
 * the wall window), and the one JSON line each result is printed as:
 *
 * ```json
 * {"bench":"ioctl_roundtrip","impl":"ours:wrapper","case":"UFFDIO_WAKE","bytes":4096,"ops":200000,
 *  "total_ns":93000000,"cpu_ns":92000000,"ns_per_op":465.0,"cpu_ns_per_op":460.0,"extra":{}}
 * ```
 *
 * `bench/compare.ts` runs both programs with the same arguments and reads these
 * lines; nothing else on stdout is parsed.
 *
 * @example
 * ```ts
 * import { Args } from "./measure.ts";
 * const args = new Args(["--bytes=4096", "--impl=wrapper"]);
 * console.log(args.number("bytes", 0), args.choice("impl", ["wrapper", "method"])); // 4096 wrapper
 * ```
 *
 * @module
 */

import { monotonicNs, threadCpuNs } from "./raw_libc.ts";

/** One result: the fields of the JSON line (`impl` is `ours:<variant>` or `c`). */
export interface Result {
  /** The measurement's program name, e.g. `"pagemap_scan"`. */
  bench: string;
  /** `"c"` or `"ours:<variant>"`. */
  impl: string;
  /** What was measured within the program, e.g. `"fraction=0.01"`. */
  case: string;
  /** The memory size the measurement ran on. */
  bytes: number;
  /** Operations timed (after warmup). */
  ops: number;
  /** Nanoseconds they took, by the monotonic clock. */
  total_ns: number;
  /** CPU nanoseconds this thread spent in them. */
  cpu_ns: number;
  /** `total_ns / ops`. */
  ns_per_op: number;
  /** `cpu_ns / ops`. */
  cpu_ns_per_op: number;
  /** Anything else the program reports (regions found, batch size, a correctness flag). */
  extra: Record<string, number | string | boolean>;
}

/** `--key=value` arguments, read the way `bench.h`'s `arg_*` read them. */
export class Args {
  readonly #values = new Map<string, string>();

  /** Parses `argv` (default `Deno.args`); anything not `--key=value` is refused. */
  constructor(argv: readonly string[] = Deno.args) {
    for (const arg of argv) {
      const match = /^--([a-z][a-z0-9-]*)=(.*)$/.exec(arg);
      if (!match) throw new TypeError(`expected --key=value, got ${JSON.stringify(arg)}`);
      this.#values.set(match[1]!, match[2]!);
    }
  }

  /** A numeric argument. */
  number(key: string, fallback: number): number {
    const text = this.#values.get(key);
    if (text === undefined) return fallback;
    const value = Number(text);
    if (!Number.isFinite(value)) throw new TypeError(`--${key} must be a number, got ${JSON.stringify(text)}`);
    return value;
  }

  /** One of `choices` (the first is the default). */
  choice<T extends string>(key: string, choices: readonly T[]): T {
    const text = this.#values.get(key) ?? choices[0]!;
    if (!(choices as readonly string[]).includes(text)) {
      throw new TypeError(`--${key} must be one of ${choices.join(", ")}, got ${JSON.stringify(text)}`);
    }
    return text as T;
  }
}

/**
 * Accumulated wall and thread-CPU time of the timed sections, as `struct
 * stopwatch` in `bench.h`: `start()` reads the CPU clock, then the wall clock;
 * `stop()` the reverse, so the CPU clock's system call stays out of the wall time.
 */
export class Stopwatch {
  /** Wall nanoseconds so far. */
  wall = 0;
  /** CPU nanoseconds so far. */
  cpu = 0;
  #wall0 = 0;
  #cpu0 = 0;

  /** Starts a timed section. */
  start(): void {
    this.#cpu0 = threadCpuNs();
    this.#wall0 = monotonicNs();
  }

  /** Ends a timed section. */
  stop(): void {
    const wall1 = monotonicNs();
    this.cpu += threadCpuNs() - this.#cpu0;
    this.wall += wall1 - this.#wall0;
  }
}

/** What a program reports; the times come from its stopwatch. */
export type Measured = Omit<Result, "total_ns" | "cpu_ns" | "ns_per_op" | "cpu_ns_per_op">;

/**
 * The process's peak resident set (`VmHWM` of `/proc/self/status`) in KiB, as
 * `peak_rss_kib()` in `bench.h`; 0 if it cannot be read.
 */
export function peakRssKib(): number {
  try {
    const match = /^VmHWM:\s+(\d+)/m.exec(Deno.readTextFileSync("/proc/self/status"));
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}

/**
 * Bytes this isolate allocates per operation of `run` (V8 heap plus `ArrayBuffer`
 * backing stores, from `Deno.memoryUsage()`): `run(n)` is called in a few
 * untimed windows and the largest growth, less that of an empty window, is
 * divided by `n`. A garbage collection inside a window can only make its growth
 * smaller, so the largest of several is the least disturbed; choose `n` so that a
 * window allocates well under V8's young generation (a few MiB). Rounded to whole
 * bytes; 0 means nothing measurable.
 */
export function allocationPerOp(run: (n: number) => void, n: number, windows = 5): number {
  const used = () => {
    const m = Deno.memoryUsage();
    return m.heapUsed + m.external;
  };
  let empty = 0;
  let most = -Infinity;
  for (let w = 0; w < windows; w++) {
    let before = used();
    empty = Math.max(empty, used() - before);
    before = used();
    run(n);
    most = Math.max(most, used() - before);
  }
  return Math.max(0, Math.round((most - empty) / n));
}

/** Prints a result as its JSON line; the process's peak resident set goes into `extra.peak_rss_kib`. */
export function emit(result: Measured, stopwatch: Stopwatch): void {
  const { ops } = result;
  const line: Result = {
    ...result,
    extra: { peak_rss_kib: peakRssKib(), ...result.extra },
    total_ns: stopwatch.wall,
    cpu_ns: stopwatch.cpu,
    ns_per_op: ops > 0 ? stopwatch.wall / ops : 0,
    cpu_ns_per_op: ops > 0 ? stopwatch.cpu / ops : 0,
  };
  console.log(JSON.stringify(line));
}

/** Throws with `message` unless `condition` holds: every program checks what it measured. */
export function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(message);
}
