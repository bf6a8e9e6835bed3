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
                  curriculum=tuple(tuple(st.split(',')) for st in a.get('ctypes', 'horizontal,vertical').split(';')) if int(a.get('csteps', 0)) else (),
                  max_steps=int(a['steps']) if 'steps' in a else None, resume=a.get('resume') == '1',
                  curriculum_steps=int(a.get('csteps', 0)), curriculum_loss=float(a.get('closs', 0.05)),
                  freeze_binding=a.get('freeze') == '1')
if 'lrafter' in a:  # scale the rate after the curriculum
    import toolkit.train as T
    _rate = T.BatchPlan.rate
    T.BatchPlan.rate = lambda self, step, warmup: _rate(self, step, warmup) * (float(a['lrafter']) if step >= self.curriculum_end else 1.0)
if a.get('freezeall') == '1':  # as freeze=1, and through the epochs too
    import toolkit.train as T
    _step = torch.optim.AdamW.step
    state = {}
    def step(self, *args, **kw):
        m, plan = state.get('model'), state.get('plan')
        if m is not None:
            k = plan.stage(state['n'])
            if k is None or k >= 1:
                for mod in (m.text, m.text_proj, *[b.visual_to_text for b in m.fusion.blocks]):
                    for p in mod.parameters():
                        p.grad = None
            state['n'] += 1
        return _step(self, *args, **kw)
    torch.optim.AdamW.step = step
    _init = T.BatchPlan.__init__
    def init(self, *args):
        _init(self, *args); state['plan'] = self
    T.BatchPlan.__init__ = init
    _fwd = T.DualModalNet.__init__
    def minit(self, *args):
        _fwd(self, *args); state['model'] = self; state['n'] = 0
    T.DualModalNet.__init__ = minit
t = time.time(); r = train(cfg, log=print)
print('total', round(time.time() - t), r['report']['groups'], r['report']['per_type'])
