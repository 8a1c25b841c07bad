"""Reward models of your own: sequence classifiers, DPO policies and chat templates."""

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from genies.data import chat
from genies.data.materialise import materialise, read_examples
from genies.data.stimuli import CONTRAST_QUESTION, stimulus_turns, stimulus_units
from genies.errors import ConfigError
from genies.forward.job import run_forward
from genies.forward.scoring import score_naive, score_tokenized
from genies.io import read_provenance
from genies.methods.own_reward_models import write_dpo_predictions, write_reward_model_predictions
from genies.methods.reward_classifier import (
    ClassifierReward,
    classifier_rewards,
    classifier_tokens,
    load_classifier,
    write_reward_scores,
)
from genies.methods.tuned.reward_model import RewardModelError, encode_examples
from genies.models.loading import ModelError, load_model
from genies.models.memory import ALLOCATOR_OVERHEAD, GIB, Budget, TrainingCosts, TrainingSetup
from genies.models.prepare import prepare_model
from genies.models.tiny import TINY_CHAT_TEMPLATE, build_tiny, train_tiny_tokenizer
from genies.models.tokens import appended_tokens, tokenize_examples
from genies.pipeline.config import validate_config
from genies.pipeline.plan import Plan

from .fixtures import make_genies_folder, tiny_reward_model_dir, workflow_config

TORCH_THREADS = 1
SCORING = {"batch_tokens": 128, "device": "cpu", "dtype": "float32"}
PROMPTS = ["### Instruction:\nName a fruit.\n\n### Response:\n", "Human: Is the sea deep?"]
RESPONSES = [["apple", "a stone from the river", "apple"], ["Yes, it is.", "No"]]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    data = make_genies_folder(root / "genies")
    materialise(data, "tgt_b", "test", root / "tgt_b.test.parquet")  # 6 examples, k = 3
    return root


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = train_tiny_tokenizer()
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


# --------------------------------------------------------------------------- chat templates


def test_chat_texts_are_the_templates_conversation_with_one_bos(chat_tokenizer):
    tok = chat_tokenizer
    prompt_ids, response_ids = tokenize_examples(tok, PROMPTS, RESPONSES, chat_template=True)
    for i, (p, ids) in enumerate(zip(PROMPTS, prompt_ids, strict=True)):
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # no second BOS
        header = tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_dict=False
        )
        assert ids == header  # the templated prompt and the assistant header
        for r, r_ids in zip(RESPONSES[i], response_ids[i], strict=True):
            turn = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
            assert ids + r_ids == tok.apply_chat_template(turn, return_dict=False)
            assert tok.decode(r_ids[-2:]) == "</s>\n"  # the template's end of turn, not EOS
    # the plain convention is unchanged: BOS, prompt, response, EOS
    plain_p, plain_r = tokenize_examples(tok, PROMPTS, RESPONSES, chat_template=False)
    assert plain_p[0] == [tok.bos_token_id, *tok(PROMPTS[0], add_special_tokens=False).input_ids]
    assert plain_r[0][0][-1] == tok.eos_token_id


@pytest.mark.parametrize("chat_template", [True, False])
def test_appended_tokens_is_what_tokenize_examples_appends(chat_tokenizer, chat_template):
    """The activation read position comes from it: the end of turn (2 tokens here) or EOS."""
    tok = chat_tokenizer
    full = tokenize_examples(tok, PROMPTS, RESPONSES, chat_template=chat_template)[1]
    bare = tokenize_examples(tok, PROMPTS, RESPONSES, False, False, chat_template)[1]
    want = [len(f[0]) - len(b[0]) for f, b in zip(full, bare, strict=True)]
    got = appended_tokens(tok, PROMPTS, chat_template=chat_template)
    assert got.tolist() == want == [2 if chat_template else 1] * len(PROMPTS)
    assert appended_tokens(tok, PROMPTS, False, chat_template).tolist() == [0] * len(PROMPTS)


def test_a_template_without_bos_gets_none(chat_tokenizer):
    tok = train_tiny_tokenizer()
    tok.chat_template = TINY_CHAT_TEMPLATE.replace("{{ bos_token }}", "")
    prompt_ids, _ = tokenize_examples(tok, PROMPTS, RESPONSES, chat_template=True)
    assert all(tok.bos_token_id not in ids for ids in prompt_ids)


