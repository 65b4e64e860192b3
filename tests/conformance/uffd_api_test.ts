/**
 * Mirrors `test_uffd_api()` of tools/testing/selftests/mm/uffd-unit-tests.c
 * ("UFFDIO_API (with syscall)" and "UFFDIO_API (with /dev/userfaultfd)") and the
 * ways uffd-common.c creates a userfaultfd (`uffd_open_sys`, `uffd_open_dev`,
 * `uffd_get_features` through `UFFD_USER_MODE_ONLY`).
 *
 * The library always sends `api = UFFD_API` and names features instead of bits,
 * so a wrong api version and an unknown feature bit cannot be expressed through
 * it: those two steps drop to `ffi/` on a raw fd, and the API's own refusal of an
 * unknown feature name is tested beside them.
 */

import assert from "node:assert/strict";
import { type Feature, Userfaultfd } from "../../mod.ts";
import * as libc from "../../ffi/_libc.ts";
import { encodeUffdioApi } from "../../ffi/_structs.ts";
import { sysUserfaultfd } from "../../ffi/_syscalls.ts";
import { uffdioApi, userfaultfdIocNew } from "../../ffi/_uffd_ioctls.ts";
import { O_CLOEXEC, O_NONBLOCK, O_RDWR, UFFD_USER_MODE_ONLY, UFFDIO_API } from "../../mod.ts";
import { isRoot, skipUnless } from "../helpers.ts";
import { assertUffdError } from "./helpers.ts";

const EINVAL = 22;

/** A raw userfaultfd, the way uffd-common.c opens one. */
function rawFd(via: "syscall" | "device", flags = O_CLOEXEC | O_NONBLOCK): number {
  if (via === "syscall") return libc.userfaultfd(sysUserfaultfd(), flags);
  const dev = libc.open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) return dev;
  const fd = userfaultfdIocNew(dev, flags);
  libc.close(dev);
  return fd;
}

for (const via of ["syscall", "device"] as const) {
  const label = via === "syscall" ? "syscall" : "/dev/userfaultfd";
  Deno.test({
    name: `uffd-unit-tests.c UFFDIO_API (with ${label}): wrong api, unknown bit, handshake, second handshake`,
    ignore: skipUnless(isRoot, "a full userfaultfd by syscall or /dev/userfaultfd needs root here"),
    fn() {
      const fd = rawFd(via);
      assert.ok(fd >= 0, `opening a userfaultfd via ${label}: errno ${-fd}`);
      try {
        // A wrong api version is refused (ffi: the library always sends UFFD_API).
        const wrongApi = encodeUffdioApi({ api: 0xabn, features: 0n, ioctls: 0n });
        assert.equal(libc.ioctl(fd, UFFDIO_API, wrongApi), -EINVAL);
        // An unknown feature bit is refused, and the fd stays uninitialised.
        assert.equal(uffdioApi(fd, 1n << 63n).rc, -EINVAL);
        // The normal handshake then succeeds…
        const { rc, api } = uffdioApi(fd, 0n);
        assert.equal(rc, 0);
        assert.equal(api.api, 0xaan);
        assert.equal(api.features, Userfaultfd.supported().featureMask);
        // …and a second one on the same fd is refused.
        assert.equal(uffdioApi(fd, 1n).rc, -EINVAL);
      } finally {
        libc.close(fd);
      }
      // Through the API: the same way of creating it, and an unknown feature name refused before any syscall.
      using uffd = Userfaultfd.open({ via, userModeOnly: false });
      assert.equal(uffd.origin, via);
      const e = assertUffdError(
        () => Userfaultfd.open({ via, features: ["BIT_63" as Feature] }),
        "EINVAL",
        /unknown feature "BIT_63"/,
      );
      assert.equal(e.beforeSyscall, true);
    },
  });
}

Deno.test("uffd-common.c uffd_get_features: a user-mode-only userfaultfd reports the same features", () => {
  const fd = rawFd("syscall", O_CLOEXEC | UFFD_USER_MODE_ONLY);
  assert.ok(fd >= 0);
  try {
    assert.equal(uffdioApi(fd, 0n).api.features, Userfaultfd.supported().featureMask);
  } finally {
    libc.close(fd);
  }
  using uffd = Userfaultfd.open({ userModeOnly: true });
  assert.equal(uffd.origin, "user-mode-only");
});

Deno.test({
  name: "uffd-common.c uffd_open: the syscall first, /dev/userfaultfd when the syscall is refused",
  ignore: skipUnless(isRoot, "needs root (the unprivileged fallback is tested in tests/unprivileged_test.ts)"),
  fn() {
    // As root the syscall works, so "auto" uses it; the device is the second way and gives an equivalent fd.
    using auto = Userfaultfd.open();
    assert.equal(auto.origin, "syscall");
    // A feature this kernel has, asked through the device: granted the same way.
    const feature = Userfaultfd.supported().features.has("WP_ASYNC") ? "WP_ASYNC" : "PAGEFAULT_FLAG_WP";
    using device = Userfaultfd.open({ via: "device", features: [feature] });
    assert.equal(device.origin, "device");
    assert.deepEqual([...device.features], [feature]);
    assert.deepEqual([...device.ioctls].sort(), [...auto.ioctls].sort());
  },
});
