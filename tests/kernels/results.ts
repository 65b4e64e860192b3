/**
 * Turns the guest's console lines into per-file results: the `UFFD-` markers
 * that `guest_init.sh` prints around each run, and, inside them, Deno's test
 * output (`name ... ok`, the closing `ok | 12 passed (3 steps) | 1 failed |
 * 2 ignored (9s)` or `FAILED | …`, and the `ERRORS` section's first lines).
 *
 * @module
 */

/** How one file (or command) ended. */
export type Status = "ok" | "failed" | "error" | "crash" | "hang" | "not-run";

/** The result of one test file or command in the guest. */
export interface FileResult {
  /** Test file or command line. */
  label: string;
  /** `test` or `cmd`. */
  kind: "test" | "cmd";
  /** ok: exit 0; failed: tests failed; error: non-zero exit without a summary; crash: killed by a signal or the guest died; hang: the watchdog killed it; not-run. */
  status: Status;
  /** Exit code in the guest (137 after the watchdog's SIGKILL). */
  exitCode?: number;
  /** The signal when the exit code says one (exit code − 128). */
  signal?: number;
  /** Tests passed (from the summary, else the `... ok` lines seen). */
  passed: number;
  /** Tests failed (at least 1 unless status is ok). */
  failed: number;
  /** Tests ignored. */
  ignored: number;
  /** Deno's closing summary line. */
  summary?: string;
  /** Seconds in the guest, from `/proc/uptime`. */
  guestSeconds?: number;
  /** Seconds on the host between the markers. */
  hostSeconds?: number;
  /** First lines of Deno's `ERRORS` section (or `error:` lines), for the report. */
  errors: string[];
  /** Kernel stacks of the hung tasks, when the watchdog fired. */
  dump: string[];
  /** Kernel log lines of trouble (BUG, WARNING, Oops, segfault…) logged while it ran. */
  kernelLog: string[];
  /** The test that had started and not finished when it hung or crashed. */
  lastStarted?: string;
  /** Why it is a crash, hang or not-run when not from the exit code. */
  note?: string;
}

const MAX_ERROR_LINES = 24;
// deno-lint-ignore no-control-regex
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

/** Parses one guest boot's console, line by line. */
export class ResultCollector {
  /** Finished results, in order. */
  readonly results: FileResult[] = [];
  /** The `UFFD-INFO` fields (release, thp, …), once seen. */
  info?: Record<string, string>;
  /** The `UFFD-EXIT` code, once seen. */
  exit?: number;
  /** `UFFD-FATAL` message, if setup failed. */
  fatal?: string;
  /** Kernel panic, BUG and Oops lines seen on the console. */
  readonly kernelTrouble: string[] = [];
  /** Host time of the `UFFD-INFO` line (setup done), ms since the boot started. */
  readyMs?: number;
  private seen = { ok: 0, FAILED: 0, ignored: 0 };
  private current?: { index: number; result: FileResult; startMs: number; section?: "errors" | "dump" | "kmsg" };
  private readonly bootMs = Date.now();

  /** `plan` gives each index (1-based, as the guest counts) its label and kind. */
  constructor(private readonly plan: readonly { label: string; kind: "test" | "cmd" }[]) {}

  /** The run in progress (BEGIN seen, END not yet). */
  get running(): { index: number; label: string; startMs: number } | undefined {
    const c = this.current;
    return c && { index: c.index, label: c.result.label, startMs: c.startMs };
  }

  /** Feeds one console line. */
  line(raw: string): void {
    const line = raw.replace(ANSI, "");
    const marker = /^UFFD-([A-Z-]+) ?(.*)$/.exec(line);
    if (marker) {
      this.marker(marker[1], marker[2]);
      return;
    }
    const panic = /Kernel panic - not syncing.*|BUG: .*|Oops: .*/.exec(line);
    if (panic) this.kernelTrouble.push(panic[0]);
    const c = this.current;
    if (!c) return;
    const r = c.result;
    if (c.section === "dump") {
      r.dump.push(line);
      return;
    }
    if (c.section === "kmsg") {
      if (line !== "") r.kernelLog.push(line);
      return;
    }
    const summary = /^(ok|FAILED) \| (\d+) passed.*\| (\d+) failed/.exec(line);
    if (summary) {
      r.summary = line;
      r.passed = Number(summary[2]);
      r.failed = Number(summary[3]);
      r.ignored = Number(/\| (\d+) ignored/.exec(line)?.[1] ?? 0);
      c.section = undefined;
      return;
    }
    if (r.summary === undefined) {
      // Top-level tests only: steps are indented.
      const test = /^(\S.*) \.\.\.(?: (ok|FAILED|ignored)(?: \(.*\))?)?$/.exec(line);
      if (test?.[2]) {
        this.seen[test[2] as "ok" | "FAILED" | "ignored"]++;
        r.lastStarted = undefined;
      } else if (test) {
        r.lastStarted = test[1];
      }
    }
    if (/^ ?ERRORS ?$/.test(line)) {
      c.section = "errors";
      return;
    }
    if (/^ ?FAILURES ?$/.test(line)) {
      c.section = undefined;
      return;
    }
    if (r.errors.length < MAX_ERROR_LINES && (c.section === "errors" ? line.trim() !== "" : /^error: /.test(line))) {
      r.errors.push(line);
    }
  }

