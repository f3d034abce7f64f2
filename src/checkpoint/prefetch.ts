/**
 * Reading blocks ahead: a streamed pass asks for block i + 1's bytes while block i
 * computes, and the reads run on libuv's thread pool. At most a few blocks' bytes wait
 * here (in the file's dtype); a block read ahead but never used is dropped with the oldest.
 */
const KEEP = 2;

export class BlockPrefetch {
  private readonly inflight = new Map<number, Promise<void>>();
  private readonly ready = new Map<number, Map<string, Uint8Array>>();

  constructor(
    /** The tensors of block i. */
    private readonly namesOf: (block: number) => readonly string[],
    private readonly read: (name: string) => Promise<Uint8Array>,
  ) {}

  /** Starts reading block i (once); resolves when its bytes are here. */
  start(block: number): Promise<void> {
    if (this.ready.has(block)) return Promise.resolve();
    const running = this.inflight.get(block);
    if (running) return running;
    const names = this.namesOf(block);
    const done = Promise.all(names.map(async (name) => [name, await this.read(name)] as const)).then(
      (entries) => {
        this.inflight.delete(block);
        this.ready.set(block, new Map(entries));
        for (const old of this.ready.keys()) {
          if (this.ready.size <= KEEP) break;
          this.ready.delete(old);
        }
      },
      (error: unknown) => {
        this.inflight.delete(block);
        throw error;
      },
    );
    // A pass that fails stops awaiting its read-ahead; the read's own failure then has no
    // one to reach and must not end the process as an unhandled rejection. Whoever awaits
    // `done` still sees it.
    done.catch(() => undefined);
    this.inflight.set(block, done);
    return done;
  }

  /** Block i's bytes when they were read ahead (handed over: they are not kept here). */
  take(block: number): Map<string, Uint8Array> | undefined {
    const bytes = this.ready.get(block);
    this.ready.delete(block);
    return bytes;
  }
}
