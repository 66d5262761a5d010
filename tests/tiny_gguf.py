"""A tiny random-weight llama GGUF, written by the tests themselves.

Integration tests need a real llama.cpp server, and a real server needs a model file. We
cannot download one, and even the smallest published models are hundreds of megabytes, so
we write a ~0.5 MB llama-architecture model with the `gguf` package: 2 layers, 64-wide,
a byte-level SentencePiece-style vocabulary (`<unk>`, `<s>`, `</s>` and the 256 byte tokens
`<0x00>`..`<0xFF>`), random weights from a fixed seed. Every byte of a prompt is one token,
except that SentencePiece prefixes words with "▁" (3 bytes, so 3 tokens) and `<s>` is added.

Two things are rigged so that tests get predictable, readable output from random weights:

* Dimension 0 of every token embedding is a large constant, so after RMS norm it dominates
  the hidden state; column 0 of the output projection then acts as a per-token logit bias.
  That bias favours printable ASCII bytes and buries every other byte, so generated text is
  readable and almost never an invalid UTF-8 fragment (which llama-cpp-python would drop,
  leaving an empty completion).
* `</s>` gets a strongly negative bias, so generation runs until `max_tokens` or a `stop`
  string: `finish_reason` is "length" unless a test asks for "stop" with a stop string.

GGUF stores tensor dimensions innermost-first (reversed relative to numpy); `GGUFWriter`
reverses the numpy shape on write, so tensors here use PyTorch's `(out, in)` layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, PoolingType, TokenType

N_VOCAB = 259
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
CONTEXT_LENGTH = 512
HEAD_DIM = N_EMBD // N_HEAD

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_BYTE_ID = 3

# A plain ChatML-like template: readable in logs and free of model-specific tokens, which
# llama-cpp-python renders with Jinja (it is not one of its named built-in chat formats).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

_PRINTABLE_BIAS = 0.0
_UNPRINTABLE_BIAS = -2.0
_EOS_BIAS = -4.0


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{value:02X}>" for value in range(256)]
    scores = [0.0] * N_VOCAB
    types = [int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.CONTROL)]
    types += [int(TokenType.BYTE)] * 256
    return tokens, scores, types


def _logit_bias() -> np.ndarray:
    """Column 0 of the output projection: which tokens the model is steered towards."""
    bias = np.full(N_VOCAB, _UNPRINTABLE_BIAS, dtype=np.float32)
    bias[FIRST_BYTE_ID + 0x20 : FIRST_BYTE_ID + 0x7E + 1] = _PRINTABLE_BIAS
    bias[EOS_ID] = _EOS_BIAS
    return bias


def _tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def weights(rows: int, cols: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, size=(rows, cols)).astype(np.float32)

    def ones(size: int) -> np.ndarray:
        return np.ones(size, dtype=np.float32)

    token_embd = weights(N_VOCAB, N_EMBD, 0.1)
    token_embd[:, 0] = 1.0
    output = weights(N_VOCAB, N_EMBD, 0.2)
    output[:, 0] = _logit_bias()

    tensors = {"token_embd.weight": token_embd}
    kv_dim = N_HEAD_KV * HEAD_DIM
    for layer in range(N_LAYER):
        prefix = f"blk.{layer}"
        tensors |= {
            f"{prefix}.attn_norm.weight": ones(N_EMBD),
            f"{prefix}.attn_q.weight": weights(N_EMBD, N_EMBD, 0.05),
            f"{prefix}.attn_k.weight": weights(kv_dim, N_EMBD, 0.05),
            f"{prefix}.attn_v.weight": weights(kv_dim, N_EMBD, 0.05),
            f"{prefix}.attn_output.weight": weights(N_EMBD, N_EMBD, 0.05),
            f"{prefix}.ffn_norm.weight": ones(N_EMBD),
            f"{prefix}.ffn_gate.weight": weights(N_FF, N_EMBD, 0.05),
            f"{prefix}.ffn_up.weight": weights(N_FF, N_EMBD, 0.05),
            f"{prefix}.ffn_down.weight": weights(N_EMBD, N_FF, 0.05),
        }
    tensors["output_norm.weight"] = ones(N_EMBD)
    tensors["output.weight"] = output
    return tensors


def write_tiny_llama_gguf(
    path: Path,
    *,
    seed: int = 0,
    pooling: PoolingType | None = None,
    context_length: int = CONTEXT_LENGTH,
) -> Path:
    """Write the tiny model to `path` and return `path`.

    The same seed always yields the same bytes, so a failure seen once can be replayed.
    `pooling` (e.g. MEAN) makes an embedding model of it: an embedding-enabled server then
    answers one vector per input instead of one per token.
    """
    writer = GGUFWriter(path, "llama")
    writer.add_name("inferbus-tiny-llama")
    writer.add_file_type(LlamaFileType.ALL_F32)
    if pooling is not None:
        writer.add_pooling_type(pooling)
    writer.add_context_length(context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(N_VOCAB)

    tokens, scores, types = _vocabulary()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for name, tensor in _tensors(np.random.default_rng(seed)).items():
        writer.add_tensor(name, tensor)

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path
