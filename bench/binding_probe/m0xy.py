import torch
def coords(h, w):
    ys = (torch.arange(h) + 0.5) / h * 2 - 1; xs = (torch.arange(w) + 0.5) / w * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing='ij'); return torch.stack([xx.flatten(), yy.flatten()], -1)
