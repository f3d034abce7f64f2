/** Option parsing shared by the prune and search commands. */
export { parsePattern } from "../allocation/pattern.ts";
