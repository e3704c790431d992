"""Any transformers causal LM: the scoring engine equals plain forwards of the model on tiny
random models of many architectures: learned absolute positions (GPT-2, OPT), partial
rotary (GPT-NeoX, Phi, GPT-J), query/key norms (Qwen3, OLMo-2), sliding layers (Gemma-3),
multi-query (GPTBigCode), attention outside transformers' attention
interface (Falcon; attention methods read its output_attentions), ALiBi (Bloom, MPT: no shared prefix, plain rows), and heads whose logits
the model transforms (Cohere's logit_scale, Granite's logits_scaling, Gemma-2's
soft-capping, RecurrentGemma's logits_soft_cap); mixtures of experts (OLMoE, Mixtral,
Qwen3-MoE, gpt-oss with attention sinks); multi-head latent attention (DeepSeek-V3: keys and
values of different widths); chunked attention (Llama-4: plain rows past one chunk); layers
without positions (SmolLM3); recurrent
models (Mamba, and the hybrids Jamba, RecurrentGemma, Qwen3-Next, LFM2, Granite-4 (MoE
hybrid), Falcon-H1, Bamba and MiniMax: plain rows); Gemma-3n (layers sharing keys and
values); Doge (its own attention mask: no packed attention); and OLMo-3, Apertus, ERNIE-4.5,
Seed-OSS, GLM-4, GLM-4-MoE, Nemotron, Arcee, HunYuan, Exaone-4, PhiMoE, Qwen2-MoE, Helium,
GraniteMoE, BitNet, Zamba2 and LFM2-MoE as they come; vision-language models explained on text (Gemma-3, Llava, Qwen2-VL with
its multimodal RoPE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_tokenizer

from attrlens.errors import CapabilityError
from attrlens.models.hf import wrap_model
from attrlens.scoring.engine import ScoringEngine
from attrlens.solvers.sampling import loo_masks
from attrlens.text.mask import Masker
from attrlens.text.prompt import build_prompt
from attrlens.text.segment import segment

PROMPT = "The quick brown fox jumps over the lazy dog. Explain why the sky is blue"


def _gemma3n(tok) -> dict:
    return {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 512, "tie_word_embeddings": False,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "head_dim": 16, "sliding_window": 6,
            "hidden_size_per_layer_input": 8, "vocab_size_per_layer_input": len(tok),
            "num_kv_shared_layers": 2, "laurel_rank": 4, "altup_num_inputs": 2,
            "activation_sparsity_pattern": [0.0] * 4,
            "layer_types": ["sliding_attention", "full_attention"] * 2}


def _configs_latent_sparse_hybrid(tok, lm: dict, gqa: dict) -> dict:
    """Tiny configs of latent-attention, sparse-attention, hybrid and other newer models
    (session 14): multi-head latent attention with and without a sparse-attention indexer
    (DeepSeek-V2/V3.2, GLM-MoE-DSA, HY-V4, ...), gated-delta-net hybrids (Qwen3.5, Qwen4),
    DeepSeek-V4's compressed attention, layers run in loops (Dory), GPT-Neo's local
    attention, logit transforms (Inkling, xLSTM), multimodal Gemma-4 and Qwen3.5."""
    sp = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
          "bos_token_id": tok.bos_token_id}
    V = len(tok)
    no_ffn = {k: v for k, v in lm.items() if k != "intermediate_size"}
    # multi-head latent attention: keys 16 wide (8 rotary + 8 not), values 12
    mla = {**lm, "num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 16,
           "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 12}
    experts = {"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
               "n_group": 1, "topk_group": 1}
    # a sparse-attention indexer selecting 6 keys per query (16 heads: with 4, its ReLU'd
    # scores tie at 0 at the cut, which packed rows broke differently)
    dsa = {"index_topk": 6, "index_head_dim": 16, "index_n_heads": 16}
    gdn = {"layer_types": ["linear_attention", "full_attention"], "linear_num_key_heads": 2,
           "linear_num_value_heads": 4, "linear_key_head_dim": 16,
           "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4}
    shared = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
              "shared_expert_intermediate_size": 32}
    import transformers

    new_tf = int(transformers.__version__.split(".")[0]) >= 5
    # placeholder ids of images etc.: byte tokens that occur in no prompt or output here
    mm = tok.convert_tokens_to_ids(["\u0100", "\u0101", "\u0102", "\u0103"])
    g4text = {**gqa, "head_dim": 16, "global_head_dim": 16, "sliding_window": 6,
              "layer_types": ["sliding_attention", "full_attention"]}
    return {
        "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                        {**mla, **experts, "first_k_dense_replace": 1}),
        "deepseek_v32": ("DeepseekV32Config", "DeepseekV32ForCausalLM",
                         {**mla, **experts, **dsa, "first_k_dense_replace": 1}),
        "glm4_moe_lite": ("Glm4MoeLiteConfig", "Glm4MoeLiteForCausalLM", {**mla, **experts}),
        "glm_moe_dsa": ("GlmMoeDsaConfig", "GlmMoeDsaForCausalLM",
                        {**mla, **experts, **dsa, "first_k_dense_replace": 1}),
        "minicpm3": ("MiniCPM3Config", "MiniCPM3ForCausalLM", mla),
        "longcat_flash": ("LongcatFlashConfig", "LongcatFlashForCausalLM",
                          {**{k: v for k, v in mla.items() if k != "num_hidden_layers"},
                           "num_layers": 1, "head_dim": 8, "n_routed_experts": 4,
                           "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                           "zero_expert_num": 2}),
        "youtu": ("YoutuConfig", "YoutuForCausalLM", {**mla, "kv_lora_rank": 8}),
        "axk1": ("AXK1Config", "AXK1ForCausalLM",
                 {**mla, **experts, "first_k_dense_replace": 1, "kv_lora_rank": 8}),
        "axk2": ("AXK2Config", "AXK2ForCausalLM",
                 {**mla, **experts, **dsa, "first_k_dense_replace": 1, "gated_norm_rank": 8}),
        "hy_v4": ("HYV4Config", "HYV4ForCausalLM", {**mla, **experts, **dsa, "hc_mult": 2}),
        "dots3_note_text": ("Dots3NoteTextConfig", "Dots3NoteForCausalLM",
                            {**mla, "head_dim": 16, **experts, **dsa,
                             "n_shared_experts": 1, "shared_experts_intermediate_size": 32}),
        # an input block, one block run in 2 loops (a cache layer per loop), an output block
        "dory": ("DoryConfig", "DoryForCausalLM",
                 {**lm, "num_hidden_layers": 3, "num_key_value_heads": 2, "head_dim": 16,
                  "n_input_layers": 1, "n_output_layers": 1, "n_recurrent_loops": 2,
                  "sliding_window": 6,
                  "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}),
        "qwen3_5_text": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM", {**gqa, "head_dim": 16, **gdn}),
        "qwen3_5_moe_text": ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM",
                             {**no_ffn, "num_key_value_heads": 2, "head_dim": 16, **gdn,
                              **shared}),
        "qwen4_exp_text": ("Qwen4ExpTextConfig", "Qwen4ExpForCausalLM",
                           {**no_ffn, "num_key_value_heads": 2, "head_dim": 16, **gdn,
                            **shared, "hc_lowrank": 16, "indexer_n_heads": 4,
                            "indexer_kv_heads": 1, "indexer_head_dim": 16, "indexer_budget": 8,
                            "indexer_compress_ratio": 4}),
        "kimi_linear": ("KimiLinearConfig", "KimiLinearForCausalLM",
                        {**mla, "v_head_dim": 16,
                         "layer_types": ["linear_attention", "full_attention"],
                         "mlp_layer_types": ["dense", "sparse"], "linear_head_dim": 16,
                         "linear_num_heads": 4, "linear_conv_kernel_dim": 4,
                         "num_local_experts": 4, "n_shared_experts": 1, **experts}),
        "bailing_hybrid": ("BailingHybridConfig", "BailingHybridForCausalLM",
                           {**mla, "v_head_dim": 16, "head_dim": 16,
                            "layer_types": ["linear_attention", "full_attention"],
                            "mlp_layer_types": ["dense", "sparse"], "first_k_dense_replace": 1,
                            "short_conv_kernel_size": 4, "num_local_experts": 4,
                            "n_shared_experts": 1, "num_mtp_layers": 0, **experts}),
        "mamba2": ("Mamba2Config", "Mamba2ForCausalLM",
                   {"vocab_size": V, "hidden_size": 64, "num_hidden_layers": 2, "num_heads": 4,
                    "head_dim": 32, "expand": 2, "state_size": 8, "n_groups": 1,
                    "chunk_size": 8, "tie_word_embeddings": False, **sp}),
        "zamba": ("ZambaConfig", "ZambaForCausalLM",
                  {**lm, "num_key_value_heads": 4, "n_mamba_heads": 2, "mamba_d_state": 8,
                   "layers_block_type": ["mamba", "hybrid"],
                   **({} if new_tf else {"use_mamba_kernels": False})}),
        # (its logits soft-capped under a key of its own; transformers 5 only: 4.x's sizes
        # its heads otherwise)
        **({"xlstm": ("xLSTMConfig", "xLSTMForCausalLM",
                      {"vocab_size": V, "hidden_size": 64, "num_hidden_layers": 2,
                       "num_heads": 4, "qk_dim_factor": 1.0, "chunk_size": 8,
                       "tie_word_embeddings": False, **sp})} if new_tf else {}),
        # compressed sparse attention: keys compressed by tensor column (rows run unpadded);
        # its hash-routed experts are tested below (gradient methods refuse them)
        "deepseek_v4": ("DeepseekV4Config", "DeepseekV4ForCausalLM",
                        {**no_ffn, "num_key_value_heads": 1, "head_dim": 16,
                         "partial_rotary_factor": 0.5, "q_lora_rank": 16, "o_groups": 2,
                         "o_lora_rank": 16, "index_n_heads": 4, "index_head_dim": 16,
                         "index_topk": 4,
                         "compress_rates": {"compressed_sparse_attention": 4,
                                            "heavily_compressed_attention": 8},
                         "layer_types": ["sliding_attention", "compressed_sparse_attention"],
                         "mlp_layer_types": ["moe", "moe"], "n_routed_experts": 4,
                         "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                         "n_shared_experts": 1}),
        "dbrx": ("DbrxConfig", "DbrxForCausalLM",
                 {"vocab_size": V, "d_model": 64, "n_heads": 4, "n_layers": 2,
                  "max_seq_len": 512,
                  "attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 10000.0},
                  "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2},
                  "tie_word_embeddings": False, **sp}),
        "dots1": ("Dots1Config", "Dots1ForCausalLM",
                  {**gqa, "head_dim": 16, **experts, "n_shared_experts": 1,
                   "first_k_dense_replace": 1, "sliding_window": None}),
        "emu3": ("Emu3TextConfig", "Emu3ForCausalLM", {**gqa, "attention_dropout": 0.0}),
        # local layers whose window is cut by tensor index: plain rows
        "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM",
                    {"vocab_size": V, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                     "max_position_embeddings": 512,
                     "attention_types": [[["global", "local"], 1]], "window_size": 6,
                     "tie_word_embeddings": False, **sp}),
        "codegen": ("CodeGenConfig", "CodeGenForCausalLM",
                    {"vocab_size": V, "n_embd": 64, "n_layer": 2, "n_head": 4, "rotary_dim": 8,
                     "n_positions": 512, "n_ctx": 512, "tie_word_embeddings": False, **sp}),
        "zaya": ("ZayaConfig", "ZayaForCausalLM",
                 {**gqa, "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 1,
                  "moe_intermediate_size": 32, "router_hidden_size": 32}),
        # hidden states divided by a width multiplier before its head
        "inkling_text": ("InklingTextConfig", "InklingForCausalLM",
                         {**gqa, "head_dim": 16, "swa_num_attention_heads": 4,
                          "swa_num_key_value_heads": 2, "swa_head_dim": 16,
                          "sliding_window_size": 6, "local_layer_ids": [0], "rel_extent": 64,
                          "n_shared_experts": 1, "logits_mup_width_multiplier": 4.0,
                          **experts}),
        "gemma4": ("Gemma4Config", "Gemma4ForConditionalGeneration",
                   {"text_config": {**gqa, "head_dim": 16, "global_head_dim": 16,
                                    "sliding_window": 6,
                                    "layer_types": ["sliding_attention", "full_attention"],
                                    "hidden_size_per_layer_input": 16,
                                    "vocab_size_per_layer_input": V},
                    "vision_config": {"hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "num_key_value_heads": 2, "head_dim": 16,
                                      "patch_size": 14, "position_embedding_size": 64},
                    "audio_config": None, "image_token_id": mm[0], "boi_token_id": mm[1],
                    "eoi_token_id": mm[2], "video_token_id": mm[3],
                    "tie_word_embeddings": False}),
        # cross-attention layers (skipped without an image): transformers' masks and caches
        "mllama": ("MllamaTextConfig", "MllamaForCausalLM",
                   {**gqa, "num_hidden_layers": 3, "cross_attention_layers": [1]}),
        "phi4_multimodal": ("Phi4MultimodalConfig", "Phi4MultimodalForCausalLM",
                            {**gqa, "original_max_position_embeddings": 512,
                             "vision_config": {"hidden_size": 32, "intermediate_size": 64,
                                               "num_hidden_layers": 1, "num_attention_heads": 2,
                                               "image_size": 28, "crop_size": 28,
                                               "patch_size": 14, "image_token_id": mm[0]},
                             "audio_config": {"hidden_size": 32, "intermediate_size": 64,
                                              "num_blocks": 1, "num_attention_heads": 2,
                                              "ext_pw_out_channel": 32,
                                              "depthwise_separable_out_channel": 32,
                                              "nemo_conv_channels": 32,
                                              "audio_token_id": mm[1]}}),
        "gemma4_unified": ("Gemma4UnifiedConfig", "Gemma4UnifiedForConditionalGeneration",
                           {"text_config": dict(g4text),
                            "vision_config": {"patch_size": 4, "pooling_kernel_size": 2,
                                              "mm_embed_dim": 32, "mm_posemb_size": 64,
                                              "output_proj_dims": 64},
                            "audio_config": None, "image_token_id": mm[0],
                            "boi_token_id": mm[1], "eoi_token_id": mm[2],
                            "video_token_id": mm[3], "audio_token_id": mm[3],
                            "boa_token_id": mm[3], "eoa_token_index": mm[3],
                            "tie_word_embeddings": False}),
        "gemma4_unified_text": ("Gemma4UnifiedTextConfig", "Gemma4UnifiedForCausalLM",
                                dict(g4text)),
        "cohere_compass_text": ("CohereCompassTextConfig", "CohereCompassForCausalLM",
                                {**gqa, "sliding_window": 6,
                                 "layer_types": ["sliding_attention", "full_attention"],
                                 "rope_parameters": {
                                     "sliding_attention": {"rope_type": "default",
                                                           "rope_theta": 10000.0,
                                                           "mrope_section": [2, 3, 3]},
                                     "full_attention": None}}),
        "aria_text": ("AriaTextConfig", "AriaTextForCausalLM",
                      {**gqa, "intermediate_size": 32, "moe_num_experts": 4, "moe_topk": 2,
                       "moe_num_shared_experts": 1}),
        "inkling2_loop_text": ("Inkling2LoopTextConfig", "Inkling2LoopForCausalLM",
                               {**no_ffn, "num_hidden_layers": 3, "num_key_value_heads": 2,
                                "unpadded_vocab_size": V, "head_dim": 16,
                                "swa_num_attention_heads": 4, "swa_num_key_value_heads": 2,
                                "swa_head_dim": 16, "sliding_window_size": 6, "d_rel": 8,
                                "rel_extent": 64,
                                "layer_types": ["hybrid_sliding", "hybrid", "hybrid"],
                                "moe_intermediate_size": 32, "n_routed_experts": 4,
                                "num_experts_per_tok": 2, "n_layers_per_attn_res_block": 1,
                                "loop_layer_index_start": 1, "loop_layer_index_end": 2,
                                "loop_num_passes": 2, "loop_gate_rank": 8}),
        "fuyu": ("FuyuConfig", "FuyuForCausalLM",
                 {"text_config": {"model_type": "persimmon", **lm, "partial_rotary_factor": 0.5},
                  "image_size": 8, "patch_size": 4, "image_token_id": mm[0],
                  "tie_word_embeddings": False, **sp}),
        "ctrl": ("CTRLConfig", "CTRLLMHeadModel",
                 {"vocab_size": V, "n_embd": 64, "dff": 128, "n_layer": 2, "n_head": 4,
                  "n_positions": 512, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                  "tie_word_embeddings": False, **sp}),
        "gpt_neox_japanese": ("GPTNeoXJapaneseConfig", "GPTNeoXJapaneseForCausalLM",
                              {"vocab_size": V, "hidden_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "intermediate_multiple_size": 2,
                               "max_position_embeddings": 512, "attention_dropout": 0.0,
                               "hidden_dropout": 0.0, "tie_word_embeddings": False, **sp}),
        "qwen3_5": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration",
                    {"text_config": {**gqa, "head_dim": 16, **gdn, "linear_num_value_heads": 2,
                                     "rope_parameters": {"rope_type": "default",
                                                         "rope_theta": 10000.0,
                                                         "mrope_section": [2, 3, 3],
                                                         "partial_rotary_factor": 1.0}},
                     "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 64,
                                       "num_heads": 2, "patch_size": 14,
                                       "spatial_merge_size": 2, "out_hidden_size": 64},
                     "image_token_id": mm[0], "video_token_id": mm[1],
                     "vision_start_token_id": mm[2], "vision_end_token_id": mm[3],
                     "tie_word_embeddings": False}),
    }


def _configs(tok) -> dict[str, tuple[str, str, dict]]:
    import transformers

    sp = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
          "bos_token_id": tok.bos_token_id}
    V = len(tok)
    lm = {"vocab_size": V, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 512,
          "tie_word_embeddings": False, **sp}
    gqa = {**lm, "num_key_value_heads": 2}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    section = {"mrope_section": [2, 3, 3]}  # (head_dim 16: 8 rotary frequencies)
    moe = {"num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4,
           "num_experts_per_tok": 2, "moe_intermediate_size": 32, "n_group": 1,
           "topk_group": 1}
    new = {**gqa, "head_dim": 16, **moe}
    win = {**new, "sliding_window": 6}
    # placeholder ids of images etc.: byte tokens that occur in no prompt or output here
    # (V - 2, once used, is "Ġscattering", a token of the scored output)
    mm = tok.convert_tokens_to_ids(["\u0100", "\u0101", "\u0102", "\u0103"])
    mrope = {"rope_scaling": {"type": "mrope", **section},
             "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, **section}}
    configs = {
        "gpt2": ("GPT2Config", "GPT2LMHeadModel",
                 {"vocab_size": V, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512,
                  **sp}),
        "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**lm, "rotary_pct": 0.25}),
        "phi3": ("Phi3Config", "Phi3ForCausalLM", gqa),
        "opt": ("OPTConfig", "OPTForCausalLM",
                {"vocab_size": V, "hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "max_position_embeddings": 512,
                 "word_embed_proj_dim": 64, **sp}),
        "bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM",
                    {"vocab_size": V, "n_embd": 64, "n_layer": 2, "n_head": 4,
                     "n_positions": 512, "multi_query": True, **sp}),
        "falcon": ("FalconConfig", "FalconForCausalLM",
                   {"vocab_size": V, "hidden_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "alibi": False, **sp}),
        "bloom": ("BloomConfig", "BloomForCausalLM",
                  {"vocab_size": V, "hidden_size": 64, "n_layer": 2, "n_head": 4, **sp}),
        "mpt": ("MptConfig", "MptForCausalLM",
                {"vocab_size": V, "d_model": 64, "n_layers": 2, "n_heads": 4,
                 "max_seq_len": 512}),
        "phi": ("PhiConfig", "PhiForCausalLM", {**lm, "partial_rotary_factor": 0.5}),
        # no key/value cache at all: plain rows, and no beams (in transformers 4.x its
        # forward takes no use_cache argument either)
        "openai_gpt": ("OpenAIGPTConfig", "OpenAIGPTLMHeadModel",
                       {"vocab_size": V, "n_embd": 64, "n_layer": 2, "n_head": 4,
                        "n_positions": 512, **sp}),
        "gptj": ("GPTJConfig", "GPTJForCausalLM",
                 {"vocab_size": V, "n_embd": 64, "n_layer": 2, "n_head": 4, "rotary_dim": 8,
                  "n_positions": 512, **sp}),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**gqa, "head_dim": 16}),
        "stablelm": ("StableLmConfig", "StableLmForCausalLM", gqa),
        "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", gqa),
        "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM",
                       {**gqa, "sliding_window": None}),
        "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                   {**gqa, "head_dim": 16, "sliding_window": 6, "query_pre_attn_scalar": 16}),
        "cohere": ("CohereConfig", "CohereForCausalLM", {**gqa, "logit_scale": 0.25}),
        "granite": ("GraniteConfig", "GraniteForCausalLM", {**gqa, "logits_scaling": 4.0}),
        # a cap well inside the logits' range, so that soft-capping changes them
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
                   {**gqa, "head_dim": 16, "sliding_window": 6, "query_pre_attn_scalar": 16,
                    "final_logit_softcapping": 2.0}),
        # a mixture of experts, with a key norm over all heads
        "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
                  {**gqa, "num_experts": 4, "num_experts_per_tok": 2}),
        "mistral": ("MistralConfig", "MistralForCausalLM", {**gqa, "sliding_window": 6}),
        "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                    {**gqa, "num_local_experts": 4, "num_experts_per_tok": 2}),
        "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                      {**gqa, "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2,
                       "moe_intermediate_size": 32}),
        # multi-head latent attention: keys 16 wide (8 rotary + 8 not), values 12
        "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                        {**lm, "num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 16,
                         "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 12,
                         "n_routed_experts": 4, "num_experts_per_tok": 2,
                         "moe_intermediate_size": 32, "n_group": 1, "topk_group": 1,
                         "first_k_dense_replace": 1}),
        # attention sinks, sliding and full layers, experts
        "gpt_oss": ("GptOssConfig", "GptOssForCausalLM",
                    {**gqa, "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
                     "sliding_window": 6,
                     "layer_types": ["sliding_attention", "full_attention"]}),
        # layers without positions (NoPE) among rotary ones
        "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {**gqa, "no_rope_layer_interval": 2}),
        # chunked attention (a query reads its own chunk of 6 positions) and NoPE layers
        "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM",
                        {**gqa, "head_dim": 16, "intermediate_size_mlp": 128,
                         "num_local_experts": 2, "attention_chunk_size": 6,
                         "interleave_moe_layer_step": 1, "no_rope_layers": [1, 0]}),
        "cohere2": ("Cohere2Config", "Cohere2ForCausalLM",
                    {**gqa, "sliding_window": 6, "logit_scale": 0.25}),
        # per-layer inputs, AltUp, sliding and full layers, soft-capped logits, and its last
        # two layers reading the keys and values of earlier ones (shared KV; refused on
        # transformers 4.x, tested below)
        **({"gemma3n": ("Gemma3nTextConfig", "Gemma3nForCausalLM", _gemma3n(tok))}
           if int(transformers.__version__.split(".")[0]) >= 5 else {}),
        # a mask of its own making added to the one it is given: no packed attention (on
        # transformers 4.x its plain forward with a 2-D mask differs from its 5.x one and
        # from the engine's, 0.2 nats; not explained, left out there)
        **({"doge": ("DogeConfig", "DogeForCausalLM", gqa)}
           if int(transformers.__version__.split(".")[0]) >= 5 else {}),
        # more of transformers' causal LMs, as they come
        "olmo3": ("Olmo3Config", "Olmo3ForCausalLM",
                  {**gqa, "sliding_window": 6,
                   "layer_types": ["sliding_attention", "full_attention"]}),
        "apertus": ("ApertusConfig", "ApertusForCausalLM", gqa),
        "ernie4_5": ("Ernie4_5Config", "Ernie4_5ForCausalLM", {**gqa, "head_dim": 16}),
        "seed_oss": ("SeedOssConfig", "SeedOssForCausalLM", {**gqa, "head_dim": 16}),
        "glm4": ("Glm4Config", "Glm4ForCausalLM", {**gqa, "head_dim": 16}),
        "glm4_moe": ("Glm4MoeConfig", "Glm4MoeForCausalLM",
                     {**gqa, "head_dim": 16, "n_routed_experts": 4, "num_experts_per_tok": 2,
                      "moe_intermediate_size": 32, "first_k_dense_replace": 1, "n_group": 1,
                      "topk_group": 1}),
        "nemotron": ("NemotronConfig", "NemotronForCausalLM", gqa),
        "arcee": ("ArceeConfig", "ArceeForCausalLM", gqa),
        "hunyuan_v1_dense": ("HunYuanDenseV1Config", "HunYuanDenseV1ForCausalLM",
                             {**gqa, "head_dim": 16}),
        "exaone4": ("Exaone4Config", "Exaone4ForCausalLM",
                    {**gqa, "sliding_window": 6, "sliding_window_pattern": 2}),
        # (transformers 4.x's PhiMoE indexes its rotary table by position up to the input's
        # length only, and fails on positions past it: 5.x only)
        **({"phimoe": ("PhimoeConfig", "PhimoeForCausalLM",
                       {**gqa, "num_local_experts": 4, "num_experts_per_tok": 2})}
           if int(transformers.__version__.split(".")[0]) >= 5 else {}),
        "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                      {**gqa, "num_experts": 4, "num_experts_per_tok": 2,
                       "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32}),
        "helium": ("HeliumConfig", "HeliumForCausalLM", {**gqa, "head_dim": 16}),
        "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM",
                       {**gqa, "num_local_experts": 2, "num_experts_per_tok": 1}),
        "bitnet": ("BitNetConfig", "BitNetForCausalLM", gqa),
        # recurrent (stateful) models, whole or hybrid: one plain row per prompt
        "zamba2": ("Zamba2Config", "Zamba2ForCausalLM",
                   {**gqa, "mamba_d_state": 8, "mamba_headdim": 16, "n_mamba_heads": 8,
                    "layers_block_type": ["mamba", "hybrid"], "hybrid_layer_ids": [1],
                    "num_mem_blocks": 1, "chunk_size": 8}),
        "lfm2_moe": ("Lfm2MoeConfig", "Lfm2MoeForCausalLM",
                     {**gqa, "layer_types": ["conv", "full_attention"], "num_experts": 2,
                      "num_experts_per_tok": 1, "moe_intermediate_size": 32,
                      "num_dense_layers": 1}),
        "mamba": ("MambaConfig", "MambaForCausalLM",
                  {"vocab_size": V, "hidden_size": 64, "num_hidden_layers": 2,
                   "state_size": 8, **sp}),
        "jamba": ("JambaConfig", "JambaForCausalLM",
                  {**gqa, "attn_layer_period": 2, "attn_layer_offset": 1,
                   "expert_layer_period": 2, "expert_layer_offset": 1, "num_experts": 2,
                   "mamba_d_state": 8, "mamba_expand": 2, "use_mamba_kernels": False}),
        # short convolutions and attention (transformers 5.24 flags it as not stateful; its
        # cache layout says otherwise)
        "lfm2": ("Lfm2Config", "Lfm2ForCausalLM",
                 {**gqa, "layer_types": ["conv", "full_attention"]}),
        # Mamba-2 and attention layers (with experts)
        "granitemoehybrid": ("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM",
                             {**gqa, "num_local_experts": 2, "num_experts_per_tok": 1,
                              "layer_types": ["mamba", "attention"], "mamba_d_state": 8,
                              "mamba_n_heads": 4, "mamba_d_head": 32, "mamba_n_groups": 1,
                              "mamba_chunk_size": 8}),
        "bamba": ("BambaConfig", "BambaForCausalLM",
                  {**gqa, "attn_layer_indices": [1], "mamba_d_state": 8, "mamba_n_heads": 4,
                   "mamba_d_head": 32, "mamba_n_groups": 1, "mamba_chunk_size": 8}),
        "minimax": ("MiniMaxConfig", "MiniMaxForCausalLM",
                    {**gqa, "head_dim": 16, "num_local_experts": 2, "num_experts_per_tok": 1,
                     "layer_types": ["linear_attention", "full_attention"], "block_size": 4}),
        "falcon_h1": ("FalconH1Config", "FalconH1ForCausalLM",
                      {**gqa, "mamba_d_state": 8, "mamba_n_heads": 4, "mamba_d_head": 32,
                       "mamba_n_groups": 1, "mamba_chunk_size": 8, "mamba_d_ssm": 128}),
        # linear attention (gated delta rule) and attention layers, experts (5.x only)
        **({"qwen3_next": ("Qwen3NextConfig", "Qwen3NextForCausalLM",
                           {**gqa, "head_dim": 16,
                            "layer_types": ["linear_attention", "full_attention"],
                            "linear_num_value_heads": 2, "linear_num_key_heads": 2,
                            "linear_key_head_dim": 16, "linear_value_head_dim": 16,
                            "linear_conv_kernel_dim": 4, "num_experts": 2,
                            "num_experts_per_tok": 1, "moe_intermediate_size": 32,
                            "shared_expert_intermediate_size": 32})}
           if hasattr(transformers, "Qwen3NextConfig") else {}),
        # (and its logits soft-capped under another config key; refused on transformers
        # 4.x, which keeps its recurrent state in the modules between calls)
        **({"recurrent_gemma": ("RecurrentGemmaConfig", "RecurrentGemmaForCausalLM",
                                {**gqa, "lru_width": 64, "attention_window_size": 16,
                                 "block_types": ["recurrent", "attention"]})}
           if int(transformers.__version__.split(".")[0]) >= 5 else {}),
        # vision-language models explained on text (what AutoModelForCausalLM gives for
        # Gemma 3 and others): the language model inside, its config a sub-config
        "gemma3_vlm": ("Gemma3Config", "Gemma3ForConditionalGeneration",
                       {"text_config": {**gqa, "head_dim": 16, "sliding_window": 6,
                                        "query_pre_attn_scalar": 16},
                        "vision_config": vision, "mm_tokens_per_image": 4,
                        "image_token_index": mm[0]}),
        "llava": ("LlavaConfig", "LlavaForConditionalGeneration",
                  {"text_config": {"model_type": "llama", **gqa},
                   "vision_config": {"model_type": "clip_vision_model", **vision},
                   "image_token_index": mm[0]}),
        # multimodal RoPE: text positions are the same in its 3 sections
        "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration",
                     {"text_config": {**gqa, "head_dim": 16, **mrope},
                      "vision_config": {"depth": 1, "embed_dim": 32, "hidden_size": 64,
                                        "num_heads": 2, "patch_size": 14,
                                        "spatial_merge_size": 2},
                      "image_token_id": mm[0], "video_token_id": mm[1],
                      "vision_start_token_id": mm[2]}),
        # session 14: more of transformers 5's causal LMs, one config each (MoE keys
        # for those with experts; the window for those whose code slides it)
        "afmoe": ("AfmoeConfig", "AfmoeForCausalLM", win),
        "apertus1p5_text": ("Apertus1p5TextConfig", "Apertus1p5TextForCausalLM", new),
        "beam": ("BeamConfig", "BeamForCausalLM", win),
        "biogpt": ("BioGptConfig", "BioGptForCausalLM", new),
        "cohere2_moe": ("Cohere2MoeConfig", "Cohere2MoeForCausalLM", win),
        "cwm": ("CwmConfig", "CwmForCausalLM", win),
        "diffllama": ("DiffLlamaConfig", "DiffLlamaForCausalLM", new),
        "ernie4_5_moe": ("Ernie4_5_MoeConfig", "Ernie4_5_MoeForCausalLM", new),
        "exaone_moe": ("ExaoneMoeConfig", "ExaoneMoeForCausalLM", win),
        "falcon_mamba": ("FalconMambaConfig", "FalconMambaForCausalLM", new),
        "flex_olmo": ("FlexOlmoConfig", "FlexOlmoForCausalLM", new),
        "flint": ("FlintConfig", "FlintForCausalLM", win),
        "gemma": ("GemmaConfig", "GemmaForCausalLM", new),
        "gemma4_text": ("Gemma4TextConfig", "Gemma4ForCausalLM", win),
        "glm": ("GlmConfig", "GlmForCausalLM", new),
        "granite_swa": ("GraniteSWAConfig", "GraniteSWAForCausalLM", win),
        "granitemoe_swa": ("GraniteMoeSWAConfig", "GraniteMoeSWAForCausalLM", win),
        "granitemoeshared": ("GraniteMoeSharedConfig", "GraniteMoeSharedForCausalLM", new),
        "hrm_text": ("HrmTextConfig", "HrmTextForCausalLM", new),
        "hunyuan_v1_moe": ("HunYuanMoEV1Config", "HunYuanMoEV1ForCausalLM", new),
        "hy_v3": ("HYV3Config", "HYV3ForCausalLM", new),
        "hyperclovax": ("HyperCLOVAXConfig", "HyperCLOVAXForCausalLM", new),
        "inkling2_text": ("Inkling2TextConfig", "Inkling2ForCausalLM", win),
        "jais2": ("Jais2Config", "Jais2ForCausalLM", new),
        "jetmoe": ("JetMoeConfig", "JetMoeForCausalLM", new),
        "kolibri1": ("Kolibri1Config", "Kolibri1ForCausalLM", win),
        "laguna": ("LagunaConfig", "LagunaForCausalLM", win),
        "lara_mini": ("LaraMiniConfig", "LaraMiniForCausalLM", win),
        "lfm3": ("Lfm3Config", "Lfm3ForCausalLM", win),
        "mellum": ("MellumConfig", "MellumForCausalLM", win),
        "mimo_v2_flash": ("MiMoV2FlashConfig", "MiMoV2FlashForCausalLM", win),
        "minimax_m2": ("MiniMaxM2Config", "MiniMaxM2ForCausalLM", new),
        "ministral": ("MinistralConfig", "MinistralForCausalLM", win),
        "ministral3": ("Ministral3Config", "Ministral3ForCausalLM", win),
        "nanochat": ("NanoChatConfig", "NanoChatForCausalLM", new),
        "nemotron_h": ("NemotronHConfig", "NemotronHForCausalLM", new),
        "olmo": ("OlmoConfig", "OlmoForCausalLM", new),
        "olmo_hybrid": ("OlmoHybridConfig", "OlmoHybridForCausalLM", new),
        "persimmon": ("PersimmonConfig", "PersimmonForCausalLM", new),
        "rwkv": ("RwkvConfig", "RwkvForCausalLM", new),
        "solar_open": ("SolarOpenConfig", "SolarOpenForCausalLM", new),
        "vaultgemma": ("VaultGemmaConfig", "VaultGemmaForCausalLM", win),
        "xglm": ("XGLMConfig", "XGLMForCausalLM", new),
        **_configs_latent_sparse_hybrid(tok, lm, gqa),
    }
    # (architectures newer than the oldest transformers of the range run where they exist)
    return {k: v for k, v in configs.items()
            if hasattr(transformers, v[0]) and hasattr(transformers, v[1])}


def _model(name: str, **overrides):
    """The tiny model ``name`` (config keys ``overrides`` changed), wrapped; a test of an
    architecture this transformers does not have is skipped."""
    import transformers

    tok = make_tiny_tokenizer()
    configs = _configs(tok)
    if name not in configs:
        pytest.skip(f"no {name} in this transformers")
    cfg_cls, model_cls, kw = configs[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(
        getattr(transformers, cfg_cls)(**{**kw, **overrides})).eval()
    with torch.no_grad():  # larger weights: input-sensitive outputs, large logits
        for p in model.parameters():
            p.mul_(2.0)
    return wrap_model(model, tok, model_id=f"tiny-{name}")


def _scratch(hm, inp, out, L):
    """One plain forward of the whole model (its own logits) per perturbed input."""
    seq = np.concatenate([inp.ids, out])
    start = L if inp.output_start is None else inp.output_start
    pos = np.concatenate([inp.positions, np.arange(start, start + len(out))])
    att = np.ones(len(seq), dtype=np.int64)
    if inp.attention is not None:  # attention_off: keys no query may read
        att[: len(inp.ids)] = inp.attention
    with torch.no_grad():
        logits = hm.model(input_ids=torch.as_tensor(seq)[None],
                          position_ids=torch.as_tensor(pos)[None],
                          attention_mask=torch.as_tensor(att)[None]).logits[0]
    lp = logits.float().log_softmax(-1)
    k = len(inp.ids)
    return np.array([lp[k - 1 + t, out[t]].item() for t in range(len(out))])


ALIBI = {"bloom", "mpt"}
RECURRENT = {"mamba", "jamba", "recurrent_gemma", "qwen3_next", "lfm2", "granitemoehybrid",
             "falcon_h1", "bamba", "minimax", "zamba2", "lfm2_moe", "falcon_mamba",
             "inkling2_text", "lara_mini", "lfm3", "nemotron_h", "olmo_hybrid", "rwkv",
             "qwen3_5_text", "qwen3_5_moe_text", "qwen4_exp_text", "kimi_linear",
             "bailing_hybrid", "mamba2", "zamba", "xlstm", "deepseek_v4", "zaya",
             "inkling_text", "qwen3_5", "inkling2_loop_text"}
CHUNKED = {"llama4_text"}  # sequences longer than a chunk: plain rows
NO_CACHE = {"openai_gpt"}  # nor 4-D masks: plain rows
def _tf_version() -> list[str]:
    import transformers

    return transformers.__version__.split(".")


MASKS_ON_5 = {"xglm", "ctrl"}  # transformers 4.x's refuse 4-D masks: plain rows there
# transformers 5.24 flags DeepSeek-V4 as stateful (for its compressed-key cache layers); 5.25
# drops the flag, and it runs as an attention model there (exact too, checked by hand)
FLAG_ONLY = {"deepseek_v4"}
# attention that holds only under transformers' masks and caches: plain rows
OWN_MASKS = {"deepseek_v32", "glm_moe_dsa", "axk2", "hy_v4", "dots3_note_text", "dory",
             "gpt_neo", "mllama"}
if tuple(int(x) for x in _tf_version()[:2]) >= (5, 25):
    RECURRENT -= FLAG_ONLY
    OWN_MASKS |= FLAG_ONLY  # (its compressed keys: own masks only, plain unpadded rows)
LOGIT_MAP = {"cohere", "cohere2", "granite", "gemma2", "gemma3n", "recurrent_gemma", "beam",
             "cohere2_moe", "inkling2_text", "vaultgemma", "nanochat", "minicpm3", "xlstm",
             "inkling_text", "inkling2_loop_text"}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # the reference passes Bloom positions
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit in GPTBigCode (4.x)
@pytest.mark.parametrize("name", sorted(_configs(make_tiny_tokenizer())))
def test_engine_equals_plain_forwards_on_any_architecture(name) -> None:
    hm = _model(name)
    pr = build_prompt(PROMPT, hm, chat=False)
    ids, offsets = hm.tokenize(pr.text, add_special_tokens=False)
    ids = np.asarray(ids)
    fs = segment(pr.text, pr.regions, offsets, "word")
    out = np.asarray(hm.tokenize(" Because of Rayleigh scattering.")[0])
    masks = np.concatenate([loo_masks(len(fs)),
                            np.random.default_rng(5).random((6, len(fs))) > 0.5])
    for kind in ("attention_off", "delete"):
        inputs = Masker(kind, ids, fs).apply(masks)
        ref = np.stack([_scratch(hm, x, out, len(ids)) for x in inputs])
        assert np.ptp(ref.sum(1)) > 0.05  # the perturbations matter
        # packed rows with a shared prefix; one sequence per forward; no prefix
        for kw in ({}, {"max_batch_tokens": 1}, {"prefix_reuse": False}):
            eng = ScoringEngine(hm, ids, out, **kw)
            np.testing.assert_allclose(eng.token_logprobs(inputs), ref, atol=1e-4,
                                       err_msg=f"{kind} {kw}")
    positions, masks4d = hm.packing
    eng = ScoringEngine(hm, ids, out)
    eng.token_logprobs(inputs)
    full = sum(len(x.ids) + len(out) for x in inputs)
    if name in ALIBI:  # positions ignored: plain rows, every row from scratch
        assert not positions
        assert eng.counters["tokens_processed"] == full
    elif name in RECURRENT:  # a recurrence reads every token of a row: plain rows
        assert hm.stateful and not masks4d
        assert eng.counters["tokens_processed"] == full
    elif name in NO_CACHE:
        assert not hm.keeps_cache and not masks4d
        assert eng.counters["tokens_processed"] == full
    elif name in OWN_MASKS:
        assert hm.own_masks_only
        assert eng.counters["tokens_processed"] == full
    elif name in CHUNKED:  # packed masks do not chunk: transformers' own, row by row
        assert hm.attention_chunk == 6 and len(ids) + len(out) > 6
        assert eng.counters["tokens_processed"] == full
    elif name in MASKS_ON_5 and int(_tf_version()[0]) < 5:
        assert not masks4d and eng.counters["tokens_processed"] == full
    else:  # packed rows share the prompt's prefix
        assert positions and masks4d
        assert eng.counters["tokens_processed"] < full
    if name in ("falcon", "doge"):  # own attention code; a mask of its own making
        assert not hm.packs_attention
    assert (hm.logit_map() is not None) == (name in LOGIT_MAP)


def test_plain_rows_when_the_model_ignores_positions(monkeypatch) -> None:
    """ALiBi rows are scored from scratch, right-padded, several per forward; a shared prefix
    would place each row's tokens at the wrong distances from the prefix."""
    hm = _model("mpt")
    pr = build_prompt(PROMPT, hm, chat=False)
    ids, offsets = hm.tokenize(pr.text, add_special_tokens=False)
    fs = segment(pr.text, pr.regions, offsets, "word")
    out = np.asarray(hm.tokenize(" Because.")[0])
    inputs = Masker("delete", np.asarray(ids), fs).apply(loo_masks(len(fs)))
    eng = ScoringEngine(hm, np.asarray(ids), out)
    got = eng.token_logprobs(inputs)
    assert eng.counters["model_forwards"] == 1 and eng.counters["padded_tokens"] > 0
    # forcing the packed path on this model gives wrong scores (what the probe prevents)
    monkeypatch.setitem(hm.__dict__, "_packing", (True, True))
    packed = ScoringEngine(hm, np.asarray(ids), out).token_logprobs(inputs)
    ref = np.stack([_scratch(hm, x, out, len(ids)) for x in inputs])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert np.abs(packed - ref).max() > 1e-2


