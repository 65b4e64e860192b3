/// <reference lib="deno.worker" />
/** A test Worker that uses the pagemap probes and a scan once, then says so. */

import { hasPagemapScan, pagemapScan } from "../../kernel/pagemap_scan.ts";
import { Region } from "../../kernel/region.ts";

self.onmessage = () => {
  const ok = hasPagemapScan();
  using mem = Region.map(4 * Region.pageSize);
  mem.bytes[0] = 1;
  const regions = pagemapScan(mem, { require: ["PRESENT"] }).length;
  self.postMessage({ ok, regions });
};
