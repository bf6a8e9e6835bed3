from common import *
import dataclasses, math
from toolkit.config import preset
from toolkit.model.text import TextTower
from toolkit.model.net import GridPosition
d = load()
E = os.environ.get
D = int(E('D', 128))
class Conv(nn.Module):
    def __init__(s, c=24, n=3):
        super().__init__(); layers = []; ci = 3
        for i in range(n):
            layers += [nn.Conv2d(ci, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU()]; ci = c
        s.net = nn.Sequential(*layers); s.out = c
    def forward(s, x): return s.net(x)
def mlp(i, h, o, n=2):
    layers = []
    for k in range(n - 1):
        layers += [nn.Linear(i if k == 0 else h, h), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(h if n > 1 else i, o))
class Hop(nn.Module):
    """cells read the question (attention over [q; words]); per-cell MLP on [cell, read]; query reads cells."""
    def __init__(s, D, heads=4):
        super().__init__()
        s.v2t = nn.MultiheadAttention(D, heads, batch_first=True)
        s.cell = mlp(2 * D, 2 * D, D, n=int(E('CELLN', 3)))
        s.t2v = nn.MultiheadAttention(D, heads, batch_first=True)
        s.qn = nn.LayerNorm(D); s.vn = nn.LayerNorm(D)
    def forward(s, q, v, t, pad):
        ctx = torch.cat([q, t], 1); cpad = torch.cat([torch.zeros_like(pad[:, :1]), pad], 1)
        if E('V2T', '1') == '1':
            a, _ = s.v2t(v, ctx, ctx, key_padding_mask=cpad, need_weights=False)
        else:
            a = q.expand(-1, v.shape[1], -1)
        h = s.cell(torch.cat([v, a], -1))
        v = s.vn(v + h) if E('LN', '1') == '1' else (v + h if E('RES', '1') == '1' else torch.relu(h))
        if not E('NOT2V'):
            r, _ = s.t2v(q, v, v, need_weights=False)
            q = s.qn(q + r)
        return q, v
class Net(nn.Module):
    def __init__(s):
        super().__init__()
        if E('VIS') == 'r18':
            from toolkit.model.vision import VisionTower
            s.vis = VisionTower(preset('small').vision, 64); s.vis.out = s.vis.out_channels
        else:
            s.vis = Conv(int(E('C', 24)), 3)
        s.vp = nn.Linear(s.vis.out, D); s.pos = GridPosition(D)
        if E('TEXT') == 'bert':
            tc = dataclasses.replace(preset('small').text, vocab_size=d['vocab'], hidden_size=D, num_layers=int(E('TL', 2)))
            s.text = TextTower(tc)
            if E('TDROP') == '0':
                for mod in s.text.modules():
                    if isinstance(mod, nn.Dropout): mod.p = 0.0
            if E('EMB1'):
                s.text.encoder.embeddings.word_embeddings.weight.data.normal_(0, 1)
            if E('ZPOS'):
                s.text.encoder.embeddings.position_embeddings.weight.data.zero_()
        else:
            s.emb = nn.Embedding(d['vocab'], D); s.text = None
        s.hops = nn.ModuleList(Hop(D) for _ in range(int(E('HOPS', 2))))
        s.head = nn.Sequential(nn.Linear(2 * D, 256), nn.ReLU(), nn.Linear(256, 12))
    def groups(s, lr):
        if not E('TLR'): return s.parameters()
        tp = set(id(p) for p in s.text.parameters())
        return [{'params': [p for p in s.parameters() if id(p) not in tp]}, {'params': list(s.text.parameters()), 'lr': lr * float(E('TLR'))}]
    def forward(s, x, ids, mask, image_index=None):
        m = s.vis(x); B, C, h, w = m.shape
        if E('RAWV'):  # m0.py's cells: raw conv channels and (x, y), no projection
            cells = m.flatten(2).transpose(1, 2)
            v = torch.cat([cells, coords(h, w).expand(B, -1, -1), cells.new_zeros(B, h * w, D - cells.shape[-1] - 2)], -1)
        else:
            v = s.vp(m.flatten(2).transpose(1, 2)); v = v + s.pos(h, w, v)
        if image_index is not None: v = v[image_index]
        t = s.text(ids, mask) if s.text is not None else s.emb(ids)
        mf = mask.unsqueeze(-1).float(); q = ((t * mf).sum(1) / mf.sum(1)).unsqueeze(1)
        pad = mask == 0
        for hop in s.hops:
            q, v = hop(q, v, t, pad)
        pool = v.sum(1) if E('POOL', 'sum') == 'sum' else v.mean(1)
        return s.head(torch.cat([pool, q.squeeze(1)], -1))
torch.manual_seed(int(E('SEED', 0)))
model = Net()
secs = int(sys.argv[1]); curr = int(E('CURR', 0))
stages = ((('horizontal', 'vertical'), curr), (None, None)) if curr else ((None, None),)
if E('ROWS'):  # random rows, one image per question (m0.py's batches)
    if curr: run(model, d, lr=float(E('LR', 1e-3)), secs=curr, eval_every=int(E('EV', 200)), qtypes=['horizontal', 'vertical'])
    run(model, d, lr=float(E('LR', 1e-3)), secs=secs, eval_every=int(E('EV', 200)))
    sys.exit()
run2(model, d, lr=float(E('LR', 1e-3)), secs=secs, eval_every=int(E('EV', 200)), stages=stages, imgs=int(E('IMGS', 11)))
