/// <reference lib="deno.worker" />
/**
 * A test Worker that uses the pagemap probes and a scan once, then says so: PAGEMAP_SCAN where the kernel has it,
 * and in any case the library's pagemap readers (readPagemap, and the page bits the snapshot and checkpoint use).
 */

import { hasPagemapScan, pagemapScan } from "../../kernel/pagemap_scan.ts";
import { readPagemap } from "../../kernel/pagemap.ts";
import { visitDataPages } from "../../kernel/_page_contents.ts";
import { Region } from "../../kernel/region.ts";

self.onmessage = () => {
  const ok = hasPagemapScan();
  using mem = Region.map(4 * Region.pageSize);
  mem.bytes[0] = 1;
  let runs = 0;
  visitDataPages(mem, () => runs++);
  const present = readPagemap(mem).filter((e) => e.present).length;
  const regions = ok ? pagemapScan(mem, { require: ["PRESENT"] }).length : runs;
  self.postMessage({ ok, regions: runs === 1 && present === 1 ? regions : -1 });
};
