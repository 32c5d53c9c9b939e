# Written by the surgery toolkit beside a checkpoint whose structure transformers' own classes
# cannot express (factorized embeddings, low-rank linears, shared layers, per-layer head counts or
# FFN sizes). Loaded with `trust_remote_code=True`.
"""One modeling file for every structure the `"surgery"` object of config.json describes, in every
family the toolkit reads (BERT, RoBERTa / XLM-RoBERTa / CamemBERT, DistilBERT, ELECTRA).

The modules and parameter names are the family's own (`bert.encoder.layer.N.attention.self.query`,
`distilbert.transformer.layer.N.ffn.lin1`, ...), so the checkpoint's tensors load by name, and the
computation is the one of transformers' `*Model` / `*ForTokenClassification` classes:
- word embeddings are a V×E table, or a V×r table followed by `embeddings.word_projection` (r→E,
  no bias) when factorized; then position embeddings (RoBERTa's positions count from
  `pad_token_id + 1` and padding tokens get `pad_token_id`), token types (none in DistilBERT),
  LayerNorm, dropout, and ELECTRA's `embeddings_project` when the embeddings are narrower;
- a linear is dense (`weight`, sparse ones are stored dense with zeros) or low-rank (`down.weight`
  r×in applied first, then `up.weight` out×r) with its bias;
- each stored layer has its own head count (0: the attention block adds only its output bias)
  and FFN size (0: the FFN adds only its output bias); logical layer i runs stored layer
  `layer_map[i]`, so shared layers are stored once;
- the attention mask (1 = token, 0 = padding) masks keys; `position_ids` and `token_type_ids`
  default as in transformers.
"""

import math

import torch
from torch import nn
from torch.nn import CrossEntropyLoss

from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, TokenClassifierOutput

from .configuration_surgery import SurgeryConfig

# DistilBERT's config keys for the fields read below.
DISTILBERT_KEYS = {
    "hidden_size": "dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "intermediate_size": "hidden_dim",
    "hidden_act": "activation",
    "hidden_dropout_prob": "dropout",
    "attention_probs_dropout_prob": "attention_dropout",
}

FAMILIES = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "camembert": "roberta",
    "distilbert": "distilbert",
    "electra": "electra",
}

# Module paths inside a layer, per family: (query, key, value, attention output, intermediate,
# output, attention LayerNorm, output LayerNorm).
LAYER_PATHS = {
    "bert": {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attention-output": "attention.output.dense",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "attention_norm": "attention.output.LayerNorm",
        "output_norm": "output.LayerNorm",
    },
    "distilbert": {
        "query": "attention.q_lin",
        "key": "attention.k_lin",
        "value": "attention.v_lin",
        "attention-output": "attention.out_lin",
        "intermediate": "ffn.lin1",
        "output": "ffn.lin2",
        "attention_norm": "sa_layer_norm",
        "output_norm": "output_layer_norm",
    },
}


class Structure:
    """The resolved structure of a config: the family's sizes and the `"surgery"` object."""

    def __init__(self, config):
        model_type = getattr(config, "family_model_type", None) or "bert"
        if model_type not in FAMILIES:
            raise ValueError(f"model_type `{model_type}` is not one of {', '.join(FAMILIES)}")
        self.family = FAMILIES[model_type]
        distil = self.family == "distilbert"

        def get(name, default=None):
            key = DISTILBERT_KEYS.get(name, name) if distil else name
            value = getattr(config, key, None)
            return default if value is None else value

        self.hidden = get("hidden_size")
        self.num_heads = get("num_attention_heads")
        self.head_dim = self.hidden // self.num_heads
        self.intermediate = get("intermediate_size")
        self.vocab = get("vocab_size")
        self.max_positions = get("max_position_embeddings", 512)
        self.type_vocab = 0 if distil else get("type_vocab_size", 2)
        self.eps = 1e-12 if distil else get("layer_norm_eps", 1e-12)
        self.act = get("hidden_act", "gelu")
        self.hidden_dropout = get("hidden_dropout_prob", 0.1)
        self.attention_dropout = get("attention_probs_dropout_prob", 0.1)
        classifier_dropout = None if distil else getattr(config, "classifier_dropout", None)
        self.classifier_dropout = self.hidden_dropout if classifier_dropout is None else classifier_dropout
        self.pad = get("pad_token_id", 0)
        self.embedding_size = self.hidden
        if self.family == "electra" and getattr(config, "embedding_size", None) is not None:
            self.embedding_size = config.embedding_size

        info = getattr(config, "surgery", None) or {}
        embeddings = info.get("embeddings") or {"kind": "dense"}
        self.embedding_rank = embeddings.get("rank") if embeddings.get("kind") == "factorized" else None
        logical = get("num_hidden_layers")
        self.layer_map = list(info.get("layer_map") or range(logical))
        stored = max(self.layer_map) + 1 if self.layer_map else 0
        layers = info.get("layers")
        self.layers = []
        for i in range(stored):
            entry = layers[i] if layers else {}
            linears = {}
            for slot, kind in (entry.get("linears") or {}).items():
                # Sparse linears are stored dense (with zeros).
                linears[slot] = kind.get("rank") if kind.get("kind") == "low_rank" else None
            inter = entry.get("intermediate_size")
            self.layers.append(
                {
                    "num_heads": entry.get("num_heads", self.num_heads),
                    "intermediate": self.intermediate if inter is None else inter,
                    "ranks": linears,
                }
            )

    @property
    def prefix(self):
        return self.family