def test_the_registry_mark_decides_the_default(chat_tokenizer):
    tok = train_tiny_tokenizer()
    tok.chat_template = TINY_CHAT_TEMPLATE
    plain = tokenize_examples(tok, PROMPTS, RESPONSES)
    chat.mark(tok, True)
    assert tokenize_examples(tok, PROMPTS, RESPONSES) == tokenize_examples(
        chat_tokenizer, PROMPTS, RESPONSES, chat_template=True
    )
    chat.mark(tok, False)
    assert tokenize_examples(tok, PROMPTS, RESPONSES) == plain
    with pytest.raises(chat.ChatTemplateError, match="has none"):
        chat.mark(train_tiny_tokenizer(), True)


def test_trained_reward_models_read_the_same_texts(chat_tokenizer):
    seqs, cut = encode_examples(chat_tokenizer, PROMPTS, RESPONSES, None, chat_template=True)
    prompt_ids, response_ids = tokenize_examples(
        chat_tokenizer, PROMPTS, RESPONSES, chat_template=True
    )
    assert cut == 0 and seqs[1][0] == prompt_ids[1] + response_ids[1][0]


def test_stimulus_text_after_the_prompt_is_the_assistants(chat_tokenizer):
    prompts, starts, answers, append_eos = stimulus_turns("yesno", PROMPTS, RESPONSES)
    assert not append_eos and answers[0] == ["Yes", "No"] and len(prompts) == 5
    assert starts[1] == RESPONSES[0][1] + CONTRAST_QUESTION
    # without a template the prefixes are the old stimulus texts
    prefixes, _, _ = stimulus_units("yesno", PROMPTS, RESPONSES)
    assert prefixes[1] == PROMPTS[0] + RESPONSES[0][1] + CONTRAST_QUESTION
    ids, _ = tokenize_examples(
        chat_tokenizer, prompts, answers, append_eos=False, chat_template=True,
        assistant_starts=starts,
    )  # fmt: skip
    turns = chat.turns(chat_tokenizer, [PROMPTS[0]])
    expected = chat_tokenizer(turns.before[0] + starts[1], add_special_tokens=False).input_ids
    assert ids[1] == expected


def test_prefix_reuse_scores_templated_texts_like_a_plain_loop(chat_tokenizer):
    model, _ = build_tiny({"seed": 0})
    tok = chat_tokenizer
    prompt_ids, response_ids = tokenize_examples(tok, PROMPTS, RESPONSES, chat_template=True)
    fast = score_tokenized(model, prompt_ids, response_ids, batch_tokens=48)
    # the loop: each whole conversation as the template writes it, one at a time, no padding
    loop = []
    for p, rs in zip(PROMPTS, RESPONSES, strict=True):
        user = [{"role": "user", "content": p}]
        header = tok.apply_chat_template(user, add_generation_prompt=True, return_dict=False)
        for r in rs:
            full = tok.apply_chat_template(
                [*user, {"role": "assistant", "content": r}], return_dict=False
            )
            loop.append(score_naive(model, [header], [[full[len(header) :]]]).logprob_sum[0])
    np.testing.assert_allclose(fast.logprob_sum, loop, rtol=1e-5, atol=1e-5)
    assert fast.logprob_sum[0] == pytest.approx(fast.logprob_sum[2])  # the same response twice


