/**
 * Byte layouts of the kernel's userfaultfd and PAGEMAP_SCAN structs, with a typed
 * encoder and decoder for each. Layouts follow `include/uapi/linux/userfaultfd.h`
 * and `include/uapi/linux/fs.h`; every field is a little-endian `__u64`/`__s64`
 * unless noted (x86_64 and aarch64 Linux are both little-endian). Each size is
 * checked at load time against the size the kernel encodes in the ioctl number.
 *
 * Encoders write into a caller's buffer when given one, so hot paths reuse a
 * preallocated buffer; decoders read at an offset, so a batch of messages is
 * decoded in place.
 *
 * @module
 */

import {
  IOCTLS,
  PAGEMAP_SCAN,
  UFFD_EVENT_FORK,
  UFFD_EVENT_PAGEFAULT,
  UFFD_EVENT_REMAP,
  UFFD_EVENT_REMOVE,
  UFFD_EVENT_UNMAP,
} from "./uapi.ts";

/** `sizeof(struct uffdio_api)` */
export const SIZEOF_UFFDIO_API = 24;
/** `sizeof(struct uffdio_range)` */
export const SIZEOF_UFFDIO_RANGE = 16;
/** `sizeof(struct uffdio_register)` */
export const SIZEOF_UFFDIO_REGISTER = 32;
/** `sizeof(struct uffdio_writeprotect)` */
export const SIZEOF_UFFDIO_WRITEPROTECT = 24;
/** `sizeof(struct uffdio_copy)` */
export const SIZEOF_UFFDIO_COPY = 40;
/** `sizeof(struct uffdio_zeropage)` */
export const SIZEOF_UFFDIO_ZEROPAGE = 32;
/** `sizeof(struct uffdio_continue)` */
export const SIZEOF_UFFDIO_CONTINUE = 32;
/** `sizeof(struct uffdio_poison)` */
export const SIZEOF_UFFDIO_POISON = 32;
/** `sizeof(struct uffdio_move)` */
export const SIZEOF_UFFDIO_MOVE = 40;
/** `sizeof(struct uffd_msg)` (packed) */
export const SIZEOF_UFFD_MSG = 32;
/** `sizeof(struct pm_scan_arg)` */
export const SIZEOF_PM_SCAN_ARG = 96;
/** `sizeof(struct page_region)` */
export const SIZEOF_PAGE_REGION = 24;

/** The argument size `_IOC_SIZE(request)` encoded in bits 16–29 of an ioctl request. */
export function ioctlSize(request: bigint): number {
  return Number((request >> 16n) & 0x3fffn);
}

// Our sizes must be the kernel's: a wrong size is a wrong ioctl number.
for (const { name, request, size } of IOCTLS) {
  if (ioctlSize(request) !== size) throw new Error(`UFFDIO_${name}: struct size ${size} ≠ ioctl size`);
}
if (ioctlSize(PAGEMAP_SCAN) !== SIZEOF_PM_SCAN_ARG) throw new Error("pm_scan_arg size ≠ PAGEMAP_SCAN size");

function view(bytes: Uint8Array, offset: number, size: number, what: string): DataView {
  if (offset < 0 || bytes.byteLength - offset < size) {
    throw new RangeError(`${what} needs ${size} bytes at offset ${offset}; the buffer has ${bytes.byteLength}`);
  }
  return new DataView(bytes.buffer, bytes.byteOffset + offset, size);
}

function target(into: Uint8Array | undefined, size: number, what: string): [Uint8Array, DataView] {
  const bytes = into ?? new Uint8Array(size);
  return [bytes, view(bytes, 0, size, what)];
}

/** `struct uffdio_api`: the API handshake. */
export interface UffdioApi {
  /** `UFFD_API` (0xAA). */
  api: bigint;
  /** Requested features in, supported (or granted) features out. */
  features: bigint;
  /** Out: the ioctls the fd allows, as a bit set of ioctl numbers. */
  ioctls: bigint;
}

/** Encodes a `struct uffdio_api`. */
export function encodeUffdioApi(value: UffdioApi, into?: Uint8Array): Uint8Array {
  const [bytes, v] = target(into, SIZEOF_UFFDIO_API, "uffdio_api");
  v.setBigUint64(0, value.api, true);
  v.setBigUint64(8, value.features, true);
  v.setBigUint64(16, value.ioctls, true);
  return bytes;
}

