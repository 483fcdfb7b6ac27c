"""triad-convert import of DeepSeek-V2, DeepSeek-V3, Kimi K2 and MiniCPM3 Hugging Face models
(model_type deepseek_v2, deepseek_v3, kimi_k2, minicpm3) against a float64 PyTorch definition
of those models written here.

transformers 4.47, which the tests pin, has none of these classes, so the reference is this file's
`DeepSeek`: DeepSeek's modeling code as its files name the tensors (q_proj or q_a_proj,
q_a_layernorm, q_b_proj; kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj; o_proj; the experts,
shared_experts and gate with V3's e_score_correction_bias), each head's q as [nope | rope], the
rotated values as complex pairs (2i, 2i + 1), DeepSeek's YaRN (its ramp, cos and sin times
m(mscale) / m(mscale_all_dim), the scores times m(mscale_all_dim)²), V2's softmax routing with
routed_scaling_factor, V3's sigmoid scores chosen with their biases among the topk_group best
groups (a group scored by its two best keys), renormalized and scaled. A model with every tensor
random is written in those names; triad-train --eval-only of the import must give the
reference's validation loss. DeepSeek-V3's FP8 weights (e4m3 in blocks, 128 × 128 in its
release and 16 × 16 here, each with its weight_scale_inv) are dequantized with ml_dtypes' float8
type as the reference. MiniCPM3 (OpenBMB's modeling code, and transformers' later port) is
DeepSeek-V2's attention rotated in rotate-half pairs on dense blocks with its embedding, branch
and logit scalings and LongRoPE's divisors, which the reference adds. What triad does not
compute is refused with one line."""

import json
import math

import h5py
import numpy as np
import pytest

from triad_run import assert_clean_error, exe, run, tiny_config, tool, train

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

V, SEQ, SEQUENCES = 512, 32, 16


def v2_config(**changes):
    """DeepSeek-V2-Lite's shape in small: no query latent, YaRN with V2's mscales, softmax routing
    over 8 experts (3 per token) scaled by 2, 2 shared experts, one dense layer first."""
    cfg = dict(model_type="deepseek_v2", architectures=["DeepseekV2ForCausalLM"],
               vocab_size=V, hidden_size=64, intermediate_size=96, moe_intermediate_size=16,
               num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
               n_shared_experts=2, n_routed_experts=8, routed_scaling_factor=2.0,
               kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=8, v_head_dim=24,
               qk_nope_head_dim=16, topk_method="greedy", n_group=1, topk_group=1,
               num_experts_per_tok=3, moe_layer_freq=1, first_k_dense_replace=1,
               norm_topk_prob=False, scoring_func="softmax", hidden_act="silu",
               max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
               rope_scaling=dict(type="yarn", factor=4, original_max_position_embeddings=64,
                                 beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=0.707),
               tie_word_embeddings=False, attention_bias=False)
    cfg.update(changes)
    return cfg


def v3_config(**changes):
    """DeepSeek-V3's shape in small: a query latent, YaRN with V3's mscales, sigmoid scores over
    8 experts in 4 groups (the best 2 searched, 2 experts per token), renormalized and times 2.5,
    one shared expert, one multi-token prediction layer in the files."""
    cfg = v2_config(model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"],
                    q_lora_rank=32, n_shared_experts=1, routed_scaling_factor=2.5,
                    n_group=4, topk_group=2, num_experts_per_tok=2, norm_topk_prob=True,
                    scoring_func="sigmoid", topk_method="noaux_tc", num_nextn_predict_layers=1,
                    rope_scaling=dict(type="yarn", factor=4, original_max_position_embeddings=64,
                                      beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0))
    cfg.update(changes)
    return cfg


def random_tensors(cfg, seed=5):
    """Every tensor of a DeepSeek model with cfg's shapes, random (norm weights near 1, V3's
    router biases small), in its Hugging Face names, float32; with cfg's multi-token prediction
    layers (V3's num_nextn_predict_layers), each with its enorm, hnorm, eh_proj, shared_head.norm
    and its copies of the embedding and the head, as DeepSeek-V3's release holds them."""
    g = torch.Generator().manual_seed(seed)
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    dn, dr, dv, r = (cfg[k] for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                                      "kv_lora_rank"))
    rq, E, F = cfg["q_lora_rank"], cfg["n_routed_experts"], cfg["moe_intermediate_size"]
    t = {}

    def mat(name, rows, cols, scale=None):
        t[name] = torch.randn(rows, cols, generator=g) * (scale or 1.5 / math.sqrt(cols))

    def norm(name, n):
        t[name] = 1 + 0.3 * torch.randn(n, generator=g)

    mat("model.embed_tokens.weight", V, C, 1.0)
    for i in range(cfg["num_hidden_layers"] + cfg.get("num_nextn_predict_layers", 0)):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        norm(p + "input_layernorm.weight", C)
        norm(p + "post_attention_layernorm.weight", C)
        if rq:
            mat(a + "q_a_proj.weight", rq, C)
            norm(a + "q_a_layernorm.weight", rq)
            mat(a + "q_b_proj.weight", H * (dn + dr), rq)
        else:
            mat(a + "q_proj.weight", H * (dn + dr), C)
        mat(a + "kv_a_proj_with_mqa.weight", r + dr, C)
        norm(a + "kv_a_layernorm.weight", r)
        mat(a + "kv_b_proj.weight", H * (dn + dv), r)
        mat(a + "o_proj.weight", C, H * dv)
        m = p + "mlp."
        if i < cfg["first_k_dense_replace"]:
            mat(m + "gate_proj.weight", cfg["intermediate_size"], C)
            mat(m + "up_proj.weight", cfg["intermediate_size"], C)
            mat(m + "down_proj.weight", C, cfg["intermediate_size"])
            continue
        mat(m + "gate.weight", E, C, 2.0 / math.sqrt(C))
        if cfg["model_type"] != "deepseek_v2":  # V3 and Kimi K2
            t[m + "gate.e_score_correction_bias"] = 0.1 * torch.randn(E, generator=g)
        for e in range(E):
            mat(m + f"experts.{e}.gate_proj.weight", F, C)
            mat(m + f"experts.{e}.up_proj.weight", F, C)
            mat(m + f"experts.{e}.down_proj.weight", C, F)
        S = F * cfg["n_shared_experts"]
        if S:
            mat(m + "shared_experts.gate_proj.weight", S, C)
            mat(m + "shared_experts.up_proj.weight", S, C)
            mat(m + "shared_experts.down_proj.weight", C, S)
    norm("model.norm.weight", C)
    if not cfg["tie_word_embeddings"]:
        mat("lm_head.weight", V, C)
    head = "model.embed_tokens.weight" if cfg["tie_word_embeddings"] else "lm_head.weight"
    for i in range(cfg["num_hidden_layers"],
                   cfg["num_hidden_layers"] + cfg.get("num_nextn_predict_layers", 0)):
        p = f"model.layers.{i}."
        norm(p + "enorm.weight", C)
        norm(p + "hnorm.weight", C)
        mat(p + "eh_proj.weight", C, 2 * C)
        norm(p + "shared_head.norm.weight", C)
        t[p + "embed_tokens.weight"] = t["model.embed_tokens.weight"].clone()
        t[p + "shared_head.head.weight"] = t[head].clone()
    return t