def test_forward_jobs_of_a_chat_model_use_its_template(root):
    prepare_model({"source": "tiny", "seed": 0, "chat_template": True}, root / "tiny-chat")
    prepare_model({"source": "tiny", "seed": 0}, root / "tiny-plain")
    loaded = load_model(root / "tiny-chat", device="cpu", dtype="float32")
    assert chat.requested(loaded.tokenizer)
    assert not chat.requested(load_model(root / "tiny-plain", device="cpu").tokenizer)
    work = {"test": {"plain": {}}}
    tables = {}
    for name in ("tiny-chat", "tiny-plain"):
        run_forward(
            data_files={"test": root / "tgt_b.test.parquet"},
            model_dir=root / name,
            scores_path=root / f"{name}.parquet",
            activations_path=root / f"{name}.st",
            model_name=name,
            dataset="tgt_b",
            work=work,
            scoring=SCORING,
            job={"threads": 1},
        )
        tables[name] = pq.read_table(root / f"{name}.parquet")
    examples = read_examples(root / "tgt_b.test.parquet")
    cols = examples.select(["prompt", "responses"]).to_pydict()
    p_ids, r_ids = tokenize_examples(loaded.tokenizer, cols["prompt"], cols["responses"])
    expected = score_naive(loaded.model, p_ids, r_ids)
    np.testing.assert_allclose(
        tables["tiny-chat"]["logprob_sum"], expected.logprob_sum, rtol=1e-5, atol=1e-5
    )
    # the end of turn "</s>\n" is one token longer than EOS
    n_chat, n_plain = (tables[n]["n_tokens"].to_numpy() for n in ("tiny-chat", "tiny-plain"))
    np.testing.assert_array_equal(n_chat, n_plain + 1)


def test_a_missing_template_is_refused_when_the_model_is_prepared(root, tmp_path):
    rm = tiny_reward_model_dir(tmp_path / "rm")
    with pytest.raises(chat.ChatTemplateError, match=f"model in {rm} asks for its chat template"):
        prepare_model({"source": "local", "path": str(rm), "chat_template": True}, tmp_path / "m")
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- classifiers


@pytest.fixture(scope="module")
def classifier(root):
    src = tiny_reward_model_dir(root / "rm-src")
    prepare_model({"source": "local", "path": str(src)}, root / "rm")  # copied, not linked
    model, loaded = load_classifier(root / "rm", device="cpu", dtype="float32")
    return model, loaded


def loop_rewards(classifier, tokenizer, prompts, responses):
    """transformers' own classifier output for each text alone (no padding)."""
    p_ids, r_ids = classifier_tokens(tokenizer, prompts, responses)
    with torch.inference_mode():
        return [
            [float(classifier(input_ids=torch.tensor([p + r])).logits[0, 0]) for r in rs]
            for p, rs in zip(p_ids, r_ids, strict=True)
        ]


def test_classifier_reads_the_tokenizers_own_special_tokens(classifier):
    _, loaded = classifier
    tok = loaded.tokenizer
    assert chat.own_special_ids(tok) == ([tok.bos_token_id], [])  # Llama's: BOS, no EOS
    p_ids, r_ids = classifier_tokens(tok, PROMPTS, RESPONSES)
    assert p_ids[0] + r_ids[0][0] == tok(PROMPTS[0] + RESPONSES[0][0]).input_ids


def test_batched_rewards_equal_a_plain_per_text_loop(classifier, root):
    model, loaded = classifier
    examples = read_examples(root / "tgt_b.test.parquet")
    # pad = EOS, as in many checkpoints: the read position must not depend on it
    loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
    # about 3 texts of different lengths per call: right padding in every batch
    table = classifier_rewards(model, loaded.tokenizer, examples, batch_tokens=256, device="cpu")
    cols = examples.select(["prompt", "responses"]).to_pydict()
    expected = loop_rewards(loaded.model, loaded.tokenizer, cols["prompt"], cols["responses"])
    np.testing.assert_allclose(table["reward"], np.concatenate(expected), rtol=1e-5, atol=1e-6)
    assert table["response_index"].to_pylist()[:4] == [0, 1, 2, 0]
    assert not pc.any(table["skipped"]).as_py()


