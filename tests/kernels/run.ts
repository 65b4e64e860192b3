/**
 * The kernel runner: boots real Debian kernels (6.1, 6.12) under QEMU with TCG
 * and runs the project's Deno test files inside, one boot per kernel with a
 * per-file watchdog (see `tests/kernels/README.md`).
 *
 * ```sh
 * deno run -A tests/kernels/run.ts                          # every tests/**\/*_test.ts on 6.1
 * deno run -A tests/kernels/run.ts --kernel 6.12 tests/structs_test.ts
 * deno run -A tests/kernels/run.ts --kernel all --timeout-per-file 120 --json tests/semantics_test.ts
 * deno run -A tests/kernels/run.ts --cmd 'uname -r; deno --version'
 * deno run -A tests/kernels/run.ts tests/pagemap_test.ts -- --filter scan   # after --: deno test flags
 * ```
 *
 * Ends with the line `N passed, N failed` (a crashed, hung or never-run file
 * counts as at least one failure). Exit codes: 0 all passed; 1 a failure; 2 bad
 * usage; 3 the runner itself could not fetch, build or boot.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { DEFAULT_CPU, startGuest } from "./boot.ts";
import { type Busybox, fetchBusybox, fetchKernel, type Kernel, KNOWN_SERIES } from "./fetch.ts";
import { cacheDir, ensureTools } from "./host.ts";
import { baseInitramfs, withPlan } from "./initramfs.ts";
import { type PlanItem, type PlanOptions, planScript } from "./plan.ts";
import { type FileResult, notRun, ResultCollector } from "./results.ts";

const REPO = decodeURIComponent(new URL("../..", import.meta.url).pathname).replace(/\/$/, "");

const USAGE = `usage: deno run -A tests/kernels/run.ts [options] [files or folders…] [-- deno test flags…]
  --kernel K            6.1 (default), 6.12, all, or a linux-image-…-unsigned package; comma list allowed
  --timeout-per-file S  watchdog per file, seconds (default 600): then kernel stacks are dumped and it is killed
  --thp MODE            always|madvise|never: THP mode set in the guest first (default: the kernel's own)
  --cmd 'SHELL'         run a shell command in the guest (repeatable; from the repo root; runs before files)
  --isolate             one boot per file instead of one boot per kernel
  --json                JSON summary on stdout (the console stream goes to stderr)
  --memory SIZE         guest memory (default 4G)      --smp N     vCPUs (default 2)
  --cpu MODEL           QEMU -cpu (default ${DEFAULT_CPU})
  --no-pvh              boot vmlinuz instead of the unpacked vmlinux
  --fresh-deno-dir      DENO_DIR on a guest tmpfs instead of the host's (seen copy-on-write)
  --append ARGS         extra kernel command line
  --no-install          do not apt-get install missing host tools (qemu-system-x86, zstd, xz-utils)
  -h, --help`;

/** One kernel's run. */
interface KernelRun {
  series: string;
  package?: string;
  version?: string;
  release?: string;
  thp?: string;
  boots: { seconds?: number; exit?: number; note?: string }[];
  results: FileResult[];
  error?: string;
}

function fail(msg: string, code: number): never {
  console.error(`kernels: ${msg}`);
  Deno.exit(code);
}