def test_a_head_transform_attrlens_does_not_know_is_refused(tiny_model) -> None:
    """A model whose logits are not its output embedding's (here: a head swapped behind the
    model's back) is refused with a clear error, never scored wrong."""
    import copy

    from attrlens.models.hf import HFModel

    m = copy.deepcopy(tiny_model.model)
    other = torch.nn.Linear(m.config.hidden_size, m.config.vocab_size, bias=False)
    m.get_output_embeddings = lambda: other
    hm = HFModel(m, tiny_model.tokenizer, info=tiny_model.info)
    with pytest.raises(CapabilityError, match="does something to its LM head's output"):
        hm.output_logits(torch.zeros(1, m.config.hidden_size))


def _check_grad_x_input(hm, **tol) -> tuple[str, str]:
    """Gradient x input on a fixed prompt and output equals autograd through the model's
    own forward, within ``tol``; returns (prompt, output)."""
    import attrlens

    prompt, output = "The quick brown fox jumps over the lazy dog", " Because of it."
    a = attrlens.explain(prompt, model=hm, method="grad_x_input", output=output, chat=False,
                         granularity="token")
    ids = np.asarray(hm.tokenize(prompt, add_special_tokens=False)[0])
    out = np.asarray(hm.tokenize(output, add_special_tokens=False)[0])
    seq = torch.as_tensor(np.concatenate([ids, out]))[None]
    e = hm.model.get_input_embeddings()(seq).detach().requires_grad_(True)
    pos = torch.arange(seq.shape[1])[None]  # (Qwen2-VL in transformers 4.x needs them)
    # (no cache: RWKV's forward updates its cached state in place, which autograd refuses)
    lp = hm.model(inputs_embeds=e, position_ids=pos, use_cache=False).logits[0]
    lp = lp.float().log_softmax(-1)
    L = len(ids)
    sum(lp[L - 1 + t, out[t]] for t in range(len(out))).backward()
    ref = (e.grad[0] * e[0]).sum(-1)[:L].detach().numpy()
    assert a.n_features == L
    np.testing.assert_allclose(a.scores, ref, **tol)
    return prompt, output


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox", "gemma3_vlm", "llava", "qwen2_vl"])
def test_gradient_and_attention_methods_on_other_decoders(name) -> None:
    """Blocks under ``h`` (GPT-2) and attention modules named ``attn``/``attention``:
    gradient x input equals a direct autograd computation; attention maps are read."""
    import attrlens

    hm = _model(name)
    prompt, output = _check_grad_x_input(hm, atol=1e-5)
    att = attrlens.explain(prompt, model=hm, method="attention", output=output, chat=False,
                           granularity="token")
    assert np.all(np.asarray(att.scores) >= 0) and np.ptp(att.scores) > 1e-3


