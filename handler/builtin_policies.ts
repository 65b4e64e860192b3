/**
 * The built-in fault policies, as the handler's Worker runs them: the factories
 * behind `policies.unprotect()`, `zerofill()`, `copyFrom()` and `continue()` (the
 * main side only names them, in `policies.ts`). A policy of your own can wrap one.
 *
 * @example A policy module that counts faults and lets `unprotect` serve them
 * ```ts ignore
 * import { type PolicyContext, unprotectPolicy } from "@uffd/uffd";
 * export default function (_options: unknown, context: PolicyContext) {
 *   const inner = unprotectPolicy({}, context);
 *   let faults = 0;
 *   return { ...inner, fault: (f) => (faults++, inner.fault(f, context)), control: () => faults };
 * }
 * ```
 *
 * @module
 */

import * as libc from "../ffi/_libc.ts";
import { O_CLOEXEC, O_RDONLY } from "../ffi/linux.ts";
import { failure } from "../kernel/errors.ts";
import type { UffdEvent } from "../kernel/userfaultfd.ts";
import type {
  CopySourceSpec,
  Fault,
  FaultPolicy,
  MapPagesOptions,
  PolicyContext,
  UnprotectOptions,
} from "./fault_policy.ts";

function kindOf(fault: Fault): string {
  return fault.minor ? "minor" : fault.wp ? "write-protect" : "missing";
}

function refuse(policy: string, fault: Fault, serves: string): never {
  throw new Error(
    `${policy}: a ${kindOf(fault)} fault at 0x${fault.address.toString(16)}; this policy serves ${serves}`,
  );
}

/**
 * The `unprotect` policy: on a write-protect fault, removes protection from the
 * page — or from the aligned chunk of `chunk` pages around it, clipped to its
 * tracked range — wakes the writer, and records those pages as written. Faults
 * outside the tracked pages are unprotected one page at a time and not recorded.
 *
 * @example
 * ```ts
 * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(64 * Region.pageSize, { populate: true });
 * using uffd = Userfaultfd.open();
 * uffd.register(mem, { wp: true });
 * await using handler = await FaultHandler.start(uffd, policies.unprotect({ chunk: 4 }));
 * uffd.writeProtect(mem);
 * mem.bytes[5 * Region.pageSize] = 1; // the main isolate blocks until the Worker unprotects pages 4–7
 * console.log(handler.collect()); // [{ firstPage: 4, pages: 4 }]
 * ```
 */
export function unprotectPolicy(options: UnprotectOptions, context: PolicyContext): FaultPolicy {
  const chunk = options.chunk ?? 1;
  const removedAsWritten = options.removedAsWritten === true;
  const page = context.pageSize;
  return {
    fault(fault: Fault): void {
      if (!fault.wp) refuse("unprotect", fault, "write-protect faults (register the range with { wp: true })");
      const index = fault.pageIndex;
      if (index < 0) {
        context.unprotect(fault.page, fault.pageSize);
        return;
      }
      // Record first, then unprotect: the writer resumes the moment it is woken, and
      // must find its page recorded (a write still pending after EAGAIN is reported early,
      // never late).
      if (fault.pageSize !== page) {
        // A huge page: unprotected and recorded whole.
        context.markWritten(index, fault.pageSize / page);
        context.unprotect(fault.page, fault.pageSize);
        return;
      }
      if (chunk === 1) {
        context.markWritten(index, 1);
        context.unprotect(fault.page, page);
        return;
      }
      const aligned = index - (index % chunk);
      const first = Math.max(aligned, context.rangeFirstPage(index));
      const end = Math.min(aligned + chunk, context.rangeEndPage(index));
      context.markWritten(first, end - first);
      context.unprotect(context.pageAddress(first), (end - first) * page);
    },
    event(event: UffdEvent): void {
      if (removedAsWritten && event.type === "remove") {
        context.markWrittenAt(Number(event.start), Number(event.end));
      }
    },
  };
}

/**
 * The `zerofill` policy: maps the zero page over each missing page (a write then
 * gets a fresh zeroed page, as if the range had never been registered).
 *
 * @example
 * ```ts
 * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(4 * Region.pageSize);
 * using uffd = Userfaultfd.open();
 * uffd.register(mem, { missing: true });
 * await using handler = await FaultHandler.start(uffd, policies.zerofill());
 * mem.bytes[0] = 9;
 * console.log(mem.bytes[0], handler.stats.missing); // 9 1
 * ```
 */
