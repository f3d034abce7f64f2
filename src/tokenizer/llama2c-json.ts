import { specialAddedToken } from "./byte-level.ts";

/**
 * A llama2.c tokenizer.bin rewritten the way transformers converts a SentencePiece BPE model to a
 * Llama tokenizer.json: "▁" for spaces, a prepended "▁", byte fallback tokens, and
 * merges ranked by the score of the merged piece; the template adds <s>.
 */
export function llamaJsonFromLlama2c(fileBytes: Buffer): Record<string, unknown> {
  const texts: string[] = [];
  const scores: number[] = [];
  for (let offset = 4; offset < fileBytes.length; ) {
    scores.push(fileBytes.readFloatLE(offset));
    const length = fileBytes.readInt32LE(offset + 4);
    texts.push(fileBytes.subarray(offset + 8, offset + 8 + length).toString("utf8").replaceAll(" ", "▁"));
    offset += 8 + length;
  }
  texts[0] = "<unk>";
  texts[1] = "<s>";
  texts[2] = "</s>";
  const vocab: Record<string, number> = {};
  texts.forEach((text, id) => (vocab[text] = id));
  const mergeable = (text: string): boolean => text in vocab && vocab[text] > 258;
  const merges: { pair: [string, string]; score: number; id: number }[] = [];
  texts.forEach((text, id) => {
    if (id <= 258) return;
    const chars = Array.from(text);
    for (let split = 1; split < chars.length; split++) {
      const left = chars.slice(0, split).join("");
      const right = chars.slice(split).join("");
      if (mergeable(left) && mergeable(right)) merges.push({ pair: [left, right], score: scores[id], id });
    }
  });
  merges.sort((a, b) => b.score - a.score || a.id - b.id);
  return {
    version: "1.0",
    added_tokens: [specialAddedToken(0, "<unk>"), specialAddedToken(1, "<s>"), specialAddedToken(2, "</s>")],
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: "▁" },
        { type: "Replace", pattern: { String: " " }, content: "▁" },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges: merges.map((merge) => merge.pair),
    },
  };
}
