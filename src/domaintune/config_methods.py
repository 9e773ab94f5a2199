"""Config sections of the adaptation methods (issue #4), one class per method family.

Each section is a field of `RunConfig` (`peft:`, `freeze:`, `fewshot:`, `zeroshot:`,
`labels:`, `augment:`, `robust:`, `tune:`, `pretrain:`); a section is read only by the
method or feature that owns it, so a config that sets `peft.r` with `method: full`
is valid and simply unused (the report lists the method's own settings).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PeftSection(_Strict):
    r: int = Field(8, ge=1, description="LoRA/AdaLoRA rank (AdaLoRA: the initial rank before pruning).")
    alpha: int = Field(16, ge=1, description="LoRA scaling alpha (update scaled by alpha / r).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(None, description="Module names to adapt; empty picks the attention and feed-forward projections of the model type.")
    target_r: int = Field(4, ge=1, description="AdaLoRA: average rank after budget pruning.")
    num_virtual_tokens: int = Field(20, ge=1, description="Prefix/prompt tuning: number of virtual tokens.")
    init_text: str | None = Field(None, description="Prompt tuning: initialise the virtual tokens from this text (e.g. 'Classify the banking question:').")


class FreezeSection(_Strict):
    head_only: bool = Field(False, description="Train only the task head (a linear probe over the frozen encoder).")
    top_k_layers: int | None = Field(None, ge=0, description="Train only the top N transformer layers (and the head); the rest stay frozen.")
    freeze_embeddings: bool = Field(False, description="Keep the embedding layer frozen (with full fine-tuning or top_k_layers).")


class FewShotSection(_Strict):
    pair_budget: int = Field(20000, ge=10, description="Contrastive pairs per epoch, whatever the data size: steps = budget x epochs / (B(B-1)/2) with B texts per step (all in-batch pairs count); memory and time stay bounded.")
    contrastive_epochs: float = Field(1.0, gt=0, description="Passes over the pair budget for the body.")
    contrastive_lr: float = Field(2e-5, gt=0, description="Learning rate of the contrastive body training (AdamW, linear warm-up and decay).")
    batch_size: int = Field(32, ge=2, description="Distinct texts per contrastive step; every pair among them is used (B(B-1)/2 pairs from B forward passes).")
    samples_per_class: int = Field(4, ge=1, description="Texts per class in a step (stratified batches: each text has positives in its batch).")
    loss: Literal["cosine", "supcon"] = Field("cosine", description="`cosine`: SetFit's cosine-similarity loss over all in-batch pairs (positives and negatives weighted equally); `supcon`: supervised contrastive loss.")
    temperature: float = Field(0.1, gt=0, description="Temperature of loss `supcon`.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of contrastive steps with linear warm-up.")
    normalize: bool = Field(True, description="L2-normalise the embeddings before the head (as all-MiniLM-L6-v2 and SetFit do).")
    head_c: float = Field(100.0, gt=0, description="Inverse regularisation strength C of the logistic-regression head (on unit-length embeddings C=1, sklearn's default, underfits many-class data: banking77 8-shot 78.1 % vs 83.3 % at C=100).")
    head_epochs: int = Field(0, ge=0, description="Extra end-to-end epochs (cross-entropy, train.lr) after the logistic-regression head; 0 keeps the head as fitted.")
    early_stopping_patience: int | None = Field(None, ge=1, description="With a dev split: refit the head and score dev every eval_steps; stop after N evaluations without improvement and keep the best body.")
    eval_steps: int | None = Field(None, ge=1, description="Contrastive steps between dev evaluations for early stopping; empty: a tenth of the steps.")


class ZeroShotSection(_Strict):
    variant: Literal["embedding", "lm"] = Field("embedding", description="`embedding`: similarity of text and label descriptions; `lm`: score each label with a causal language model.")
    lm: str = Field("smollm2-135m", description="Causal LM for `variant: lm` (smollm2-135m English, gemma3-270m multilingual); prepare it once with `domaintune models prepare NAME`.")
    template: str = Field("Text: {text}\nCategory:", description="Prompt for `variant: lm`; {text} is replaced by the input; each label (or its description) is scored as the continuation.")
    embedding_template: str = Field("{label}", description="Text embedded per label for `variant: embedding`; {label} is the description or the label name.")
    k_examples: int = Field(0, ge=0, description="In-context examples per prompt (few-shot prompting), drawn from train with the seed.")
    scale: float = Field(20.0, gt=0, description="`variant: embedding`: temperature on the cosine similarities (logits = scale * cos), so the softmax probabilities are meaningful.")
    score: Literal["mean", "sum"] = Field("mean", description="`variant: lm`: a label's score is the mean (length-normalised) or the sum of its tokens' log-probs.")
    calibrate: bool = Field(False, description="`variant: lm`: contextual calibration — subtract each label's score for a content-free input (\"N/A\"), removing the prompt's prior preference for some labels (helps some prompts, hurts others: on sentiment \"N/A\" itself reads as negative).")


class LabelsSection(_Strict):
    descriptions: dict[str, str] = Field(default_factory=dict, description="Label -> natural-language description (English or Chinese) for zero-shot; label names are used when empty.")


class AugmentSection(_Strict):
    enabled: bool = Field(False, description="Add augmented copies of the training texts (offline: EDA edits, lexicon synonyms, character noise); dev/test never change.")
    copies: int = Field(1, ge=1, description="Augmented copies per training text; each copy gets one operation drawn among those enabled (as in EDA).")
    swap: float = Field(0.1, ge=0, le=1, description="Share of words (Chinese: characters) randomly swapped.")
    delete: float = Field(0.1, ge=0, le=1, description="Share of words (Chinese: characters) randomly deleted.")
    insert: float = Field(0.0, ge=0, le=1, description="Share of words inserted (a synonym from the lexicon, or a copy of a word of the text).")
    synonyms: str | None = Field(None, description="Synonym lexicon file (one group per line, comma or space separated) for synonym replacement.")
    replace: float = Field(0.1, ge=0, le=1, description="Share of words replaced by a lexicon synonym (needs augment.synonyms; Chinese entries match as substrings).")
    char_noise: float = Field(0.0, ge=0, le=1, description="Share of characters with typo noise (English: swap/drop/double letters; Chinese: drop/double/swap characters).")


class RobustSection(_Strict):
    adversarial: Literal["none", "fgm", "pgd"] = Field("none", description="Adversarial training on the word embeddings: FGM (one step) or PGD (several).")
    epsilon: float = Field(1.0, gt=0, description="Adversarial perturbation norm on the embeddings.")
    pgd_steps: int = Field(3, ge=1, description="PGD: ascent steps per batch.")
    pgd_alpha: float = Field(0.3, gt=0, description="PGD: size of each ascent step (the total stays within epsilon).")
    rdrop_alpha: float = Field(0.0, ge=0, description="R-Drop: weight of the symmetric KL between two dropout passes (0 disables; 1-5 typical).")


class TuneSection(_Strict):
    trials: int = Field(20, ge=1, description="Optuna trials (the CLI's --trials overrides).")
    space: dict[str, dict] = Field(default_factory=dict, description="Search space: key -> {low, high, log} or {choices: [...]}, e.g. train.lr: {low: 1e-5, high: 1e-4, log: true}; empty uses the method's defaults.")
    storage: str | None = Field(None, description="Optuna storage URL; empty stores the study in OUTPUT_DIR/tune/study.db (SQLite), so an interrupted search resumes.")
    pruning: bool = Field(True, description="Stop unpromising trials early on their intermediate dev scores (median pruner).")


class PretrainSection(_Strict):
    text_file: str | None = Field(None, description="Unlabelled domain text for `domaintune pretrain`: one text per line (.txt) or a column of a csv/tsv/jsonl.")
    text_column: str | int = Field("text", description="Column with the text when text_file is a table.")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="Share of tokens masked for masked-LM training.")
    whole_word_mask: bool = Field(False, description="Mask whole words (Chinese: characters are words) instead of single sub-tokens.")
    dev_fraction: float = Field(0.02, ge=0, lt=0.5, description="Share of the texts held out to score masked-LM loss (selects the best checkpoint; 0 disables).")
    max_dev_texts: int = Field(1000, ge=1, description="Cap on held-out texts, so evaluation stays cheap on large corpora.")


class GenerationSection(_Strict):
    packing: bool = Field(False, description="Pack each batch's conversations into rows of train.max_length (no attention across examples): fewer padded tokens on short data.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: less memory for long texts, about a third more time.")
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Longest reply generated in evaluation and by default in `predict`/`serve`.")
    temperature: float = Field(0.0, ge=0, description="0 decodes greedily (reproducible evaluation); above 0 samples.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with temperature > 0).")
    top_k: int = Field(0, ge=0, description="Sample among the k most likely tokens (0: off).")
    repetition_penalty: float = Field(1.0, gt=0, description="Penalty on tokens already generated (1.0: off).")
    stop: list[str] = Field(default_factory=list, description="Strings that end a reply (cut from the text); the end-of-turn token always does.")
    eval_examples: int | None = Field(200, ge=1, description="Test rows generated for the report (N evenly spaced rows, the same for every baseline); empty generates all.")
    eval_batch_size: int = Field(8, ge=1, description="Prompts generated together in evaluation (sorted by length, left-padded).")
    context_tokens: int = Field(2048, ge=16, description="Prompt + reply token cap when generating (the model's own limit applies too).")
    nearest_neighbour_model: str | None = Field(None, description="Embedding model of the nearest-neighbour baseline; empty: minilm-l6 for English, m3e-small for Chinese (research-only licence).")
    report_samples: int = Field(8, ge=0, description="Rows of the report's table of sample outputs (prompt, reference, generated).")
