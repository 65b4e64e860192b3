/**
 * `uffd demo`: a short guided run on this machine — the feature summary, then a
 * live write watch: memory that is written in rounds while the kernel tracks the
 * writes (WP_ASYNC), printed as a page heat map per round.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { pagemapScan } from "../pagemap.ts";
import { Region } from "../region.ts";
import { Feature } from "../uapi.ts";
import { Userfaultfd } from "../userfaultfd.ts";
import { featuresReport } from "./features.ts";
import { bold, cyan, dim, EXIT, green, printJson, red } from "./output.ts";

const PAGES = 64;
const ROUNDS = 4;

/** Runs `uffd demo [--json]`. */
export function run(args: string[]): number {
  const { values } = parseArgs({ args, options: { json: { type: "boolean" } }, strict: true });
  const report = featuresReport();
  if (!report.available) {
    console.error(red(`uffd demo: no userfaultfd can be created by this process. To change: ${report.access.summary}`));
    return EXIT.refused;
  }
  const missing = [Feature.WP_ASYNC, Feature.WP_UNPOPULATED].filter((f) =>
    !report.features.find((x) => x.name === f)?.supported
  );
  const rounds: { round: number; wrote: number[]; reported: number[] }[] = [];
  if (missing.length === 0) {
    using mem = Region.map(PAGES * Region.pageSize);
    using uffd = Userfaultfd.open({ require: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED] });
    uffd.register(mem, { wp: true });
    uffd.writeProtect(mem);
    let seed = 7;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    for (let round = 1; round <= ROUNDS; round++) {
      const wrote = new Set<number>();
      const count = 2 + Math.floor(random() * 10);
      for (let i = 0; i < count; i++) {
        const page = Math.floor(random() * PAGES);
        mem.bytes[page * Region.pageSize + Math.floor(random() * Region.pageSize)] = round;
        wrote.add(page);
      }
      // One walk reports the written pages and write-protects them again.
      const reported = pagemapScan(mem, { require: ["WRITTEN"], writeProtect: true })
        .flatMap((r) => Array.from({ length: r.pages }, (_, i) => r.firstPage + i));
      rounds.push({ round, wrote: [...wrote].sort((a, b) => a - b), reported });
    }
  }
  if (values.json) {
    printJson({ kernel: report.kernel, features: report.features, writeWatch: { pages: PAGES, rounds, missing } });
    return EXIT.ok;
  }
  const have = report.features.filter((f) => f.supported).length;
  console.log(bold("uffd demo") + dim(` — Linux ${report.kernel} ${report.arch}, page size ${report.pageSize}`));
  console.log(`userfaultfd: ${have}/${report.features.length} features (${report.featureMask}), via ${report.origin}`);
  console.log(dim(`access: ${report.access.summary}`));
  console.log();
  if (missing.length > 0) {
    console.log(red(`live write watch skipped: this kernel lacks ${missing.join(", ")} (Linux 6.7+)`));
    return EXIT.ok;
  }
  console.log(bold(`live write watch over ${PAGES} pages (WP_ASYNC + PAGEMAP_SCAN, no fault reaches user space)`));
  console.log(dim("each round writes a few random pages; one PAGEMAP_SCAN reports and re-protects them"));
  for (const r of rounds) {
    const map = Array.from({ length: PAGES }, (_, p) => r.reported.includes(p) ? cyan("█") : dim("·")).join("");
    const exact = r.reported.join() === r.wrote.join();
    console.log(
      `round ${r.round}  ${map}  ${r.reported.length} written ${exact ? green("✓ exact") : red("✗ differs")}`,
    );
  }
  return EXIT.ok;
}