def yarn_m(factor, mscale):
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


class DeepSeek:
    """DeepSeek-V2's and V3's forward pass in float64 on Hugging Face's tensors and config."""

    def __init__(self, cfg, tensors):
        self.c = cfg
        self.t = {k: v.double() for k, v in tensors.items()}
        dr, base = cfg["qk_rope_head_dim"], cfg["rope_theta"]
        freq = 1.0 / base ** (torch.arange(0, dr, 2, dtype=torch.float64) / dr)
        self.cos_sin_scale, self.score_mult = 1.0, 1.0
        r = cfg.get("rope_scaling")
        if r and r["type"] == "longrope":  # MiniCPM3's, unstretched: each pair's short factor
            freq = freq / torch.tensor(r["short_factor"], dtype=torch.float64)
        elif r:  # DeepSeek's YaRN: interpolated below the ramp, extrapolated above it
            factor, orig = r["factor"], r["original_max_position_embeddings"]

            def dim_at(turns):
                return dr * math.log(orig / (turns * 2 * math.pi)) / (2 * math.log(base))

            low = max(math.floor(dim_at(r["beta_fast"])), 0)
            high = min(math.ceil(dim_at(r["beta_slow"])), dr - 1)
            ramp = ((torch.arange(dr // 2, dtype=torch.float64) - low) /
                    (high - low if high != low else 0.001)).clamp(0, 1)
            freq = freq / factor * ramp + freq * (1 - ramp)
            self.cos_sin_scale = yarn_m(factor, r["mscale"]) / yarn_m(factor, r["mscale_all_dim"])
            if r["mscale_all_dim"]:
                self.score_mult = yarn_m(factor, r["mscale_all_dim"]) ** 2
        self.freq = freq

    def rms(self, x, name, eps=None):
        eps = self.c["rms_norm_eps"] if eps is None else eps
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.t[name]

    def lin(self, x, name):
        return x @ self.t[name].T

    def rotate(self, x):
        """x [..., T, dr] rotated by position: pairs (2i, 2i + 1) as complex numbers (rotate-half
        pairs (i, i + dr/2) where rope_interleave is false)."""
        T = x.shape[-2]
        angle = torch.arange(T, dtype=torch.float64)[:, None] * self.freq[None, :]
        if self.c.get("rope_interleave", True):
            z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
            z = z * torch.polar(torch.full_like(angle, self.cos_sin_scale), angle)
            return torch.view_as_real(z).flatten(-2)
        cos = torch.cat([angle.cos(), angle.cos()], -1) * self.cos_sin_scale
        sin = torch.cat([angle.sin(), angle.sin()], -1) * self.cos_sin_scale
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    def attention(self, x, a):
        c = self.c
        B, T, _ = x.shape
        H, dn, dr, dv, r = (c[k] for k in ("num_attention_heads", "qk_nope_head_dim",
                                           "qk_rope_head_dim", "v_head_dim", "kv_lora_rank"))
        if c["q_lora_rank"]:
            # (the latent norms: DeepSeek's RMSNorm's default epsilon, whatever rms_norm_eps)
            q = self.lin(self.rms(self.lin(x, a + "q_a_proj.weight"), a + "q_a_layernorm.weight",
                                  1e-6), a + "q_b_proj.weight")
        else:
            q = self.lin(x, a + "q_proj.weight")
        q = q.view(B, T, H, dn + dr).transpose(1, 2)
        q_nope, q_rope = q.split([dn, dr], -1)
        latent, k_rope = self.lin(x, a + "kv_a_proj_with_mqa.weight").split([r, dr], -1)
        kv = self.lin(self.rms(latent, a + "kv_a_layernorm.weight", 1e-6), a + "kv_b_proj.weight")
        k_nope, v = kv.view(B, T, H, dn + dv).transpose(1, 2).split([dn, dv], -1)
        q = torch.cat([q_nope, self.rotate(q_rope)], -1)
        k = torch.cat([k_nope, self.rotate(k_rope)[:, None].expand(B, H, T, dr)], -1)
        scores = q @ k.transpose(-1, -2) * (dn + dr) ** -0.5 * self.score_mult
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * dv)
        return self.lin(out, a + "o_proj.weight")

    def mlp(self, x, m):
        return self.lin(torch.nn.functional.silu(self.lin(x, m + "gate_proj.weight")) *
                        self.lin(x, m + "up_proj.weight"), m + "down_proj.weight")

    def moe(self, x, m):
        c = self.c
        E, k = c["n_routed_experts"], c["num_experts_per_tok"]
        rows = x.reshape(-1, x.shape[-1])
        logits = self.lin(rows, m + "gate.weight")
        if c["model_type"] == "deepseek_v2":
            scores = logits.softmax(-1)
            if c["topk_method"] == "group_limited_greedy":  # the groups scored by their best
                G = c["n_group"]
                group = scores.view(-1, G, E // G).max(-1).values
                chosen = torch.zeros_like(group).scatter_(
                    1, group.topk(c["topk_group"], -1).indices, 1)
                allowed = chosen[:, :, None].expand(-1, G, E // G).reshape(-1, E).bool()
                scores = scores.masked_fill(~allowed, 0.0)  # (positive where allowed)
            weight, index = scores.topk(k, -1)
            weight = weight * c["routed_scaling_factor"]
        else:
            scores = logits.sigmoid()
            keys = scores + self.t[m + "gate.e_score_correction_bias"]
            G = c["n_group"]
            group = keys.view(-1, G, E // G).topk(2, -1).values.sum(-1)
            chosen = torch.zeros_like(group).scatter_(1, group.topk(c["topk_group"], -1).indices,
                                                      1)
            allowed = chosen[:, :, None].expand(-1, G, E // G).reshape(-1, E).bool()
            index = keys.masked_fill(~allowed, float("-inf")).topk(k, -1).indices
            weight = scores.gather(1, index)
            if c["norm_topk_prob"]:
                weight = weight / (weight.sum(-1, keepdim=True) + 1e-20)
            weight = weight * c["routed_scaling_factor"]
        out = torch.zeros_like(rows)
        for e in range(E):
            row, slot = torch.where(index == e)
            if len(row):
                out.index_add_(0, row, self.mlp(rows[row], m + f"experts.{e}.") *
                               weight[row, slot, None])
        if c["n_shared_experts"]:
            out = out + self.mlp(rows, m + "shared_experts.")
        return out.view(x.shape)

    def block(self, x, i, branch=1):
        """Decoder layer i (model.layers.{i}: a multi-token prediction layer's too) on x."""
        p = f"model.layers.{i}."
        x = x + branch * self.attention(self.rms(x, p + "input_layernorm.weight"),
                                        p + "self_attn.")
        h = self.rms(x, p + "post_attention_layernorm.weight")
        dense = i < self.c["first_k_dense_replace"]
        return x + branch * (self.mlp(h, p + "mlp.") if dense else self.moe(h, p + "mlp."))

    def hidden(self, ids):
        """The final norm's output, what the head reads."""
        c, L = self.c, self.c["num_hidden_layers"]
        # MiniCPM3's scalings (absent in DeepSeek's: 1)
        x = self.t["model.embed_tokens.weight"][ids] * c.get("scale_emb", 1)
        branch = c["scale_depth"] / math.sqrt(L) if "scale_depth" in c else 1
        for i in range(L):
            x = self.block(x, i, branch)
        return self.rms(x, "model.norm.weight")

    def logits(self, ids):
        c = self.c
        head = "model.embed_tokens.weight" if c["tie_word_embeddings"] else "lm_head.weight"
        x = self.hidden(ids)
        return self.lin(x / (c["hidden_size"] / c["dim_model_base"]) if "dim_model_base" in c
                        else x, head)

    def prediction_logits(self, ids):
        """Each multi-token prediction layer's logits [B, T - 1 - j, V] (layer j at row t
        predicting token t + j + 2), as DeepSeek-V3's serving code computes them with the
        layer's own tensors (vLLM's DeepSeekMultiTokenPredictorLayer): the embedding of token
        t + j + 1 and the previous hidden state (the final norm's output, then layer j − 1's
        shared_head.norm output), each RMS-normed (enorm, hnorm), concatenated in that order
        through eh_proj, one decoder layer, shared_head.norm, shared_head.head."""
        c, L = self.c, self.c["num_hidden_layers"]
        h, out = self.hidden(ids), []
        for j in range(c.get("num_nextn_predict_layers", 0)):
            p = f"model.layers.{L + j}."
            h = h[:, :-1]  # rows whose token t + j + 1 exists
            e = self.t[p + "embed_tokens.weight"][ids[:, j + 1:]]
            x = self.lin(torch.cat([self.rms(e, p + "enorm.weight"),
                                    self.rms(h, p + "hnorm.weight")], -1), p + "eh_proj.weight")
            h = self.rms(self.block(x, L + j), p + "shared_head.norm.weight")
            out.append(self.lin(h, p + "shared_head.head.weight"))
        return out


def write_hf(directory, cfg, tensors):
    from safetensors.torch import save_file
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, directory / "model.safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("deepseek")
    cfg = tiny_config(d, name="ds", vocab=V, model__seq_len=SEQ, eval__sequences=SEQUENCES)
    return d, cfg


def reference_loss(d, cfg, tensors):
    tokens = np.fromfile(d / "data" / "val_000.bin", dtype="<u2", offset=1024).astype(np.int64)
    x = torch.from_numpy(np.stack([tokens[k * SEQ:(k + 1) * SEQ] for k in range(SEQUENCES)]))
    y = torch.from_numpy(np.stack([tokens[k * SEQ + 1:(k + 1) * SEQ + 1]
                                   for k in range(SEQUENCES)]))
    with torch.no_grad():
        logits = DeepSeek(cfg, tensors).logits(x)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).item()


def decodes_as_reference(cfg, tensors, out, prompt, length):
    """triad-generate's greedy continuation of prompt from checkpoint out is the reference's."""
    model, ids = DeepSeek(cfg, tensors), list(prompt)
    with torch.no_grad():
        for _ in range(length):
            ids.append(int(model.logits(torch.tensor([ids]))[0, -1].argmax()))
    p = run([exe("triad-generate"), "--checkpoint", out, "--prompt-ids",
             " ".join(map(str, prompt)), "--length", str(length), "--top-k", "1", "--output",
             "ids"], check=True)
    assert [int(t) for t in p.stdout.split()] == ids[len(prompt):]


def imports_and_evaluates(data, tmp_path, cfg, reference, kind, note=""):
    """The HF model written in tmp_path/hf imported and evaluated by triad-train: its validation
    loss is the float64 reference's on cfg and `reference` (FP8's dequantized tensors). Returns
    the checkpoint."""
    d, run_cfg = data
    out = tmp_path / "ds.h5"
    p = tool("triad-convert", "import", tmp_path / "hf", out, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    assert f"Hugging Face {kind} model" in p.stdout and note in p.stdout, p.stdout
    want = reference_loss(d, cfg, reference)
    p = train("--config", run_cfg, "--eval-only", "--init-from", out, "--model-from", out,
              check=True)
    loss = float(p.stdout.split("val loss")[1].split()[0])
    assert abs(loss - want) <= 1e-5 * want, (loss, want)
    return out


@pytest.mark.parametrize("changes", [
    {}, dict(tie_word_embeddings=True),
    dict(topk_method="group_limited_greedy", n_group=4, topk_group=2),
    dict(rope_scaling=dict(type="yarn", factor=4, original_max_position_embeddings=64,
                           mscale=0, mscale_all_dim=1))],
    ids=["v2-lite", "tied", "groups", "mscale-0"])
def test_deepseek_v2_imports_and_evaluates_as_its_definition(data, tmp_path, changes):
    """V2-Lite's blocks: q from the token, softmax routing scaled by 2, DeepSeek's YaRN scaling
    the whole score (V2-Lite's mscale_all_dim 0.707: times m(0.707)² at factor 4); with a tied
    head; with the full V2's group-limited routing (2 of 4 groups, each scored by its best
    expert); with mscale 0 (cos and sin divided by m(1)) and β_fast, β_slow left to their
    defaults."""
    cfg = v2_config(**changes)
    if "mscale" in changes.get("rope_scaling", {}):  # the reference reads every key
        cfg["rope_scaling"].update(beta_fast=32, beta_slow=1)
        written = v2_config(**changes)
    else:
        written = cfg
    tensors = random_tensors(cfg)
    write_hf(tmp_path / "hf", written, tensors)
    out = imports_and_evaluates(data, tmp_path, cfg, tensors, "DeepSeek-V2")
    if changes:
        return
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (int(a["kv_lora_rank"]), int(a["q_lora_rank"]), int(a["qk_nope_head_dim"]),
                int(a["qk_rope_head_dim"]), int(a["v_head_dim"])) == (32, 0, 16, 8, 24)
        assert (int(a["moe_experts"]), int(a["moe_top_k"]), int(a["moe_normalize"]),
                int(a["moe_first_dense"]), int(a["moe_shared_hidden"]),
                int(a["moe_dense_hidden"]), int(a["mlp_hidden"])) == (8, 3, 0, 1, 32, 96, 16)
        assert float(a["moe_routed_scale"]) == 2.0 and "moe_score" not in a
        assert (float(a["rope_yarn_mscale"]), float(a["rope_yarn_mscale_all_dim"])) == \
            (0.707, 0.707)
        assert "router_bias" not in f


@pytest.mark.parametrize("interleave", [True, False], ids=["interleaved", "rotate-half"])
def test_deepseek_v3_imports_and_evaluates_as_its_definition(data, tmp_path, interleave):
    """V3's blocks: a query latent, sigmoid scores chosen with the routers' biases in the 2 best
    of 4 groups, renormalized and times 2.5 (those two keys left out of the file: they are
    DeepseekV3Config's defaults); its multi-token prediction layer imported as a module, which
    evaluation and generation leave aside; the rotated rows interleaved (DeepSeek's files) or not
    (rope_interleave false)."""
    cfg = v3_config(**({} if interleave else {"rope_interleave": False}))
    tensors = random_tensors(cfg)
    written = {k: v for k, v in cfg.items() if k not in ("routed_scaling_factor",
                                                         "norm_topk_prob")}
    write_hf(tmp_path / "hf", written, tensors)
    out = imports_and_evaluates(data, tmp_path, cfg, tensors, "DeepSeek-V3",
                                "1 multi-token prediction layer(s) after layer 2 as the modules")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (a["moe_score"].decode() if isinstance(a["moe_score"], bytes) else a["moe_score"]) \
            == "sigmoid"
        assert (int(a["moe_groups"]), int(a["moe_group_top_k"]), int(a["moe_normalize"]),
                float(a["moe_routed_scale"])) == (4, 2, 1, 2.5)
        for i in (1, 2):  # the biases as they are, bit for bit
            want = tensors[f"model.layers.{i}.mlp.gate.e_score_correction_bias"].numpy()
            assert np.array_equal(f[f"router_bias/h/{i}"][()], want)
    p = tool("triad-ckpt", out)
    assert p.returncode == 0 and "status: OK" in p.stdout, p.stdout + p.stderr
    # greedy decoding (the key/value cache, the routers' biases loaded) as the reference's
    decodes_as_reference(cfg, tensors, out, [1, 2, 3, 4], 8)


def first_step_batch(d, run_cfg):
    """The sequences of triad-train's first step on the data fixture's shards in order
    (data.shuffle false): its batch_size windows of SEQ + 1 tokens from train_000's start."""
    B = int(run_cfg_value(run_cfg, "batch_size"))
    tokens = np.fromfile(d / "data" / "train_000.bin", dtype="<u2", offset=1024).astype(np.int64)
    x = torch.from_numpy(np.stack([tokens[k * SEQ:(k + 1) * SEQ] for k in range(B)]))
    y = torch.from_numpy(np.stack([tokens[k * SEQ + 1:(k + 1) * SEQ + 1] for k in range(B)]))
    return x, y


def run_cfg_value(run_cfg, key):
    return next(line.split("=")[1].strip() for line in open(run_cfg)
                if line.split("=")[0].strip() == key)


@pytest.mark.parametrize("layers", [1, 2])
def test_deepseek_v3_prediction_layers_train_as_their_definition(data, tmp_path, layers):
    """DeepSeek-V3's multi-token prediction layers (num_nextn_predict_layers; its release has
    one, after layer 60, with experts) imported as triad's modules: the first step of training
    from the import logs the reference's main loss and the prediction layers' mean loss (each
    layer's mean cross-entropy over the tokens it predicts, averaged over the layers; the chain
    of two as Megatron-Core runs it, each layer reading the one before's normed output); greedy
    generation drafting with the first layer (--draft mtp: its latent attention and experts
    decoding) gives the reference's tokens and keeps as many drafts as the reference's layer
    predicts; and the model exported back holds the layers again: its files are the import's,
    bit for bit."""
    from safetensors.torch import load_file
    d, run_cfg = data
    cfg = v3_config(num_nextn_predict_layers=layers)
    tensors = random_tensors(cfg, seed=11)
    write_hf(tmp_path / "hf", cfg, tensors)
    out = tmp_path / "ds.h5"
    p = tool("triad-convert", "import", tmp_path / "hf", out, "--seq-len", SEQ)
    assert p.returncode == 0 and f"(model.mtp_depth = {layers}" in p.stdout, p.stdout + p.stderr
    with h5py.File(out, "r") as f:
        assert int(f["model"].attrs["mtp_depth"]) == layers
        assert np.array_equal(f["router_bias/mtp/0"][()], tensors[
            "model.layers.3.mlp.gate.e_score_correction_bias"].numpy())
    assert tool("triad-ckpt", out).returncode == 0
    name = f"mtp{layers}"
    train("--config", run_cfg, "--init-from", out, "--model-from", out, "--train.steps", "1",
          "--data.shuffle", "false", "--run.name", name, "--checkpoint.every", "0",
          "--eval.every", "0", "--train.mtp_loss_weight", "0.3", check=True)
    with h5py.File(d / "runs" / name / "metrics.h5", "r") as f:
        loss, mtp_loss = float(f["train/loss"][0]), float(f["train/mtp_loss"][0])
    x, y = first_step_batch(d, run_cfg)
    model = DeepSeek(cfg, tensors)
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model.logits(x).reshape(-1, V),
                                                 y.reshape(-1)).item()
        per_layer = [torch.nn.functional.cross_entropy(
            z.reshape(-1, V), y[:, j + 1:].reshape(-1)).item()
            for j, z in enumerate(model.prediction_logits(x))]
    # (triad's mean over all the layers' targets: the layers' counts differ by B per layer)
    counts = [x.shape[0] * (SEQ - 1 - j) for j in range(layers)]
    want_mtp = sum(c * v for c, v in zip(counts, per_layer)) / sum(counts)
    assert abs(loss - want) <= 1e-5 * want, (loss, want)
    assert abs(mtp_loss - want_mtp) <= 1e-5 * want_mtp, (mtp_loss, want_mtp, per_layer)
    # Drafting with the first prediction layer (triad-generate --draft mtp, greedy): the
    # reference's continuation, and as many drafts kept as its layer gets right, round by round.
    prompt, length = [5, 6, 7, 8], 12
    full = list(prompt)
    with torch.no_grad():
        for _ in range(length):
            full.append(int(model.logits(torch.tensor([full]))[0, -1].argmax()))
        L, rounds, good = len(prompt) + 1, 0, 0
        while length - (L - len(prompt)) >= 2:
            rounds += 1
            draft = int(model.prediction_logits(torch.tensor([full[:L]]))[0][0, L - 2].argmax())
            good, L = (good + 1, L + 2) if draft == full[L] else (good, L + 1)
    p = run([exe("triad-generate"), "--checkpoint", out, "--prompt-ids",
             " ".join(map(str, prompt)), "--length", str(length), "--top-k", "1", "--output",
             "ids", "--draft", "mtp", "--timing"], check=True)
    assert [int(t) for t in p.stdout.split()] == full[len(prompt):]
    assert f"{good} of {rounds} drafted tokens kept" in p.stderr, (p.stderr, good, rounds)
    p = tool("triad-convert", "export", out, tmp_path / "back", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0 and "as the prediction layers after layer 2" in p.stdout, \
        p.stdout + p.stderr
    assert json.loads((tmp_path / "back" / "config.json").read_text())[
        "num_nextn_predict_layers"] == layers
    again = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(again) == sorted(tensors)
    for k, v in tensors.items():
        assert torch.equal(again[k], v), k


def test_prediction_layers_own_embedding_or_head_is_refused(data, tmp_path):
    """A prediction layer's copy of the embedding (or the head) that is not the model's: triad's
    modules read the model's own, so the import is refused by name, and nothing is written."""
    cfg = v3_config()
    for copy in ("embed_tokens", "shared_head.head"):
        tensors = random_tensors(cfg)
        tensors[f"model.layers.3.{copy}.weight"][7, 3] += 0.5
        write_hf(tmp_path / copy, cfg, tensors)
        out = tmp_path / f"{copy}.h5"
        p = tool("triad-convert", "import", tmp_path / copy, out, "--seq-len", SEQ)
        assert_clean_error(p, f"tensor model.layers.3.{copy}.weight differs from",
                           "the model's own embedding and head")
        assert not out.exists()


def test_other_norms_epsilon_keeps_the_latent_norms_at_deepseeks(data, tmp_path):
    """rms_norm_eps 0.05: DeepSeek's code gives every norm that epsilon but the latent ones
    (q_a_layernorm, kv_a_layernorm: 1e-6), which the import keeps as model.mla_norm_eps; large
    enough that the loss would move past the tolerance were the latent norms given 0.05. A config
    giving them another epsilon is refused, and so is a file whose attribute is out of range. The export writes rms_norm_eps back and the tensors
    bit for bit."""
    from safetensors.torch import load_file
    cfg = v3_config(rms_norm_eps=0.05, num_nextn_predict_layers=0)
    tensors = random_tensors(cfg)
    write_hf(tmp_path / "hf", cfg, tensors)
    out = imports_and_evaluates(data, tmp_path, cfg, tensors, "DeepSeek-V3")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (float(a["norm_eps"]), float(a["mla_norm_eps"])) == (0.05, 1e-6)
    # The config must give the latent norms that epsilon (0: norm_eps's 0.05 here).
    d, run_cfg = data
    p = train("--config", run_cfg, "--eval-only", "--init-from", out, "--model-from", out,
              "--model.mla_norm_eps", "0")
    assert_clean_error(p, "latent norms' epsilon is 1e-06",
                       "model.mla_norm_eps = 0 (0: model.norm_eps)")
    # A damaged attribute: one error naming it, the file left as it was.
    bad = tmp_path / "bad.h5"
    bad.write_bytes(out.read_bytes())
    with h5py.File(bad, "r+") as f:
        f["model"].attrs["mla_norm_eps"] = 0.5
    before = bad.read_bytes()
    p = train("--config", run_cfg, "--eval-only", "--init-from", bad, "--model-from", bad)
    assert_clean_error(p, "attribute mla_norm_eps of /model is 0.5", "not 0 or in (0, 0.1]")
    assert bad.read_bytes() == before
    p = tool("triad-convert", "export", out, tmp_path / "back", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "back" / "config.json").read_text())["rms_norm_eps"] == 0.05
    again = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(again) == sorted(tensors)
    for k, v in tensors.items():
        assert torch.equal(again[k], v), k


def minicpm3_config(**changes):
    """MiniCPM3-4B's shape in small: a query latent, DeepSeek-V2's attention rotated in
    rotate-half pairs, dense SwiGLU blocks, a tied head, MiniCPM's scalings (scale_emb 12,
    scale_depth 1.4, dim_model_base 16 of 64), rms_norm_eps 1e-5 beside the latent norms' 1e-6,
    and LongRoPE's short factors over an unstretched context (far from 1, so that the loss tells
    them: without them it moves by 2e-3)."""
    cfg = dict(model_type="minicpm3", architectures=["MiniCPM3ForCausalLM"], vocab_size=V,
               hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
               qk_rope_head_dim=8, v_head_dim=16, hidden_act="silu", max_position_embeddings=64,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, scale_emb=12,
               scale_depth=1.4, dim_model_base=16,
               rope_scaling=dict(type="longrope", short_factor=[0.25, 3.0, 9.0, 40.0],
                                 long_factor=[1.0, 1.6, 3.0, 5.5],
                                 original_max_position_embeddings=64))
    cfg.update(changes)
    return cfg


def test_minicpm3_imports_and_evaluates_as_its_definition(data, tmp_path):
    """MiniCPM3's blocks evaluate to the reference's loss within 1e-5 and decode greedily as it
    does; its scalings land in the model's attributes; the export refuses what DeepSeek's format
    lacks, and a context stretch is refused."""
    cfg = minicpm3_config()
    reference = dict(cfg, first_k_dense_replace=3, n_routed_experts=0, moe_intermediate_size=0,
                     rope_interleave=False)
    tensors = random_tensors(reference)
    write_hf(tmp_path / "hf", cfg, tensors)
    out = imports_and_evaluates(data, tmp_path, reference, tensors, "MiniCPM3")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (float(a.get("norm_eps", 1e-5)), float(a["mla_norm_eps"])) == (1e-5, 1e-6)
        assert float(a["embed_scale"]) == 12 and \
            float(a["residual_scale"]) == float(np.float32(1.4 / math.sqrt(3))) and \
            float(a["logit_scale"]) == 0.25
        assert list(a["rope_short_factor"]) == [0.25, 3.0, 9.0, 40.0]
    decodes_as_reference(reference, tensors, out, [9, 8, 7], 6)
    p = tool("triad-convert", "export", out, tmp_path / "back", "--to", "hf", "--vocab", "none")
    assert_clean_error(p, "DeepSeek-V2 or V3", "embed_scale")
    stretched = minicpm3_config(max_position_embeddings=128)
    write_hf(tmp_path / "hf2", stretched, tensors)
    p = tool("triad-convert", "import", tmp_path / "hf2", tmp_path / "s.h5", "--seq-len", SEQ)
    assert_clean_error(p, "config.json", "original_max_position_embeddings 64 is not "
                                         "max_position_embeddings 128")
    del cfg["scale_depth"]
    write_hf(tmp_path / "hf3", cfg, tensors)
    p = tool("triad-convert", "import", tmp_path / "hf3", tmp_path / "d.h5", "--seq-len", SEQ)
    assert_clean_error(p, "config.json", "needs scale_depth")


def test_minicpm3_query_latent_absent_is_both_classes_default():
    """A MiniCPM3 config.json without q_lora_rank reads as OpenBMB's and transformers' default
    (768), not as no query latent; null means queries straight from the token."""
    from analysis.weights_hf_import import hf_config_dims
    cfg = minicpm3_config()
    del cfg["q_lora_rank"]
    assert hf_config_dims(cfg, "config.json", SEQ).q_lora_rank == 768
    assert hf_config_dims(minicpm3_config(q_lora_rank=None), "config.json", SEQ).q_lora_rank == 0


def kimi_k2_config(**changes):
    """Kimi K2's shape in small: V3's blocks under its own model_type, 384 experts in one group
    (8 a token, times 2.827, renormalized), YaRN with beta_fast = beta_slow = 1 (its config's),
    no prediction layer."""
    cfg = v3_config(model_type="kimi_k2", n_routed_experts=384, num_experts_per_tok=8,
                    n_group=1, topk_group=1, routed_scaling_factor=2.827,
                    moe_intermediate_size=8, num_nextn_predict_layers=0,
                    rope_scaling=dict(type="yarn", factor=4, original_max_position_embeddings=64,
                                      beta_fast=1.0, beta_slow=1.0, mscale=1.0,
                                      mscale_all_dim=1.0))
    cfg.update(changes)
    return cfg


def test_kimi_k2_imports_evaluates_and_exports_as_deepseek_v3(data, tmp_path):
    """Kimi K2's 384 experts (above DeepSeek-V3's 256) and its YaRN, whose equal betas make the
    ramp a step: the loss and greedy decoding are the reference's; the export is DeepSeek-V3's
    config with the same tensors, bit for bit."""
    from safetensors.torch import load_file
    cfg = kimi_k2_config()
    tensors = random_tensors(cfg)
    write_hf(tmp_path / "hf", cfg, tensors)
    out = imports_and_evaluates(data, tmp_path, cfg, tensors, "Kimi K2")
    with h5py.File(out, "r") as f:
        a = f["model"].attrs
        assert (int(a["moe_experts"]), int(a["moe_top_k"]), float(a["moe_routed_scale"])) == \
            (384, 8, 2.827) and "moe_groups" not in a
        assert float(a["rope_yarn_beta_fast"]) == float(a["rope_yarn_beta_slow"]) == 1.0
    decodes_as_reference(cfg, tensors, out, [5, 6, 7], 6)
    p = tool("triad-convert", "export", out, tmp_path / "back", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (exported["model_type"], exported["n_routed_experts"], exported["n_group"]) == \
        ("deepseek_v3", 384, 1)
    assert exported["rope_scaling"]["beta_fast"] == exported["rope_scaling"]["beta_slow"] == 1
    again = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(again) == sorted(tensors)
    for k, v in tensors.items():
        assert torch.equal(again[k], v), k


def relabel_fp8(path, names):
    """Safetensors file `path` with tensors `names` (written as U8) marked F8_E4M3, the data
    unchanged."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    for name in names:
        assert header[name]["dtype"] == "U8"
        header[name]["dtype"] = "F8_E4M3"
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # (offsets count from the data's start: a longer header)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])


def test_deepseek_v3_fp8_weights_are_dequantized(data, tmp_path):
    """DeepSeek-V3's release format: its matrices FP8 e4m3 in blocks (here 16 × 16, the edge
    blocks partial), each block's weight_scale_inv beside them; the import multiplies them out,
    as ml_dtypes' float8 type decodes them."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    cfg = v3_config(num_nextn_predict_layers=0,
                    quantization_config=dict(quant_method="fp8", fmt="e4m3",
                                             activation_scheme="dynamic",
                                             weight_block_size=[16, 16]))
    tensors = random_tensors(cfg)
    stored, dequantized = {}, {}
    for name, w in tensors.items():
        if w.dim() != 2 or "embed_tokens" in name or "lm_head" in name or "gate.weight" in name:
            stored[name] = dequantized[name] = w
            continue
        rows, cols = w.shape
        blocks = w.new_zeros(-(-rows // 16), -(-cols // 16))
        q = np.zeros((rows, cols), dtype=ml_dtypes.float8_e4m3fn)
        for i in range(blocks.shape[0]):
            for j in range(blocks.shape[1]):
                part = w[16 * i:16 * i + 16, 16 * j:16 * j + 16]
                blocks[i, j] = part.abs().max() / 448.0
                q[16 * i:16 * i + 16, 16 * j:16 * j + 16] = (part / blocks[i, j]).numpy().astype(
                    ml_dtypes.float8_e4m3fn)
        stored[name] = torch.from_numpy(q.view(np.uint8).copy())
        stored[name + "_scale_inv"] = blocks
        dequantized[name] = torch.from_numpy(q.astype(np.float32)) * torch.repeat_interleave(
            torch.repeat_interleave(blocks, 16, 0), 16, 1)[:rows, :cols]
    # safetensors.torch has no float8 in torch 1.13: the bytes go in as U8 and are relabelled
    write_hf(tmp_path / "hf", cfg, stored)
    relabel_fp8(tmp_path / "hf" / "model.safetensors",
                [n for n in stored if n + "_scale_inv" in stored])
    imports_and_evaluates(data, tmp_path, cfg, dequantized, "DeepSeek-V3",
                          "FP8 weights dequantized to fp32 (blocks of [16, 16])")


@pytest.mark.parametrize("make,changes,message", [
    (v2_config, dict(topk_method="group_limited_greedy", n_group=3, topk_group=2),
     "n_group 3 with topk_group 2"),
    (v2_config, dict(norm_topk_prob=True), "norm_topk_prob true"),
    (v2_config, dict(moe_layer_freq=2), "moe_layer_freq 2"),
    (v2_config, dict(attention_bias=True), "attention_bias = true"),
    (v2_config, dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    (v2_config, dict(num_key_value_heads=2), "num_key_value_heads 2"),
    (v2_config, dict(qk_rope_head_dim=7), "every size even"),
    (v2_config, dict(rope_scaling=dict(type="linear", factor=2.0)), "rope type 'linear'"),
    (v2_config, dict(max_position_embeddings=512), "is not max_position_embeddings 512"),
    (v3_config, dict(scoring_func="softmax"), "scoring_func 'softmax'"),
    (v3_config, dict(n_group=3), "n_group 3"),
    (kimi_k2_config, dict(n_routed_experts=513),
     "n_routed_experts 513 (triad's model.moe_experts is in [1, 512])"),
    (v3_config, dict(quantization_config=dict(quant_method="gptq", bits=4)), "quantization_config"),
    (v3_config, dict(q_lora_rank=1.5), "q_lora_rank = 1.5 is not an integer"),
    (v3_config, dict(n_group=0), "n_group = 0 is not an integer >= 1"),
    (v3_config, dict(routed_scaling_factor="2.5"), "routed_scaling_factor = \"2.5\" is not a"),
    (v3_config, dict(norm_topk_prob="false"), "norm_topk_prob = \"false\" is not true or false"),
    (v3_config, dict(n_shared_experts=-1), "n_shared_experts = -1 is not an integer >= 0"),
    (v3_config, dict(first_k_dense_replace=-1), "first_k_dense_replace = -1 is not"),
    (v2_config, dict(moe_layer_freq=0), "moe_layer_freq 0"),
    (v3_config, dict(quantization_config=dict(quant_method="fp8", fmt="e4m3",
                                              weight_block_size=[16.5, 16])),
     "quantization_config"),
    (v3_config, dict(rope_scaling=dict(type="yarn", factor=4, beta_fast=0, beta_slow=1,
                                       original_max_position_embeddings=64)), "rope_scaling"),
    (v3_config, dict(rope_scaling=dict(type="yarn", factor=4, truncate=False,
                                       original_max_position_embeddings=64)),
     "truncate false: transformers before 4.55 ignore it"),
    (v3_config, dict(num_nextn_predict_layers=17),
     "num_nextn_predict_layers 17 (triad's model.mtp_depth is at most 16)"),
    (v3_config, dict(num_nextn_predict_layers=-1),
     "num_nextn_predict_layers = -1 is not an integer >= 0"),
], ids=["v2-groups", "v2-normalized", "layer-freq", "attention-bias", "gelu", "kv-heads",
        "odd-rope", "linear-rope", "yarn-factor", "v3-softmax", "v3-groups", "kimi-experts",
        "gptq", "count",
        "no-groups", "string-scale", "string-flag", "negative-shared",
        "negative-dense", "no-layer-freq", "float-block", "beta-0", "untruncated",
        "mtp-depth", "negative-mtp"])
def test_deepseek_models_triad_does_not_compute_are_refused(tmp_path, make, changes, message):
    cfg = make(**changes)
    good = make()
    write_hf(tmp_path / "hf", cfg, random_tensors(good))
    out = tmp_path / "ds.h5"
    p = tool("triad-convert", "import", tmp_path / "hf", out, "--seq-len", SEQ)
    assert_clean_error(p, "config.json", message)
    assert not out.exists()


def test_deepseek_tensors_missing_or_stray_are_refused(tmp_path):
    cfg = v3_config()
    tensors = random_tensors(cfg)
    out = tmp_path / "ds.h5"
    bias = "model.layers.2.mlp.gate.e_score_correction_bias"
    write_hf(tmp_path / "hf", cfg, {k: v for k, v in tensors.items() if k != bias})
    p = tool("triad-convert", "import", tmp_path / "hf", out, "--seq-len", SEQ)
    assert_clean_error(p, bias, "missing")
    # a layer past the model and its one prediction layer is no part of it
    stray = "model.layers.4.input_layernorm.weight"
    write_hf(tmp_path / "hf", cfg, {**tensors, stray: torch.ones(64)})
    p = tool("triad-convert", "import", tmp_path / "hf", out, "--seq-len", SEQ)
    assert_clean_error(p, stray, "not part of")
    # an FP8 scale beside a weight that is not FP8
    fp8 = v3_config(quantization_config=dict(quant_method="fp8", fmt="e4m3",
                                             weight_block_size=[16, 16]))
    scale = "model.layers.0.mlp.up_proj.weight_scale_inv"
    write_hf(tmp_path / "hf", fp8, {**tensors, scale: torch.ones(6, 4)})
    p = tool("triad-convert", "import", tmp_path / "hf", out, "--seq-len", SEQ)
    assert_clean_error(p, scale, "not an FP8 (F8_E4M3) weight")
    assert not out.exists()


@pytest.mark.parametrize("make", [
    v2_config, v3_config,
    lambda: v2_config(topk_method="group_limited_greedy", n_group=4, topk_group=2)],
    ids=["v2", "v3", "v2-groups"])
def test_deepseek_imports_export_back_bit_for_bit(data, tmp_path, make):
    """An import exported again (--to hf) holds the same tensors, bit for bit, under the same
    names (V3's prediction layer too), and its config.json reads back as the same model."""
    from safetensors.torch import load_file
    cfg = make()
    tensors = random_tensors(cfg)
    write_hf(tmp_path / "hf", cfg, tensors)
    out = tmp_path / "ds.h5"
    assert tool("triad-convert", "import", tmp_path / "hf", out, "--seq-len", SEQ).returncode == 0
    p = tool("triad-convert", "export", out, tmp_path / "back", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    again = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(again) == sorted(tensors)
    for k, v in tensors.items():
        assert torch.equal(again[k], v), k
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    for k in ("model_type", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
              "n_routed_experts", "num_experts_per_tok", "n_shared_experts",
              "first_k_dense_replace", "routed_scaling_factor", "n_group", "topk_group",
              "topk_method",
              "max_position_embeddings", "moe_intermediate_size", "intermediate_size",
              "rms_norm_eps"):
        assert exported[k] == cfg[k], (k, exported[k], cfg[k])
    assert exported["rope_scaling"].pop("rope_type") == "yarn"  # (both names of its type)
    assert exported["rope_scaling"] == cfg["rope_scaling"]
    assert exported["q_lora_rank"] == cfg["q_lora_rank"]
    assert bool(exported["norm_topk_prob"]) == cfg["norm_topk_prob"]
    again_ckpt = tmp_path / "again.h5"
    p = tool("triad-convert", "import", tmp_path / "back", again_ckpt, "--seq-len", SEQ)
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f, h5py.File(again_ckpt, "r") as g:
        assert dict(f["model"].attrs) == dict(g["model"].attrs)


def test_trained_latent_attention_model_exports_as_deepseek_v3(data, tmp_path):
    """A model triad trained (from an import with YaRN's mscale 1.5 and mscale_all_dim 1, for 3
    steps that move the routers' biases too) exported as DeepSeek-V3: the reference on the
    exported files gives triad's validation loss of the checkpoint."""
    from safetensors.torch import load_file
    d, run_cfg = data
    cfg = v3_config(rope_scaling=dict(type="yarn", factor=4, original_max_position_embeddings=64,
                                      beta_fast=32, beta_slow=1, mscale=1.5, mscale_all_dim=1.0))
    write_hf(tmp_path / "hf", cfg, random_tensors(cfg, seed=8))
    start = tmp_path / "ds.h5"
    assert tool("triad-convert", "import", tmp_path / "hf", start, "--seq-len",
                SEQ).returncode == 0
    train("--config", run_cfg, "--init-from", start, "--model-from", start,
          "--train.moe_bias_rate", "0.01", "--train.steps", "3", "--run.name", "mla",
          "--checkpoint.every", "3", check=True)
    ckpt = d / "runs" / "mla" / "ckpt" / "step_00000003.h5"
    p = tool("triad-convert", "export", ckpt, tmp_path / "back", "--to", "hf", "--vocab", "none")
    assert p.returncode == 0, p.stderr
    exported = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (exported["model_type"], exported["architectures"]) == \
        ("deepseek_v3", ["DeepseekV3ForCausalLM"])
    tensors = load_file(tmp_path / "back" / "model.safetensors")
    moved = tensors["model.layers.1.mlp.gate.e_score_correction_bias"] - \
        load_file(tmp_path / "hf" / "model.safetensors")[
            "model.layers.1.mlp.gate.e_score_correction_bias"]
    assert moved.abs().max() > 0.005
    want = reference_loss(d, exported, tensors)
    p = train("--config", run_cfg, "--eval-only", "--init-from", ckpt, "--model-from", ckpt,
              check=True)
    loss = float(p.stdout.split("val loss")[1].split()[0])
    assert abs(loss - want) <= 1e-5 * want, (loss, want)


def test_latent_attention_models_deepseek_does_not_hold_are_refused(data, tmp_path):
    """MLA beside an option DeepSeek's format lacks, with latent norms of another epsilon than
    DeepSeek's 1e-6 (model.norm_eps 1e-5 and no model.mla_norm_eps), or with softmax routing in
    groups (V2 scores a group by its best expert), is refused before anything is written."""
    d, run_cfg = data
    mla = ["--model.position", "rope", "--model.norm", "rmsnorm", "--model.mlp", "swiglu",
           "--model.bias", "false", "--model.kv_lora_rank", "32", "--model.qk_nope_head_dim", "16",
           "--model.qk_rope_head_dim", "8", "--model.v_head_dim", "16"]
    for name, extra, message in (
            ("capped", ["--model.logit_softcap", "30", "--model.norm_eps", "1e-6"],
             "logit_softcap = 30"),
            ("eps", [], "the model's latent norms use epsilon 1e-05"),
            ("grouped", ["--model.moe_experts", "4", "--model.moe_top_k", "2",
                         "--model.moe_groups", "2", "--model.moe_group_top_k", "1",
                         "--model.norm_eps", "1e-6"],
             "groups of experts")):
        train("--config", run_cfg, *mla, *extra, "--train.steps", "1", "--run.name", name,
              "--checkpoint.every", "1", check=True)
        out = tmp_path / name
        p = tool("triad-convert", "export", d / "runs" / name, out, "--to", "hf", "--vocab",
                 "none")
        assert_clean_error(p, {"capped": "multi-head latent attention", "eps": "latent norms"}
                           .get(name, "softmax"), message)
        assert not out.exists()
