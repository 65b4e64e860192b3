/**
 * Write-protect on memory that was never populated. Mirrors
 * `uffd_wp_unpopulated_test()` ("wp-unpopulated") of
 * tools/testing/selftests/mm/uffd-unit-tests.c — the uffd-wp bit of a marker on
 * an empty anonymous page through protect, unprotect, MADV_DONTNEED, a write
 * and a read — and what the markers are for: with WP_UNPOPULATED a write to a
 * never-touched protected page raises a write-protect fault, without it the
 * write goes through unseen; with WP_ASYNC the kernel resolves it and
 * PAGEMAP_SCAN reports it (`init_uffd` of pagemap_ioctl.c).
 */

import assert from "node:assert/strict";
import { Feature, pagemapScan, readPagemap, Region, Userfaultfd } from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { needs, needsPagemapScan } from "../helpers.ts";
import { PAGE, serveUntil } from "./helpers.ts";

function wpBit(mem: Region, page = 0): boolean {
  return readPagemap(mem.pages(page))[0]!.uffdWp;
}

Deno.test({
  name: "uffd-unit-tests.c wp-unpopulated on anon: markers through protect, unprotect, MADV_DONTNEED, write and read",
  ignore: needs(Feature.PAGEFAULT_FLAG_WP, Feature.WP_UNPOPULATED),
  fn() {
    using mem = Region.map(4 * PAGE);
    // This isolate writes only where the marker is gone.
    using uffd = Userfaultfd.open({
      require: [Feature.PAGEFAULT_FLAG_WP, Feature.WP_UNPOPULATED],
      writers: "other-threads",
    });
    uffd.register(mem, { wp: true });
    // Protecting an empty page leaves a marker that pagemap reports…
    uffd.writeProtect(mem.pages(0));
    assert.equal(wpBit(mem), true, "marker on an unpopulated page");
    // …unprotecting removes it…
    uffd.unprotect(mem.pages(0));
    assert.equal(wpBit(mem), false);
    // …and so does zapping.
    uffd.writeProtect(mem.pages(0));
    mem.zap(mem.pages(0));
    assert.equal(wpBit(mem), false, "MADV_DONTNEED drops the marker");
    // With the marker gone, a write goes straight through.
    mem.bytes[0] = 1;
    assert.equal(wpBit(mem), false);
    mem.zap(mem.pages(0));
    // Reading a protected empty page maps the zero page and keeps the protection.
    uffd.writeProtect(mem.pages(0));
    assert.equal(mem.bytes[0], 0);
    assert.equal(wpBit(mem), true, "a read keeps the marker's protection");
    mem.zap(mem.pages(0));
  },
});

for (const unpopulated of [true, false]) {
  Deno.test({
    name: `wp-unpopulated semantics: a write to a never-touched protected page ${
      unpopulated ? "faults with WP_UNPOPULATED" : "goes unseen without it"
    }`,
    ignore: needs(Feature.WP_UNPOPULATED),
    async fn() {
      using mem = Region.map(2 * PAGE);
      using uffd = Userfaultfd.open(
        unpopulated
          ? { require: [Feature.WP_UNPOPULATED], writers: "other-threads" }
          : { decline: [Feature.WP_UNPOPULATED], writers: "other-threads" },
      );
      uffd.register(mem, { wp: true });
      uffd.writeProtect(mem);
      const writer = libc.memsetOffThread(mem.address + 100n, 0x5a, 10n);
      const served = await serveUntil(
        uffd,
        writer,
        (fault) => uffd.unprotect({ address: fault.address, length: PAGE }),
      );
      assert.equal(served.faults.length, unpopulated ? 1 : 0);
      if (unpopulated) assert.deepEqual([served.faults[0]!.wp, served.faults[0]!.write], [true, true]);
      assert.equal(mem.bytes[100], 0x5a);
    },
  });
}

Deno.test({
  name: "pagemap_ioctl.c init_uffd: WP_ASYNC resolves writes in the kernel; PAGEMAP_SCAN reports exactly them",
  ignore: needs(Feature.WP_ASYNC, Feature.WP_UNPOPULATED) || needsPagemapScan(),
  fn() {
    using mem = Region.map(16 * PAGE);
    using uffd = Userfaultfd.open({
      require: [Feature.WP_ASYNC, Feature.WP_UNPOPULATED],
      features: [Feature.WP_HUGETLBFS_SHMEM],
      userModeOnly: true,
    });
    uffd.register(mem, { wp: true });
    uffd.writeProtect(mem);
    for (const i of [3, 4, 9]) mem.bytes[i * PAGE + 17] = i;
    assert.deepEqual(uffd.readEvents(), [], "no fault reaches user space");
    const written = pagemapScan(mem, { require: ["WRITTEN"] }).map((r) => [r.firstPage, r.pages]);
    assert.deepEqual(written, [[3, 2], [9, 1]]);
    assert.deepEqual([3, 4, 9].map((i) => wpBit(mem, i)), [false, false, false]);
    assert.equal(wpBit(mem, 5), true);
  },
});