/** Decodes a `struct uffdio_api`. */
export function decodeUffdioApi(bytes: Uint8Array, offset = 0): UffdioApi {
  const v = view(bytes, offset, SIZEOF_UFFDIO_API, "uffdio_api");
  return { api: v.getBigUint64(0, true), features: v.getBigUint64(8, true), ioctls: v.getBigUint64(16, true) };
}

/** `struct uffdio_range`: a start address and a length in bytes. */
export interface UffdioRange {
  /** Start address, page-aligned. */
  start: bigint;
  /** Length in bytes, a multiple of the page size. */
  len: bigint;
}

/** Encodes a `struct uffdio_range`. */
export function encodeUffdioRange(value: UffdioRange, into?: Uint8Array): Uint8Array {
  const [bytes, v] = target(into, SIZEOF_UFFDIO_RANGE, "uffdio_range");
  v.setBigUint64(0, value.start, true);
  v.setBigUint64(8, value.len, true);
  return bytes;
}

/** Decodes a `struct uffdio_range`. */
export function decodeUffdioRange(bytes: Uint8Array, offset = 0): UffdioRange {
  const v = view(bytes, offset, SIZEOF_UFFDIO_RANGE, "uffdio_range");
  return { start: v.getBigUint64(0, true), len: v.getBigUint64(8, true) };
}

/** `struct uffdio_register`: `range` flattened into `start`/`len`, then `mode` and the `ioctls` out field. */
export interface UffdioRegister extends UffdioRange {
  /** `UFFDIO_REGISTER_MODE_*` bits. */
  mode: bigint;
  /** Out: the ioctls the registered range allows (bit set of ioctl numbers). */
  ioctls: bigint;
}

/** Encodes a `struct uffdio_register`. */
export function encodeUffdioRegister(value: UffdioRegister, into?: Uint8Array): Uint8Array {
  const [bytes, v] = target(into, SIZEOF_UFFDIO_REGISTER, "uffdio_register");
  v.setBigUint64(0, value.start, true);
  v.setBigUint64(8, value.len, true);
  v.setBigUint64(16, value.mode, true);
  v.setBigUint64(24, value.ioctls, true);
  return bytes;
}

/** Decodes a `struct uffdio_register`. */
export function decodeUffdioRegister(bytes: Uint8Array, offset = 0): UffdioRegister {
  const v = view(bytes, offset, SIZEOF_UFFDIO_REGISTER, "uffdio_register");
  return {
    start: v.getBigUint64(0, true),
    len: v.getBigUint64(8, true),
    mode: v.getBigUint64(16, true),
    ioctls: v.getBigUint64(24, true),
  };
}

/** `struct uffdio_writeprotect`: `range` flattened, then `mode`. */
export interface UffdioWriteprotect extends UffdioRange {
  /** `UFFDIO_WRITEPROTECT_MODE_*` bits. */
  mode: bigint;
}

/** Encodes a `struct uffdio_writeprotect`. */
export function encodeUffdioWriteprotect(value: UffdioWriteprotect, into?: Uint8Array): Uint8Array {
  const [bytes, v] = target(into, SIZEOF_UFFDIO_WRITEPROTECT, "uffdio_writeprotect");
  v.setBigUint64(0, value.start, true);
  v.setBigUint64(8, value.len, true);
  v.setBigUint64(16, value.mode, true);
  return bytes;
}

/** Decodes a `struct uffdio_writeprotect`. */
export function decodeUffdioWriteprotect(bytes: Uint8Array, offset = 0): UffdioWriteprotect {
  const v = view(bytes, offset, SIZEOF_UFFDIO_WRITEPROTECT, "uffdio_writeprotect");
  return { start: v.getBigUint64(0, true), len: v.getBigUint64(8, true), mode: v.getBigUint64(16, true) };
}

/** `struct uffdio_copy`: copy `len` bytes from `src` to `dst`; `copy` is bytes done or `-errno` (out). */
export interface UffdioCopy {
  /** Destination address (registered, page-aligned). */
  dst: bigint;
  /** Source address in this process. */
  src: bigint;
  /** Length in bytes. */
  len: bigint;
  /** `UFFDIO_COPY_MODE_*` bits. */
  mode: bigint;
  /** Out (`__s64`): bytes copied, or a negative errno. */
  copy: bigint;
}