@pytest.mark.filterwarnings("error::FutureWarning")  # e.g. Bloom's on position_ids (4.x)
@pytest.mark.parametrize("name", ["bloom", "falcon", "mpt"])
def test_attention_maps_of_models_with_their_own_attention(name) -> None:
    """Falcon, Bloom and MPT run attention code of their own (not transformers' attention
    interface, whose modules attrlens hooks): the maps come from the model's
    ``output_attentions``, one causal, row-stochastic map per layer, and every attention
    method runs on them."""
    import attrlens
    from attrlens.games.whitebox import WhiteBoxGame

    hm = _model(name)
    assert not hm.on_attention_interface and not hm.hooks_attention
    pr = build_prompt("The quick brown fox jumps over the lazy dog", hm, chat=False)
    ids, offsets = hm.tokenize(pr.text, add_special_tokens=False)
    ids = np.asarray(ids)
    out = np.asarray(hm.tokenize(" Because.")[0])
    fs = segment(pr.text, pr.regions, offsets, "token")
    maps = WhiteBoxGame(hm, ids, out, fs).attention_maps()
    S = len(ids) + len(out)
    assert maps.shape == (2, S, S)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert np.abs(np.triu(maps, 1)).max() < 1e-6 and np.ptp(maps[:, -1]) > 1e-3
    for method in ("attention", "attention_rollout", "bta", "grad_x_input"):
        a = attrlens.explain("The quick brown fox jumps over the lazy dog", model=hm,
                             method=method, output=" Because.", chat=False,
                             granularity="token")
        assert np.all(np.isfinite(a.scores)) and np.ptp(a.scores) > 1e-6, method


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox"])
def test_output_attentions_route_equals_the_hooks(name, monkeypatch) -> None:
    """On a model on the attention interface, the maps and BTA's attention gradients read
    from ``output_attentions`` (the route of models with their own attention) equal those
    its attention modules' hooks give."""
    import attrlens
    from attrlens.models.hf import HFModel

    hm = _model(name)
    kw = {"output": " Because.", "chat": False, "granularity": "token"}
    prompt = "The quick brown fox jumps over the lazy dog"
    methods = ("attention", "attention_rollout", "bta")
    hooked = [attrlens.explain(prompt, model=hm, method=m, **kw).scores for m in methods]
    monkeypatch.setattr(HFModel, "hooks_attention", property(lambda self: False))
    for m, ref in zip(methods, hooked):
        got = attrlens.explain(prompt, model=hm, method=m, **kw).scores
        assert np.ptp(ref) > 1e-5
        np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=m)


