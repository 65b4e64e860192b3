/**
 * `uffd features`: what this kernel offers, measured rather than read off the
 * version number — the userfaultfd features, which ways of creating a userfaultfd
 * work for this process, the ioctls each registration mode allows on each kind of
 * memory, PAGEMAP_SCAN and its categories, soft-dirty, transparent huge pages and
 * hugetlb — and the kernel profile: the traits that change what the library does
 * here (the shared zero page, `MADV_POPULATE_READ`, `UFFDIO_ZEROPAGE`, which
 * `PAGEMAP_SCAN` answers hold), each with what it changes, in words.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  acceptedCategories,
  type AccessDiagnosis,
  CATEGORIES,
  type Category,
  diagnoseAccess,
  explainAccess,
  FEATURES,
  hasPagemapScan,
  type Ioctl,
  type KernelProfile,
  kernelProfile,
  kernelRelease,
  type Origin,
  profileNotes,
  readProcFile,
  Region,
  type RegisterOptions,
  softDirtySupported,
  type ThpTraits,
  type TraitNote,
  UffdError,
  Userfaultfd,
} from "../mod.ts";
import { bold, dim, EXIT, green, printJson, red, table, yellow } from "./_output.ts";

/** One way of creating a userfaultfd, tried for real. */
export interface CreationWay {
  /** `syscall`: `userfaultfd(2)`; `device`: `/dev/userfaultfd` + `USERFAULTFD_IOC_NEW`; `user-mode-only`: the syscall with `UFFD_USER_MODE_ONLY`. */
  way: Origin;
  /** A userfaultfd was created and its `UFFDIO_API` handshake succeeded. */
  works: boolean;
  /** Why not, when it did not. */
  error?: string;
}

/** The ioctls one registration allowed, or why it could not be measured. */
export type RegisterResult = Ioctl[] | { error: string } | { skipped: string };

/** Transparent huge pages, from `/sys/kernel/mm/transparent_hugepage` (the kernel profile's). */
export type ThpReport = ThpTraits;

/** hugetlb pages, from `/proc/meminfo` and `/sys/kernel/mm/hugepages`. */
export interface HugetlbReport {
  /** The default huge page size in bytes (`Hugepagesize`). */
  defaultSize: number | null;
  /** Every huge page size the kernel offers, with its pool. */
  sizes: { size: number; total: number; free: number }[];
  /** Whether a default-size huge page is free to map now. */
  available: boolean;
}

/** The `features` report as `--json` prints it. */
export interface FeaturesReport {
  /** `uname -r` */
  kernel: string;
  /** `x86_64` or `aarch64`. */
  arch: string;
  /** Base page size in bytes. */
  pageSize: number;
  /** Whether this process can create a userfaultfd at all. */
  available: boolean;
  /** How the probe's userfaultfd was created (`null` when none could be). */
  origin: Origin | null;
  /** The raw feature mask the kernel reported, in hex (`null` when no userfaultfd could be created). */
  featureMask: string | null;
  /** Why no userfaultfd could be created, and what to change. */
  error?: string;
  /** Every known feature and whether this kernel has it. */
  features: { name: string; bit: number; since: string; supported: boolean; description: string }[];
  /** Each way of creating a userfaultfd, tried. */
  creation: CreationWay[];
  /** What decides access: the sysctl, CAP_SYS_PTRACE, the device node, seccomp. */
  access: AccessDiagnosis & { summary: string };
  /** The ioctls a registration in each mode allows, measured per memory kind. */
  registerIoctls: Record<string, RegisterResult>;
  /** PAGEMAP_SCAN: present, and which categories this kernel accepts. */
  pagemapScan: { available: boolean; categories: Category[]; refused: Category[] };
  /** Soft-dirty: whether the category is accepted and whether tracking actually works. */
  softDirty: { categoryAccepted: boolean; works: boolean; note: string };
  /** Transparent huge pages (`null` when the kernel has none). */
  transparentHugepages: ThpReport | null;
  /** The kernel profile (`kernelProfile()`), with each trait in words: what was measured and what it changes. */
  profile: KernelProfile & { notes: TraitNote[] };
  /** hugetlb pools. */
  hugetlb: HugetlbReport;
}

function describe(e: unknown): string {
  if (e instanceof UffdError) return e.hint ? `${e.code}: ${e.hint}` : e.message;
  return e instanceof Error ? e.message : String(e);
}