def place(root, path, module):
    """Registers `module` at the dotted `path` under `root`, creating empty containers between."""
    parts = path.split(".")
    node = root
    for part in parts[:-1]:
        if not hasattr(node, part):
            node.add_module(part, nn.Module())
        node = getattr(node, part)
    node.add_module(parts[-1], module)
    return module


class LowRankLinear(nn.Module):
    """W ≈ up · down: `down` (r×in) is applied first, then `up` (out×r) and the bias."""

    def __init__(self, in_features, out_features, rank):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x):
        return nn.functional.linear(self.down(x), self.up.weight, self.bias)


def linear(in_features, out_features, rank):
    if rank is None:
        return nn.Linear(in_features, out_features)
    return LowRankLinear(in_features, out_features, rank)


class SurgeryEmbeddings(nn.Module):
    """Word (dense or factorized) + position + token type embeddings, LayerNorm and dropout."""

    def __init__(self, s):
        super().__init__()
        self.structure = s
        e = s.embedding_size
        if s.embedding_rank is None:
            self.word_embeddings = nn.Embedding(s.vocab, e)
        else:
            self.word_embeddings = nn.Embedding(s.vocab, s.embedding_rank)
            self.word_projection = nn.Linear(s.embedding_rank, e, bias=False)
        self.position_embeddings = nn.Embedding(s.max_positions, e)
        if s.type_vocab > 0:
            self.token_type_embeddings = nn.Embedding(s.type_vocab, e)
        self.LayerNorm = nn.LayerNorm(e, eps=s.eps)
        self.dropout = nn.Dropout(s.hidden_dropout)

    def embed_words(self, input_ids):
        x = self.word_embeddings(input_ids)
        if self.structure.embedding_rank is not None:
            x = self.word_projection(x)
        return x

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        s = self.structure
        if inputs_embeds is None:
            inputs_embeds = self.embed_words(input_ids)
        batch, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        if position_ids is None:
            if s.family == "roberta" and input_ids is not None:
                mask = input_ids.ne(s.pad).int()
                position_ids = (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + s.pad
            elif s.family == "roberta":
                start = s.pad + 1
                position_ids = torch.arange(start, start + length, device=device).expand(batch, -1)
            else:
                position_ids = torch.arange(length, device=device).expand(batch, -1)
        x = inputs_embeds + self.position_embeddings(position_ids)
        if s.type_vocab > 0:
            if token_type_ids is None:
                token_type_ids = torch.zeros((batch, length), dtype=torch.long, device=device)
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class SurgeryLayer(nn.Module):
    """One encoder layer (`BertLayer` / DistilBERT's `TransformerBlock`) with its own head count,
    FFN size and linears; submodules are named as in the family's own layer."""

    def __init__(self, s, spec):
        super().__init__()
        paths = LAYER_PATHS["distilbert" if s.family == "distilbert" else "bert"]
        h = s.hidden
        self.num_heads = spec["num_heads"]
        self.head_dim = s.head_dim
        width = self.num_heads * s.head_dim
        inter = spec["intermediate"]
        ranks = spec["ranks"]
        shapes = {
            "query": (h, width),
            "key": (h, width),
            "value": (h, width),
            "attention-output": (width, h),
            "intermediate": (h, inter),
            "output": (inter, h),
        }
        # Plain references (not registered twice): the modules live at their family's paths.
        parts = {}
        for slot, (i, o) in shapes.items():
            parts[slot] = place(self, paths[slot], linear(i, o, ranks.get(slot)))
        for norm in ("attention_norm", "output_norm"):
            parts[norm] = place(self, paths[norm], nn.LayerNorm(h, eps=s.eps))
        self.parts = parts
        self.act = ACT2FN[s.act]
        self.dropout = nn.Dropout(s.hidden_dropout)
        self.attention_dropout = nn.Dropout(s.attention_dropout)

    def forward(self, x, mask_bias):
        p = self.parts
        batch, length, hidden = x.shape
        if self.num_heads == 0:
            # No heads left: the attention block adds only its output bias.
            attn = p["attention-output"].bias.expand(batch, length, hidden)
            probs = x.new_zeros((batch, 0, length, length))
        else:

            def heads(t):
                return t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

            q = heads(p["query"](x))
            k = heads(p["key"](x))
            v = heads(p["value"](x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask_bias is not None:
                scores = scores + mask_bias
            probs = nn.functional.softmax(scores, dim=-1)
            context = torch.matmul(self.attention_dropout(probs), v)
            context = context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
            attn = p["attention-output"](context)
        x1 = p["attention_norm"](self.dropout(attn) + x)
        out = p["output"](self.act(p["intermediate"](x1)))
        return p["output_norm"](self.dropout(out) + x1), probs


def setting(value, config, name, default):
    """A forward argument, else the config's setting, else the default."""
    if value is not None:
        return value
    value = getattr(config, name, None)
    return default if value is None else value


class SurgeryPreTrainedModel(PreTrainedModel):
    config_class = SurgeryConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LowRankLinear):
            nn.init.zeros_(module.bias)


class _SurgeryModel(SurgeryPreTrainedModel):
    """The encoder (`BertModel`, `RobertaModel`, `DistilBertModel`, `ElectraModel`) without pooler."""

    def __init__(self, config):
        super().__init__(config)
        s = Structure(config)
        self.structure = s
        self.embeddings = SurgeryEmbeddings(s)
        if s.embedding_size != s.hidden:
            self.embeddings_project = nn.Linear(s.embedding_size, s.hidden)
        layers = nn.ModuleList([SurgeryLayer(s, spec) for spec in s.layers])
        place(self, "transformer.layer" if s.family == "distilbert" else "encoder.layer", layers)
        self.stored_layers = [layers[i] for i in range(len(layers))]
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids and inputs_embeds")
        output_attentions = setting(output_attentions, self.config, "output_attentions", False)
        output_hidden_states = setting(output_hidden_states, self.config, "output_hidden_states", False)
        return_dict = setting(return_dict, self.config, "return_dict", True)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        if hasattr(self, "embeddings_project"):
            x = self.embeddings_project(x)
        mask_bias = None
        if attention_mask is not None:
            mask = attention_mask[:, None, None, :].to(x.dtype)
            mask_bias = (1.0 - mask) * torch.finfo(x.dtype).min
        hidden_states = (x,) if output_hidden_states else None
        attentions = () if output_attentions else None
        layers = self.stored_layers
        for stored in self.structure.layer_map:
            x, probs = layers[stored](x, mask_bias)
            if output_hidden_states:
                hidden_states = hidden_states + (x,)
            if output_attentions:
                attentions = attentions + (probs,)
        if not return_dict:
            return tuple(v for v in (x, hidden_states, attentions) if v is not None)
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden_states, attentions=attentions)


class _SurgeryForTokenClassification(SurgeryPreTrainedModel):
    """`*ForTokenClassification`: the encoder under the family's prefix, dropout, `classifier`."""

    base_class = None

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        s = Structure(config)
        self.add_module(self.base_model_prefix, self.base_class(config))
        self.dropout = nn.Dropout(s.classifier_dropout)
        self.classifier = nn.Linear(s.hidden, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        return_dict = setting(return_dict, self.config, "return_dict", True)
        outputs = getattr(self, self.base_model_prefix)(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        if not return_dict:
            rest = tuple(v for v in (outputs.hidden_states, outputs.attentions) if v is not None)
            return ((loss,) if loss is not None else ()) + (logits,) + rest
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# One pair of classes per family: transformers reads `base_model_prefix` from the class.
class SurgeryBertModel(_SurgeryModel):
    base_model_prefix = "bert"


class SurgeryBertForTokenClassification(_SurgeryForTokenClassification):
    base_model_prefix = "bert"
    base_class = SurgeryBertModel


class SurgeryRobertaModel(_SurgeryModel):
    base_model_prefix = "roberta"


class SurgeryRobertaForTokenClassification(_SurgeryForTokenClassification):
    base_model_prefix = "roberta"
    base_class = SurgeryRobertaModel


class SurgeryDistilBertModel(_SurgeryModel):
    base_model_prefix = "distilbert"


class SurgeryDistilBertForTokenClassification(_SurgeryForTokenClassification):
    base_model_prefix = "distilbert"
    base_class = SurgeryDistilBertModel


class SurgeryElectraModel(_SurgeryModel):
    base_model_prefix = "electra"


class SurgeryElectraForTokenClassification(_SurgeryForTokenClassification):
    base_model_prefix = "electra"
    base_class = SurgeryElectraModel