def test_attention_maps_are_the_inputs_not_the_head_probes() -> None:
    """The head's one-time probe runs forwards of its own; on a fresh model it must not run
    while an attention method's hooks collect maps (they were the probe's 8 x 8 maps)."""
    from conftest import make_tiny_model

    import attrlens

    hm = make_tiny_model(seed=3)
    assert "_logit_map_v" not in hm.__dict__  # the probe has not run yet
    a = attrlens.explain("The quick brown fox jumps over the lazy dog. Explain why", model=hm,
                         method="attention_rollout", output=" Because.", chat=False)
    assert np.all(np.isfinite(a.scores)) and np.ptp(a.scores) > 1e-3


def test_plain_rows_keep_their_padding_mask_under_the_attention_interface(monkeypatch) -> None:
    """A model on transformers' attention interface that refused 4-D masks gets plain rows
    with a 2-D mask, which transformers must turn into the model's mask (the engine's packed
    attention would drop it: switched-off keys would be read)."""
    hm = _model("phi3")
    monkeypatch.setitem(hm.__dict__, "_packing", (True, False))
    pr = build_prompt(PROMPT, hm, chat=False)
    ids, offsets = hm.tokenize(pr.text, add_special_tokens=False)
    fs = segment(pr.text, pr.regions, offsets, "word")
    out = np.asarray(hm.tokenize(" Because.")[0])
    masks = np.random.default_rng(2).random((6, len(fs))) > 0.5
    inputs = Masker("attention_off", np.asarray(ids), fs).apply(masks)
    eng = ScoringEngine(hm, np.asarray(ids), out)
    got = eng.token_logprobs(inputs)
    ref = np.stack([_scratch(hm, x, out, len(ids)) for x in inputs])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert eng.counters["tokens_processed"] == sum(len(x.ids) + len(out) for x in inputs)


