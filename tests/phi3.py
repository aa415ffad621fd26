"""Phi-3-faithful fixtures, built offline as ../shared/fixtures/README.md describes.

- `build_phi3_tokenizer(dir)`: the real Phi-3 tokenizer (Llama-2 SentencePiece + 11 added special tokens, Phi-3's
  chat template).
- `build_tiny_phi3(dir, scripted=...)`: a Phi3ForCausalLM with Phi-3's vocab size (32064 rows), special ids and
  generation_config, but hidden size 64 and 2 layers. With `scripted=True` its weights are set so that it is a bigram
  model that answers any Phi-3 prompt with "Hello world" and then `<|end|>` (32007): attention and MLP outputs are zero,
  so the next token depends only on the current token's embedding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
LLAMA2_MODEL = FIXTURES / "llama2-tokenizer.model"
MISSING_REASON = (f"Phi-3 fixture absent: {LLAMA2_MODEL} not found (see ../shared/fixtures/README.md; "
                  "a fresh clone without ../shared skips Phi-3-specific tests)")

PHI3_SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
                 "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
END_ID, ENDOFTEXT_ID, ASSISTANT_ID = 32007, 32000, 32001
NEWLINE_ID, HELLO_ID, WORLD_ID = 13, 10994, 3186  # <0x0A>, Hello, ▁world (as Phi-3 writes after "\n")


def fixture_available() -> bool:
    return LLAMA2_MODEL.is_file()


def build_phi3_tokenizer(folder: Path) -> Path:
    """Write Phi-3's tokenizer files into `folder` (AutoTokenizer converts them on load)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(LLAMA2_MODEL, folder / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": False, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>",
        "model_max_length": 4096, "chat_template": PHI3_CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(32000 + i): {"content": s, "special": True, "normalized": False, "lstrip": False,
                             "rstrip": False, "single_word": False}
            for i, s in enumerate(PHI3_SPECIALS)
        },
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return folder


def _script_bigram(model: torch.nn.Module) -> None:
    """Make the model a bigram chain: \\n → Hello → ▁world → <|end|>, and anything else → <|end|>."""
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 3] = 1.0  # every token: basis direction 3 (→ <|end|>)
        for src, axis in ((NEWLINE_ID, 0), (HELLO_ID, 1), (WORLD_ID, 2)):
            emb[src].zero_()
            emb[src, axis] = 1.0
        head = model.lm_head.weight
        head.zero_()
        for dst, axis in ((HELLO_ID, 0), (WORLD_ID, 1), (END_ID, 2), (END_ID, 3)):
            head[dst, axis] = 10.0 * hidden**0.5


def build_tiny_phi3(folder: Path, scripted: bool = False, seed: int = 0) -> Path:
    """Tokenizer + a tiny random (or scripted) Phi3ForCausalLM of Phi-3's vocabulary, saved to `folder`."""
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    build_phi3_tokenizer(folder)
    torch.manual_seed(seed)
    config = Phi3Config(
        vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=4096, sliding_window=2047, rope_theta=10000.0,
        bos_token_id=1, eos_token_id=ENDOFTEXT_ID, pad_token_id=ENDOFTEXT_ID, tie_word_embeddings=False,
    )
    model = Phi3ForCausalLM(config)
    if scripted:
        _script_bigram(model)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[32000, 32001, 32007],
                                               pad_token_id=ENDOFTEXT_ID)
    model.save_pretrained(folder)
    return folder