/** Encodes a `struct uffdio_copy`. */
export function encodeUffdioCopy(value: UffdioCopy, into?: Uint8Array): Uint8Array {
  const [bytes, v] = target(into, SIZEOF_UFFDIO_COPY, "uffdio_copy");
  v.setBigUint64(0, value.dst, true);
  v.setBigUint64(8, value.src, true);
  v.setBigUint64(16, value.len, true);
  v.setBigUint64(24, value.mode, true);
  v.setBigInt64(32, value.copy, true);
  return bytes;
}

/** Decodes a `struct uffdio_copy`. */
export function decodeUffdioCopy(bytes: Uint8Array, offset = 0): UffdioCopy {
  const v = view(bytes, offset, SIZEOF_UFFDIO_COPY, "uffdio_copy");
  return {
    dst: v.getBigUint64(0, true),
    src: v.getBigUint64(8, true),
    len: v.getBigUint64(16, true),
    mode: v.getBigUint64(24, true),
    copy: v.getBigInt64(32, true),
  };
}

/** `struct uffdio_move`: move `len` bytes of pages from `src` to `dst`; `move` is bytes done or `-errno` (out). */
export interface UffdioMove {
  /** Destination address (registered, page-aligned). */
  dst: bigint;
  /** Source address (page-aligned, anonymous private memory). */
  src: bigint;
  /** Length in bytes. */
  len: bigint;
  /** `UFFDIO_MOVE_MODE_*` bits. */
  mode: bigint;
  /** Out (`__s64`): bytes moved, or a negative errno. */
  move: bigint;
}

/** Encodes a `struct uffdio_move`. */
export function encodeUffdioMove(value: UffdioMove, into?: Uint8Array): Uint8Array {
  const [bytes, v] = target(into, SIZEOF_UFFDIO_MOVE, "uffdio_move");
  v.setBigUint64(0, value.dst, true);
  v.setBigUint64(8, value.src, true);
  v.setBigUint64(16, value.len, true);
  v.setBigUint64(24, value.mode, true);
  v.setBigInt64(32, value.move, true);
  return bytes;
}

/** Decodes a `struct uffdio_move`. */
export function decodeUffdioMove(bytes: Uint8Array, offset = 0): UffdioMove {
  const v = view(bytes, offset, SIZEOF_UFFDIO_MOVE, "uffdio_move");
  return {
    dst: v.getBigUint64(0, true),
    src: v.getBigUint64(8, true),
    len: v.getBigUint64(16, true),
    mode: v.getBigUint64(24, true),
    move: v.getBigInt64(32, true),
  };
}

/**
 * The shape shared by `struct uffdio_zeropage`, `uffdio_continue` and `uffdio_poison`:
 * a range, a mode, and an `__s64` out field (bytes done or `-errno`) at offset 24.
 */
export interface UffdioRangeOp extends UffdioRange {
  /** The ioctl's `*_MODE_*` bits. */
  mode: bigint;
  /** Out (`__s64`): `zeropage`, `mapped` or `updated` — bytes done, or a negative errno. */
  result: bigint;
}

function encodeRangeOp(value: UffdioRangeOp, into: Uint8Array | undefined, what: string): Uint8Array {
  const [bytes, v] = target(into, 32, what);
  v.setBigUint64(0, value.start, true);
  v.setBigUint64(8, value.len, true);
  v.setBigUint64(16, value.mode, true);
  v.setBigInt64(24, value.result, true);
  return bytes;
}

function decodeRangeOp(bytes: Uint8Array, offset: number, what: string): UffdioRangeOp {
  const v = view(bytes, offset, 32, what);
  return {
    start: v.getBigUint64(0, true),
    len: v.getBigUint64(8, true),
    mode: v.getBigUint64(16, true),
    result: v.getBigInt64(24, true),
  };
}

