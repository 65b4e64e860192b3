/**
 * Linux constants outside userfaultfd that the library and its users pass
 * around: `open`, `mmap`, `mprotect`, `madvise`, `mremap`, `memfd_create`,
 * `eventfd` and `poll` flags. Names are the kernel's; the values are the same on
 * x86_64 and aarch64 (asm-generic).
 *
 * @example
 * ```ts
 * import { MADV_DONTNEED, PROT_READ, Region } from "@uffd/uffd";
 * using mem = Region.map(4 * Region.pageSize);
 * mem.protect(PROT_READ);
 * mem.advise(MADV_DONTNEED);
 * ```
 *
 * @module
 */

/** `O_RDONLY` */
export const O_RDONLY = 0;
/** `O_WRONLY` */
export const O_WRONLY = 1;
/** `O_RDWR` */
export const O_RDWR = 2;
/** `O_NONBLOCK` (also `UFFD_NONBLOCK`, `EFD_NONBLOCK`) */
export const O_NONBLOCK = 0o4000;
/** `O_CLOEXEC` (also `UFFD_CLOEXEC`, `EFD_CLOEXEC`) */
export const O_CLOEXEC = 0o2000000;

/** `PROT_NONE` */
export const PROT_NONE = 0;
/** `PROT_READ` */
export const PROT_READ = 1;
/** `PROT_WRITE` */
export const PROT_WRITE = 2;
/** `PROT_EXEC` */
export const PROT_EXEC = 4;

/** `MAP_SHARED` */
export const MAP_SHARED = 0x01;
/** `MAP_PRIVATE` */
export const MAP_PRIVATE = 0x02;
/** `MAP_FIXED` */
export const MAP_FIXED = 0x10;
/** `MAP_ANONYMOUS` */
export const MAP_ANONYMOUS = 0x20;
/** `MAP_NORESERVE` */
export const MAP_NORESERVE = 0x4000;
/** `MAP_POPULATE` */
export const MAP_POPULATE = 0x8000;
/** `MAP_HUGETLB` */
export const MAP_HUGETLB = 0x40000;
/** `MAP_FIXED_NOREPLACE` */
export const MAP_FIXED_NOREPLACE = 0x100000;
/** `(void *) -1`, what `mmap` and `mremap` return on failure, as an address. */
export const MAP_FAILED_ADDRESS = 0xffff_ffff_ffff_ffffn;

/** `MADV_NORMAL` */
export const MADV_NORMAL = 0;
/** `MADV_RANDOM` */
export const MADV_RANDOM = 1;
/** `MADV_SEQUENTIAL` */
export const MADV_SEQUENTIAL = 2;
/** `MADV_WILLNEED` */
export const MADV_WILLNEED = 3;
/** `MADV_DONTNEED`: zap the pages; anonymous memory reads back as zeros. */
export const MADV_DONTNEED = 4;
/** `MADV_FREE` */
export const MADV_FREE = 8;
/** `MADV_REMOVE`: free the backing store of shared memory. */
export const MADV_REMOVE = 9;
/** `MADV_DONTNEED_LOCKED` (Linux 5.18): `MADV_DONTNEED` that also drops locked pages. */
export const MADV_DONTNEED_LOCKED = 24;
/** `MADV_DONTFORK` */
export const MADV_DONTFORK = 10;
/** `MADV_DOFORK` */
export const MADV_DOFORK = 11;
/** `MADV_HUGEPAGE` */
export const MADV_HUGEPAGE = 14;
/** `MADV_NOHUGEPAGE` */
export const MADV_NOHUGEPAGE = 15;
/** `MADV_COLD` */
export const MADV_COLD = 20;
/** `MADV_PAGEOUT` */
export const MADV_PAGEOUT = 21;
/** `MADV_POPULATE_READ`: fault pages in as if read (Linux 5.14). */
export const MADV_POPULATE_READ = 22;
/** `MADV_POPULATE_WRITE`: fault pages in as if written (Linux 5.14). */
export const MADV_POPULATE_WRITE = 23;
/** `MADV_GUARD_INSTALL` (Linux 6.13) */
export const MADV_GUARD_INSTALL = 102;
/** `MADV_GUARD_REMOVE` (Linux 6.13) */
export const MADV_GUARD_REMOVE = 103;

/** `MREMAP_MAYMOVE` */
export const MREMAP_MAYMOVE = 1;
/** `MREMAP_FIXED` */
export const MREMAP_FIXED = 2;
/** `MREMAP_DONTUNMAP` */
export const MREMAP_DONTUNMAP = 4;

/** `MS_ASYNC` (`msync`) */
export const MS_ASYNC = 1;
/** `MS_INVALIDATE` (`msync`) */
export const MS_INVALIDATE = 2;
/** `MS_SYNC` (`msync`) */
export const MS_SYNC = 4;

/** `MFD_CLOEXEC` */
export const MFD_CLOEXEC = 1;
/** `MFD_HUGETLB` */
export const MFD_HUGETLB = 4;

/** `EFD_CLOEXEC` */
export const EFD_CLOEXEC: number = O_CLOEXEC;
/** `EFD_NONBLOCK` */
export const EFD_NONBLOCK: number = O_NONBLOCK;

/** `POLLIN` */
export const POLLIN = 0x1;
/** `POLLERR` */
export const POLLERR = 0x8;
/** `POLLHUP` */
export const POLLHUP = 0x10;
/** `POLLNVAL` */
export const POLLNVAL = 0x20;
/** `POLLOUT` */
export const POLLOUT = 0x4;

// TCP sockets (the live migration's connections).
/** `AF_INET` */
export const AF_INET = 2;
/** `AF_INET6` */
export const AF_INET6 = 10;
/** `SOCK_STREAM` */
export const SOCK_STREAM = 1;
/** `SOCK_NONBLOCK` (a flag of `socket`'s and `accept4`'s type) */
export const SOCK_NONBLOCK: number = O_NONBLOCK;
/** `SOCK_CLOEXEC` (a flag of `socket`'s and `accept4`'s type) */
export const SOCK_CLOEXEC: number = O_CLOEXEC;
/** `SOL_SOCKET` */
export const SOL_SOCKET = 1;
/** `SO_REUSEADDR` */
export const SO_REUSEADDR = 2;
/** `SO_ERROR` */
export const SO_ERROR = 4;
/** `SO_SNDBUF` */
export const SO_SNDBUF = 7;
/** `SO_RCVBUF` */
export const SO_RCVBUF = 8;
/** `SO_KEEPALIVE` */
export const SO_KEEPALIVE = 9;
/** `IPPROTO_TCP` */
export const IPPROTO_TCP = 6;
/** `TCP_NODELAY` */
export const TCP_NODELAY = 1;
/** `MSG_DONTWAIT` */
export const MSG_DONTWAIT = 0x40;
/** `MSG_WAITALL` */
export const MSG_WAITALL = 0x100;
/** `MSG_NOSIGNAL`: a write to a connection the peer closed fails with `EPIPE` instead of raising `SIGPIPE`. */
export const MSG_NOSIGNAL = 0x4000;
/** `SHUT_RD` */
export const SHUT_RD = 0;
/** `SHUT_WR` */
export const SHUT_WR = 1;
/** `SHUT_RDWR` */
export const SHUT_RDWR = 2;
/** `F_GETFL` (`fcntl`) */
export const F_GETFL = 3;
/** `F_SETFL` (`fcntl`) */
export const F_SETFL = 4;
