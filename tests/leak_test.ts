/** Opening and closing many userfaultfds and regions leaves fds and mappings where they started. */

import assert from "node:assert/strict";
import { Feature, type MapOptions, Region, Userfaultfd } from "../mod.ts";
import { unmappedParts } from "../kernel/maps.ts";
import { fdCount, mappingCount } from "./helpers.ts";

/** Mappings whose path names them ours: memfd regions and shared anonymous regions never merge with others. */
function namedMappings(): { memfd: number; shared: number } {
  const lines = Deno.readTextFileSync("/proc/self/maps").split("\n");
  return {
    memfd: lines.filter((l) => l.includes("/memfd:uffd")).length,
    shared: lines.filter((l) => l.includes("/dev/zero (deleted)")).length,
  };
}

const KINDS: MapOptions[] = [{}, { shared: true }, { memfd: true }];

Deno.test("10,000 userfaultfds and regions opened and closed leave no fd and no mapping behind", () => {
  // Warm up once so that lazily opened runtime and library fds (/proc/self/pagemap…) are counted before.
  // Where the kernel has WP_ASYNC, this isolate's writes to protected pages are resolved by the kernel; where it
  // has not, nothing is written after protecting (a write would wait for a handler: EDEADLK says so).
  const async = Userfaultfd.supported().features.has(Feature.WP_ASYNC);
  const options = async ? { require: [Feature.WP_ASYNC] } : { writers: "other-threads" as const };
  for (const kind of KINDS) {
    using mem = Region.map(Region.pageSize, kind);
    using uffd = Userfaultfd.open(options);
    uffd.register(mem, { wp: true });
  }
  const fds = fdCount();
  const maps = mappingCount();
  const named = namedMappings();
  let privateChecked = 0;
  for (let i = 0; i < 10_000; i++) {
    let span: { start: bigint; end: bigint } | undefined;
    {
      using mem = Region.map(2 * Region.pageSize, KINDS[i % KINDS.length]);
      using uffd = Userfaultfd.open(options);
      if (i % 100 === 0) {
        uffd.register(mem, { wp: true });
        uffd.writeProtect(mem);
        if (async) mem.bytes[0] = 1;
      }
      if (mem.kind === "private" && i % 30 === 0) {
        span = { start: mem.address, end: mem.address + BigInt(mem.length) };
      }
    }
    // Private anonymous mappings merge with their neighbours, so counting cannot see them leak:
    // check that the range itself is gone right after disposal instead.
    if (span) {
      assert.deepEqual(unmappedParts(span.start, span.end), [span]);
      privateChecked++;
    }
  }
  assert.ok(privateChecked > 300);
  // Error paths must not leak either.
  for (let i = 0; i < 1_000; i++) {
    assert.throws(() => Userfaultfd.open({ require: [Feature.MOVE], decline: [Feature.MOVE] }));
    assert.throws(() => Region.map(3));
  }
  assert.equal(fdCount(), fds, "file descriptors");
  assert.deepEqual(namedMappings(), named, "memfd and shared anonymous mappings");
  // V8 maps a few pages of its own meanwhile, so the total gets a bound rather than equality.
  const grown = mappingCount() - maps;
  assert.ok(grown <= 32, `${grown} more mappings than before`);
});
