"""Worker for tests/test_ddp_extract.py: activation extraction split over torch.distributed ranks.

    python -m torch.distributed.run --nproc_per_node 2 --master_port P tests/ddp_extract_worker.py OUT_DIR KIND
    python tests/ddp_extract_worker.py OUT_DIR KIND        # one process: the reference

KIND is 'encoder' (a tiny BERT) or 'decoder' (a tiny Llama prompted for the label). The cache goes to OUT_DIR.
"""
import sys

import datasets
import torch

torch.set_num_threads(1)

from clvq_nb.activations import extract_activations_ddp, words_of
from clvq_nb.config import leave_process_group
from clvq_nb.models import PromptClassifier, tiny_bert, tiny_llama

TEXTS = ["A good movie.", "Unbelievably dull plot!", "The acting is great, the story is not.", "Bad.",
         "fun fun fun film", "the worst film of the year", "zebra quiz"]


def build(kind: str):
    if kind == "encoder": return tiny_bert(seed=0)
    lm, tok = tiny_llama(seed=0)
    return PromptClassifier(lm, tok, ["negative", "positive"], template="Review: {text}\nSentiment:"), tok


def data():
    ds = datasets.Dataset.from_dict({"text": TEXTS, "label": [i % 2 for i in range(len(TEXTS))]})   # no sid: global ids made
    keep = [[j % 2 == 0 for j in range(len(words_of(t)))] for t in TEXTS]
    return ds, keep


def run(out_dir: str, kind: str):
    model, tok = build(kind)
    ds, keep = data()
    return extract_activations_ddp(model, tok, ds, [1, 3], out_dir, keep_mask=keep, batch_size=2, shard_tokens=6,
                                   progress=False, dataset_name="toy", split="train")


if __name__ == "__main__":
    out, kind = sys.argv[1], sys.argv[2]
    run(out, kind)             # under torchrun, extract_activations_ddp initialises the process group itself
    leave_process_group()       # every rank waits for the others before it closes its connections