def test_rope_vectors_of_a_partial_rotary_model() -> None:
    """GPT-NeoX rotates only the first quarter of each head's dimensions (rotary_pct):
    RoPE-space vectors rotate those (pair norms kept, position 0 unmoved) and pass the rest
    through; RoPE-LIME runs on it (it crashed)."""
    import attrlens
    from attrlens.models.embeddings import rope_vectors

    hm = _model("gpt_neox")
    ids = np.array([5, 17, 33, 40, 2, 99])
    pos = np.array([0, 2, 3, 7, 8, 40])
    got = rope_vectors(hm, ids, pos, space="embed_rope")
    e = hm.input_embeddings.weight.detach().double()[torch.as_tensor(ids)].numpy()
    d_h = hm.config.hidden_size // hm.config.num_attention_heads
    r = d_h // 4  # rotary_pct 0.25, as _configs makes it
    assert 0 < r < d_h
    g, x = got.reshape(len(ids), -1, d_h), e.reshape(len(ids), -1, d_h)
    np.testing.assert_allclose(g[..., r:], x[..., r:], atol=1e-6)  # passed through
    np.testing.assert_allclose(got[0], e[0], atol=1e-6)  # position 0: no rotation
    half = r // 2  # rotate_half pairs dims i and i + r/2
    norm = lambda v: np.hypot(v[..., :half], v[..., half:r])
    np.testing.assert_allclose(norm(g), norm(x), atol=1e-5)
    assert np.abs(g[1:, :, :r] - x[1:, :, :r]).max() > 1e-3  # the rotary part moved
    a = attrlens.explain("The quick brown fox jumps over the lazy dog.", model=hm,
                         method="rope_lime", output=" It jumps.", chat=False, budget=32)
    assert np.all(np.isfinite(a.scores)) and np.ptp(a.scores) > 0


