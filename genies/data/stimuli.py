"""The texts a forward pass reads: one stimulus per family of consumers.

* `plain`: prompt + response + EOS. Zero-shot log-probs, MMS and LAT stimulus 1 read it
  (activations at the final EOS, which has seen the whole response).
* `lat2`: prompt + the LAT stimulus-2 template around the response (docs/fidelity.md).
* `yesno`: prompt + response + the contrast question, continued by "Yes" and by "No"
  (CRA and CCS, docs/fidelity.md). Both answers continue one shared prefix, so the
  prompt, response and question are computed once for the pair of answers. Upstream's CCS
  copy wrote "###Does" without a space in one template; both answers use the spaced form.

Each stimulus is expressed as (prefix, continuations) units for the prefix-reuse scorer. A prefix is
the dataset's prompt (the user's turn when the model reads chat templates, `genies.data.chat`)
followed by the stimulus's own text before the scored tokens (the start of the assistant's turn):
`stimulus_turns` keeps the two apart for `genies.models.tokens.tokenize_examples`.
"""

from __future__ import annotations

STIMULI = ("plain", "lat2", "yesno")
LAT2_BEFORE = "Consider the extent to which the responder follows the instruction below.\n"
LAT2_AFTER = "\n\nThe probability that the responder followed the instruction"
CONTRAST_QUESTION = "\n\n### Does the responder successfully follow the instruction?\n"
CONTRAST_ANSWERS = ("Yes", "No")


def stimulus_units(stimulus: str, prompts: list[str], responses: list[list[str]]):
    """(prefixes, continuations, append_eos): what the scorer runs for a stimulus.

    `plain` and `lat2` have one unit per example (its responses continue the prompt);
    `yesno` has one unit per (example, response), continued by the two answers, so its
    rows are ordered example, response, answer.
    """
    prompts, starts, continuations, append_eos = stimulus_turns(stimulus, prompts, responses)
    return [p + s for p, s in zip(prompts, starts, strict=True)], continuations, append_eos


def stimulus_turns(stimulus: str, prompts: list[str], responses: list[list[str]]):
    """(prompts, assistant_starts, continuations, append_eos): `stimulus_units` with each
    prefix split into the dataset's prompt and the stimulus text that follows it."""
    if stimulus == "plain":
        return list(prompts), [""] * len(prompts), [list(r) for r in responses], True
    if stimulus == "lat2":
        wrapped = [[f"{LAT2_BEFORE}{r}{LAT2_AFTER}" for r in rs] for rs in responses]
        return list(prompts), [""] * len(prompts), wrapped, False
    if stimulus == "yesno":
        units = [(p, f"{r}{CONTRAST_QUESTION}") for p, rs in zip(prompts, responses, strict=True)
                 for r in rs]  # fmt: skip
        answers = [list(CONTRAST_ANSWERS)] * len(units)
        return [p for p, _ in units], [s for _, s in units], answers, False
    raise ValueError(f"unknown stimulus {stimulus!r}; use one of {STIMULI}")
