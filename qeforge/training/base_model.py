"""Build the embedded-default base model: a tiny Phi-3 trained from scratch on our own corpus.

It stands in for microsoft/phi-4 on a 2-core CPU: same architecture family, so the fused
module names the LoRA recipes target (qkv_proj, o_proj, gate_up_proj, down_proj) exist, and
it is briefly pretrained so that "adapter beats base" is a real comparison, not noise.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

BUILD_INFO = "build_info.json"


def corpus_from_datasets(dataset_dirs: Iterable[str | Path], split: str = "train") -> list[str]:
    """Every `split` conversation of the given category DatasetDict dirs, rendered as chat text."""
    from datasets import load_from_disk

    from .tokenizer import render_messages

    texts: list[str] = []
    for d in dataset_dirs:
        texts.extend(render_messages(m) for m in load_from_disk(str(d))[split]["messages"])
    return texts


def build_tiny_base(
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    seed: int = 0,
    steps: int = 300,
    vocab_size: int = 4096,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    block_size: int = 256,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    force: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train tokenizer + Phi3ForCausalLM on `texts`, save both to out_dir, return out_dir.

    Deterministic for (texts, seed, sizes). Skips when out_dir already holds a build with the
    same fingerprint (build_info.json), unless force. `progress(step, steps, loss)` is called every
    10% of the steps, so a Dagster run log or a CLI shows the build moving. Default sizes: ~1.6M parameters
    (embed+head 2*4096*128 = 1.05M, each layer 4*128^2 attention + 3*128*512 MLP = 0.26M);
    300 steps of 16x256 tokens = 1.2M tokens, about a minute on 2 cores.
    """
    from .tokenizer import train_tokenizer

    out = Path(out_dir)
    params = dict(seed=seed, steps=steps, vocab_size=vocab_size, hidden_size=hidden_size,
                  num_layers=num_layers, num_heads=num_heads, block_size=block_size,
                  batch_size=batch_size, learning_rate=learning_rate)
    fingerprint = _build_fingerprint(params, texts)
    info_path = out / BUILD_INFO
    if not force and info_path.exists() and json.loads(info_path.read_text()).get("fingerprint") == fingerprint:
        return out

    start = time.perf_counter()
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    model = _tiny_phi3(len(tokenizer), tokenizer.eos_token_id, hidden_size, num_layers, num_heads, seed=seed)
    blocks, n_tokens = _token_blocks(texts, tokenizer, block_size)
    losses = _pretrain(model, blocks, steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                       progress=progress)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # transformers 5 always writes model.safetensors
    tokenizer.save_pretrained(out)
    info = dict(params, fingerprint=fingerprint, n_texts=len(texts), n_tokens=n_tokens,
                n_params=sum(p.numel() for p in model.parameters()), losses=losses,
                seconds=round(time.perf_counter() - start, 2))
    info_path.write_text(json.dumps(info, indent=1))
    return out


def _build_fingerprint(params: dict, texts: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for t in texts:
        digest.update(t.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _tiny_phi3(vocab_size: int, eos: int, hidden_size: int, num_layers: int, num_heads: int, *, seed: int):
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=1024,  # room for the tiny recipe's max_length and short generations
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        tie_word_embeddings=False,  # like Phi-4
    )
    torch.manual_seed(seed)
    return Phi3ForCausalLM(config)


def _token_blocks(texts: Sequence[str], tokenizer, block_size: int):
    """(the corpus packed into [n, block_size] token blocks, its token count). Document boundaries are
    the eos tokens already at the end of each rendered conversation."""
    import torch

    stream = [i for ids in tokenizer(list(texts))["input_ids"] for i in ids]
    while len(stream) < block_size + 1:
        stream = stream + stream
    n_blocks = len(stream) // block_size
    return torch.tensor(stream[: n_blocks * block_size]).view(n_blocks, block_size), len(stream)


def _pretrain(model, blocks, *, steps: int, batch_size: int, learning_rate: float, seed: int,
              progress: Callable[[int, int, float], None] | None) -> list[float]:
    """AdamW on random blocks, linear warmup over 10% of the steps then linear decay to 5%; the loss per step."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / max(1, steps))
    )
    model.train()
    losses: list[float] = []
    for step in range(steps):
        batch = blocks[torch.randint(0, len(blocks), (batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        if progress and ((step + 1) % max(1, steps // 10) == 0 or step + 1 == steps):
            progress(step + 1, steps, losses[-1])
    model.eval()
    return losses
