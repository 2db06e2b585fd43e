# swift template registered by qwenrecipes 0.1.0 for recipe tiny-cpu-ddp (engine swift).
# Loaded by `swift sft` through custom_register_path; it holds no recipe value.
# Plain ChatML (Qwen3, no default system prompt, no think handling) whose loss mask is qwenrecipes' rule:
# assistant content + <|im_end|> trained, the "\n" after <|im_end|> never (swift's own qwen3_nothinking trains it).
from swift.template import register_template
from swift.template.base import Template
from swift.template.templates.qwen import QwenTemplateMeta
from swift.template.templates.utils import EmptyTemplateMeta

NAME = 'qwenrecipes_chatml'
NEWLINE = "\n"
ASSISTANT_HEADER = "<|im_start|>assistant\n"


class QwenRecipesChatml(Template):
    """Suffix "<|im_end|>" makes swift relabel only that token after each trained turn; the last turn then ends
    at <|im_end|>, so the "\n" the chat format puts there is appended (trained only under loss_scale all)."""

    def _encode(self, inputs):
        encoded = super()._encode(inputs)
        ids, labels = encoded["input_ids"], encoded.get("labels")
        if labels is None:  # inference: nothing to mask, and the prompt ends with the assistant header
            return encoded
        suffix = self._encode_context_list(self.template_meta.suffix)[0]
        if ids[-len(suffix):] == suffix:
            newline = self._tokenize(NEWLINE)
            trained = self.loss_scale.base_strategy == "all"
            ids.extend(newline)
            labels.extend(newline if trained else [-100] * len(newline))
            if encoded.get("loss_scale") is not None:
                encoded["loss_scale"].extend([1.0 if trained else 0.0] * len(newline))
        return encoded

    def _add_dynamic_eos(self, input_ids, labels, loss_scale, suffix_tokens_id):
        """swift relabels the suffix only where a trained span ends, so an empty assistant turn in the middle of
        a conversation would leave its <|im_end|> untrained: train the suffix right after an assistant header too."""
        Template._add_dynamic_eos(input_ids, labels, loss_scale, suffix_tokens_id)
        if self.loss_scale.base_strategy != "default":
            return
        header, width = self._tokenize(ASSISTANT_HEADER), len(suffix_tokens_id)
        for p in range(len(header), len(input_ids) - width + 1):
            if input_ids[p - len(header):p] == header and input_ids[p:p + width] == suffix_tokens_id:
                labels[p:p + width] = suffix_tokens_id
                if loss_scale:
                    loss_scale[p:p + width] = [1] * width


# stop_words empty: swift adds no suffix after a response that ends with a stop word (<|endoftext|> for Qwen), and
# the chat format closes every turn with <|im_end|> whatever its content ends with.
register_template(QwenTemplateMeta(NAME, default_system=None, suffix=["<|im_end|>"], stop_words=[],
                                   template_cls=QwenRecipesChatml), exist_ok=True)

# Token handoff (data.handoff: tokens): each row is one assistant content {"token_ids", "loss_scale"} made by
# qwenrecipes; this template adds nothing around it (no prefix, BOS or suffix), so nothing is relabelled.
register_template(EmptyTemplateMeta('qwenrecipes_tokens', suffix=[], auto_add_bos=False, default_system=None),
                  exist_ok=True)