async function testFiles(args: string[]): Promise<string[]> {
  const out: string[] = [];
  const walk = async (abs: string) => {
    const entries = [];
    for await (const e of Deno.readDir(abs)) entries.push(e);
    entries.sort((a, b) => a.name < b.name ? -1 : 1);
    for (const e of entries) {
      const p = `${abs}/${e.name}`;
      if (e.isDirectory && p !== `${REPO}/tests/kernels` && e.name !== "node_modules") await walk(p);
      else if (e.isFile && /_test\.(ts|js|mjs|tsx)$/.test(e.name)) out.push(p);
    }
  };
  for (const a of args.length ? args : [`${REPO}/tests`]) {
    // Relative to the working directory, else to the repo root.
    let abs = a.startsWith("/") ? a : `${Deno.cwd()}/${a}`;
    let st = await Deno.stat(abs).catch(() => undefined);
    if (!st && !a.startsWith("/")) st = await Deno.stat(abs = `${REPO}/${a}`).catch(() => undefined);
    if (!st) fail(`no such file: ${a}`, 2);
    if (st.isDirectory) await walk(abs.replace(/\/+$/, ""));
    else out.push(abs);
  }
  return out.map((p) => {
    const norm = p.replace(/\/\.\//g, "/");
    if (!norm.startsWith(`${REPO}/`)) fail(`${p} is outside the repo ${REPO}`, 2);
    return norm.slice(REPO.length + 1);
  });
}

async function hostDenoDir(deno: string): Promise<string | undefined> {
  try {
    const out = await new Deno.Command(deno, { args: ["info", "--json"], stdout: "piped", stderr: "null" }).output();
    return JSON.parse(new TextDecoder().decode(out.stdout)).denoDir;
  } catch {
    return undefined;
  }
}

/** The tasks in a watchdog dump worth a look: not parked in the usual idle waits. */
function stuckTasks(dump: string[]): string[] {
  const idle =
    /wchan=(futex_wait_queue|futex_wait|do_epoll_wait|ep_poll|hrtimer_nanosleep|do_nanosleep|do_sys_poll|do_select|pipe_read|unix_stream_read_generic|0)?$/;
  const out: string[] = [];
  for (let i = 0; i < dump.length && out.length < 30; i++) {
    const l = dump[i];
    if (/^pid /.test(l)) out.push(l);
    else if (/^ {2}tid /.test(l) && !idle.test(l)) {
      out.push(l);
      for (let j = i + 1, n = 0; j < dump.length && /^ {4}/.test(dump[j]) && n < 8; j++, n++) out.push(dump[j]);
    }
  }
  return out;
}

async function main(): Promise<number> {
  const dashdash = Deno.args.indexOf("--");
  const ours = dashdash < 0 ? Deno.args : Deno.args.slice(0, dashdash);
  const denoArgs = dashdash < 0 ? [] : Deno.args.slice(dashdash + 1);
  let parsed;
  try {
    parsed = parseArgs({
      args: ours,
      allowPositionals: true,
      options: {
        kernel: { type: "string", default: "6.1" },
        "timeout-per-file": { type: "string", default: "600" },
        thp: { type: "string" },
        cmd: { type: "string", multiple: true, default: [] },
        isolate: { type: "boolean", default: false },
        json: { type: "boolean", default: false },
        memory: { type: "string", default: "4G" },
        smp: { type: "string", default: "2" },
        cpu: { type: "string", default: DEFAULT_CPU },
        "no-pvh": { type: "boolean", default: false },
        "fresh-deno-dir": { type: "boolean", default: false },
        append: { type: "string" },
        "no-install": { type: "boolean", default: false },
        deno: { type: "string", default: Deno.execPath() },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (e) {
    fail(`${e instanceof Error ? e.message : e}\n${USAGE}`, 2);
  }
  const o = parsed.values;
  if (o.help) {
    console.log(USAGE);
    return 0;
  }
  const timeout = Number(o["timeout-per-file"]);
  if (!(timeout > 0)) fail(`--timeout-per-file must be a positive number`, 2);
  if (o.thp !== undefined && !["always", "madvise", "never"].includes(o.thp)) fail(`--thp: always|madvise|never`, 2);
  const series = o.kernel.split(",").flatMap((k) => k === "all" ? KNOWN_SERIES : [k.trim()]).filter((k) => k);
  for (const s of series) {
    if (!KNOWN_SERIES.includes(s) && !s.startsWith("linux-image-")) fail(`unknown --kernel ${s}\n${USAGE}`, 2);
  }
  const files = o.cmd.length && parsed.positionals.length === 0 ? [] : await testFiles(parsed.positionals);
  const items: PlanItem[] = [
    ...o.cmd.map((c) => ({ kind: "cmd" as const, label: c, timeout })),
    ...files.map((f) => ({ kind: "test" as const, label: f, timeout })),
  ];

  // Where the human-readable stream goes: stdout, or stderr when stdout is JSON.
  const out = o.json ? Deno.stderr : Deno.stdout;
  const enc = new TextEncoder();
  const logDir = `${await cacheDir()}/logs`;
  await Deno.mkdir(logDir, { recursive: true });
  const logPath = `${logDir}/run-${new Date().toISOString().replace(/[:.]/g, "-")}.log`;
  const logFile = await Deno.open(logPath, { write: true, create: true, truncate: true });
  const write = (text: string) => {
    out.writeSync(enc.encode(text));
    logFile.writeSync(enc.encode(text));
  };
  const say = (line: string) => write(`[kernels] ${line}\n`);

  say(`repo ${REPO}; ${items.length} item(s); kernels ${series.join(", ")}; log ${logPath}`);
  let busybox: Busybox;
  try {
    await ensureTools(!o["no-install"], say);
    busybox = await fetchBusybox(say);
  } catch (e) {
    say(`cannot prepare: ${e instanceof Error ? e.message : e}`);
    return 3;
  }
  const denoDir = o["fresh-deno-dir"] ? "/tmp/deno-dir" : await hostDenoDir(o.deno);
  const planOpts: PlanOptions = { repo: REPO, deno: o.deno, denoArgs, thp: o.thp, denoDir };
  const tmp = await Deno.makeTempDir({ prefix: "uffd-kernels-" });

  const runs: KernelRun[] = [];
  let infraError = false;
  for (const s of series) {
    const kr: KernelRun = { series: s, boots: [], results: [] };
    runs.push(kr);
    let kernel: Kernel;
    let base: string;
    try {
      kernel = await fetchKernel(s, say);
      base = await baseInitramfs(kernel, busybox);
    } catch (e) {
      kr.error = e instanceof Error ? e.message : String(e);
      say(`kernel ${s}: ${kr.error}`);
      kr.results.push(...items.map((it) => notRun(it.label, it.kind, kr.error!)));
      infraError = true;
      continue;
    }
    Object.assign(kr, { package: kernel.package, version: kernel.version, release: kernel.release });
    say(
      `kernel ${s}: ${kernel.package} ${kernel.version} (${
        kernel.vmlinux && !o["no-pvh"] ? "vmlinux, PVH" : "vmlinuz"
      })`,
    );

    let queue = [...items];
    let deaths = 0;
    while (queue.length > 0) {
      const batch = o.isolate ? queue.slice(0, 1) : queue;
      const initrd = `${tmp}/initrd-${runs.length}-${kr.boots.length}.cpio`;
      await withPlan(base, planScript(batch, planOpts), initrd);
      const collector = new ResultCollector(batch);
      const boot: KernelRun["boots"][number] = {};
      kr.boots.push(boot);
      let offTimer: ReturnType<typeof setTimeout> | undefined;
      const guest = startGuest(
        {
          kernel,
          initrd,
          memory: o.memory,
          smp: Number(o.smp),
          cpu: o.cpu,
          pvh: !o["no-pvh"],
          append: o.append,
        },
        write,
        (line) => {
          const before = collector.results.length;
          const hadInfo = collector.info !== undefined;
          collector.line(line);
          if (!hadInfo && collector.info) {
            boot.seconds = collector.readyMs! / 1000;
            kr.thp ??= collector.info.thp;
            say(`booted ${collector.info.release} in ${boot.seconds.toFixed(1)} s; THP ${collector.info.thp}`);
          }
          for (const r of collector.results.slice(before)) say(`done ${r.label}: ${r.status}`);
          if ((collector.exit !== undefined || collector.fatal !== undefined) && offTimer === undefined) {
            offTimer = setTimeout(() => guest.kill("no power-off after UFFD-EXIT"), 20_000);
          }
        },
      );
      logFile.writeSync(enc.encode(`[kernels] qemu: ${guest.argv.join(" ")}\n`));
      // The host's own deadlines: the boot, and each file (the guest's watchdog should fire first).
      const started = Date.now();
      const ticker = setInterval(() => {
        const r = collector.running;
        if (!collector.info && Date.now() - started > 300_000) guest.kill("no UFFD-INFO within 300 s of boot");
        if (r && Date.now() - started - r.startMs > (timeout + 120) * 1000) {
          guest.kill(`host deadline: ${r.label} ran past ${timeout + 120} s and the guest's watchdog did not end it`);
        }
      }, 1000);
      const end = await guest.done;
      clearInterval(ticker);
      clearTimeout(offTimer);
      await Deno.remove(initrd).catch(() => {});
      if (end.stderr.trim()) say(`qemu stderr: ${end.stderr.trim()}`);
      boot.exit = collector.exit;
      const done = collector.results;
      if (collector.exit === undefined) {
        boot.note = collector.fatal ? `guest setup failed: ${collector.fatal}` : end.killed ??
          `QEMU exited ${end.code} before UFFD-EXIT` +
            (collector.kernelTrouble.length ? `: ${collector.kernelTrouble.slice(0, 2).join("; ")}` : "");
        say(boot.note);
        collector.abort(end.killed?.startsWith("host deadline") ? "hang" : "crash", boot.note);
      }
      kr.results.push(...done);
      queue = queue.slice(done.length);
      if (collector.exit === undefined) {
        deaths = done.length === 0 ? deaths + 1 : 0;
        if (collector.fatal || deaths >= 2) {
          kr.results.push(...queue.map((it) => notRun(it.label, it.kind, boot.note!)));
          if (done.length === 0) infraError = true;
          queue = [];
        } else if (queue.length > 0) {
          say(`booting again for the ${queue.length} item(s) left`);
        }
      }
    }
  }
  await Deno.remove(tmp, { recursive: true }).catch(() => {});

  // Report.
  let passed = 0, failed = 0;
  say("");
  say("results");
  for (const kr of runs) {
    const boots = kr.boots.map((b) => b.seconds?.toFixed(1) ?? "?").join(", ");
    say(
      `${kr.series}: ${kr.package ?? "?"} ${kr.version ?? ""} release ${kr.release ?? "?"}, THP ${kr.thp ?? "?"}` +
        `, boot ${boots} s`,
    );
    for (const r of kr.results) {
      passed += r.passed;
      failed += r.failed;
      const secs = r.hostSeconds !== undefined ? ` ${r.hostSeconds.toFixed(1)} s` : "";
      const code = r.exitCode !== undefined && r.exitCode !== 0 ? ` exit ${r.exitCode}` : "";
      const sig = r.signal !== undefined ? ` (signal ${r.signal})` : "";
      say(
        `  ${r.status.padEnd(7)} ${r.label}: ${r.passed} passed / ${r.failed} failed / ${r.ignored} ignored` +
          `${code}${sig}${secs}${r.note ? ` — ${r.note}` : ""}`,
      );
      if (r.lastStarted) say(`      in: ${r.lastStarted}`);
      for (const e of r.errors.slice(0, 8)) say(`      | ${e}`);
      for (const e of r.kernelLog.slice(0, 12)) say(`      kernel: ${e}`);
      if (r.status === "hang") { for (const l of stuckTasks(r.dump)) say(`      ${l}`); }
    }
  }
  say(`full log: ${logPath}`);
  logFile.close();
  if (o.json) {
    console.log(JSON.stringify({ passed, failed, log: logPath, kernels: runs }, null, 2));
    console.error(`${passed} passed, ${failed} failed`);
  } else {
    console.log(`${passed} passed, ${failed} failed`);
  }
  if (failed > 0) return 1;
  return infraError ? 3 : 0;
}

if (import.meta.main) Deno.exit(await main());
