/**
 * {@linkcode MigrationError}: how a live migration fails, on either end — a typed
 * `code` (a truncated stream, a corrupt batch, a wrong version, a peer that
 * vanished, …), which end noticed it, what the peer said when it was the peer's
 * refusal, the frame and page concerned, and whether the source resumed its
 * program. The codes and what each end does about them: `docs/live-migration.md`.
 *
 * @example
 * ```ts
 * import { MigrationError } from "@uffd/uffd/migrate";
 * const e = new MigrationError({ code: "corrupt", side: "destination", detail: "page 12 of batch 3", page: 12 });
 * console.log(e.code, e.message); // corrupt destination: corrupt: page 12 of batch 3
 * ```
 *
 * @module
 */

/**
 * What went wrong:
 *
 * - `"refused"`: the destination refused the migration (its target is too short,
 *   another page size, a mode it does not offer) — nothing was sent;
 * - `"version"`: the peer speaks another version of the wire format;
 * - `"protocol"`: a frame that makes no sense here (bad magic, unknown tag, a
 *   length out of bounds, frames out of order, a page outside the image);
 * - `"corrupt"`: a frame or a page whose CRC-32C does not match (`frame` and
 *   `page` name it) — refused, nothing of it is used;
 * - `"truncated"`: the stream ended inside a frame, or before the migration's end;
 * - `"peer-gone"`: the connection was reset or closed by a peer that vanished;
 * - `"timeout"`: the peer stayed silent longer than `timeoutMs`;
 * - `"digest"`: every frame checked, but the destination's image is not the
 *   source's (the end's page count or whole-image digest differ);
 * - `"connect"`: no connection could be made or accepted (`cause` says why);
 * - `"hook"`: a hook of the caller (`pause`, `resume`, `state`, `throttle`) threw;
 * - `"memory"`: the source's memory changed shape while it was sent (it grew,
 *   moved or was unmapped);
 * - `"aborted"`: the `signal` was aborted.
 */
export type MigrationErrorCode =
  | "refused"
  | "version"
  | "protocol"
  | "corrupt"
  | "truncated"
  | "peer-gone"
  | "timeout"
  | "digest"
  | "connect"
  | "hook"
  | "memory"
  | "aborted";

/** What a {@linkcode MigrationError} is built from. */
export interface MigrationErrorInit {
  /** What went wrong. */
  code: MigrationErrorCode;
  /** The end that reports it. */
  side: "source" | "destination";
  /** What happened, in words. */
  detail: string;
  /** `true` when the peer reported it (a `FAIL` frame) rather than this end noticing it. */
  remote?: boolean;
  /** The frame concerned: its tag and sequence number on its connection. */
  frame?: { tag: string; sequence: number };
  /** The image page concerned. */
  page?: number;
  /** Source only: whether its program was resumed (it had been paused, and the destination had not confirmed). */
  resumed?: boolean;
  /** The error behind this one. */
  cause?: unknown;
}

/**
 * A live migration that failed: see the module documentation.
 *
 * @example
 * ```ts
 * import { MigrationError } from "@uffd/uffd";
 * const e = new MigrationError({ code: "peer-gone", side: "source", detail: "the connection was reset", resumed: true });
 * console.log(e instanceof Error, e.resumed); // true true
 * ```
 */
export class MigrationError extends Error {
  /** What went wrong. */
  readonly code: MigrationErrorCode;
  /** The end that reports it. */
  readonly side: "source" | "destination";
  /** What happened, in words (the message without its prefix). */
  readonly detail: string;
  /** `true` when the peer reported it. */
  readonly remote: boolean;
  /** The frame concerned, if one is. */
  readonly frame: { readonly tag: string; readonly sequence: number } | undefined;
  /** The image page concerned, if one is. */
  readonly page: number | undefined;
  /** Source only: whether its program was resumed. */
  readonly resumed: boolean;

  /** Builds the error; the message is `<side>: <code>: <detail>`. */
  constructor(init: MigrationErrorInit) {
    super(
      `${init.side}: ${init.code}: ${init.detail}${init.remote ? " (reported by the peer)" : ""}`,
      init.cause === undefined ? undefined : { cause: init.cause },
    );
    this.name = "MigrationError";
    this.code = init.code;
    this.side = init.side;
    this.detail = init.detail;
    this.remote = init.remote ?? false;
    this.frame = init.frame === undefined ? undefined : Object.freeze({ ...init.frame });
    this.page = init.page;
    this.resumed = init.resumed ?? false;
  }
}
