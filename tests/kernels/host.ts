/**
 * Host-side helpers of the kernel runner: running host tools, the cache folder
 * (outside the checkout: `$UFFD_KERNEL_CACHE`, else `$XDG_CACHE_HOME/uffd-kernels`,
 * else `~/.cache/uffd-kernels`) and the check for the host tools it needs.
 *
 * @module
 */

/** The output of a finished host command. */
export interface RunResult {
  /** Exit code. */
  code: number;
  /** Standard output as text. */
  stdout: string;
  /** Standard error as text. */
  stderr: string;
}

/** Runs `cmd args…` to completion; throws when it exits non-zero unless `allowFail`. */
export async function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; allowFail?: boolean; env?: Record<string, string> } = {},
): Promise<RunResult> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, cwd: opts.cwd, env: opts.env, stdin: "null" }).output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${cmd}: not found on PATH`);
    throw e;
  }
  const res = {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
  if (res.code !== 0 && !opts.allowFail) {
    throw new Error(`${cmd} ${args.join(" ")} exited ${res.code}: ${res.stderr.trim() || res.stdout.trim()}`);
  }
  return res;
}

/** Runs a shell pipeline with `sh -c` (for `dpkg-deb … | tar …`); throws on failure. */
export async function sh(script: string, cwd?: string): Promise<RunResult> {
  return await run("sh", ["-c", `set -e; ${script}`], { cwd });
}

/** Quotes `s` for a POSIX shell. */
export function shQuote(s: string): string {
  return `'${s.replaceAll("'", `'"'"'`)}'`;
}

/** The cache folder, created if missing. */
export async function cacheDir(): Promise<string> {
  const env = Deno.env.get("UFFD_KERNEL_CACHE");
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const home = Deno.env.get("HOME") ?? "/root";
  const dir = env ?? `${xdg ?? `${home}/.cache`}/uffd-kernels`;
  await Deno.mkdir(dir, { recursive: true });
  return dir;
}

/** True when `path` exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Whether `name` is an executable on PATH. */
export async function onPath(name: string): Promise<boolean> {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir) continue;
    try {
      const st = await Deno.stat(`${dir}/${name}`);
      if (st.isFile && ((st.mode ?? 0) & 0o111)) return true;
    } catch { /* not here */ }
  }
  return false;
}

/** The host tools the runner uses, with the Debian package that has each. */
const TOOLS: Record<string, string> = {
  "qemu-system-x86_64": "qemu-system-x86",
  "apt-get": "apt",
  "apt-cache": "apt",
  "dpkg-deb": "dpkg",
  tar: "tar",
  xz: "xz-utils",
  zstd: "zstd",
};

/**
 * Checks the host tools; with `install` and root, installs the missing ones with
 * `apt-get install --no-install-recommends` (they are all Debian packages).
 */
export async function ensureTools(install: boolean, log: (line: string) => void): Promise<void> {
  const missing: string[] = [];
  for (const [tool, pkg] of Object.entries(TOOLS)) {
    if (!(await onPath(tool)) && !missing.includes(pkg)) missing.push(pkg);
  }
  if (missing.length === 0) return;
  if (!install || Deno.uid() !== 0) {
    throw new Error(`missing host packages: ${missing.join(" ")} (apt-get install -y ${missing.join(" ")})`);
  }
  log(`installing ${missing.join(" ")} with apt-get`);
  const res = await run("apt-get", ["install", "-y", "--no-install-recommends", ...missing], {
    allowFail: true,
    env: { DEBIAN_FRONTEND: "noninteractive" },
  });
  if (res.code !== 0) {
    await run("apt-get", ["update"], { allowFail: true });
    await run("apt-get", ["install", "-y", "--no-install-recommends", ...missing], {
      env: { DEBIAN_FRONTEND: "noninteractive" },
    });
  }
}

/** A short hex digest of `parts` (cache keys). */
export async function digest(...parts: (string | Uint8Array)[]): Promise<string> {
  const enc = new TextEncoder();
  const chunks = parts.map((p) => typeof p === "string" ? enc.encode(p) : p);
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length + 1, 0));
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length + 1;
  }
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(hash.slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}