@pytest.mark.parametrize("name", ["qwen3", "olmoe", "gemma3", "gemma3_vlm", "qwen2_vl",
                                  "stablelm"])
def test_layer0_keys_equal_the_cached_keys(name) -> None:
    """RoPE-LIME's layer-0 key space is the model's own post-RoPE layer-0 keys (what its
    cache holds), also with key norms (Qwen3, Gemma-3 per head; OLMoE over all heads),
    one rotary module for local and global layers (Gemma-3) and multimodal RoPE
    (Qwen2-VL)."""
    from attrlens.models.embeddings import rope_vectors

    hm = _model(name)
    ids = torch.tensor([[5, 17, 33, 40, 2]])
    pos = torch.tensor([[0, 2, 3, 5, 6]])
    with torch.no_grad():
        out = hm.decoder(input_ids=ids, position_ids=pos, use_cache=True)
    keys = hm.output_cache(out).layers[0].keys[0]  # (n_kv, L, d_h), post-RoPE
    ref = keys.transpose(0, 1).reshape(5, -1).double().numpy()
    got = rope_vectors(hm, ids[0].numpy(), pos[0].numpy(), space="layer0_keys")
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("name", sorted(RECURRENT & set(_configs(make_tiny_tokenizer()))))
def test_recurrent_models_get_gradients_and_refuse_beams_and_attention(name) -> None:
    """On a recurrent model the gradient methods run (gradient x input equals autograd on
    the model's own forward); GiLOT's cached beam search and the attention methods are
    refused on one line (they crashed deep inside, or read only some layers)."""
    import attrlens

    hm = _model(name)
    # (float32 scans in another order)
    prompt, output = _check_grad_x_input(hm, rtol=2e-3, atol=5e-5)
    for method in ("gilot", "attention", "bta"):
        # (gilot explains its own beams: no output)
        given = {} if method == "gilot" else {"output": output}
        with pytest.raises(CapabilityError, match="is recurrent"):
            attrlens.explain(prompt, model=hm, method=method, chat=False, **given)