export function zerofillPolicy(_options: unknown, context: PolicyContext): FaultPolicy {
  return {
    fault(fault: Fault): void {
      if (fault.wp || fault.minor) {
        refuse("zerofill", fault, "missing faults (register the range with { missing: true })");
      }
      context.zeropage(fault.page, fault.pageSize);
    },
  };
}

/**
 * The `copyFrom` policy: fills each missing tracked page with the bytes at the same
 * offset of its source (`UFFDIO_COPY`), zero-filling past the source's end.
 *
 * @example
 * ```ts
 * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(2 * Region.pageSize);
 * using uffd = Userfaultfd.open();
 * uffd.register(mem, { missing: true });
 * const image = new Uint8Array(2 * Region.pageSize).fill(0xab);
 * await using _handler = await FaultHandler.start(uffd, policies.copyFrom(image));
 * console.log(mem.bytes[Region.pageSize + 1]); // 171
 * ```
 */
export function copyPolicy(options: MapPagesOptions & { source: CopySourceSpec }, context: PolicyContext): FaultPolicy {
  const source = options.source;
  const path = source.kind === "file" ? source.path : "";
  let scratch = new Uint8Array(context.pageSize);
  let scratchAddress = Number(libc.addressOf(scratch));
  let base = 0;
  let length = 0;
  let fd = -1;
  if (source.kind === "file") {
    fd = libc.open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw failure("open", fd, { path });
  } else if (source.kind === "bytes") {
    base = Number(libc.addressOf(new Uint8Array(source.buffer))) + source.offset;
    length = source.length;
  } else {
    base = Number(source.address);
    length = source.length;
  }
  const wp = options.wp;
  return {
    fault(fault: Fault): void {
      if (fault.wp || fault.minor) {
        refuse("copyFrom", fault, "missing faults (register the range with { missing: true })");
      }
      const index = fault.pageIndex;
      if (index < 0) refuse("copyFrom", fault, "tracked pages only (a page's offset in the source is its number)");
      const size = fault.pageSize;
      if (scratch.byteLength < size) {
        scratch = new Uint8Array(size);
        scratchAddress = Number(libc.addressOf(scratch));
      }
      const offset = index * context.pageSize;
      if (fd >= 0) {
        const got = libc.pread(fd, scratch, size, BigInt(offset));
        if (got < 0) throw failure("pread", got, { path, offset });
        if (got < size) scratch.fill(0, got, size);
        context.copy(fault.page, scratchAddress, size, wp);
      } else if (offset + size <= length) {
        context.copy(fault.page, base + offset, size, wp);
      } else {
        scratch.fill(0, 0, size);
        if (offset < length) libc.memcpy(BigInt(scratchAddress), BigInt(base + offset), BigInt(length - offset));
        context.copy(fault.page, scratchAddress, size, wp);
      }
    },
    close(): void {
      if (fd >= 0) libc.close(fd);
      fd = -1;
    },
  };
}

/**
 * The `continue` policy: resolves minor faults on shmem or hugetlbfs ranges
 * registered with `{ minor: true }` by mapping the page already in the page cache.
 *
 * @example
 * ```ts
 * import { FaultHandler, policies, Region, Userfaultfd } from "@uffd/uffd";
 * using mem = Region.map(Region.pageSize, { memfd: true });
 * using filler = mem.alias(); // a second mapping of the same memfd, not registered
 * filler.bytes[0] = 42; // the page is now in the page cache
 * using uffd = Userfaultfd.open({ require: ["MINOR_SHMEM"] });
 * uffd.register(mem, { minor: true });
 * await using _handler = await FaultHandler.start(uffd, policies.continue());
 * console.log(mem.bytes[0]); // 42
 * ```
 */
export function continuePolicy(options: MapPagesOptions, context: PolicyContext): FaultPolicy {
  return {
    fault(fault: Fault): void {
      if (!fault.minor) refuse("continue", fault, "minor faults (register a shmem range with { minor: true })");
      context.continue(fault.page, fault.pageSize, options.wp === true);
    },
  };
}