  private marker(kind: string, rest: string): void {
    const now = Date.now() - this.bootMs;
    switch (kind) {
      case "INFO":
        this.info = Object.fromEntries(
          rest.split(/ (?=[a-z_]+=)/).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]),
        );
        this.readyMs = now;
        break;
      case "BEGIN": {
        const index = Number(rest.split(" ")[0]);
        const p = this.plan[index - 1] ?? { label: rest.slice(rest.indexOf(" ") + 1), kind: "cmd" as const };
        this.seen = { ok: 0, FAILED: 0, ignored: 0 };
        this.current = {
          index,
          startMs: now,
          result: {
            label: p.label,
            kind: p.kind,
            status: "ok",
            passed: 0,
            failed: 0,
            ignored: 0,
            errors: [],
            dump: [],
            kernelLog: [],
          },
        };
        break;
      }
      case "HANG":
        if (this.current) {
          this.current.result.note = `watchdog: ${
            /no exit after \d+ s/.exec(rest)?.[0] ?? rest
          }, stacks dumped, killed`;
        }
        break;
      case "DUMP-BEGIN":
        if (this.current) this.current.section = "dump";
        break;
      case "DUMP-END":
        if (this.current) this.current.section = undefined;
        break;
      case "KMSG":
      case "SIGNAL":
        if (this.current) this.current.section = "kmsg";
        break;
      case "UNKILLABLE":
        if (this.current) this.current.result.note = `${this.current.result.note ?? ""}; unkillable: ${rest}`;
        break;
      case "END": {
        const c = this.current;
        if (!c) break;
        const rc = Number(/rc=(\d+)/.exec(rest)?.[1] ?? -1);
        const how = /how=(\w+)/.exec(rest)?.[1];
        const cs = /cs=(\d+)/.exec(rest)?.[1];
        c.result.exitCode = rc;
        c.result.guestSeconds = cs === undefined ? undefined : Number(cs) / 100;
        c.result.hostSeconds = (now - c.startMs) / 1000;
        this.finish(c.result, how === "hung" ? "hang" : undefined);
        break;
      }
      case "EXIT":
        this.exit = Number(rest);
        break;
      case "FATAL":
        this.fatal = rest;
        break;
    }
  }

  private finish(r: FileResult, forced?: "hang" | "crash", note?: string): void {
    if (r.summary === undefined) {
      r.passed = this.seen.ok;
      r.failed = this.seen.FAILED;
      r.ignored = this.seen.ignored;
    }
    if (r.exitCode !== undefined && r.exitCode >= 128) r.signal = r.exitCode - 128;
    if (forced) r.status = forced;
    else if (r.signal !== undefined) r.status = "crash";
    else if (r.exitCode === 0) r.status = r.failed > 0 ? "failed" : "ok";
    else if (r.kind === "test" && r.summary?.startsWith("FAILED")) r.status = "failed";
    else r.status = "error";
    if (note) r.note = r.note ? `${r.note}; ${note}` : note;
    if (r.status !== "ok") r.failed = Math.max(1, r.failed);
    else if (r.kind === "cmd") r.passed = 1;
    if (r.status === "ok" || r.status === "failed") r.lastStarted = undefined;
    this.results.push(r);
    this.current = undefined;
  }

  /**
   * Closes a run cut short when the guest died or the host killed it:
   * `why` says which ("hang" when the host's deadline passed).
   */
  abort(why: "hang" | "crash", note: string): FileResult | undefined {
    const c = this.current;
    if (!c) return undefined;
    c.result.hostSeconds = (Date.now() - this.bootMs - c.startMs) / 1000;
    this.finish(c.result, why, note);
    return c.result;
  }
}

/** A result for a file the runner never got to (counted as one failure). */
export function notRun(label: string, kind: "test" | "cmd", note: string): FileResult {
  return {
    label,
    kind,
    status: "not-run",
    passed: 0,
    failed: 1,
    ignored: 0,
    errors: [],
    dump: [],
    kernelLog: [],
    note,
  };
}
