/**
 * Fetches what the guest needs from Debian's archive with `apt-get download`
 * (nothing is installed) and unpacks it into the cache: a kernel package
 * (`linux-image-…-amd64-unsigned`: its vmlinuz, config, and the few modules the
 * guest loads, decompressed, in load order) and busybox (`busybox-static`).
 *
 * A kernel series ("6.1", "6.12") is resolved through Debian's metapackage for
 * it to the current ABI package; an exact package name may be given instead.
 * Without apt lists (or offline) the newest cached package of the series is
 * used.
 *
 * @module
 */

import { cacheDir, exists, run, sh, shQuote } from "./host.ts";
import { dependsOf, loadOrder, moduleName, readModinfo } from "./modinfo.ts";
import { extractVmlinux } from "./vmlinux.ts";

/** Bump when the unpacked layout changes, so old cache entries are unpacked again. */
const LAYOUT = 2;

/** The modules the guest loads (their dependencies come along); veth and sch_tbf for the migration's netns tests. */
export const GUEST_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay", "veth", "sch_tbf"];

/** The metapackage that names the current package of each series. */
const SERIES: Record<string, { meta: string; prefix: string }> = {
  "6.1": { meta: "linux-image-amd64", prefix: "linux-image-6.1.0-" },
  "6.12": { meta: "linux-image-6.12-amd64", prefix: "linux-image-6.12." },
};

/** The known series names. */
export const KNOWN_SERIES: readonly string[] = Object.keys(SERIES);

/** An unpacked kernel package in the cache. */
export interface Kernel {
  /** Debian package name. */
  package: string;
  /** Debian package version. */
  version: string;
  /** `uname -r` of the kernel. */
  release: string;
  /** The cache folder of this package. */
  dir: string;
  /** `vmlinuz` (bzImage). */
  vmlinuz: string;
  /** The unpacked vmlinux ELF with a PVH entry, when it could be extracted. */
  vmlinux?: string;
  /** The kernel's build config. */
  config: string;
  /** Module file names (in `dir/modules/`), in load order. */
  modules: string[];
}

/** The static busybox binary in the cache. */
export interface Busybox {
  /** Debian package version. */
  version: string;
  /** The binary's path. */
  path: string;
}

type Log = (line: string) => void;

async function aptVersion(pkg: string): Promise<string | undefined> {
  const res = await run("apt-cache", ["show", "--no-all-versions", pkg], { allowFail: true });
  return res.code === 0 ? /^Version: (\S+)/m.exec(res.stdout)?.[1] : undefined;
}

async function resolveOnce(series: string): Promise<{ pkg: string; version: string } | undefined> {
  if (series.startsWith("linux-image-")) {
    const version = await aptVersion(series);
    return version ? { pkg: series, version } : undefined;
  }
  const s = SERIES[series];
  const res = await run("apt-cache", ["depends", s.meta], { allowFail: true });
  const dep = /Depends: (linux-image-\S+)/.exec(res.stdout)?.[1];
  if (!dep?.startsWith(s.prefix)) return undefined;
  const pkg = `${dep}-unsigned`;
  const version = await aptVersion(pkg);
  return version ? { pkg, version } : undefined;
}

async function cachedKernels(root: string): Promise<Kernel[]> {
  const out: Kernel[] = [];
  try {
    for await (const e of Deno.readDir(`${root}/kernels`)) {
      try {
        const k = JSON.parse(await Deno.readTextFile(`${root}/kernels/${e.name}/info.json`));
        if (k.layout === LAYOUT) out.push(k.kernel);
      } catch { /* incomplete */ }
    }
  } catch { /* none */ }
  return out;
}

function matchesSeries(pkg: string, series: string): boolean {
  return series.startsWith("linux-image-") ? pkg === series : pkg.startsWith(SERIES[series].prefix);
}

/** Downloads `pkg` into a fresh folder under `root/tmp`; returns the .deb path. */
async function download(root: string, pkg: string, log: Log): Promise<{ deb: string; tmp: string }> {
  await Deno.mkdir(`${root}/tmp`, { recursive: true });
  const tmp = await Deno.makeTempDir({ dir: `${root}/tmp`, prefix: "fetch-" });
  log(`apt-get download ${pkg}`);
  await run("apt-get", ["download", pkg], { cwd: tmp });
  for await (const e of Deno.readDir(tmp)) if (e.name.endsWith(".deb")) return { deb: `${tmp}/${e.name}`, tmp };
  throw new Error(`apt-get download ${pkg}: no .deb`);
}

/**
 * The kernel of `series` ("6.1", "6.12" or a `linux-image-…` package name),
 * downloaded and unpacked into the cache if it is not there yet.
 */
export async function fetchKernel(series: string, log: Log): Promise<Kernel> {
  if (!series.startsWith("linux-image-") && !SERIES[series]) {
    throw new Error(`unknown kernel ${series}: use ${KNOWN_SERIES.join(", ")} or a linux-image-… package name`);
  }
  const root = await cacheDir();
  let want = await resolveOnce(series);
  if (!want && Deno.uid() === 0) {
    log("apt-cache does not know the kernel package: apt-get update");
    await run("apt-get", ["update"], { allowFail: true });
    want = await resolveOnce(series);
  }
  const cached = (await cachedKernels(root)).filter((k) => matchesSeries(k.package, series));
  if (!want) {
    const newest = cached.sort((a, b) => a.version < b.version ? 1 : -1)[0];
    if (newest) {
      log(`apt cannot resolve kernel ${series}; using the cached ${newest.package} ${newest.version}`);
      return newest;
    }
    throw new Error(`cannot resolve kernel ${series} with apt-cache (run apt-get update?)`);
  }
  const hit = cached.find((k) => k.package === want.pkg && k.version === want.version);
  if (hit) return hit;
  return await unpackKernel(root, want.pkg, want.version, log);
}