const WAY_OF_ATTEMPT: Record<string, Origin> = {
  "userfaultfd()": "syscall",
  "open(/dev/userfaultfd)": "device",
  "USERFAULTFD_IOC_NEW": "device",
  "userfaultfd(UFFD_USER_MODE_ONLY)": "user-mode-only",
};

/**
 * Tries each way of creating a userfaultfd (with its `UFFDIO_API` handshake). When
 * none works, `Userfaultfd.supported()` already tried them all, and its error lists
 * what each one returned.
 */
function tryWays(): CreationWay[] {
  const ways: [Origin, Parameters<typeof Userfaultfd.open>[0]][] = [
    ["syscall", { via: "syscall", userModeOnly: false }],
    ["device", { via: "device", userModeOnly: false }],
    ["user-mode-only", { via: "syscall", userModeOnly: true }],
  ];
  try {
    Userfaultfd.supported();
  } catch (e) {
    const refused = new Map<Origin, string>();
    for (const m of String(e instanceof Error ? e.message : e).matchAll(/([\w()/_]+): (E[A-Z0-9]+)/g)) {
      const way = WAY_OF_ATTEMPT[m[1]!];
      if (way && !refused.has(way)) refused.set(way, m[2]!);
    }
    const code = e instanceof UffdError ? e.code : "error";
    return ways.map(([way]) => ({ way, works: false, error: refused.get(way) ?? code }));
  }
  return ways.map(([way, options]) => {
    try {
      Userfaultfd.open(options).close();
      return { way, works: true };
    } catch (e) {
      return { way, works: false, error: e instanceof UffdError ? e.code : describe(e) };
    }
  });
}

/** Reads a /proc or /sys file through libc (Deno's file APIs refuse them without --allow-all). */
const readText = readProcFile;

function hugetlb(): HugetlbReport {
  const meminfo = readText("/proc/meminfo") ?? "";
  const kb = /^Hugepagesize:\s+(\d+) kB/m.exec(meminfo);
  const defaultSize = kb ? Number(kb[1]) * 1024 : null;
  const sizes: HugetlbReport["sizes"] = [];
  try {
    for (const entry of Deno.readDirSync("/sys/kernel/mm/hugepages")) {
      const m = /^hugepages-(\d+)kB$/.exec(entry.name);
      if (!m) continue;
      const dir = `/sys/kernel/mm/hugepages/${entry.name}`;
      sizes.push({
        size: Number(m[1]) * 1024,
        total: Number(readText(`${dir}/nr_hugepages`)?.trim() ?? 0),
        free: Number(readText(`${dir}/free_hugepages`)?.trim() ?? 0),
      });
    }
  } catch { /* no hugetlb in this kernel */ }
  sizes.sort((a, b) => a.size - b.size);
  const pool = sizes.find((s) => s.size === defaultSize);
  return { defaultSize, sizes, available: (pool?.free ?? 0) > 0 };
}

function measureIoctls(hugePages: HugetlbReport): FeaturesReport["registerIoctls"] {
  const out: FeaturesReport["registerIoctls"] = {};
  const kinds: [string, { memfd?: boolean; hugetlb?: boolean }][] = [
    ["anon", {}],
    ["memfd", { memfd: true }],
    ["hugetlb", { memfd: true, hugetlb: true }],
  ];
  const modes: [string, RegisterOptions][] = [
    ["missing", { missing: true }],
    ["wp", { wp: true }],
    ["missing+wp", { missing: true, wp: true }],
    ["minor", { minor: true }],
  ];
  for (const [kind, mapOptions] of kinds) {
    for (const [modeName, mode] of modes) {
      if (kind === "anon" && mode.minor) continue; // minor faults exist only for shmem and hugetlbfs
      const label = `${modeName} (${kind})`;
      if (kind === "hugetlb" && !hugePages.available) {
        out[label] = {
          skipped: `no free ${size(hugePages.defaultSize ?? 0)} huge page (vm.nr_hugepages=${
            hugePages.sizes.find((s) => s.size === hugePages.defaultSize)?.total ?? 0
          }); reserve one to measure`,
        };
        continue;
      }
      try {
        const length = kind === "hugetlb" ? Region.hugePageSize : Region.pageSize;
        using mem = Region.map(length, mapOptions);
        using uffd = Userfaultfd.open();
        out[label] = [...uffd.register(mem, mode)];
      } catch (e) {
        out[label] = { error: describe(e) };
      }
    }
  }
  return out;
}

