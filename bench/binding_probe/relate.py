"""Where the relation read looks (seventh session).

For the first 1,200 held-out questions of each relational type: the share of each head's softmax on
the cells of the object the answer is about (the closest or furthest one), and on the named
object's cells. A cell belongs to an object when its square of the image overlaps the object.

    python bench/binding_probe/relate.py RUN [DATA] [best|last]
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_run  # noqa: E402

ck, model, val, data = load_run(sys.argv)
cfg = ck.config
rows = [json.loads(line) for line in open(os.path.join(data, 'val.jsonl'))]
rel = model.fusion.relation


def mask_of(obj, grid, cell, radius):
    """(grid*grid,) cells whose square overlaps the object's bounding square."""
    m = np.zeros((grid, grid), bool)
    lo = np.clip(((obj['x'] - radius) // cell, (obj['y'] - radius) // cell), 0, grid - 1)
    hi = np.clip(((obj['x'] + radius - 1) // cell, (obj['y'] + radius - 1) // cell), 0, grid - 1)
    lo, hi = lo.astype(int), hi.astype(int)
    m[lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = True
    return m.flatten()


picks = {}
orig = torch.Tensor.softmax


def softmax(self, *a, **k):  # keep the relation read's (B, N, H) softmax
    out = orig(self, *a, **k)
    if self.dim() == 3 and self.shape[-1] == rel.heads:
        picks['p'] = out.detach()
    return out


torch.Tensor.softmax = softmax
for qtype in ('closest', 'furthest'):
    idx = np.array([i for i, r in enumerate(rows) if r['question_type'] == qtype][:1200])
    feed = val.batch(idx, ck.tokenizer, cfg.mean, cfg.std)
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    p = picks['p'].numpy()  # (B, N, H)
    n = p.shape[1]; grid = int(round(n ** 0.5)); cell = cfg.image_size / grid
    radius = max(2, round(cfg.image_size * 0.075))
    on_target, on_named = [], []
    for k, i in enumerate(idx):
        r = rows[i]; objs = r['scene']['objects']
        named = next(o for o in objs if o['colour'] == r['colour'])
        pos = np.array([(o['x'], o['y']) for o in objs], float)
        d = np.linalg.norm(pos - (named['x'], named['y']), axis=1)
        d[[o['colour'] for o in objs].index(r['colour'])] = np.nan
        target = objs[int(np.nanargmin(d) if qtype == 'closest' else np.nanargmax(d))]
        tm, nm = mask_of(target, grid, cell, radius), mask_of(named, grid, cell, radius)
        on_target.append(p[k][tm].sum(0)); on_named.append(p[k][nm].sum(0))
    acc = (logits.argmax(1).numpy() == val.labels[idx]).mean()
    t, nmd = np.mean(on_target, 0), np.mean(on_named, 0)
    print(f"{qtype}: accuracy {acc:.1%}; per head, share on the target object "
          + ' '.join(f'{x:.2f}' for x in t) + '; on the named one ' + ' '.join(f'{x:.2f}' for x in nmd))
