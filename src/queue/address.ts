/**
 * Where a search's fitness jobs go: a Redis URL, redis://[user:password@]host:port[/db]
 * or rediss:// for TLS. Checked before anything connects, and shown without its password.
 */
import { UsageError } from "../errors.ts";

export interface QueueAddress {
  /** The URL as given, for the Redis client. */
  readonly url: string;
  /** The URL without its password, for messages and logs. */
  readonly shown: string;
}

const FORM = "redis://[user:password@]host:port[/db] or rediss:// for TLS";

/** The text with any password of a `scheme://user:password@host` form replaced by ***. */
export const maskPassword = (text: string): string => text.replace(/^([^:/]*:\/\/[^:@/]*:)[^@]*@/, "$1***@").replace(/^([^:/]*:\/\/:)[^@]*@/, "$1***@");

/** The database index of an address (0 when none is given). */
export const databaseOf = (address: QueueAddress): number => {
  try {
    const db = new URL(address.url).pathname.replace(/^\//, "");
    return db === "" ? 0 : Number(db);
  } catch {
    return 0;
  }
};

export const parseQueueAddress = (text: string, flag = "--queue"): QueueAddress => {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    // Even unparsed, a password is never shown: whatever stands between "//user:" and "@" is masked.
    throw new UsageError({ problem: `${flag} ${JSON.stringify(maskPassword(text))} is not a URL: expected ${FORM}` });
  }
  const shownUrl = new URL(url.href);
  if (shownUrl.password) shownUrl.password = "***";
  const shown = shownUrl.href;
  if (url.protocol !== "redis:" && url.protocol !== "rediss:") throw new UsageError({ problem: `${flag} ${shown}: the scheme must be redis or rediss (${FORM})` });
  if (!url.hostname) throw new UsageError({ problem: `${flag} ${shown}: no host (${FORM})` });
  if (url.port !== "" && !(Number(url.port) >= 1 && Number(url.port) <= 65535)) throw new UsageError({ problem: `${flag} ${shown}: bad port (${FORM})` });
  const db = url.pathname.replace(/^\//, "");
  if (db !== "" && !/^\d{1,5}$/.test(db)) throw new UsageError({ problem: `${flag} ${shown}: the database after the host must be a number (${FORM})` });
  if (url.search || url.hash) throw new UsageError({ problem: `${flag} ${shown}: no query or fragment is read (${FORM})` });
  return { url: text, shown };
};
