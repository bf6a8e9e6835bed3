"""The full-size `seed` preset (136.6M parameters) exported to FP32 ONNX and checked against
PyTorch. About 1-3 minutes and 5 GB of memory on a 2-core CPU: marked slow (deselect with
`-m "not slow"`); bench/export.md records its numbers."""

import pytest

pytestmark = pytest.mark.slow


def test_seed_fp32_export(tmp_path):
    import dataclasses

    import onnx
    import torch

    from toolkit.checkpoint import save_weights, write_run_files
    from toolkit.config import ExportConfig, preset
    from toolkit.data.preprocess import SPECIAL_TOKENS, Tokenizer
    from toolkit.export.pipeline import export
    from toolkit.model import DualModalNet

    torch.manual_seed(0)
    vocab = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(100)]
    base = preset("seed")  # a trained vocabulary sizes the embedding, as in toolkit train
    cfg = dataclasses.replace(base, text=dataclasses.replace(base.text, vocab_size=len(vocab)))
    run = tmp_path / "seed"
    write_run_files(run, cfg, {}, Tokenizer(vocab, cfg.text.max_length),
                    [f"c{i}" for i in range(cfg.num_classes)])
    save_weights(DualModalNet(cfg).eval(), run / "best.safetensors")
    r = export(ExportConfig(str(run), str(tmp_path / "seed.onnx")))
    assert r.comparison.passed and r.comparison.n == 12
    m = onnx.load(str(r.path), load_external_data=False)
    assert m.ByteSize() > 400 * 2**20  # the weights are inside the one file
    assert [i.name for i in m.graph.input] == ["image", "input_ids", "attention_mask"]