def test_shared_kv_layers_on_transformers_4_are_refused() -> None:
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        pytest.skip("transformers 5 hands shared keys over in the forward (tested above)")
    if not hasattr(transformers, "Gemma3nForCausalLM"):
        pytest.skip("no Gemma-3n in this transformers")
    tok = make_tiny_tokenizer()
    model = transformers.Gemma3nForCausalLM(transformers.Gemma3nTextConfig(**_gemma3n(tok)))
    with pytest.raises(CapabilityError, match="shares keys and values between layers"):
        wrap_model(model.eval(), tok)


def test_recurrent_gemma_on_transformers_4_is_refused() -> None:
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        pytest.skip("transformers 5 resets RecurrentGemma's state per call (tested above)")
    tok = make_tiny_tokenizer()
    cfg = transformers.RecurrentGemmaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, lru_width=64,
        attention_window_size=16, block_types=["recurrent", "attention"])
    model = transformers.RecurrentGemmaForCausalLM(cfg).eval()
    with pytest.raises(CapabilityError, match="use transformers >= 5"):
        wrap_model(model, tok)


@pytest.mark.parametrize("name", sorted(_configs(make_tiny_tokenizer())))
def test_recurrent_layers_are_read_from_the_cache_layout(name, monkeypatch) -> None:
    """transformers 5.25 dropped the models' ``_is_stateful`` flag; a recurrent layer is
    then one whose cache layer keeps a state (a linear-attention cache layer). Both ways
    name the same models."""
    pytest.importorskip("transformers.cache_utils").__dict__.get(
        "LinearAttentionCacheLayerMixin") or pytest.skip("no linear-attention cache layers")
    from attrlens.models.hf import _recurrent_cache_layers

    hm = _model(name)
    assert hm.stateful == (name in RECURRENT)
    flag = getattr(type(hm.model), "_is_stateful", None)
    if flag is None:  # transformers >= 5.25: the layout is all there is, and was read above
        return
    monkeypatch.setattr(type(hm.model), "_is_stateful", None, raising=False)  # as on 5.25
    hm.__dict__.pop("_stateful", None)
    if name in FLAG_ONLY:
        assert flag and not hm.stateful
        return
    if flag and not hm.stateful:
        import transformers

        # before 5.24 some recurrent models had no state-keeping cache layer yet
        assert not _recurrent_cache_layers(hm.model.config)
        assert tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 24)
        pytest.skip("this transformers describes the model's recurrence by its flag only")
    # (RWKV keeps its state outside transformers' caches: its forward's ``state``)
    assert hm.stateful == (name in RECURRENT)


def _setup(name):
    hm = _model(name)
    pr = build_prompt(PROMPT, hm, chat=False)
    ids, offsets = hm.tokenize(pr.text, add_special_tokens=False)
    out = np.asarray(hm.tokenize(" Because of Rayleigh scattering.")[0])
    return hm, np.asarray(ids), segment(pr.text, pr.regions, offsets, "word"), out


def _assert_gradient_likelihood_is_plain(hm, ids, fs, out) -> None:
    """The gradient methods' log-likelihood of the output equals a plain forward's."""
    from attrlens.games.whitebox import WhiteBoxGame

    unmasked = Masker("delete", ids, fs).apply(np.ones((1, len(fs)), dtype=bool))[0]
    want = _scratch(hm, unmasked, out, len(ids))
    got = WhiteBoxGame(hm, ids, out, fs).log_likelihood([1.0])[0]
    np.testing.assert_allclose(got, want, atol=1e-4)


def _assert_beams_are_plain(hm, ids) -> None:
    """GiLOT's greedy beam marginals (the prompt, and one with a token switched off) equal
    the plain forward's distributions along the beam."""
    from attrlens.scoring.beams import BeamRunner, make_inputs

    keep = np.ones((3, len(ids)), dtype=bool)
    keep[1, 2] = keep[2, len(ids) - 3] = False
    inp = make_inputs(ids, keep, kind="attention_off")
    for i, marginal in BeamRunner(hm, ids, beams=1, horizon=4).search(inp):
        new = np.asarray(marginal.beams.tokens[0][:3], dtype=np.int64)
        seq = np.concatenate([inp.ids[i], new])
        att = np.concatenate([inp.keep[i], np.ones(3, dtype=bool)]).astype(np.int64)
        with torch.no_grad():
            lp = hm.model(input_ids=torch.as_tensor(seq)[None],
                          attention_mask=torch.as_tensor(att)[None],
                          position_ids=torch.arange(len(seq))[None]).logits[0]
        lp = lp.double().log_softmax(-1)[len(ids) - 1: len(ids) + 3]
        np.testing.assert_allclose(marginal.logp.cpu().numpy(), lp.numpy(), atol=1e-4,
                                   err_msg=f"input {i}")


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", sorted(_configs(make_tiny_tokenizer())))
def test_gradients_and_beams_equal_plain_forwards_on_any_architecture(name) -> None:
    """The white-box game's likelihood and GiLOT's beams (prefix shared) equal plain forwards
    (the beams of a sliding-window model read a cache that had kept only the last window of
    its sliding layers: Gemma-2 0.33, gpt-oss 0.78 nats off); recurrent models are refused
    by the beams (tested below)."""
    hm, ids, fs, out = _setup(name)
    _assert_gradient_likelihood_is_plain(hm, ids, fs, out)
    if not hm.stateful and hm.keeps_cache:
        _assert_beams_are_plain(hm, ids)


def test_gilot_is_refused_on_one_line_for_a_model_without_a_cache() -> None:
    """OpenAI GPT takes no key/value cache: GiLOT's beams failed with KeyError 'k' (the
    prefix capture found nothing); a refusal now, and the other methods run."""
    import attrlens

    hm = _model("openai_gpt")
    with pytest.raises(CapabilityError, match="takes no key/value cache") as e:
        attrlens.explain(PROMPT, model=hm, method="gilot", chat=False)
    assert "\n" not in str(e.value)
    for method in ("loo", "ig", "attention"):
        r = attrlens.explain(PROMPT, model=hm, method=method, output=" Because.", chat=False)
        assert np.all(np.isfinite(r.scores)) and np.abs(r.scores).max() > 0, method


def test_chunked_attention_past_one_chunk_in_gradients_and_beams() -> None:
    """Llama-4's chunked layers (a query reads its own chunk only) past one chunk: the
    packed attention does not chunk, and transformers' chunked masks behind a shared prefix
    read the wrong keys (1.19 and 0.42 nats off): both run transformers' own masks there."""
    if "llama4_text" not in _configs(make_tiny_tokenizer()):
        pytest.skip("no Llama-4 in this transformers")
    hm, ids, fs, out = _setup("llama4_text")
    assert len(ids) > 2 * hm.attention_chunk
    _assert_gradient_likelihood_is_plain(hm, ids, fs, out)
    _assert_beams_are_plain(hm, ids)