/** Builds the report. It never throws for a missing userfaultfd: `available` says so, and `error` why. */
export function featuresReport(): FeaturesReport {
  const access = diagnoseAccess();
  const summary = explainAccess(access);
  let support: ReturnType<typeof Userfaultfd.supported> | undefined;
  let error: string | undefined;
  try {
    support = Userfaultfd.supported();
  } catch (e) {
    error = e instanceof UffdError ? e.message : String(e);
  }
  const huge = hugetlb();
  const profile = kernelProfile();
  const scan = hasPagemapScan();
  const accepted = acceptedCategories();
  const softDirtyAccepted = accepted.includes("SOFT_DIRTY");
  const softDirtyWorks = softDirtySupported();
  return {
    kernel: kernelRelease(),
    arch: Deno.build.arch,
    pageSize: Region.pageSize,
    available: support !== undefined,
    origin: support?.origin ?? null,
    featureMask: support ? `0x${support.featureMask.toString(16)}` : null,
    ...(error === undefined ? {} : { error }),
    features: FEATURES.map((f) => ({
      name: f.name,
      bit: f.bit,
      since: f.since,
      supported: support?.features.has(f.name) ?? false,
      description: f.description,
    })),
    creation: tryWays(),
    access: { ...access, summary },
    registerIoctls: support ? measureIoctls(huge) : {},
    pagemapScan: {
      available: scan,
      categories: accepted,
      refused: CATEGORIES.map((c) => c.name).filter((c) => !accepted.includes(c)),
    },
    softDirty: {
      categoryAccepted: softDirtyAccepted,
      works: softDirtyWorks,
      note: softDirtyWorks
        ? "soft-dirty tracking works (pagemap bit 55, clear_refs 4)"
        : softDirtyAccepted
        ? "this kernel accepts the SOFT_DIRTY category, but soft-dirty is compiled out (CONFIG_MEM_SOFT_DIRTY=n): " +
          "a page just written does not show pagemap bit 55"
        : "no soft-dirty tracking on this kernel",
    },
    transparentHugepages: profile.thp,
    hugetlb: huge,
    profile: { ...profile, notes: profileNotes(profile) },
  };
}

function size(bytes: number): string {
  if (bytes >= 1 << 30) return `${bytes / (1 << 30)} GiB`;
  if (bytes >= 1 << 20) return `${bytes / (1 << 20)} MiB`;
  return `${bytes / 1024} KiB`;
}

/** What a refusal means, per way and errno. */
const REFUSAL: Partial<Record<Origin, Record<string, string>>> = {
  "syscall": {
    EPERM: "needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1",
    ENOSYS: "no userfaultfd in this kernel",
  },
  "device": {
    EACCES: "no permission on /dev/userfaultfd",
    ENOENT: "no /dev/userfaultfd (Linux 6.1+)",
    EPERM: "no permission on /dev/userfaultfd",
  },
  "user-mode-only": { EINVAL: "UFFD_USER_MODE_ONLY needs Linux 5.11+", EPERM: "refused (seccomp or LSM?)" },
};

