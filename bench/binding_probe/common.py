import sys, time, os, functools, json
import numpy as np, torch
from torch import nn
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from toolkit.data.manifest import load_split, read_manifest, resolve_manifest, dataset_labels
from toolkit.data.preprocess import Tokenizer, train_vocab, pad
print = functools.partial(print, flush=True)
torch.set_num_threads(int(os.environ.get('THREADS', 2)))

def load(data=os.environ.get('DATA', 'data/sort-of-clevr'), size=64):
    cache = data + f'/cache{size}.pt'
    if os.path.exists(cache):
        return torch.load(cache, weights_only=False)
    rows = read_manifest(resolve_manifest(data, 'train'))
    labels = dataset_labels(data, rows)
    tok = Tokenizer(train_vocab((r.text for r in rows), 1000), 32)
    out = {'labels': labels, 'vocab': len(tok.vocab), 'pad': tok.pad_id}
    for split in ('train', 'val'):
        s = load_split(resolve_manifest(data, split), labels, tok, size)
        ids = pad(s.token_ids, tok.pad_id, 32)
        out[split] = dict(images=torch.from_numpy(s.images), image_index=torch.from_numpy(s.image_index),
                          ids=torch.from_numpy(ids['input_ids']), mask=torch.from_numpy(ids['attention_mask']),
                          labels=torch.from_numpy(s.labels), qtypes=s.question_types)
    torch.save(out, cache)
    return out

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1); STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
def img(x):  # uint8 (N,S,S,3) -> float normalized
    return (x.permute(0, 3, 1, 2).float() / 255 - MEAN) / STD

def evaluate(model, s, bs=500):
    model.eval(); preds = []
    with torch.no_grad():
        for i in range(0, len(s['labels']), bs):
            sl = slice(i, i + bs)
            preds.append(model(img(s['images'][s['image_index'][sl]]), s['ids'][sl], s['mask'][sl]).argmax(-1))
    p = torch.cat(preds); ok = (p == s['labels']).numpy()
    qt = np.array(s['qtypes']); res = {t: float(ok[qt == t].mean()) for t in dict.fromkeys(s['qtypes'])}
    nr = np.mean([res[t] for t in ('shape','horizontal','vertical') if t in res] or [0]); r = np.mean([res[t] for t in ('closest','furthest','count') if t in res] or [0])
    return float(ok.mean()), nr, r, res

def run(model, d, lr=1e-3, bs=64, secs=180, eval_every=200, wd=0.0, warmup=100, qtypes=None):
    tr = d['train']
    n = len(tr['labels'])
    idx_all = np.arange(n)
    if qtypes:
        idx_all = np.array([i for i, t in enumerate(tr['qtypes']) if t in qtypes])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    rng = np.random.default_rng(0); t0 = time.time(); step = 0; lossw = 0
    print('params', sum(p.numel() for p in model.parameters()))
    while time.time() - t0 < secs:
        perm = rng.permutation(idx_all)
        for b in range(0, len(perm) - bs + 1, bs):
            model.train()
            ix = torch.from_numpy(perm[b:b + bs])
            out = model(img(tr['images'][tr['image_index'][ix]]), tr['ids'][ix], tr['mask'][ix])
            loss = nn.functional.cross_entropy(out, tr['labels'][ix])
            opt.zero_grad(); loss.backward(); opt.step(); sched.step(); step += 1; lossw += loss.item()
            if step % eval_every == 0 or time.time() - t0 > secs:
                acc, nr, r, res = evaluate(model, d['val'] if not qtypes else sub(d['val'], qtypes))
                print(f'step {step} t {time.time()-t0:.0f}s samples {step*bs} loss {lossw/eval_every:.3f} acc {acc:.3f} nonrel {nr:.3f} rel {r:.3f} ' + ' '.join(f'{k[:5]} {v:.2f}' for k, v in res.items()))
                lossw = 0
            if time.time() - t0 > secs: break
    return model

def sub(s, qtypes):
    keep = [i for i, t in enumerate(s['qtypes']) if t in qtypes]
    k = torch.tensor(keep)
    return dict(images=s['images'], image_index=s['image_index'][k], ids=s['ids'][k], mask=s['mask'][k], labels=s['labels'][k], qtypes=[s['qtypes'][i] for i in keep])

def groups_of(s, qtypes=None):
    keep = np.array([qtypes is None or t in qtypes for t in s['qtypes']])
    ii = s['image_index'].numpy()
    order = np.argsort(ii, kind='stable'); order = order[keep[order]]
    bounds = np.flatnonzero(np.diff(ii[order])) + 1
    return np.split(order, bounds)

def run2(model, d, lr=1e-3, imgs=11, secs=180, eval_every=200, wd=0.01, warmup=200, stages=((None, None),), clip=1.0):
    """stages: ((qtypes or None, seconds or None), ...). Shared-image batches."""
    tr = d['train']
    params = model.groups(lr) if hasattr(model, 'groups') else model.parameters()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    rng = np.random.default_rng(0); t0 = time.time(); step = 0; lossw = 0; nw = 0; seen = 0
    print('params', sum(p.numel() for p in model.parameters()))
    for qtypes, ssecs in stages:
        g = groups_of(tr, qtypes); ts = time.time()
        done = False
        while not done:
            perm = rng.permutation(len(g))
            for b in range(0, len(perm) - imgs + 1, imgs):
                model.train()
                ix = np.concatenate([g[i] for i in perm[b:b + imgs]]); ixt = torch.from_numpy(ix)
                uniq, inv = np.unique(tr['image_index'][ixt].numpy(), return_inverse=True)
                out = model(img(tr['images'][torch.from_numpy(uniq)]), tr['ids'][ixt], tr['mask'][ixt], image_index=torch.from_numpy(inv.reshape(-1)))
                loss = nn.functional.cross_entropy(out, tr['labels'][ixt])
                opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), clip); opt.step(); sched.step(); step += 1; lossw += loss.item(); nw += 1; seen += len(ix)
                now = time.time()
                done = (ssecs is not None and now - ts > ssecs) or now - t0 > secs
                if step % eval_every == 0 or done:
                    acc, nr, r, res = evaluate(model, d['val'])
                    print(f'step {step} t {now-t0:.0f}s samples {seen} ({seen/(now-t0):.0f}/s) loss {lossw/nw:.3f} acc {acc:.3f} nonrel {nr:.3f} rel {r:.3f} ' + ' '.join(f'{k[:5]} {v:.2f}' for k, v in res.items()))
                    lossw = 0; nw = 0
                if done: break
        if now - t0 > secs: break
    return model

def coords(h, w):  # (h*w, 2) cell centres in [-1, 1]
    ys = (torch.arange(h) + 0.5) / h * 2 - 1; xs = (torch.arange(w) + 0.5) / w * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing='ij'); return torch.stack([xx.flatten(), yy.flatten()], -1)


def load_run(argv):
    """`RUN [DATA] [best|last]` from argv: the checkpoint, its model in eval mode and the held-out
    split of DATA, preprocessed with the run's own tokenizer (kept.py, relate.py)."""
    from toolkit.checkpoint import load_checkpoint
    data = argv[2] if len(argv) > 2 else 'data/sort-of-clevr'
    ck = load_checkpoint(argv[1], argv[3] if len(argv) > 3 else 'last')
    val = load_split(resolve_manifest(data, 'val'), ck.labels, ck.tokenizer, ck.config.image_size)
    return ck, ck.model.eval(), val, data
