"""Few-shot prompting and the random baseline.

Few-shot (paper appendix D.8, docs/fidelity.md): each evaluated example's prompt is prefixed
with `n_shots` demonstrations from the source's training examples, each its prompt followed
by its preferred response, in the published code's layout

    "\\n\\n" + P1 + R1 + "\\n\\n" + P2 + R2 + ... + "\\n\\n" + Pn + Rn + "\\n\\n" + prompt

(no EOS between demonstrations); the responses are then scored like zero-shot. Unlike the
published code (4 unseeded `random.sample` draws per example), the demonstrations are drawn
per example from `derive_seed(seed, "few-shot", example_id)`, and never include the evaluated
example itself (same example id or same content fingerprint: GENIES has train/test
duplicates), so few-shot on the source itself does not show the model its answer. All pairs
of an example share its prompt.

Random: a seeded fair coin per pair. It reports probability 0.5 for every pair and is correct
when its coin says so; a tie is otherwise never a win (`genies.data.predictions`), which made the
published random baseline score 0.0 instead of the expected 0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from genies.data.materialise import read_examples
from genies.data.predictions import expand_pairs, predictions_table
from genies.io import RunRecord, write_parquet
from genies.seeds import derive_seed

DEMO_SEPARATOR = "\n\n"


def few_shot_prompt(demonstrations, prompt: str) -> str:
    """The paper-format prompt: demonstrations are (prompt, preferred response) pairs."""
    shots = "".join(DEMO_SEPARATOR + p + r for p, r in demonstrations)
    return shots + DEMO_SEPARATOR + prompt


def fit_few_shot(
    prompts: Sequence[str],
    demonstrations: Sequence[Sequence[tuple[str, str]]],
    count_tokens: Callable[[list[str]], Sequence[int]],
    longest_response: Sequence[int],
    limit: int | None,
) -> tuple[list[str], np.ndarray]:
    """Few-shot prompts that fit: drop demonstrations, last first, until each prompt fits.

    `demonstrations[i]` are example i's (prompt, preferred response) pairs in order;
    `count_tokens(texts)` gives the token count of each prompt text as the scorer will feed it
    (BOS included: `genies.models.context.prompt_token_counter`); `longest_response[i]` is the token
    count of example i's longest response (EOS included). Returns the prompt texts in the
    published layout (`few_shot_prompt`) and the number of demonstrations kept per example
    (int8). An example that does not fit even with none goes on to
    `genies.models.context.fit_examples`.
    """
    n = len(prompts)
    if len(demonstrations) != n or len(longest_response) != n:
        raise ValueError(
            f"{n} prompts, {len(demonstrations)} demonstration lists and "
            f"{len(longest_response)} response lengths"
        )
    kept = np.array([len(d) for d in demonstrations], dtype=np.int8)
    texts = [few_shot_prompt(d, p) for d, p in zip(demonstrations, prompts, strict=True)]
    if limit is None:
        return texts, kept
    pending = list(range(n))
    while pending:
        counts = count_tokens([texts[i] for i in pending])
        still = []
        for i, count in zip(pending, counts, strict=True):
            if count + longest_response[i] > limit and kept[i] > 0:
                kept[i] -= 1
                texts[i] = few_shot_prompt(demonstrations[i][: kept[i]], prompts[i])
                still.append(i)
        pending = still
    return texts, kept


def few_shot_demonstrations(
    eval_examples: pa.Table, source_examples: pa.Table, n_shots: int, seed: int = 0
) -> list[list[tuple[str, str]]]:
    """Per evaluated example, `n_shots` (prompt, preferred response) demonstrations drawn
    from `source_examples`, never the example itself (same id or content fingerprint)."""
    src = source_examples.select(
        ["example_id", "fingerprint", "prompt", "responses", "preferred"]
    ).to_pydict()
    demos = [r[p] for r, p in zip(src["responses"], src["preferred"], strict=True)]
    cols = eval_examples.select(["example_id", "fingerprint"]).to_pydict()
    out = []
    for eid, fp in zip(cols["example_id"], cols["fingerprint"], strict=True):
        candidates = [
            i
            for i, (sid, sfp) in enumerate(zip(src["example_id"], src["fingerprint"], strict=True))
            if sid != eid and sfp != fp
        ]
        if len(candidates) < n_shots:
            raise ValueError(
                f"few-shot for {eid}: {n_shots} demonstrations wanted, the source has only "
                f"{len(candidates)} other examples; lower few_shot.n_shots or raise the caps"
            )
        rng = np.random.default_rng(derive_seed(seed, "few-shot", eid))
        picked = rng.choice(len(candidates), size=n_shots, replace=False)
        out.append([(src["prompt"][candidates[j]], demos[candidates[j]]) for j in picked])
    return out


def few_shot_prompts(
    eval_examples: pa.Table, source_examples: pa.Table, n_shots: int, seed: int = 0
) -> list[str]:
    """The full few-shot prompts (every demonstration) of `eval_examples`."""
    demos = few_shot_demonstrations(eval_examples, source_examples, n_shots, seed)
    prompts = eval_examples.column("prompt").to_pylist()
    return [few_shot_prompt(d, p) for d, p in zip(demos, prompts, strict=True)]


DEMONSTRATIONS = pa.list_(pa.struct([("prompt", pa.string()), ("response", pa.string())]))


def few_shot_examples(
    eval_examples: pa.Table, source_examples: pa.Table, n_shots: int, seed: int = 0
) -> pa.Table:
    """`eval_examples` with their drawn demonstrations in a `demonstrations` column; the
    scoring job, which knows the model's context, assembles the prompts (`fit_few_shot`)."""
    demos = few_shot_demonstrations(eval_examples, source_examples, n_shots, seed)
    column = [[{"prompt": p, "response": r} for p, r in d] for d in demos]
    return eval_examples.append_column("demonstrations", pa.array(column, DEMONSTRATIONS))


def random_predictions(n_pairs: int, eval_dataset: str, seed: int = 0):
    """(prob_preferred, correct): probability 0.5 everywhere, correct by a seeded fair coin."""
    rng = np.random.default_rng(derive_seed(seed, "random", eval_dataset))
    return np.full(n_pairs, 0.5), rng.random(n_pairs) < 0.5


def write_few_shot_examples(
    eval_file, source_file, out_path, *, n_shots, seed, eval_limit, source_limit
) -> None:
    run = RunRecord("few_shot_prompts", eval=str(eval_file), source=str(source_file))
    table = few_shot_examples(
        read_examples(eval_file, eval_limit),
        read_examples(source_file, source_limit),
        n_shots,
        seed,
    )
    write_parquet(table, out_path, run.finish(n_shots=n_shots, seed=seed))


def write_random_predictions(data_file, out_path, model, eval_dataset, *, seed, limit) -> None:
    run = RunRecord("predict", model=model, intervention="random", train="none", eval=eval_dataset)
    pairs = expand_pairs(read_examples(data_file, limit))
    prob, correct = random_predictions(len(pairs["example_id"]), eval_dataset, seed)
    table = predictions_table(model, "random", "none", eval_dataset, pairs, prob, correct)
    write_parquet(table, out_path, run.finish(params={"seed": seed}))
