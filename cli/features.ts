/**
 * `uffd features`: what this kernel offers, measured — the userfaultfd features,
 * the ioctls each registration mode allows, how a userfaultfd can be created here.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type AccessDiagnosis, diagnoseAccess, explainAccess } from "../access.ts";
import { UffdError } from "../errors.ts";
import { Region } from "../region.ts";
import { FEATURES, type Ioctl } from "../uapi.ts";
import { type Origin, Userfaultfd } from "../userfaultfd.ts";
import { bold, dim, green, printJson, red, table } from "./output.ts";

/** The `features` report as `--json` prints it. */
export interface FeaturesReport {
  /** `uname -r` */
  kernel: string;
  /** `x86_64` or `aarch64`. */
  arch: string;
  /** Base page size in bytes. */
  pageSize: number;
  /** How the probe's userfaultfd was created. */
  origin: Origin;
  /** The raw feature mask the kernel reported, in hex. */
  featureMask: string;
  /** Every known feature and whether this kernel has it. */
  features: { name: string; bit: number; since: string; supported: boolean; description: string }[];
  /** The ioctls a registration in each mode allows, measured on anonymous and memfd memory. */
  registerIoctls: Record<string, Ioctl[] | { error: string }>;
  /** What decides access. */
  access: AccessDiagnosis & { summary: string };
}

function measureIoctls(): FeaturesReport["registerIoctls"] {
  const out: FeaturesReport["registerIoctls"] = {};
  const modes = [
    ["missing (anon)", { missing: true }, false],
    ["wp (anon)", { wp: true }, false],
    ["missing+wp (anon)", { missing: true, wp: true }, false],
    ["minor (memfd)", { minor: true }, true],
  ] as const;
  for (const [label, mode, memfd] of modes) {
    try {
      using mem = Region.map(Region.pageSize, { memfd });
      using uffd = Userfaultfd.open();
      out[label] = [...uffd.register(mem, mode)];
    } catch (e) {
      out[label] = { error: e instanceof UffdError ? `${e.code}: ${e.hint ?? e.message}` : String(e) };
    }
  }
  return out;
}

/** Builds the report; throws a `UffdError` when no userfaultfd can be created. */
export function featuresReport(): FeaturesReport {
  const support = Userfaultfd.supported();
  const access = diagnoseAccess();
  return {
    kernel: Deno.osRelease(),
    arch: Deno.build.arch,
    pageSize: Region.pageSize,
    origin: support.origin,
    featureMask: `0x${support.featureMask.toString(16)}`,
    features: FEATURES.map((f) => ({
      name: f.name,
      bit: f.bit,
      since: f.since,
      supported: support.features.has(f.name),
      description: f.description,
    })),
    registerIoctls: measureIoctls(),
    access: { ...access, summary: explainAccess(access) },
  };
}

/** Prints the report as text. */
export function printFeatures(report: FeaturesReport): void {
  console.log(
    `${bold("kernel")} ${report.kernel}  ${bold("arch")} ${report.arch}  ${bold("page size")} ${report.pageSize}`,
  );
  console.log(`${bold("userfaultfd")} created via ${report.origin}; features ${report.featureMask}\n`);
  console.log(table([
    ["bit", "feature", "since", "here", "what"],
    ...report.features.map((f) => [
      String(f.bit),
      f.name,
      f.since,
      f.supported ? green("yes") : red("no"),
      dim(f.description),
    ]),
  ]));
  console.log(`\n${bold("ioctls allowed by a registration")}`);
  for (const [mode, ioctls] of Object.entries(report.registerIoctls)) {
    console.log(`  ${mode.padEnd(18)} ${Array.isArray(ioctls) ? ioctls.join(" ") : red(ioctls.error)}`);
  }
  console.log(`\n${bold("access")} ${report.access.summary}`);
}

/** Runs `uffd features [--json]`. */
export function run(args: string[]): number {
  const { values } = parseArgs({ args, options: { json: { type: "boolean" } }, strict: true });
  const report = featuresReport();
  if (values.json) printJson(report);
  else printFeatures(report);
  return 0;
}
