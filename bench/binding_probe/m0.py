from common import *
mode = sys.argv[1]; secs = int(sys.argv[2]); qt = sys.argv[3].split(',') if len(sys.argv) > 3 and sys.argv[3] else None
d = load()
class Conv(nn.Module):
    def __init__(s, c=24, n=4):
        super().__init__()
        layers = []; ci = 3
        for i in range(n):
            layers += [nn.Conv2d(ci, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU()]; ci = c
        s.net = nn.Sequential(*layers)
    def forward(s, x): return s.net(x)
class BoW(nn.Module):
    def __init__(s, dim=64):
        super().__init__(); s.emb = nn.EmbeddingBag(d['vocab'], dim, mode='mean')
        s.col = nn.Linear(6, dim)
    def forward(s, ids, mask):
        q = (s.emb.weight[ids] * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        if os.environ.get('ORACLE'):
            oh = torch.stack([(ids == c).any(1) for c in (89, 70, 61, 88, 69, 103)], -1).float()
            q = q + s.col(oh)
        return q
class CnnMlp(nn.Module):  # paper baseline: flatten conv map
    def __init__(s):
        super().__init__(); s.conv = Conv(); s.q = BoW()
        s.mlp = nn.Sequential(nn.Linear(24*16 + 64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 12))
    def forward(s, x, ids, mask):
        return s.mlp(torch.cat([s.conv(x).flatten(1), s.q(ids, mask)], -1))
class CellMlp(nn.Module):  # single-object RN: per-cell MLP on [cell, xy, q], sum
    # ablations toward the toolkit's fusion: PROJ=1 (Linear to 128 + GridPosition instead of raw
    # channels + xy), OUT=k (width of g's output), HEADQ=1 (f reads [sum, q])
    def __init__(s, n=3):
        super().__init__(); s.conv = Conv(n=n); s.q = BoW()
        E = os.environ.get; s.proj = E('PROJ'); o = int(E('OUT', 256)); s.headq = E('HEADQ')
        if s.proj:
            from toolkit.model.net import GridPosition
            s.vp = nn.Linear(24, 128); s.pos = GridPosition(128); cin = 128
        else:
            cin = 26
        s.g = nn.Sequential(nn.Linear(cin + 64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, o), nn.ReLU())
        s.f = nn.Sequential(nn.Linear(o + (64 if s.headq else 0), 256), nn.ReLU(), nn.Linear(256, 12))
    def forward(s, x, ids, mask, image_index=None):
        m = s.conv(x); B, C, h, w = m.shape
        cells = m.flatten(2).transpose(1, 2)
        if image_index is not None: cells = cells[image_index]; B = len(image_index)
        if s.proj:
            v = s.vp(cells); v = v + s.pos(h, w, v)
        else:
            v = torch.cat([cells, coords(h, w).expand(B, -1, -1)], -1)
        qv = s.q(ids, mask); q = qv.unsqueeze(1).expand(-1, h*w, -1)
        pooled = s.g(torch.cat([v, q], -1)).sum(1)
        return s.f(torch.cat([pooled, qv], -1) if s.headq else pooled)
class RN(nn.Module):  # relation network on pairs of cells (5x5 is paper; here 8x8 or 4x4)
    def __init__(s, n=4):
        super().__init__(); s.conv = Conv(n=n); s.q = BoW()
        s.g = nn.Sequential(nn.Linear(2*26 + 64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        s.f = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 12))
    def forward(s, x, ids, mask):
        m = s.conv(x); B, C, h, w = m.shape; N = h*w
        cells = torch.cat([m.flatten(2).transpose(1, 2), coords(h, w).expand(B, -1, -1)], -1)
        a = cells.unsqueeze(1).expand(-1, N, -1, -1); b = cells.unsqueeze(2).expand(-1, -1, N, -1)
        q = s.q(ids, mask)[:, None, None].expand(-1, N, N, -1)
        return s.f(s.g(torch.cat([a, b, q], -1)).sum((1, 2)))
torch.manual_seed(0)
model = {'cnnmlp': CnnMlp, 'cell': CellMlp, 'rn': RN, 'cell4': lambda: CellMlp(4)}[mode]()
CURR = int(os.environ.get('CURR', 0))
if os.environ.get('SHARED'):  # whole images with all their questions, as toolkit train batches
    cq = tuple(os.environ.get('CQ', 'horizontal,vertical').split(','))
    stages = ((cq, CURR), (None, None)) if CURR else ((None, None),)
    run2(model, d, lr=float(os.environ.get('LR', 1e-3)), secs=secs, eval_every=int(os.environ.get('EV', 300)), stages=stages, imgs=int(os.environ.get('IMGS', 11)), warmup=100, wd=0.0)
    sys.exit()
if CURR:
    run(model, d, lr=float(os.environ.get('LR', 1e-3)), secs=CURR, eval_every=int(os.environ.get('EV', 300)), qtypes=os.environ.get('CQ', 'horizontal,vertical').split(','))
run(model, d, lr=float(os.environ.get('LR', 1e-3)), secs=secs, eval_every=int(os.environ.get('EV', 300)), qtypes=qt)
