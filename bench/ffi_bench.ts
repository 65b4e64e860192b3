/**
 * `deno task bench`: a bare ioctl round trip through each of our layers.
 * `UFFDIO_WAKE` on one registered page with nobody waiting costs the system call
 * and little else, so the differences are what each layer adds: the baseline is
 * the bare `ioctl` symbol from the benchmarks' own `dlopen`
 * (`bench/lib/raw_libc.ts`); then the `ffi/` wrapper (struct in a preallocated
 * buffer, errno read with the call); then the `Userfaultfd` method (validation).
 * The C side of the same measurement is in `bench/compare.ts`.
 *
 * @module
 */

import { Region, UFFDIO_WAKE, Userfaultfd } from "../mod.ts";
import { encodeUffdioRange } from "../ffi/_structs.ts";
import { uffdioWake } from "../ffi/_uffd_ioctls.ts";
import { rawIoctl } from "./lib/raw_libc.ts";

// Lives until the bench process exits: the benches run after this module has loaded.
const mem = Region.map(Region.pageSize);
const uffd = Userfaultfd.open();
uffd.register(mem, { missing: true });
const fd = uffd.fd;
const start = mem.address;
const len = BigInt(mem.length);
const struct = encodeUffdioRange({ start, len });
const group = "ioctl UFFDIO_WAKE round trip";

Deno.bench("bare dlopen'd ioctl symbol", { group, baseline: true }, () => {
  if (rawIoctl(fd, UFFDIO_WAKE, struct) !== 0) throw new Error("UFFDIO_WAKE failed");
});

Deno.bench("ffi/ uffdioWake()", { group }, () => {
  if (uffdioWake(fd, start, len) !== 0) throw new Error("UFFDIO_WAKE failed");
});

Deno.bench("Userfaultfd.wake(region)", { group }, () => {
  uffd.wake(mem);
});
