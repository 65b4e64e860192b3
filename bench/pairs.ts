/**
 * The list of comparisons `bench/compare.ts` runs: each {@linkcode Pair} is one
 * program measured twice with the same arguments — `bench/ours/<program>.ts`
 * (with `--impl=<impl>`) and `bench/reference/<program>.c` — each printing one
 * JSON result line (`bench/lib/measure.ts`, `bench/reference/bench.h`).
 *
 * To add a comparison: write `bench/ours/<name>.ts` and `bench/reference/<name>.c`
 * taking the same `--key=value` arguments, then add an entry below (the memory it
 * maps, a goal if the issue sets one, a series if it scales with size).
 *
 * @example
 * ```ts
 * import { pairs } from "./pairs.ts";
 * const quick = pairs({ quick: true });
 * console.log(quick.some((p) => p.program === "pagemap_scan")); // true
 * ```
 *
 * @module
 */

/** One comparison: our program and its C reference, run with the same arguments. */
export interface Pair {
  /** Unique and stable: `<program>/<impl>/<case>`, used by `--only`. */
  readonly id: string;
  /** The row's label. */
  readonly title: string;
  /** `bench/ours/<program>.ts` and `bench/reference/<program>.c`. */
  readonly program: string;
  /** Our variant (`--impl=`); the C side has one. */
  readonly impl: string;
  /** The arguments both sides get, as `--key=value`. */
  readonly args: Readonly<Record<string, number | string>>;
  /**
   * The C side's arguments, when they differ from ours (ours with chunked
   * unprotect against C's one-page handler, say). Default: `args`.
   */
  readonly cArgs?: Readonly<Record<string, number | string>>;
  /**
   * Compare against another variant of ours (`--impl=<baseline>`, with `cArgs` or
   * `args`) instead of the C program: what a layer adds to the one below it.
   */
  readonly baseline?: string;
  /**
   * What each side's figure is, when not its `ns_per_op`: a field of the result's
   * `extra` (ns per `unit`), or `"ns_per_op"`. Pairs that differ only in `measure`
   * share their runs (one set of runs, several figures). There is no CPU-time ratio
   * for such a figure.
   */
  readonly measure?: { readonly ours: string; readonly c: string };
  /** What one operation is, for the table ("ioctl", "scan", "page", "event"). */
  readonly unit: string;
  /** Bytes of memory each side maps (checked against free memory before running). */
  readonly memory: number;
  /**
   * The goal: the median ratio ours / C must not exceed it — or, with
   * `goalKind: "excess"`, the median of ours − C per run, in ns.
   */
  readonly goal?: number;
  /** What `goal` bounds: the ratio (default) or the cost above C (`"excess"`, ns per op). */
  readonly goalKind?: "ratio" | "excess";
  /**
   * Both sides run under `taskset -c <cpus>` (all their threads on those CPUs): the like-for-like row where the
   * runtime's own threads, running beside ours on the other CPU, would otherwise be measured with our code.
   */
  readonly cpus?: string;
  /** Alternating runs for this pair when fewer than `--runs` (the 4 GiB points, which take seconds each). */
  readonly runs?: number;
  /** How the goal is shown, when `≤ goal×` does not say it (a floor expressed as a ratio of times). */
  readonly goalText?: string;
  /** A scaling series this pair is a point of (x = `args.bytes`). */
  readonly series?: Series;
  /** Shown in the main table (pairs of a series are otherwise only in the scaling table). */
  readonly headline?: boolean;
}

/** A set of pairs that differ only in memory size. */
export interface Series {
  /** The series' label. */
  readonly name: string;
  /** How a point is shown in the scaling table and plot. */
  readonly per: "GiB" | "op";
}

/** How much to run: `quick` for development (fewer sizes, shorter loops). */
export interface PairOptions {
  /** Development mode: smaller sizes and fewer iterations. */
  readonly quick: boolean;
}

const MiB = 2 ** 20;
const GiB = 2 ** 30;

/** The sizes every scaling series is measured at. */
export function scalingSizes(options: PairOptions): number[] {
  return options.quick ? [16 * MiB, 64 * MiB, 256 * MiB, 1 * GiB] : [16 * MiB, 256 * MiB, 1 * GiB, 4 * GiB];
}

function clamp(value: number, low: number, high: number): number {
  return Math.max(low, Math.min(high, Math.round(value)));
}

/** The size label of a byte count: `16 MiB`, `1 GiB`. */
export function sizeLabel(bytes: number): string {
  return bytes >= GiB ? `${bytes / GiB} GiB` : bytes >= MiB ? `${bytes / MiB} MiB` : `${bytes / 1024} KiB`;
}

