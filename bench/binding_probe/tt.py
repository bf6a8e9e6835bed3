import sys, time, json, os, functools, dataclasses
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
import torch; torch.set_num_threads(int(os.environ.get('THREADS', 2)))
from toolkit.config import preset, TrainConfig, BatchBy
from toolkit.train import train
print = functools.partial(print, flush=True)
a = dict(x.split('=', 1) for x in sys.argv[1:])
m = preset(a.get('preset', 'small'), **json.loads(a.get('model', '{}')))
if 'width' in a:  # convnet channels
    m = dataclasses.replace(m, vision=dataclasses.replace(m.vision, width=int(a['width'])))
cfg = TrainConfig(data=a.get('data', 'data/sort-of-clevr'), out=a.get('out', '/tmp/tt_run'), model=m, epochs=int(a.get('epochs', 3)),
                  batch_size=int(a.get('bs', 64)), batch_by=BatchBy(a.get('by', 'question')), lr=float(a.get('lr', 1e-3)), warmup_steps=int(a.get('warmup', 200)),
                  eval_every=int(a.get('eval', 300)), seed=int(a.get('seed', 0)), max_train_seconds=float(a.get('secs', 600)),
                  curriculum_types=tuple(a.get('ctypes', 'horizontal,vertical').split(',')) if int(a.get('csteps', 0)) else (),
                  curriculum_steps=int(a.get('csteps', 0)))
if int(a.get('pre', 0)):  # probe: N steps on all rows before the curriculum
    import toolkit.train as T
    pre, Orig = int(a['pre']), T.BatchPlan
    class PrePlan(Orig):
        def __init__(self, split, cfg, ddp):
            super().__init__(split, cfg, ddp)
            self.curriculum_steps += pre
            self.total_steps += pre
        def rows(self, step):
            if step < pre:
                return self.full.rows(step, self.seed + 7, self.ddp.rank)
            if step < self.curriculum_steps:
                return self.first.rows(step - pre, self.seed + 1_000_003, self.ddp.rank)
            return self.full.rows(step - self.curriculum_steps, self.seed, self.ddp.rank)
    T.BatchPlan = PrePlan
if a.get("stats", "0") != "0":  # probe: the head also reads the mean of the raw visual tokens
    from toolkit.model import fusion as F
    init0, fwd0 = F.FusionModule.__init__, F.FusionModule.forward
    def init(self, mcfg):
        init0(self, mcfg); self.stats = torch.nn.Linear(mcfg.dim, mcfg.dim)
        if a.get("stats") == "0init": torch.nn.init.zeros_(self.stats.weight); torch.nn.init.zeros_(self.stats.bias)
    def fwd(self, v, t, mask):
        return fwd0(self, v, t, mask) + self.stats(v.mean(1))
    F.FusionModule.__init__, F.FusionModule.forward = init, fwd
if float(a.get('floor', 0)):  # probe: the cosine never goes below this fraction of the peak rate
    import toolkit.train as T
    lam0, floor = T.lr_lambda, float(a['floor'])
    def lam(warmup, total, restart=0):
        f = lam0(warmup, total, restart)
        return lambda step: max(f(step), floor) if step >= restart + warmup else f(step)
    T.lr_lambda = lam
t = time.time(); r = train(cfg, log=print)
print('total', round(time.time() - t), r['report']['groups'], r['report']['per_type'])