/** Prints the report as text. */
export function printFeatures(report: FeaturesReport): void {
  const yes = (b: boolean) => b ? green("yes") : red("no");
  console.log(
    `${bold("kernel")} ${report.kernel}  ${bold("arch")} ${report.arch}  ${bold("page size")} ${report.pageSize}`,
  );
  if (report.available) {
    console.log(`${bold("userfaultfd")} created via ${report.origin}; features ${report.featureMask}\n`);
  } else console.log(`${bold("userfaultfd")} ${red("cannot be created by this process")}\n`);
  console.log(table([
    ["bit", "feature", "since", "here", "what"],
    ...report.features.map((f) => [String(f.bit), f.name, f.since, yes(f.supported), dim(f.description)]),
  ]));

  console.log(`\n${bold("creating a userfaultfd")} (each way tried)`);
  const labels: Record<Origin, string> = {
    "syscall": "userfaultfd(2)",
    "device": "/dev/userfaultfd + USERFAULTFD_IOC_NEW",
    "user-mode-only": "userfaultfd(UFFD_USER_MODE_ONLY)",
  };
  for (const w of report.creation) {
    const why = w.works ? "" : REFUSAL[w.way]?.[w.error ?? ""] ?? "";
    console.log(
      `  ${labels[w.way].padEnd(40)} ${w.works ? green("works") : red(`refused (${w.error})`)}${
        why ? dim(` ${why}`) : ""
      }`,
    );
  }
  const a = report.access;
  console.log(
    `  ${
      dim(
        `vm.unprivileged_userfaultfd=${a.unprivilegedSysctl ?? "?"}, CAP_SYS_PTRACE ${
          a.capSysPtrace === undefined ? "?" : a.capSysPtrace ? "yes" : "no"
        }, uid ${a.uid ?? "?"}, /dev/userfaultfd ${a.device.exists ? `mode ${a.device.mode ?? "?"}` : "absent"}, ` +
          `seccomp ${a.seccomp ?? "?"}`,
      )
    }`,
  );
  console.log(`  ${a.summary}`);

  if (Object.keys(report.registerIoctls).length > 0) {
    console.log(`\n${bold("ioctls allowed by a registration")}`);
    const skipped = new Map<string, string[]>(); // one line per skipped memory kind
    for (const [label, result] of Object.entries(report.registerIoctls)) {
      if (Array.isArray(result)) console.log(`  ${label.padEnd(22)} ${result.join(" ")}`);
      else if ("error" in result) console.log(`  ${label.padEnd(22)} ${red(result.error)}`);
      else skipped.set(result.skipped, [...skipped.get(result.skipped) ?? [], label]);
    }
    for (const [why, labels] of skipped) {
      const kind = /\((.*)\)$/.exec(labels[0]!)?.[1] ?? "";
      const modes = labels.map((l) => l.replace(/ \(.*\)$/, "")).join(", ");
      console.log(`  ${kind.padEnd(22)} ${yellow(`skipped (${modes}): ${why}`)}`);
    }
  }

  const scan = report.pagemapScan;
  console.log(`\n${bold("PAGEMAP_SCAN")} ${scan.available ? green("yes") : red("no (Linux 6.7+)")}`);
  if (scan.available) {
    console.log(`  categories accepted: ${scan.categories.join(" ")}`);
    if (scan.refused.length > 0) console.log(`  refused: ${scan.refused.join(" ")}`);
  }
  console.log(`${bold("soft-dirty")} ${yes(report.softDirty.works)} ${dim(`— ${report.softDirty.note}`)}`);

  const t = report.transparentHugepages;
  console.log(
    `${bold("transparent huge pages")} ` +
      (t
        ? `enabled [${t.enabled}], defrag [${t.defrag}], shmem [${t.shmemEnabled ?? "?"}], PMD size ${
          t.pmdSize ? size(t.pmdSize) : "?"
        }`
        : "not built in"),
  );
  const h = report.hugetlb;
  printHugetlb(h);
  printProfile(report.profile.notes);
}

/** The kernel profile's traits, one line each, with what each changes. */
export function printProfile(notes: readonly TraitNote[]): void {
  console.log(`\n${bold("kernel profile")} ${dim("(measured now; what each trait changes)")}`);
  const width = Math.max(...notes.map((n) => n.trait.length));
  for (const n of notes) {
    console.log(`  ${n.trait.padEnd(width)}  ${n.value}${n.effect ? dim(` — ${n.effect}`) : ""}`);
  }
}

function printHugetlb(h: HugetlbReport): void {
  const pools = h.sizes.map((s) => `${size(s.size)}: ${s.free}/${s.total} free`).join(", ");
  console.log(
    `${bold("hugetlb")} default ${h.defaultSize ? size(h.defaultSize) : "?"}; ${pools || "no pools"}` +
      (h.available ? "" : dim(" — none reserved: echo N > /proc/sys/vm/nr_hugepages (as root) to use MAP_HUGETLB")),
  );
}

/** Runs `uffd features [--json]`: exit 0, or 3 when no userfaultfd can be created here. */
export function run(args: string[]): number {
  const { values } = parseArgs({
    args,
    options: { json: { type: "boolean" }, profile: { type: "boolean" } },
    strict: true,
  });
  if (values.profile) {
    const profile = kernelProfile();
    if (values.json) printJson({ ...profile, notes: profileNotes(profile) });
    else {
      console.log(
        `${bold("kernel")} ${profile.release} ${profile.arch}, userfaultfd features ${
          profile.userfaultfd.featureMask ?? red("unavailable")
        }`,
      );
      printProfile(profileNotes(profile));
    }
    return profile.userfaultfd.available ? EXIT.ok : EXIT.refused;
  }
  const report = featuresReport();
  if (values.json) printJson(report);
  else printFeatures(report);
  if (!report.available) {
    console.error(
      red(`uffd features: no userfaultfd can be created by this process. To change: ${report.access.summary}`),
    );
    return EXIT.refused;
  }
  return EXIT.ok;
}
