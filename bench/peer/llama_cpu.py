"""
The PyTorch CPU peer of `npm run bench -- scale`: what a user would write instead of
evosparse, in plain PyTorch (float32, eager), on the same checkpoint and the same token
windows. A LLaMA forward as transformers' eager LlamaForCausalLM computes it, and Wanda
and SparseGPT pruning block by block as locuslab/wanda's prune_wanda and prune_sparsegpt do
(calibration inputs of block i from the already-pruned blocks 0..i-1).

Token windows come as little-endian int32 files (rows of seqlen ids), written by the
benchmark, so no tokenizer is involved. A model whose float32 weights would take more than
half the machine's memory is streamed: each block is read from the memory-mapped file when
it runs (pruned blocks are kept in float16). Prints one JSON line, with the peak resident
memory of the process.

usage: llama_cpu.py eval MODEL_DIR WINDOWS.i32 SEQLEN
       llama_cpu.py prune MODEL_DIR CALIB.i32 EVAL.i32 SEQLEN wanda|sparsegpt SPARSITY
"""
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("PEER_THREADS", os.cpu_count() or 1)))
torch.set_grad_enabled(False)


class Checkpoint:
    """A single-file safetensors checkpoint, read through a memory map."""

    def __init__(self, folder):
        path = os.path.join(folder, "model.safetensors")
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            self.header = json.loads(f.read(n))
        self.start = 8 + n
        self.map = np.memmap(path, dtype=np.uint8, mode="r")
        with open(os.path.join(folder, "config.json")) as f:
            self.config = json.load(f)

    def tensor(self, name):
        e = self.header[name]
        a, b = e["data_offsets"]
        dtype = {"F16": np.float16, "F32": np.float32, "BF16": None}[e["dtype"]]
        raw = self.map[self.start + a : self.start + b]
        if dtype is None:
            bits = raw.view(np.uint16).astype(np.uint32) << 16
            return torch.from_numpy(bits.view(np.float32).reshape(e["shape"]).copy())
        return torch.from_numpy(raw.view(dtype).reshape(e["shape"]).astype(np.float32))


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(seqlen, head_dim, theta):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seqlen, dtype=torch.float32), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Block:
    NAMES = {
        "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
    }

    def __init__(self, ckpt, i):
        p = f"model.layers.{i}."
        self.w = {k: ckpt.tensor(p + n + ".weight") for k, n in self.NAMES.items()}
        self.ln1 = ckpt.tensor(p + "input_layernorm.weight")
        self.ln2 = ckpt.tensor(p + "post_attention_layernorm.weight")


    def forward(self, x, cfg, tables, observe=None):
        """x [batch, seqlen, hidden]; observe(name, input) sees each linear's input."""
        b, t, d = x.shape
        heads = cfg["num_attention_heads"]
        kv = cfg.get("num_key_value_heads") or heads
        hd = d // heads
        eps = cfg.get("rms_norm_eps", 1e-6)
        lin = lambda name, inp: (observe and observe(name, inp)) or torch.matmul(inp, self.w[name].t())
        h = rms_norm(x, self.ln1, eps)
        q = lin("q", h).view(b, t, heads, hd).transpose(1, 2)
        k = lin("k", h).view(b, t, kv, hd).transpose(1, 2)
        v = lin("v", h).view(b, t, kv, hd).transpose(1, 2)
        cos, sin = tables
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if kv != heads:
            k = k.repeat_interleave(heads // kv, dim=1)
            v = v.repeat_interleave(heads // kv, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(hd)
        mask = torch.full((t, t), float("-inf")).triu(1)
        att = torch.softmax(scores + mask, dim=-1)
        o = torch.matmul(att, v).transpose(1, 2).reshape(b, t, d)
        x = x + lin("o", o)
        h = rms_norm(x, self.ln2, eps)
        act = torch.nn.functional.silu(lin("gate", h)) * lin("up", h)
        return x + lin("down", act)

    def half(self):
        """The block as a pruned copy is kept when streaming: float16, expanded when used."""
        return HalfBlock(self)


class HalfBlock:
    def __init__(self, block):
        self.w16 = {k: v.half() for k, v in block.w.items()}
        self.ln1, self.ln2 = block.ln1, block.ln2

    def expand(self):
        b = Block.__new__(Block)
        b.w = {k: v.float() for k, v in self.w16.items()}
        b.ln1, b.ln2 = self.ln1, self.ln2
        return b


class Model:
    def __init__(self, folder):
        self.ckpt = Checkpoint(folder)
        self.cfg = self.ckpt.config
        self.embed = self.ckpt.tensor("model.embed_tokens.weight")
        self.norm = self.ckpt.tensor("model.norm.weight")
        tied = self.cfg.get("tie_word_embeddings", False)
        self.head = self.embed if tied else self.ckpt.tensor("lm_head.weight")
        n = self.cfg["num_hidden_layers"]
        f32_bytes = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in self.ckpt.header.values() if isinstance(e, dict) and "data_offsets" in e) * 2
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.streamed = f32_bytes > total / 2
        self.blocks = [None] * n if self.streamed else [Block(self.ckpt, i) for i in range(n)]
        self.pruned = [None] * n

    def block(self, i):
        """Block i: a pruned copy when there is one, else the dense block (read now when streaming)."""
        if self.pruned[i] is not None:
            return self.pruned[i].expand() if isinstance(self.pruned[i], HalfBlock) else self.pruned[i]
        return self.blocks[i] if self.blocks[i] is not None else Block(self.ckpt, i)

    def keep_pruned(self, i, blk):
        self.pruned[i] = blk.half() if self.streamed else blk

    def tables(self, seqlen):
        hd = self.cfg["hidden_size"] // self.cfg["num_attention_heads"]
        return rope_tables(seqlen, hd, self.cfg.get("rope_theta", 10000.0))

    def nll(self, ids):
        """Summed next-token NLL and count over windows [n, seqlen], one window per pass."""
        total, count = 0.0, 0
        tables = self.tables(ids.shape[1])
        blocks = None if self.streamed else [self.block(i) for i in range(len(self.blocks))]
        for w in ids:
            x = self.embed[w].unsqueeze(0)
            for i in range(len(self.blocks)):
                x = (blocks[i] if blocks else self.block(i)).forward(x, self.cfg, tables)
            h = rms_norm(x, self.norm, self.cfg.get("rms_norm_eps", 1e-6))[0, :-1]
            logits = torch.matmul(h, self.head.t())
            total += torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum").item()
            count += len(w) - 1
        return total, count


def read_windows(path, seqlen):
    return torch.from_numpy(np.fromfile(path, dtype="<i4").astype(np.int64).reshape(-1, seqlen))


def prune_block(blk, inputs, cfg, tables, method, sparsity):
    """Prunes one block from its calibration inputs (a list of [1, seqlen, hidden])."""
    stats = {}

    def observe(name, inp):
        x = inp.reshape(-1, inp.shape[-1])
        if method == "wanda":
            stats[name] = stats.get(name, 0) + x.pow(2).sum(0)
        else:
            stats[name] = stats.get(name, 0) + 2 * x.t() @ x
        return None

    for x in inputs:
        blk.forward(x, cfg, tables, observe)
    for name, w in blk.w.items():
        if method == "wanda":
            metric = w.abs() * stats[name].sqrt().reshape(1, -1)
            k = int(w.shape[1] * sparsity)
            idx = torch.sort(metric, dim=-1, stable=True)[1][:, :k]
            w.scatter_(1, idx, 0.0)
        else:
            blk.w[name] = sparsegpt(w, stats[name] / (len(inputs) * inputs[0].shape[1]), sparsity)


def sparsegpt(w, hessian, sparsity, blocksize=128, percdamp=0.01):
    """SparseGPT's solve (IST-DASLab/sparsegpt fasterprune, unstructured), in float32 as there."""
    W = w.float().clone()
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    H += damp * torch.eye(H.shape[0], dtype=H.dtype)
    H = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    cols = W.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = H[i1:i2, i1:i2]
        tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
        thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
        mask1 = tmp <= thresh
        for i in range(i2 - i1):
            wcol = W1[:, i]
            d = Hinv1[i, i]
            q = wcol.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (wcol - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(H[i1:i2, i2:])
    return W.float()


def peak_rss():
    """Peak resident memory of this process, in bytes (ru_maxrss is in kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    cmd = sys.argv[1]
    start = time.time()
    model = Model(sys.argv[2])
    loaded = time.time() - start
    if cmd == "eval":
        ids = read_windows(sys.argv[3], int(sys.argv[4]))
        t = time.time()
        nll, count = model.nll(ids)
        seconds = time.time() - t
        print(json.dumps({"ppl": math.exp(nll / count), "tokens": count, "seconds": seconds, "tokensPerSecond": count / seconds, "loadSeconds": loaded, "streamed": model.streamed, "peakRssBytes": peak_rss()}))
        return
    seqlen = int(sys.argv[5])
    calib, evaluation = read_windows(sys.argv[3], seqlen), read_windows(sys.argv[4], seqlen)
    method, sparsity = sys.argv[6], float(sys.argv[7])
    t = time.time()
    tables = model.tables(seqlen)
    inputs = [model.embed[w].unsqueeze(0) for w in calib]
    for i in range(len(model.blocks)):
        blk = model.block(i)
        prune_block(blk, inputs, model.cfg, tables, method, sparsity)
        model.keep_pruned(i, blk)
        inputs = [blk.forward(x, model.cfg, tables) for x in inputs]
    pruning = time.time() - t
    nll, count = model.nll(evaluation)
    print(json.dumps({"ppl": math.exp(nll / count), "tokens": count, "pruneSeconds": pruning, "seconds": time.time() - start, "streamed": model.streamed, "peakRssBytes": peak_rss()}))


if __name__ == "__main__":
    main()
