# Written by the surgery toolkit beside a checkpoint whose structure transformers' own classes
# cannot express (factorized embeddings, low-rank linears, shared layers, per-layer head counts or
# FFN sizes). Loaded with `trust_remote_code=True`.
"""The configuration of a surgery checkpoint: the family's own config.json keys, kept as they are
(a DistilBERT config keeps `dim`, `n_layers`, ...), plus the `"surgery"` object that describes
what the cuts changed. `model_type` stays the family's (`bert`, `roberta`, `xlm-roberta`,
`camembert`, `distilbert`, `electra`) so the toolkit reads a saved copy back."""

from transformers import PretrainedConfig


class SurgeryConfig(PretrainedConfig):
    model_type = "surgery"
    # DistilBERT's key names are read as they are (see `modeling_surgery.Structure`).
    attribute_map = {}

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        # The family's model_type is kept apart from the class's (which names this class).
        if "model_type" in config_dict:
            config_dict = dict(config_dict)
            config_dict["family_model_type"] = config_dict.pop("model_type")
        return config_dict, kwargs

    def __post_init__(self, **kwargs):
        family = kwargs.pop("family_model_type", None)
        self.family_model_type = kwargs.pop("model_type", None) or family or "bert"
        super().__post_init__(**kwargs)

    def to_dict(self):
        output = super().to_dict()
        output["model_type"] = output.pop("family_model_type", None) or "bert"
        return output

    def to_diff_dict(self):
        # Every key is written: the toolkit reads sizes that equal transformers' defaults too.
        output = self.to_dict()
        output.pop("_name_or_path", None)
        return output