@pytest.mark.integration
def test_quanto_4bit_model_scores_as_its_plain_forwards(tmp_path) -> None:
    """A real optimum-quanto 4-bit model (transformers' QuantoConfig, on the CPU): its weights
    refuse torch.inference_mode(), under which the engine, GiLOT's beams and generation
    crashed ("Cannot set version_counter for inference tensor"); now the engine equals one
    plain forward per perturbed prompt, and the gradient methods and beams hold too."""
    from conftest import make_tiny_model, save_model_dir
    from transformers import AutoModelForCausalLM, QuantoConfig

    import attrlens
    from attrlens.models.base import LOAD_KWARGS

    d = save_model_dir(make_tiny_model(), tmp_path / "tiny")
    q = AutoModelForCausalLM.from_pretrained(d, quantization_config=QuantoConfig(weights="int4"),
                                             device_map="cpu", **LOAD_KWARGS)
    assert type(q.model.layers[0].mlp.down_proj.weight).__name__ == "WeightQBitsTensor"
    hm = wrap_model(q, make_tiny_model().tokenizer, model_id="tiny-quanto-int4")
    assert not hm.inference_mode_ok
    pr = build_prompt(PROMPT, hm, chat=False)
    ids, offsets = hm.tokenize(pr.text, add_special_tokens=False)
    ids = np.asarray(ids)
    fs = segment(pr.text, pr.regions, offsets, "word")
    out = np.asarray(hm.tokenize(" Because of Rayleigh scattering.")[0])
    inputs = Masker("delete", ids, fs).apply(loo_masks(len(fs)))
    ref = np.stack([_scratch(hm, x, out, len(ids)) for x in inputs])
    assert np.ptp(ref.sum(1)) > 0.05
    np.testing.assert_allclose(ScoringEngine(hm, ids, out).token_logprobs(inputs), ref,
                               atol=1e-4)
    _assert_gradient_likelihood_is_plain(hm, ids, fs, out)
    _assert_beams_are_plain(hm, ids)
    for method in ("loo", "gilot", "ig"):  # generation included (no output given)
        r = attrlens.explain(PROMPT, model=hm, method=method, max_new_tokens=3)
        assert np.all(np.isfinite(r.scores)) and np.abs(r.scores).max() > 1e-4, method


def test_hash_routed_experts_refuse_the_gradient_methods() -> None:
    """DeepSeek-V4's hash-routed experts pick experts by token id, which a forward from
    embeddings does not give: the gradient methods failed inside the model
    ("'NoneType' object has no attribute 'reshape'"); a one-line refusal now, and LOO runs."""
    import attrlens

    hm = _model("deepseek_v4", mlp_layer_types=["hash_moe", "moe"])
    for method in ("ig", "grad_x_input"):
        with pytest.raises(CapabilityError, match="by their ids") as e:
            attrlens.explain(PROMPT, model=hm, method=method, output=" Because.", chat=False)
        assert "\n" not in str(e.value)
    r = attrlens.explain(PROMPT, model=hm, method="loo", output=" Because.", chat=False)
    assert np.all(np.isfinite(r.scores))


def test_logits_cut_to_the_unpadded_vocabulary() -> None:
    """Inkling cuts its logits to ``unpadded_vocab_size``: the log-probabilities normalise
    over that vocabulary, not the head's padded rows (the engine and the gradient methods'
    likelihood equal the model's own)."""
    tok = make_tiny_tokenizer()
    hm = _model("inkling_text", unpadded_vocab_size=len(tok) - 20)
    assert hm.vocab_rows == len(tok) - 20
    pr = build_prompt(PROMPT, hm, chat=False)
    ids, offsets = hm.tokenize(pr.text, add_special_tokens=False)
    ids = np.asarray(ids)
    fs = segment(pr.text, pr.regions, offsets, "word")
    out = np.asarray(hm.tokenize(" Because of it.")[0])
    assert out.max() < len(tok) - 20
    inputs = Masker("delete", ids, fs).apply(loo_masks(len(fs)))
    ref = np.stack([_scratch(hm, x, out, len(ids)) for x in inputs])
    np.testing.assert_allclose(ScoringEngine(hm, ids, out).token_logprobs(inputs), ref,
                               atol=1e-4)
    _assert_gradient_likelihood_is_plain(hm, ids, fs, out)


@pytest.mark.parametrize(("name", "cut"), [("inkling_text", 20), ("inkling2_text", None)])
def test_generation_stays_in_the_vocabulary_of_a_padded_head(name, cut) -> None:
    """A head with rows past the vocabulary (Inkling's unpadded_vocab_size; here wider than
    the embedding table, as transformers' default config makes it) let the greedy answer pick
    a row that is no token: IndexError in the embedding at the next step. Generation takes
    the argmax over the real rows only (the distribution attrlens scores)."""
    import torch

    tok = make_tiny_tokenizer()
    hm = _model(name, **({} if cut is None else {"unpadded_vocab_size": len(tok) - cut}))
    rows = hm.model.get_output_embeddings().weight.shape[0]
    real = min(hm.vocab_rows, hm.input_embeddings.num_embeddings)
    assert rows > real  # head rows that are no token
    prompt = hm.tokenize(PROMPT, add_special_tokens=False)[0]
    new = hm.generate(prompt, max_new_tokens=6)
    assert len(new) >= 1 and max(new) < real
    # each step's token is the argmax of the model's logits over the real rows
    seq = torch.tensor([prompt + new])
    with torch.no_grad():
        logits = hm.model(input_ids=seq).logits[0, len(prompt) - 1 : -1, :real]
    assert logits.argmax(-1).tolist() == new


@pytest.mark.parametrize("name", ["modernbert_decoder", "gemma4_assistant", "blt"])
def test_models_attrlens_cannot_run_are_refused_on_one_line(name) -> None:
    """ModernBERT-decoder's get_decoder() is its vocabulary projection (a TypeError deep in
    the engine; now its real decoder is found, and its two-stage head is refused by the
    head check); Gemma-4's assistant is a speculative-decoding drafter that needs its target
    model's states (a ValueError inside the model); BLT scores byte patches with no flat
    decoder (an AttributeError in the prefix cache)."""
    import transformers

    import attrlens

    tok = make_tiny_tokenizer()
    sp = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
          "bos_token_id": tok.bos_token_id}
    lm = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 512,
          "tie_word_embeddings": False, **sp}
    byte = {"vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512}
    cfg, cls, kw, needle = {
        # byte patches: no flat decoder (a KeyError-like AttributeError in the engine)
        "blt": ("BltConfig", "BltForCausalLM",
                {"vocab_size": len(tok), "max_position_embeddings": 512, "patch_size": 4,
                 "patching_mode": "entropy", "cross_attn_k": 2,
                 "encoder_hash_byte_group_size": [3, 4], "encoder_hash_byte_group_vocab": 64,
                 "encoder_hash_byte_group_nb_functions": 1, "patcher_config": dict(byte),
                 "encoder_config": {**byte, "hidden_size_global": 64, "cross_attn_k": 2},
                 "decoder_config": {**byte, "hidden_size_global": 64, "cross_attn_k": 2},
                 "global_config": {"hidden_size": 64, "num_attention_heads": 4,
                                   "num_hidden_layers": 2, "intermediate_size": 128,
                                   "max_position_embeddings": 512},
                 "use_cache": False, "tie_word_embeddings": False, **sp},
                "no single stack of token-level decoder layers"),
        "modernbert_decoder": ("ModernBertDecoderConfig", "ModernBertDecoderForCausalLM",
                               {**lm, "local_attention": 12}, "LM head's output"),
        "gemma4_assistant": ("Gemma4AssistantConfig", "Gemma4AssistantForCausalLM",
                             {"text_config": {**lm, "num_key_value_heads": 2, "head_dim": 16,
                                              "global_head_dim": 16, "sliding_window": 6,
                                              "layer_types": ["sliding_attention",
                                                              "full_attention"],
                                              "hidden_size_per_layer_input": 0,
                                              "vocab_size_per_layer_input": 0},
                              "backbone_hidden_size": 64, "tie_word_embeddings": False},
                             "drafting model"),
    }[name]
    if not hasattr(transformers, cls):
        pytest.skip(f"no {cls} in this transformers")
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, cfg)(**kw)).eval()
    with pytest.raises(CapabilityError, match=needle) as e:
        attrlens.explain(PROMPT, model=model, tokenizer=tok, method="loo",
                         output=" Because.", chat=False)
    assert "\n" not in str(e.value)