async function unpackKernel(root: string, pkg: string, version: string, log: Log): Promise<Kernel> {
  const dir = `${root}/kernels/${pkg}_${version}`;
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  const { deb, tmp } = await download(root, pkg, log);
  try {
    log(`unpacking ${deb.replace(/^.*\//, "")}`);
    const x = `${tmp}/x`;
    await Deno.mkdir(x);
    await sh(`dpkg-deb --fsys-tarfile ${shQuote(deb)} | tar -x -C ${shQuote(x)} ./boot ./lib/modules`);
    const releases = [];
    for await (const e of Deno.readDir(`${x}/lib/modules`)) releases.push(e.name);
    if (releases.length !== 1) throw new Error(`${pkg}: expected one lib/modules/<release>, got ${releases}`);
    const release = releases[0];
    const modRoot = `${x}/lib/modules/${release}`;

    // Module files by name, and the built-in ones.
    const files = new Map<string, string>();
    const walk = async (d: string) => {
      for await (const e of Deno.readDir(d)) {
        if (e.isDirectory) await walk(`${d}/${e.name}`);
        else if (/\.ko(\.xz|\.zst)?$/.test(e.name)) files.set(moduleName(e.name), `${d}/${e.name}`);
      }
    };
    await walk(`${modRoot}/kernel`);
    const builtin = new Set(
      (await Deno.readTextFile(`${modRoot}/modules.builtin`).catch(() => "")).split("\n").filter((l) => l)
        .map(moduleName),
    );
    const plain = new Map<string, Uint8Array>();
    const read = async (name: string) => {
      const f = files.get(name);
      if (!f) return undefined;
      if (!plain.has(name)) {
        const data = f.endsWith(".xz")
          ? (await new Deno.Command("xz", { args: ["-dc", f], stdout: "piped" }).output()).stdout
          : f.endsWith(".zst")
          ? (await new Deno.Command("zstd", { args: ["-dcq", f], stdout: "piped" }).output()).stdout
          : await Deno.readFile(f);
        plain.set(name, data);
      }
      return plain.get(name);
    };
    const deps = new Map<string, string[] | undefined>();
    const pending = [...GUEST_MODULES];
    while (pending.length) {
      const name = moduleName(pending.pop()!);
      if (deps.has(name)) continue;
      const data = await read(name);
      const d = data ? dependsOf(readModinfo(data)) : undefined;
      deps.set(name, d);
      pending.push(...(d ?? []));
    }
    const order = loadOrder(GUEST_MODULES, (n) => deps.get(n), (n) => builtin.has(n));

    await Deno.mkdir(`${dir}/modules`, { recursive: true });
    const modules = [];
    for (const name of order) {
      await Deno.writeFile(`${dir}/modules/${name}.ko`, plain.get(name)!);
      modules.push(`${name}.ko`);
    }
    await Deno.copyFile(`${x}/boot/vmlinuz-${release}`, `${dir}/vmlinuz`);
    await Deno.copyFile(`${x}/boot/config-${release}`, `${dir}/config`);
    const kernel: Kernel = {
      package: pkg,
      version,
      release,
      dir,
      vmlinuz: `${dir}/vmlinuz`,
      config: `${dir}/config`,
      modules,
    };
    const vm = await extractVmlinux(await Deno.readFile(kernel.vmlinuz));
    if (vm.elf) {
      await Deno.writeFile(`${dir}/vmlinux`, vm.elf);
      kernel.vmlinux = `${dir}/vmlinux`;
    } else {
      log(`no vmlinux from ${pkg} (${vm.why}): booting vmlinuz`);
    }
    log(
      `${pkg} ${version}: release ${release}, modules ${order.join(" ")}` +
        ` (built in: ${[...deps.keys()].filter((n) => !files.has(n)).join(" ") || "none"})`,
    );
    await Deno.writeTextFile(`${dir}/info.json`, JSON.stringify({ layout: LAYOUT, kernel }, null, 2) + "\n");
    return kernel;
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

/** The static busybox, downloaded and unpacked into the cache if needed. */
export async function fetchBusybox(log: Log): Promise<Busybox> {
  const root = await cacheDir();
  const version = await aptVersion("busybox-static");
  const base = `${root}/busybox`;
  if (version && await exists(`${base}/${version}/busybox`)) return { version, path: `${base}/${version}/busybox` };
  if (!version) {
    try {
      for await (const e of Deno.readDir(base)) {
        if (await exists(`${base}/${e.name}/busybox`)) return { version: e.name, path: `${base}/${e.name}/busybox` };
      }
    } catch { /* none cached */ }
    throw new Error("cannot resolve busybox-static with apt-cache (run apt-get update?)");
  }
  const { deb, tmp } = await download(root, "busybox-static", log);
  try {
    await sh(`dpkg-deb --fsys-tarfile ${shQuote(deb)} | tar -x -C ${shQuote(tmp)} ./bin/busybox`);
    await Deno.mkdir(`${base}/${version}`, { recursive: true });
    await Deno.copyFile(`${tmp}/bin/busybox`, `${base}/${version}/busybox.tmp`);
    await Deno.rename(`${base}/${version}/busybox.tmp`, `${base}/${version}/busybox`);
    return { version, path: `${base}/${version}/busybox` };
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}
