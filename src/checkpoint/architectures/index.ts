import type { Architecture } from "./architecture.ts";
import { gpt2 } from "./gpt2.ts";
import { llama, mistral, qwen2 } from "./llama.ts";
import { opt } from "./opt.ts";

export const architectures: readonly Architecture[] = [llama, mistral, qwen2, opt, gpt2];

export const architectureFor = (modelType: string): Architecture | undefined =>
  architectures.find((a) => a.modelTypes.includes(modelType));

export const supportedModelTypes = (): string[] => architectures.flatMap((a) => a.modelTypes);