/** Every pair to run, in order. */
export function pairs(options: PairOptions): Pair[] {
  const q = options.quick;
  const out: Pair[] = [];

  // A bare ioctl round trip: UFFDIO_WAKE with nobody waiting. Each layer against C, and the ffi/ wrapper
  // against the bare dlopen'd symbol (both ours, alternating processes): what the wrapper adds to Deno's FFI call.
  const ioctlArgs = { iterations: q ? 100_000 : 300_000, warmup: q ? 20_000 : 50_000 };
  const ioctlImpls: [string, string][] = [
    ["wrapper", "ffi/ wrapper uffdioWake()"],
    ["method", "Userfaultfd.wake()"],
    ["raw-symbol", "bare dlopen'd ioctl symbol"],
  ];
  for (const [impl, label] of ioctlImpls) {
    out.push({
      id: `ioctl_roundtrip/${impl}`,
      title: `ioctl UFFDIO_WAKE: ${label}`,
      program: "ioctl_roundtrip",
      impl,
      args: ioctlArgs,
      unit: "ioctl",
      memory: 0,
    });
  }
  out.push({
    id: "ioctl_roundtrip/wrapper-vs-symbol",
    title:
      "ioctl UFFDIO_WAKE: ffi/ wrapper uffdioWake() against the bare dlopen'd symbol (reference: ours, raw-symbol)",
    program: "ioctl_roundtrip",
    impl: "wrapper",
    baseline: "raw-symbol",
    args: ioctlArgs,
    unit: "ioctl",
    memory: 0,
    goal: 1.05,
  });

  // PAGEMAP_SCAN (PRESENT) at every size and written fraction: the object form (pagemapScan()) and the packed
  // one (pagemapScanPacked(): typed arrays, as C keeps its regions); the ffi/ loop at 1 GiB only. The packed form
  // is the like-for-like one at 1% (C makes no object per region).
  const fractions: [number, string][] = [[0, "untouched"], [0.01, "1% resident (every 100th page)"], [
    1,
    "all resident",
  ]];
  for (const bytes of scalingSizes(options)) {
    // About 0.25 s of scanning per run (a quarter of that in quick mode); an untouched range scans in
    // microseconds at any size, so it gets a fixed count, and a long warmup: its figure is the fixed cost of a
    // call, which for ours is still falling after a few thousand calls (the FFI call's fast path comes with the
    // optimising compiler): 1 GiB, 2000 calls after 100: 8.9 µs a call; 20000 after 10000: 7.8 µs.
    const scanArgs = (fraction: number) => {
      const iterations = fraction === 0 ? (q ? 5000 : 20000) : clamp((q ? 2 ** 34 : 2 ** 36) / bytes, 8, 2000);
      const warmup = fraction === 0 ? (q ? 2000 : 10000) : clamp(iterations / 5, 4, 100);
      return { bytes, fraction, iterations, warmup };
    };
    const size = sizeLabel(bytes).replace(" ", "");
    for (const [fraction, label] of fractions) {
      out.push({
        id: `pagemap_scan/method/${size}/${fraction}`,
        title: `pagemapScan() ${sizeLabel(bytes)}, ${label}`,
        program: "pagemap_scan",
        impl: "method",
        args: scanArgs(fraction),
        unit: "scan",
        memory: fraction === 0 ? 0 : bytes * fraction,
        // Untouched: the fixed cost per call, at most 1.5 µs above C's; all resident: the walk (issue 4).
        goal: bytes !== GiB ? undefined : fraction === 0 ? 1500 : fraction === 1 ? 1.05 : undefined,
        goalKind: fraction === 0 ? "excess" : undefined,
        // An untouched range costs the same at every size (no page tables to walk): per scan, not per GiB.
        series: { name: `pagemapScan(), ${label}`, per: fraction === 0 ? "op" : "GiB" },
        headline: bytes === GiB,
      });
      if (fraction > 0) {
        out.push({
          id: `pagemap_scan/packed/${size}/${fraction}`,
          title: `pagemapScanPacked() ${sizeLabel(bytes)}, ${label}`,
          program: "pagemap_scan",
          impl: "packed",
          args: scanArgs(fraction),
          unit: "scan",
          memory: bytes * fraction,
          goal: bytes === GiB && fraction < 1 ? 1.1 : undefined,
          series: { name: `pagemapScanPacked(), ${label}`, per: "GiB" },
          headline: bytes === GiB,
        });
      }
    }
    if (bytes === GiB) {
      for (const [fraction, label] of fractions.slice(1)) {
        out.push({
          id: `pagemap_scan/buffers/1GiB/${fraction}`,
          title: `ffi/ ScanBuffers loop 1 GiB, ${label}`,
          program: "pagemap_scan",
          impl: "buffers",
          args: scanArgs(fraction),
          unit: "scan",
          memory: bytes * fraction,
        });
      }
    }
  }

  // Missing pages resolved ahead of any fault, one page per ioctl.
  for (const op of ["copy", "zeropage"] as const) {
    const name = op === "copy" ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE";
    for (const bytes of scalingSizes(options)) {
      const rounds = clamp((q ? 2 ** 26 : 2 ** 28) / bytes, 1, 64);
      const resolveArgs = { op, bytes, rounds, warmup: 8192 };
      out.push({
        id: `uffdio_resolve/method/${op}/${sizeLabel(bytes).replace(" ", "")}`,
        title: `${op === "copy" ? "Userfaultfd.copy()" : "Userfaultfd.zeropage()"} per page, ${sizeLabel(bytes)}`,
        program: "uffdio_resolve",
        impl: "method",
        args: resolveArgs,
        unit: "page",
        memory: op === "copy" ? bytes : 0,
        goal: bytes === 256 * MiB ? 1.2 : undefined,
        series: { name: `${name} service per page (Userfaultfd method)`, per: "op" },
        headline: bytes === 256 * MiB,
      });
      if (bytes === 256 * MiB) {
        out.push({
          id: `uffdio_resolve/wrapper/${op}/256MiB`,
          title: `ffi/ ${op === "copy" ? "uffdioCopy()" : "uffdioZeropage()"} per page, 256 MiB`,
          program: "uffdio_resolve",
          impl: "wrapper",
          args: resolveArgs,
          unit: "page",
          memory: op === "copy" ? bytes : 0,
        });
      }
    }
  }

  // A batch of 32 queued page-fault messages read and decoded. The warmup is long: each sample is one call, and
  // until V8 has optimised the read and the decode loop the FFI call takes its slow path and the loop runs in the
  // interpreter (pinned: 285 ns an event after 600 calls, 185–196 after 1500). Judged on one CPU (both sides under
  // `taskset -c 0`): unpinned, the same process runs fast or 2–3× slower from one run to the next, the bare read(2)
  // symbol included (C 285–350 ns an event, the bare symbol 500–630; pinned 122–155 and 167–194), as the runtime's
  // own threads land beside the main thread on the other CPU. C has no such threads.
  const readArgs = { faults: 32, samples: q ? 40 : 150, warmup: q ? 200 : 1200 };
  const readImpls: [string, string, number | undefined][] = [
    ["batch", "Userfaultfd.readEventsInto() (an EventBatch reused, no object per message)", 1.5],
    ["method", "Userfaultfd.readEvents() (an event object per message)", undefined],
    ["wrapper", "ffi/ MessageBatch read + accessors", undefined],
    ["raw-symbol", "bare dlopen'd read(2) symbol, nothing decoded (the floor)", undefined],
  ];
  for (const cpus of ["0", undefined]) {
    for (const [impl, label, goal] of readImpls) {
      if (cpus === undefined && impl !== "batch" && impl !== "raw-symbol") continue; // unpinned: ours and the floor
      out.push({
        id: `read_events/${impl}${cpus === undefined ? "" : "/one-cpu"}`,
        title: `${label}, 32 queued faults${cpus === undefined ? ", unpinned" : ", both on one CPU"}`,
        program: "read_events",
        impl,
        args: readArgs,
        unit: "event",
        memory: 0,
        goal: cpus === undefined ? undefined : goal,
        cpus,
      });
    }
  }
  // The synchronous write-protect fault round trip: the main isolate writes every page of 16 MiB in order.
  // Like for like: our handler's default spins 30 µs after a batch (on more than one CPU), so the goal is judged
  // against C's handler spinning as long (--spin-us=30); spinMicros: 0 against C's sleeping one. Our default
  // against C's sleeping handler is shown too (the comparison of earlier runs), without a goal.
  const roundArgs = (chunk: number) => ({ pages: 4096, chunk, rounds: q ? 3 : 8, warmup: 1 });
  const SPIN = 30;
  for (const chunk of [1, 16]) {
    const per = chunk === 1 ? "fault" : "page written";
    const variants: [string, string, number, number | undefined][] = [
      ["default", `default (spins ${SPIN} µs), against C spinning ${SPIN} µs`, SPIN, chunk === 1 ? 1.1 : undefined],
      ["spin", "spinMicros: 0, against C sleeping at once", 0, undefined],
      ["default", `default (spins ${SPIN} µs), against C sleeping at once`, 0, undefined],
    ];
    for (const [impl, label, cSpin, goal] of variants) {
      out.push({
        id: `fault_roundtrip/${impl}/chunk${chunk}/c-spin${cSpin}`,
        title: `FaultHandler WP round trip, unprotect chunk ${chunk}, ${label}, per ${per}`,
        program: "fault_roundtrip",
        impl,
        args: roundArgs(chunk),
        cArgs: { ...roundArgs(chunk), "spin-us": cSpin },
        unit: "page",
        memory: 4096 * 4096,
        goal,
      });
    }
  }
  out.push({
    id: "fault_roundtrip/default/chunk16-vs-c-chunk1",
    title: `FaultHandler WP round trip, unprotect chunk 16 against C's one-page handler (both spin ${SPIN} µs), ` +
      "per page written",
    program: "fault_roundtrip",
    impl: "default",
    args: roundArgs(16),
    cArgs: { ...roundArgs(1), "spin-us": SPIN },
    unit: "page",
    memory: 4096 * 4096,
    goal: 1,
    goalText: "< 1× (lower total time)",
  });

  // WriteWatch.collect() (async backend) over resident memory with a fraction of it written since the last call.
  // Each iteration first writes its fraction, untimed: a kernel-resolved fault per page, ~0.5 s per GiB when every
  // page is written, so that case gets few iterations (and runs at 1 GiB only).
  // Smaller sizes get more iterations (as many pages written in all), so that the JIT has settled.
  const collectArgs = (bytes: number, fraction: number) => {
    if (fraction >= 1) return { bytes, fraction, iterations: q ? 3 : 4, warmup: 1 };
    if (fraction <= 0) return { bytes, fraction, iterations: q ? 20 : 50, warmup: 10 };
    const iterations = clamp(((q ? 10 : 30) * GiB) / bytes, 10, q ? 300 : 1000);
    return { bytes, fraction, iterations, warmup: clamp(iterations / 5, 2, 100) };
  };
  for (const [fraction, label] of fractions) {
    const written = label.replace("resident", "written");
    const sizes = fraction === 0.01 ? [16 * MiB, 64 * MiB, 256 * MiB, GiB, ...(q ? [] : [4 * GiB])] : [GiB];
    for (const bytes of sizes) {
      out.push({
        id: `write_watch_collect/method/${sizeLabel(bytes).replace(" ", "")}/${fraction}`,
        title: `WriteWatch.collect() ${sizeLabel(bytes)}, ${written}`,
        program: "write_watch_collect",
        impl: "method",
        args: collectArgs(bytes, fraction),
        unit: "collect",
        memory: bytes,
        goal: bytes === GiB ? 1.05 : undefined,
        series: fraction === 0.01 ? { name: `WriteWatch.collect(), ${written}`, per: "GiB" } : undefined,
        headline: bytes === GiB,
        runs: bytes > GiB ? 3 : undefined,
      });
    }
    // The walk alone, where collect() adds something to it (not when every page is written: the walk is it all).
    if (fraction < 1) {
      out.push({
        id: `write_watch_collect/scanner/1GiB/${fraction}`,
        title: `PagemapScanner.visit() (the walk alone) 1 GiB, ${written}`,
        program: "write_watch_collect",
        impl: "scanner",
        args: collectArgs(GiB, fraction),
        unit: "collect",
        memory: GiB,
      });
    }
  }
  // Small and sparse: 128 pages scattered over 512 (2 MiB), the same pseudo-random pages on both sides, where
  // the fixed cost of a call shows.
  out.push({
    id: "write_watch_collect/method/2MiB/scatter128",
    title: "WriteWatch.collect() 2 MiB, 128 scattered pages of 512 written",
    program: "write_watch_collect",
    impl: "method",
    args: { bytes: 2 * MiB, scatter: 128, iterations: q ? 2000 : 10_000, warmup: 1000 },
    unit: "collect",
    memory: 2 * MiB,
    goal: 1.3,
  });

  // The first write to a page under the async write watch: the kernel resolves the fault itself, so the goal
  // (issue 4) is C's cost, the kernel's.
  out.push({
    id: "async_first_write/watch",
    title: `first write per page under WriteWatch (async), ${sizeLabel(q ? 64 * MiB : 256 * MiB)}`,
    program: "async_first_write",
    impl: "watch",
    args: { bytes: q ? 64 * MiB : 256 * MiB, rounds: q ? 2 : 3 },
    unit: "page",
    memory: q ? 64 * MiB : 256 * MiB,
    goal: 1.05,
  });

  // A live snapshot, idle and under a writer: its time against C's, against C's memcpy of the same bytes (the
  // goal is a floor on bandwidth: at least half of memcpy's, so at most twice its time), and the writer's stall
  // per fault. The pairs of one case share their runs. 1 GiB, and 4 GiB under the writer (a scaling point).
  const snapshotBytes = q ? 256 * MiB : GiB;
  const snapshotCases: [number, number][] = [
    [snapshotBytes, 0],
    [snapshotBytes, 1],
    ...(q ? [] : [[4 * GiB, 1]] as [
      number,
      number,
    ][]),
  ];
  for (const [bytes, writer] of snapshotCases) {
    const when = writer ? "under a writer" : "idle";
    const size = sizeLabel(bytes);
    const big = bytes > GiB;
    const base = {
      program: "live_snapshot",
      impl: "default",
      args: { bytes, writer, chunk: 64 },
      memory: 2 * bytes,
      runs: big ? 3 : undefined,
    };
    const id = `live_snapshot/${size.replace(" ", "")}/${writer ? "writer" : "idle"}`;
    out.push({
      ...base,
      id,
      title: `LiveSnapshot ${size} ${when}, per page saved`,
      unit: "page",
      goal: big ? undefined : 1.1,
      series: writer ? { name: "LiveSnapshot under a writer, per page saved", per: "op" } : undefined,
      headline: !big,
    });
    if (big) continue;
    // What bounds the row above: C copying the way ours does (process_vm_writev on itself, so that a page unmapped
    // under the snapshot fails the copy with EFAULT instead of killing the process), everything else the same.
    out.push({
      ...base,
      id: `${id}/vs-pvm`,
      title: `LiveSnapshot ${size} ${when} against C copying with process_vm_writev as ours does, per page saved`,
      cArgs: { ...base.args, copy: "pvm" },
      unit: "page",
    });
    out.push({
      ...base,
      id: `${id}/vs-memcpy`,
      title: `LiveSnapshot ${size} ${when} against C's memcpy of it, per page`,
      unit: "page",
      measure: { ours: "ns_per_op", c: "memcpy_ns_per_page" },
      goal: writer ? 2 : undefined,
      goalText: writer ? "≥ 50% of memcpy bandwidth (≤ 2×)" : undefined,
    });
    if (writer) {
      out.push({
        ...base,
        id: `${id}/stall`,
        title: `LiveSnapshot ${size} under a writer: the writer's stall per fault (median)`,
        unit: "fault",
        measure: { ours: "stall_p50_ns", c: "stall_p50_ns" },
        goal: 1.2,
      });
    }
  }

  // Missing faults by random touches: the main isolate touches distinct pages of 64 MiB in a random order, each
  // a missing fault served from an in-memory image (a lazy restore), or with the zero page. Like for like: the
  // default LazyRegion and FaultHandler spin 30 µs after a batch, as C's handler does with --spin-us=30.
  const touchArgs = (fill: string) => ({ bytes: 64 * MiB, touches: q ? 4096 : 8192, warmup: 1024, fill });
  const touchImpls: [string, string, string, number, number | undefined][] = [
    ["default", "copy", `LazyRegion random-touch restore (spins ${SPIN} µs), against C spinning ${SPIN} µs`, SPIN, 1.2],
    ["spin0", "copy", "LazyRegion random-touch restore, spinMicros: 0, against C sleeping at once", 0, undefined],
    ["default", "copy", `LazyRegion random-touch restore (spins ${SPIN} µs), against C sleeping at once`, 0, undefined],
    [
      "copyFrom",
      "copy",
      `FaultHandler + copyFrom(image), random touches, against C spinning ${SPIN} µs`,
      SPIN,
      undefined,
    ],
    [
      "zerofill",
      "zero",
      `FaultHandler + zerofill(), random touches (C: UFFDIO_ZEROPAGE), against C spinning ${SPIN} µs`,
      SPIN,
      undefined,
    ],
  ];
  for (const [impl, fill, label, cSpin, goal] of touchImpls) {
    out.push({
      id: `lazy_restore/${impl}/c-spin${cSpin}`,
      title: `${label}, per fault`,
      program: "lazy_restore",
      impl,
      args: touchArgs(fill),
      cArgs: { ...touchArgs(fill), "spin-us": cSpin },
      unit: "fault",
      memory: 2 * 64 * MiB,
      goal,
    });
  }
  return out;
}