def test_a_chat_classifier_scores_its_templated_conversation(root):
    src = tiny_reward_model_dir(root / "rm-chat-src", chat_template=True)
    spec = {"source": "local", "path": str(src), "link": True, "chat_template": True}
    prepare_model(spec, root / "rm-chat")
    model, loaded = load_classifier(root / "rm-chat", device="cpu", dtype="float32")
    tok = loaded.tokenizer
    p_ids, r_ids = classifier_tokens(tok, PROMPTS, RESPONSES)
    turn = [{"role": "user", "content": PROMPTS[1]}, {"role": "assistant", "content": "No"}]
    assert p_ids[1] + r_ids[1][1] == tok.apply_chat_template(turn, return_dict=False)
    examples = read_examples(root / "tgt_b.test.parquet")
    table = classifier_rewards(model, tok, examples, batch_tokens=512, device="cpu")
    cols = examples.select(["prompt", "responses"]).to_pydict()
    expected = loop_rewards(loaded.model, tok, cols["prompt"], cols["responses"])
    np.testing.assert_allclose(table["reward"], np.concatenate(expected), rtol=1e-5, atol=1e-6)


def test_a_classifier_with_several_labels_is_refused(tmp_path):
    from transformers import AutoConfig

    src = tiny_reward_model_dir(tmp_path / "rm")
    config = AutoConfig.from_pretrained(src)
    config.num_labels = 2
    config.save_pretrained(src)
    with pytest.raises(ModelError, match="2 labels"):
        load_classifier(src, device="cpu", dtype="float32")
    prepare_model({"source": "tiny"}, tmp_path / "lm")
    with pytest.raises(ModelError, match="LlamaForCausalLM, not a sequence classifier"):
        load_classifier(tmp_path / "lm", device="cpu", dtype="float32")


def test_reward_model_predictions_from_its_scores(classifier, root):
    scores = root / "rm-scores.parquet"
    write_reward_scores(data_file=root / "tgt_b.test.parquet", model_dir=root / "rm",
                        out_path=scores, model_name="rm", dataset="tgt_b", limit=4,
                        scoring=SCORING, job={"threads": 1})  # fmt: skip
    out = root / "rm-pred.parquet"
    write_reward_model_predictions(data_file=root / "tgt_b.test.parquet", scores_file=scores,
                                   out_path=out, model="tiny", intervention="my_rm",
                                   eval_dataset="tgt_b")  # fmt: skip
    rewards = pq.read_table(scores).to_pandas().set_index(["example_id", "response_index"])
    pred = pq.read_table(out).to_pandas()
    assert len(pred) == 4 * 2 and set(pred["train"]) == {"none"}  # 4 examples, 2 pairs each
    for row in pred.itertuples():
        r_pref = rewards.loc[(row.example_id, row.preferred_response), "reward"]
        r_disp = rewards.loc[(row.example_id, row.dispreferred_response), "reward"]
        assert row.prob_preferred == pytest.approx(1 / (1 + np.exp(r_disp - r_pref)))
        assert row.correct == (r_pref > r_disp)


def test_examples_beyond_the_context_follow_the_policy(classifier, root):
    model, loaded = classifier
    examples = read_examples(root / "tgt_b.test.parquet")
    whole = classifier_rewards(model, loaded.tokenizer, examples, batch_tokens=512, device="cpu")
    lengths = whole["n_tokens"].to_numpy().reshape(-1, 3).max(axis=1)
    limit = int(np.median(lengths))
    loaded.tokenizer.model_max_length = limit
    try:
        skip = classifier_rewards(model, loaded.tokenizer, examples, batch_tokens=512,
                                  device="cpu", context_policy="skip")  # fmt: skip
        cut = classifier_rewards(model, loaded.tokenizer, examples, batch_tokens=512,
                                 device="cpu", context_policy="cut_prompt")  # fmt: skip
    finally:
        loaded.tokenizer.model_max_length = 2048
    over = np.repeat(lengths > limit, 3)
    assert over.any() and not over.all()
    np.testing.assert_array_equal(skip["skipped"].to_numpy(), over)
    assert np.isnan(skip["reward"].to_numpy()[over]).all()
    kept = skip["reward"].to_numpy()[~over]
    np.testing.assert_allclose(kept, whole["reward"].to_numpy()[~over], rtol=1e-5, atol=1e-6)
    assert (cut["n_tokens"].to_numpy() <= limit).all()
    assert (cut["prompt_tokens_cut"].to_numpy()[over] > 0).all()


# --------------------------------------------------------------------------- memory plan, GPUs


