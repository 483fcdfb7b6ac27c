"""Writes the config.json files of this directory with transformers 5 (save_pretrained), one per
family triad-convert imports with rope, and expected.json: the base, rotated share and scaling
transformers 5 computes from each file once loaded again (its standardized rope_parameters).
test_transformers5_configs.py checks that the import reads each file as the same model.

Not run by the tests (they read the files): regenerate with a transformers 5 installed,
    python tests/python/transformers5/make_configs.py
The files are transformers' output for the small models below; nothing else."""

import json
import sys
import tempfile
from pathlib import Path

import transformers as T

HERE = Path(__file__).resolve().parent
SMALL = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=128, max_position_embeddings=256)
GQA = dict(SMALL, num_key_value_heads=2)
MLA = dict(GQA, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
           topk_group=1, moe_intermediate_size=32, first_k_dense_replace=1, q_lora_rank=32,
           kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)


def rope(theta, **scaling):
    return {"rope_type": scaling.pop("rope_type", "default"), "rope_theta": theta, **scaling}


CONFIGS = {
    "llama": lambda: T.LlamaConfig(**GQA, rope_parameters=rope(
        5e5, rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64)),
    "llama_linear": lambda: T.LlamaConfig(**GQA, rope_parameters=rope(
        2e4, rope_type="linear", factor=4.0)),
    "qwen2_yarn": lambda: T.Qwen2Config(**GQA, rope_parameters=rope(
        1e6, rope_type="yarn", factor=4.0, original_max_position_embeddings=256)),
    "qwen3": lambda: T.Qwen3Config(**GQA, head_dim=16, rope_parameters=rope(1e6)),
    "qwen3_moe": lambda: T.Qwen3MoeConfig(**GQA, head_dim=16, rope_parameters=rope(1e6),
                                          num_experts=4, num_experts_per_tok=2,
                                          moe_intermediate_size=32),
    "mistral": lambda: T.MistralConfig(**GQA, rope_parameters=rope(1e6), sliding_window=None),
    "mixtral": lambda: T.MixtralConfig(**GQA, num_local_experts=4, num_experts_per_tok=2),
    "olmo2": lambda: T.Olmo2Config(**SMALL, rope_parameters=rope(5e5)),
    "granite": lambda: T.GraniteConfig(**GQA, rope_parameters=rope(3e5)),
    "olmo3": lambda: T.Olmo3Config(**dict(SMALL, num_hidden_layers=4), sliding_window=64,
                                   rope_parameters={
                                       "full_attention": rope(5e5, rope_type="yarn", factor=8.0,
                                                              original_max_position_embeddings=32),
                                       "sliding_attention": rope(5e5)}),
    "phi3": lambda: T.Phi3Config(**GQA, original_max_position_embeddings=64, rope_parameters=rope(
        1e4, rope_type="longrope", short_factor=[1.0] * 8, long_factor=[2.0] * 8)),
    "smollm3": lambda: T.SmolLM3Config(**dict(GQA, num_hidden_layers=4),
                                       rope_parameters=rope(5e6)),
    "gemma2": lambda: T.Gemma2Config(**GQA, head_dim=16, rope_parameters=rope(2e4)),
    "gemma3_text": lambda: T.Gemma3TextConfig(**GQA, head_dim=16, rope_parameters={
        "full_attention": rope(2e5, rope_type="linear", factor=8.0),
        "sliding_attention": rope(5e3)}),
    "gemma3": lambda: T.Gemma3Config(text_config=dict(**GQA, head_dim=16, rope_parameters={
        "full_attention": rope(2e5, rope_type="linear", factor=8.0),
        "sliding_attention": rope(5e3)})),
    "gpt_neox": lambda: T.GPTNeoXConfig(**SMALL, rope_parameters=rope(
        2e4, partial_rotary_factor=0.5)),
    "phi": lambda: T.PhiConfig(**SMALL, rope_parameters=rope(2e4, partial_rotary_factor=0.75)),
    "phi_default_share": lambda: T.PhiConfig(**SMALL),
    "stablelm": lambda: T.StableLmConfig(**GQA, rope_parameters=rope(
        2e4, partial_rotary_factor=0.5)),
    "nemotron": lambda: T.NemotronConfig(**GQA, rope_parameters=rope(
        2e4, partial_rotary_factor=0.25)),
    "glm": lambda: T.GlmConfig(**GQA, head_dim=16),
    "cohere": lambda: T.CohereConfig(**GQA),
    "cohere2": lambda: T.Cohere2Config(**dict(GQA, num_hidden_layers=4), sliding_window=64,
                                       rope_parameters=rope(5e4)),
    "starcoder2": lambda: T.Starcoder2Config(**GQA, rope_parameters=rope(1e5)),
    "falcon": lambda: T.FalconConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, new_decoder_architecture=True,
                                     num_kv_heads=2, rope_parameters=rope(2e4)),
    "dbrx": lambda: T.DbrxConfig(d_model=64, n_heads=4, n_layers=2, max_seq_len=256,
                                 vocab_size=128, attn_config={"kv_n_heads": 2},
                                 ffn_config={"ffn_hidden_size": 128, "moe_num_experts": 4,
                                             "moe_top_k": 2},
                                 rope_parameters=rope(5e5)),
    "deepseek_v3": lambda: T.DeepseekV3Config(**MLA, rope_parameters=rope(
        2e5, rope_type="yarn", factor=4.0, original_max_position_embeddings=64, beta_fast=32,
        beta_slow=1, mscale=1.0, mscale_all_dim=1.0)),
}


def computed(config) -> dict:
    """What transformers 5 computes with: the standardized rope parameters of the (text) model."""
    text = config.get_text_config()
    params = json.loads(json.dumps(text.rope_parameters))
    return {"rope_parameters": params}


def main() -> int:
    expected = {}
    for name, make in CONFIGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            make().save_pretrained(tmp)
            saved = json.loads((Path(tmp) / "config.json").read_text())
            again = T.AutoConfig.from_pretrained(tmp)
        saved.pop("transformers_version", None)
        (HERE / f"{name}.json").write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
        expected[name] = computed(again)
    expected["_transformers"] = T.__version__
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