/** Encodes a `struct uffdio_zeropage` (`result` is the `zeropage` field). */
export function encodeUffdioZeropage(value: UffdioRangeOp, into?: Uint8Array): Uint8Array {
  return encodeRangeOp(value, into, "uffdio_zeropage");
}
/** Decodes a `struct uffdio_zeropage` (`result` is the `zeropage` field). */
export function decodeUffdioZeropage(bytes: Uint8Array, offset = 0): UffdioRangeOp {
  return decodeRangeOp(bytes, offset, "uffdio_zeropage");
}
/** Encodes a `struct uffdio_continue` (`result` is the `mapped` field). */
export function encodeUffdioContinue(value: UffdioRangeOp, into?: Uint8Array): Uint8Array {
  return encodeRangeOp(value, into, "uffdio_continue");
}
/** Decodes a `struct uffdio_continue` (`result` is the `mapped` field). */
export function decodeUffdioContinue(bytes: Uint8Array, offset = 0): UffdioRangeOp {
  return decodeRangeOp(bytes, offset, "uffdio_continue");
}
/** Encodes a `struct uffdio_poison` (`result` is the `updated` field). */
export function encodeUffdioPoison(value: UffdioRangeOp, into?: Uint8Array): Uint8Array {
  return encodeRangeOp(value, into, "uffdio_poison");
}
/** Decodes a `struct uffdio_poison` (`result` is the `updated` field). */
export function decodeUffdioPoison(bytes: Uint8Array, offset = 0): UffdioRangeOp {
  return decodeRangeOp(bytes, offset, "uffdio_poison");
}

/** A decoded `struct uffd_msg`: one variant per event, and a raw copy for codes the kernel may add. */
export type UffdMsg =
  | {
    /** `UFFD_EVENT_PAGEFAULT` */
    event: typeof UFFD_EVENT_PAGEFAULT;
    /** `UFFD_PAGEFAULT_FLAG_*` bits. */
    flags: bigint;
    /** The faulting address (page-aligned unless EXACT_ADDRESS). */
    address: bigint;
    /** The faulting thread's id (with THREAD_ID; 0 otherwise). */
    ptid: number;
  }
  | {
    /** `UFFD_EVENT_FORK` */
    event: typeof UFFD_EVENT_FORK;
    /** The child's userfaultfd, already installed in this process. */
    ufd: number;
  }
  | {
    /** `UFFD_EVENT_REMAP` */
    event: typeof UFFD_EVENT_REMAP;
    /** Old start address. */
    from: bigint;
    /** New start address. */
    to: bigint;
    /** Length of the old range. */
    len: bigint;
  }
  | {
    /** `UFFD_EVENT_REMOVE` or `UFFD_EVENT_UNMAP` */
    event: typeof UFFD_EVENT_REMOVE | typeof UFFD_EVENT_UNMAP;
    /** Start address. */
    start: bigint;
    /** End address (exclusive). */
    end: bigint;
  }
  | {
    /** An event code this library does not know. */
    event: number;
    /** The 32 bytes of the message. */
    raw: Uint8Array;
  };

/**
 * Decodes the `uffd_msg` at `offset`. Never throws on content: an unknown event
 * code yields the raw bytes.
 */
export function decodeUffdMsg(bytes: Uint8Array, offset = 0): UffdMsg {
  if (offset < 0 || bytes.byteLength - offset < SIZEOF_UFFD_MSG) view(bytes, offset, SIZEOF_UFFD_MSG, "uffd_msg");
  // One view over the whole buffer, reused while callers decode batch after batch from it:
  // a DataView per message was most of the decoding's cost (bench/structs_bench.ts).
  if (bytes.buffer !== msgBuffer) {
    msgBuffer = bytes.buffer;
    msgView = new DataView(bytes.buffer);
  }
  const v = msgView!;
  const at = bytes.byteOffset + offset;
  const event = v.getUint8(at);
  switch (event) {
    case UFFD_EVENT_PAGEFAULT:
      return {
        event,
        flags: v.getBigUint64(at + 8, true),
        address: v.getBigUint64(at + 16, true),
        ptid: v.getUint32(at + 24, true),
      };
    case UFFD_EVENT_FORK:
      return { event, ufd: v.getUint32(at + 8, true) };
    case UFFD_EVENT_REMAP:
      return {
        event,
        from: v.getBigUint64(at + 8, true),
        to: v.getBigUint64(at + 16, true),
        len: v.getBigUint64(at + 24, true),
      };
    case UFFD_EVENT_REMOVE:
    case UFFD_EVENT_UNMAP:
      return { event, start: v.getBigUint64(at + 8, true), end: v.getBigUint64(at + 16, true) };
    default:
      return { event, raw: bytes.slice(offset, offset + SIZEOF_UFFD_MSG) };
  }
}

/** The buffer the last message was decoded from, and a view over all of it. */
let msgBuffer: ArrayBufferLike | undefined;
let msgView: DataView | undefined;