def _count_calls(monkeypatch, oom_above: int | None = None) -> list[int]:
    """Rows of every ClassifierReward call; with `oom_above`, larger calls run out of memory."""
    rows, original = [], ClassifierReward.forward

    def forward(self, input_ids, attention_mask):
        rows.append(input_ids.shape[0])
        if oom_above is not None and input_ids.shape[0] > oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")
        return original(self, input_ids, attention_mask)

    monkeypatch.setattr(ClassifierReward, "forward", forward)
    return rows


def test_classifier_batches_follow_the_budget_and_back_off(classifier, root, monkeypatch):
    model, loaded = classifier
    examples = read_examples(root / "tgt_b.test.parquet")
    kw = {"batch_tokens": 4096, "device": "cpu"}
    rows = _count_calls(monkeypatch)
    plain = classifier_rewards(model, loaded.tokenizer, examples, **kw)
    assert max(rows) == 18  # every text in one call: no budget
    # a budget that holds about 4 texts of the longest length per call
    lengths = plain["n_tokens"].to_numpy()
    costs = TrainingCosts(TrainingSetup.of(model, training=False))
    budget = Budget(int(4 * costs.eval_row(int(lengths.max())) * ALLOCATOR_OVERHEAD["cpu"]))
    rows.clear()
    planned = classifier_rewards(model, loaded.tokenizer, examples, **kw, budget=budget)
    assert 1 < max(rows) <= 5 and sum(rows) == 18
    (note,) = [e for e in budget.events if e["kind"] == "reward scoring"]
    assert 0 < note["planned_peak_bytes"] <= budget.usable
    # out of memory above 3 texts per call: halved until they fit, recorded, same rewards
    rows = _count_calls(monkeypatch, oom_above=3)
    backed_off_budget = Budget(None)
    backed_off = classifier_rewards(
        model, loaded.tokenizer, examples, **kw, budget=backed_off_budget
    )
    backoffs = [e for e in backed_off_budget.events if e["kind"] == "backoff"]
    assert [e["failed_rows"] for e in backoffs] == [18, 9, 4]
    assert backoffs[-1]["eval_rows"] == 2
    for table in (planned, backed_off):
        np.testing.assert_allclose(table["reward"], plain["reward"], rtol=1e-5, atol=1e-6)


def test_one_text_that_does_not_fit_fails_clearly(classifier, root, monkeypatch):
    model, loaded = classifier
    _count_calls(monkeypatch, oom_above=0)
    examples = read_examples(root / "tgt_b.test.parquet")
    with pytest.raises(RewardModelError, match="out of GPU memory while scoring tgt_b") as err:
        classifier_rewards(model, loaded.tokenizer, examples, batch_tokens=512, device="cpu",
                           label="tgt_b", budget=Budget(None))  # fmt: skip
    assert "`gpus:`" in str(err.value)


def test_reward_scores_job_takes_gpus_budget_and_attempt(classifier, root, monkeypatch):
    """The job spreads the classifier over its GPUs (on CUDA), plans its calls from the
    memory settings, halved on a retry, and records the plan."""
    import genies.methods.reward_classifier as reward_classifier

    asked = []
    original = reward_classifier.load_model

    def load_model(*args, **kwargs):
        asked.append(kwargs["gpus"])
        return original(*args, **{**kwargs, "gpus": 1})

    monkeypatch.setattr(reward_classifier, "load_model", load_model)
    rows = _count_calls(monkeypatch)
    model, _ = classifier
    costs = TrainingCosts(TrainingSetup.of(model, training=False))
    budget_gb = 8 * costs.eval_row(40) * ALLOCATOR_OVERHEAD["cpu"] / GIB
    outs = {}
    for attempt in (1, 2):
        rows.clear()
        out = outs[attempt] = root / f"rm-scores-attempt{attempt}.parquet"
        job = {"threads": 1, "gpus": 2, "memory": {"budget_gb": budget_gb}, "attempt": attempt}
        write_reward_scores(data_file=root / "tgt_b.test.parquet", model_dir=root / "rm",
                            out_path=out, model_name="rm", dataset="tgt_b",
                            scoring={**SCORING, "batch_tokens": 4096}, job=job)  # fmt: skip
        memory = read_provenance(out)["memory"]
        assert memory["attempt"] == attempt
        assert memory["budget_bytes"] == int(budget_gb * GIB) // 2 ** (attempt - 1)
        (note,) = [e for e in memory["events"] if e["kind"] == "reward scoring"]
        assert 0 < note["planned_peak_bytes"] <= memory["budget_bytes"] / ALLOCATOR_OVERHEAD["cpu"]
        outs[attempt] = (out, max(rows))
    assert asked == [1, 1]  # on the CPU one device, whatever the job's GPUs
    assert outs[2][1] < outs[1][1]  # smaller calls on the retry
    np.testing.assert_allclose(
        pq.read_table(outs[2][0])["reward"], pq.read_table(outs[1][0])["reward"], rtol=1e-5
    )
    # on CUDA the job's GPUs reach the loader
    monkeypatch.setattr(reward_classifier, "resolve_device", lambda d: torch.device("cuda"))
    monkeypatch.setattr(reward_classifier.Budget, "resolve", lambda *a, **k: Budget(None))
    write_reward_scores(data_file=root / "tgt_b.test.parquet", model_dir=root / "rm",
                        out_path=root / "rm-cuda.parquet", model_name="rm", dataset="tgt_b",
                        scoring=SCORING, job={"threads": 1, "gpus": 2})  # fmt: skip
    assert asked[-1] == 2


