import { existsSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { DataError } from "./errors.ts";

/** What went wrong with a write, in words, without the path (which may be a temporary name). */
export const describeWriteError = (error: unknown, target: string): string => {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case "ENOENT":
      return existsSync(dirname(target)) ? "no such file or folder" : "no such folder";
    case "ENOTDIR":
      return "part of the path is not a folder";
    case "EACCES":
    case "EPERM":
      return "permission denied";
    case "EROFS":
      return "read-only file system";
    case "ENOSPC":
      return "no space left on the device";
    case "EDQUOT":
      return "disk quota exceeded";
    case "EISDIR":
      return "a folder of that name is in the way";
    case "ENAMETOOLONG":
      return "the name is too long";
    case "EMFILE":
    case "ENFILE":
      return "too many open files";
    case "EIO":
      return "input/output error";
    case undefined:
      return error instanceof Error ? error.message : String(error);
    default:
      return code;
  }
};

const isFolder = (path: string): boolean => {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
};

/**
 * Written beside the target and renamed, so a reader (or a resumed run) never sees half a
 * file. A failure is a DataError naming the target, never the hidden temporary file.
 */
export const writeFileAtomically = (file: string, content: string | Uint8Array): void => {
  const temporary = join(dirname(file), `.${basename(file)}.${process.pid}.${Date.now()}.tmp`);
  try {
    writeFileSync(temporary, content);
    renameSync(temporary, file);
  } catch (error) {
    try {
      rmSync(temporary, { force: true });
    } catch {
      // Nothing was written, or the folder refuses changes: either way the write's own error says more.
    }
    const problem = isFolder(file) ? "a folder of that name is in the way" : describeWriteError(error, file);
    throw new DataError({ file, problem: `cannot be written (${problem})` });
  }
};
