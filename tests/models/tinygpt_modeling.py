"""Test data, not a test: the modeling code of a model directory that ships its own code
(``auto_map``), copied there as ``modeling_tinygpt.py`` by ``tests/models/test_remote_code.py``.

A small GPT-style causal LM written outside transformers, as such code often is: its own
attention (not through transformers' attention interface; weights returned for
``output_attentions``), learned absolute positions, a 2-D padding mask or a 4-D additive
mask, transformers' Cache API for past keys, and the older ``past_key_values`` names."""
import math

import torch
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast


class TinyGPTConfig(PretrainedConfig):
    model_type = "tinygpt"

    def __init__(self, vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=512, **kw):
        self.vocab_size, self.n_embd, self.n_layer = vocab_size, n_embd, n_layer
        self.n_head, self.n_positions = n_head, n_positions
        self.hidden_size, self.num_hidden_layers = n_embd, n_layer
        self.num_attention_heads = n_head
        super().__init__(**kw)


class Block(nn.Module):
    def __init__(self, cfg, idx):
        super().__init__()
        self.idx, self.h = idx, cfg.n_head
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd))

    def forward(self, x, bias, cache):
        b, s, e = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(e, -1)
        q, k, v = (t.view(b, s, self.h, -1).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(k, v, self.idx)
        w = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias).softmax(-1)
        a = (w @ v).transpose(1, 2).reshape(b, s, e)
        x = x + self.proj(a)
        return x + self.mlp(self.ln2(x)), w


class TinyGPTPreTrained(PreTrainedModel):
    config_class = TinyGPTConfig
    base_model_prefix = "transformer"

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.2)


class TinyGPTModel(TinyGPTPreTrained):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kw):
        from transformers import DynamicCache

        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        b, s = x.shape[:2]
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if position_ids is None:
            position_ids = torch.arange(past, past + s, device=x.device)[None].expand(b, -1)
        x = x + self.wpe(position_ids)
        neg = torch.finfo(x.dtype).min
        if attention_mask is not None and attention_mask.dim() == 4:
            bias = attention_mask.to(x.dtype)
        else:
            keep = torch.ones(s, past + s, dtype=torch.bool, device=x.device).tril(past)[None, None]
            if attention_mask is not None:
                keep = keep & attention_mask[:, None, None, :].bool()
            bias = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, neg)
        hs, atts = [x], []
        for blk in self.blocks:
            x, att = blk(x, bias, past_key_values if use_cache else None)
            hs.append(x)
            atts.append(att)
        x = self.ln_f(x)
        hs[-1] = x
        return BaseModelOutputWithPast(
            last_hidden_state=x, past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(hs) if output_hidden_states else None,
            attentions=tuple(atts) if output_attentions else None)


class TinyGPTForCausalLM(TinyGPTPreTrained, GenerationMixin):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.transformer = TinyGPTModel(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.post_init()

    def get_decoder(self):
        return self.transformer

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new):
        self.lm_head = new

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None,
                logits_to_keep=0, **kw):
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, past_key_values=past_key_values,
                               use_cache=use_cache, inputs_embeds=inputs_embeds,
                               output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states)
        logits = self.lm_head(out.last_hidden_state)
        return CausalLMOutputWithPast(logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)