# --------------------------------------------------------------------------- DPO


@pytest.fixture(scope="module")
def dpo_forward(root):
    files = {}
    for name, seed in (("policy", 1), ("reference", 0)):
        prepare_model({"source": "tiny", "seed": seed}, root / name)
        files[name] = root / f"{name}.forward.parquet"
        run_forward(data_files={"test": root / "tgt_b.test.parquet"}, model_dir=root / name,
                    scores_path=files[name], activations_path=root / f"{name}.st",
                    model_name=name, dataset="tgt_b", work={"test": {"plain": {}}},
                    scoring=SCORING, job={"threads": 1})  # fmt: skip
    return files


def test_dpo_rewards_are_computed_from_both_forward_scores(dpo_forward, root):
    out = root / "dpo.parquet"
    beta = 0.25
    write_dpo_predictions(data_file=root / "tgt_b.test.parquet", policy_file=dpo_forward["policy"],
                          reference_file=dpo_forward["reference"], out_path=out, model="tiny",
                          intervention="my_dpo", eval_dataset="tgt_b", beta=beta)  # fmt: skip
    logp = {
        name: {
            (r["example_id"], r["response_index"]): r["logprob_sum"]
            for r in pq.read_table(path).to_pylist()
        }
        for name, path in dpo_forward.items()
    }

    def reward(example, response):  # beta * (log pi(y|x) - log pi_ref(y|x)), by hand
        key = (example, response)
        return beta * (logp["policy"][key] - logp["reference"][key])

    pred = pq.read_table(out).to_pylist()
    assert len(pred) == 6 * 2
    for row in pred:
        margin = reward(row["example_id"], row["preferred_response"]) - reward(
            row["example_id"], row["dispreferred_response"]
        )
        assert row["prob_preferred"] == pytest.approx(1 / (1 + np.exp(-margin)), rel=1e-12)
        assert row["correct"] == (margin > 0)
        assert (row["model"], row["intervention"], row["train"]) == ("tiny", "my_dpo", "none")


def test_dpo_refuses_forward_scores_of_other_responses(dpo_forward, root):
    capped = root / "policy.capped.parquet"
    table = pq.read_table(dpo_forward["policy"])
    pq.write_table(table.slice(0, 9), capped)
    with pytest.raises(ValueError, match="cover different responses"):
        write_dpo_predictions(data_file=root / "tgt_b.test.parquet", policy_file=capped,
                              reference_file=dpo_forward["reference"],
                              out_path=root / "bad.parquet", model="tiny",
                              intervention="my_dpo", eval_dataset="tgt_b", beta=0.1)  # fmt: skip


# --------------------------------------------------------------------------- plan


