/**
 * `deno task bench`: struct encoding and `uffd_msg` decoding, the pure-JS part of
 * every ioctl and every fault. Encoding a `uffdio_copy`: the baseline writes the
 * five words into a reused `BigUint64Array` (what `ffi/_uffd_ioctls.ts` does on
 * the hot path), against `encodeUffdioCopy()` into a preallocated buffer and into
 * a fresh one. Decoding: a full batch of 64 page-fault messages (a buffer built
 * with `encodeUffdMsg`, as the kernel would fill it), read field by field from
 * typed-array views (the floor) against `decodeUffdMsg()`.
 *
 * @module
 */

import {
  decodeUffdMsg,
  encodePmScanArg,
  encodeUffdioCopy,
  encodeUffdMsg,
  type PmScanArg,
  SIZEOF_PM_SCAN_ARG,
  SIZEOF_UFFD_MSG,
  SIZEOF_UFFDIO_COPY,
  type UffdioCopy,
} from "../ffi/_structs.ts";
import { UFFD_EVENT_PAGEFAULT, UFFD_PAGEFAULT_FLAG_WRITE } from "../ffi/uapi.ts";

const copy: UffdioCopy = { dst: 0x7f00_0000_0000n, src: 0x7f10_0000_0000n, len: 4096n, mode: 0n, copy: 0n };
const copyInto = new Uint8Array(SIZEOF_UFFDIO_COPY);
const words = new BigUint64Array(5);

Deno.bench("BigUint64Array words (ffi/_uffd_ioctls.ts)", { group: "encode uffdio_copy", baseline: true }, () => {
  words[0] = copy.dst;
  words[1] = copy.src;
  words[2] = copy.len;
  words[3] = copy.mode;
  words[4] = 0n;
});

Deno.bench("encodeUffdioCopy() into a preallocated buffer", { group: "encode uffdio_copy" }, () => {
  encodeUffdioCopy(copy, copyInto);
});

Deno.bench("encodeUffdioCopy() into a fresh buffer", { group: "encode uffdio_copy" }, () => {
  encodeUffdioCopy(copy);
});

const scan: PmScanArg = {
  size: BigInt(SIZEOF_PM_SCAN_ARG),
  flags: 0n,
  start: 0x7f00_0000_0000n,
  end: 0x7f00_4000_0000n,
  walkEnd: 0n,
  vec: 0x7f20_0000_0000n,
  vecLen: 1024n,
  maxPages: 0n,
  categoryInverted: 0n,
  categoryMask: 0x8n,
  categoryAnyofMask: 0n,
  returnMask: 0x8n,
};
const scanInto = new Uint8Array(SIZEOF_PM_SCAN_ARG);
const scanWords = new BigUint64Array(SIZEOF_PM_SCAN_ARG / 8);

Deno.bench("BigUint64Array words (ffi/_pagemap_scan.ts)", { group: "encode pm_scan_arg", baseline: true }, () => {
  scanWords[0] = scan.size;
  scanWords[1] = scan.flags;
  scanWords[2] = scan.start;
  scanWords[3] = scan.end;
  scanWords[4] = 0n;
  scanWords[5] = scan.vec;
  scanWords[6] = scan.vecLen;
  scanWords[7] = scan.maxPages;
  scanWords[8] = scan.categoryInverted;
  scanWords[9] = scan.categoryMask;
  scanWords[10] = scan.categoryAnyofMask;
  scanWords[11] = scan.returnMask;
});

Deno.bench("encodePmScanArg() into a preallocated buffer", { group: "encode pm_scan_arg" }, () => {
  encodePmScanArg(scan, scanInto);
});

const BATCH = 64;
const batch = new Uint8Array(BATCH * SIZEOF_UFFD_MSG);
for (let i = 0; i < BATCH; i++) {
  encodeUffdMsg(
    {
      event: UFFD_EVENT_PAGEFAULT,
      flags: UFFD_PAGEFAULT_FLAG_WRITE,
      address: 0x7f00_0000_0000n + BigInt(i) * 4096n,
      ptid: 1000 + i,
    },
    batch.subarray(i * SIZEOF_UFFD_MSG),
  );
}
const batchWords = new BigUint64Array(batch.buffer);
const batchInts = new Uint32Array(batch.buffer);
let sink = 0n;

Deno.bench("typed-array field reads", { group: "decode 64 uffd_msg", baseline: true }, () => {
  for (let i = 0; i < BATCH; i++) {
    if (batch[i * SIZEOF_UFFD_MSG] === UFFD_EVENT_PAGEFAULT) {
      const flags = batchWords[i * 4 + 1]!;
      const address = batchWords[i * 4 + 2]!;
      const ptid = batchInts[i * 8 + 6]!;
      if (ptid === 0) sink ^= flags;
      sink ^= address;
    }
  }
});

Deno.bench("decodeUffdMsg()", { group: "decode 64 uffd_msg" }, () => {
  for (let offset = 0; offset < batch.byteLength; offset += SIZEOF_UFFD_MSG) {
    const msg = decodeUffdMsg(batch, offset);
    if ("address" in msg) sink ^= msg.address;
  }
});
