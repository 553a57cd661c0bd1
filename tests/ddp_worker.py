"""Worker for tests/test_ddp.py: train a tiny CLVQ-VAE on a synthetic problem with `Trainer`.

Run under torchrun (2 CPU processes, gloo) or as a plain process (1-process reference):

    python -m torch.distributed.run --nproc_per_node 2 --master_port P tests/ddp_worker.py OUT_DIR BATCH_SIZE INIT
    python tests/ddp_worker.py OUT_DIR BATCH_SIZE INIT

`BATCH_SIZE` is the global batch (each of N ranks takes BATCH_SIZE/N sentences). `INIT` is the codebook init:
'sample' (from a seeded sample of `init_tokens` training tokens, the cpu profile's) or 'first-batch' (init_tokens=0,
from the first batch: the paper's). Every rank writes its
final model state to OUT_DIR/state_rank{r}.pt.

Why the problem is made deterministic: with top_k > 1 every rank samples codes from its own RNG
stream, and with dropout > 0 every rank draws its own dropout masks, so a 2-process run could not
equal a 1-process run. With top_k = 1 (argmin) and dropout = 0 nothing random happens after the
initialisation. The rest is as in real runs, which the trainer makes equal to one process: sentences of
different lengths (each rank's loss is weighted by its share of the batch's tokens), batches grouped by
length (each rank takes its share of the one-process batch) and either codebook init (every rank encodes
the same sentences as one process would).
"""
import os, sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from clvq_nb.activations import SentencePairs

from clvq_nb.clvqvae import CLVQVAE, CLVQVAEConfig
from clvq_nb.config import leave_process_group
from clvq_nb.trainer import SyntheticPairs, TrainConfig, Trainer

N_TRAIN, N_VAL = 48, 12


def build(seed: int = 0):
    syn = SyntheticPairs(N_TRAIN + N_VAL, d_in=16, d_out=8, min_len=2, max_len=9, seed=seed)
    xs, ys = zip(*(syn[i] for i in range(len(syn))))     # as one cache's rows: the trainer records each row's code
    data = SentencePairs(torch.cat(xs), torch.cat(ys), np.concatenate([[0], np.cumsum([len(a) for a in xs])]))
    train = torch.utils.data.Subset(data, range(N_TRAIN))
    val = torch.utils.data.Subset(data, range(N_TRAIN, N_TRAIN + N_VAL))
    torch.manual_seed(seed)
    model = CLVQVAE(CLVQVAEConfig(d_in=16, d_out=8, codebook_size=10, top_k=1, n_layers=2, n_heads=2, d_ff=32,
                                  dropout=0.0))
    return model, train, val


def run(out_dir: str, batch_size: int, init: str = "sample") -> dict:
    model, train, val = build()
    cfg = TrainConfig(batch_size=batch_size, epochs=2, device="cpu", out_dir=str(Path(out_dir) / "run"), ckpt_every=2,
                      init_tokens={"sample": 150, "first-batch": 0}[init])
    trainer = Trainer(model, cfg, train, val, progress=False)
    trainer.fit()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"state": state, "history": trainer.history, "world": trainer.world, "rank": trainer.rank,
                "sampled": torch.as_tensor(trainer.sampled)},
               Path(out_dir) / f"state_rank{trainer.rank}.pt")
    return state


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    leave_process_group()       # every rank waits for the others before it closes its connections