/** Encodes a `struct uffd_msg` (the kernel writes these; tests and fuzzers build them). */
export function encodeUffdMsg(msg: UffdMsg, into?: Uint8Array): Uint8Array {
  const [bytes, v] = target(into, SIZEOF_UFFD_MSG, "uffd_msg");
  bytes.fill(0, 0, SIZEOF_UFFD_MSG);
  if ("raw" in msg) {
    bytes.set(msg.raw.subarray(0, SIZEOF_UFFD_MSG));
    v.setUint8(0, msg.event);
    return bytes;
  }
  v.setUint8(0, msg.event);
  if ("flags" in msg) {
    v.setBigUint64(8, msg.flags, true);
    v.setBigUint64(16, msg.address, true);
    v.setUint32(24, msg.ptid, true);
  } else if ("ufd" in msg) {
    v.setUint32(8, msg.ufd, true);
  } else if ("from" in msg) {
    v.setBigUint64(8, msg.from, true);
    v.setBigUint64(16, msg.to, true);
    v.setBigUint64(24, msg.len, true);
  } else {
    v.setBigUint64(8, msg.start, true);
    v.setBigUint64(16, msg.end, true);
  }
  return bytes;
}

/** `struct pm_scan_arg`: the argument of the PAGEMAP_SCAN ioctl. */
export interface PmScanArg {
  /** `sizeof(struct pm_scan_arg)` = 96. */
  size: bigint;
  /** `PM_SCAN_*` flags. */
  flags: bigint;
  /** Start address (page-aligned). */
  start: bigint;
  /** End address (exclusive). */
  end: bigint;
  /** Out: where the walk stopped. */
  walkEnd: bigint;
  /** Address of a `page_region` array (0 for none). */
  vec: bigint;
  /** Number of `page_region` entries at `vec`. */
  vecLen: bigint;
  /** Stop after this many matching pages (0: no limit). */
  maxPages: bigint;
  /** Categories whose meaning is inverted before matching. */
  categoryInverted: bigint;
  /** Categories that must all be set. */
  categoryMask: bigint;
  /** Categories of which at least one must be set (0: no condition). */
  categoryAnyofMask: bigint;
  /** Categories reported in each region. */
  returnMask: bigint;
}

const PM_SCAN_FIELDS = [
  "size",
  "flags",
  "start",
  "end",
  "walkEnd",
  "vec",
  "vecLen",
  "maxPages",
  "categoryInverted",
  "categoryMask",
  "categoryAnyofMask",
  "returnMask",
] as const;

/** Encodes a `struct pm_scan_arg`. */
export function encodePmScanArg(value: PmScanArg, into?: Uint8Array): Uint8Array {
  const [bytes, v] = target(into, SIZEOF_PM_SCAN_ARG, "pm_scan_arg");
  PM_SCAN_FIELDS.forEach((field, i) => v.setBigUint64(i * 8, value[field], true));
  return bytes;
}

/** Decodes a `struct pm_scan_arg`. */
export function decodePmScanArg(bytes: Uint8Array, offset = 0): PmScanArg {
  const v = view(bytes, offset, SIZEOF_PM_SCAN_ARG, "pm_scan_arg");
  const out = {} as PmScanArg;
  PM_SCAN_FIELDS.forEach((field, i) => out[field] = v.getBigUint64(i * 8, true));
  return out;
}

/** `struct page_region`: pages `[start, end)` that share `categories`. */
export interface PageRegion {
  /** Start address. */
  start: bigint;
  /** End address (exclusive). */
  end: bigint;
  /** `PAGE_IS_*` bits, masked by the scan's `return_mask`. */
  categories: bigint;
}

/** Encodes a `struct page_region`. */
export function encodePageRegion(value: PageRegion, into?: Uint8Array): Uint8Array {
  const [bytes, v] = target(into, SIZEOF_PAGE_REGION, "page_region");
  v.setBigUint64(0, value.start, true);
  v.setBigUint64(8, value.end, true);
  v.setBigUint64(16, value.categories, true);
  return bytes;
}

/** Decodes a `struct page_region`. */
export function decodePageRegion(bytes: Uint8Array, offset = 0): PageRegion {
  const v = view(bytes, offset, SIZEOF_PAGE_REGION, "page_region");
  return { start: v.getBigUint64(0, true), end: v.getBigUint64(8, true), categories: v.getBigUint64(16, true) };
}