def external_config(data_dir, **overrides):
    config = workflow_config(
        data_dir,
        models={
            "tiny": {"source": "tiny"},
            "tiny-policy": {"source": "tiny", "seed": 1},
            "rm": {"source": "local", "path": "/nowhere"},
        },
        interventions={
            "zero_shot": {},
            "mms": {"n_units": 2},
            "my_rm": {"kind": "reward_model", "model": "rm"},
            "my_dpo": {"kind": "dpo", "policy": "tiny-policy", "reference": "tiny"},
        },
    )
    config.update(overrides)
    return validate_config(config)


def test_the_plan_runs_them_under_their_base_only(root):
    models = {
        "tiny": {"source": "tiny"}, "other": {"source": "tiny", "seed": 2},
        "tiny-policy": {"source": "tiny", "seed": 1}, "rm": {"source": "local", "path": "/x"},
    }  # fmt: skip
    interventions = {
        "zero_shot": {},
        "mms": {"n_units": 2},
        "my_rm": {"kind": "reward_model", "model": "rm"},
        "my_dpo": {"kind": "dpo", "policy": "tiny-policy", "reference": "tiny"},
    }
    # two run models: the classifier must say which row shows it
    with pytest.raises(ConfigError, match="set `base:`"):
        external_config(root / "genies", models=models, run_models=["tiny", "other"],
                        interventions=interventions)  # fmt: skip
    interventions["my_rm"]["base"] = "other"
    plan = Plan(external_config(root / "genies", models=models, run_models=["tiny", "other"],
                                interventions=interventions))  # fmt: skip
    assert plan.entries["my_dpo"].base == "tiny"  # the reference
    assert plan.of_family("dpo") == ["my_dpo"] and plan.of_family("reward_model") == ["my_rm"]
    assert {"my_rm", "my_dpo"} <= set(plan.untrained)
    files = plan.prediction_files()
    assert "results/predictions/other/my_rm/none/tgt_b.parquet" in files
    assert not any(f.startswith("results/predictions/tiny/my_rm/") for f in files)
    assert not any(f.startswith("results/predictions/other/my_dpo/") for f in files)
    # train = none on every dataset the shifts touch
    assert plan.train_eval_pairs("my_dpo") == [("none", d) for d in ("tgt_b", "src_a", "tgt_c",
                                                                     "ref_d")]  # fmt: skip
    # the policy is no run model: an ordinary forward job of its plain test log-probs only
    assert plan.forward_work("src_a", "tiny-policy") == {"test": {"plain": {}}}
    assert "train" in plan.forward_work("src_a", "tiny")  # mms trains there
    forward = plan.forward_files()
    assert "results/forward/tiny-policy/tgt_c.parquet" in forward
    assert "results/reward_scores/rm/ref_d.parquet" in forward
    assert plan.dpo_forward_files("my_dpo", "tgt_b") == {
        "policy": "results/forward/tiny-policy/tgt_b.parquet",
        "reference": "results/forward/tiny/tgt_b.parquet",
    }
    assert plan.params("my_dpo")["beta"] == 0.1


def test_config_mistakes_are_explained(root):
    bad = [
        ({"my_dpo": {"kind": "dpo", "policy": "tiny-policy", "reference": "tiny-policy"}},
         "the same model"),
        ({"my_rm": {"kind": "reward_model", "model": "tiny"}}, "one or the other"),
        ({"my_rm": {"kind": "reward_model", "model": "rm", "base": "rm"}}, "not in run_models"),
        ({"zero_shott": {}}, "not built in"),
    ]  # fmt: skip
    for entries, message in bad:
        with pytest.raises(ConfigError, match=message):
            external_config(root / "genies", interventions={"zero_shot": {}, **entries})
    with pytest.raises(ConfigError, match="reward models of your own"):
        external_config(root / "genies", capability_interventions=["my_rm"])
    models = {
        "tiny": {"source": "tiny"},
        "tiny-policy": {"source": "tiny", "seed": 1, "chat_template": True},
    }
    with pytest.raises(ConfigError, match="same texts"):
        external_config(
            root / "genies",
            models=models,
            interventions={
                "zero_shot": {},
                "d": {"kind": "dpo", "policy": "tiny-policy", "reference": "tiny"},
            },
        )
