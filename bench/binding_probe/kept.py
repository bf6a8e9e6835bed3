"""How much of each question type's named object the fusion's cell MLP keeps (fifth session).

For the first 600 held-out questions: the share of the cell MLP's total output on its 4 strongest
cells, and that total itself, averaged per question type. A total near 0 means the MLP silences
every cell for that type, so nothing of the named object reaches the head.

    python bench/binding_probe/kept.py RUN [DATA] [best|last]
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_run  # noqa: E402

ck, model, val, data = load_run(sys.argv)
cfg = ck.config
run = sys.argv[1]
kept = {}
model.fusion.blocks[0].visual_to_text.register_forward_hook(
    lambda mod, inp, out: kept.__setitem__('cells', out))
feed = val.batch(np.arange(600), ck.tokenizer, cfg.mean, cfg.std)
with torch.no_grad():
    model(**{k: torch.from_numpy(v) for k, v in feed.items()})
total = kept['cells'].sum(-1)  # (B, N)
share = (total.sort(1, descending=True).values[:, :4].sum(1)
         / total.sum(1).clamp_min(1e-6))  # (B,)
types = np.array(val.question_types[:600])
print(run, ' '.join(f"{t}: top-4 {share[torch.from_numpy(types == t)].mean():.2f} "
                    f"total {total[torch.from_numpy(types == t)].sum(1).mean():.1f}"
                    for t in sorted(set(types))))
