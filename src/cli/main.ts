import { hideBin } from "yargs/helpers";
import { program } from "./program.ts";

await program(hideBin(process.argv)).parseAsync();
